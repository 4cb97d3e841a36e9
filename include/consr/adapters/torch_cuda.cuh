// consr/adapters/torch_cuda.cuh — the CUDA half of the LibTorch adapter: consr::cuda's kernels
// behind consr/adapters/torch.hpp's CUDA registry. Compile it with nvcc in exactly one .cu file of
// a program (the torch.ops library of bindings/torch/ does) that links a CUDA build of LibTorch;
// loading that program fills consr::libtorch::cuda_backend_registry(), and from then on CUDA
// tensors given to consr::libtorch::* run these launchers on the tensor's device and current stream.
//
// Each entry receives tensors torch.hpp has validated (dtype, shape, one device) and:
//  - takes device views of them (no copy), a CUDAGuard for their device and the current stream;
//  - allocates temporary storage (CUB's two-phase convention) through the caching allocator;
//  - turns a consr::status into c10::Error: status::invalid_argument carries the launcher's message
//    (naming the argument), a device error the CUDA runtime's.
// The DPO forward is the only entry that synchronizes: what only the data can reveal (an empty
// sequence under length normalization) comes back through consr::cuda::error_info.
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch_cuda.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <string>

#include "../cuda/corruption.cuh"
#include "../cuda/dpo.cuh"
#include "../cuda/linear_logprobs.cuh"
#include "../cuda/logprobs.cuh"
#include "torch.hpp"

namespace consr {
namespace libtorch {
namespace detail {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

/// c10::Error for a failed launcher status.
inline void check_cuda_status(status s, const char* fn) {
  if (s == status::success) return;
  if (s == status::invalid_argument) throw_torch_error(consr::cuda::last_error_message());
  const cudaError_t e = cudaGetLastError();
  throw_torch_error(std::string(fn) + ": " + consr::to_string(s) + ": " + cudaGetErrorString(e));
}

/// `bytes` of device temporary storage (at least 1) on `like`'s device.
inline at::Tensor cuda_temp_storage(std::size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

inline void cuda_token_logprobs(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& token_logp,
                                const at::Tensor& lse, const logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::token_logprobs";
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = current_stream(logits);
  dispatch_floating(logits, fn, "logits", [&](auto logit_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Acc = accum_t<Logit>;
    dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      const auto x = device_view_of<const Logit, 2>(logits, "logits", fn);
      const auto y = device_view_of<const Label, 1>(labels, "labels", fn);
      const auto out = device_view_of<Acc, 1>(token_logp, "token_logp", fn);
      const auto out_lse = device_view_of<Acc, 1>(lse, "lse", fn);
      std::size_t bytes = 0;
      check_cuda_status(consr::cuda::token_logprobs(nullptr, bytes, x, y, out, out_lse, options, nullptr, stream), fn);
      const at::Tensor temp = cuda_temp_storage(bytes, logits);
      // Labels were checked against [0, V) by torch.hpp; the kernels clamp any index regardless.
      check_cuda_status(
          consr::cuda::token_logprobs(temp.data_ptr(), bytes, x, y, out, out_lse, options, nullptr, stream), fn);
    });
  });
}

inline void cuda_token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                         const at::Tensor& grad_token_logp, const at::Tensor& grad_logits,
                                         const logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::token_logprobs_backward";
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = current_stream(logits);
  dispatch_floating(logits, fn, "logits", [&](auto logit_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Acc = accum_t<Logit>;
    dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      check_cuda_status(consr::cuda::token_logprobs_backward(
                            device_view_of<const Logit, 2>(logits, "logits", fn),
                            device_view_of<const Label, 1>(labels, "labels", fn),
                            device_view_of<const Acc, 1>(lse, "lse", fn),
                            device_view_of<const Acc, 1>(grad_token_logp, "grad_token_logp", fn),
                            device_view_of<Logit, 2>(grad_logits, "grad_logits", fn), options, nullptr, stream),
                        fn);
    });
  });
}

inline void cuda_add_diffusion_noise(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                     const diffusion_noise_options& options) {
  constexpr const char* fn = "consr::libtorch::add_diffusion_noise";
  const c10::cuda::CUDAGuard guard(image.device());
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda_status(consr::cuda::add_diffusion_noise<T, 1>(device_view_of<const T, 1>(image.view({-1}), "image", fn),
                                                             device_view_of<T, 1>(out.view({-1}), "out", fn), key,
                                                             options, current_stream(image)),
                      fn);
  });
}

