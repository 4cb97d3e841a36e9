// consr/reward.hpp — sequence probabilities and the contrastive reward of
// ConSR (spec §5, paper eqs. 1–6).
//
// Each candidate response y is one segment of a packed token array. It is
// scored three times on the same response tokens — under the original input
// (x, I), the corrupted image (x, Ĩ) and the enriched prompt (x', I) — so the
// three token log-prob arrays share one offsets array. Offsets follow
// reductions.hpp (int32/int64, S + 1 entries, checked). Accumulation is in
// double on the host; inputs may be float, double, bfloat16 or float16.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "config.hpp"
#include "detail/enum_names.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "reductions.hpp"
#include "view.hpp"

namespace consr {

/// Where the reward is computed (spec §5).
enum class reward_space {
  probability,  ///< the paper's: P = exp(mean token log-prob), differences of probabilities (default)
  log,          ///< extension: differences of mean token log-probs (log P) instead
};

/// The reward spaces' names, "probability" and "log" (consr::to_string, parse_reward_space).
constexpr detail::enum_table<reward_space, 2> enum_names(reward_space) noexcept {
  using s = reward_space;
  return {"consr::parse_reward_space", "space", {{s::probability, "probability"}, {s::log, "log"}}};
}

/// The reward_space named `name` ("probability" or "log"). Throws consr::error naming 'space' otherwise.
inline reward_space parse_reward_space(std::string_view name) { return detail::parse_enum<reward_space>(name); }

/// Options of contrastive_reward.
struct reward_options {
  /// Weight of the semantic term in eq. 6; must lie in [0, 1] (the paper's
  /// convex combination, Table 3). A value outside flips the sign of one
  /// term and would rank candidates by the opposite criterion, so it is
  /// rejected as a configuration error rather than extrapolated.
  double lambda = 0.8;
  reward_space space = reward_space::probability;
  /// Tokens whose label equals this are not scored (only with labels).
  std::int64_t ignore_index = default_ignore_index;
};

/// Per-candidate outputs of contrastive_reward, each of length C (the number
/// of candidates), in one memory space: host_space for consr::
/// contrastive_reward (the default), device_space for consr::cuda's (alias
/// consr::cuda::reward_outputs). `reward` is required; every other view is
/// optional: size 0 means "not written". In reward_space::probability `p*`
/// hold the probabilities of eqs. 1–3; in reward_space::log they hold the mean
/// token log-probs (log P) the reward is then computed from.
template <class T, class Space = host_space>
struct reward_outputs {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "consr::reward_outputs: the element type must be float or double");
  using space = Space;
  strided_view<T, 1, Space> p;           ///< P(y | x, I)          eq. 1 (or its log)
  strided_view<T, 1, Space> p_corrupt;   ///< P(y | x, Ĩ)          eq. 2 (or its log)
  strided_view<T, 1, Space> p_semantic;  ///< P(y | x', I)         eq. 3 (or its log)
  strided_view<T, 1, Space> s_semantic;  ///< P_semantic − P       eq. 4
  strided_view<T, 1, Space> s_corrupt;   ///< P − P_corrupt        eq. 5
  strided_view<T, 1, Space> reward;      ///< λ·S_semantic + (1 − λ)·S_corrupt   eq. 6 (required)
};

/// What contrastive_reward found besides the values.
struct reward_report {
  index_t candidates = 0;                ///< C
  index_t empty_candidates = 0;          ///< candidates with no scored token (T = 0): all outputs NaN
  std::vector<index_t> empty_indices;    ///< their indices, ascending
  /// Candidates with T > 0 whose stored reward is NaN or ±inf (e.g. from a
  /// non-finite token log-prob); empty candidates are not counted here.
  index_t nonfinite_rewards = 0;
};

