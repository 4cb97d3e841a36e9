// consr/numeric.hpp — the host storage types for bf16 and fp16 and the
// accumulation-type rule of spec §2 (fp32 for fp32/bf16/fp16, fp64 for fp64).
//
// consr::bfloat16 and consr::float16 are 2-byte storage types with the same
// bit layout as __nv_bfloat16 / __half, torch::kBFloat16 / kHalf and
// Eigen::bfloat16 / Eigen::half, so buffers of any of them can be viewed as
// consr types without a copy. Conversions are branch-free so loops over them
// vectorize; float -> 16-bit rounds to nearest even.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "config.hpp"

namespace consr {

namespace detail {
/// std::bit_cast (C++20) for trivially copyable types of one size, on host and device.
template <class To, class From>
CONSR_HOST_DEVICE CONSR_FORCEINLINE To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "consr::detail::bit_cast: the types must have the same size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}
CONSR_HOST_DEVICE CONSR_FORCEINLINE std::uint32_t float_bits(float f) noexcept { return bit_cast<std::uint32_t>(f); }
CONSR_HOST_DEVICE CONSR_FORCEINLINE float bits_float(std::uint32_t u) noexcept { return bit_cast<float>(u); }
CONSR_HOST_DEVICE CONSR_FORCEINLINE std::uint64_t double_bits(double d) noexcept { return bit_cast<std::uint64_t>(d); }
CONSR_HOST_DEVICE CONSR_FORCEINLINE double bits_double(std::uint64_t u) noexcept { return bit_cast<double>(u); }

/// a·b rounded once to double — the IEEE product, sign of zero included — on
/// host and device, and never fused with a neighbouring addition. FMA
/// contraction (GCC's default -ffp-contract=fast with -mfma or -march=native,
/// nvcc's --fmad=true) may turn `a·b − c·d` into fma(a, b, −c·d), which is not
/// antisymmetric under swapping the two products and differs between a host
/// and a device build. Formulas whose results host and device must share, or
/// whose symmetry is asserted (dpo.hpp, reward.hpp), form their products with
/// this. On the host an fma with a +0 addend is the exactly rounded product
/// that a compiler cannot fuse further; only an exactly zero product needs its
/// sign restored (x + 0 is +0 for x = −0).
CONSR_HOST_DEVICE inline double mul_rn(double a, double b) noexcept {
#if CONSR_DEVICE_COMPILE
  return __dmul_rn(a, b);
#else
  const double p = std::fma(a, b, 0.0);
  if (p != 0.0) return p;  // NaN included
  return std::signbit(a) != std::signbit(b) ? -0.0 : 0.0;
#endif
}

/// The quiet NaN of std::numeric_limits<double>, on host and device (under
/// nvcc, numeric_limits' constexpr members are host functions).
CONSR_HOST_DEVICE inline double quiet_nan_double() noexcept {
#if CONSR_DEVICE_COMPILE
  return __longlong_as_double(0x7ff8000000000000ll);
#else
  return std::numeric_limits<double>::quiet_NaN();
#endif
}
}  // namespace detail

/// What the two 16-bit storage types share: the bits, the conversion to float
/// and from_bits; Self supplies to_float / from_float for its format. (Not in
/// detail: a base class's namespace joins argument-dependent lookup.)
template <class Self>
struct storage16 {
  std::uint16_t bits;

  CONSR_HOST_DEVICE explicit operator float() const noexcept { return Self::to_float(bits); }
  static CONSR_HOST_DEVICE Self from_bits(std::uint16_t b) noexcept {
    Self h;
    h.bits = b;
    return h;
  }
};

/// bfloat16 storage: the upper 16 bits of an IEEE fp32.
struct bfloat16 : storage16<bfloat16> {
  bfloat16() = default;
  CONSR_HOST_DEVICE explicit bfloat16(float f) noexcept : storage16{from_float(f)} {}

  static CONSR_HOST_DEVICE CONSR_FORCEINLINE float to_float(std::uint16_t b) noexcept {
    return detail::bits_float(static_cast<std::uint32_t>(b) << 16);
  }
  /// Round to nearest even; NaN stays a (quiet) NaN.
  static CONSR_HOST_DEVICE CONSR_FORCEINLINE std::uint16_t from_float(float f) noexcept {
    const std::uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    const std::uint32_t bias = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + bias) >> 16);
  }
};

