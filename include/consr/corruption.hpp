// consr/corruption.hpp — image corruptions of the contrastive reward (spec §3;
// paper §3.1–3.2, Appendix C Table 7): closed-form diffusion noise, random
// patch masking, mixup and random resized crop, on host views.
//
// Reproducibility: every random decision is a pure function of the rng_key
// (seed, offset) and the *logical* position of what it decides (element index,
// image index, patch index), so results do not depend on the thread count, on
// how a tensor is split into calls, or on its memory layout. The CUDA twins
// (include/consr/cuda/) use the same functions of consr/random.hpp.
//
// Streams used here (all under one rng_key):
//  * diffusion noise: normal i of the key = normal_at(key, i), i = the element's
//    row-major logical index plus options.element_offset;
//  * patch masks and crop boxes: uniform draws uniform_at(key, (image << 32) + k),
//    image = options.image_offset + b; patch masks use k = patch index < 2^31,
//    crop boxes k = 2^31 + 4·attempt + {0, 1, 2, 3}. Uniform draws live in a
//    counter range disjoint from the normals.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "config.hpp"
#include "detail/streaming_store.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "random.hpp"
#include "view.hpp"

// Host x86 builds with AVX2 or AVX-512 generate Philox words with hand-vectorized integer code
// (detail::philox_words): compilers vectorize the 32 × 32 → 64-bit products of Philox poorly
// (GCC 12 widens, repacks and even uses 64 × 64-bit multiplies), and the words are exact integers,
// so any implementation gives the same bits. Never under nvcc: the CUDA code includes this header.
#if !defined(__CUDACC__) && !defined(__HIPCC__) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#define CONSR_PHILOX_X86_SIMD 1
#else
#define CONSR_PHILOX_X86_SIMD 0
#endif

namespace consr {

// ================================================================================================
// Noise schedules
// ================================================================================================

/// β schedules of the forward diffusion (spec §3).
enum class noise_schedule {
  sigmoid,        ///< default (VCD, POVID, SeVa): β = sigmoid(linspace(−6, 6, T)) · (5e-3 − 1e-5) + 1e-5
  linear,         ///< DDPM: β = linspace(1e-4, 0.02, T)
  scaled_linear,  ///< β = linspace(√1e-4, √0.02, T)² (the DDPM endpoints, interpolated in √β)
  cosine,         ///< Nichol & Dhariwal: ᾱ(τ) ∝ cos²((τ + 0.008)/1.008 · π/2), β capped at 0.999
};

/// Name of a schedule, for messages.
inline const char* to_string(noise_schedule s) noexcept {
  switch (s) {
    case noise_schedule::sigmoid: return "sigmoid";
    case noise_schedule::linear: return "linear";
    case noise_schedule::scaled_linear: return "scaled_linear";
    case noise_schedule::cosine: return "cosine";
  }
  return "unknown";
}

/// The noise_schedule named `name` (to_string's names: "sigmoid", "linear", "scaled_linear",
/// "cosine"), for options read from strings. Throws consr::error naming 'schedule' otherwise.
inline noise_schedule parse_noise_schedule(std::string_view name) {
  for (const noise_schedule s :
       {noise_schedule::sigmoid, noise_schedule::linear, noise_schedule::scaled_linear, noise_schedule::cosine})
    if (name == to_string(s)) return s;
  detail::throw_error("consr::parse_noise_schedule", "schedule",
                      "is \"" + std::string(name) +
                          "\" but must be \"sigmoid\", \"linear\", \"scaled_linear\" or \"cosine\"");
}

/// A β schedule and its cumulative products, in fp64 (spec §3). Steps are
/// 0-based: t ∈ [0, T−1] and ᾱ_t = Π_{k=0..t} (1 − β_k), so t = 0 already
/// applies β_0. 1 − ᾱ_t is accumulated separately (1 − ᾱ_t = (1 − ᾱ_{t−1}) +
/// β_t ᾱ_{t−1}) so sqrt(1 − ᾱ_t) keeps full relative precision at small t.
class diffusion_schedule {
 public:
  /// The schedule `schedule` with `num_steps` steps.
  /// Throws consr::error naming 'num_steps' unless num_steps ≥ 1, or
  /// 'schedule' for a value outside the enum.
  static diffusion_schedule make(noise_schedule schedule = noise_schedule::sigmoid, int num_steps = 1000) {
    constexpr const char* fn = "consr::diffusion_schedule::make";
    CONSR_CHECK_ARG(num_steps >= 1, fn, "num_steps", "must be at least 1, got ", num_steps);
    diffusion_schedule s;
    s.schedule_ = schedule;
    const std::size_t n = static_cast<std::size_t>(num_steps);
    s.beta_.resize(n);
    // linspace(a, b, T)[t] = a + (b − a) t/(T − 1), and [a] for T = 1 (as torch.linspace).
    auto frac = [&](std::size_t t) { return n > 1 ? static_cast<double>(t) / static_cast<double>(n - 1) : 0.0; };
    switch (schedule) {
      case noise_schedule::sigmoid:
        for (std::size_t t = 0; t < n; ++t) {
          const double x = -6.0 + 12.0 * frac(t);
          s.beta_[t] = (1.0 / (1.0 + std::exp(-x))) * (5e-3 - 1e-5) + 1e-5;
        }
        break;
      case noise_schedule::linear:
        for (std::size_t t = 0; t < n; ++t) s.beta_[t] = 1e-4 + (0.02 - 1e-4) * frac(t);
        break;
      case noise_schedule::scaled_linear: {
        const double a = std::sqrt(1e-4), b = std::sqrt(0.02);
        for (std::size_t t = 0; t < n; ++t) {
          const double r = a + (b - a) * frac(t);
          s.beta_[t] = r * r;
        }
        break;
      }
      case noise_schedule::cosine: {
        // β_t = 1 − f(τ_{t+1})/f(τ_t), f(τ) = cos²((τ + 0.008)/1.008 · π/2), τ_t = t/T.
        // Written with the complementary angle b(τ) = (1 − τ)/1.008 · π/2, f = sin² b,
        // and sin²b0 − sin²b1 = sin(b0 + b1) sin(b0 − b1): no cancellation for the
        // small early β (~4e-5) and no loss near τ = 1 where cos(·) → 0.
        constexpr double pi = 3.14159265358979323846;
        const double scale = (pi / 2) / 1.008 / static_cast<double>(n);
        for (std::size_t t = 0; t < n; ++t) {
          const double b0 = static_cast<double>(n - t) * scale, b1 = static_cast<double>(n - t - 1) * scale;
          const double s0 = std::sin(b0);
          s.beta_[t] = std::min(std::sin(b0 + b1) * std::sin(scale) / (s0 * s0), 0.999);
        }
        break;
      }
      default:
        CONSR_CHECK_ARG(false, fn, "schedule", "unknown noise_schedule value ", static_cast<int>(schedule));
    }
    s.alpha_bar_.resize(n);
    s.one_minus_alpha_bar_.resize(n);
    double ab = 1.0, omab = 0.0;
    for (std::size_t t = 0; t < n; ++t) {
      omab = omab + s.beta_[t] * ab;
      ab = ab * (1.0 - s.beta_[t]);
      s.alpha_bar_[t] = ab;
      s.one_minus_alpha_bar_[t] = omab;
    }
    return s;
  }

