// consr/cuda/corruption.cuh — the image corruptions of the contrastive reward
// on the GPU (spec §3; paper §3.1–3.2, Appendix C Table 7): closed-form
// diffusion noise, random patch masking, mixup and random resized crop.
// Host twins: consr/corruption.hpp.
//
// Reproducibility: the kernels call the very CONSR_HOST_DEVICE functions of
// consr/random.hpp the host uses (normal_block, uniform_at via
// patch_is_masked), on the same logical indices, so the same (seed, offset)
// gives the host's noise (within the 1e-6 of spec §3: the double arithmetic of
// Box–Muller may be FMA-contracted differently by the two compilers) and
// exactly the host's patch masks, whatever the launch shape. The element-wise
// arithmetic after the random draws (a·x + b·ε, λ·x + (1 − λ)·x2, bilinear
// taps and weights) is written with explicitly rounded operations
// (__fmul_rn, __dadd_rn, ...) so that nvcc cannot contract it into FMAs: it
// rounds exactly as the host twin compiled without FMA contraction.
//
// Launchers check shapes on the host and return status::invalid_argument
// (message in consr::cuda::last_error_message()) before launching anything;
// they are stream-ordered, never allocate, never synchronize, never throw.
// Views may be strided (any layout: the noise of an element depends on its
// row-major *logical* index, as on the host); contiguous views take a
// vectorized path (16-byte loads/stores for fp32, one Philox call per 4
// elements, grid-stride loop).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../corruption.hpp"
#include "../random.hpp"
#include "common.cuh"

namespace consr {
namespace cuda {

namespace detail {

// ------------------------------------------------------------------------------------------------
// Element arithmetic without FMA contraction
// ------------------------------------------------------------------------------------------------

/// a·x + b·y rounded as the host computes it (two products, one sum).
__device__ inline float axpby_rn(float a, float x, float b, float y) {
  return __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y));
}
__device__ inline double axpby_rn(double a, double x, double b, double y) {
  return __dadd_rn(__dmul_rn(a, x), __dmul_rn(b, y));
}

/// The host's detail::noised: from_accum<T>(a·x + b·z) in accum_t<T>.
template <class T, class Acc>
__device__ inline T noised(T x, float z, Acc a, Acc b) {
  return from_accum<T>(axpby_rn(a, to_accum<Acc>(x), b, static_cast<Acc>(z)));
}

// ------------------------------------------------------------------------------------------------
// Four consecutive elements at once (16-byte accesses for fp32)
// ------------------------------------------------------------------------------------------------

/// Alignment a group of four T needs for vector accesses: 16 bytes for 4- and
/// 8-byte T (one or two 16-byte accesses), 8 bytes for 2-byte T.
template <class T>
inline constexpr std::size_t group_alignment = 4 * sizeof(T) >= 16 ? 16 : 4 * sizeof(T);

template <class T>
struct group4 {
  T v[4];
};

template <class T>
__device__ inline group4<T> load_group(const T* p) {
  group4<T> g;
  if constexpr (4 * sizeof(T) == 16) {
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    memcpy(&g, &w, 16);
  } else if constexpr (4 * sizeof(T) == 32) {
    const uint4 w0 = reinterpret_cast<const uint4*>(p)[0];
    const uint4 w1 = reinterpret_cast<const uint4*>(p)[1];
    memcpy(&g, &w0, 16);
    memcpy(reinterpret_cast<char*>(&g) + 16, &w1, 16);
  } else {
    static_assert(4 * sizeof(T) == 8, "consr::cuda: unsupported element size");
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    memcpy(&g, &w, 8);
  }
  return g;
}

template <class T>
__device__ inline void store_group(T* p, const group4<T>& g) {
  if constexpr (4 * sizeof(T) == 16) {
    uint4 w;
    memcpy(&w, &g, 16);
    *reinterpret_cast<uint4*>(p) = w;
  } else if constexpr (4 * sizeof(T) == 32) {
    uint4 w0, w1;
    memcpy(&w0, &g, 16);
    memcpy(&w1, reinterpret_cast<const char*>(&g) + 16, 16);
    reinterpret_cast<uint4*>(p)[0] = w0;
    reinterpret_cast<uint4*>(p)[1] = w1;
  } else {
    uint2 w;
    memcpy(&w, &g, 8);
    *reinterpret_cast<uint2*>(p) = w;
  }
}

/// True when the address of element `first_index` of `p` (which may lie before
/// p: only the address is formed) is group_alignment<T>-aligned.
template <class T>
bool group_aligned(const T* p, index_t first_index) noexcept {
  const std::uintptr_t a =
      reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(first_index) * sizeof(T);
  return a % group_alignment<T> == 0;
}

// ------------------------------------------------------------------------------------------------
// Logical indices of strided views
// ------------------------------------------------------------------------------------------------

/// Walks the row-major logical indices of two views of the same extents,
/// keeping both element offsets: one division per dimension to start, then
/// additions only.
template <int R>
struct odometer {
  index_t idx[R];
  index_t off_a = 0, off_b = 0;

