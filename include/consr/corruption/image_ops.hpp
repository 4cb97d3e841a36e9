// consr/corruption/image_ops.hpp — the image corruptions of the paper's Table 7 (Appendix C) on
// host views: random patch masking, mixup and random resized crop. Part of consr/corruption.hpp
// (whose comment describes the random streams).
#pragma once

#include "common.hpp"

namespace consr {

// ================================================================================================
// Random patch masking (Table 7)
// ================================================================================================

/// Options of random_patch_mask.
struct patch_mask_options {
  index_t patch_size = 14;  ///< side of the square patches, in pixels (edge patches are cut by the border)
  double probability = 0.5;  ///< chance that a patch is masked
  double fill_value = 0.0;   ///< value written into every channel of a masked patch
  /// Index of this view's first image in the whole batch: image b draws from
  /// stream image_offset + b, so masking a batch in pieces gives the same masks.
  std::uint64_t image_offset = 0;
};

/// Whether patch `patch_index` (row-major over the patch grid) of image
/// `image_index` is masked: uniform_at(key, (image_index << 32) + patch_index) < probability.
/// Preconditions: image_index < 2^32, patch_index < 2^31.
CONSR_HOST_DEVICE inline bool patch_is_masked(rng_key key, std::uint64_t image_index, std::uint64_t patch_index,
                                              double probability) noexcept {
  return uniform_at(key, (image_index << 32) + detail::patch_mask_stream + patch_index) < probability;
}

namespace detail {

/// Rows and columns of the patch grid of an image.
struct patch_grid {
  index_t rows, cols;
};

/// The element and rank rules of the patch mask and the crops: a non-const float, double,
/// bfloat16 or float16 element; [C, H, W] or [B, C, H, W] views. (The compiler's note names
/// the operation that broke them.)
template <class T, int R>
constexpr void assert_image_op_types() {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr image operations: element type must be float, double, consr::bfloat16 or consr::float16");
  static_assert(R == 3 || R == 4, "consr image operations: images are [C, H, W] or [B, C, H, W] views");
}

/// The option checks of random_patch_mask (host and device) for a batch `x`:
/// patch_size >= 1, probability in [0, 1], at most 2^31 patches per image,
/// image_offset + B within the per-image streams. Returns the patch grid.
template <class T, class S>
patch_grid check_patch_mask(const patch_mask_options& options, const strided_view<T, 4, S>& x, const char* fn) {
  CONSR_CHECK_ARG(options.patch_size >= 1, fn, "patch_size", "must be at least 1, got ", options.patch_size);
  CONSR_CHECK_ARG(options.probability >= 0.0 && options.probability <= 1.0, fn, "probability", "must be in [0, 1], got ",
                  options.probability);
  const index_t ps = options.patch_size;
  // ceil(extent / ps), written so that no patch_size (up to INT64_MAX) can overflow it.
  const auto ceil_div = [ps](index_t n) { return n == 0 ? index_t{0} : (n - 1) / ps + 1; };
  const patch_grid grid{ceil_div(x.extent(2)), ceil_div(x.extent(3))};
  CONSR_CHECK_ARG(grid.rows == 0 || grid.cols <= (index_t{1} << 31) / grid.rows, fn, "patch_size", "patch size ", ps,
                  " gives ", grid.rows, " x ", grid.cols, " patches; at most 2^31 per image are supported");
  check_image_range(options.image_offset, x.extent(0), fn);
  return grid;
}

}  // namespace detail

/// Random patch masking (paper Table 7): the H × W plane is tiled by
/// patch_size × patch_size squares from the top-left corner (the last row and
/// column of patches are cut by the border); each patch of each image is,
/// independently with probability p (patch_is_masked), set to fill_value in
/// every channel; other pixels are copied. Views are [C, H, W] or [B, C, H, W].
/// `out` has the image's shape and is `image` exactly (in place) or disjoint.
/// Throws consr::error naming 'image', 'out', 'patch_size' (< 1 or more than
/// 2^31 patches), 'probability' (outside [0, 1]) or 'image_offset'.
template <class T, int R>
void random_patch_mask(detail::type_identity_t<host_view<const T, R>> image, host_view<T, R> out, rng_key key,
                       const patch_mask_options& options = {}) {
  detail::assert_image_op_types<T, R>();
  constexpr const char* fn = "consr::random_patch_mask";
  detail::check_image_and_output(image, out, fn);
  const host_view<const T, 4> x = detail::as_batch(image);
  const host_view<T, 4> y = detail::as_batch(out);
  const index_t batch = x.extent(0), channels = x.extent(1), height = x.extent(2), width = x.extent(3);
  const detail::patch_grid grid = detail::check_patch_mask(options, x, fn);
  const index_t ps = options.patch_size, grid_cols = grid.cols;
  if (x.size() == 0) return;

  // One byte per (image, patch): tiny next to the image, and the loops below read it.
  const index_t patches = grid.rows * grid.cols;
  std::vector<unsigned char> masked(static_cast<std::size_t>(batch * patches));
  for (index_t b = 0; b < batch; ++b)
    for (index_t p = 0; p < patches; ++p)
      masked[static_cast<std::size_t>(b * patches + p)] =
          patch_is_masked(key, options.image_offset + static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(p),
                          options.probability);

  const T fill = from_accum<T>(static_cast<accum_t<T>>(options.fill_value));
  const index_t rows = batch * channels * height;
  CONSR_OMP(parallel for schedule(static) if (rows * width > 65536))
  for (index_t r = 0; r < rows; ++r) {
    const index_t row_y = r % height, b = r / (channels * height), c = (r / height) % channels;
    const T* xp = &x(b, c, row_y, 0);
    T* yp = &y(b, c, row_y, 0);
    const unsigned char* m = masked.data() + b * patches + (row_y / ps) * grid_cols;
    const index_t xs = x.stride(3), ys = y.stride(3);
    // Runs of patch_size columns, not a per-pixel choice (which costs a division per pixel and
    // does not vectorize): copy the row, then fill the masked runs. In place (yp == xp), only fill.
    if (xs == 1 && ys == 1) {
      if (yp != xp) std::copy(xp, xp + width, yp);
      for (index_t pc = 0; pc < grid_cols; ++pc)
        if (m[pc]) std::fill(yp + pc * ps, yp + std::min(pc * ps + ps, width), fill);
    } else {
      for (index_t pc = 0; pc < grid_cols; ++pc) {
        const index_t end = std::min(pc * ps + ps, width);
        if (m[pc]) {
          for (index_t col = pc * ps; col < end; ++col) yp[col * ys] = fill;
        } else if (yp != xp) {
          for (index_t col = pc * ps; col < end; ++col) yp[col * ys] = xp[col * xs];
        }
      }
    }
  }
}

/// In-place random_patch_mask: masked patches of `image` are overwritten with fill_value.
template <class T, int R>
void random_patch_mask(host_view<T, R> image, rng_key key, const patch_mask_options& options = {}) {
  random_patch_mask<T, R>(host_view<const T, R>(image), image, key, options);
}

// ================================================================================================
// Mixup (Table 7)
// ================================================================================================

/// Mixup with a second image (paper Table 7): out = λ·image + (1 − λ)·other,
/// element by element in accum_t<T>. Any rank 0..8; `other` and `out` have the
/// image's shape; `out` may be exactly `image` or `other`, else disjoint from both.
/// Throws consr::error naming 'image', 'other', 'out' or 'lambda' (outside [0, 1]).
template <class T, int R>
void mixup(detail::type_identity_t<host_view<const T, R>> image, detail::type_identity_t<host_view<const T, R>> other,
           host_view<T, R> out, double lambda) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::mixup: element type must be float, double, consr::bfloat16 or consr::float16");
  detail::check_mixup(image, other, out, lambda, "consr::mixup");
  using acc = accum_t<T>;
  const acc wa = static_cast<acc>(lambda), wb = static_cast<acc>(1.0 - lambda);
  auto mix = [wa, wb](T p, T q) { return from_accum<T>(wa * to_accum<acc>(p) + wb * to_accum<acc>(q)); };
  if constexpr (R == 0) {
    out() = mix(image(), other());
  } else {
    const index_t n = image.size();
    if (n == 0) return;
    const index_t inner = image.extent(R - 1), rows = n / inner;
    const index_t xs = image.stride(R - 1), os = other.stride(R - 1), ys = out.stride(R - 1);
    CONSR_OMP(parallel for schedule(static) if (n > 65536))
    for (index_t r = 0; r < rows; ++r) {
      const T* xp = image.data() + detail::row_offset(image, r);
      const T* op = other.data() + detail::row_offset(other, r);
      T* yp = out.data() + detail::row_offset(out, r);
      CONSR_SIMD
      for (index_t k = 0; k < inner; ++k) yp[k * ys] = mix(xp[k * xs], op[k * os]);
    }
  }
}

