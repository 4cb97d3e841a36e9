// Image decoding as PIL does it (libjpeg-turbo with PIL's settings, libpng with PIL's mode rules and
// transformers' convert_to_rgb) and PIL-exact resampling. See consr_runtime/image.hpp.
#include "consr_runtime/image.hpp"

#include <array>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include <torch/torch.h>

// libjpeg's and libpng's C headers; both report errors by longjmp, so every function below that
// calls them keeps only trivially destructible locals between its setjmp and the library calls.
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "consr_runtime/error.hpp"

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

// ---- JPEG: libjpeg(-turbo) exactly as Pillow's JpegDecode.c drives it ------------------------------
// Pillow reads the header, sets out_color_space from the mode it derived from the frame's component
// count (1 -> L, 3 -> RGB, 4 -> CMYK, the last with Adobe's inverted convention), and leaves the
// library defaults otherwise: dct_method JDCT_ISLOW, do_fancy_upsampling TRUE, block smoothing on.
// A file that ends early is an error (PIL: "image file is truncated"); other warnings are ignored.

constexpr int max_jpeg_scans = 1000;  // a progressive file with more scans is refused (CPU bomb)

struct jpeg_error_state {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

extern "C" void consr_jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<jpeg_error_state*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

extern "C" void consr_jpeg_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    auto* err = reinterpret_cast<jpeg_error_state*>(cinfo->err);
    std::snprintf(err->message, sizeof err->message, "the file is truncated");
    std::longjmp(err->jump, 1);
  }
}

extern "C" void consr_jpeg_progress(j_common_ptr cinfo) {
  if (cinfo->is_decompressor) {
    auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (d->input_scan_number > max_jpeg_scans) {
      auto* err = reinterpret_cast<jpeg_error_state*>(cinfo->err);
      std::snprintf(err->message, sizeof err->message, "more than %d progressive scans", max_jpeg_scans);
      std::longjmp(err->jump, 1);
    }
  }
}

struct raw_image {
  int width = 0, height = 0, channels = 0;
  std::vector<std::uint8_t> samples;  // interleaved, `channels` bytes per pixel (JPEG) or as noted (PNG)
  std::vector<std::uint8_t*> rows;     // PNG: row pointers into `samples`
};

// The libjpeg objects of one decode. They live in the caller's frame: the C standard leaves locals of
// the function that called setjmp indeterminate after a longjmp if they changed in between.
struct jpeg_state {
  jpeg_decompress_struct cinfo;
  jpeg_error_state err;
  jpeg_progress_mgr progress;
};

