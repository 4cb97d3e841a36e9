// Tests for consr/numeric.hpp: bf16 / fp16 storage conversions against an
// independent reference written with ldexp / frexp in double precision.
#include <catch2/catch.hpp>

#include <consr/numeric.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace {

// binary16 bits -> value, from the IEEE definition.
double half_reference(std::uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0) v = std::ldexp(mant, -24);
  else if (exp == 31) v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

// Round-to-nearest-even of a finite double to the grid of `step`, ties to even multiple.
double round_to_step_rne(double x, double step) {
  const double q = x / step;
  double r = std::nearbyint(q);  // default rounding mode is nearest-even
  return r * step;
}

// Reference float -> binary16 by searching the rounded value's bits.
std::uint16_t half_from_float_reference(float f) {
  if (std::isnan(f)) return 0x7e00;
  const double x = f;
  const double ax = std::fabs(x);
  double r;
  if (ax < std::ldexp(1.0, -14)) {
    r = round_to_step_rne(ax, std::ldexp(1.0, -24));
  } else {
    int e;
    std::frexp(ax, &e);  // ax = m * 2^e, m in [0.5, 1)
    r = round_to_step_rne(ax, std::ldexp(1.0, e - 11));
  }
  if (r >= 65520.0 || std::isinf(ax)) r = std::numeric_limits<double>::infinity();
  for (std::uint32_t b = 0; b < 0x7c01; ++b)
    if (half_reference(static_cast<std::uint16_t>(b)) == r) return static_cast<std::uint16_t>(b | (std::signbit(f) ? 0x8000 : 0));
  return 0xffff;  // unreachable for correct input
}

float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST_CASE("float16 -> float is exact for all 65536 encodings", "[numeric]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const double ref = half_reference(static_cast<std::uint16_t>(b));
    const float got = consr::float16::to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(ref)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(static_cast<double>(got) == ref);
      REQUIRE(std::signbit(got) == ((b & 0x8000) != 0));
    }
  }
}

TEST_CASE("float -> float16 rounds to nearest even", "[numeric]") {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> bits;
  // Random floats over the whole binary16 range, plus ties and boundaries.
  for (int i = 0; i < 20000; ++i) {
    const float f = std::ldexp(std::uniform_real_distribution<float>(-1.f, 1.f)(rng), int(bits(rng) % 46) - 30);
    REQUIRE(consr::float16::from_float(f) == half_from_float_reference(f));
  }
  const float edge[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e9f, -1e9f, 5.9604645e-8f, 2.98e-8f,
                        2.9802322e-8f, 6.1035156e-5f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                        std::numeric_limits<float>::infinity()};
  for (float f : edge) REQUIRE(consr::float16::from_float(f) == half_from_float_reference(f));
  REQUIRE(std::isnan(consr::float16::to_float(consr::float16::from_float(std::nanf("")))));
}

TEST_CASE("bfloat16 conversions", "[numeric]") {
  // bf16 -> float is the upper half of the fp32 bits.
  for (std::uint32_t b = 0; b < 65536; b += 7) {
    const float got = consr::bfloat16::to_float(static_cast<std::uint16_t>(b));
    const float ref = float_of(b << 16);
    if (std::isnan(ref)) REQUIRE(std::isnan(got));
    else REQUIRE(got == ref);
  }
  // float -> bf16: nearest representable, ties to even (checked against neighbours in double).
  std::mt19937 rng(99);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::ldexp(std::uniform_real_distribution<float>(-1.f, 1.f)(rng), int(rng() % 200) - 100);
    const std::uint16_t b = consr::bfloat16::from_float(f);
    const double got = consr::bfloat16::to_float(b);
    const double lo = consr::bfloat16::to_float(static_cast<std::uint16_t>(b - 1));
    const double hi = consr::bfloat16::to_float(static_cast<std::uint16_t>(b + 1));
    REQUIRE(std::fabs(got - f) <= std::fabs(lo - f));
    REQUIRE(std::fabs(got - f) <= std::fabs(hi - f));
  }
  REQUIRE(consr::bfloat16::from_float(1.0f + 1.0f / 256) == 0x3f80);       // tie -> even (down)
  REQUIRE(consr::bfloat16::from_float(1.0f + 3.0f / 256) == 0x3f82);       // tie -> even (up)
  REQUIRE(std::isnan(consr::bfloat16::to_float(consr::bfloat16::from_float(std::nanf("")))));
}

TEST_CASE("accumulation types follow spec section 2", "[numeric]") {
  STATIC_REQUIRE(std::is_same_v<consr::accum_t<float>, float>);
  STATIC_REQUIRE(std::is_same_v<consr::accum_t<consr::bfloat16>, float>);
  STATIC_REQUIRE(std::is_same_v<consr::accum_t<consr::float16>, float>);
  STATIC_REQUIRE(std::is_same_v<consr::accum_t<double>, double>);
  STATIC_REQUIRE(std::is_same_v<consr::accum_t<const double>, double>);
}
