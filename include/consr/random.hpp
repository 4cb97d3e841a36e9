// consr/random.hpp — counter-based random numbers shared by the host and the
// CUDA code (spec §3 "Randomness").
//
// Every random value consr draws is a pure function of (seed, offset, index):
// Philox4x32-10 (Salmon et al., SC'11; the generator of cuRAND and of
// PyTorch's CUDA generator) maps a 128-bit counter and a 64-bit key to 128
// random bits, so any element can be computed on its own, by any thread, in
// any order. That is what makes noise reproducible whatever the thread count,
// the chunking of a tensor or the device.
//
// Normals come from Box–Muller evaluated in double precision with the
// polynomial log, square root and sincos below (not libm: libm differs between
// host and device and does not vectorize), accurate to 8e-11 relative, then
// rounded to float. The CUDA twin runs this same code, so host and device
// normals agree to within one float ulp (the only freedom left is the
// compilers' FMA contraction of the double arithmetic, which moves the double
// result by a few 1e-16 at most). log_portable, sqrt_portable and
// sincos_2pi_u32 are full-double-precision versions (tested to ~3e-16), kept
// for callers that need that; box_muller uses the shorter series of
// box_muller_log / _sqrt / _sincos, sized to the float result.
//
// Everything in this header is CONSR_HOST_DEVICE and free of exceptions,
// std::array and libm calls.
//
// Counter layout (documented because results depend on it):
//   key     = { lo32(seed), hi32(seed) }
//   counter = { lo32(block), hi32(block), lo32(offset), hi32(offset) }
// Normal i uses block i / 4, lane i % 4; since i < 2^64, the block index is
// below 2^62. The uniform stream (patch masks, crop boxes) uses blocks with
// bit 63 set, so it can never repeat a normal block of the same (seed, offset).
#pragma once

#include <cstdint>

#include "config.hpp"
#include "numeric.hpp"  // detail::double_bits / bits_double