inline void cuda_random_patch_mask(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                   const patch_mask_options& options) {
  constexpr const char* fn = "consr::libtorch::random_patch_mask";
  const c10::cuda::CUDAGuard guard(image.device());
  const cudaStream_t stream = current_stream(image);
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto x = device_view_of<const T, 4>(image, "image", fn);
    const auto y = device_view_of<T, 4>(out, "out", fn);
    std::size_t bytes = 0;
    check_cuda_status(consr::cuda::random_patch_mask<T, 4>(nullptr, bytes, x, y, key, options, stream), fn);
    const at::Tensor temp = cuda_temp_storage(bytes, image);
    check_cuda_status(consr::cuda::random_patch_mask<T, 4>(temp.data_ptr(), bytes, x, y, key, options, stream), fn);
  });
}

inline void cuda_mixup(const at::Tensor& image, const at::Tensor& other, const at::Tensor& out, double lambda) {
  constexpr const char* fn = "consr::libtorch::mixup";
  const c10::cuda::CUDAGuard guard(image.device());
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda_status(consr::cuda::mixup<T, 1>(device_view_of<const T, 1>(image.view({-1}), "image", fn),
                                               device_view_of<const T, 1>(other.view({-1}), "other", fn),
                                               device_view_of<T, 1>(out.view({-1}), "out", fn), lambda,
                                               current_stream(image)),
                      fn);
  });
}

inline void cuda_random_resized_crop(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                     const resized_crop_options& options) {
  constexpr const char* fn = "consr::libtorch::random_resized_crop";
  const c10::cuda::CUDAGuard guard(image.device());
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda_status(consr::cuda::random_resized_crop<T, 4>(device_view_of<const T, 4>(image, "image", fn),
                                                             device_view_of<T, 4>(out, "out", fn), key, options,
                                                             current_stream(image)),
                      fn);
  });
}

// ---- DPO -----------------------------------------------------------------------------------------

template <class T>
consr::cuda::dpo_sequences<T, std::int64_t, std::int64_t> device_sequences(const dpo_prepared_side& s,
                                                                           const dpo_arg_names& names,
                                                                           const char* fn) {
  consr::cuda::dpo_sequences<T, std::int64_t, std::int64_t> q;
  q.policy_logp = device_view_of<const T, 1>(s.policy_logp, names.policy_logp.c_str(), fn);
  q.offsets = device_view_of<const std::int64_t, 1>(s.offsets, names.offsets.c_str(), fn);
  if (s.reference_logp.defined())
    q.reference_logp = device_view_of<const T, 1>(s.reference_logp, names.reference_logp.c_str(), fn);
  if (s.reference_logp_sum.defined())
    q.reference_logp_sum = device_view_of<const T, 1>(s.reference_logp_sum, names.reference_logp_sum.c_str(), fn);
  if (s.labels.defined()) q.labels = device_view_of<const std::int64_t, 1>(s.labels, names.labels.c_str(), fn);
  if (s.weights.defined()) q.weights = device_view_of<const T, 1>(s.weights, names.weights.c_str(), fn);
  return q;
}

/// Offsets are few (P + 1): they are checked on the host with the host library's check, so a bad
/// array gets the host's message ("argument 'chosen.offsets': ...") before anything is launched.
inline void check_offsets_on_host(const dpo_prepared_side& s, const dpo_arg_names& names, const char* fn) {
  const at::Tensor offsets = s.offsets.cpu();
  translate_errors([&] {
    consr::detail::check_packed_offsets(host_view_of<const std::int64_t, 1>(offsets, names.offsets.c_str(), fn),
                                        s.policy_logp.numel(), "consr::dpo_forward", names.offsets.c_str(),
                                        names.policy_logp.c_str());
  });
}

template <class T>
consr::device_view<T, 1> device_metric_column(const at::Tensor& metrics, dpo_metric m) {
  if (metrics.size(0) == 0) return {};
  const index_t ext[1] = {metrics.size(0)};
  const index_t str[1] = {metrics.stride(0)};
  return consr::device_view<T, 1>(static_cast<T*>(metrics.data_ptr()) + static_cast<int>(m) * metrics.stride(1), ext,
                                  str);
}

