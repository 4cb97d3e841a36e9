// Python float semantics the ported processors/models rely on (private to consr_runtime): the token
// counts and feature grids of LLaVA-OneVision use round(x, 7), float floor division and int().
#pragma once

#include <cmath>
#include <cstdint>

namespace consr_runtime {

/// Python's round(x, ndigits) for the small ndigits used here: scaled, rounded half to even,
/// scaled back. (CPython rounds the exact binary value through dtoa; the two agree except for
/// values within an ulp of a decimal tie, which the callers then truncate with int() anyway.)
inline double python_round(double x, int ndigits) {
  const double scale = std::pow(10.0, ndigits);
  return std::nearbyint(x * scale) / scale;
}

/// Python's float floor division a // b (CPython float_floor_div: fmod-based, so it can differ from
/// floor(a / b) when a / b rounds up to an integer).
inline double python_floordiv(double a, double b) {
  double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0.0) {
    if ((b < 0) != (mod < 0)) div -= 1.0;
  }
  if (div != 0.0) {
    double floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
    return floordiv;
  }
  return std::copysign(0.0, a / b);
}

/// Python's int(x) of a float: truncation toward zero.
inline std::int64_t python_int(double x) { return static_cast<std::int64_t>(std::trunc(x)); }

/// Python's a // b on integers (floor, also for negative operands).
inline std::int64_t python_floordiv_int(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

}  // namespace consr_runtime