// Returns false with `message` set on any decoding error. `out` also lives in the caller's frame, so
// that a longjmp skips no destructor.
bool decode_jpeg_raw(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, raw_image& out,
                     jpeg_state& state, char (&message)[JMSG_LENGTH_MAX]) {
  jpeg_decompress_struct& cinfo = state.cinfo;
  jpeg_error_state& err = state.err;
  jpeg_progress_mgr& progress = state.progress;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = consr_jpeg_error_exit;
  err.pub.emit_message = consr_jpeg_emit_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    std::memcpy(message, err.message, sizeof message);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = consr_jpeg_progress;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, const_cast<unsigned char*>(data), static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  switch (cinfo.num_components) {
    case 1: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: cinfo.out_color_space = JCS_RGB; break;
    case 4: cinfo.out_color_space = JCS_CMYK; break;
    default:
      std::snprintf(message, sizeof message, "a JPEG with %d components (PIL reads 1, 3 or 4)", cinfo.num_components);
      jpeg_destroy_decompress(&cinfo);
      return false;
  }
  if (static_cast<std::int64_t>(cinfo.image_width) * cinfo.image_height > max_pixels) {
    std::snprintf(message, sizeof message, "%ux%u pixels is more than the limit of %lld (PIL's decompression-bomb limit)",
                  cinfo.image_width, cinfo.image_height, static_cast<long long>(max_pixels));
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  out.channels = cinfo.output_components;
  const std::size_t stride = static_cast<std::size_t>(out.width) * static_cast<std::size_t>(out.channels);
  out.samples.resize(stride * static_cast<std::size_t>(out.height));
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.samples.data() + stride * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

rgb_image decode_jpeg(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name) {
  raw_image raw;
  jpeg_state state;
  char message[JMSG_LENGTH_MAX] = {};
  if (!decode_jpeg_raw(data, size, max_pixels, raw, state, message))
    fail("decode_image", "'" + name + "' is not a decodable PNG or JPEG image (JPEG: " + message + ")");
  auto out = torch::empty({raw.height, raw.width, 3}, torch::kUInt8);
  std::uint8_t* dst = out.data_ptr<std::uint8_t>();
  const std::size_t n = static_cast<std::size_t>(raw.width) * static_cast<std::size_t>(raw.height);
  const std::uint8_t* src = raw.samples.data();
  for (std::size_t i = 0; i < n; ++i) {
    std::uint8_t* d = dst + 3 * i;
    if (raw.channels == 1) {
      d[0] = d[1] = d[2] = src[i];
    } else if (raw.channels == 3) {
      std::memcpy(d, src + 3 * i, 3);
    } else {
      // Adobe CMYK is stored inverted: PIL unpacks it as "CMYK;I" (255 - v), then convert("RGBA")
      // applies Convert.c's cmyk2rgb: nk = 255 - k; v = CLIP8(nk - MULDIV255(c, nk)).
      const std::uint8_t* p = src + 4 * i;
      const int nk = 255 - (255 - p[3]);
      for (int c = 0; c < 3; ++c) {
        const int tmp = (255 - p[c]) * nk + 128;
        const int v = nk - (((tmp >> 8) + tmp) >> 8);
        d[c] = static_cast<std::uint8_t>(v <= 0 ? 0 : v < 256 ? v : 255);
      }
    }
  }
  return rgb_image{out};
}

// ---- PNG: libpng without colour transformations, then PIL's mode rules ---------------------------
// PngImagePlugin maps (bit depth, colour type) to a mode: gray 1 -> "1" (0/255), gray 2/4/8 -> "L"
// (samples scaled by 0x55 / 0x11 / 1), gray 16 -> "I;16", RGB 8/16 -> "RGB" (16-bit: high byte),
// palette -> "P", gray+alpha 8 -> "LA", gray+alpha 16 -> "RGBA", RGBA 8/16 -> "RGBA" (16-bit: high
// bytes). tRNS: palette -> per-entry alpha; gray -> a colour key (raw 16-bit value; for 1-bit 255 if
// non-zero); RGB -> a key that transformers ignores (it keeps "RGB" images as they are). Then
// convert_to_rgb: convert("RGBA") (I;16 clipped to 255, key matches made transparent by comparing
// with `key & 0xff`, palette entries past PLTE black), composite onto white, drop alpha.

struct png_read_state {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t pos;
  char message[200];
};

extern "C" void consr_png_read(png_structp png, png_bytep out, png_size_t length) {
  auto* st = static_cast<png_read_state*>(png_get_io_ptr(png));
  if (length > st->size - st->pos) png_error(png, "the file is truncated");
  std::memcpy(out, st->data + st->pos, length);
  st->pos += length;
}

extern "C" void consr_png_error(png_structp png, png_const_charp msg) {
  auto* st = static_cast<png_read_state*>(png_get_error_ptr(png));
  std::snprintf(st->message, sizeof st->message, "%s", msg ? msg : "unknown error");
  png_longjmp(png, 1);
}

extern "C" void consr_png_warning(png_structp, png_const_charp) {}

struct png_meta {
  int bit_depth = 0, color_type = 0;
  std::array<std::uint8_t, 256 * 4> palette{};  // RGBA, past PLTE: black, opaque unless tRNS says
  bool has_key = false;
  int key = 0;  // the gray tRNS value as PIL stores it
};

// Rows are unpacked to one sample per byte for bit depths < 8 (values unscaled) and kept big-endian for
// 16 bits.
// `st` lives in the caller's frame (see jpeg_state).
bool decode_png_raw(std::int64_t max_pixels, raw_image& out, png_meta& meta, png_read_state& st,
                    char (&message)[200]) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st, consr_png_error, consr_png_warning);
  if (png == nullptr) {
    std::snprintf(message, sizeof message, "cannot create a PNG reader");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    std::memcpy(message, st.message, sizeof message);
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, &st, consr_png_read);
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int interlace = 0;
  png_get_IHDR(png, info, &width, &height, &meta.bit_depth, &meta.color_type, &interlace, nullptr, nullptr);
  if (static_cast<std::int64_t>(width) * static_cast<std::int64_t>(height) > max_pixels) {
    std::snprintf(message, sizeof message, "%ux%u pixels is more than the limit of %lld (PIL's decompression-bomb limit)",
                  width, height, static_cast<long long>(max_pixels));
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  if (meta.color_type == PNG_COLOR_TYPE_PALETTE) {
    for (int i = 0; i < 256; ++i) meta.palette[static_cast<std::size_t>(4 * i + 3)] = 255;
    png_colorp plte = nullptr;
    int n = 0;
    if (png_get_PLTE(png, info, &plte, &n) != 0)
      for (int i = 0; i < n && i < 256; ++i) {
        meta.palette[static_cast<std::size_t>(4 * i + 0)] = plte[i].red;
        meta.palette[static_cast<std::size_t>(4 * i + 1)] = plte[i].green;
        meta.palette[static_cast<std::size_t>(4 * i + 2)] = plte[i].blue;
      }
  }
  png_bytep trans_alpha = nullptr;
  int num_trans = 0;
  png_color_16p trans_color = nullptr;
  if (png_get_tRNS(png, info, &trans_alpha, &num_trans, &trans_color) != 0) {
    if (meta.color_type == PNG_COLOR_TYPE_PALETTE && trans_alpha != nullptr) {
      for (int i = 0; i < num_trans && i < 256; ++i) meta.palette[static_cast<std::size_t>(4 * i + 3)] = trans_alpha[i];
    } else if (meta.color_type == PNG_COLOR_TYPE_GRAY && trans_color != nullptr) {
      meta.has_key = true;
      meta.key = meta.bit_depth == 1 ? (trans_color->gray != 0 ? 255 : 0) : trans_color->gray;
    }
  }
  if (meta.bit_depth < 8) png_set_packing(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  out.width = static_cast<int>(width);
  out.height = static_cast<int>(height);
  out.channels = png_get_channels(png, info);
  const std::size_t rowbytes = png_get_rowbytes(png, info);
  out.samples.resize(rowbytes * height);
  out.rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y) out.rows[y] = out.samples.data() + rowbytes * y;
  png_read_image(png, out.rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

rgb_image decode_png(const std::uint8_t* data, std::size_t size, std::int64_t max_pixels, const std::string& name) {
  raw_image raw;
  png_meta meta;
  png_read_state st{data, size, 0, {}};
  char message[200] = {};
  if (!decode_png_raw(max_pixels, raw, meta, st, message))
    fail("decode_image", "'" + name + "' is not a decodable PNG or JPEG image (PNG: " + message + ")");
  auto out = torch::empty({raw.height, raw.width, 3}, torch::kUInt8);
  std::uint8_t* dst = out.data_ptr<std::uint8_t>();
  const bool wide = meta.bit_depth == 16;
  const std::size_t bytes_per_sample = wide ? 2 : 1;
  const std::size_t row_samples = static_cast<std::size_t>(raw.width) * static_cast<std::size_t>(raw.channels);
  const int scale = meta.bit_depth == 1 ? 255 : meta.bit_depth == 2 ? 0x55 : meta.bit_depth == 4 ? 0x11 : 1;
  const int key = meta.key & 0xff;
  for (int y = 0; y < raw.height; ++y) {
    const std::uint8_t* row = raw.samples.data() + static_cast<std::size_t>(y) * row_samples * bytes_per_sample;
    // sample c of pixel x: the 8-bit value PIL keeps (high byte of a 16-bit sample).
    auto hi = [&](int x, int c) { return row[(static_cast<std::size_t>(x) * raw.channels + c) * bytes_per_sample]; };
    std::uint8_t* d = dst + static_cast<std::size_t>(y) * static_cast<std::size_t>(raw.width) * 3;
    for (int x = 0; x < raw.width; ++x, d += 3) {
      switch (meta.color_type) {
        case PNG_COLOR_TYPE_GRAY: {
          int v;
          if (wide) {  // I;16 -> RGB(A): values above 255 clip to 255
            const std::size_t at = static_cast<std::size_t>(x) * 2;
            v = row[at] != 0 ? 255 : row[at + 1];
          } else {
            v = row[x] * scale;
          }
          const bool transparent = meta.has_key && v == key;
          d[0] = d[1] = d[2] = transparent ? 255 : static_cast<std::uint8_t>(v);
          break;
        }
        case PNG_COLOR_TYPE_RGB:
          d[0] = hi(x, 0);
          d[1] = hi(x, 1);
          d[2] = hi(x, 2);
          break;
        case PNG_COLOR_TYPE_PALETTE: {
          const std::uint8_t* e = meta.palette.data() + 4 * static_cast<std::size_t>(row[x]);
          for (int c = 0; c < 3; ++c) d[c] = composite_on_white(e[c], e[3]);
          break;
        }
        case PNG_COLOR_TYPE_GRAY_ALPHA:
          d[0] = d[1] = d[2] = composite_on_white(hi(x, 0), hi(x, 1));
          break;
        default:  // RGBA
          for (int c = 0; c < 3; ++c) d[c] = composite_on_white(hi(x, c), hi(x, 3));
          break;
      }
    }
  }
  return rgb_image{out};
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

rgb_image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name,
                       std::int64_t max_pixels) {
  if (data == nullptr || size == 0) fail("decode_image", "'" + name + "': no data (empty file or buffer)");
  if (size > static_cast<std::size_t>(std::numeric_limits<long>::max()))
    fail("decode_image", "'" + name + "': " + std::to_string(size) + " bytes is too large to decode");
  static constexpr std::uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size >= 8 && std::memcmp(data, png_signature, 8) == 0) return decode_png(data, size, max_pixels, name);
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
    return decode_jpeg(data, size, max_pixels, name);
  fail("decode_image", "'" + name + "' is not a decodable PNG or JPEG image (no PNG or JPEG signature)");
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