  /// β_t. Throws consr::error naming 't' unless 0 ≤ t < num_steps().
  double beta(int t) const { return beta_[check_step(t)]; }
  /// ᾱ_t = Π_{k≤t} (1 − β_k). Throws like beta().
  double alpha_bar(int t) const { return alpha_bar_[check_step(t)]; }
  /// sqrt(ᾱ_t), the image coefficient of x_t. Throws like beta().
  double sqrt_alpha_bar(int t) const { return std::sqrt(alpha_bar_[check_step(t)]); }
  /// sqrt(1 − ᾱ_t), the noise coefficient of x_t. Throws like beta().
  double sqrt_one_minus_alpha_bar(int t) const { return std::sqrt(one_minus_alpha_bar_[check_step(t)]); }
  /// T, the number of steps.
  int num_steps() const noexcept { return static_cast<int>(beta_.size()); }
  /// Which β schedule this is.
  noise_schedule schedule() const noexcept { return schedule_; }

 private:
  diffusion_schedule() = default;
  std::size_t check_step(int t) const {
    CONSR_CHECK_ARG(t >= 0 && t < num_steps(), "consr::diffusion_schedule", "t", "step ", t, " outside [0, ",
                    num_steps(), ")");
    return static_cast<std::size_t>(t);
  }
  noise_schedule schedule_ = noise_schedule::sigmoid;
  std::vector<double> beta_;
  std::vector<double> alpha_bar_;
  std::vector<double> one_minus_alpha_bar_;
};

// ================================================================================================
// Diffusion noise
// ================================================================================================

/// Options of add_diffusion_noise.
struct diffusion_noise_options {
  int step = 800;  ///< 0-based step t ∈ [0, num_steps − 1]: 800 for the reward corruption, 500 for noisy sampling
  noise_schedule schedule = noise_schedule::sigmoid;
  int num_steps = 1000;
  /// Logical index, in the whole tensor being noised, of this view's first
  /// element. Noising a tensor in pieces — each piece a view of consecutive
  /// row-major elements (e.g. a range of leading-dimension slices) with
  /// element_offset = the index of its first element — gives exactly the
  /// noise of one call on the whole tensor.
  std::uint64_t element_offset = 0;
};

/// The two coefficients of x_t = a·x_0 + b·ε.
struct diffusion_coefficients {
  double sqrt_alpha_bar;            ///< a = sqrt(ᾱ_t)
  double sqrt_one_minus_alpha_bar;  ///< b = sqrt(1 − ᾱ_t)
};

namespace detail {

inline diffusion_coefficients diffusion_coefficients_checked(const diffusion_noise_options& o, const char* fn) {
  CONSR_CHECK_ARG(o.num_steps >= 1, fn, "num_steps", "must be at least 1, got ", o.num_steps);
  CONSR_CHECK_ARG(o.step >= 0 && o.step < o.num_steps, fn, "step", "step ", o.step, " outside [0, ", o.num_steps,
                  ") (0-based steps of a ", o.num_steps, "-step schedule)");
  const auto s = diffusion_schedule::make(o.schedule, o.num_steps);
  return {s.sqrt_alpha_bar(o.step), s.sqrt_one_minus_alpha_bar(o.step)};
}

/// The checks of a corruption whose output has the image's shape (noise,
/// patch masking; host and device): both views well formed, equal extents,
/// no broadcast output, and `out` is `image` exactly or disjoint from it.
template <class T, int R, class S>
void check_image_and_output(const strided_view<const T, R, S>& image, const strided_view<T, R, S>& out,
                            const char* fn) {
  check_view(image, fn, "image");
  check_view(out, fn, "out");
  for (int d = 0; d < R; ++d) check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  check_no_broadcast(out, fn);
  check_alias_exact_or_disjoint(image, out, fn, "image");
}

/// The checks of mixup (host and device): the three views well formed and of
/// the image's extents, no broadcast output, `out` exactly `image` / `other`
/// or disjoint from each, and λ in [0, 1].
template <class T, int R, class S>
void check_mixup(const strided_view<const T, R, S>& image, const strided_view<const T, R, S>& other,
                 const strided_view<T, R, S>& out, double lambda, const char* fn) {
  check_view(image, fn, "image");
  check_view(other, fn, "other");
  check_view(out, fn, "out");
  for (int d = 0; d < R; ++d) {
    check_extent(other, d, image.extent(d), fn, "other", "the image's extent");
    check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  }
  check_no_broadcast(out, fn);
  check_alias_exact_or_disjoint(image, out, fn, "image");
  check_alias_exact_or_disjoint(other, out, fn, "other");
  CONSR_CHECK_ARG(lambda >= 0.0 && lambda <= 1.0, fn, "lambda", "must be in [0, 1], got ", lambda);
}

/// Offset of row r (a multi-index over dims 0..R−2, row-major) in view `v`.
template <class T, int R>
index_t row_offset(const host_view<T, R>& v, index_t r) noexcept {
  index_t off = 0;
  for (int d = R - 2; d >= 0; --d) {
    const index_t e = v.extent(d);
    off += (r % e) * v.stride(d);
    r /= e;
  }
  return off;
}

/// Elements per tile of the noise loop: 8 KiB of normals, well inside L1.
inline constexpr index_t noise_tile = 2048;

/// The Philox words of blocks first_block .. first_block + num_blocks − 1 of the stream of `key`,
/// as structure of arrays: w0[j], w1[j], w2[j], w3[j] = philox_block(key, first_block + j).v[0..3].
/// Exactly philox_block's integers; with AVX-512 (8 blocks per step) or AVX2 (4 per step) the 10
/// rounds run on 64-bit lanes whose low halves hold the 32-bit words: the 32 × 32 → 64-bit products
/// are single vpmuludq instructions, and the high halves (never used) need no masking.
inline void philox_words(rng_key key, std::uint64_t first_block, index_t num_blocks, std::uint32_t* w0,
                         std::uint32_t* w1, std::uint32_t* w2, std::uint32_t* w3) noexcept {
  index_t j = 0;
#if CONSR_PHILOX_X86_SIMD && defined(__AVX512F__)
  {
    __m512i k0[10], k1[10];
    for (std::uint32_t r = 0; r < 10; ++r) {
      k0[r] = _mm512_set1_epi64(static_cast<std::uint32_t>(static_cast<std::uint32_t>(key.seed) + r * philox_w0));
      k1[r] = _mm512_set1_epi64(static_cast<std::uint32_t>(static_cast<std::uint32_t>(key.seed >> 32) + r * philox_w1));
    }
    const __m512i m0 = _mm512_set1_epi64(philox_m0), m1 = _mm512_set1_epi64(philox_m1);
    const __m512i offset_lo = _mm512_set1_epi64(static_cast<std::uint32_t>(key.offset));
    const __m512i offset_hi = _mm512_set1_epi64(static_cast<std::uint32_t>(key.offset >> 32));
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    // The zero-masked forms with a full mask are the same instructions; the unmasked intrinsics
    // make GCC 12 warn about their internal "undefined" source operand (GCC bug 105593).
    constexpr __mmask8 all = 0xff;
    for (; j + 8 <= num_blocks; j += 8) {
      const __m512i block =
          _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first_block + static_cast<std::uint64_t>(j))), lane);
      __m512i c0 = block, c1 = _mm512_maskz_srli_epi64(all, block, 32), c2 = offset_lo, c3 = offset_hi;
      for (int r = 0; r < 10; ++r) {  // philox_round: the products read only the low 32 bits of c0, c2
        const __m512i p0 = _mm512_maskz_mul_epu32(all, c0, m0);
        const __m512i p1 = _mm512_maskz_mul_epu32(all, c2, m1);
        c0 = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p1, 32), c1, k0[r], 0x96);  // three-way xor
        c1 = p1;
        c2 = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p0, 32), c3, k1[r], 0x96);
        c3 = p0;
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + j), _mm512_maskz_cvtepi64_epi32(all, c0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + j), _mm512_maskz_cvtepi64_epi32(all, c1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + j), _mm512_maskz_cvtepi64_epi32(all, c2));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + j), _mm512_maskz_cvtepi64_epi32(all, c3));
    }
  }
