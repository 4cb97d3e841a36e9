// consr/corruption/common.hpp — what the image corruptions of consr/corruption.hpp share (spec §3):
// the argument checks of host and device (consr/cuda/corruption.cuh), row offsets of strided views,
// the [C, H, W] / [B, C, H, W] batch helpers and the per-image random streams.
// The reproducibility rules and the random streams are described in consr/corruption.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../detail/streaming_store.hpp"
#include "../error.hpp"
#include "../numeric.hpp"
#include "../random.hpp"
#include "../view.hpp"

namespace consr {
namespace detail {

/// The checks of a corruption whose output has the image's shape (noise,
/// patch masking; host and device): both views well formed, equal extents,
/// no broadcast output, and `out` is `image` exactly or disjoint from it.
template <class T, int R, class S>
void check_image_and_output(const strided_view<const T, R, S>& image, const strided_view<T, R, S>& out,
                            const char* fn) {
  check_view(image, fn, "image");
  check_view(out, fn, "out");
  for (int d = 0; d < R; ++d) check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  check_no_broadcast(out, fn);
  check_alias_exact_or_disjoint(image, out, fn, "image");
}

/// The checks of mixup (host and device): the three views well formed and of
/// the image's extents, no broadcast output, `out` exactly `image` / `other`
/// or disjoint from each, and λ in [0, 1].
template <class T, int R, class S>
void check_mixup(const strided_view<const T, R, S>& image, const strided_view<const T, R, S>& other,
                 const strided_view<T, R, S>& out, double lambda, const char* fn) {
  check_view(image, fn, "image");
  check_view(other, fn, "other");
  check_view(out, fn, "out");
  for (int d = 0; d < R; ++d) {
    check_extent(other, d, image.extent(d), fn, "other", "the image's extent");
    check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  }
  check_no_broadcast(out, fn);
  check_alias_exact_or_disjoint(image, out, fn, "image");
  check_alias_exact_or_disjoint(other, out, fn, "other");
  CONSR_CHECK_ARG(lambda >= 0.0 && lambda <= 1.0, fn, "lambda", "must be in [0, 1], got ", lambda);
}

/// Offset of row r (a multi-index over dims 0..R−2, row-major) in view `v`.
template <class T, int R>
index_t row_offset(const host_view<T, R>& v, index_t r) noexcept {
  index_t off = 0;
  for (int d = R - 2; d >= 0; --d) {
    const index_t e = v.extent(d);
    off += (r % e) * v.stride(d);
    r /= e;
  }
  return off;
}

/// A [C, H, W] view as a [1, C, H, W] batch; [B, C, H, W] unchanged (host
/// and device views).
template <class T, int R, class S>
strided_view<T, 4, S> as_batch(const strided_view<T, R, S>& v) noexcept {
  static_assert(R == 3 || R == 4, "consr: images are [C, H, W] or [B, C, H, W] views");
  if constexpr (R == 4) {
    return v;
  } else {
    const index_t e[4] = {1, v.extent(0), v.extent(1), v.extent(2)};
    const index_t s[4] = {0, v.stride(0), v.stride(1), v.stride(2)};
    return strided_view<T, 4, S>(v.data(), e, s);
  }
}

/// Image b of a batch as a [C, H, W] view.
template <class T>
host_view<T, 3> image_of(const host_view<T, 4>& v, index_t b) noexcept {
  const index_t e[3] = {v.extent(1), v.extent(2), v.extent(3)};
  const index_t s[3] = {v.stride(1), v.stride(2), v.stride(3)};
  return host_view<T, 3>(v.data() + b * v.stride(0), e, s);
}

/// Uniform-stream sub-range of the patch-mask draws of an image.
inline constexpr std::uint64_t patch_mask_stream = 0;
/// Uniform-stream sub-range of the crop-box draws of an image.
inline constexpr std::uint64_t crop_box_stream = std::uint64_t{1} << 31;
/// Largest number of images (image_offset + B) the per-image streams address.
inline constexpr std::uint64_t max_stream_images = std::uint64_t{1} << 32;

inline void check_image_range(std::uint64_t image_offset, index_t batch, const char* fn) {
  CONSR_CHECK_ARG(image_offset <= max_stream_images - static_cast<std::uint64_t>(batch), fn, "image_offset",
                  "image_offset ", image_offset, " + ", batch, " images exceeds the 2^32 per-image random streams");
}

}  // namespace detail

}  // namespace consr