  template <class A, class B>
  __device__ void start(const device_view<A, R>& a, const device_view<B, R>& b, index_t i) {
    off_a = off_b = 0;
    for (int d = R - 1; d >= 0; --d) {
      const index_t e = a.extent(d);
      idx[d] = i % e;
      i /= e;
      off_a += idx[d] * a.stride(d);
      off_b += idx[d] * b.stride(d);
    }
  }
  template <class A, class B>
  __device__ void next(const device_view<A, R>& a, const device_view<B, R>& b) {
    int d = R - 1;
    ++idx[d];
    off_a += a.stride(d);
    off_b += b.stride(d);
    while (d > 0 && idx[d] == a.extent(d)) {
      off_a -= idx[d] * a.stride(d);
      off_b -= idx[d] * b.stride(d);
      idx[d] = 0;
      --d;
      ++idx[d];
      off_a += a.stride(d);
      off_b += b.stride(d);
    }
  }
};

// ------------------------------------------------------------------------------------------------
// Diffusion noise
// ------------------------------------------------------------------------------------------------

/// Work unit k is Philox block first_block + k: the normals of global indices
/// 4·(first_block + k) .. + 3, i.e. local elements i0 = 4k − lead .. i0 + 3 of
/// the view (lead = element_offset mod 4). One Philox call per 4 elements.
/// Six blocks of 256 threads per SM: caps registers at 40 (no spill; 44 uncapped) for 75 %
/// occupancy — the kernel is bound by the FP64 Box–Muller, whose two normals pairs per thread
/// already give instruction-level parallelism.
inline constexpr int noise_min_blocks_per_sm = 6;

/// The grid-stride loop both noise kernels share: calls f(i0, z) for each work unit, with z the
/// four normals of local elements i0 .. i0 + 3 (some of which may lie outside [0, n)).
template <class F>
__device__ __forceinline__ void for_each_noise_block(index_t n, rng_key key, std::uint64_t element_offset, F&& f) {
  const std::uint64_t first_block = element_offset / 4;
  const index_t lead = static_cast<index_t>(element_offset % 4);
  const index_t num_blocks = (lead + n + 3) / 4;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < num_blocks;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const normal4 z = normal_block(key, first_block + static_cast<std::uint64_t>(k));
    const index_t i0 = 4 * k - lead;
    f(i0, z);
  }
}

template <class T, class Acc, bool Vectorized>
__global__ void __launch_bounds__(elementwise_block, noise_min_blocks_per_sm) noise_contiguous_kernel(const T* x, T* y, index_t n, rng_key key, std::uint64_t element_offset,
                                        Acc a, Acc b) {
  for_each_noise_block(n, key, element_offset, [&](index_t i0, const normal4& z) {
    if (Vectorized && i0 >= 0 && i0 + 4 <= n) {
      const group4<T> in = load_group(x + i0);
      group4<T> out;
#pragma unroll
      for (int l = 0; l < 4; ++l) out.v[l] = noised(in.v[l], z.v[l], a, b);
      store_group(y + i0, out);
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const index_t i = i0 + l;
        if (i >= 0 && i < n) y[i] = noised(x[i], z.v[l], a, b);
      }
    }
  });
}

