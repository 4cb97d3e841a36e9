// Tests for consr/random.hpp: Philox4x32-10 against Random123's known answers,
// the polynomial log / sincos / sqrt against long-double libm, the normal and
// uniform streams against an independent long-double Box–Muller, and the
// statistics of 10^6 normals.
#include <catch2/catch.hpp>

#include <consr/random.hpp>

#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

using consr::rng_key;
using consr::uint2x32;
using consr::uint4x32;

namespace {

struct kat {
  uint4x32 counter;
  uint2x32 key;
  uint4x32 expected;
};

const long double two_pi_l = 6.283185307179586476925286766559005768L;

// sin and cos of 2π·u for u in (0, 1), long double. The reduction u − q/4 is
// exact (u has at most 34 significant bits), so the reference keeps full
// relative accuracy near the zeros of sin and cos.
void sincos_2pi_reference(long double u, long double& s, long double& c) {
  const long double q = std::nearbyint(4 * u);
  const long double t = u - q / 4;
  const long double st = std::sin(two_pi_l * t), ct = std::cos(two_pi_l * t);
  switch (static_cast<int>(q) & 3) {
    case 0: s = st, c = ct; break;
    case 1: s = ct, c = -st; break;
    case 2: s = -st, c = -ct; break;
    default: s = -ct, c = st; break;
  }
}

// The normal of element i written from the documented counter layout and the
// textbook Box–Muller, in long double with libm (independent of the code under test).
long double normal_reference(rng_key key, std::uint64_t i) {
  const std::uint64_t block = i / 4;
  const uint4x32 c{{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                    static_cast<std::uint32_t>(key.offset), static_cast<std::uint32_t>(key.offset >> 32)}};
  const uint2x32 k{{static_cast<std::uint32_t>(key.seed), static_cast<std::uint32_t>(key.seed >> 32)}};
  const uint4x32 r = consr::philox4x32_10(c, k);
  const unsigned pair = static_cast<unsigned>(i % 4) / 2;
  const long double u1 = (static_cast<long double>(r.v[2 * pair]) + 0.5L) / 4294967296.0L;
  const long double u2 = (static_cast<long double>(r.v[2 * pair + 1]) + 0.5L) / 4294967296.0L;
  const long double radius = std::sqrt(-2.0L * std::log(u1));
  long double s, co;
  sincos_2pi_reference(u2, s, co);
  return (i % 2 == 0) ? radius * co : radius * s;
}

}  // namespace

