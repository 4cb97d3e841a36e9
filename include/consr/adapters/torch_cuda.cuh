// consr/adapters/torch_cuda.cuh — the CUDA half of the LibTorch adapter: consr::cuda's kernels
// behind consr/adapters/torch.hpp's CUDA registry. Compile it with nvcc in exactly one .cu file of
// a program (the torch.ops library of bindings/torch/ does) that links a CUDA build of LibTorch;
// loading that program fills consr::libtorch::cuda_backend_registry(), and from then on CUDA
// tensors given to consr::libtorch::* run these launchers on the tensor's device and current stream.
//
// Each entry receives tensors torch.hpp has validated (dtype, shape, one device) and:
//  - takes device views of them (no copy), a CUDAGuard for their device and the current stream;
//  - runs the launcher through one of two helpers: run_launcher (no temporary storage) or
//    run_with_temp_storage (CUB's two-phase convention, as a two_phase_launch: can_implement() is
//    the size query, which validates every argument, and run() the launch, with a temp_storage
//    from the caching allocator that the helper owns for the call);
//  - so every failure takes one path, check_cuda_status: status::invalid_argument carries the
//    launcher's message (naming the argument), a device error the CUDA runtime's.
// The DPO forward is the only entry that synchronizes: what only the data can reveal (an empty
// sequence under length normalization) comes back through consr::cuda::error_info.
//
// The entries live per family in consr/adapters/torch/cuda_{common,logprobs,dpo,corruption}.cuh;
// this header includes them and registers them (include it, not those, in exactly one .cu file).
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch_cuda.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include "torch.hpp"
#include "torch/cuda_common.cuh"
#include "torch/cuda_corruption.cuh"
#include "torch/cuda_dpo.cuh"
#include "torch/cuda_logprobs.cuh"

namespace consr {
namespace libtorch {
namespace detail {

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
