// consr/cuda/dpo.cuh — the DPO objectives of ConSR on the GPU (spec §7, paper
// eqs. 7–14): standard DPO, the length-normalized margin, token visual weights
// and the ConSR surrogate, forward and backward for packed batches.
// Host twin: consr/dpo.hpp (every dpo_options combination is supported).
//
// Kernels: one thread block per pair reduces both sides of the pair (scored
// log-ratio Σ(a − a_ref), Σ ω a and |y|, in double, with cub::BlockReduce in a
// fixed order) and evaluates the pair's terms with the host's own function
// (consr::detail::dpo_pair_from_sums: explicitly rounded products, stable σ
// and softplus), as visual_weights does with detail::visual_weight. The forward
// writes the per-pair objective to temporary storage and a single block sums
// it in a fixed order (deterministic, no atomics); the backward recomputes the
// pair's terms and writes every token's gradient. Results are deterministic
// and differ from the host's only by the reassociation of the double sums
// (and by CUDA's exp/log1p, ≤ 1 ulp from glibc's).
//
// Errors: shapes are checked on the host (status::invalid_argument, nothing
// launched, message in last_error_message()). What only the data can reveal
// goes to the optional error_info: bad offsets (status::invalid_argument,
// index = segment, from a validation kernel per side) and, with length
// normalization, a pair with no scored token on a side
// (status::empty_sequence, index = the smallest such pair; the host twin
// throws there). Such a pair's outputs are NaN.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../dpo.hpp"
#include "common.cuh"
#include "reductions.cuh"