#elif CONSR_PHILOX_X86_SIMD
  {
    const __m256i m0 = _mm256_set1_epi64x(philox_m0), m1 = _mm256_set1_epi64x(philox_m1);
    const __m256i offset_lo = _mm256_set1_epi64x(static_cast<std::uint32_t>(key.offset));
    const __m256i offset_hi = _mm256_set1_epi64x(static_cast<std::uint32_t>(key.offset >> 32));
    const __m256i lane = _mm256_set_epi64x(3, 2, 1, 0);
    const __m256i low_halves = _mm256_set_epi32(7, 7, 7, 7, 6, 4, 2, 0);
    const std::uint32_t seed_lo = static_cast<std::uint32_t>(key.seed);
    const std::uint32_t seed_hi = static_cast<std::uint32_t>(key.seed >> 32);
    for (; j + 4 <= num_blocks; j += 4) {
      const __m256i block = _mm256_add_epi64(
          _mm256_set1_epi64x(static_cast<long long>(first_block + static_cast<std::uint64_t>(j))), lane);
      __m256i c0 = block, c1 = _mm256_srli_epi64(block, 32), c2 = offset_lo, c3 = offset_hi;
      for (std::uint32_t r = 0; r < 10; ++r) {
        const __m256i k0 = _mm256_set1_epi64x(static_cast<std::uint32_t>(seed_lo + r * philox_w0));
        const __m256i k1 = _mm256_set1_epi64x(static_cast<std::uint32_t>(seed_hi + r * philox_w1));
        const __m256i p0 = _mm256_mul_epu32(c0, m0);
        const __m256i p1 = _mm256_mul_epu32(c2, m1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), k0);
        c1 = p1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), k1);
        c3 = p0;
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w0 + j),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c0, low_halves)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w1 + j),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c1, low_halves)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w2 + j),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c2, low_halves)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w3 + j),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c3, low_halves)));
    }
  }
#endif
  const index_t done = j;
  CONSR_SIMD
  for (index_t k = done; k < num_blocks; ++k) {
    const uint4x32 r = philox_block(key, first_block + static_cast<std::uint64_t>(k));
    w0[k] = r.v[0];
    w1[k] = r.v[1];
    w2[k] = r.v[2];
    w3[k] = r.v[3];
  }
}

/// z[0 .. 4·num_blocks) = the normals of blocks first_block, first_block + 1, …
/// (num_blocks ≤ noise_tile/4 + 2): exactly normal_block()'s values, computed in
/// three passes — Philox words into structure-of-arrays buffers (philox_words),
/// Box–Muller over the pairs, interleave — which vectorize far better than calling
/// normal_block per block (the 4-wide interleaved layout costs shuffles inside
/// the long Box–Muller body). GCC vectorizes the last two with AVX2 or AVX-512
/// (-O3 -march=...); on the x86-64 SSE2 baseline GCC keeps them scalar, Clang
/// vectorizes them. [prefetch, prefetch + prefetch_bytes) (the caller's next input)
/// is prefetched in slices between slices of the Box–Muller pass, so that its memory
/// traffic overlaps this compute-bound pass instead of following it (6 % faster noise
/// on 10 LLaVA tiles, one thread).
inline void fill_normal_blocks(rng_key key, std::uint64_t first_block, index_t num_blocks, float* CONSR_RESTRICT z,
                               const void* prefetch = nullptr, std::size_t prefetch_bytes = 0) noexcept {
  constexpr index_t max_blocks = noise_tile / 4 + 2;
  alignas(64) std::uint32_t w_radius[2 * max_blocks];
  alignas(64) std::uint32_t w_angle[2 * max_blocks];
  alignas(64) float z_cos[2 * max_blocks];
  alignas(64) float z_sin[2 * max_blocks];
  const index_t nb = num_blocks;
  // Pair (0, 1) of block j is pair j, pair (2, 3) is pair nb + j.
  philox_words(key, first_block, nb, w_radius, w_angle, w_radius + nb, w_angle + nb);
  constexpr index_t slices = 8;
  const index_t pairs = 2 * nb;
  const index_t pairs_per_slice = (pairs + slices - 1) / slices;
  const std::size_t bytes_per_slice = ((prefetch_bytes + slices - 1) / slices + 63) / 64 * 64;
  for (index_t q = 0; q < slices; ++q) {
    const index_t k_end = std::min(pairs, (q + 1) * pairs_per_slice);
    CONSR_SIMD
    for (index_t k = q * pairs_per_slice; k < k_end; ++k) box_muller(w_radius[k], w_angle[k], z_cos[k], z_sin[k]);
    const std::size_t pf_begin = static_cast<std::size_t>(q) * bytes_per_slice;
    if (pf_begin < prefetch_bytes)
      prefetch_range(static_cast<const char*>(prefetch) + pf_begin, std::min(bytes_per_slice, prefetch_bytes - pf_begin),
                     false);
  }
  CONSR_SIMD
  for (index_t j = 0; j < nb; ++j) {
    z[4 * j + 0] = z_cos[j];
    z[4 * j + 1] = z_sin[j];
    z[4 * j + 2] = z_cos[nb + j];
    z[4 * j + 3] = z_sin[nb + j];
  }
}