namespace detail {

/// One candidate's values of eqs. 1–6 (or their log-space versions).
struct reward_terms {
  double p, p_corrupt, p_semantic;  ///< eqs. 1–3 (or mean token log-probs in log space)
  double s_semantic, s_corrupt;     ///< eqs. 4, 5
  double reward;                    ///< eq. 6
};

/// Eqs. 1–6 for one candidate from the sums of its `count` scored tokens under
/// (x, I), (x, Ĩ) and (x', I). The host (contrastive_reward) and the device
/// (consr/cuda/reward.cuh) both call this function, so they cannot drift
/// apart; its products are mul_rn, so FMA contraction cannot change r (nor
/// make the host differ from the device). count = 0 gives NaN everywhere.
CONSR_HOST_DEVICE inline reward_terms contrastive_reward_terms(double sum, double sum_corrupt, double sum_semantic,
                                                               index_t count, double lambda, bool log_space) noexcept {
  reward_terms r;
  r.p = r.p_corrupt = r.p_semantic = quiet_nan_double();
  if (count > 0) {
    const double inv = 1.0 / static_cast<double>(count);
    r.p = mul_rn(sum, inv);
    r.p_corrupt = mul_rn(sum_corrupt, inv);
    r.p_semantic = mul_rn(sum_semantic, inv);
    if (!log_space) {
      r.p = std::exp(r.p);
      r.p_corrupt = std::exp(r.p_corrupt);
      r.p_semantic = std::exp(r.p_semantic);
    }
  }
  r.s_semantic = r.p_semantic - r.p;                                            // eq. 4
  r.s_corrupt = r.p - r.p_corrupt;                                              // eq. 5
  r.reward = mul_rn(lambda, r.s_semantic) + mul_rn(1.0 - lambda, r.s_corrupt);  // eq. 6
  return r;
}

/// Stores candidate c's terms: the reward, and every optional output that is
/// not empty (host and device, consr/cuda/reward.cuh). Returns the stored reward.
template <class R, class Space>
CONSR_HOST_DEVICE inline R store_reward_terms(const reward_outputs<R, Space>& out, index_t c,
                                              const reward_terms& r) noexcept {
  const R stored = static_cast<R>(r.reward);
  out.reward[c] = stored;
  if (out.p.size() != 0) out.p[c] = static_cast<R>(r.p);
  if (out.p_corrupt.size() != 0) out.p_corrupt[c] = static_cast<R>(r.p_corrupt);
  if (out.p_semantic.size() != 0) out.p_semantic[c] = static_cast<R>(r.p_semantic);
  if (out.s_semantic.size() != 0) out.s_semantic[c] = static_cast<R>(r.s_semantic);
  if (out.s_corrupt.size() != 0) out.s_corrupt[c] = static_cast<R>(r.s_corrupt);
  return stored;
}

/// The checks of contrastive_reward (host and device; device offsets by shape
/// only, their values are checked on the device); returns C.
template <class V1, class V2, class V3, class Offset, class Label, class R, class S>
index_t contrastive_reward_check(const strided_view<V1, 1, S>& logp, const strided_view<V2, 1, S>& logp_corrupt,
                                 const strided_view<V3, 1, S>& logp_semantic, const strided_view<Offset, 1, S>& offsets,
                                 const strided_view<Label, 1, S>& labels, bool has_labels,
                                 const reward_outputs<R, S>& out, const reward_options& options, const char* fn) {
  assert_value_type<V1>();
  assert_value_type<V2>();
  assert_value_type<V3>();
  static_assert(is_index_type_v<Label>, "consr::contrastive_reward: labels must be int32 or int64");
  CONSR_CHECK_ARG(std::isfinite(options.lambda) && options.lambda >= 0.0 && options.lambda <= 1.0, fn,
                  "options.lambda", "is ", options.lambda, " but must be a finite value in [0, 1] (eq. 6)");
  check_enum_value(options.space, fn, "options.space", "reward_space");
  check_view(logp, fn, "logp");
  const index_t n = logp.size();
  check_view_extent(logp_corrupt, 0, n, fn, "logp_corrupt", "the same tokens as 'logp'");
  check_view_extent(logp_semantic, 0, n, fn, "logp_semantic", "the same tokens as 'logp'");
  if (has_labels) {
    check_view_extent(labels, 0, n, fn, "labels", "one label per token of 'logp'");
  }
  const index_t num_candidates = check_segment_offsets(offsets, n, fn, "offsets", "logp");
  check_view_extent(out.reward, 0, num_candidates, fn, "out.reward", "one reward per candidate");
  check_no_broadcast(out.reward, fn, "out.reward");
  check_optional_output(out.p, num_candidates, fn, "out.p", "one per candidate");
  check_optional_output(out.p_corrupt, num_candidates, fn, "out.p_corrupt", "one per candidate");
  check_optional_output(out.p_semantic, num_candidates, fn, "out.p_semantic", "one per candidate");
  check_optional_output(out.s_semantic, num_candidates, fn, "out.s_semantic", "one per candidate");
  check_optional_output(out.s_corrupt, num_candidates, fn, "out.s_corrupt", "one per candidate");
  return num_candidates;
}

template <class V1, class V2, class V3, class Offset, class Label, class R>
reward_report contrastive_reward_impl(const host_view<V1, 1>& logp, const host_view<V2, 1>& logp_corrupt,
                                      const host_view<V3, 1>& logp_semantic, const host_view<Offset, 1>& offsets,
                                      const host_view<Label, 1>& labels, bool has_labels,
                                      const reward_outputs<R>& out, const reward_options& options) {
  const index_t num_candidates = contrastive_reward_check(logp, logp_corrupt, logp_semantic, offsets, labels,
                                                          has_labels, out, options, "consr::contrastive_reward");
  const index_t n = logp.size();
  const double lambda = options.lambda;
  const bool log_space = options.space == reward_space::log;
  const std::int64_t ignore = options.ignore_index;
  CONSR_OMP(parallel for schedule(static) if (n >= segment_parallel_threshold && num_candidates > 1))
  for (index_t c = 0; c < num_candidates; ++c) {
    const index_t b = offsets[c], e = offsets[c + 1];
    index_t count = 0;
    const double sum = scored_sum(logp, labels, has_labels, ignore, b, e, count);
    const double sum_corrupt = scored_sum(logp_corrupt, labels, has_labels, ignore, b, e, count);
    const double sum_semantic = scored_sum(logp_semantic, labels, has_labels, ignore, b, e, count);
    store_reward_terms(out, c, contrastive_reward_terms(sum, sum_corrupt, sum_semantic, count, lambda, log_space));
  }

  // The report is built serially so its index list is ordered.
  reward_report report;
  report.candidates = num_candidates;
  for (index_t c = 0; c < num_candidates; ++c) {
    if (scored_count(labels, has_labels, ignore, offsets[c], offsets[c + 1]) == 0) {
      ++report.empty_candidates;
      report.empty_indices.push_back(c);
    } else if (!std::isfinite(static_cast<double>(out.reward[c]))) {
      ++report.nonfinite_rewards;
    }
  }
  return report;
}

template <class V, class Offset, class Label, class R>
void sequence_probability_impl(const host_view<V, 1>& logp, const host_view<Offset, 1>& offsets,
                               const host_view<Label, 1>& labels, bool has_labels, const host_view<R, 1>& out,
                               std::int64_t ignore_index) {
  constexpr const char* fn = "consr::sequence_probability";
  const index_t num_sequences = check_scored_segments(logp, "logp", labels, has_labels, offsets, out, fn,
                                                      "one label per token of 'logp'", "one probability per sequence");
  reduce_scored_segments(logp, labels, has_labels, ignore_index, offsets, num_sequences, out,
                         [](double sum, index_t count) {
                           return count > 0 ? std::exp(sum / static_cast<double>(count))
                                            : std::numeric_limits<double>::quiet_NaN();
                         });
}

}  // namespace detail