namespace consr {
namespace cuda {

/// One side (chosen or rejected) of P pairs in device memory: the host
/// library's consr::dpo_sequences with device views (same fields, same rules,
/// same check: consr::detail::dpo_check).
template <class T, class Offset, class Label = std::int64_t>
using dpo_sequences = ::consr::dpo_sequences<T, Offset, Label, device_space>;

/// Per-pair device metrics of dpo_forward: consr::dpo_pair_metrics with device views.
template <class T>
using dpo_pair_metrics = ::consr::dpo_pair_metrics<T, device_space>;

namespace detail {

/// One side as the kernels read it (null pointers for absent views).
template <class T, class Offset, class Label>
struct dpo_side_args {
  const T* policy;
  index_t policy_stride;
  packed_segments<Offset> seg;
  const T* reference;  // per token, or null
  index_t reference_stride;
  const T* reference_sum;  // per sequence, or null
  index_t reference_sum_stride;
  const Label* labels;  // null: every token scored
  index_t labels_stride;
  const T* weights;  // null: ω = 1
  index_t weights_stride;
};

/// The sums are the host twin's type (consr::detail::dpo_side_sums), so the
/// pair's terms come from the same function on both sides.
using ::consr::detail::dpo_side_sums;
struct dpo_sums_plus {
  __device__ dpo_side_sums operator()(const dpo_side_sums& a, const dpo_side_sums& b) const {
    return {a.log_ratio + b.log_ratio, a.weighted_policy + b.weighted_policy, a.length + b.length};
  }
};

inline constexpr int dpo_block = 256;
using dpo_block_reduce = cub::BlockReduce<dpo_side_sums, dpo_block>;

/// Side sums of pair i over its scored tokens (valid in thread 0), as the host's dpo_side.
template <class T, class Offset, class Label>
__device__ dpo_side_sums block_side_sums(const dpo_side_args<T, Offset, Label>& s, index_t i,
                                         std::int64_t ignore_index, typename dpo_block_reduce::TempStorage& temp) {
  const index_t b = s.seg.begin(i), e = s.seg.end(i);
  dpo_side_sums acc{0.0, 0.0, 0};
  for (index_t t = b + threadIdx.x; t < e; t += blockDim.x) {
    if (s.labels != nullptr && static_cast<std::int64_t>(s.labels[t * s.labels_stride]) == ignore_index) continue;
    const double a = static_cast<double>(s.policy[t * s.policy_stride]);
    acc.log_ratio += s.reference != nullptr ? __dsub_rn(a, static_cast<double>(s.reference[t * s.reference_stride])) : a;
    acc.weighted_policy += s.weights != nullptr ? __dmul_rn(static_cast<double>(s.weights[t * s.weights_stride]), a) : a;
    ++acc.length;
  }
  __syncthreads();  // temp may still be in use by a previous reduction
  dpo_side_sums r = dpo_block_reduce(temp).Reduce(acc, dpo_sums_plus{});
  if (s.reference_sum != nullptr) r.log_ratio = __dsub_rn(r.log_ratio, static_cast<double>(s.reference_sum[i * s.reference_sum_stride]));
  return r;
}

/// Pair i's terms from both sides' block sums, by the host's dpo_pair_from_sums (valid in thread
/// 0, which also reports a side without a scored token under length normalization: Δ' would
/// divide by 0, the terms are NaN).
template <class T, class Offset, class Label>
__device__ ::consr::detail::dpo_pair_terms block_pair_terms(const dpo_side_args<T, Offset, Label>& chosen,
                                                             const dpo_side_args<T, Offset, Label>& rejected,
                                                             index_t i, const dpo_options& o,
                                                             typename dpo_block_reduce::TempStorage& temp,
                                                             error_info* error) {
  const dpo_side_sums w = block_side_sums(chosen, i, o.ignore_index, temp);
  const dpo_side_sums l = block_side_sums(rejected, i, o.ignore_index, temp);
  ::consr::detail::dpo_pair_terms p{};
  if (threadIdx.x == 0) {
    if (::consr::detail::dpo_uses_length_normalization(o) && (w.length == 0 || l.length == 0))
      report_error(error, status::empty_sequence, i);
    p = ::consr::detail::dpo_pair_from_sums(w, l, o);
  }
  return p;
}

template <class T, class Offset, class Label>
__global__ void __launch_bounds__(dpo_block)
    dpo_forward_kernel(dpo_side_args<T, Offset, Label> chosen, dpo_side_args<T, Offset, Label> rejected,
                       dpo_options o, dpo_pair_metrics<T> m, double* objective, error_info* error) {
  __shared__ typename dpo_block_reduce::TempStorage temp;
  const index_t P = chosen.seg.num_segments;
  for (index_t i = blockIdx.x; i < P; i += gridDim.x) {
    const ::consr::detail::dpo_pair_terms p = block_pair_terms(chosen, rejected, i, o, temp, error);
    if (threadIdx.x == 0) {
      objective[i] = p.objective;
      ::consr::detail::dpo_store_metrics(m, i, p);
    }
  }
}

/// Σ objective[i] in a fixed order (thread t sums i ≡ t mod block, then a
/// fixed tree), / P for mean; one block, so the result is deterministic.
template <class T>
__global__ void __launch_bounds__(dpo_block)
    dpo_reduce_kernel(const double* objective, index_t P, bool mean, T* loss) {
  using reduce = cub::BlockReduce<double, dpo_block>;
  __shared__ typename reduce::TempStorage temp;
  double acc = 0.0;
  for (index_t i = threadIdx.x; i < P; i += blockDim.x) acc += objective[i];
  const double total = reduce(temp).Sum(acc);
  if (threadIdx.x == 0) *loss = static_cast<T>(mean ? (P > 0 ? total / static_cast<double>(P) : 0.0) : total);
}

/// Where the upstream gradient of pair i comes from.
template <class T>
struct dpo_upstream {
  double host_value;    // used when device == null
  const T* device;      // a device scalar (mean/sum) or one value per pair (none)
  index_t stride;
  bool per_pair;
  bool mean;            // divide by P
};

template <class T, class Offset, class Label>
__global__ void __launch_bounds__(dpo_block)
    dpo_backward_kernel(dpo_side_args<T, Offset, Label> chosen, dpo_side_args<T, Offset, Label> rejected,
                        dpo_options o, dpo_upstream<T> up, T* grad_chosen, index_t grad_chosen_stride,
                        T* grad_rejected, index_t grad_rejected_stride, error_info* error) {
  __shared__ typename dpo_block_reduce::TempStorage temp;
  __shared__ double g_shared;
  const index_t P = chosen.seg.num_segments;
  const bool weighted = ::consr::detail::dpo_uses_weights(o);
  for (index_t i = blockIdx.x; i < P; i += gridDim.x) {
    const ::consr::detail::dpo_pair_terms p = block_pair_terms(chosen, rejected, i, o, temp, error);
    if (threadIdx.x == 0) {
      double upstream;
      if (up.device == nullptr) {
        upstream = up.host_value;
      } else {
        upstream = static_cast<double>(up.device[up.per_pair ? i * up.stride : 0]);
      }
      if (up.mean) upstream = upstream / static_cast<double>(P);
      g_shared = __dmul_rn(p.grad_scale, upstream);  // ∂L/∂b_t = +g·ω_t, ∂L/∂a_t = −g·ω_t (eqs. 8, 14)
    }
    __syncthreads();
    const double g = g_shared;
    for (int side = 0; side < 2; ++side) {
      const dpo_side_args<T, Offset, Label>& s = side == 0 ? chosen : rejected;
      T* grad = side == 0 ? grad_chosen : grad_rejected;
      const index_t gs = side == 0 ? grad_chosen_stride : grad_rejected_stride;
      const double sign = side == 0 ? -1.0 : 1.0;
      const index_t b = s.seg.begin(i), e = s.seg.end(i);
      for (index_t t = b + threadIdx.x; t < e; t += blockDim.x) {
        if (s.labels != nullptr && static_cast<std::int64_t>(s.labels[t * s.labels_stride]) == o.ignore_index) {
          grad[t * gs] = T(0);
          continue;
        }
        const double omega = weighted ? static_cast<double>(s.weights[t * s.weights_stride]) : 1.0;
        grad[t * gs] = static_cast<T>(__dmul_rn(__dmul_rn(sign, g), omega));
      }
    }
    __syncthreads();  // g_shared is rewritten for the next pair
  }
}

/// The kernel arguments of one side, checked before by consr::detail::dpo_check.
template <class T, class Offset, class Label>
dpo_side_args<T, Offset, Label> dpo_side_args_of(const dpo_sequences<T, Offset, Label>& s, const dpo_options& o,
                                                 const ::consr::detail::dpo_side_names& names, const char* fn) {
  const bool per_sequence = s.reference_logp_sum.size() != 0;
  const bool weighted = ::consr::detail::dpo_uses_weights(o);
  dpo_side_args<T, Offset, Label> a;
  a.policy = s.policy_logp.data();
  a.policy_stride = s.policy_logp.stride(0);
  a.seg = make_packed_segments(s.offsets, s.policy_logp.size(), fn, names.offsets);
  a.reference = per_sequence ? nullptr : s.reference_logp.data();
  a.reference_stride = per_sequence ? 0 : s.reference_logp.stride(0);
  a.reference_sum = per_sequence ? s.reference_logp_sum.data() : nullptr;
  a.reference_sum_stride = per_sequence ? s.reference_logp_sum.stride(0) : 0;
  a.labels = s.labels.size() != 0 ? s.labels.data() : nullptr;
  a.labels_stride = s.labels.size() != 0 ? s.labels.stride(0) : 0;
  a.weights = weighted ? s.weights.data() : nullptr;
  a.weights_stride = weighted ? s.weights.stride(0) : 0;
  return a;
}

/// The shared check (options, both sides), then both sides' kernel arguments; returns P.
template <class T, class Offset, class Label>
index_t dpo_check(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                  const dpo_options& o, const char* fn, dpo_side_args<T, Offset, Label>& chosen_args,
                  dpo_side_args<T, Offset, Label>& rejected_args) {
  const index_t P = ::consr::detail::dpo_check(chosen, rejected, o, fn);
  chosen_args = dpo_side_args_of(chosen, o, ::consr::detail::dpo_chosen_names, fn);
  rejected_args = dpo_side_args_of(rejected, o, ::consr::detail::dpo_rejected_names, fn);
  return P;
}

template <class T, class Offset, class Label>
status dpo_validate_offsets(const dpo_side_args<T, Offset, Label>& chosen,
                            const dpo_side_args<T, Offset, Label>& rejected, error_info* error, cudaStream_t stream) {
  const status a = validate_offsets(chosen.seg, error, stream);
  if (a != status::success) return a;
  return validate_offsets(rejected.seg, error, stream);
}

inline unsigned dpo_grid(index_t pairs) noexcept {
  return static_cast<unsigned>(pairs < 1 ? 1 : (pairs > 65535 * 16 ? 65535 * 16 : pairs));
}

template <class T, class Offset, class Label>
status dpo_backward_impl(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                         const dpo_options& o, dpo_upstream<T> up, const device_view<const T, 1>* upstream_view,
                         const device_view<T, 1>& grad_chosen, const device_view<T, 1>& grad_rejected,
                         cudaStream_t stream, error_info* error) {
  constexpr const char* fn = "consr::cuda::dpo_backward";
  dpo_side_args<T, Offset, Label> ca, ra;
  const index_t P = dpo_check(chosen, rejected, o, fn, ca, ra);
  if (upstream_view == nullptr) {
    CONSR_CHECK_ARG(o.reduction != loss_reduction::none, fn, "options.reduction",
                    "is none, which needs a per-pair upstream gradient (grad_loss with one value per pair), not a "
                    "scalar");
  } else {
    ::consr::detail::check_view(*upstream_view, fn, "grad_loss");
    if (o.reduction == loss_reduction::none) {
      ::consr::detail::check_extent(*upstream_view, 0, P, fn, "grad_loss",
                                    "one upstream gradient per pair, for reduction none");
    } else {
      ::consr::detail::check_extent(*upstream_view, 0, 1, fn, "grad_loss",
                                    "one device scalar, for reduction mean or sum");
    }
    up.device = upstream_view->data();
    up.stride = upstream_view->stride(0);
    up.per_pair = o.reduction == loss_reduction::none;
  }
  up.mean = o.reduction == loss_reduction::mean;
  ::consr::detail::dpo_check_grads(chosen, rejected, grad_chosen, grad_rejected, fn);
  const status v = dpo_validate_offsets(ca, ra, error, stream);
  if (v != status::success) return v;
  if (P == 0) return status::success;
  dpo_backward_kernel<T, std::remove_cv_t<Offset>, std::remove_cv_t<Label>>
      <<<dpo_grid(P), dpo_block, 0, stream>>>(ca, ra, o, up, grad_chosen.data(), grad_chosen.stride(0),
                                              grad_rejected.data(), grad_rejected.stride(0), error);
  return to_status(cudaGetLastError());
}

/// ω_t for every token: the host twin's detail::visual_weight.
template <class V1, class V2, class W>
__global__ void visual_weights_kernel(const V1* clean, index_t clean_stride, const V2* corrupt,
                                      index_t corrupt_stride, W* weights, index_t weights_stride, index_t n,
                                      double sign, visual_weight_options o) {
  for (index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += static_cast<index_t>(gridDim.x) * blockDim.x) {
    weights[t * weights_stride] = static_cast<W>(::consr::detail::visual_weight(
        to_accum<double>(clean[t * clean_stride]), to_accum<double>(corrupt[t * corrupt_stride]), sign, o));
  }
}

}  // namespace detail

/// Temporary storage of dpo_forward for P pairs (one double per pair); the
/// two-phase call of dpo_forward reports the same.
inline std::size_t dpo_forward_temp_storage_bytes(index_t num_pairs) noexcept {
  return detail::align_up(static_cast<std::size_t>(num_pairs > 0 ? num_pairs : 1) * sizeof(double),
                          detail::temp_alignment);
}

/// Forward of the DPO objective over P pairs on the device (spec §7; the
/// formulas of consr::dpo_forward): per pair Δ (eq. 7) or Δ' (eq. 11),
/// σ(−Δ'), rewards, softplus(−Δ') and the objective L (standard) or L'
/// (consr, eq. 14, ×β with scale_by_beta); `loss` (one element, or empty: not
/// written) receives Σ_i L_i / P (mean; 0 for P = 0) or Σ_i L_i (sum, none),
/// summed in double in a fixed order. Metrics are optional. Temporary storage
/// follows CUB's two-phase convention (one double per pair). With
/// length_normalize, a pair whose side has no scored token is reported in
/// *error (status::empty_sequence, index = pair) and its values are NaN.
/// Offsets are validated on the device into *error as well: without an
/// error_info (error == nullptr) neither is reported (the values are NaN or
/// computed on clamped segments; nothing is read out of bounds), so pass one
/// unless the offsets and lengths were checked before (the LibTorch adapter
/// passes one and raises the error naming the pair).
/// Returns status::invalid_argument naming 'options.*', 'chosen.*',
/// 'rejected.*', 'loss', 'metrics.*' or 'temp_storage_bytes' with nothing
/// launched.
template <class T, class Offset, class Label>
status dpo_forward(void* d_temp_storage, std::size_t& temp_storage_bytes, const dpo_sequences<T, Offset, Label>& chosen,
                   const dpo_sequences<T, Offset, Label>& rejected, const dpo_options& options, device_view<T, 1> loss,
                   dpo_pair_metrics<T> metrics = {}, cudaStream_t stream = nullptr,
                   error_info* error = nullptr) noexcept {
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::dpo_forward";
    detail::dpo_side_args<T, Offset, Label> ca, ra;
    const index_t P = detail::dpo_check(chosen, rejected, options, fn, ca, ra);
    detail::check_optional_size(loss, 1, fn, "loss", "one value: the reduced objective");
    ::consr::detail::dpo_check_metrics(metrics, P, fn);
    const std::size_t sizes[1] = {static_cast<std::size_t>(P) * sizeof(double)};
    void* parts[1];
    detail::partition_temp_storage(d_temp_storage, temp_storage_bytes, sizes, parts, fn);
    if (d_temp_storage == nullptr) return status::success;
    double* objective = static_cast<double*>(parts[0]);
    const status v = detail::dpo_validate_offsets(ca, ra, error, stream);
    if (v != status::success) return v;
    if (P > 0) {
      detail::dpo_forward_kernel<T, std::remove_cv_t<Offset>, std::remove_cv_t<Label>>
          <<<detail::dpo_grid(P), detail::dpo_block, 0, stream>>>(ca, ra, options, metrics, objective, error);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (loss.size() != 0) {
      detail::dpo_reduce_kernel<T><<<1, detail::dpo_block, 0, stream>>>(
          objective, P, options.reduction == loss_reduction::mean, loss.data());
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    return status::success;
  });
}

/// Backward of dpo_forward on the device for reduction mean or sum with a
/// host scalar upstream gradient `grad_loss`: writes every token's gradient
/// (overwritten; ignored tokens get 0) — standard: ∂L/∂a_t = −β σ(−Δ),
/// ∂L/∂b_t = +β σ(−Δ) (eq. 8); consr: ∓σ(−Δ') ω_t [×β] (eq. 14, σ(−Δ') a
/// constant) — times grad_loss, / P for mean. Host twin: consr::dpo_backward.
/// With scale_by_beta, length_normalize off and ω = 1 the consr gradient is
/// computed by the same operations as the standard one (bitwise equal).
/// Preconditions as dpo_forward; grad views have the policy views' sizes and
/// overlap neither the inputs nor each other. Returns status::invalid_argument
/// naming 'options.reduction' (none), 'grad_chosen_logp', 'grad_rejected_logp'
/// or as dpo_forward, with nothing launched; bad offsets and empty sequences
/// go to *error as in dpo_forward.
template <class T, class Offset, class Label>
status dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                    const dpo_options& options, double grad_loss, device_view<T, 1> grad_chosen_logp,
                    device_view<T, 1> grad_rejected_logp, cudaStream_t stream = nullptr,
                    error_info* error = nullptr) noexcept {
  return detail::guarded([&] {
    const detail::dpo_upstream<T> up{grad_loss, nullptr, 0, false, false};
    return detail::dpo_backward_impl(chosen, rejected, options, up, static_cast<const device_view<const T, 1>*>(nullptr),
                                     grad_chosen_logp, grad_rejected_logp,
                                     stream, error);
  });
}

/// Backward with the upstream gradient on the device: `grad_loss` holds one
/// value per pair for reduction none (pair i scaled by grad_loss[i]), or one
/// device scalar for mean / sum (as the scalar overload; an autograd backward
/// gets it this way without a synchronization). Otherwise as above; errors
/// also name 'grad_loss'.
template <class T, class Offset, class Label>
status dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                    const dpo_options& options, device_view<const ::consr::detail::type_identity_t<T>, 1> grad_loss,
                    device_view<T, 1> grad_chosen_logp, device_view<T, 1> grad_rejected_logp,
                    cudaStream_t stream = nullptr, error_info* error = nullptr) noexcept {
  return detail::guarded([&] {
    const detail::dpo_upstream<T> up{0.0, nullptr, 0, false, false};
    return detail::dpo_backward_impl(chosen, rejected, options, up, &grad_loss, grad_chosen_logp, grad_rejected_logp,
                                     stream, error);
  });
}