/// IEEE binary16 storage.
struct float16 : storage16<float16> {
  float16() = default;
  CONSR_HOST_DEVICE explicit float16(float f) noexcept : storage16{from_float(f)} {}

  /// Exact for every binary16 value, subnormals, infinities and NaN included.
  static CONSR_HOST_DEVICE CONSR_FORCEINLINE float to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t em = h & 0x7fffu;
    // Shifting exponent+mantissa into place and scaling by 2^112 rebiases the
    // exponent (127 - 15) and turns binary16 subnormals into fp32 normals.
    float mag = detail::bits_float(em << 13) * 5.192296858534828e+33f;  // 2^112
    const std::uint32_t inf_nan = (em << 13) | 0x7f800000u;
    std::uint32_t mag_bits = em >= 0x7c00u ? inf_nan : detail::float_bits(mag);
    return detail::bits_float(mag_bits | sign);
  }
  /// Round to nearest even; overflow gives infinity, NaN stays NaN.
  static CONSR_HOST_DEVICE CONSR_FORCEINLINE std::uint16_t from_float(float value) noexcept {
    std::uint32_t f = detail::float_bits(value);
    const std::uint32_t sign = f & 0x80000000u;
    f ^= sign;
    std::uint32_t o;
    if (f >= 0x47800000u) {  // >= 65536, inf or NaN
      o = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (f < 0x38800000u) {  // below the smallest normal 2^-14: subnormal or zero
      // Adding 0.5 aligns the mantissa so the FPU's own rounding is RNE.
      const float t = detail::bits_float(f) + 0.5f;
      o = detail::float_bits(t) - 0x3f000000u;
    } else {
      const std::uint32_t mant_odd = (f >> 13) & 1u;
      f += 0xc8000fffu;  // rebias exponent (15 - 127) << 23, plus rounding 0xfff
      f += mant_odd;
      o = f >> 13;
    }
    return static_cast<std::uint16_t>(o | (sign >> 16));
  }
};

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>, "bfloat16 must be 2 trivial bytes");
static_assert(sizeof(float16) == 2 && std::is_trivially_copyable_v<float16>, "float16 must be 2 trivial bytes");

/// Converts any supported element type to its accumulation type.
template <class Acc, class T>
CONSR_HOST_DEVICE CONSR_FORCEINLINE Acc to_accum(T x) noexcept {
  if constexpr (std::is_same_v<T, bfloat16>) {
    return static_cast<Acc>(bfloat16::to_float(x.bits));
  } else if constexpr (std::is_same_v<T, float16>) {
    return static_cast<Acc>(float16::to_float(x.bits));
  } else {
    return static_cast<Acc>(x);
  }
}

/// Converts an accumulator value back to storage type T.
template <class T, class Acc>
CONSR_HOST_DEVICE CONSR_FORCEINLINE T from_accum(Acc x) noexcept {
  if constexpr (std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>) {
    return T(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

/// True for the floating-point element types consr algorithms accept.
template <class T>
inline constexpr bool is_supported_float_v =
    std::is_same_v<std::remove_cv_t<T>, float> || std::is_same_v<std::remove_cv_t<T>, double> ||
    std::is_same_v<std::remove_cv_t<T>, bfloat16> || std::is_same_v<std::remove_cv_t<T>, float16>;

/// Accumulation (and output) type for element type T: double for double,
/// float for float, bfloat16 and float16 (spec §2).
template <class T>
struct accum_type {
  static_assert(is_supported_float_v<T>,
                "consr: element type must be float, double, consr::bfloat16 or consr::float16");
  using type = std::conditional_t<std::is_same_v<std::remove_cv_t<T>, double>, double, float>;
};
template <class T>
using accum_t = typename accum_type<T>::type;

/// Human-readable dtype name, for error messages.
template <class T>
constexpr const char* dtype_name() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return "float32";
  else if constexpr (std::is_same_v<U, double>) return "float64";
  else if constexpr (std::is_same_v<U, bfloat16>) return "bfloat16";
  else if constexpr (std::is_same_v<U, float16>) return "float16";
  else if constexpr (std::is_same_v<U, std::int32_t>) return "int32";
  else if constexpr (std::is_same_v<U, std::int64_t>) return "int64";
  else return "unknown";
}

/// Label and offset integer types accepted by consr algorithms.
template <class I>
inline constexpr bool is_index_type_v =
    std::is_same_v<std::remove_cv_t<I>, std::int32_t> || std::is_same_v<std::remove_cv_t<I>, std::int64_t>;

}  // namespace consr