TEST_CASE("philox4x32_10 reproduces Random123's known-answer vectors", "[random][philox]") {
  // First three: Random123 kat_vectors, as quoted in DEShawResearch/fs123
  // core123/ut/ut_philox.cpp ("cut-and-pasted from the kat_vectors file in the
  // original Random123 distribution"). The others: the generated Random123
  // kat_vectors in girving/random123-manual examples/kat_vectors.
  const kat cases[] = {
      {{{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
       {{0xffffffff, 0xffffffff}},
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
       {{0xa4093822, 0x299f31d0}},
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
      {{{1, 0, 0, 0}}, {{1, 0}}, {{0xac08141b, 0xdfc5ccbe, 0x79c07a47, 0xa7f66093}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
       {{0, 1}},
       {{0x126514c3, 0xd1898b69, 0xda2707b3, 0x6e6fb436}}},
      {{{0, 0, 0, 0x80000000}}, {{0, 0x80000000}}, {{0xf7a0b371, 0xe51dc93d, 0x56ce135d, 0x1d4b5580}}},
  };
  for (const kat& k : cases) {
    const uint4x32 r = consr::philox4x32_10(k.counter, k.key);
    for (int j = 0; j < 4; ++j) {
      INFO("counter " << std::hex << k.counter.v[0] << " key " << k.key.v[0] << " word " << j);
      CHECK(r.v[j] == k.expected.v[j]);
    }
  }
}

TEST_CASE("log_portable is accurate to < 3e-16 relative against long-double log", "[random][math]") {
  // The split of ln 2 used for e·ln 2.
  constexpr double ln2_hi = 0x1.62e42feep-1, ln2_lo = 0x1.a39ef35793c76p-33;
  CHECK(std::fabs(static_cast<long double>(ln2_hi) + ln2_lo - std::log(2.0L)) < 1e-26L);

  std::mt19937_64 gen(12345);
  std::uniform_real_distribution<double> exponent(-40.0, 10.0), near_one(-1.0, 1.0);
  long double max_rel = 0;
  for (int n = 0; n < 400000; ++n) {
    double x = std::exp2(exponent(gen));
    if (n % 4 == 1) x = 1.0 + std::ldexp(near_one(gen), -(n % 52));  // cancellation region around 1
    if (n % 4 == 2) x = std::ldexp(1.0, (n % 80) - 60) * (1.0 + 1e-16 * (n % 7));  // powers of two and neighbours
    const long double ref = std::log(static_cast<long double>(x));
    if (ref == 0) {
      CHECK(consr::detail::log_portable(x) == 0.0);
      continue;
    }
    max_rel = std::max(max_rel, std::fabs((consr::detail::log_portable(x) - ref) / ref));
  }
  // The extreme Box–Muller inputs.
  for (double u : {std::ldexp(0.5, -32), 1.0 - std::ldexp(0.5, -32), 0.5, std::sqrt(0.5), std::sqrt(2.0)}) {
    const long double ref = std::log(static_cast<long double>(u));
    max_rel = std::max(max_rel, std::fabs((consr::detail::log_portable(u) - ref) / ref));
  }
  INFO("max relative error " << static_cast<double>(max_rel));
  CHECK(max_rel < 3e-16L);
}

TEST_CASE("sincos_2pi_u32 is accurate against long-double sin/cos", "[random][math]") {
  std::mt19937_64 gen(777);
  long double max_abs = 0, max_rel = 0;
  auto check_word = [&](std::uint32_t w) {
    double s, c;
    consr::detail::sincos_2pi_u32(w, s, c);
    long double rs, rc;
    sincos_2pi_reference((static_cast<long double>(w) + 0.5L) / 4294967296.0L, rs, rc);
    max_abs = std::max({max_abs, std::fabs(s - rs), std::fabs(c - rc)});
    max_rel = std::max({max_rel, std::fabs((s - rs) / rs), std::fabs((c - rc) / rc)});
  };
  for (int n = 0; n < 400000; ++n) check_word(static_cast<std::uint32_t>(gen()));
  // Around every quadrant boundary (where one of sin/cos crosses zero) and the octant switches.
  for (std::uint32_t centre = 0; centre < 8; ++centre)
    for (std::int64_t d = -300; d <= 300; ++d)
      check_word(static_cast<std::uint32_t>((static_cast<std::int64_t>(centre) << 29) + d));
  INFO("max abs error " << static_cast<double>(max_abs) << ", max rel error " << static_cast<double>(max_rel));
  CHECK(max_abs < 3e-16L);
  CHECK(max_rel < 4e-16L);
}

TEST_CASE("sqrt_portable is accurate to < 5e-16 relative", "[random][math]") {
  CHECK(consr_test::worst_sqrt_error([](double x) { return consr::detail::sqrt_portable(x); }, 99, 100.0, 2e-10,
                                     46.0) < 5e-16L);
}

TEST_CASE("normal_at equals a long-double Box–Muller of the documented counter layout", "[random][normal]") {
  for (const rng_key key : {rng_key{0, 0}, rng_key{42, 7}, rng_key{0xfedcba9876543210ull, 0x0123456789abcdefull}}) {
    std::vector<std::uint64_t> indices;
    for (std::uint64_t i = 0; i < 4000; ++i) indices.push_back(i);
    for (std::uint64_t i : {std::uint64_t{1} << 32, (std::uint64_t{1} << 40) + 3, ~std::uint64_t{0} - 5,
                            ~std::uint64_t{0}})
      indices.push_back(i);
    for (std::uint64_t i : indices) {
      const float z = consr::normal_at(key, i);
      const long double ref = normal_reference(key, i);
      INFO("seed " << key.seed << " offset " << key.offset << " i " << i << " z " << z << " ref "
                   << static_cast<double>(ref));
      // Rounding to float: half an ulp (2^-24 relative), plus the double
      // evaluation's few 1e-16 when the value sits on a rounding boundary.
      REQUIRE(std::fabs(z - ref) <= 6.0e-8L * std::fabs(ref) + 1e-30L);
      REQUIRE(z == consr::normal_block(key, i / 4).v[i % 4]);
    }
  }
}

TEST_CASE("normals are a pure function of (seed, offset, i)", "[random][normal]") {
  const rng_key a{1234, 0}, b{1235, 0}, c{1234, 1};
  int same_seed = 0, diff_seed = 0, diff_offset = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    same_seed += consr::normal_at(a, i) == consr::normal_at(a, i);
    diff_seed += consr::normal_at(a, i) != consr::normal_at(b, i);
    diff_offset += consr::normal_at(a, i) != consr::normal_at(c, i);
  }
  CHECK(same_seed == 1000);
  CHECK(diff_seed == 1000);
  CHECK(diff_offset == 1000);
}

TEST_CASE("10^6 normals have the moments and tail fractions of N(0, 1)", "[random][normal][statistics]") {
  const std::uint64_t n = 1000000;
  const rng_key key{20240607, 3};
  std::vector<float> z(n);
  for (std::uint64_t blk = 0; blk < n / 4; ++blk) {
    const consr::normal4 q = consr::normal_block(key, blk);
    for (int l = 0; l < 4; ++l) z[4 * blk + l] = q.v[l];
  }
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, lag1 = 0, lag4 = 0, max_abs = 0;
  std::uint64_t within1 = 0, within2 = 0, within3 = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    const double x = z[i];
    s1 += x, s2 += x * x, s3 += x * x * x, s4 += x * x * x * x;
    if (i + 1 < n) lag1 += x * z[i + 1];
    if (i + 4 < n) lag4 += x * z[i + 4];
    within1 += std::fabs(x) < 1, within2 += std::fabs(x) < 2, within3 += std::fabs(x) < 3;
    max_abs = std::max(max_abs, std::fabs(x));
  }
  const double nn = static_cast<double>(n), root_n = std::sqrt(nn);
  // 5-sigma bounds of the sampling distributions under N(0, 1).
  CHECK(std::fabs(s1 / nn) < 5.0 / root_n);
  CHECK(std::fabs(s2 / nn - 1.0) < 5.0 * std::sqrt(2.0) / root_n);
  CHECK(std::fabs(s3 / nn) < 5.0 * std::sqrt(15.0) / root_n);
  CHECK(std::fabs(s4 / nn - 3.0) < 5.0 * std::sqrt(96.0) / root_n);
  CHECK(std::fabs(lag1 / nn) < 5.0 / root_n);  // neighbours (same Box–Muller pair) uncorrelated
  CHECK(std::fabs(lag4 / nn) < 5.0 / root_n);
  auto fraction_ok = [&](std::uint64_t count, double p) {
    return std::fabs(static_cast<double>(count) / nn - p) < 5.0 * std::sqrt(p * (1 - p) / nn);
  };
  CHECK(fraction_ok(within1, 0.6826894921370859));
  CHECK(fraction_ok(within2, 0.9544997361036416));
  CHECK(fraction_ok(within3, 0.9973002039367398));
  CHECK(max_abs <= 6.8);  // u ≥ 2^-33 bounds the radius by sqrt(66 ln 2) ≈ 6.76
}

TEST_CASE("uniform_at uses its own counter range and is uniform on (0, 1)", "[random][uniform]") {
  const rng_key key{77, 5};
  double s1 = 0, s2 = 0;
  const int n = 200000;
  std::set<double> seen;
  for (int i = 0; i < n; ++i) {
    const double u = consr::uniform_at(key, static_cast<std::uint64_t>(i));
    REQUIRE(u > 0.0);
    REQUIRE(u < 1.0);
    s1 += u, s2 += u * u;
    if (i < 1000) seen.insert(u);
  }
  CHECK(seen.size() == 1000);
  CHECK(std::fabs(s1 / n - 0.5) < 5.0 * std::sqrt(1.0 / 12 / n));
  CHECK(std::fabs(s2 / n - 1.0 / 3) < 5.0 * std::sqrt(4.0 / 45 / n));
  // Reconstruct from the documented layout: block 2^63 | i/2, words (2(i%2), 2(i%2)+1), 52 bits.
  for (std::uint64_t i : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{12345}, ~std::uint64_t{0}}) {
    const std::uint64_t block = (std::uint64_t{1} << 63) | (i / 2);
    const uint4x32 c{{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 5, 0}};
    const uint4x32 r = consr::philox4x32_10(c, uint2x32{{77, 0}});
    const unsigned w = static_cast<unsigned>(i % 2) * 2;
    const long double expected =
        (std::ldexp(static_cast<long double>(r.v[w]), 20) + std::floor(r.v[w + 1] / 4096.0L) + 0.5L) /
        4503599627370496.0L;
    CHECK(static_cast<long double>(consr::uniform_at(key, i)) == expected);
  }
}
