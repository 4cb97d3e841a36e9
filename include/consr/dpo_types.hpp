// consr/dpo_types.hpp — the vocabulary of the DPO objectives (spec §7): the
// loss and reduction enums, dpo_options, one side of P pairs
// (dpo_sequences) and the per-pair metrics, in either memory space. The host
// algorithms are in dpo.hpp, the CUDA ones in cuda/dpo.cuh; both include this.
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "config.hpp"
#include "detail/enum_names.hpp"
#include "numeric.hpp"
#include "view.hpp"

namespace consr {

/// Which objective dpo_forward / dpo_backward compute.
enum class dpo_loss_type {
  standard,  ///< eq. 7: L = −log σ(Δ); length_normalize, visual_weights, scale_by_beta do not apply
  consr,     ///< eq. 14: L' = −sg(σ(−Δ'))·(Σ ω a − Σ ω b) (default)
};

/// How per-pair objectives reduce over the batch (spec §2).
enum class loss_reduction {
  mean,  ///< Σ_i L_i / P (0 for P = 0)
  sum,   ///< Σ_i L_i
  none,  ///< per-pair values in metrics.loss; dpo_forward returns their sum
};

/// The loss types' names, "consr" and "standard" (consr::to_string, parse_dpo_loss_type).
constexpr detail::enum_table<dpo_loss_type, 2> enum_names(dpo_loss_type) noexcept {
  return {"consr::parse_dpo_loss_type",
          "loss_type",
          {{dpo_loss_type::consr, "consr", " (eq. 14)"}, {dpo_loss_type::standard, "standard", " (eq. 7)"}}};
}

/// The dpo_loss_type named `name` ("consr" or "standard", as to_string writes them).
/// Throws consr::error naming 'loss_type' otherwise.
inline dpo_loss_type parse_dpo_loss_type(std::string_view name) { return detail::parse_enum<dpo_loss_type>(name); }

/// The reductions' names, "mean", "sum" and "none" (consr::to_string, parse_loss_reduction).
constexpr detail::enum_table<loss_reduction, 3> enum_names(loss_reduction) noexcept {
  using r = loss_reduction;
  return {"consr::parse_loss_reduction", "reduction", {{r::mean, "mean"}, {r::sum, "sum"}, {r::none, "none"}}};
}

/// The loss_reduction named `name` ("mean", "sum" or "none", as to_string writes them).
/// Throws consr::error naming 'reduction' otherwise.
inline loss_reduction parse_loss_reduction(std::string_view name) { return detail::parse_enum<loss_reduction>(name); }

/// Options of dpo_forward / dpo_backward.
struct dpo_options {
  dpo_loss_type loss = dpo_loss_type::consr;
  double beta = 0.1;             ///< β > 0, finite
  bool length_normalize = true;  ///< consr: Δ' of eq. 11 (off: Δ' = Δ)
  bool visual_weights = true;    ///< consr: ω_t from `weights` (off: ω_t = 1)
  bool scale_by_beta = false;    ///< consr: multiply the surrogate (and its gradient) by β (spec §7 decision)
  loss_reduction reduction = loss_reduction::mean;
  std::int64_t ignore_index = default_ignore_index;  ///< tokens with this label are excluded (with labels)
};

/// One side (chosen or rejected) of P pairs, packed, in one memory space: the
/// host algorithms take host_space (the default), the CUDA launchers of
/// consr/cuda/dpo.cuh device_space (alias consr::cuda::dpo_sequences); one
/// check (detail::dpo_check) serves both. Non-const views convert to these
/// members implicitly.
///  - policy_logp: per-token policy log-probs (a_t or b_t), n tokens.
///  - offsets: P + 1 entries, valid for n (reductions.hpp rules).
///  - exactly one reference: reference_logp per token (n values, same
///    packing) or reference_logp_sum per sequence (P values, summed by the
///    caller over the same scored tokens). The per-sequence form is used when
///    reference_logp_sum is non-empty; otherwise reference_logp must have n
///    values.
///  - labels: optional (size 0) or n; a token whose label equals
///    options.ignore_index is excluded from every sum and length and gets
///    gradient 0.
///  - weights: visual weights ω_t per token (visual_weights()); n values,
///    required iff loss == consr && visual_weights; otherwise ignored (but
///    its size, if non-zero, must still be n).
template <class T, class Offset, class Label = std::int64_t, class Space = host_space>
struct dpo_sequences {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "consr::dpo_sequences: log-probs must be float or double");
  static_assert(is_index_type_v<Offset>, "consr::dpo_sequences: offsets must be int32 or int64");
  static_assert(is_index_type_v<Label>, "consr::dpo_sequences: labels must be int32 or int64");
  using space = Space;
  strided_view<const T, 1, Space> policy_logp;
  strided_view<const Offset, 1, Space> offsets;
  strided_view<const T, 1, Space> reference_logp;
  strided_view<const T, 1, Space> reference_logp_sum;
  strided_view<const Label, 1, Space> labels;
  strided_view<const T, 1, Space> weights;
};

/// Per-pair values reported by dpo_forward (host or device memory, as
/// dpo_sequences; alias consr::cuda::dpo_pair_metrics); each view is optional
/// (size 0 = not written) and otherwise has P elements. Δ' below means Δ for
/// the standard loss and for consr without length normalization.
template <class T, class Space = host_space>
struct dpo_pair_metrics {
  using space = Space;
  strided_view<T, 1, Space> margin_logit;     ///< Δ (eq. 7) or Δ' (eq. 11)
  strided_view<T, 1, Space> sigma_neg;        ///< σ(−Δ')
  strided_view<T, 1, Space> chosen_reward;    ///< β·Σ(a − a_ref) over scored tokens
  strided_view<T, 1, Space> rejected_reward;  ///< β·Σ(b − b_ref) over scored tokens
  strided_view<T, 1, Space> reward_margin;    ///< chosen_reward − rejected_reward
  strided_view<T, 1, Space> accuracy;         ///< 1 if Δ' > 0, else 0 (NaN gives 0)
  strided_view<T, 1, Space> dpo_loss;         ///< −log σ(Δ') = softplus(−Δ')
  strided_view<T, 1, Space> loss;             ///< the per-pair objective being reduced (L or L')
};

namespace detail {

CONSR_HOST_DEVICE inline bool dpo_uses_weights(const dpo_options& o) noexcept {
  return o.loss == dpo_loss_type::consr && o.visual_weights;
}
CONSR_HOST_DEVICE inline bool dpo_uses_length_normalization(const dpo_options& o) noexcept {
  return o.loss == dpo_loss_type::consr && o.length_normalize;
}

}  // namespace detail

}  // namespace consr
