// consr/detail/exp.hpp — a branch-free exp for float and double that
// compilers vectorize inside `#pragma omp simd` loops.
//
// Why not std::exp: libm's expf/exp is an opaque call (errno, special cases),
// so a loop around it does not vectorize unless -ffast-math is on, and the
// log-sum-exp of a 152064-wide vocabulary row is exactly such a loop.
//
// Method (Cody & Waite): n = round(x / ln 2), r = x − n·ln 2 with ln 2 split
// into a short high part (n·hi is exact) and a low correction, so |r| ≤ ln2/2;
// exp(r) by a minimax polynomial fitted with c0 = c1 = 1 (Remez, relative
// error 3.1e-9 for float degree 6, 3.6e-18 for double degree 11, both far
// below half an ulp); the result is scaled by 2^n through the exponent bits.
// Rounding to an integer uses the 1.5·2^p "magic number", so no float→int
// conversion is ever evaluated on a NaN or an out-of-range value (that would be
// undefined behaviour). All integer arithmetic is unsigned.
//
// Accuracy, measured against exp in a wider type (an exhaustive sweep of every
// float; 4e7 random doubles against long double):
//   float : error < 1.2 ulp (0.91 ulp with FMA contraction, 1.18 ulp on plain
//           SSE2; max relative error 9.9e-8) for x in [-86.98, 88.72];
//   double: error < 1.3 ulp (0.92 ulp with FMA, 1.20 ulp without; max
//           relative error 1.9e-16) for x in [-708, 709.78].
// Special values: exp(NaN) = NaN, exp(+inf) = +inf, exp(x) = +inf above
// ln(FLT_MAX) / ln(DBL_MAX), exp(-inf) = 0, and exp(x) = 0 below the flush
// threshold (float: x < -86.98, where the true value is < 1.7e-38, i.e. within
// a factor 1.5 of the smallest normal; double: x < -708, true value < 3.3e-308).
// No subnormal is produced for x in range, nor for masked (-inf, -1e4, lowest)
// vocabulary entries, so those cost no microcode assists: that is why the
// flush threshold sits where the scale 2^(n-1) is still a normal number.
//
// The trick is not robust to -ffast-math for double (it may fold
// (t + magic) − magic), like every Cody–Waite implementation; consr's own
// targets do not use it.
#pragma once

#include <cstdint>

#include "../config.hpp"
#include "../numeric.hpp"  // float_bits, bits_float, double_bits, bits_double