/// The contrastive reward of every candidate (spec §5, eqs. 1–6), in double:
///   m, m_c, m_s = mean token log-prob of the candidate's scored tokens under
///                 (x, I), (x, Ĩ), (x', I)   [logp, logp_corrupt, logp_semantic]
///   probability space: P = exp(m), P_corrupt = exp(m_c), P_semantic = exp(m_s)
///   log space:         P = m,      P_corrupt = m_c,      P_semantic = m_s
///   S_semantic = P_semantic − P,  S_corrupt = P − P_corrupt,
///   r = λ·S_semantic + (1 − λ)·S_corrupt.
/// The three arrays share `offsets` (C + 1 entries, one segment per
/// candidate). With `labels`, tokens whose label equals
/// options.ignore_index are not scored (not read, not counted in T). A
/// candidate with T = 0 scored tokens gets NaN in every output and is listed
/// in the report (empty_candidates, empty_indices) rather than silently
/// ranked. Outputs: see reward_outputs (reward required, others optional).
/// Throws consr::error naming the argument: 'logp', 'logp_corrupt',
/// 'logp_semantic' (lengths differ), 'labels', 'offsets', 'out.*' (wrong
/// size), 'options.lambda' (not finite or outside [0, 1]), 'options.space'.
template <class V1, class V2, class V3, class Offset, class Label, class R>
reward_report contrastive_reward(host_view<V1, 1> logp, host_view<V2, 1> logp_corrupt, host_view<V3, 1> logp_semantic,
                                 host_view<Offset, 1> offsets, host_view<Label, 1> labels, reward_outputs<R> out,
                                 const reward_options& options = {}) {
  return detail::contrastive_reward_impl(logp, logp_corrupt, logp_semantic, offsets, labels, true, out, options);
}

