// consr/detail/dpo_check.hpp — the argument checks of the DPO objectives,
// one set for the host (dpo.hpp) and the device (cuda/dpo.cuh): each names the
// argument it rejects.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../dpo_types.hpp"
#include "../error.hpp"
#include "../reductions.hpp"
#include "../view.hpp"
#include "../visual_weights.hpp"

namespace consr {
namespace detail {

/// Names of one side's arguments, for error messages.
struct dpo_side_names {
  const char* side;
  const char* policy_logp;
  const char* offsets;
  const char* reference_logp;
  const char* reference_logp_sum;
  const char* labels;
  const char* weights;
  const char* length_symbol;
};
inline constexpr dpo_side_names dpo_chosen_names{"chosen",         "chosen.policy_logp", "chosen.offsets",
                                                 "chosen.reference_logp", "chosen.reference_logp_sum",
                                                 "chosen.labels",  "chosen.weights",     "|y_w|"};
inline constexpr dpo_side_names dpo_rejected_names{"rejected",         "rejected.policy_logp", "rejected.offsets",
                                                   "rejected.reference_logp", "rejected.reference_logp_sum",
                                                   "rejected.labels",  "rejected.weights",     "|y_l|"};

template <class T, class Offset, class Label>
index_t dpo_scored_length(const dpo_sequences<T, Offset, Label>& s, index_t pair, std::int64_t ignore_index) {
  return scored_count(s.labels, s.labels.size() != 0, ignore_index, s.offsets[pair], s.offsets[pair + 1]);
}

/// The metrics check (host and device): each view empty or one per pair.
template <class T, class Space>
void dpo_check_metrics(const dpo_pair_metrics<T, Space>& m, index_t num_pairs, const char* fn) {
  check_optional_output(m.margin_logit, num_pairs, fn, "metrics.margin_logit", "one per pair");
  check_optional_output(m.sigma_neg, num_pairs, fn, "metrics.sigma_neg", "one per pair");
  check_optional_output(m.chosen_reward, num_pairs, fn, "metrics.chosen_reward", "one per pair");
  check_optional_output(m.rejected_reward, num_pairs, fn, "metrics.rejected_reward", "one per pair");
  check_optional_output(m.reward_margin, num_pairs, fn, "metrics.reward_margin", "one per pair");
  check_optional_output(m.accuracy, num_pairs, fn, "metrics.accuracy", "one per pair");
  check_optional_output(m.dpo_loss, num_pairs, fn, "metrics.dpo_loss", "one per pair");
  check_optional_output(m.loss, num_pairs, fn, "metrics.loss", "one per pair");
}

/// The reference check of one side of n tokens and P pairs: exactly one
/// reference, per token (n values) or per sequence (P).
template <class Side>
void dpo_check_reference(const Side& s, index_t n, index_t num_pairs, const dpo_side_names& names, const char* fn) {
  check_view(s.reference_logp, fn, names.reference_logp);
  check_view(s.reference_logp_sum, fn, names.reference_logp_sum);
  if (s.reference_logp_sum.size() != 0) {
    CONSR_CHECK_ARG(s.reference_logp.size() == 0, fn, names.reference_logp, "has ", s.reference_logp.size(),
                    " elements but '", names.reference_logp_sum,
                    "' is given too; pass exactly one reference (per token or per sequence)");
    check_extent(s.reference_logp_sum, 0, num_pairs, fn, names.reference_logp_sum, "one sum per pair");
  } else {
    CONSR_CHECK_ARG(s.reference_logp.size() == n, fn, names.reference_logp, "has ", s.reference_logp.size(),
                    " elements but must have one per token of '", names.policy_logp, "' (", n, "), or pass '",
                    names.reference_logp_sum, "' with one sum per pair");
  }
}

/// The weights check of one side of n tokens: one per token when the loss
/// uses visual weights, else 0 or one per token.
template <class Side>
void dpo_check_weights(const Side& s, index_t n, const dpo_options& o, const dpo_side_names& names, const char* fn) {
  check_view(s.weights, fn, names.weights);
  if (dpo_uses_weights(o)) {
    CONSR_CHECK_ARG(s.weights.size() == n, fn, names.weights, "has ", s.weights.size(),
                    " elements but the consr loss with visual_weights needs one per token (", n,
                    "); compute them with ", visual_weights_function<typename Side::space>(),
                    " or set visual_weights = false");
  } else {
    CONSR_CHECK_ARG(s.weights.size() == 0 || s.weights.size() == n, fn, names.weights, "has ", s.weights.size(),
                    " elements but must have 0 or one per token (", n, ")");
  }
}

/// One side's checks (device offsets by shape only: their values are checked on the device); returns P.
template <class T, class Offset, class Label, class Space>
index_t dpo_check_side(const dpo_sequences<T, Offset, Label, Space>& s, const dpo_options& o,
                       const dpo_side_names& names, const char* fn) {
  check_view(s.policy_logp, fn, names.policy_logp);
  const index_t n = s.policy_logp.size();
  const index_t num_pairs = check_segment_offsets(s.offsets, n, fn, names.offsets, names.policy_logp);
  dpo_check_reference(s, n, num_pairs, names, fn);
  check_optional_labels(s.labels, n, fn, names.labels);
  dpo_check_weights(s, n, o, names, fn);
  return num_pairs;
}

/// With length normalization, every sequence of the side needs |y| > 0.
template <class T, class Offset, class Label>
void dpo_check_lengths(const dpo_sequences<T, Offset, Label>& s, index_t num_pairs, const dpo_options& o,
                       const dpo_side_names& names, const char* fn) {
  if (!dpo_uses_length_normalization(o)) return;
  for (index_t i = 0; i < num_pairs; ++i) {
    CONSR_CHECK_ARG(dpo_scored_length(s, i, o.ignore_index) > 0, fn, names.side, "pair ", i, " has no scored token (",
                    names.length_symbol,
                    " = 0); length normalization (eq. 11) divides by it: drop the pair or set "
                    "length_normalize = false");
  }
}

/// Validates options and both sides, on the host and before any CUDA launch;
/// returns P. Host data is checked in full (offsets' values, and with length
/// normalization every pair's scored lengths); the device reports what its
/// data gets wrong through error_info (consr/cuda/dpo.cuh).
template <class T, class Offset, class Label, class Space>
index_t dpo_check(const dpo_sequences<T, Offset, Label, Space>& chosen,
                  const dpo_sequences<T, Offset, Label, Space>& rejected, const dpo_options& o, const char* fn) {
  check_enum_value(o.loss, fn, "options.loss", "dpo_loss_type");
  check_enum_value(o.reduction, fn, "options.reduction", "loss_reduction");
  CONSR_CHECK_ARG(std::isfinite(o.beta) && o.beta > 0.0, fn, "options.beta", "is ", o.beta,
                  " but must be finite and > 0");
  const index_t num_chosen = dpo_check_side(chosen, o, dpo_chosen_names, fn);
  const index_t num_rejected = dpo_check_side(rejected, o, dpo_rejected_names, fn);
  CONSR_CHECK_ARG(num_rejected == num_chosen, fn, "rejected.offsets", "describes ", num_rejected,
                  " pairs but 'chosen.offsets' describes ", num_chosen, " (both sides must hold the same pairs)");
  if constexpr (std::is_same_v<Space, host_space>) {
    dpo_check_lengths(chosen, num_chosen, o, dpo_chosen_names, fn);
    dpo_check_lengths(rejected, num_chosen, o, dpo_rejected_names, fn);
  }
  return num_chosen;
}

/// The gradient outputs of dpo_backward (host and device): one per token of
/// their side, distinct elements, overlapping neither the inputs nor each other.
template <class T, class Offset, class Label, class Space>
void dpo_check_grads(const dpo_sequences<T, Offset, Label, Space>& chosen,
                     const dpo_sequences<T, Offset, Label, Space>& rejected,
                     const strided_view<T, 1, Space>& grad_chosen, const strided_view<T, 1, Space>& grad_rejected,
                     const char* fn) {
  check_view_extent(grad_chosen, 0, chosen.policy_logp.size(), fn, "grad_chosen_logp", "one per token of chosen");
  check_no_broadcast(grad_chosen, fn, "grad_chosen_logp");
  check_view_extent(grad_rejected, 0, rejected.policy_logp.size(), fn, "grad_rejected_logp",
                    "one per token of rejected");
  check_no_broadcast(grad_rejected, fn, "grad_rejected_logp");
  check_disjoint(chosen.policy_logp, grad_chosen, fn, "chosen.policy_logp", "grad_chosen_logp");
  check_disjoint(rejected.policy_logp, grad_rejected, fn, "rejected.policy_logp", "grad_rejected_logp");
  check_disjoint(grad_chosen, grad_rejected, fn, "grad_chosen_logp", "grad_rejected_logp");
}

}  // namespace detail
}  // namespace consr
