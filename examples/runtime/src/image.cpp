// Image decoding (stb_image) and PIL-exact resampling. See consr_runtime/image.hpp.
#include "consr_runtime/image.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"

// stb_image is compiled here, once, with internal linkage (STB_IMAGE_STATIC) so it cannot clash with
// another copy in the process; only the two formats the runtime accepts are built in.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#pragma GCC diagnostic ignored "-Wuseless-cast"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw runtime_error("consr_runtime::" + where + ": " + what);
}

// PIL's AlphaComposite.c for a source pixel over an opaque white background (the case of
// transformers' convert_to_rgb): 7 extra bits of precision and divisions by 255 rounded by shifts.
inline std::uint8_t composite_on_white(std::uint32_t value, std::uint32_t alpha) {
  if (alpha == 0) return 255;
  constexpr std::uint32_t precision_bits = 7;
  const std::uint32_t blend = 255u * (255u - alpha);
  const std::uint32_t outa255 = alpha * 255u + blend;
  const std::uint32_t coef1 = alpha * 255u * 255u * (1u << precision_bits) / outa255;
  const std::uint32_t coef2 = 255u * (1u << precision_bits) - coef1;
  const std::uint32_t tmp = value * coef1 + 255u * coef2 + (0x80u << precision_bits);
  const std::uint32_t div255 = ((tmp >> 8) + tmp) >> 8;
  return static_cast<std::uint8_t>(div255 >> precision_bits);
}

}  // namespace

rgb_image make_rgb_image(const torch::Tensor& pixels, const std::string& arg) {
  if (!pixels.defined()) fail("make_rgb_image", "argument '" + arg + "' is an undefined tensor");
  if (pixels.scalar_type() != torch::kUInt8 || pixels.dim() != 3 || pixels.size(2) != 3)
    fail("make_rgb_image", "argument '" + arg + "' must be a uint8 tensor [height, width, 3], got " +
                               std::string(c10::toString(pixels.scalar_type())) + " " + c10::str(pixels.sizes()));
  if (!pixels.device().is_cpu()) fail("make_rgb_image", "argument '" + arg + "' must be a CPU tensor");
  if (pixels.size(0) == 0 || pixels.size(1) == 0)
    fail("make_rgb_image", "argument '" + arg + "' is an empty image " + c10::str(pixels.sizes()));
  return rgb_image{pixels.contiguous()};
}

rgb_image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (data == nullptr || size == 0) fail("decode_image", "'" + name + "': no data (empty file or buffer)");
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    fail("decode_image", "'" + name + "': " + std::to_string(size) + " bytes is too large to decode");
  int width = 0, height = 0, channels = 0;
  const int len = static_cast<int>(size);
  std::unique_ptr<stbi_uc, void (*)(void*)> raw(stbi_load_from_memory(data, len, &width, &height, &channels, 0),
                                                stbi_image_free);
  if (!raw) {
    const char* why = stbi_failure_reason();
    fail("decode_image", "'" + name + "' is not a decodable PNG or JPEG image (" + (why ? why : "unknown error") + ")");
  }
  if (width <= 0 || height <= 0 || channels < 1 || channels > 4)
    fail("decode_image", "'" + name + "': decoder returned " + std::to_string(width) + "x" + std::to_string(height) +
                             " with " + std::to_string(channels) + " channels");
  auto out = torch::empty({height, width, 3}, torch::kUInt8);
  std::uint8_t* dst = out.data_ptr<std::uint8_t>();
  const stbi_uc* src = raw.get();
  const std::size_t n = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  for (std::size_t i = 0; i < n; ++i) {
    const stbi_uc* p = src + i * static_cast<std::size_t>(channels);
    std::uint8_t r, g, b;
    switch (channels) {
      case 1: r = g = b = p[0]; break;
      case 2: r = g = b = composite_on_white(p[0], p[1]); break;
      case 3: r = p[0]; g = p[1]; b = p[2]; break;
      default:
        r = composite_on_white(p[0], p[3]);
        g = composite_on_white(p[1], p[3]);
        b = composite_on_white(p[2], p[3]);
        break;
    }
    dst[3 * i + 0] = r;
    dst[3 * i + 1] = g;
    dst[3 * i + 2] = b;
  }
  return rgb_image{out};
}