namespace consr {
namespace detail {

// Constants of the float exp shared by vector_exp and vector_exp_nonpositive.
inline constexpr float exp_float_log2e = 0x1.715476p+0f;
inline constexpr float exp_float_round_magic = 0x1.8p23f;  // adding it rounds |v| < 2^22 to an integer
inline constexpr std::uint32_t exp_float_round_magic_bits = 0x4b400000u;
inline constexpr float exp_float_flush = -86.98f;  // below it n < -125 would need a subnormal scale

/// 2·exp(r) for r = x − n·ln 2, n the integer nearest x / ln 2 (as a float): the Cody–Waite
/// reduction (n·ln2_hi is exact) and the polynomial of the float exp, the part vector_exp and
/// vector_exp_nonpositive share.
// The Cody–Waite split of ln 2 and the polynomial of exp_float_reduced (also used by the AVX-512
// exp-sum of the log-probs forward, detail::logprob_exp2x).
inline constexpr float exp_float_ln2_hi = 0x1.63p-1f;        // 355/512: n * ln2_hi is exact for |n| < 2^15
inline constexpr float exp_float_ln2_lo = -0x1.bd0106p-13f;  // ln 2 - ln2_hi
// Polynomial coefficients of exp(r) on [-ln2/2, ln2/2], doubled (exactly) because the result is
// scaled by 2^(n-1): that keeps n = 128 (x near ln FLT_MAX) representable without a second scale.
// (Scalars, not an array: device code reads namespace-scope constexpr scalars, not arrays.)
inline constexpr float exp_float_c6 = 2 * 0x1.6a244ep-10f;
inline constexpr float exp_float_c5 = 2 * 0x1.1239d4p-7f;
inline constexpr float exp_float_c4 = 2 * 0x1.5558f2p-5f;
inline constexpr float exp_float_c3 = 2 * 0x1.555492p-3f;
inline constexpr float exp_float_c2 = 2 * 0x1.fffffcp-2f;
inline constexpr float exp_float_c1 = 2.0f;
inline constexpr float exp_float_c0 = 2.0f;

/// Horner's rule c0 + r·(c1 + r·(c2 + … + r·cn)): q = cn, then q = q·r + ck for k = n−1 … 0, in
/// this order wherever it is inlined (so the float and double exps round as written out).
template <class T>
CONSR_HOST_DEVICE CONSR_FORCEINLINE T horner(T, T cn) noexcept {
  return cn;
}
template <class T, class... C>
CONSR_HOST_DEVICE CONSR_FORCEINLINE T horner(T r, T c0, T c1, C... rest) noexcept {
  return horner<T>(r, c1, rest...) * r + c0;
}

CONSR_HOST_DEVICE CONSR_FORCEINLINE float exp_float_reduced(float x, float n) noexcept {
  float r = x - n * exp_float_ln2_hi;
  r = r - n * exp_float_ln2_lo;
  return horner(r, exp_float_c0, exp_float_c1, exp_float_c2, exp_float_c3, exp_float_c4, exp_float_c5, exp_float_c6);
}

/// exp(x) for float, branch-free and vectorizable (see the file comment for
/// its accuracy and special values).
CONSR_HOST_DEVICE CONSR_FORCEINLINE float vector_exp(float x) noexcept {
  constexpr float x_max = 88.7229f;  // just above ln(FLT_MAX); up to it n <= 128

  // No `?:` anywhere: GCC turns a select on x into a branch, threads or sinks the whole
  // computation into one arm, and then refuses to if-convert it back (floating-point
  // operations "could trap" under the default -ftrapping-math), so the loop would not
  // vectorize. Instead every lane computes the formula (garbage for out-of-range x, never
  // a subnormal) and integer masks made from comparison results replace those lanes.
  const float t = x * exp_float_log2e + exp_float_round_magic;
  const std::uint32_t n_bits = float_bits(t) - exp_float_round_magic_bits;  // n modulo 2^32
  const float n = static_cast<float>(static_cast<std::int32_t>(n_bits));
  const float q = exp_float_reduced(x, n);
  // 2^(n-1): a normal number for n in [-125, 128]; otherwise its exponent field wraps, which
  // never yields a subnormal (the mantissa bits are zero), and the lane is replaced below.
  const float scale = bits_float((n_bits + 126u) << 23);
  // All ones unless flushed; NaN kept.
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(!(x < exp_float_flush));
  const std::uint32_t overflow = 0u - static_cast<std::uint32_t>(x > x_max);
  const std::uint32_t result = (float_bits(q * scale) & keep & ~overflow) | (0x7f800000u & overflow);  // +inf
  return bits_float(result);  // NaN x: q is NaN, and NaN * scale is NaN
}

/// exp(x) for x ≤ 0 (or NaN): the arithmetic of vector_exp(float) without its overflow handling,
/// so bitwise equal to vector_exp(x) there, two to three vector instructions cheaper (the
/// log-sum-exp of a vocabulary row evaluates it 152064 times per row, on x = z − max ≤ 0).
/// x = -inf and x < -86.98 give 0, NaN gives NaN. Precondition: x ≤ 88.72 or NaN; larger x give
/// meaningless finite values instead of +inf.
CONSR_HOST_DEVICE CONSR_FORCEINLINE float vector_exp_nonpositive(float x) noexcept {
  const float t = x * exp_float_log2e + exp_float_round_magic;
  // n exactly (|n| < 2^22): one subtraction instead of an int -> float conversion.
  const float n = t - exp_float_round_magic;
  const float q = exp_float_reduced(x, n);
  // 2^(n-1) from the bits of t: (bits(t) − magic_bits + 126) << 23, the two constants folded into one.
  const float scale = bits_float((float_bits(t) + (126u - exp_float_round_magic_bits)) << 23);
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(!(x < exp_float_flush));  // NaN kept
  return bits_float(float_bits(q * scale) & keep);
}

/// exp(x) for double, branch-free and vectorizable (see the file comment).
CONSR_HOST_DEVICE CONSR_FORCEINLINE double vector_exp(double x) noexcept {
  constexpr double log2e = 0x1.71547652b82fep+0;
  constexpr double ln2_hi = 0x1.62e42feep-1;       // 32 significant bits: n * ln2_hi is exact
  constexpr double ln2_lo = 0x1.a39ef35793c76p-33;  // ln 2 - ln2_hi
  constexpr double round_magic = 0x1.8p52;
  constexpr std::uint64_t round_magic_bits = 0x4338000000000000ull;
  constexpr double x_max = 709.79;    // just above ln(DBL_MAX); up to it n <= 1024
  constexpr double x_flush = -708.0;  // below it n < -1021 would need a subnormal scale
  constexpr double c11 = 2 * 0x1.ad7f756a42371p-26;
  constexpr double c10 = 2 * 0x1.28ad6896bc4f1p-22;
  constexpr double c9 = 2 * 0x1.71df253d542b7p-19;
  constexpr double c8 = 2 * 0x1.a0199a16ef885p-16;
  constexpr double c7 = 2 * 0x1.a01a012a687b7p-13;
  constexpr double c6 = 2 * 0x1.6c16c1842667bp-10;
  constexpr double c5 = 2 * 0x1.1111111127b9ep-7;
  constexpr double c4 = 2 * 0x1.555555555088cp-5;
  constexpr double c3 = 2 * 0x1.55555555554fap-3;
  constexpr double c2 = 2 * 0x1.000000000000ap-1;
  constexpr double c1 = 2.0;
  constexpr double c0 = 2.0;

  const double t = x * log2e + round_magic;  // no clamp and no ?: (see the float version)
  const std::uint64_t n_bits = double_bits(t) - round_magic_bits;
  // No packed int64 -> double conversion before AVX-512DQ, so n comes from the float subtraction.
  const double n = t - round_magic;
  double r = x - n * ln2_hi;
  r = r - n * ln2_lo;
  const double q = horner(r, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11);
  const double scale = bits_double((n_bits + 1022u) << 52);  // 2^(n-1)
  const std::uint64_t keep = 0u - static_cast<std::uint64_t>(!(x < x_flush));
  const std::uint64_t overflow = 0u - static_cast<std::uint64_t>(x > x_max);
  const std::uint64_t result = (double_bits(q * scale) & keep & ~overflow) | (0x7ff0000000000000ull & overflow);
  return bits_double(result);
}

}  // namespace detail
}  // namespace consr
