// consr_runtime/parse_number.hpp — a number spelled by a whole command-line value: the one reading
// the runtime's programs share, each naming its own option in its own error.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace consr_runtime {

/// `text` read whole as a double (std::stod), or nullopt when it is not one: empty, trailing
/// characters, out of range.
inline std::optional<double> parse_double(const std::string& text) {
  try {
    std::size_t used = 0;
    const double x = std::stod(text, &used);
    if (used == text.size()) return x;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

/// `text` read whole as a signed 64-bit integer (std::stoll), or nullopt.
inline std::optional<std::int64_t> parse_int64(const std::string& text) {
  try {
    std::size_t used = 0;
    const long long x = std::stoll(text, &used);
    if (used == text.size()) return static_cast<std::int64_t>(x);
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

/// `text` read whole as an unsigned 64-bit integer (std::stoull), or nullopt; a leading '-' (which
/// std::stoull would wrap around) is not one.
inline std::optional<std::uint64_t> parse_uint64(const std::string& text) {
  try {
    std::size_t used = 0;
    if (!text.empty() && text[0] != '-') {
      const unsigned long long x = std::stoull(text, &used);
      if (used == text.size()) return static_cast<std::uint64_t>(x);
    }
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

}  // namespace consr_runtime