template <class T, int R, class Acc>
__global__ void __launch_bounds__(elementwise_block, noise_min_blocks_per_sm) noise_strided_kernel(device_view<const T, R> x, device_view<T, R> y, index_t n, rng_key key,
                                     std::uint64_t element_offset, Acc a, Acc b) {
  for_each_noise_block(n, key, element_offset, [&](index_t i0, const normal4& z) {
    const int lo = i0 < 0 ? static_cast<int>(-i0) : 0;
    const int hi = n - i0 < 4 ? static_cast<int>(n - i0) : 4;
    odometer<R> it;
    it.start(x, y, i0 + lo);
    for (int l = lo; l < hi; ++l) {
      if (l > lo) it.next(x, y);
      y.data()[it.off_b] = noised(x.data()[it.off_a], z.v[l], a, b);
    }
  });
}

template <class T, int R>
status launch_noise(const device_view<const T, R>& image, const device_view<T, R>& out, rng_key key,
                    const diffusion_coefficients& coef, std::uint64_t element_offset, cudaStream_t stream,
                    const char* fn) {
  ::consr::detail::check_image_and_output(image, out, fn);
  const index_t n = image.size();
  if (n == 0) return status::success;
  CONSR_CHECK_ARG(element_offset <= std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(n), fn,
                  "element_offset", element_offset, " + ", n, " elements overflows 64-bit indices");
  using acc = accum_t<T>;
  const acc a = static_cast<acc>(coef.sqrt_alpha_bar);
  const acc b = static_cast<acc>(coef.sqrt_one_minus_alpha_bar);
  const index_t lead = static_cast<index_t>(element_offset % 4);
  const unsigned grid = elementwise_grid((lead + n + 3) / 4);
  if (image.is_contiguous() && out.is_contiguous()) {
    // Groups start at local index 4k − lead: vector accesses need p − lead aligned.
    const bool vec = group_aligned(image.data(), -lead) && group_aligned(static_cast<const T*>(out.data()), -lead);
    if (vec)
      noise_contiguous_kernel<T, acc, true>
          <<<grid, elementwise_block, 0, stream>>>(image.data(), out.data(), n, key, element_offset, a, b);
    else
      noise_contiguous_kernel<T, acc, false>
          <<<grid, elementwise_block, 0, stream>>>(image.data(), out.data(), n, key, element_offset, a, b);
  } else {
    if constexpr (R > 0)
      noise_strided_kernel<T, R, acc><<<grid, elementwise_block, 0, stream>>>(image, out, n, key, element_offset, a, b);
  }
  return to_status(cudaGetLastError());
}

// ------------------------------------------------------------------------------------------------
// Batched images
// ------------------------------------------------------------------------------------------------

using ::consr::detail::as_batch;

/// mask[b·P + p] = patch_is_masked(key, image_offset + b, p, probability).
template <int Unused = 0>
__global__ void patch_mask_draw_kernel(unsigned char* mask, index_t batch, index_t patches, rng_key key,
                                              std::uint64_t image_offset, double probability) {
  const index_t total = batch * patches;
  for (index_t q = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total;
       q += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = q / patches, p = q % patches;
    mask[q] = patch_is_masked(key, image_offset + static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(p),
                              probability)
                  ? 1
                  : 0;
  }
}

/// One pixel row (b, y) per block iteration; each thread takes columns, and
/// all channels of a column, so the mask byte is read once per pixel.
template <class T>
__global__ void patch_mask_apply_kernel(device_view<const T, 4> x, device_view<T, 4> y, const unsigned char* mask,
                                        index_t patch_size, index_t grid_cols, T fill) {
  const index_t channels = x.extent(1), height = x.extent(2), width = x.extent(3);
  const index_t rows = x.extent(0) * height;
  const index_t patches = ((height + patch_size - 1) / patch_size) * grid_cols;
  for (index_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const index_t b = row / height, py = row % height;
    const unsigned char* m = mask + b * patches + (py / patch_size) * grid_cols;
    for (index_t col = threadIdx.x; col < width; col += blockDim.x) {
      const bool masked = m[col / patch_size] != 0;
      for (index_t c = 0; c < channels; ++c) y(b, c, py, col) = masked ? fill : x(b, c, py, col);
    }
  }
}