inline void cuda_dpo_forward(const dpo_prepared_side& chosen, const dpo_prepared_side& rejected,
                             const dpo_options& options, const at::Tensor& loss, const at::Tensor& metrics) {
  constexpr const char* fn = "consr::libtorch::dpo_loss";
  const c10::cuda::CUDAGuard guard(chosen.policy_logp.device());
  const cudaStream_t stream = current_stream(chosen.policy_logp);
  const dpo_arg_names chosen_names("chosen"), rejected_names("rejected");
  check_offsets_on_host(chosen, chosen_names, fn);
  check_offsets_on_host(rejected, rejected_names, fn);
  at::Tensor error = at::zeros({static_cast<int64_t>(sizeof(consr::cuda::error_info))},
                               chosen.policy_logp.options().dtype(at::kByte));
  auto* error_ptr = static_cast<consr::cuda::error_info*>(error.data_ptr());
  dispatch_float_or_double(chosen.policy_logp, fn, "chosen.policy_logp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto c = device_sequences<T>(chosen, chosen_names, fn);
    const auto r = device_sequences<T>(rejected, rejected_names, fn);
    consr::cuda::dpo_pair_metrics<T> m;
    m.margin_logit = device_metric_column<T>(metrics, dpo_metric::margin_logit);
    m.sigma_neg = device_metric_column<T>(metrics, dpo_metric::sigma_neg);
    m.chosen_reward = device_metric_column<T>(metrics, dpo_metric::chosen_reward);
    m.rejected_reward = device_metric_column<T>(metrics, dpo_metric::rejected_reward);
    m.reward_margin = device_metric_column<T>(metrics, dpo_metric::reward_margin);
    m.accuracy = device_metric_column<T>(metrics, dpo_metric::accuracy);
    m.dpo_loss = device_metric_column<T>(metrics, dpo_metric::dpo_loss);
    m.loss = device_metric_column<T>(metrics, dpo_metric::loss);
    const auto out = device_view_of<T, 1>(loss, "loss", fn);
    std::size_t bytes = 0;
    check_cuda_status(consr::cuda::dpo_forward(nullptr, bytes, c, r, options, out, m, stream, error_ptr), fn);
    const at::Tensor temp = cuda_temp_storage(bytes, chosen.policy_logp);
    check_cuda_status(consr::cuda::dpo_forward(temp.data_ptr(), bytes, c, r, options, out, m, stream, error_ptr), fn);
  });
  // One synchronization: the data errors the kernels found.
  const at::Tensor host_error = error.cpu();
  consr::cuda::error_info info;
  std::memcpy(&info, host_error.data_ptr(), sizeof info);
  if (info.code == 0) return;
  const long long pair = consr::cuda::error_index(info);
  if (info.code == static_cast<int>(status::empty_sequence)) {
    // Name the side, as the host does: count that pair's scored tokens on each side.
    auto scored = [&](const dpo_prepared_side& s) {
      const int64_t begin = s.offsets[pair].item<int64_t>(), end = s.offsets[pair + 1].item<int64_t>();
      if (!s.labels.defined()) return end - begin;
      return s.labels.narrow(0, begin, end - begin).ne(options.ignore_index).sum().item<int64_t>();
    };
    const char* side = scored(chosen) == 0 ? "chosen" : "rejected";
    fail(fn, side,
         "pair " + std::to_string(pair) +
             " has no scored token; length normalization (eq. 11) divides by it: drop the pair or set "
             "length_normalize = false");
  }
  fail(fn, "chosen.offsets", std::string("the CUDA kernels reported ") + consr::to_string(static_cast<status>(info.code)) +
                                 " at index " + std::to_string(pair));
}

inline void cuda_dpo_backward(const dpo_prepared_side& chosen, const dpo_prepared_side& rejected,
                              const dpo_options& options, const at::Tensor& grad_loss, const at::Tensor& grad_chosen,
                              const at::Tensor& grad_rejected) {
  constexpr const char* fn = "consr::libtorch::dpo_loss (backward)";
  const c10::cuda::CUDAGuard guard(chosen.policy_logp.device());
  const dpo_arg_names chosen_names("chosen"), rejected_names("rejected");
  dispatch_float_or_double(chosen.policy_logp, fn, "chosen.policy_logp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    // The forward validated the data; the upstream gradient is read on the device (no synchronization).
    check_cuda_status(consr::cuda::dpo_backward(device_sequences<T>(chosen, chosen_names, fn),
                                                device_sequences<T>(rejected, rejected_names, fn), options,
                                                device_view_of<const T, 1>(grad_loss, "grad_loss", fn),
                                                device_view_of<T, 1>(grad_chosen, "grad_chosen_logp", fn),
                                                device_view_of<T, 1>(grad_rejected, "grad_rejected_logp", fn),
                                                current_stream(grad_chosen), nullptr),
                      fn);
  });
}

inline void cuda_visual_weights(const at::Tensor& logp_clean, const at::Tensor& logp_corrupt, weight_side side,
                                const visual_weight_options& options, const at::Tensor& weights) {
  constexpr const char* fn = "consr::libtorch::visual_weights";
  const c10::cuda::CUDAGuard guard(logp_clean.device());
  dispatch_float_or_double(weights, fn, "weights", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda_status(consr::cuda::visual_weights<const T, const T, T>(
                          device_view_of<const T, 1>(logp_clean, "logp_clean", fn),
                          device_view_of<const T, 1>(logp_corrupt, "logp_corrupt", fn), side,
                          device_view_of<T, 1>(weights, "weights", fn), options, current_stream(weights)),
                      fn);
  });
}

