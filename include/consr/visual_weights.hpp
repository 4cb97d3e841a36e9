// consr/visual_weights.hpp — the token visual weights of ConSR (spec §7, paper
// eqs. 12–13): how much seeing the clean image instead of the corrupted one
// raises each response token's probability, clipped, as the weight ω_t that
// the ConSR objective (dpo.hpp, eq. 14) puts on the token. Host function and
// the per-token formula the CUDA version (consr/cuda/dpo.cuh) shares.
#pragma once

#include <cmath>
#include <string_view>
#include <type_traits>

#include "config.hpp"
#include "detail/enum_names.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "reductions.hpp"
#include "view.hpp"

namespace consr {

/// Which side a visual weight belongs to (eq. 13).
enum class weight_side { chosen, rejected };

/// The sides' names, "chosen" and "rejected" (consr::to_string, parse_weight_side).
constexpr detail::enum_table<weight_side, 2> enum_names(weight_side) noexcept {
  return {"consr::parse_weight_side", "side", {{weight_side::chosen, "chosen"}, {weight_side::rejected, "rejected"}}};
}

/// The weight_side named `name` ("chosen" or "rejected"). Throws consr::error naming 'side' otherwise.
inline weight_side parse_weight_side(std::string_view name) { return detail::parse_enum<weight_side>(name); }

/// Options of visual_weights (eq. 13; paper defaults α = 0.5, ε = 0.2).
struct visual_weight_options {
  double alpha = 0.5;    ///< α, finite
  double clip_lo = 0.0;  ///< lower clip bound, finite, <= clip_hi
  double clip_hi = 0.2;  ///< upper clip bound ε, finite
};

namespace detail {

/// The function that computes visual weights in memory space S (named by the weights check).
template <class S>
constexpr const char* visual_weights_function() noexcept {
  return std::is_same_v<S, host_space> ? "consr::visual_weights" : "consr::cuda::visual_weights";
}
/// The checks of visual_weights (host and device); returns the number of tokens.
template <class V1, class V2, class W, class Space>
index_t visual_weights_check(const strided_view<V1, 1, Space>& logp_clean,
                             const strided_view<V2, 1, Space>& logp_corrupt, weight_side side,
                             const strided_view<W, 1, Space>& weights, const visual_weight_options& options,
                             const char* fn) {
  static_assert(is_supported_float_v<V1> && is_supported_float_v<V2>,
                "consr::visual_weights: log-probs must be float, double, consr::bfloat16 or consr::float16");
  static_assert(std::is_same_v<W, float> || std::is_same_v<W, double>,
                "consr::visual_weights: weights must be a non-const float or double view");
  CONSR_CHECK_ARG(std::isfinite(options.alpha), fn, "options.alpha", "is ", options.alpha, " but must be finite");
  CONSR_CHECK_ARG(std::isfinite(options.clip_lo), fn, "options.clip_lo", "is ", options.clip_lo,
                  " but must be finite");
  CONSR_CHECK_ARG(std::isfinite(options.clip_hi), fn, "options.clip_hi", "is ", options.clip_hi,
                  " but must be finite");
  CONSR_CHECK_ARG(options.clip_lo <= options.clip_hi, fn, "options.clip_lo", "is ", options.clip_lo,
                  " but must be <= options.clip_hi (", options.clip_hi, ")");
  check_enum_value(side, fn, "side", "weight_side");
  check_view(logp_clean, fn, "logp_clean");
  const index_t n = logp_clean.size();
  check_view_extent(logp_corrupt, 0, n, fn, "logp_corrupt", "the same tokens as 'logp_clean'");
  check_view_extent(weights, 0, n, fn, "weights", "one weight per token");
  check_no_broadcast(weights, fn, "weights");
  return n;
}

/// ω_t of eq. 13 from one token's log-probs under (x, I) and (x, Ĩ), in
/// double; sign = +1 (chosen) or −1 (rejected). Host and device
/// (consr/cuda/dpo.cuh) both call this. No product feeds an addition except
/// sign·c, which is exact, so FMA contraction cannot change the result.
CONSR_HOST_DEVICE inline double visual_weight(double logp_clean, double logp_corrupt, double sign,
                                              const visual_weight_options& o) noexcept {
  const double delta_p = std::exp(logp_clean) - std::exp(logp_corrupt);
  const double scaled = o.alpha * delta_p;
  // NaN must survive the clip (a max or min would drop it on one side). The two selections are
  // std::max(scaled, lo) and std::min(·, hi), written out because nvcc cannot call those on the device.
  const double at_least_lo = scaled < o.clip_lo ? o.clip_lo : scaled;
  const double clipped = std::isnan(scaled) ? scaled : (o.clip_hi < at_least_lo ? o.clip_hi : at_least_lo);
  return 1.0 + sign * clipped;
}

}  // namespace detail

/// Token visual weights, eqs. 12–13 (computed without gradient):
///   Δp_t = exp(logp_clean[t]) − exp(logp_corrupt[t])
///   c_t  = clip(α·Δp_t, clip_lo, clip_hi) = min(max(α·Δp_t, lo), hi)
///   ω_t  = 1 + c_t (chosen side),  1 − c_t (rejected side)
/// in double, rounded once to the output type. A NaN Δp_t gives NaN.
/// logp_clean / logp_corrupt: the policy's token log-probs under (x, I) and
/// (x, Ĩ), float, double, bfloat16 or float16. weights: float or double,
/// same length.
/// Throws consr::error naming 'logp_corrupt' or 'weights' (length differs;
/// weights a broadcast view),
/// 'options.alpha' (not finite), 'options.clip_lo' / 'options.clip_hi' (not
/// finite, or clip_lo > clip_hi), 'side'.
template <class V1, class V2, class W>
void visual_weights(host_view<V1, 1> logp_clean, host_view<V2, 1> logp_corrupt, weight_side side,
                    host_view<W, 1> weights, const visual_weight_options& options = {}) {
  const index_t n = detail::visual_weights_check(logp_clean, logp_corrupt, side, weights, options,
                                                 "consr::visual_weights");
  const double sign = side == weight_side::chosen ? 1.0 : -1.0;
  CONSR_OMP(parallel for schedule(static) if (n >= detail::segment_parallel_threshold))
  for (index_t t = 0; t < n; ++t)
    weights[t] = static_cast<W>(
        detail::visual_weight(to_accum<double>(logp_clean[t]), to_accum<double>(logp_corrupt[t]), sign, options));
}

}  // namespace consr
