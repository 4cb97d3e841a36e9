// Tests of the Box–Muller pieces of consr/random.hpp that box_muller evaluates —
// box_muller_log, box_muller_sqrt, box_muller_sincos — against their documented error bounds,
// and of the resulting float normals against a long-double Box–Muller: the references are
// long-double libm on the same (exactly reduced) arguments, written independently of the code.
#include <catch2/catch.hpp>

#include <consr/random.hpp>

#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <random>

namespace {

constexpr long double pi_l = 3.141592653589793238462643383279502884L;

// sin and cos of 2π(w + 0.5)·2^-32 in long double, with the quadrant taken out exactly in
// integers first (so the reference stays accurate next to the zeros of sin and cos).
void sincos_reference(std::uint32_t w, long double& s, long double& c) {
  const std::uint32_t q = (w + 0x20000000u) >> 30;
  const std::int32_t d = static_cast<std::int32_t>(w - (q << 30));
  const long double t = 2 * pi_l * (static_cast<long double>(d) + 0.5L) / 4294967296.0L;
  const long double st = std::sin(t), ct = std::cos(t);
  switch (q & 3u) {
    case 0: s = st, c = ct; break;
    case 1: s = ct, c = -st; break;
    case 2: s = -st, c = -ct; break;
    default: s = -ct, c = st; break;
  }
}

long double uniform_of(std::uint32_t w) { return (static_cast<long double>(w) + 0.5L) / 4294967296.0L; }

}  // namespace

TEST_CASE("box_muller_log is within 5.2e-11 relative of log on the Box-Muller uniforms", "[random][box_muller]") {
  long double worst = 0;
  auto check = [&](std::uint32_t w) {
    const double u = static_cast<double>(uniform_of(w));  // exact: 33 significant bits
    const long double ref = std::log(static_cast<long double>(u));
    worst = std::max(worst, std::fabs((consr::detail::box_muller_log(u) - ref) / ref));
  };
  for (std::uint64_t w = 0; w <= 0xffffffffull; w += 9973) check(static_cast<std::uint32_t>(w));
  for (std::uint32_t k = 0; k < 20000; ++k) {
    check(k);                        // the smallest uniforms
    check(0xffffffffu - k);          // u next to 1, where log u -> 0
    check(0xb504f333u - 10000 + k);  // mantissa next to √2 (u ≈ 1/√2)
    check(0x5a827999u - 10000 + k);  // next to 1/(2√2)
  }
  INFO("worst relative error " << static_cast<double>(worst));
  CHECK(worst < 5.2e-11L);
  CHECK(worst > 1e-13L);  // the series really is the short one documented (not log_portable's)
}

TEST_CASE("box_muller_sqrt is within 4.1e-11 relative of sqrt", "[random][box_muller]") {
  // x in [2^-40, 2^40] and over the radii [1e-9, 46]; CHECK prints the worst relative error.
  CHECK(consr_test::worst_sqrt_error([](double x) { return consr::detail::box_muller_sqrt(x); }, 17, 40.0, 1e-9,
                                     46.0) < 4.1e-11L);
}

TEST_CASE("box_muller_sincos is within 1e-11 relative of sin and cos", "[random][box_muller]") {
  long double worst = 0;
  auto check = [&](std::uint32_t w) {
    double s, c;
    consr::detail::box_muller_sincos(w, s, c);
    long double rs, rc;
    sincos_reference(w, rs, rc);
    worst = std::max({worst, std::fabs((s - rs) / rs), std::fabs((c - rc) / rc)});
  };
  for (std::uint64_t w = 0; w <= 0xffffffffull; w += 10007) check(static_cast<std::uint32_t>(w));
  for (std::uint32_t q = 0; q < 8; ++q)  // every quadrant boundary and every zero of sin and cos
    for (std::int32_t d = -3000; d < 3000; ++d) check((q << 29) + static_cast<std::uint32_t>(d));
  INFO("worst relative error " << static_cast<double>(worst));
  CHECK(worst < 1e-11L);
}

TEST_CASE("box_muller floats are the exact normals rounded, up to 8e-11 relative", "[random][box_muller]") {
  std::mt19937 gen(2024);
  long double worst_beyond_rounding = 0;
  long not_nearest = 0, total = 0;
  for (int k = 0; k < 1000000; ++k) {
    const std::uint32_t w_radius = k < 64 ? static_cast<std::uint32_t>(k) : gen();  // the tail too
    const std::uint32_t w_angle = gen();
    float z_cos, z_sin;
    consr::detail::box_muller(w_radius, w_angle, z_cos, z_sin);
    const long double radius = std::sqrt(-2 * std::log(uniform_of(w_radius)));
    long double s, c;
    sincos_reference(w_angle, s, c);
    for (const auto& [z, ref] : {std::pair<float, long double>{z_cos, radius * c}, {z_sin, radius * s}}) {
      // |z − ref| ≤ half an ulp of ref (2^-24 relative) + 8e-11 relative.
      const long double err = std::fabs(static_cast<long double>(z) - ref) / std::fabs(ref);
      worst_beyond_rounding = std::max(worst_beyond_rounding, err - 0x1p-24L);
      not_nearest += z != static_cast<float>(ref);
      ++total;
    }
  }
  INFO("worst error beyond half an ulp " << static_cast<double>(worst_beyond_rounding) << "; not the nearest float "
                                         << not_nearest << " of " << total);
  CHECK(worst_beyond_rounding < 8e-11L);
  CHECK(not_nearest < total / 1000);  // documented: about 1.2e-4 of all normals
}