// ---- memory-bounded log-probs ------------------------------------------------------------------

inline void cuda_linear_token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                       const at::Tensor& labels, const at::Tensor& token_logp, const at::Tensor& lse,
                                       const linear_logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = current_stream(hidden);
  // PyTorch's cuBLAS handle for this device; consr sets its stream for the call and restores it.
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  dispatch_floating(hidden, fn, "hidden", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = accum_t<T>;
    dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      const auto h = device_view_of<const T, 2>(hidden, "hidden", fn);
      const auto w = device_view_of<const T, 2>(weight, "weight", fn);
      const auto b = bias.defined() ? device_view_of<const T, 1>(bias, "bias", fn) : device_view<const T, 1>{};
      const auto y = device_view_of<const Label, 1>(labels, "labels", fn);
      const auto out = device_view_of<Acc, 1>(token_logp, "token_logp", fn);
      const auto out_lse = device_view_of<Acc, 1>(lse, "lse", fn);
      std::size_t bytes = 0;
      check_cuda_status(
          consr::cuda::linear_token_logprobs(handle, nullptr, bytes, h, w, b, y, out, out_lse, options, nullptr, stream),
          fn);
      const at::Tensor temp = cuda_temp_storage(bytes, hidden);
      check_cuda_status(consr::cuda::linear_token_logprobs(handle, temp.data_ptr(), bytes, h, w, b, y, out, out_lse,
                                                           options, nullptr, stream),
                        fn);
    });
  });
}

inline void cuda_linear_token_logprobs_backward(const at::Tensor& hidden, const at::Tensor& weight,
                                                const at::Tensor& bias, const at::Tensor& labels, const at::Tensor& lse,
                                                const at::Tensor& grad_token_logp, const at::Tensor& grad_hidden,
                                                const at::Tensor& grad_weight, const at::Tensor& grad_bias,
                                                const linear_logprob_options& options) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs (backward)";
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = current_stream(hidden);
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  dispatch_floating(hidden, fn, "hidden", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = accum_t<T>;
    dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      const auto h = device_view_of<const T, 2>(hidden, "hidden", fn);
      const auto w = device_view_of<const T, 2>(weight, "weight", fn);
      const auto b = bias.defined() ? device_view_of<const T, 1>(bias, "bias", fn) : device_view<const T, 1>{};
      const auto y = device_view_of<const Label, 1>(labels, "labels", fn);
      const auto l = device_view_of<const Acc, 1>(lse, "lse", fn);
      const auto g = device_view_of<const Acc, 1>(grad_token_logp, "grad_token_logp", fn);
      const auto gh = grad_hidden.defined() ? device_view_of<Acc, 2>(grad_hidden, "grad_hidden", fn)
                                            : device_view<Acc, 2>{};
      const auto gw = grad_weight.defined() ? device_view_of<Acc, 2>(grad_weight, "grad_weight", fn)
                                            : device_view<Acc, 2>{};
      const auto gb = grad_bias.defined() ? device_view_of<Acc, 1>(grad_bias, "grad_bias", fn) : device_view<Acc, 1>{};
      std::size_t bytes = 0;
      check_cuda_status(consr::cuda::linear_token_logprobs_backward(handle, nullptr, bytes, h, w, b, y, l, g, gh, gw,
                                                                    gb, options, nullptr, stream),
                        fn);
      const at::Tensor temp = cuda_temp_storage(bytes, hidden);
      check_cuda_status(consr::cuda::linear_token_logprobs_backward(handle, temp.data_ptr(), bytes, h, w, b, y, l, g,
                                                                    gh, gw, gb, options, nullptr, stream),
                        fn);
    });
  });
}

/// Fills the registry; runs once, when the program (or shared library) holding this file loads.
inline bool register_cuda_backend() {
  cuda_backend& b = cuda_backend_registry();
  b.token_logprobs = &cuda_token_logprobs;
  b.token_logprobs_backward = &cuda_token_logprobs_backward;
  b.add_diffusion_noise = &cuda_add_diffusion_noise;
  b.random_patch_mask = &cuda_random_patch_mask;
  b.mixup = &cuda_mixup;
  b.random_resized_crop = &cuda_random_resized_crop;
  b.dpo_forward = &cuda_dpo_forward;
  b.dpo_backward = &cuda_dpo_backward;
  b.visual_weights = &cuda_visual_weights;
  b.linear_token_logprobs = &cuda_linear_token_logprobs;
  b.linear_token_logprobs_backward = &cuda_linear_token_logprobs_backward;
  return true;
}

inline const bool cuda_backend_registered = register_cuda_backend();

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