// ================================================================================================
// Random resized crop (Table 7)
// ================================================================================================

/// A crop rectangle in pixels: rows [top, top + height), columns [left, left + width).
struct crop_box {
  index_t top = 0;
  index_t left = 0;
  index_t height = 0;
  index_t width = 0;
};

/// Options of random_resized_crop (torchvision RandomResizedCrop's defaults).
struct resized_crop_options {
  double scale_min = 0.08;  ///< crop area, as a fraction of the image area: [scale_min, scale_max]
  double scale_max = 1.0;
  double ratio_min = 3.0 / 4;  ///< crop aspect ratio width/height: [ratio_min, ratio_max], drawn log-uniformly
  double ratio_max = 4.0 / 3;
  /// Index of this view's first image in the whole batch (see patch_mask_options).
  std::uint64_t image_offset = 0;
};

/// The crop box torchvision's RandomResizedCrop.get_params would draw for a
/// height × width image, with its random numbers taken from the uniform stream
/// of `key` for image `image_index`: up to 10 attempts, each drawing an area
/// fraction s ~ U[scale_min, scale_max] and log-ratio ~ U[log ratio_min, log ratio_max],
/// w = round(sqrt(s·area·ratio)), h = round(sqrt(s·area/ratio)) (round half to
/// even, as Python); the first attempt with 0 < w ≤ width and 0 < h ≤ height takes
/// top ~ U{0..height−h}, left ~ U{0..width−w}. Otherwise the centre crop of the
/// aspect ratio clamped to [ratio_min, ratio_max]. Host only (it calls libm).
/// Throws consr::error naming 'height' / 'width' (< 1), 'scale_min' / 'scale_max'
/// (need 0 < scale_min ≤ scale_max, finite), 'ratio_min' / 'ratio_max' (need
/// 0 < ratio_min ≤ ratio_max, finite) or 'image_index' (≥ 2^32).
inline crop_box draw_resized_crop_box(index_t height, index_t width, rng_key key, std::uint64_t image_index,
                                      const resized_crop_options& options = {}) {
  constexpr const char* fn = "consr::draw_resized_crop_box";
  CONSR_CHECK_ARG(height >= 1, fn, "height", "must be at least 1, got ", height);
  CONSR_CHECK_ARG(width >= 1, fn, "width", "must be at least 1, got ", width);
  CONSR_CHECK_ARG(std::isfinite(options.scale_min) && options.scale_min > 0.0, fn, "scale_min",
                  "must be positive and finite, got ", options.scale_min);
  CONSR_CHECK_ARG(std::isfinite(options.scale_max) && options.scale_max >= options.scale_min, fn, "scale_max",
                  "must be finite and at least scale_min (", options.scale_min, "), got ", options.scale_max);
  CONSR_CHECK_ARG(std::isfinite(options.ratio_min) && options.ratio_min > 0.0, fn, "ratio_min",
                  "must be positive and finite, got ", options.ratio_min);
  CONSR_CHECK_ARG(std::isfinite(options.ratio_max) && options.ratio_max >= options.ratio_min, fn, "ratio_max",
                  "must be finite and at least ratio_min (", options.ratio_min, "), got ", options.ratio_max);
  CONSR_CHECK_ARG(image_index < detail::max_stream_images, fn, "image_index", image_index,
                  " is not below 2^32 (the per-image random streams)");
  const double area = static_cast<double>(height) * static_cast<double>(width);
  const double log_rmin = std::log(options.ratio_min), log_rmax = std::log(options.ratio_max);
  const std::uint64_t base = (image_index << 32) + detail::crop_box_stream;
  // randint(0, n): floor(u·n), clamped against the product rounding up to n.
  auto randint = [](double u, index_t n) { return std::min(static_cast<index_t>(u * static_cast<double>(n)), n - 1); };
  for (std::uint64_t attempt = 0; attempt < 10; ++attempt) {
    const std::uint64_t k = base + 4 * attempt;
    const double target_area = area * (options.scale_min + (options.scale_max - options.scale_min) * uniform_at(key, k));
    const double aspect = std::exp(log_rmin + (log_rmax - log_rmin) * uniform_at(key, k + 1));
    const double wf = std::nearbyint(std::sqrt(target_area * aspect));
    const double hf = std::nearbyint(std::sqrt(target_area / aspect));
    if (wf > 0 && wf <= static_cast<double>(width) && hf > 0 && hf <= static_cast<double>(height)) {
      crop_box box;
      box.width = static_cast<index_t>(wf);
      box.height = static_cast<index_t>(hf);
      box.top = randint(uniform_at(key, k + 2), height - box.height + 1);
      box.left = randint(uniform_at(key, k + 3), width - box.width + 1);
      return box;
    }
  }
  // Fallback: centre crop, as torchvision.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  crop_box box;
  if (in_ratio < options.ratio_min) {
    box.width = width;
    box.height = static_cast<index_t>(std::nearbyint(static_cast<double>(width) / options.ratio_min));
  } else if (in_ratio > options.ratio_max) {
    box.height = height;
    box.width = static_cast<index_t>(std::nearbyint(static_cast<double>(height) * options.ratio_max));
  } else {
    box.width = width;
    box.height = height;
  }
  box.height = std::clamp<index_t>(box.height, 1, height);
  box.width = std::clamp<index_t>(box.width, 1, width);
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

namespace detail {

/// Source sample positions of bilinear resizing with align_corners = false
/// (half-pixel centres, PyTorch's upsample_bilinear2d): for output index o of
/// `out_size`, the source coordinate max((o + 0.5)·in/out − 0.5, 0) inside a
/// crop of `in_size` starting at `start`.
struct bilinear_taps {
  std::vector<index_t> i0, i1;
  std::vector<double> w1;  // weight of i1; i0 gets 1 − w1
  bilinear_taps(index_t start, index_t in_size, index_t out_size) : i0(out_size), i1(out_size), w1(out_size) {
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    for (index_t o = 0; o < out_size; ++o) {
      const double src = std::max((static_cast<double>(o) + 0.5) * scale - 0.5, 0.0);
      const index_t lo = std::min(static_cast<index_t>(src), in_size - 1);
      const index_t hi = std::min(lo + 1, in_size - 1);
      i0[static_cast<std::size_t>(o)] = start + lo;
      i1[static_cast<std::size_t>(o)] = start + hi;
      w1[static_cast<std::size_t>(o)] = hi == lo ? 0.0 : src - static_cast<double>(lo);
    }
  }
};

template <class T>
void crop_resize_batch(host_view<const T, 4> x, const crop_box* boxes, host_view<T, 4> y) {
  const index_t batch = x.extent(0), channels = x.extent(1), out_h = y.extent(2), out_w = y.extent(3);
  if (y.size() == 0) return;
  std::vector<bilinear_taps> rows_taps, cols_taps;
  rows_taps.reserve(static_cast<std::size_t>(batch));
  cols_taps.reserve(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) {
    rows_taps.emplace_back(boxes[b].top, boxes[b].height, out_h);
    cols_taps.emplace_back(boxes[b].left, boxes[b].width, out_w);
  }
  const index_t rows = batch * channels * out_h;
  const index_t in_h = x.extent(2);
  const index_t xs = x.stride(3), ys = y.stride(3);
  // Separable: an output row blends two source rows that were first resampled horizontally; each
  // thread keeps the last two resampled rows, which the next output rows mostly reuse (a crop is
  // enlarged back to the image size). The arithmetic per output pixel is the same as resampling it
  // on its own: top = (1 − wx)·a + wx·b per source row, then (1 − wy)·top + wy·bottom.
  // The per-thread buffers are allocated here, outside the parallel region (which must not throw).
#if CONSR_HAS_OPENMP
  const int max_threads = omp_get_max_threads();
#else
  const int max_threads = 1;
#endif
  std::vector<double> resampled(static_cast<std::size_t>(max_threads) * 2 * static_cast<std::size_t>(out_w));
  CONSR_OMP(parallel if (rows * out_w > 65536))
  {
#if CONSR_HAS_OPENMP
    const std::size_t thread = static_cast<std::size_t>(omp_get_thread_num());
#else
    const std::size_t thread = 0;
#endif
    double* held[2] = {resampled.data() + thread * 2 * static_cast<std::size_t>(out_w),
                       resampled.data() + (thread * 2 + 1) * static_cast<std::size_t>(out_w)};
    index_t held_row[2] = {-1, -1};  // (b·C + c)·H + source row of each buffer; -1 = nothing yet
    auto resample_row = [&](double* out_row, index_t b, index_t c, index_t source_row) {
      const bilinear_taps& ct = cols_taps[static_cast<std::size_t>(b)];
      const T* src = &x(b, c, source_row, 0);
      for (index_t ox = 0; ox < out_w; ++ox) {
        const std::size_t k = static_cast<std::size_t>(ox);
        const double wx = ct.w1[k];
        out_row[ox] = (1.0 - wx) * to_accum<double>(src[ct.i0[k] * xs]) + wx * to_accum<double>(src[ct.i1[k] * xs]);
      }
    };
    CONSR_OMP(for schedule(static))
    for (index_t r = 0; r < rows; ++r) {
      const index_t oy = r % out_h, c = (r / out_h) % channels, b = r / (channels * out_h);
      const bilinear_taps& rt = rows_taps[static_cast<std::size_t>(b)];
      const double wy = rt.w1[static_cast<std::size_t>(oy)];
      const index_t s0 = rt.i0[static_cast<std::size_t>(oy)], s1 = rt.i1[static_cast<std::size_t>(oy)];
      const index_t key0 = (b * channels + c) * in_h + s0, key1 = (b * channels + c) * in_h + s1;
      if (held_row[0] != key0) {
        if (held_row[1] == key0) {
          std::swap(held[0], held[1]);
          std::swap(held_row[0], held_row[1]);
        } else {
          resample_row(held[0], b, c, s0);
          held_row[0] = key0;
        }
      }
      const double* top = held[0];
      const double* bottom = top;
      if (key1 != key0) {
        if (held_row[1] != key1) {
          resample_row(held[1], b, c, s1);
          held_row[1] = key1;
        }
        bottom = held[1];
      }
      T* yp = &y(b, c, oy, 0);
      for (index_t ox = 0; ox < out_w; ++ox)
        yp[ox * ys] = from_accum<T>(static_cast<accum_t<T>>((1.0 - wy) * top[ox] + wy * bottom[ox]));
    }
  }
}

/// The checks of the crops (host and device): the element and rank rules
/// (assert_image_op_types), both views well formed, `out` with the image's
/// batch and channel extents, no broadcast, no overlap.
template <class T, int R, class S>
void check_crop_views(const strided_view<const T, R, S>& image, const strided_view<T, R, S>& out, const char* fn) {
  assert_image_op_types<T, R>();
  check_view(image, fn, "image");
  check_view(out, fn, "out");
  if constexpr (R == 4) check_extent(out, 0, image.extent(0), fn, "out", "the image's batch size");
  check_extent(out, R - 3, image.extent(R - 3), fn, "out", "the image's channel count");
  check_no_broadcast(out, fn);
  CONSR_CHECK_ARG(!views_overlap(image, out), fn, "out", "overlaps 'image'; the crop cannot run in place");
}

}  // namespace detail

/// Crops `box` out of every image and resizes it bilinearly to out's H × W
/// (align_corners = false, half-pixel centres, no antialiasing: the same as
/// torchvision's resized_crop whenever out is at least the crop's size, which
/// random_resized_crop guarantees, since antialiasing only acts when shrinking).
/// Computed in fp64, rounded once to T. Views are [C, H, W] or
/// [B, C, H, W] (the same box for every image); `out` has the image's batch
/// and channel extents, any H × W, and must not overlap `image`.
/// Throws consr::error naming 'image', 'out' or 'box' (not inside the image, or empty).
template <class T, int R>
void crop_and_resize_bilinear(detail::type_identity_t<host_view<const T, R>> image, const crop_box& box,
                              host_view<T, R> out) {
  constexpr const char* fn = "consr::crop_and_resize_bilinear";
  detail::check_crop_views(image, out, fn);
  const index_t height = image.extent(R - 2), width = image.extent(R - 1);
  CONSR_CHECK_ARG(box.height >= 1 && box.width >= 1 && box.top >= 0 && box.left >= 0 && box.top <= height - box.height &&
                      box.left <= width - box.width,
                  fn, "box", "rows [", box.top, ", ", box.top + box.height, ") x columns [", box.left, ", ",
                  box.left + box.width, ") is empty or not inside the ", height, " x ", width, " image");
  const host_view<const T, 4> x = detail::as_batch(image);
  std::vector<crop_box> boxes(static_cast<std::size_t>(x.extent(0)), box);
  detail::crop_resize_batch<T>(x, boxes.data(), detail::as_batch(out));
}

/// Random resized crop (paper Table 7): for each image b, a box drawn by
/// draw_resized_crop_box(H, W, key, image_offset + b, options), cropped and
/// resized back to H × W with crop_and_resize_bilinear. Views are [C, H, W] or
/// [B, C, H, W]; `out` has the image's shape and must not overlap it.
/// Throws consr::error naming 'image', 'out', 'image_offset' or an option
/// (see draw_resized_crop_box).
template <class T, int R>
void random_resized_crop(detail::type_identity_t<host_view<const T, R>> image, host_view<T, R> out, rng_key key,
                         const resized_crop_options& options = {}) {
  constexpr const char* fn = "consr::random_resized_crop";
  detail::check_crop_views(image, out, fn);
  for (int d = 0; d < R; ++d) detail::check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  const host_view<const T, 4> x = detail::as_batch(image);
  const index_t batch = x.extent(0), height = x.extent(2), width = x.extent(3);
  detail::check_image_range(options.image_offset, batch, fn);
  if (x.size() == 0) return;
  std::vector<crop_box> boxes(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b)
    boxes[static_cast<std::size_t>(b)] =
        draw_resized_crop_box(height, width, key, options.image_offset + static_cast<std::uint64_t>(b), options);
  detail::crop_resize_batch<T>(x, boxes.data(), detail::as_batch(out));
}

}  // namespace consr