template <class T, class Acc>
CONSR_FORCEINLINE T noised(T x, float z, Acc a, Acc b) noexcept {
  return from_accum<T>(a * to_accum<Acc>(x) + b * static_cast<Acc>(z));
}

/// y = a·x + b·z over logical elements [begin, begin + len) of two views.
template <class T, int R, class Acc>
void apply_noise_strided(host_view<const T, R> x, host_view<T, R> y, index_t begin, index_t len, const float* z,
                         Acc a, Acc b) noexcept {
  if constexpr (R == 0) {
    (void)begin;
    (void)len;
    y() = noised(x(), z[0], a, b);
  } else {
    const index_t inner = x.extent(R - 1);
    const index_t xs = x.stride(R - 1), ys = y.stride(R - 1);
    index_t row = begin / inner, col = begin % inner;
    index_t e = 0;
    while (e < len) {
      const index_t run = std::min(inner - col, len - e);
      const T* xp = x.data() + row_offset(x, row) + col * xs;
      T* yp = y.data() + row_offset(y, row) + col * ys;
      for (index_t k = 0; k < run; ++k) yp[k * ys] = noised(xp[k * xs], z[e + k], a, b);
      e += run;
      ++row;
      col = 0;
    }
  }
}

}  // namespace detail

/// The coefficients (sqrt ᾱ_t, sqrt(1 − ᾱ_t)) for `options` (spec §3).
/// Throws consr::error naming 'num_steps' or 'step' when out of range.
inline diffusion_coefficients diffusion_noise_coefficients(const diffusion_noise_options& options = {}) {
  return detail::diffusion_coefficients_checked(options, "consr::diffusion_noise_coefficients");
}

/// Forward diffusion in closed form (spec §3, paper §3.1–3.2):
///   out_i = sqrt(ᾱ_t) · image_i + sqrt(1 − ᾱ_t) · ε_i,  ε_i = normal_at(key, element_offset + i),
/// where i is the element's row-major *logical* index, so any layout (column-
/// major, strided, a broadcast image) gets the same value per logical element. The
/// arithmetic is in accum_t<T> (fp32 for fp32/bf16/fp16, fp64 for fp64; ε is
/// the fp32 normal either way); no clamping. Any rank 0..8.
/// Preconditions: `out` has the image's extents, no zero stride, and is either
/// exactly `image` (in place) or disjoint from it. Throws consr::error naming
/// 'image' or 'out' (bad view, shape, broadcast or partially overlapping out),
/// 'step' / 'num_steps' (out of range) or
/// 'element_offset' (element_offset + size overflows 64 bits).
/// Runs in parallel (OpenMP, static tiles of the logical index) when enabled;
/// the result does not depend on the thread count.
template <class T, int R>
void add_diffusion_noise(detail::type_identity_t<host_view<const T, R>> image, host_view<T, R> out, rng_key key,
                         const diffusion_noise_options& options = {}) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::add_diffusion_noise: element type must be float, double, consr::bfloat16 or consr::float16");
  constexpr const char* fn = "consr::add_diffusion_noise";
  detail::check_image_and_output(image, out, fn);
  const diffusion_coefficients coef = detail::diffusion_coefficients_checked(options, fn);
  const index_t n = image.size();
  if (n == 0) return;
  CONSR_CHECK_ARG(options.element_offset <= std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(n),
                  fn, "element_offset", options.element_offset, " + ", n, " elements overflows 64-bit indices");

  using acc = accum_t<T>;
  const acc a = static_cast<acc>(coef.sqrt_alpha_bar);
  const acc b = static_cast<acc>(coef.sqrt_one_minus_alpha_bar);
  const bool contiguous = image.is_contiguous() && out.is_contiguous();
  // A large contiguous output goes to memory with streaming stores (no read of every output line
  // before it is written); see detail/streaming_store.hpp.
  const bool streaming = contiguous && detail::use_streaming_stores(static_cast<double>(n) * sizeof(T));
  const index_t tile = detail::noise_tile;
  const index_t num_tiles = (n + tile - 1) / tile;
  const std::uint64_t base = options.element_offset;

  CONSR_OMP(parallel for schedule(static) if (num_tiles > 4))
  for (index_t t = 0; t < num_tiles; ++t) {
    alignas(64) float z[detail::noise_tile + 8];
    const index_t begin = t * tile;
    const index_t len = std::min(tile, n - begin);
    const std::uint64_t first = base + static_cast<std::uint64_t>(begin);
    const index_t lead = static_cast<index_t>(first % 4);  // position of `first` in its Philox block
    const T* next_input = nullptr;  // the next tile's input, prefetched while this tile's normals are computed
    std::size_t next_bytes = 0;
    if (contiguous && t + 1 < num_tiles) {
      next_input = image.data() + begin + tile;
      next_bytes = static_cast<std::size_t>(std::min(tile, n - begin - tile)) * sizeof(T);
    }
    detail::fill_normal_blocks(key, first / 4, (lead + len + 3) / 4, z, next_input, next_bytes);
    if (contiguous) {
      const T* x = image.data() + begin;
      T* y = out.data() + begin;
      const float* zz = z + lead;
      if (streaming) {
        alignas(64) T scratch[detail::noise_tile];
        CONSR_SIMD
        for (index_t i = 0; i < len; ++i) scratch[i] = detail::noised(x[i], zz[i], a, b);
        detail::copy_streaming(y, scratch, static_cast<std::size_t>(len) * sizeof(T));
        detail::streaming_store_fence();
        continue;
      }
      CONSR_SIMD
      for (index_t i = 0; i < len; ++i) y[i] = detail::noised(x[i], zz[i], a, b);
    } else {
      detail::apply_noise_strided<T, R>(image, out, begin, len, z + lead, a, b);
    }
  }
}

