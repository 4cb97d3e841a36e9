// consr/detail/logprob_exp_avx512.hpp — the exp-sum of the log-probs forward (consr/logprobs.hpp)
// in AVX-512 intrinsics, for host builds that target AVX-512 F, BW and VL; every other build runs
// the portable `omp simd` loop of logprobs.hpp (CONSR_LOGPROBS_AVX512 is 0 there).
#pragma once

#include "../config.hpp"
#include "../numeric.hpp"
#include "exp.hpp"

#include <limits>
#include <type_traits>

// Host builds with AVX-512 (F, BW, VL) sum the exponentials of the fp32 and bf16 forward with
// intrinsics (detail::logprob_sum_exp_avx512); every other build runs the portable `omp simd` loop.
#if !defined(__CUDACC__) && !defined(__HIPCC__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
#include <immintrin.h>
#define CONSR_LOGPROBS_AVX512 1
#else
#define CONSR_LOGPROBS_AVX512 0
#endif

namespace consr {
namespace detail {

#if CONSR_LOGPROBS_AVX512
// The fp32 exp-sum of one chunk in AVX-512 intrinsics (fp32 and bf16 logits): the reduction and
// polynomial of vector_exp_nonpositive, but the scaling by 2^n and the flush of tiny terms are one
// zero-masked vscalefps (two to three instructions fewer per 16 logits than the compiler's code for
// the generic loop of logprob_sum_exp, in the loop that bounds the forward's arithmetic). Each term
// is 2·exp(d) with the same rounding as vector_exp_nonpositive(d) (q is the doubled polynomial, and
// scalef(q, n) = q·2^n exactly where vector_exp_nonpositive multiplies by 2^(n−1)), so the halved sum
// is the generic loop's sum of the same terms, added in another order. The backward's gradient
// blocks (logprob_grad_block_avx512) use the same terms, times half the scale.
// The zero-masked forms with a full mask are the same instructions; the unmasked intrinsics make
// GCC 12 warn about their internal "undefined" source operand (GCC bug 105593).
inline constexpr __mmask16 all_lanes = 0xffff;

struct logprob_exp_constants {
  __m512 floor = _mm512_set1_ps(exp_float_flush);
  __m512 log2e = _mm512_set1_ps(exp_float_log2e);
  __m512 magic = _mm512_set1_ps(exp_float_round_magic);
};

CONSR_FORCEINLINE __m512 logprob_exp2x(__m512 d, const logprob_exp_constants& k) noexcept {
  // Lanes below the flush threshold (−inf included) become 0, as in vector_exp_nonpositive; NaN
  // compares "not less" and propagates.
  const __mmask16 keep = _mm512_cmp_ps_mask(d, k.floor, _CMP_NLT_UQ);
  const __m512 t = _mm512_fmadd_ps(d, k.log2e, k.magic);
  const __m512 n = _mm512_sub_ps(t, k.magic);
  // exp_float_reduced(d, n), one FMA per step (as GCC contracts it on FMA targets).
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(exp_float_ln2_hi), d);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(exp_float_ln2_lo), r);
  __m512 q = _mm512_set1_ps(exp_float_c6);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c5));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c4));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c3));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c2));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c1));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(exp_float_c0));
  return _mm512_maskz_scalef_ps(keep, q, n);
}

template <bool Scaled>
CONSR_FORCEINLINE __m512 logprob_shifted(__m512 z, __m512 shift, __m512 inv_hi, __m512 inv_lo) noexcept {
  const __m512 d = _mm512_sub_ps(z, shift);
  if constexpr (Scaled) return _mm512_fmadd_ps(d, inv_hi, _mm512_mul_ps(d, inv_lo));
  return d;
}

// 16 logits from `p` as fp32 (lanes past `mask` are 0 and not used).
CONSR_FORCEINLINE __m512 logprob_load16(const float* p, __mmask16 mask) noexcept {
  return _mm512_maskz_loadu_ps(mask, p);
}
CONSR_FORCEINLINE __m512 logprob_load16(const bfloat16* p, __mmask16 mask) noexcept {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all_lanes, _mm512_maskz_cvtepu16_epi32(all_lanes, bits), 16));
}

// 32 bf16 logits from `p` as two fp32 vectors without a shuffle: a 32-bit lane holds two bf16, the
// even element in its low half and the odd one in its high half, so (lane << 16) is the even one
// as fp32 and (lane & 0xffff0000) the odd one. (The lane order differs from the logits' order;
// maxima and sums do not care, up to the order of the sum's additions.)
CONSR_FORCEINLINE void logprob_load32_bf16(const bfloat16* p, __m512& even, __m512& odd) noexcept {
  const __m512i v = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all_lanes, v, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

/// The maximum of n bf16 logits, as logprob_block_max computes it (a NaN is dropped, as by
/// `v > m ? v : m`: vmaxps keeps its second operand when either is NaN).
CONSR_FORCEINLINE float logprob_block_max_bf16_avx512(const bfloat16* block, index_t n) noexcept {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = neg_inf, m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
  index_t j = 0;
  for (; j + 64 <= n; j += 64) {
    __m512 a, b, c, d;
    logprob_load32_bf16(block + j, a, b);
    logprob_load32_bf16(block + j + 32, c, d);
    m0 = _mm512_maskz_max_ps(all_lanes, a, m0);
    m1 = _mm512_maskz_max_ps(all_lanes, b, m1);
    m2 = _mm512_maskz_max_ps(all_lanes, c, m2);
    m3 = _mm512_maskz_max_ps(all_lanes, d, m3);
  }
  alignas(64) float lane[16];
  _mm512_store_ps(lane, _mm512_maskz_max_ps(all_lanes, _mm512_maskz_max_ps(all_lanes, m0, m1),
                                            _mm512_maskz_max_ps(all_lanes, m2, m3)));
  float m = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < 16; ++l) m = lane[l] > m ? lane[l] : m;
  for (; j < n; ++j) {
    const float v = static_cast<float>(block[j]);
    m = v > m ? v : m;
  }
  return m;
}

