// consr_runtime/image.hpp — decoding PNG/JPEG images into 8-bit RGB tensors as PIL does, and resizing them
// exactly as Pillow does (Hugging Face's slow image processors resize uint8 images with PIL, so a
// pixel-exact port of PIL's resampler is what makes our pixel_values equal to theirs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <torch/types.h>

namespace consr_runtime {

/// An 8-bit RGB image: `pixels` is a contiguous uint8 CPU tensor of shape [height, width, 3]
/// (HWC, row-major), the layout of `numpy.array(PIL.Image)`.
struct rgb_image {
  torch::Tensor pixels;
  std::int64_t height() const { return pixels.size(0); }
  std::int64_t width() const { return pixels.size(1); }
};

/// Wraps `pixels` (uint8 [H, W, 3], any strides, CPU) as an rgb_image (made contiguous).
/// Throws runtime_error naming `arg` for another dtype, rank, channel count, device or an empty image.
rgb_image make_rgb_image(const torch::Tensor& pixels, const std::string& arg = "pixels");

/// PIL's decompression-bomb limit: `Image.open` refuses images of more than twice
/// `Image.MAX_IMAGE_PIXELS` (89,478,485) pixels.
constexpr std::int64_t pil_max_image_pixels = 2 * std::int64_t{89478485};

/// Decodes a PNG or JPEG held in memory to the pixels transformers' models see:
/// `convert_to_rgb(PIL.Image.open(file))` (bit-identical; tests/runtime/test_image.cpp checks it against
/// Pillow 13 on every kind of file in tests/fixtures/images_pil).
/// - JPEG: libjpeg-turbo with PIL's settings (JpegDecode.c: the library defaults, i.e. the accurate
///   integer IDCT JDCT_ISLOW and fancy (triangle) chroma upsampling; baseline and progressive; 4:4:4,
///   4:2:2, 4:2:0; grayscale replicated; Adobe CMYK converted with PIL's cmyk2rgb). A file that ends
///   early is an error (PIL: "image file is truncated"); more than 1000 progressive scans is refused.
/// - PNG: libpng, then PIL's mode rules (PngImagePlugin) and conversions: 1/2/4-bit gray scaled to
///   0..255, 16-bit samples reduced to their high byte except 16-bit grayscale ("I;16"), which PIL
///   clips to 255; palette with per-entry alpha (tRNS); gray tRNS colour keys made transparent;
///   Adam7 interlacing. Gamma, sRGB and ICC chunks are not applied (PIL does not apply them either).
/// - Transparency (RGBA, gray+alpha, palette alpha, gray keys) is composited onto white with PIL's
///   integer `alpha_composite`; an "RGB" image (8/16-bit truecolour, even with a tRNS key) is kept
///   as decoded, as convert_to_rgb does.
/// EXIF orientation is not applied (`PIL.Image.open` does not either).
/// `name` is used in error messages. Throws runtime_error naming `name` (and the decoder's reason) when
/// the bytes are not a decodable PNG/JPEG, when `data` is null / `size` is 0, or when the image has
/// more than `max_pixels` pixels.
rgb_image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name = "<memory>",
                       std::int64_t max_pixels = pil_max_image_pixels);

/// Reads and decodes the image file `path` (see decode_image). Throws runtime_error naming the file
/// when it cannot be read or decoded.
rgb_image load_image(const std::string& path);

/// Resampling filters of PIL's `Image.resize` that the processors use (PIL.Image.Resampling values
/// 2 and 3).
enum class resample_filter { bilinear, bicubic };

/// Maps a PIL resample code (2 = BILINEAR, 3 = BICUBIC) to resample_filter; throws runtime_error
/// naming `arg` for any other code.
resample_filter resample_filter_from_pil(std::int64_t code, const std::string& arg = "resample");

/// Resizes a uint8 [H, W, C] CPU tensor (any C >= 1) to [height, width, C] exactly as PIL's
/// `Image.resize((width, height), filter)` on an 8-bit image (libImaging/Resample.c): separable
/// convolution, horizontal pass then vertical pass (vertical first when the height shrinks by more
/// than twice as many pixels as the width, as Pillow 13 does), with the filter support scaled by the
/// downscaling factor (antialiasing), bicubic a = -0.5, coefficients normalised to sum 1 and
/// converted to fixed point with 22 fractional bits, each pass rounded and clipped to uint8.
/// Same size returns a copy. Throws runtime_error naming the argument for a non-uint8 / non-3-D /
/// empty image or a non-positive target size.
torch::Tensor resize_uint8(const torch::Tensor& image_hwc, std::int64_t height, std::int64_t width,
                           resample_filter filter);

/// resize_uint8 on an rgb_image.
rgb_image resize(const rgb_image& image, std::int64_t height, std::int64_t width,
                 resample_filter filter = resample_filter::bicubic);

}  // namespace consr_runtime