namespace consr {

/// 128 random bits: the counter and the output of Philox4x32.
struct uint4x32 {
  std::uint32_t v[4];
};

/// The 64-bit Philox4x32 key.
struct uint2x32 {
  std::uint32_t v[2];
};

namespace detail {

// Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, Table 2).
inline constexpr std::uint32_t philox_m0 = 0xD2511F53u;
inline constexpr std::uint32_t philox_m1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox_w0 = 0x9E3779B9u;
inline constexpr std::uint32_t philox_w1 = 0xBB67AE85u;

CONSR_HOST_DEVICE CONSR_FORCEINLINE uint4x32 philox_round(uint4x32 c, uint2x32 k) noexcept {
  // 32x32 -> 64-bit products; the compiler turns these into mul.hi/mul.lo on
  // the GPU and into widening vector multiplies (vpmuludq) on the host.
  const std::uint64_t p0 = static_cast<std::uint64_t>(philox_m0) * c.v[0];
  const std::uint64_t p1 = static_cast<std::uint64_t>(philox_m1) * c.v[2];
  uint4x32 r;
  r.v[0] = static_cast<std::uint32_t>(p1 >> 32) ^ c.v[1] ^ k.v[0];
  r.v[1] = static_cast<std::uint32_t>(p1);
  r.v[2] = static_cast<std::uint32_t>(p0 >> 32) ^ c.v[3] ^ k.v[1];
  r.v[3] = static_cast<std::uint32_t>(p0);
  return r;
}

/// The key of round r + 1: r Weyl increments (mod 2^32).
CONSR_HOST_DEVICE CONSR_FORCEINLINE uint2x32 philox_bump(uint2x32 k, std::uint32_t r) noexcept {
  k.v[0] += r * philox_w0;
  k.v[1] += r * philox_w1;
  return k;
}

}  // namespace detail

/// Philox4x32-10: ten rounds of the Philox bijection of `counter` under `key`
/// (Random123's philox4x32_10; checked against its known-answer vectors).
CONSR_HOST_DEVICE CONSR_FORCEINLINE uint4x32 philox4x32_10(uint4x32 counter, uint2x32 key) noexcept {
  // Unrolled by hand: a loop here keeps GCC from vectorizing the callers' loops.
  counter = detail::philox_round(counter, key);
  counter = detail::philox_round(counter, detail::philox_bump(key, 1));
  counter = detail::philox_round(counter, detail::philox_bump(key, 2));
  counter = detail::philox_round(counter, detail::philox_bump(key, 3));
  counter = detail::philox_round(counter, detail::philox_bump(key, 4));
  counter = detail::philox_round(counter, detail::philox_bump(key, 5));
  counter = detail::philox_round(counter, detail::philox_bump(key, 6));
  counter = detail::philox_round(counter, detail::philox_bump(key, 7));
  counter = detail::philox_round(counter, detail::philox_bump(key, 8));
  counter = detail::philox_round(counter, detail::philox_bump(key, 9));
  return counter;
}

/// Where a random stream starts: `seed` selects the Philox key, `offset` a
/// disjoint 2^64-block slice of the counter space (e.g. one per sample or per
/// call), so (seed, offset) pairs that differ give independent streams.
struct rng_key {
  std::uint64_t seed;
  std::uint64_t offset = 0;
};

/// One digit of a mixed-radix stream index (see derive_key): `index` ∈ [0, `radix`).
struct key_digit {
  std::uint64_t index;
  std::uint64_t radix;
};

/// Derives a 64-bit stream key — an rng_key offset, a sampling key, a
/// counter-based stream — from a base key and a mixed-radix index, as a pure
/// function (mod 2^64):
///
///   derive_key(base, i)                      = base + i
///   derive_key(base, i, {j, n})              = base + i·n + j
///   derive_key(base, i, {j, n}, {k, m})      = base + (i·n + j)·m + k
///   derive_key(base, i, {j, n}, {k, m}, {l, p}) = base + ((i·n + j)·m + k)·p + l
///
/// `base` separates domains (0, or a tag such as an ASCII word), `i` is the
/// outer index (an item, an epoch), and each digit splits the stream of the
/// indices before it into `radix` sub-streams (a use, a kind, a sample).
/// Distinct index tuples give distinct keys when every digit's index is below
/// its radix and the result stays below 2^64 − base; nothing is checked (the
/// function is constexpr, host/device and noexcept). Examples (ConSR pipeline,
/// docs/pipeline.md): the noise offset of item i and use u ∈ {0, 1} is
/// derive_key(0, i, {u, 2}) = 2i + u; the sampling key of sample k of kind c ∈
/// [0, 4) of item i is derive_key(0, i, {c, 4}, {k, 2^24}) = ((4i + c) << 24) | k.
CONSR_HOST_DEVICE constexpr std::uint64_t derive_key(std::uint64_t base, std::uint64_t i) noexcept { return base + i; }
CONSR_HOST_DEVICE constexpr std::uint64_t derive_key(std::uint64_t base, std::uint64_t i, key_digit d1) noexcept {
  return base + (i * d1.radix + d1.index);
}
CONSR_HOST_DEVICE constexpr std::uint64_t derive_key(std::uint64_t base, std::uint64_t i, key_digit d1,
                                                     key_digit d2) noexcept {
  return base + ((i * d1.radix + d1.index) * d2.radix + d2.index);
}
CONSR_HOST_DEVICE constexpr std::uint64_t derive_key(std::uint64_t base, std::uint64_t i, key_digit d1, key_digit d2,
                                                     key_digit d3) noexcept {
  return base + (((i * d1.radix + d1.index) * d2.radix + d2.index) * d3.radix + d3.index);
}

namespace detail {

/// The Philox output for `block` of the stream of `key`.
CONSR_HOST_DEVICE CONSR_FORCEINLINE uint4x32 philox_block(rng_key key, std::uint64_t block) noexcept {
  uint4x32 c;
  c.v[0] = static_cast<std::uint32_t>(block);
  c.v[1] = static_cast<std::uint32_t>(block >> 32);
  c.v[2] = static_cast<std::uint32_t>(key.offset);
  c.v[3] = static_cast<std::uint32_t>(key.offset >> 32);
  uint2x32 k;
  k.v[0] = static_cast<std::uint32_t>(key.seed);
  k.v[1] = static_cast<std::uint32_t>(key.seed >> 32);
  return philox4x32_10(c, k);
}

/// Natural logarithm of a positive, finite, *normal* double, branch-free so
/// that loops over it vectorize and host and device run the same arithmetic.
///
/// x = 2^e · m with m in [√½, √2); with f = m − 1 (exact) and s = f / (2 + f),
/// log m = 2 atanh s = f − (f²/2 − s (f²/2 + R)), R = Σ_{k=1..10} 2 s^{2k}/(2k+1)
/// (|s| ≤ 0.1716, so the first omitted term is below 1e-18 relative), and
/// e·ln 2 is added in two parts (ln2_hi has 32 significant bits, so e·ln2_hi is
/// exact). Measured against long-double libm over [2^-40, 2^10] and around 1:
/// relative error ≤ 1.5e-16 (tests/host/test_random.cpp asserts < 3e-16). Zero, negative,
/// subnormal, infinite and NaN inputs give meaningless results: callers never
/// pass them (Box–Muller uniforms lie in [2^-33, 1)).
CONSR_HOST_DEVICE CONSR_FORCEINLINE double log_portable(double x) noexcept {
  constexpr double ln2_hi = 0x1.62e42feep-1;             // ln 2 truncated to 32 bits
  constexpr double ln2_lo = 0x1.a39ef35793c76p-33;       // ln 2 − ln2_hi
  constexpr double sqrt2 = 1.4142135623730950488;
  const std::uint64_t bits = double_bits(x);
  // Selections are integer arithmetic, not `?:`: GCC cannot always if-convert
  // those, and a branch left in the loop stops its vectorization.
  const std::uint64_t mant_bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // m in [1, 2)
  const std::uint64_t upper = static_cast<std::uint64_t>(bits_double(mant_bits) > sqrt2);
  const double m = bits_double(mant_bits - (upper << 52));  // halved when above √2: m in [√½, √2]
  const std::uint64_t biased_exp = ((bits >> 52) & 0x7ffu) + upper;
  // int -> double without a 64-bit integer conversion (which AVX2 lacks):
  // the bits of 2^52 + biased_exp, minus 2^52 + 1023, is the exponent exactly.
  const double e = bits_double(0x4330000000000000ull | biased_exp) - 4503599627371519.0;
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double r =
      z * (2.0 / 3 + z * (2.0 / 5 + z * (2.0 / 7 + z * (2.0 / 9 + z * (2.0 / 11 + z * (2.0 / 13 + z * (2.0 / 15 +
      z * (2.0 / 17 + z * (2.0 / 19 + z * (2.0 / 21))))))))));
  const double hfsq = 0.5 * f * f;
  return e * ln2_hi + (f - (hfsq - (s * (hfsq + r) + e * ln2_lo)));
}

/// sin and cos of 2π·(x + 0.5)·2^-32 for a 32-bit integer x, branch-free.
///
/// The argument reduction is exact integer arithmetic: with the quadrant
/// q = round(4u) taken modulo 4, d = x − q·2^30 (as int32) and
/// θ = 2π (d + 0.5) 2^-32 ∈ [−π/4, π/4], the only rounding before the
/// polynomials is the one product forming θ (≤ 1.2e-16 relative). Taylor
/// series to θ^17 (sin) and θ^16 (cos) leave truncation below 1e-18.
/// Measured against long-double libm (2·10^7 random words and every quadrant
/// boundary): absolute error ≤ 1.95e-16, relative error ≤ 2.75e-16, also near
/// the zeros of sin and cos (tests assert < 3e-16 absolute, < 4e-16 relative).
CONSR_HOST_DEVICE CONSR_FORCEINLINE void sincos_2pi_u32(std::uint32_t x, double& sin_out, double& cos_out) noexcept {
  constexpr double two_pi_scaled = 6.283185307179586476925286766559 / 4294967296.0;  // 2π · 2^-32, exact scaling
  const std::uint32_t q = (x + 0x20000000u) >> 30;  // round(4u) mod 4 (the wrap of x + 2^29 is the "mod 4")
  const std::int32_t d = static_cast<std::int32_t>(x - (q << 30));  // in [−2^29, 2^29)
  const double t = (static_cast<double>(d) + 0.5) * two_pi_scaled;
  const double t2 = t * t;
  const double sin_t =
      t + t * t2 * (-1.0 / 6 + t2 * (1.0 / 120 + t2 * (-1.0 / 5040 + t2 * (1.0 / 362880 +
      t2 * (-1.0 / 39916800 + t2 * (1.0 / 6227020800.0 + t2 * (-1.0 / 1307674368000.0 +
      t2 * (1.0 / 355687428096000.0))))))));
  const double cos_t =
      1.0 - 0.5 * t2 + t2 * t2 * (1.0 / 24 + t2 * (-1.0 / 720 + t2 * (1.0 / 40320 + t2 * (-1.0 / 3628800 +
      t2 * (1.0 / 479001600.0 + t2 * (-1.0 / 87178291200.0 + t2 * (1.0 / 20922789888000.0)))))));
  // Quadrant q adds q·π/2: (sin, cos) -> (cos, −sin) -> (−sin, −cos) -> (−cos, sin).
  // Swap and sign flips on the bits, without `?:` (see log_portable).
  const std::uint64_t swap = std::uint64_t{0} - static_cast<std::uint64_t>(q & 1u);  // all ones for odd q
  const std::uint64_t sin_bits = double_bits(sin_t), cos_bits = double_bits(cos_t);
  const std::uint64_t s = (sin_bits & ~swap) | (cos_bits & swap);
  const std::uint64_t c = (cos_bits & ~swap) | (sin_bits & swap);
  const std::uint64_t negate_sin = static_cast<std::uint64_t>((q >> 1) & 1u) << 63;        // q = 2, 3
  const std::uint64_t negate_cos = static_cast<std::uint64_t>(((q + 1u) >> 1) & 1u) << 63;  // q = 1, 2
  sin_out = bits_double(s ^ negate_sin);
  cos_out = bits_double(c ^ negate_cos);
}

/// Square root of a positive, finite, normal double, branch-free: std::sqrt
/// would be correctly rounded but, under the default -fmath-errno, GCC guards
/// it with a branch to set errno, which stops the vectorization of the whole
/// Box–Muller loop. Four Newton steps y ← y (3/2 − x y²/2) for 1/√x from a
/// bit-level first guess (relative error ≤ 3.5e-2; the exponent-halving
/// constant 0x5fe6ec…, found by a scan of the first 12 mantissa bits, is the
/// classic "fast inverse square root" value) converge to rounding level;
/// √x = x · y. Measured relative error ≤ 3.5e-16 (asserted < 5e-16).
/// sqrt_newton<Steps> is that with 3 or 4 Newton steps, written out (no loop, so that nothing depends
/// on the compiler unrolling one inside the vectorized Box–Muller loop).
template <int Steps>
CONSR_HOST_DEVICE CONSR_FORCEINLINE double sqrt_newton(double x) noexcept {
  static_assert(Steps == 3 || Steps == 4, "sqrt_newton: 3 or 4 Newton steps");
  const double half_x = 0.5 * x;
  double y = bits_double(0x5fe6ec0000000000ull - (double_bits(x) >> 1));
  y = y * (1.5 - half_x * y * y);
  y = y * (1.5 - half_x * y * y);
  y = y * (1.5 - half_x * y * y);
  if constexpr (Steps == 4) y = y * (1.5 - half_x * y * y);
  return x * y;
}
CONSR_HOST_DEVICE CONSR_FORCEINLINE double sqrt_portable(double x) noexcept { return sqrt_newton<4>(x); }

// The three functions below are what box_muller evaluates: log, square root and sincos with
// series sized to the accuracy a *float* normal needs rather than to full double precision (their
// full-precision versions above cost a third more instructions). Together they keep the double
// value of a normal within 8e-11 relative of the exact Box–Muller value (bounds below), far inside
// the 6e-8 of the final rounding to float.

/// log(u) for the Box–Muller uniforms u ∈ [2^-33, 1), relative error ≤ 5.2e-11.
///
/// u = 2^e · m with m in [√½, √2) (as log_portable); s = (m − 1)/(m + 1), z = s², and
/// log m = 2 atanh s = s · (2 + R), R = Σ_{k=1..5} 2 z^k/(2k+1): the omitted terms are below
/// z^6/13 / (1 − z) ≤ 5.2e-11 of 2 (z ≤ (3 − 2√2)² = 0.0294), which bounds the relative error of
/// log m; e · ln 2 is added in one multiply-add (≤ 33 · 2^-55 absolute, below 3e-15 relative
/// since |log u| ≥ ln √2 when e ≠ 0). Measured against long-double log on every 977th 32-bit
/// uniform and around m = √½, √2 and u = 1: 5.09e-11. Same preconditions as log_portable.
CONSR_HOST_DEVICE CONSR_FORCEINLINE double box_muller_log(double x) noexcept {
  constexpr double ln2 = 0.69314718055994530942;
  constexpr double sqrt2 = 1.4142135623730950488;
  const std::uint64_t bits = double_bits(x);
  const std::uint64_t mant_bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // m in [1, 2)
  const std::uint64_t upper = static_cast<std::uint64_t>(bits_double(mant_bits) > sqrt2);
  const double m = bits_double(mant_bits - (upper << 52));  // halved when above √2
  const std::uint64_t biased_exp = (bits >> 52) + upper;    // x > 0: no sign bit
  const double e = bits_double(0x4330000000000000ull | biased_exp) - 4503599627371519.0;  // see log_portable
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double r = z * (2.0 / 3 + z * (2.0 / 5 + z * (2.0 / 7 + z * (2.0 / 9 + z * (2.0 / 11)))));
  return e * ln2 + (s + s + s * r);
}

/// √x for the Box–Muller radius (x = −2 log u ∈ (0, 46]; any positive, finite, normal x),
/// relative error ≤ 4.1e-11: sqrt_portable with three Newton steps instead of four. From the
/// bit-level guess (≤ 3.5e-2) each step maps the error e of 1/√x to 1.5e² + 0.5e³:
/// 3.5e-2 → 1.9e-3 → 5.2e-6 → 4.1e-11. Measured on 2·10^6 random x in [2^-40, 2^40]: 3.3e-11.
CONSR_HOST_DEVICE CONSR_FORCEINLINE double box_muller_sqrt(double x) noexcept { return sqrt_newton<3>(x); }

/// sin and cos of 2π·(x + 0.5)·2^-32, like sincos_2pi_u32 (the same exact integer argument
/// reduction to θ ∈ [−π/4, π/4] and quadrant swap), relative error ≤ 1e-11: Taylor series to
/// θ^11 (sin) and θ^12 (cos) leave truncation errors below (π/4)^12/13! / (2√2/π) = 9.9e-12
/// (sin) and (π/4)^14/14! / cos(π/4) = 5.6e-13 (cos); measured against long double on every
/// 1009th word and around every quadrant boundary: 9.8e-12 for both outputs (the swap makes each
/// output a sin somewhere).
CONSR_HOST_DEVICE CONSR_FORCEINLINE void box_muller_sincos(std::uint32_t x, double& sin_out, double& cos_out) noexcept {
  constexpr double two_pi_scaled = 6.283185307179586476925286766559 / 4294967296.0;  // 2π · 2^-32
  const std::uint32_t q = (x + 0x20000000u) >> 30;
  const std::int32_t d = static_cast<std::int32_t>(x - (q << 30));
  const double t = (static_cast<double>(d) + 0.5) * two_pi_scaled;  // one rounding: d + 0.5 is exact
  const double t2 = t * t;
  const double sin_t = t + (t * t2) * (-1.0 / 6 + t2 * (1.0 / 120 + t2 * (-1.0 / 5040 + t2 * (1.0 / 362880 +
                       t2 * (-1.0 / 39916800)))));
  const double cos_t = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24 + t2 * (-1.0 / 720 + t2 * (1.0 / 40320 +
                       t2 * (-1.0 / 3628800 + t2 * (1.0 / 479001600.0))))));
  // Quadrant q adds q·π/2, as in sincos_2pi_u32.
  const std::uint64_t swap = std::uint64_t{0} - static_cast<std::uint64_t>(q & 1u);
  const std::uint64_t sin_bits = double_bits(sin_t), cos_bits = double_bits(cos_t);
  const std::uint64_t s = (sin_bits & ~swap) | (cos_bits & swap);
  const std::uint64_t c = (cos_bits & ~swap) | (sin_bits & swap);
  const std::uint64_t negate_sin = static_cast<std::uint64_t>((q >> 1) & 1u) << 63;
  const std::uint64_t negate_cos = static_cast<std::uint64_t>(((q + 1u) >> 1) & 1u) << 63;
  sin_out = bits_double(s ^ negate_sin);
  cos_out = bits_double(c ^ negate_cos);
}