rgb_image load_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("load_image", "cannot open image file '" + path + "'");
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("load_image", "error reading image file '" + path + "'");
  return decode_image(bytes.data(), bytes.size(), path);
}

resample_filter resample_filter_from_pil(std::int64_t code, const std::string& arg) {
  if (code == 2) return resample_filter::bilinear;
  if (code == 3) return resample_filter::bicubic;
  fail("resample_filter_from_pil", "argument '" + arg + "' = " + std::to_string(code) +
                                       " is not a supported PIL filter (2 = BILINEAR, 3 = BICUBIC)");
}

namespace {

// PIL's filters (Resample.c).
double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

constexpr int precision_bits = 32 - 8 - 2;

// Fixed-point coefficients of one axis: for each output index, the first input index `first`, the
// number of taps `count` and `ksize` coefficients (precompute_coeffs + normalize_coeffs_8bpc).
struct axis_coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> k;
};

axis_coeffs precompute_coeffs(int in_size, int out_size, resample_filter filter) {
  const double support_unit = filter == resample_filter::bicubic ? 2.0 : 1.0;
  double (*const f)(double) = filter == resample_filter::bicubic ? bicubic_filter : bilinear_filter;
  // PIL passes the box as floats (0, in_size); in1 - in0 is exact for any realistic size.
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_unit * filterscale;
  axis_coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<std::size_t>(out_size));
  c.count.resize(static_cast<std::size_t>(out_size));
  c.k.assign(static_cast<std::size_t>(out_size) * static_cast<std::size_t>(c.ksize), 0);
  std::vector<double> w(static_cast<std::size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // C truncation, as PIL
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    if (xmax > c.ksize) xmax = c.ksize;  // cannot happen (PIL sizes ksize for it); keeps writes in bounds
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[static_cast<std::size_t>(x)] = f((x + xmin - center + 0.5) * ss);
      ww += w[static_cast<std::size_t>(x)];
    }
    std::int32_t* k = c.k.data() + static_cast<std::size_t>(xx) * static_cast<std::size_t>(c.ksize);
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[static_cast<std::size_t>(x)] / ww : w[static_cast<std::size_t>(x)];
      // normalize_coeffs_8bpc: round half away from zero by truncation of +-0.5.
      k[x] = v < 0 ? static_cast<std::int32_t>(-0.5 + v * (1 << precision_bits))
                   : static_cast<std::int32_t>(0.5 + v * (1 << precision_bits));
    }
    c.first[static_cast<std::size_t>(xx)] = xmin;
    c.count[static_cast<std::size_t>(xx)] = xmax < 0 ? 0 : xmax;
  }
  return c;
}

inline std::uint8_t clip8(std::int64_t in) {
  if (in >= (static_cast<std::int64_t>(1) << precision_bits << 8)) return 255;
  if (in <= 0) return 0;
  return static_cast<std::uint8_t>(in >> precision_bits);
}

}  // namespace