/// In-place add_diffusion_noise: image ← sqrt(ᾱ_t)·image + sqrt(1 − ᾱ_t)·ε.
template <class T, int R>
void add_diffusion_noise(host_view<T, R> image, rng_key key, const diffusion_noise_options& options = {}) {
  add_diffusion_noise<T, R>(host_view<const T, R>(image), image, key, options);
}

// ================================================================================================
// Batched image helpers (shared by the Table-7 corruptions)
// ================================================================================================

namespace detail {

/// A [C, H, W] view as a [1, C, H, W] batch; [B, C, H, W] unchanged (host
/// and device views).
template <class T, int R, class S>
strided_view<T, 4, S> as_batch(const strided_view<T, R, S>& v) noexcept {
  static_assert(R == 3 || R == 4, "consr: images are [C, H, W] or [B, C, H, W] views");
  if constexpr (R == 4) {
    return v;
  } else {
    const index_t e[4] = {1, v.extent(0), v.extent(1), v.extent(2)};
    const index_t s[4] = {0, v.stride(0), v.stride(1), v.stride(2)};
    return strided_view<T, 4, S>(v.data(), e, s);
  }
}

/// Image b of a batch as a [C, H, W] view.
template <class T>
host_view<T, 3> image_of(const host_view<T, 4>& v, index_t b) noexcept {
  const index_t e[3] = {v.extent(1), v.extent(2), v.extent(3)};
  const index_t s[3] = {v.stride(1), v.stride(2), v.stride(3)};
  return host_view<T, 3>(v.data() + b * v.stride(0), e, s);
}

/// Uniform-stream sub-range of the patch-mask draws of an image.
inline constexpr std::uint64_t patch_mask_stream = 0;
/// Uniform-stream sub-range of the crop-box draws of an image.
inline constexpr std::uint64_t crop_box_stream = std::uint64_t{1} << 31;
/// Largest number of images (image_offset + B) the per-image streams address.
inline constexpr std::uint64_t max_stream_images = std::uint64_t{1} << 32;

inline void check_image_range(std::uint64_t image_offset, index_t batch, const char* fn) {
  CONSR_CHECK_ARG(image_offset <= max_stream_images - static_cast<std::uint64_t>(batch), fn, "image_offset",
                  "image_offset ", image_offset, " + ", batch, " images exceeds the 2^32 per-image random streams");
}

}  // namespace detail

// ================================================================================================
// Random patch masking (Table 7)
// ================================================================================================

/// Options of random_patch_mask.
struct patch_mask_options {
  index_t patch_size = 14;  ///< side of the square patches, in pixels (edge patches are cut by the border)
  double probability = 0.5;  ///< chance that a patch is masked
  double fill_value = 0.0;   ///< value written into every channel of a masked patch
  /// Index of this view's first image in the whole batch: image b draws from
  /// stream image_offset + b, so masking a batch in pieces gives the same masks.
  std::uint64_t image_offset = 0;
};

/// Whether patch `patch_index` (row-major over the patch grid) of image
/// `image_index` is masked: uniform_at(key, (image_index << 32) + patch_index) < probability.
/// Preconditions: image_index < 2^32, patch_index < 2^31.
CONSR_HOST_DEVICE inline bool patch_is_masked(rng_key key, std::uint64_t image_index, std::uint64_t patch_index,
                                              double probability) noexcept {
  return uniform_at(key, (image_index << 32) + detail::patch_mask_stream + patch_index) < probability;
}

namespace detail {

/// Rows and columns of the patch grid of an image.
struct patch_grid {
  index_t rows, cols;
};

/// The option checks of random_patch_mask (host and device) for a batch `x`:
/// patch_size >= 1, probability in [0, 1], at most 2^31 patches per image,
/// image_offset + B within the per-image streams. Returns the patch grid.
template <class T, class S>
patch_grid check_patch_mask(const patch_mask_options& options, const strided_view<T, 4, S>& x, const char* fn) {
  CONSR_CHECK_ARG(options.patch_size >= 1, fn, "patch_size", "must be at least 1, got ", options.patch_size);
  CONSR_CHECK_ARG(options.probability >= 0.0 && options.probability <= 1.0, fn, "probability", "must be in [0, 1], got ",
                  options.probability);
  const index_t ps = options.patch_size;
  // ceil(extent / ps), written so that no patch_size (up to INT64_MAX) can overflow it.
  const auto ceil_div = [ps](index_t n) { return n == 0 ? index_t{0} : (n - 1) / ps + 1; };
  const patch_grid grid{ceil_div(x.extent(2)), ceil_div(x.extent(3))};
  CONSR_CHECK_ARG(grid.rows == 0 || grid.cols <= (index_t{1} << 31) / grid.rows, fn, "patch_size", "patch size ", ps,
                  " gives ", grid.rows, " x ", grid.cols, " patches; at most 2^31 per image are supported");
  check_image_range(options.image_offset, x.extent(0), fn);
  return grid;
}

}  // namespace detail