/// Bilinear source taps of output index o (host twin: detail::bilinear_taps),
/// with explicitly rounded double operations.
struct bilinear_tap {
  index_t i0, i1;
  double w1;
};
__device__ inline bilinear_tap bilinear_tap_at(index_t o, index_t start, index_t in_size, double scale) {
  double src = __dsub_rn(__dmul_rn(static_cast<double>(o) + 0.5, scale), 0.5);
  src = src > 0.0 ? src : 0.0;
  index_t lo = static_cast<index_t>(src);
  lo = lo < in_size - 1 ? lo : in_size - 1;
  const index_t hi = lo + 1 < in_size - 1 ? lo + 1 : in_size - 1;
  return {start + lo, start + hi, hi == lo ? 0.0 : __dsub_rn(src, static_cast<double>(lo))};
}

/// Crop boxes of up to this many images travel as one kernel argument.
inline constexpr int crop_boxes_per_launch = 32;
struct crop_box_chunk {
  crop_box box[crop_boxes_per_launch];
};

/// Output rows (b, oy) of images [first_image, first_image + count) of the batch.
template <class T>
__global__ void crop_resize_kernel(device_view<const T, 4> x, device_view<T, 4> y, index_t first_image, int count,
                                   crop_box_chunk boxes) {
  const index_t channels = x.extent(1), out_h = y.extent(2), out_w = y.extent(3);
  const index_t rows = static_cast<index_t>(count) * out_h;
  for (index_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int k = static_cast<int>(row / out_h);
    const index_t oy = row % out_h, b = first_image + k;
    const crop_box box = boxes.box[k];
    const double scale_y = static_cast<double>(box.height) / static_cast<double>(out_h);
    const double scale_x = static_cast<double>(box.width) / static_cast<double>(out_w);
    const bilinear_tap ty = bilinear_tap_at(oy, box.top, box.height, scale_y);
    const double wy = ty.w1;
    for (index_t ox = threadIdx.x; ox < out_w; ox += blockDim.x) {
      const bilinear_tap tx = bilinear_tap_at(ox, box.left, box.width, scale_x);
      const double wx = tx.w1;
      for (index_t c = 0; c < channels; ++c) {
        const double top = axpby_rn(1.0 - wx, to_accum<double>(x(b, c, ty.i0, tx.i0)), wx,
                                    to_accum<double>(x(b, c, ty.i0, tx.i1)));
        const double bottom = axpby_rn(1.0 - wx, to_accum<double>(x(b, c, ty.i1, tx.i0)), wx,
                                       to_accum<double>(x(b, c, ty.i1, tx.i1)));
        y(b, c, oy, ox) = from_accum<T>(static_cast<accum_t<T>>(axpby_rn(1.0 - wy, top, wy, bottom)));
      }
    }
  }
}

/// Launches crop_resize_kernel over the batch, one launch per chunk of boxes.
/// box_of(b) gives image b's box.
template <class T, class BoxOf>
status launch_crop_resize(const device_view<const T, 4>& x, const device_view<T, 4>& y, BoxOf box_of,
                          cudaStream_t stream) {
  const index_t batch = x.extent(0);
  if (y.size() == 0) return status::success;
  for (index_t first = 0; first < batch; first += crop_boxes_per_launch) {
    const int count = static_cast<int>(batch - first < crop_boxes_per_launch ? batch - first : crop_boxes_per_launch);
    crop_box_chunk chunk{};
    for (int k = 0; k < count; ++k) chunk.box[k] = box_of(first + k);
    const index_t rows = static_cast<index_t>(count) * y.extent(2);
    crop_resize_kernel<T><<<grid_for(rows, 1), elementwise_block, 0, stream>>>(x, y, first, count, chunk);
    CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return status::success;
}

using ::consr::detail::check_crop_views;

// ------------------------------------------------------------------------------------------------
// Mixup
// ------------------------------------------------------------------------------------------------

template <class T, class Acc, bool Vectorized>
__global__ void mixup_contiguous_kernel(const T* x, const T* x2, T* y, index_t n, Acc wa, Acc wb) {
  const index_t groups = (n + 3) / 4;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < groups;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t i0 = 4 * k;
    if (Vectorized && i0 + 4 <= n) {
      const group4<T> p = load_group(x + i0), q = load_group(x2 + i0);
      group4<T> r;
#pragma unroll
      for (int l = 0; l < 4; ++l) r.v[l] = from_accum<T>(axpby_rn(wa, to_accum<Acc>(p.v[l]), wb, to_accum<Acc>(q.v[l])));
      store_group(y + i0, r);
    } else {
      for (index_t i = i0; i < n && i < i0 + 4; ++i)
        y[i] = from_accum<T>(axpby_rn(wa, to_accum<Acc>(x[i]), wb, to_accum<Acc>(x2[i])));
    }
  }
}

