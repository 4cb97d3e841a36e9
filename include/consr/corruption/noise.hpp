// consr/corruption/noise.hpp — closed-form diffusion noise (spec §3; paper §3.1–3.2): the β
// schedules, their cumulative products and add_diffusion_noise on host views, with Philox normals
// generated in vectorizable passes. Part of consr/corruption.hpp (whose comment describes the random
// streams).
#pragma once

#include "../detail/enum_names.hpp"
#include "common.hpp"

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

/// The schedules' names, for consr::to_string(noise_schedule) and parse_noise_schedule.
constexpr detail::enum_table<noise_schedule, 4> enum_names(noise_schedule) noexcept {
  using s = noise_schedule;
  return {"consr::parse_noise_schedule",
          "schedule",
          {{s::sigmoid, "sigmoid"}, {s::linear, "linear"}, {s::scaled_linear, "scaled_linear"}, {s::cosine, "cosine"}}};
}

/// The noise_schedule named `name` (to_string's names: "sigmoid", "linear", "scaled_linear",
/// "cosine"), for options read from strings. Throws consr::error naming 'schedule' otherwise.
inline noise_schedule parse_noise_schedule(std::string_view name) { return detail::parse_enum<noise_schedule>(name); }

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
  // The rest (all of it without x86 SIMD), counted from 0: a loop from `j` to a constant num_blocks
  // made GCC 12 warn of an out-of-bounds iteration it cannot reach (-Waggressive-loop-optimizations).
  const index_t rest = num_blocks - j;
  std::uint32_t* const t0 = w0 + j;
  std::uint32_t* const t1 = w1 + j;
  std::uint32_t* const t2 = w2 + j;
  std::uint32_t* const t3 = w3 + j;
  const std::uint64_t rest_first = first_block + static_cast<std::uint64_t>(j);
  CONSR_SIMD
  for (index_t k = 0; k < rest; ++k) {
    const uint4x32 r = philox_block(key, rest_first + static_cast<std::uint64_t>(k));
    t0[k] = r.v[0];
    t1[k] = r.v[1];
    t2[k] = r.v[2];
    t3[k] = r.v[3];
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

}  // namespace consr