/// Box–Muller: two standard normals from two 32-bit words, u = (w + 0.5)·2^-32
/// in (0, 1) (never 0, so the log is finite; |z| ≤ 6.8).
///
/// Accuracy: box_muller_log (5.2e-11, halved by the square root), box_muller_sqrt (4.1e-11) and
/// box_muller_sincos (1e-11) put the double value within 8e-11 relative of the exact Box–Muller
/// value, so the float is that value rounded to nearest except within 8e-11 of a rounding
/// midpoint, where it may be the other neighbour (measured: 1.2e-4 of all normals):
/// |error| ≤ (2^-24 + 8e-11)·|z| < 5.97e-8·|z| always. Host and device run this same code, so
/// they differ at most where FMA contraction moves the double result (by a few 1e-16) across a
/// rounding midpoint: by one float ulp, rarely.
CONSR_HOST_DEVICE CONSR_FORCEINLINE void box_muller(std::uint32_t w_radius, std::uint32_t w_angle, float& z_cos,
                                                    float& z_sin) noexcept {
  // (w + 0.5)·2^-32 exactly, through a signed 32-bit conversion (vectorizes on AVX2): the product
  // is exact and so is the sum (33 significant bits), with or without FMA contraction.
  const double u = static_cast<double>(static_cast<std::int32_t>(w_radius ^ 0x80000000u)) * (1.0 / 4294967296.0) +
                   2147483648.5 / 4294967296.0;
  const double radius = box_muller_sqrt(-2.0 * box_muller_log(u));
  double s, c;
  box_muller_sincos(w_angle, s, c);
  z_cos = static_cast<float>(radius * c);
  z_sin = static_cast<float>(radius * s);
}

}  // namespace detail

