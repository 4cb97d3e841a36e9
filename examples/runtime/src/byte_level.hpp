// UTF-8 and GPT-2 byte-level helpers shared by the tokenizer and the BPE trainer (private to
// consr_runtime): one byte table, so that the trained vocabulary and the tokenizer that reads it
// cannot disagree on which character stands for which byte.
#pragma once

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

namespace consr_runtime {
namespace byte_level {

/// Appends the UTF-8 encoding of code point `cp` to `out`.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// GPT-2's bytes_to_unicode: the printable bytes stand for themselves, the others for U+0100 on,
/// in byte order.
struct table {
  std::array<std::string, 256> to_unicode;  // UTF-8 of the character standing for each byte
  std::array<int, 324> to_byte;             // code point -> byte, -1 if the code point stands for none
  std::array<int, 256> order{};             // the bytes in vocabulary order (printable ones first)
  table() {
    to_byte.fill(-1);
    std::array<bool, 256> printable{};
    int n = 0, k = 0;
    for (int b = 0; b < 256; ++b) {
      printable[b] = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      append_utf8(to_unicode[b], cp);
      to_byte[cp] = b;
    }
    for (int b = 0; b < 256; ++b)
      if (printable[b]) order[k++] = b;
    for (int b = 0; b < 256; ++b)
      if (!printable[b]) order[k++] = b;
  }
};

/// The table, built once.
inline const table& bytes() {
  static const table t;
  return t;
}

/// NFC of `s` (ASCII is already NFC); for invalid UTF-8, on_error(utf8proc's message), which throws.
template <class OnError>
std::string nfc(const std::string& s, OnError&& on_error) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) return s;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) on_error(utf8proc_errmsg(n));
  std::string r(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return r;
}

}  // namespace byte_level
}  // namespace consr_runtime