/// Random patch masking (paper Table 7): the H × W plane is tiled by
/// patch_size × patch_size squares from the top-left corner (the last row and
/// column of patches are cut by the border); each patch of each image is,
/// independently with probability p (patch_is_masked), set to fill_value in
/// every channel; other pixels are copied. Views are [C, H, W] or [B, C, H, W].
/// `out` has the image's shape and is `image` exactly (in place) or disjoint.
/// Throws consr::error naming 'image', 'out', 'patch_size' (< 1 or more than
/// 2^31 patches), 'probability' (outside [0, 1]) or 'image_offset'.
template <class T, int R>
void random_patch_mask(detail::type_identity_t<host_view<const T, R>> image, host_view<T, R> out, rng_key key,
                       const patch_mask_options& options = {}) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::random_patch_mask: element type must be float, double, consr::bfloat16 or consr::float16");
  static_assert(R == 3 || R == 4, "consr::random_patch_mask: images are [C, H, W] or [B, C, H, W] views");
  constexpr const char* fn = "consr::random_patch_mask";
  detail::check_image_and_output(image, out, fn);
  const host_view<const T, 4> x = detail::as_batch(image);
  const host_view<T, 4> y = detail::as_batch(out);
  const index_t batch = x.extent(0), channels = x.extent(1), height = x.extent(2), width = x.extent(3);
  const detail::patch_grid grid = detail::check_patch_mask(options, x, fn);
  const index_t ps = options.patch_size, grid_cols = grid.cols;
  if (x.size() == 0) return;

  // One byte per (image, patch): tiny next to the image, and the loops below read it.
  const index_t patches = grid.rows * grid.cols;
  std::vector<unsigned char> masked(static_cast<std::size_t>(batch * patches));
  for (index_t b = 0; b < batch; ++b)
    for (index_t p = 0; p < patches; ++p)
      masked[static_cast<std::size_t>(b * patches + p)] =
          patch_is_masked(key, options.image_offset + static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(p),
                          options.probability);

  const T fill = from_accum<T>(static_cast<accum_t<T>>(options.fill_value));
  const index_t rows = batch * channels * height;
  CONSR_OMP(parallel for schedule(static) if (rows * width > 65536))
  for (index_t r = 0; r < rows; ++r) {
    const index_t row_y = r % height, b = r / (channels * height), c = (r / height) % channels;
    const T* xp = &x(b, c, row_y, 0);
    T* yp = &y(b, c, row_y, 0);
    const unsigned char* m = masked.data() + b * patches + (row_y / ps) * grid_cols;
    const index_t xs = x.stride(3), ys = y.stride(3);
    // Runs of patch_size columns, not a per-pixel choice (which costs a division per pixel and
    // does not vectorize): copy the row, then fill the masked runs. In place (yp == xp), only fill.
    if (xs == 1 && ys == 1) {
      if (yp != xp) std::copy(xp, xp + width, yp);
      for (index_t pc = 0; pc < grid_cols; ++pc)
        if (m[pc]) std::fill(yp + pc * ps, yp + std::min(pc * ps + ps, width), fill);
    } else {
      for (index_t pc = 0; pc < grid_cols; ++pc) {
        const index_t end = std::min(pc * ps + ps, width);
        if (m[pc]) {
          for (index_t col = pc * ps; col < end; ++col) yp[col * ys] = fill;
        } else if (yp != xp) {
          for (index_t col = pc * ps; col < end; ++col) yp[col * ys] = xp[col * xs];
        }
      }
    }
  }
}

/// In-place random_patch_mask: masked patches of `image` are overwritten with fill_value.
template <class T, int R>
void random_patch_mask(host_view<T, R> image, rng_key key, const patch_mask_options& options = {}) {
  random_patch_mask<T, R>(host_view<const T, R>(image), image, key, options);
}

// ================================================================================================
// Mixup (Table 7)
// ================================================================================================

/// Mixup with a second image (paper Table 7): out = λ·image + (1 − λ)·other,
/// element by element in accum_t<T>. Any rank 0..8; `other` and `out` have the
/// image's shape; `out` may be exactly `image` or `other`, else disjoint from both.
/// Throws consr::error naming 'image', 'other', 'out' or 'lambda' (outside [0, 1]).
template <class T, int R>
void mixup(detail::type_identity_t<host_view<const T, R>> image, detail::type_identity_t<host_view<const T, R>> other,
           host_view<T, R> out, double lambda) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::mixup: element type must be float, double, consr::bfloat16 or consr::float16");
  detail::check_mixup(image, other, out, lambda, "consr::mixup");
  using acc = accum_t<T>;
  const acc wa = static_cast<acc>(lambda), wb = static_cast<acc>(1.0 - lambda);
  auto mix = [wa, wb](T p, T q) { return from_accum<T>(wa * to_accum<acc>(p) + wb * to_accum<acc>(q)); };
  if constexpr (R == 0) {
    out() = mix(image(), other());
  } else {
    const index_t n = image.size();
    if (n == 0) return;
    const index_t inner = image.extent(R - 1), rows = n / inner;
    const index_t xs = image.stride(R - 1), os = other.stride(R - 1), ys = out.stride(R - 1);
    CONSR_OMP(parallel for schedule(static) if (n > 65536))
    for (index_t r = 0; r < rows; ++r) {
      const T* xp = image.data() + detail::row_offset(image, r);
      const T* op = other.data() + detail::row_offset(other, r);
      T* yp = out.data() + detail::row_offset(out, r);
      CONSR_SIMD
      for (index_t k = 0; k < inner; ++k) yp[k * ys] = mix(xp[k * xs], op[k * os]);
    }
  }
}

// ================================================================================================
// Random resized crop (Table 7)
// ================================================================================================

/// A crop rectangle in pixels: rows [top, top + height), columns [left, left + width).
struct crop_box {
  index_t top = 0;
  index_t left = 0;
  index_t height = 0;
  index_t width = 0;
};

/// Options of random_resized_crop (torchvision RandomResizedCrop's defaults).
struct resized_crop_options {
  double scale_min = 0.08;  ///< crop area, as a fraction of the image area: [scale_min, scale_max]
  double scale_max = 1.0;
  double ratio_min = 3.0 / 4;  ///< crop aspect ratio width/height: [ratio_min, ratio_max], drawn log-uniformly
  double ratio_max = 4.0 / 3;
  /// Index of this view's first image in the whole batch (see patch_mask_options).
  std::uint64_t image_offset = 0;
};