torch::Tensor resize_uint8(const torch::Tensor& image_hwc, std::int64_t height, std::int64_t width,
                           resample_filter filter) {
  if (!image_hwc.defined() || image_hwc.scalar_type() != torch::kUInt8 || image_hwc.dim() != 3 ||
      !image_hwc.device().is_cpu())
    fail("resize_uint8", "argument 'image_hwc' must be a uint8 CPU tensor [height, width, channels]");
  if (image_hwc.size(0) <= 0 || image_hwc.size(1) <= 0 || image_hwc.size(2) <= 0)
    fail("resize_uint8", "argument 'image_hwc' is empty: " + c10::str(image_hwc.sizes()));
  if (height <= 0 || width <= 0)
    fail("resize_uint8", "target size (height " + std::to_string(height) + ", width " + std::to_string(width) +
                             ") must be positive");
  constexpr std::int64_t max_side = std::numeric_limits<int>::max() / 8;
  if (height > max_side || width > max_side || image_hwc.size(0) > max_side || image_hwc.size(1) > max_side)
    fail("resize_uint8", "image or target size too large");
  auto src = image_hwc.contiguous();
  const int in_h = static_cast<int>(src.size(0)), in_w = static_cast<int>(src.size(1));
  const int out_h = static_cast<int>(height), out_w = static_cast<int>(width);
  const std::int64_t channels = src.size(2);
  if (in_h == out_h && in_w == out_w) return src.clone();  // PIL returns a copy

  const std::int64_t half = static_cast<std::int64_t>(1) << (precision_bits - 1);
  // Each pass convolves one axis with fixed-point coefficients and rounds to uint8.
  auto horizontal = [&](const torch::Tensor& in_img) {  // [rows, in_w, C] -> [rows, out_w, C]
    const axis_coeffs co = precompute_coeffs(in_w, out_w, filter);
    const std::int64_t rows = in_img.size(0);
    auto out_img = torch::empty({rows, out_w, channels}, torch::kUInt8);
    const std::uint8_t* in = in_img.data_ptr<std::uint8_t>();
    std::uint8_t* out = out_img.data_ptr<std::uint8_t>();
    for (std::int64_t y = 0; y < rows; ++y) {
      const std::uint8_t* in_row = in + y * in_w * channels;
      std::uint8_t* out_row = out + y * out_w * channels;
      for (int xx = 0; xx < out_w; ++xx) {
        const int xmin = co.first[static_cast<std::size_t>(xx)];
        const int n = co.count[static_cast<std::size_t>(xx)];
        const std::int32_t* k = co.k.data() + static_cast<std::size_t>(xx) * static_cast<std::size_t>(co.ksize);
        for (std::int64_t c = 0; c < channels; ++c) {
          std::int64_t ss = half;
          for (int x = 0; x < n; ++x) ss += static_cast<std::int64_t>(in_row[(x + xmin) * channels + c]) * k[x];
          out_row[xx * channels + c] = clip8(ss);
        }
      }
    }
    return out_img;
  };
  auto vertical = [&](const torch::Tensor& in_img) {  // [in_h, W, C] -> [out_h, W, C]
    const axis_coeffs co = precompute_coeffs(in_h, out_h, filter);
    const std::int64_t row_len = in_img.size(1) * channels;
    auto out_img = torch::empty({out_h, in_img.size(1), channels}, torch::kUInt8);
    const std::uint8_t* in = in_img.data_ptr<std::uint8_t>();
    std::uint8_t* out = out_img.data_ptr<std::uint8_t>();
    for (int yy = 0; yy < out_h; ++yy) {
      const int ymin = co.first[static_cast<std::size_t>(yy)];
      const int n = co.count[static_cast<std::size_t>(yy)];
      const std::int32_t* k = co.k.data() + static_cast<std::size_t>(yy) * static_cast<std::size_t>(co.ksize);
      for (std::int64_t i = 0; i < row_len; ++i) {
        std::int64_t ss = half;
        for (int y = 0; y < n; ++y) ss += static_cast<std::int64_t>(in[(ymin + y) * row_len + i]) * k[y];
        out[yy * row_len + i] = clip8(ss);
      }
    }
    return out_img;
  };
  if (in_w == out_w) return vertical(src);
  if (in_h == out_h) return horizontal(src);
  // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more
  // than twice as many pixels as the width; the order changes the rounding of the intermediate image.
  // (Pillow's passes also skip rows/columns the second pass never reads; that changes no value.)
  const bool vertical_first = out_h < in_h && (in_h - out_h) > 2 * (in_w - out_w);
  return vertical_first ? horizontal(vertical(src)) : vertical(horizontal(src));
}

rgb_image resize(const rgb_image& image, std::int64_t height, std::int64_t width, resample_filter filter) {
  return rgb_image{resize_uint8(image.pixels, height, width, filter)};
}

}  // namespace consr_runtime