template <bool Scaled, class Logit>
CONSR_FORCEINLINE float logprob_sum_exp_avx512(const Logit* CONSR_RESTRICT chunk, index_t n, float shift,
                                               float inv_tau_hi, float inv_tau_lo) noexcept {
  const logprob_exp_constants k;
  const __m512 vshift = _mm512_set1_ps(shift);
  const __m512 inv_hi = _mm512_set1_ps(inv_tau_hi), inv_lo = _mm512_set1_ps(inv_tau_lo);
  constexpr __mmask16 all = all_lanes;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  index_t j = 0;
  if constexpr (std::is_same_v<Logit, bfloat16>) {
    for (; j + 64 <= n; j += 64) {
      __m512 a, b, c, d;
      logprob_load32_bf16(chunk + j, a, b);
      logprob_load32_bf16(chunk + j + 32, c, d);
      s0 = _mm512_add_ps(s0, logprob_exp2x(logprob_shifted<Scaled>(a, vshift, inv_hi, inv_lo), k));
      s1 = _mm512_add_ps(s1, logprob_exp2x(logprob_shifted<Scaled>(b, vshift, inv_hi, inv_lo), k));
      s2 = _mm512_add_ps(s2, logprob_exp2x(logprob_shifted<Scaled>(c, vshift, inv_hi, inv_lo), k));
      s3 = _mm512_add_ps(s3, logprob_exp2x(logprob_shifted<Scaled>(d, vshift, inv_hi, inv_lo), k));
    }
  }
  for (; j + 64 <= n; j += 64) {
    s0 = _mm512_add_ps(s0, logprob_exp2x(logprob_shifted<Scaled>(logprob_load16(chunk + j, all), vshift, inv_hi, inv_lo), k));
    s1 = _mm512_add_ps(s1, logprob_exp2x(logprob_shifted<Scaled>(logprob_load16(chunk + j + 16, all), vshift, inv_hi, inv_lo), k));
    s2 = _mm512_add_ps(s2, logprob_exp2x(logprob_shifted<Scaled>(logprob_load16(chunk + j + 32, all), vshift, inv_hi, inv_lo), k));
    s3 = _mm512_add_ps(s3, logprob_exp2x(logprob_shifted<Scaled>(logprob_load16(chunk + j + 48, all), vshift, inv_hi, inv_lo), k));
  }
  for (; j < n; j += 16) {
    const index_t left = n - j;
    const __mmask16 m = left >= 16 ? all : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 e = logprob_exp2x(logprob_shifted<Scaled>(logprob_load16(chunk + j, m), vshift, inv_hi, inv_lo), k);
    s0 = _mm512_mask_add_ps(s0, m, s0, e);
  }
  // A fixed tree over the four accumulators and the sixteen lanes; halving the sum of doubled
  // terms is exact (it stays ≥ 2^-126).
  // (In registers: a store and sixteen narrower loads would stall on store forwarding.)
  const __m512 s = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
  const __m256 s8 = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(s), 0)),
                                  _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(s), 1)));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2v = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1v = _mm_add_ss(s2v, _mm_shuffle_ps(s2v, s2v, 1));
  return 0.5f * _mm_cvtss_f32(s1v);
}

// out[j] = neg_scale · exp(z_j/τ − lse) for one block of fp32 gradients (logprob_grad_row's formula,
// the exponential as logprob_exp2x: 2·exp with half the scale, the same product bit for bit).
template <bool Scaled, class Logit>
CONSR_FORCEINLINE void logprob_grad_block_avx512(const Logit* row, float* out, index_t n, float inv_tau_hi,
                                                 float inv_tau_lo, float lse, float neg_scale) noexcept {
  const logprob_exp_constants k;
  const __m512 vlse = _mm512_set1_ps(lse), half_scale = _mm512_set1_ps(0.5f * neg_scale);
  const __m512 inv_hi = _mm512_set1_ps(inv_tau_hi), inv_lo = _mm512_set1_ps(inv_tau_lo);
  for (index_t j = 0; j < n; j += 16) {
    const index_t left = n - j;
    const __mmask16 m = left >= 16 ? all_lanes : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 z = logprob_load16(row + j, m);
    __m512 x;
    if constexpr (Scaled) x = _mm512_fmadd_ps(z, inv_hi, _mm512_fmsub_ps(z, inv_lo, vlse));
    else x = _mm512_sub_ps(z, vlse);
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(half_scale, logprob_exp2x(x, k)));
  }
}
#endif

}  // namespace detail
}  // namespace consr