/// The crop box torchvision's RandomResizedCrop.get_params would draw for a
/// height × width image, with its random numbers taken from the uniform stream
/// of `key` for image `image_index`: up to 10 attempts, each drawing an area
/// fraction s ~ U[scale_min, scale_max] and log-ratio ~ U[log ratio_min, log ratio_max],
/// w = round(sqrt(s·area·ratio)), h = round(sqrt(s·area/ratio)) (round half to
/// even, as Python); the first attempt with 0 < w ≤ width and 0 < h ≤ height takes
/// top ~ U{0..height−h}, left ~ U{0..width−w}. Otherwise the centre crop of the
/// aspect ratio clamped to [ratio_min, ratio_max]. Host only (it calls libm).
/// Throws consr::error naming 'height' / 'width' (< 1), 'scale_min' / 'scale_max'
/// (need 0 < scale_min ≤ scale_max, finite), 'ratio_min' / 'ratio_max' (need
/// 0 < ratio_min ≤ ratio_max, finite) or 'image_index' (≥ 2^32).
inline crop_box draw_resized_crop_box(index_t height, index_t width, rng_key key, std::uint64_t image_index,
                                      const resized_crop_options& options = {}) {
  constexpr const char* fn = "consr::draw_resized_crop_box";
  CONSR_CHECK_ARG(height >= 1, fn, "height", "must be at least 1, got ", height);
  CONSR_CHECK_ARG(width >= 1, fn, "width", "must be at least 1, got ", width);
  CONSR_CHECK_ARG(std::isfinite(options.scale_min) && options.scale_min > 0.0, fn, "scale_min",
                  "must be positive and finite, got ", options.scale_min);
  CONSR_CHECK_ARG(std::isfinite(options.scale_max) && options.scale_max >= options.scale_min, fn, "scale_max",
                  "must be finite and at least scale_min (", options.scale_min, "), got ", options.scale_max);
  CONSR_CHECK_ARG(std::isfinite(options.ratio_min) && options.ratio_min > 0.0, fn, "ratio_min",
                  "must be positive and finite, got ", options.ratio_min);
  CONSR_CHECK_ARG(std::isfinite(options.ratio_max) && options.ratio_max >= options.ratio_min, fn, "ratio_max",
                  "must be finite and at least ratio_min (", options.ratio_min, "), got ", options.ratio_max);
  CONSR_CHECK_ARG(image_index < detail::max_stream_images, fn, "image_index", image_index,
                  " is not below 2^32 (the per-image random streams)");
  const double area = static_cast<double>(height) * static_cast<double>(width);
  const double log_rmin = std::log(options.ratio_min), log_rmax = std::log(options.ratio_max);
  const std::uint64_t base = (image_index << 32) + detail::crop_box_stream;
  // randint(0, n): floor(u·n), clamped against the product rounding up to n.
  auto randint = [](double u, index_t n) { return std::min(static_cast<index_t>(u * static_cast<double>(n)), n - 1); };
  for (std::uint64_t attempt = 0; attempt < 10; ++attempt) {
    const std::uint64_t k = base + 4 * attempt;
    const double target_area = area * (options.scale_min + (options.scale_max - options.scale_min) * uniform_at(key, k));
    const double aspect = std::exp(log_rmin + (log_rmax - log_rmin) * uniform_at(key, k + 1));
    const double wf = std::nearbyint(std::sqrt(target_area * aspect));
    const double hf = std::nearbyint(std::sqrt(target_area / aspect));
    if (wf > 0 && wf <= static_cast<double>(width) && hf > 0 && hf <= static_cast<double>(height)) {
      crop_box box;
      box.width = static_cast<index_t>(wf);
      box.height = static_cast<index_t>(hf);
      box.top = randint(uniform_at(key, k + 2), height - box.height + 1);
      box.left = randint(uniform_at(key, k + 3), width - box.width + 1);
      return box;
    }
  }
  // Fallback: centre crop, as torchvision.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  crop_box box;
  if (in_ratio < options.ratio_min) {
    box.width = width;
    box.height = static_cast<index_t>(std::nearbyint(static_cast<double>(width) / options.ratio_min));
  } else if (in_ratio > options.ratio_max) {
    box.height = height;
    box.width = static_cast<index_t>(std::nearbyint(static_cast<double>(height) * options.ratio_max));
  } else {
    box.width = width;
    box.height = height;
  }
  box.height = std::clamp<index_t>(box.height, 1, height);
  box.width = std::clamp<index_t>(box.width, 1, width);
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

namespace detail {

/// Source sample positions of bilinear resizing with align_corners = false
/// (half-pixel centres, PyTorch's upsample_bilinear2d): for output index o of
/// `out_size`, the source coordinate max((o + 0.5)·in/out − 0.5, 0) inside a
/// crop of `in_size` starting at `start`.
struct bilinear_taps {
  std::vector<index_t> i0, i1;
  std::vector<double> w1;  // weight of i1; i0 gets 1 − w1
  bilinear_taps(index_t start, index_t in_size, index_t out_size) : i0(out_size), i1(out_size), w1(out_size) {
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    for (index_t o = 0; o < out_size; ++o) {
      const double src = std::max((static_cast<double>(o) + 0.5) * scale - 0.5, 0.0);
      const index_t lo = std::min(static_cast<index_t>(src), in_size - 1);
      const index_t hi = std::min(lo + 1, in_size - 1);
      i0[static_cast<std::size_t>(o)] = start + lo;
      i1[static_cast<std::size_t>(o)] = start + hi;
      w1[static_cast<std::size_t>(o)] = hi == lo ? 0.0 : src - static_cast<double>(lo);
    }
  }
};

template <class T>
void crop_resize_batch(host_view<const T, 4> x, const crop_box* boxes, host_view<T, 4> y) {
  const index_t batch = x.extent(0), channels = x.extent(1), out_h = y.extent(2), out_w = y.extent(3);
  if (y.size() == 0) return;
  std::vector<bilinear_taps> rows_taps, cols_taps;
  rows_taps.reserve(static_cast<std::size_t>(batch));
  cols_taps.reserve(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) {
    rows_taps.emplace_back(boxes[b].top, boxes[b].height, out_h);
    cols_taps.emplace_back(boxes[b].left, boxes[b].width, out_w);
  }
  const index_t rows = batch * channels * out_h;
  const index_t in_h = x.extent(2);
  const index_t xs = x.stride(3), ys = y.stride(3);
  // Separable: an output row blends two source rows that were first resampled horizontally; each
  // thread keeps the last two resampled rows, which the next output rows mostly reuse (a crop is
  // enlarged back to the image size). The arithmetic per output pixel is the same as resampling it
  // on its own: top = (1 − wx)·a + wx·b per source row, then (1 − wy)·top + wy·bottom.
  // The per-thread buffers are allocated here, outside the parallel region (which must not throw).
#if CONSR_HAS_OPENMP
  const int max_threads = omp_get_max_threads();
#else
  const int max_threads = 1;
#endif
  std::vector<double> resampled(static_cast<std::size_t>(max_threads) * 2 * static_cast<std::size_t>(out_w));
  CONSR_OMP(parallel if (rows * out_w > 65536))
  {
#if CONSR_HAS_OPENMP
    const std::size_t thread = static_cast<std::size_t>(omp_get_thread_num());
#else
    const std::size_t thread = 0;
#endif
    double* held[2] = {resampled.data() + thread * 2 * static_cast<std::size_t>(out_w),
                       resampled.data() + (thread * 2 + 1) * static_cast<std::size_t>(out_w)};
    index_t held_row[2] = {-1, -1};  // (b·C + c)·H + source row of each buffer; -1 = nothing yet
    auto resample_row = [&](double* out_row, index_t b, index_t c, index_t source_row) {
      const bilinear_taps& ct = cols_taps[static_cast<std::size_t>(b)];
      const T* src = &x(b, c, source_row, 0);
      for (index_t ox = 0; ox < out_w; ++ox) {
        const std::size_t k = static_cast<std::size_t>(ox);
        const double wx = ct.w1[k];
        out_row[ox] = (1.0 - wx) * to_accum<double>(src[ct.i0[k] * xs]) + wx * to_accum<double>(src[ct.i1[k] * xs]);
      }
    };
    CONSR_OMP(for schedule(static))
    for (index_t r = 0; r < rows; ++r) {
      const index_t oy = r % out_h, c = (r / out_h) % channels, b = r / (channels * out_h);
      const bilinear_taps& rt = rows_taps[static_cast<std::size_t>(b)];
      const double wy = rt.w1[static_cast<std::size_t>(oy)];
      const index_t s0 = rt.i0[static_cast<std::size_t>(oy)], s1 = rt.i1[static_cast<std::size_t>(oy)];
      const index_t key0 = (b * channels + c) * in_h + s0, key1 = (b * channels + c) * in_h + s1;
      if (held_row[0] != key0) {
        if (held_row[1] == key0) {
          std::swap(held[0], held[1]);
          std::swap(held_row[0], held_row[1]);
        } else {
          resample_row(held[0], b, c, s0);
          held_row[0] = key0;
        }
      }
      const double* top = held[0];
      const double* bottom = top;
      if (key1 != key0) {
        if (held_row[1] != key1) {
          resample_row(held[1], b, c, s1);
          held_row[1] = key1;
        }
        bottom = held[1];
      }
      T* yp = &y(b, c, oy, 0);
      for (index_t ox = 0; ox < out_w; ++ox)
        yp[ox * ys] = from_accum<T>(static_cast<accum_t<T>>((1.0 - wy) * top[ox] + wy * bottom[ox]));
    }
  }
}

/// The view checks of the crops (host and device): both well formed, `out`
/// with the image's batch and channel extents, no broadcast, no overlap.
template <class T, int R, class S>
void check_crop_views(const strided_view<const T, R, S>& image, const strided_view<T, R, S>& out, const char* fn) {
  check_view(image, fn, "image");
  check_view(out, fn, "out");
  if constexpr (R == 4) check_extent(out, 0, image.extent(0), fn, "out", "the image's batch size");
  check_extent(out, R - 3, image.extent(R - 3), fn, "out", "the image's channel count");
  check_no_broadcast(out, fn);
  CONSR_CHECK_ARG(!views_overlap(image, out), fn, "out", "overlaps 'image'; the crop cannot run in place");
}

}  // namespace detail

/// Crops `box` out of every image and resizes it bilinearly to out's H × W
/// (align_corners = false, half-pixel centres, no antialiasing: the same as
/// torchvision's resized_crop whenever out is at least the crop's size, which
/// random_resized_crop guarantees, since antialiasing only acts when shrinking).
/// Computed in fp64, rounded once to T. Views are [C, H, W] or
/// [B, C, H, W] (the same box for every image); `out` has the image's batch
/// and channel extents, any H × W, and must not overlap `image`.
/// Throws consr::error naming 'image', 'out' or 'box' (not inside the image, or empty).
template <class T, int R>
void crop_and_resize_bilinear(detail::type_identity_t<host_view<const T, R>> image, const crop_box& box,
                              host_view<T, R> out) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::crop_and_resize_bilinear: element type must be float, double, consr::bfloat16 or consr::float16");
  static_assert(R == 3 || R == 4, "consr::crop_and_resize_bilinear: images are [C, H, W] or [B, C, H, W] views");
  constexpr const char* fn = "consr::crop_and_resize_bilinear";
  detail::check_crop_views(image, out, fn);
  const index_t height = image.extent(R - 2), width = image.extent(R - 1);
  CONSR_CHECK_ARG(box.height >= 1 && box.width >= 1 && box.top >= 0 && box.left >= 0 && box.top <= height - box.height &&
                      box.left <= width - box.width,
                  fn, "box", "rows [", box.top, ", ", box.top + box.height, ") x columns [", box.left, ", ",
                  box.left + box.width, ") is empty or not inside the ", height, " x ", width, " image");
  const host_view<const T, 4> x = detail::as_batch(image);
  std::vector<crop_box> boxes(static_cast<std::size_t>(x.extent(0)), box);
  detail::crop_resize_batch<T>(x, boxes.data(), detail::as_batch(out));
}