/// Four standard normals.
struct normal4 {
  float v[4];
};

/// The standard normals of elements 4·block .. 4·block + 3 of the stream of
/// `key`, from one Philox call: words (0, 1) and (2, 3) each give a
/// Box–Muller pair (cos, sin). Precondition: block < 2^62.
CONSR_HOST_DEVICE CONSR_FORCEINLINE normal4 normal_block(rng_key key, std::uint64_t block) noexcept {
  const uint4x32 r = detail::philox_block(key, block);
  normal4 z;
  detail::box_muller(r.v[0], r.v[1], z.v[0], z.v[1]);
  detail::box_muller(r.v[2], r.v[3], z.v[2], z.v[3]);
  return z;
}

/// The standard normal ε_i of element i of the stream of `key` (spec §3): a
/// pure function of (seed, offset, i), equal to normal_block(key, i / 4).v[i % 4].
CONSR_HOST_DEVICE CONSR_FORCEINLINE float normal_at(rng_key key, std::uint64_t i) noexcept {
  return normal_block(key, i / 4).v[i % 4];
}

namespace detail {
/// Bit 63 of the block index marks the uniform stream (normal blocks are < 2^62).
inline constexpr std::uint64_t uniform_stream_bit = 0x8000000000000000ull;
}  // namespace detail

/// The i-th draw of the *uniform* stream of `key`: a double in (0, 1) with 52
/// random bits, u = (k + 0.5)·2^-52 (exact: k + 0.5 fits in 53 bits, so u is
/// never 0 or 1). Two draws per Philox block; the blocks have
/// bit 63 set and so never coincide with the normals of the same key. Used
/// for the scalar decisions of the other corruptions (patch masks, crop boxes).
CONSR_HOST_DEVICE CONSR_FORCEINLINE double uniform_at(rng_key key, std::uint64_t i) noexcept {
  const uint4x32 r = detail::philox_block(key, detail::uniform_stream_bit | (i / 2));
  const unsigned lane = static_cast<unsigned>(i % 2) * 2u;
  const std::uint64_t bits52 = (static_cast<std::uint64_t>(r.v[lane]) << 20) | (r.v[lane + 1] >> 12);
  return (static_cast<double>(bits52) + 0.5) * (1.0 / 4503599627370496.0);  // 2^-52
}

}  // namespace consr