template <class T, int R, class Acc>
__global__ void mixup_strided_kernel(device_view<const T, R> x, device_view<const T, R> x2, device_view<T, R> y,
                                     index_t n, Acc wa, Acc wb) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t r = i, ox = 0, ox2 = 0, oy = 0;
    for (int d = R - 1; d >= 0; --d) {
      const index_t e = x.extent(d), j = r % e;
      r /= e;
      ox += j * x.stride(d);
      ox2 += j * x2.stride(d);
      oy += j * y.stride(d);
    }
    y.data()[oy] = from_accum<T>(axpby_rn(wa, to_accum<Acc>(x.data()[ox]), wb, to_accum<Acc>(x2.data()[ox2])));
  }
}

}  // namespace detail

// ================================================================================================
// Diffusion noise
// ================================================================================================

/// Forward diffusion in closed form on the device (spec §3):
///   out_i = a · image_i + b · ε_i,  ε_i = normal_at(key, element_offset + i),
/// i the element's row-major logical index, (a, b) = `coefficients` (e.g. from
/// consr::diffusion_noise_coefficients, computed once on the host). Arithmetic
/// in accum_t<T>, no clamping; any rank 0..8. Host twin:
/// consr::add_diffusion_noise. Preconditions: `out` has the image's extents,
/// no zero stride, and is `image` exactly (in place) or disjoint from it.
/// Returns status::invalid_argument naming 'image', 'out' or 'element_offset'
/// (element_offset + size overflows 64 bits), with nothing launched.
template <class T, int R>
status add_diffusion_noise(::consr::detail::type_identity_t<device_view<const T, R>> image, device_view<T, R> out,
                           rng_key key, const diffusion_coefficients& coefficients, std::uint64_t element_offset = 0,
                           cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::add_diffusion_noise: element type must be float, double, consr::bfloat16 or "
                "consr::float16");
  return detail::guarded([&] {
    return detail::launch_noise<T, R>(image, out, key, coefficients, element_offset, stream,
                                      "consr::cuda::add_diffusion_noise");
  });
}

/// add_diffusion_noise with the coefficients of `options` (step, schedule,
/// num_steps; computed on the host in fp64, a few microseconds) and
/// options.element_offset. Also returns status::invalid_argument naming
/// 'step' or 'num_steps' when out of range.
template <class T, int R>
status add_diffusion_noise(::consr::detail::type_identity_t<device_view<const T, R>> image, device_view<T, R> out,
                           rng_key key, const diffusion_noise_options& options = {},
                           cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::add_diffusion_noise: element type must be float, double, consr::bfloat16 or "
                "consr::float16");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::add_diffusion_noise";
    const diffusion_coefficients coef = ::consr::detail::diffusion_coefficients_checked(options, fn);
    return detail::launch_noise<T, R>(image, out, key, coef, options.element_offset, stream, fn);
  });
}

/// In-place add_diffusion_noise: image ← sqrt(ᾱ_t)·image + sqrt(1 − ᾱ_t)·ε.
template <class T, int R>
status add_diffusion_noise(device_view<T, R> image, rng_key key, const diffusion_noise_options& options = {},
                           cudaStream_t stream = nullptr) noexcept {
  return add_diffusion_noise<T, R>(device_view<const T, R>(image), image, key, options, stream);
}

// ================================================================================================
// Random patch masking (Table 7)
// ================================================================================================

