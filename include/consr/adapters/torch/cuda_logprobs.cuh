// consr/adapters/torch/cuda_logprobs.cuh — the CUDA entries of token log-probs and of the
// memory-bounded log-probs from hidden states (spec §4: consr/cuda/logprobs.cuh and
// consr/cuda/linear_logprobs.cuh, the latter on PyTorch's cuBLAS handle). Part of
// consr/adapters/torch_cuda.cuh, which programs include (in one .cu file) instead.
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch/cuda_logprobs.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstddef>

#include "../../cuda/linear_logprobs.cuh"
#include "../../cuda/logprobs.cuh"
#include "cuda_common.cuh"
#include "linear_logprobs.hpp"
#include "logprobs.hpp"

namespace consr {
namespace libtorch {
namespace detail {

/// On logits' device: f(type_tag<Logit>{}, x, y, stream) with Logit the element type of logits, x and y
/// the device views of logits [N, V] and labels [N] and the current stream.
template <class F>
void with_logprob_inputs(const at::Tensor& logits, const at::Tensor& labels, const char* fn, F&& f) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = current_stream(logits);
  dispatch_values_and_labels(logits, labels, fn, "logits", [&](auto logit_tag, auto label_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Label = typename decltype(label_tag)::type;
    const auto x = device_view_of<const Logit, 2>(logits, "logits", fn);
    const auto y = device_view_of<const Label, 1>(labels, "labels", fn);
    f(logit_tag, x, y, stream);
  });
}

inline void cuda_token_logprobs(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& token_logp,
                                const at::Tensor& lse, const logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::token_logprobs";
  with_logprob_inputs(logits, labels, fn, [&](auto logit_tag, const auto& x, const auto& y, cudaStream_t stream) {
    using Acc = accum_t<typename decltype(logit_tag)::type>;
    const auto out = device_view_of<Acc, 1>(token_logp, "token_logp", fn);
    const auto out_lse = device_view_of<Acc, 1>(lse, "lse", fn);
    // Labels were checked against [0, V) by torch.hpp; the kernels clamp any index regardless.
    run_with_temp_storage(fn, logits, [&](void* temp, std::size_t& bytes) {
      return consr::cuda::token_logprobs(temp, bytes, x, y, out, out_lse, options, nullptr, stream);
    });
  });
}

inline void cuda_token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                         const at::Tensor& grad_token_logp, const at::Tensor& grad_logits,
                                         const logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::token_logprobs_backward";
  with_logprob_inputs(logits, labels, fn, [&](auto logit_tag, const auto& x, const auto& y, cudaStream_t stream) {
    using Logit = typename decltype(logit_tag)::type;
    using Acc = accum_t<Logit>;
    const auto l = device_view_of<const Acc, 1>(lse, "lse", fn);
    const auto g = device_view_of<const Acc, 1>(grad_token_logp, "grad_token_logp", fn);
    const auto out = device_view_of<Logit, 2>(grad_logits, "grad_logits", fn);
    run_launcher(fn, [&] { return consr::cuda::token_logprobs_backward(x, y, l, g, out, options, nullptr, stream); });
  });
}

// ---- memory-bounded log-probs ------------------------------------------------------------------

/// What both directions of the memory-bounded log-probs read, as device views (bias empty when
/// undefined).
template <class T, class Label>
struct linear_device_inputs {
  device_view<const T, 2> hidden, weight;
  device_view<const T, 1> bias;
  device_view<const Label, 1> labels;
};

/// On hidden's device: f(type_tag<T>{}, inputs, handle, stream) with T the element type of hidden,
/// the inputs' device views, PyTorch's cuBLAS handle for the device (consr sets its stream for the
/// call and restores it) and the current stream.
template <class F>
void with_linear_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& labels, const char* fn, F&& f) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = current_stream(hidden);
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  dispatch_values_and_labels(hidden, labels, fn, "hidden", [&](auto tag, auto label_tag) {
    using T = typename decltype(tag)::type;
    using Label = typename decltype(label_tag)::type;
    const linear_device_inputs<T, Label> in{device_view_of<const T, 2>(hidden, "hidden", fn),
                                            device_view_of<const T, 2>(weight, "weight", fn),
                                            optional_view_of<const T, 1, device_space>(bias, "bias", fn),
                                            device_view_of<const Label, 1>(labels, "labels", fn)};
    f(tag, in, handle, stream);
  });
}

inline void cuda_linear_token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                       const at::Tensor& labels, const at::Tensor& token_logp, const at::Tensor& lse,
                                       const linear_logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
  with_linear_inputs(hidden, weight, bias, labels, fn, [&](auto tag, const auto& in, cublasHandle_t handle,
                                                           cudaStream_t stream) {
    using Acc = accum_t<typename decltype(tag)::type>;
    const auto out = device_view_of<Acc, 1>(token_logp, "token_logp", fn);
    const auto out_lse = device_view_of<Acc, 1>(lse, "lse", fn);
    run_with_temp_storage(fn, hidden, [&](void* temp, std::size_t& bytes) {
      return consr::cuda::linear_token_logprobs(handle, temp, bytes, in.hidden, in.weight, in.bias, in.labels, out,
                                                out_lse, options, nullptr, stream);
    });
  });
}

/// Undefined gradient tensors are not computed (empty views).
inline void cuda_linear_token_logprobs_backward(const at::Tensor& hidden, const at::Tensor& weight,
                                                const at::Tensor& bias, const at::Tensor& labels, const at::Tensor& lse,
                                                const at::Tensor& grad_token_logp, const at::Tensor& grad_hidden,
                                                const at::Tensor& grad_weight, const at::Tensor& grad_bias,
                                                const linear_logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs (backward)";
  with_linear_inputs(hidden, weight, bias, labels, fn, [&](auto tag, const auto& in, cublasHandle_t handle,
                                                           cudaStream_t stream) {
    using Acc = accum_t<typename decltype(tag)::type>;
    const auto l = device_view_of<const Acc, 1>(lse, "lse", fn);
    const auto g = device_view_of<const Acc, 1>(grad_token_logp, "grad_token_logp", fn);
    const auto gh = optional_view_of<Acc, 2, device_space>(grad_hidden, "grad_hidden", fn);
    const auto gw = optional_view_of<Acc, 2, device_space>(grad_weight, "grad_weight", fn);
    const auto gb = optional_view_of<Acc, 1, device_space>(grad_bias, "grad_bias", fn);
    run_with_temp_storage(fn, hidden, [&](void* temp, std::size_t& bytes) {
      return consr::cuda::linear_token_logprobs_backward(handle, temp, bytes, in.hidden, in.weight, in.bias, in.labels,
                                                         l, g, gh, gw, gb, options, nullptr, stream);
    });
  });
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