/// Token visual weights on the device, eqs. 12–13 (no gradient):
///   Δp_t = exp(logp_clean[t]) − exp(logp_corrupt[t]),
///   ω_t = 1 ± clip(α·Δp_t, clip_lo, clip_hi) (+ chosen side, − rejected side),
/// in double, rounded once to W; a NaN Δp_t gives NaN. Host twin:
/// consr::visual_weights. Returns status::invalid_argument naming
/// 'logp_corrupt', 'weights', 'options.*' or 'side'.
template <class V1, class V2, class W>
status visual_weights(device_view<V1, 1> logp_clean, device_view<V2, 1> logp_corrupt, weight_side side,
                      device_view<W, 1> weights, const visual_weight_options& options = {},
                      cudaStream_t stream = nullptr) noexcept {
  return detail::guarded([&] {
    const index_t n = ::consr::detail::visual_weights_check(logp_clean, logp_corrupt, side, weights, options,
                                                            "consr::cuda::visual_weights");
    if (n == 0) return status::success;
    detail::visual_weights_kernel<std::remove_cv_t<V1>, std::remove_cv_t<V2>, W>
        <<<detail::elementwise_grid(n), detail::elementwise_block, 0, stream>>>(
            logp_clean.data(), logp_clean.stride(0), logp_corrupt.data(), logp_corrupt.stride(0), weights.data(),
            weights.stride(0), n, side == weight_side::chosen ? 1.0 : -1.0, options);
    return to_status(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace consr