/// Random patch masking on the device (paper Table 7), with the host twin's
/// rule: patch p of image b (row-major over the grid of patch_size squares
/// from the top-left corner, cut by the border) is set to fill_value in every
/// channel when patch_is_masked(key, image_offset + b, p, probability); other
/// pixels are copied. Views are [C, H, W] or [B, C, H, W]; `out` has the
/// image's shape and is `image` exactly or disjoint. Temporary storage (CUB's
/// two-phase convention) holds one byte per (image, patch), drawn by a first
/// kernel. Host twin: consr::random_patch_mask. Returns
/// status::invalid_argument naming 'image', 'out', 'patch_size',
/// 'probability', 'image_offset' or 'temp_storage_bytes'.
template <class T, int R>
status random_patch_mask(void* d_temp_storage, std::size_t& temp_storage_bytes,
                         ::consr::detail::type_identity_t<device_view<const T, R>> image, device_view<T, R> out,
                         rng_key key, const patch_mask_options& options = {}, cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::random_patch_mask: element type must be float, double, consr::bfloat16 or "
                "consr::float16");
  static_assert(R == 3 || R == 4, "consr::cuda::random_patch_mask: images are [C, H, W] or [B, C, H, W] views");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::random_patch_mask";
    ::consr::detail::check_image_and_output(image, out, fn);
    const device_view<const T, 4> x = detail::as_batch(image);
    const device_view<T, 4> y = detail::as_batch(out);
    const index_t batch = x.extent(0), height = x.extent(2);
    const ::consr::detail::patch_grid grid = ::consr::detail::check_patch_mask(options, x, fn);
    const index_t ps = options.patch_size, grid_cols = grid.cols;
    const index_t patches = grid.rows * grid.cols;
    const std::size_t sizes[1] = {static_cast<std::size_t>(batch * patches)};
    void* parts[1];
    detail::partition_temp_storage(d_temp_storage, temp_storage_bytes, sizes, parts, fn);
    if (d_temp_storage == nullptr || x.size() == 0) return status::success;
    unsigned char* mask = static_cast<unsigned char*>(parts[0]);
    detail::patch_mask_draw_kernel<><<<detail::elementwise_grid(batch * patches), detail::elementwise_block, 0,
                                     stream>>>(mask, batch, patches, key, options.image_offset, options.probability);
    CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    const T fill = from_accum<T>(static_cast<accum_t<T>>(options.fill_value));
    detail::patch_mask_apply_kernel<T>
        <<<grid_for(batch * height, 1), detail::elementwise_block, 0, stream>>>(x, y, mask, ps, grid_cols, fill);
    return to_status(cudaGetLastError());
  });
}

/// In-place random_patch_mask: masked patches of `image` are overwritten with fill_value.
template <class T, int R>
status random_patch_mask(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<T, R> image, rng_key key,
                         const patch_mask_options& options = {}, cudaStream_t stream = nullptr) noexcept {
  return random_patch_mask<T, R>(d_temp_storage, temp_storage_bytes, device_view<const T, R>(image), image, key,
                                 options, stream);
}

// ================================================================================================
// Mixup (Table 7)
// ================================================================================================

/// Mixup on the device (paper Table 7): out = λ·image + (1 − λ)·other, element
/// by element in accum_t<T>. Any rank 0..8; `other` and `out` have the image's
/// shape; `out` may be exactly `image` or `other`, else disjoint from both.
/// Host twin: consr::mixup. Returns status::invalid_argument naming 'image',
/// 'other', 'out' or 'lambda' (outside [0, 1]).
template <class T, int R>
status mixup(::consr::detail::type_identity_t<device_view<const T, R>> image,
             ::consr::detail::type_identity_t<device_view<const T, R>> other, device_view<T, R> out, double lambda,
             cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::mixup: element type must be float, double, consr::bfloat16 or consr::float16");
  return detail::guarded([&] {
    ::consr::detail::check_mixup(image, other, out, lambda, "consr::cuda::mixup");
    using acc = accum_t<T>;
    const acc wa = static_cast<acc>(lambda), wb = static_cast<acc>(1.0 - lambda);
    const index_t n = image.size();
    if (n == 0) return status::success;
    if (image.is_contiguous() && other.is_contiguous() && out.is_contiguous()) {
      const unsigned grid = detail::elementwise_grid((n + 3) / 4);
      const bool vec = detail::group_aligned(image.data(), 0) && detail::group_aligned(other.data(), 0) &&
                       detail::group_aligned(static_cast<const T*>(out.data()), 0);
      if (vec)
        detail::mixup_contiguous_kernel<T, acc, true>
            <<<grid, detail::elementwise_block, 0, stream>>>(image.data(), other.data(), out.data(), n, wa, wb);
      else
        detail::mixup_contiguous_kernel<T, acc, false>
            <<<grid, detail::elementwise_block, 0, stream>>>(image.data(), other.data(), out.data(), n, wa, wb);
    } else {
      if constexpr (R > 0)
        detail::mixup_strided_kernel<T, R, acc>
            <<<detail::elementwise_grid(n), detail::elementwise_block, 0, stream>>>(image, other, out, n, wa, wb);
    }
    return to_status(cudaGetLastError());
  });
}

