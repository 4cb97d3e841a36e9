// consr/adapters/torch/cuda_corruption.cuh — the CUDA entries of the image corruptions (spec §3,
// Table 7: consr/cuda/corruption.cuh). Part of consr/adapters/torch_cuda.cuh, which programs
// include (in one .cu file) instead.
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch/cuda_corruption.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include <c10/cuda/CUDAGuard.h>

#include <cstddef>

#include "../../cuda/corruption.cuh"
#include "corruption.hpp"
#include "cuda_common.cuh"

namespace consr {
namespace libtorch {
namespace detail {

inline void cuda_add_diffusion_noise(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                     const diffusion_noise_options& options) {
  constexpr const char* fn = "consr::libtorch::add_diffusion_noise";
  const c10::cuda::CUDAGuard guard(image.device());
  with_image_views<1, device_space>(image.view({-1}), out.view({-1}), fn, [&](auto tag, auto x, auto y) {
    using T = typename decltype(tag)::type;
    run_launcher(fn, [&] { return consr::cuda::add_diffusion_noise<T, 1>(x, y, key, options, current_stream(image)); });
  });
}

inline void cuda_random_patch_mask(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                   const patch_mask_options& options) {
  constexpr const char* fn = "consr::libtorch::random_patch_mask";
  const c10::cuda::CUDAGuard guard(image.device());
  const cudaStream_t stream = current_stream(image);
  with_image_views<4, device_space>(image, out, fn, [&](auto tag, auto x, auto y) {
    using T = typename decltype(tag)::type;
    run_with_temp_storage(fn, image, [&](void* temp, std::size_t& bytes) {
      return consr::cuda::random_patch_mask<T, 4>(temp, bytes, x, y, key, options, stream);
    });
  });
}

inline void cuda_mixup(const at::Tensor& image, const at::Tensor& other, const at::Tensor& out, double lambda) {
  constexpr const char* fn = "consr::libtorch::mixup";
  const c10::cuda::CUDAGuard guard(image.device());
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto x = device_view_of<const T, 1>(image.view({-1}), "image", fn);
    const auto o = device_view_of<const T, 1>(other.view({-1}), "other", fn);
    const auto y = device_view_of<T, 1>(out.view({-1}), "out", fn);
    run_launcher(fn, [&] { return consr::cuda::mixup<T, 1>(x, o, y, lambda, current_stream(image)); });
  });
}

inline void cuda_random_resized_crop(const at::Tensor& image, const at::Tensor& out, rng_key key,
                                     const resized_crop_options& options) {
  constexpr const char* fn = "consr::libtorch::random_resized_crop";
  const c10::cuda::CUDAGuard guard(image.device());
  with_image_views<4, device_space>(image, out, fn, [&](auto tag, auto x, auto y) {
    using T = typename decltype(tag)::type;
    run_launcher(fn, [&] { return consr::cuda::random_resized_crop<T, 4>(x, y, key, options, current_stream(image)); });
  });
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
