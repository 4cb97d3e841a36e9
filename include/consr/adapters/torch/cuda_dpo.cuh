// consr/adapters/torch/cuda_dpo.cuh — the CUDA entries of the DPO objectives and the visual weights
// (spec §7, eqs. 12–13: consr/cuda/dpo.cuh). The DPO forward is the only entry of the adapter that
// synchronizes: what only the data can reveal (an empty sequence under length normalization) comes
// back through consr::cuda::error_info. Part of consr/adapters/torch_cuda.cuh, which programs
// include (in one .cu file) instead.
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch/cuda_dpo.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include <c10/cuda/CUDAGuard.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "../../cuda/dpo.cuh"
#include "cuda_common.cuh"
#include "dpo.hpp"
#include "visual_weights.hpp"

namespace consr {
namespace libtorch {
namespace detail {

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
    const auto c = dpo_sequences_of<T, device_space>(chosen.policy_logp, chosen, chosen_names, fn);
    const auto r = dpo_sequences_of<T, device_space>(rejected.policy_logp, rejected, rejected_names, fn);
    const auto m = dpo_metrics_of<T, device_space>(metrics);
    const auto out = device_view_of<T, 1>(loss, "loss", fn);
    run_with_temp_storage(fn, chosen.policy_logp, [&](void* temp, std::size_t& bytes) {
      return consr::cuda::dpo_forward(temp, bytes, c, r, options, out, m, stream, error_ptr);
    });
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
    const auto c = dpo_sequences_of<T, device_space>(chosen.policy_logp, chosen, chosen_names, fn);
    const auto r = dpo_sequences_of<T, device_space>(rejected.policy_logp, rejected, rejected_names, fn);
    const auto g = device_view_of<const T, 1>(grad_loss, "grad_loss", fn);
    const auto gc = device_view_of<T, 1>(grad_chosen, "grad_chosen_logp", fn);
    const auto gr = device_view_of<T, 1>(grad_rejected, "grad_rejected_logp", fn);
    run_launcher(fn, [&] {
      return consr::cuda::dpo_backward(c, r, options, g, gc, gr, current_stream(grad_chosen), nullptr);
    });
  });
}

inline void cuda_visual_weights(const at::Tensor& logp_clean, const at::Tensor& logp_corrupt, weight_side side,
                                const visual_weight_options& options, const at::Tensor& weights) {
  constexpr const char* fn = "consr::libtorch::visual_weights";
  const c10::cuda::CUDAGuard guard(logp_clean.device());
  dispatch_float_or_double(weights, fn, "weights", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto clean = device_view_of<const T, 1>(logp_clean, "logp_clean", fn);
    const auto corrupt = device_view_of<const T, 1>(logp_corrupt, "logp_corrupt", fn);
    const auto out = device_view_of<T, 1>(weights, "weights", fn);
    run_launcher(fn, [&] {
      return consr::cuda::visual_weights<const T, const T, T>(clean, corrupt, side, out, options,
                                                              current_stream(weights));
    });
  });
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