// ================================================================================================
// Random resized crop (Table 7)
// ================================================================================================

/// Crops `box` out of every image and resizes it bilinearly to out's H × W on
/// the device (align_corners = false, half-pixel centres, no antialiasing;
/// computed in fp64, rounded once to T). Views are [C, H, W] or [B, C, H, W]
/// (the same box for every image); `out` has the image's batch and channel
/// extents, any H × W, and must not overlap `image`. Host twin:
/// consr::crop_and_resize_bilinear. Returns status::invalid_argument naming
/// 'image', 'out' or 'box' (empty or not inside the image).
template <class T, int R>
status crop_and_resize_bilinear(::consr::detail::type_identity_t<device_view<const T, R>> image, const crop_box& box,
                                device_view<T, R> out, cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::crop_and_resize_bilinear: element type must be float, double, consr::bfloat16 or "
                "consr::float16");
  static_assert(R == 3 || R == 4, "consr::cuda::crop_and_resize_bilinear: images are [C, H, W] or [B, C, H, W] views");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::crop_and_resize_bilinear";
    detail::check_crop_views(image, out, fn);
    const index_t height = image.extent(R - 2), width = image.extent(R - 1);
    CONSR_CHECK_ARG(box.height >= 1 && box.width >= 1 && box.top >= 0 && box.left >= 0 &&
                        box.top <= height - box.height && box.left <= width - box.width,
                    fn, "box", "rows [", box.top, ", ", box.top + box.height, ") x columns [", box.left, ", ",
                    box.left + box.width, ") is empty or not inside the ", height, " x ", width, " image");
    return detail::launch_crop_resize<T>(detail::as_batch(image), detail::as_batch(out),
                                         [&](index_t) { return box; }, stream);
  });
}

/// Random resized crop on the device (paper Table 7): image b's box is drawn
/// on the host by the host function draw_resized_crop_box(H, W, key,
/// image_offset + b, options) — so it is exactly the host twin's box — and the
/// crop is resized back to H × W as crop_and_resize_bilinear. The boxes travel
/// as kernel arguments (32 images per launch): no copy, no synchronization.
/// Views are [C, H, W] or [B, C, H, W]; `out` has the image's shape and must
/// not overlap it. Host twin: consr::random_resized_crop. Returns
/// status::invalid_argument naming 'image', 'out', 'image_offset' or an option.
template <class T, int R>
status random_resized_crop(::consr::detail::type_identity_t<device_view<const T, R>> image, device_view<T, R> out,
                           rng_key key, const resized_crop_options& options = {},
                           cudaStream_t stream = nullptr) noexcept {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::cuda::random_resized_crop: element type must be float, double, consr::bfloat16 or "
                "consr::float16");
  static_assert(R == 3 || R == 4, "consr::cuda::random_resized_crop: images are [C, H, W] or [B, C, H, W] views");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::random_resized_crop";
    detail::check_crop_views(image, out, fn);
    for (int d = 0; d < R; ++d)
      ::consr::detail::check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
    const device_view<const T, 4> x = detail::as_batch(image);
    const index_t batch = x.extent(0), height = x.extent(2), width = x.extent(3);
    ::consr::detail::check_image_range(options.image_offset, batch, fn);
    if (x.size() == 0) return status::success;
    // Validates the options (throws consr::error naming them) before any launch.
    (void)draw_resized_crop_box(height, width, key, options.image_offset, options);
    return detail::launch_crop_resize<T>(
        x, detail::as_batch(out),
        [&](index_t b) {
          return draw_resized_crop_box(height, width, key, options.image_offset + static_cast<std::uint64_t>(b),
                                       options);
        },
        stream);
  });
}

}  // namespace cuda
}  // namespace consr