/// Random resized crop (paper Table 7): for each image b, a box drawn by
/// draw_resized_crop_box(H, W, key, image_offset + b, options), cropped and
/// resized back to H × W with crop_and_resize_bilinear. Views are [C, H, W] or
/// [B, C, H, W]; `out` has the image's shape and must not overlap it.
/// Throws consr::error naming 'image', 'out', 'image_offset' or an option
/// (see draw_resized_crop_box).
template <class T, int R>
void random_resized_crop(detail::type_identity_t<host_view<const T, R>> image, host_view<T, R> out, rng_key key,
                         const resized_crop_options& options = {}) {
  static_assert(is_supported_float_v<T> && !std::is_const_v<T>,
                "consr::random_resized_crop: element type must be float, double, consr::bfloat16 or consr::float16");
  static_assert(R == 3 || R == 4, "consr::random_resized_crop: images are [C, H, W] or [B, C, H, W] views");
  constexpr const char* fn = "consr::random_resized_crop";
  detail::check_crop_views(image, out, fn);
  for (int d = 0; d < R; ++d) detail::check_extent(out, d, image.extent(d), fn, "out", "the image's extent");
  const host_view<const T, 4> x = detail::as_batch(image);
  const index_t batch = x.extent(0), height = x.extent(2), width = x.extent(3);
  detail::check_image_range(options.image_offset, batch, fn);
  if (x.size() == 0) return;
  std::vector<crop_box> boxes(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b)
    boxes[static_cast<std::size_t>(b)] =
        draw_resized_crop_box(height, width, key, options.image_offset + static_cast<std::uint64_t>(b), options);
  detail::crop_resize_batch<T>(x, boxes.data(), detail::as_batch(out));
}

}  // namespace consr
