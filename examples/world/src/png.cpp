// The one translation unit with stb_image_write's implementation (static, so it never clashes
// with another copy linked into the same program).
//
// The images carry per-pixel noise, so deflate gains almost nothing on them (36 KB instead of
// 38 KB) while stb's compressor dominated the generation time. stb lets a program supply its own
// zlib compressor (STBIW_ZLIB_COMPRESS): ours writes "stored" deflate blocks (valid zlib, no
// compression, a memcpy plus Adler-32), and the rows use PNG filter 0. Any PNG reader decodes them.
#include <cstdlib>
#include <cstring>

namespace consr_world::detail {
unsigned char* zlib_stored(unsigned char* data, int data_len, int* out_len, int quality);
}
#define STBIW_ZLIB_COMPRESS consr_world::detail::zlib_stored
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "consr_world/dataset.hpp"

namespace consr_world {

namespace detail {

// zlib stream of stored deflate blocks (RFC 1950/1951), allocated with STBIW_MALLOC as stb frees it.
unsigned char* zlib_stored(unsigned char* data, int data_len, int* out_len, int /*quality*/) {
  const int blocks = data_len / 65535 + 1;
  const int total = 2 + blocks * 5 + data_len + 4;
  auto* out = static_cast<unsigned char*>(STBIW_MALLOC(static_cast<std::size_t>(total)));
  if (!out) return nullptr;
  int o = 0;
  out[o++] = 0x78;  // CM 8, CINFO 7
  out[o++] = 0x01;  // FCHECK: 0x7801 % 31 == 0, no dictionary, fastest
  int pos = 0;
  for (int b = 0; b < blocks; ++b) {
    const int len = (data_len - pos) < 65535 ? (data_len - pos) : 65535;
    out[o++] = b == blocks - 1 ? 1 : 0;  // BFINAL, BTYPE 00
    out[o++] = static_cast<unsigned char>(len & 0xFF);
    out[o++] = static_cast<unsigned char>(len >> 8);
    out[o++] = static_cast<unsigned char>(~len & 0xFF);
    out[o++] = static_cast<unsigned char>((~len >> 8) & 0xFF);
    if (len) std::memcpy(out + o, data + pos, static_cast<std::size_t>(len));
    o += len;
    pos += len;
  }
  std::uint32_t a = 1, s = 0;
  for (int i = 0; i < data_len; ++i) {
    a = (a + data[i]) % 65521u;
    s = (s + a) % 65521u;
  }
  const std::uint32_t adler = (s << 16) | a;
  out[o++] = static_cast<unsigned char>(adler >> 24);
  out[o++] = static_cast<unsigned char>(adler >> 16);
  out[o++] = static_cast<unsigned char>(adler >> 8);
  out[o++] = static_cast<unsigned char>(adler);
  *out_len = o;
  return out;
}

}  // namespace detail

namespace {
// Set once, at static initialisation, before any thread writes: filter 0 (none) on every row.
const bool png_settings = [] {
  stbi_write_force_png_filter = 0;
  return true;
}();
}  // namespace

bool write_png(const std::string& path, const image& img) {
  (void)png_settings;
  return stbi_write_png(path.c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3) != 0;
}

}  // namespace consr_world