/// contrastive_reward without labels: every token of every segment is
/// scored (T = segment length). options.ignore_index is unused.
template <class V1, class V2, class V3, class Offset, class R>
reward_report contrastive_reward(host_view<V1, 1> logp, host_view<V2, 1> logp_corrupt, host_view<V3, 1> logp_semantic,
                                 host_view<Offset, 1> offsets, reward_outputs<R> out,
                                 const reward_options& options = {}) {
  const host_view<const std::int64_t, 1> no_labels{};
  return detail::contrastive_reward_impl(logp, logp_corrupt, logp_semantic, offsets, no_labels, false, out, options);
}

/// Sequence probability, eq. 1: out[s] = exp(mean of logp over the scored
/// tokens of segment s), in double; NaN for a segment without a scored token.
/// Tokens whose label equals ignore_index are not scored.
/// Preconditions: labels.size() == logp.size(), offsets valid for
/// logp.size(), out.size() == S. Throws consr::error naming 'logp',
/// 'labels', 'offsets' or 'out'.
template <class V, class Offset, class Label, class R>
void sequence_probability(host_view<V, 1> logp, host_view<Offset, 1> offsets, host_view<Label, 1> labels,
                          host_view<R, 1> out, std::int64_t ignore_index = default_ignore_index) {
  static_assert(is_index_type_v<Label>, "consr::sequence_probability: labels must be int32 or int64");
  detail::sequence_probability_impl(logp, offsets, labels, true, out, ignore_index);
}

/// Sequence probability, eq. 1, with every token scored:
/// out[s] = exp(mean of logp over segment s); NaN for an empty segment.
template <class V, class Offset, class R>
void sequence_probability(host_view<V, 1> logp, host_view<Offset, 1> offsets, host_view<R, 1> out) {
  const host_view<const std::int64_t, 1> no_labels{};
  detail::sequence_probability_impl(logp, offsets, no_labels, false, out, default_ignore_index);
}

}  // namespace consr
