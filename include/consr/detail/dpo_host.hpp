// consr/detail/dpo_host.hpp — the host DPO loops over one pair's contiguous
// tokens (used by dpo.hpp when every view it reads is contiguous): both sides'
// sums at once, and one side's gradient.
//
// The sums add the same addends in the same order as lane_sums (reductions.hpp:
// position k of a segment goes to partial sum k mod 8, combined in a fixed
// tree), so they are the same bits as dpo_side's. What differs is what is in
// flight: one side's eight partial sums are eight add chains, and a loop over
// one side waits on the adder's latency at every group of eight tokens; the
// chosen and the rejected side of a pair are independent, so their groups are
// added in the same iteration (twice the chains), and the loads are plain
// pointer reads the compiler vectorizes (a strided view's index multiply
// keeps it from that).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "../reductions.hpp"

namespace consr {
namespace detail {

/// One side of one pair as the contiguous loops read it, each pointer at the
/// pair's first token; reference, weights and labels are nullptr when not read.
template <class T, class Label>
struct dpo_run {
  const T* logp = nullptr;         ///< a_t
  const T* reference = nullptr;    ///< per-token a_ref,t (nullptr: a per-sequence sum, subtracted by the caller)
  const T* weights = nullptr;      ///< ω_t (nullptr: ω = 1)
  const Label* labels = nullptr;   ///< nullptr: every token scored
  index_t length = 0;
};

#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && !defined(__HIPCC__)
/// GCC / Clang vector extensions: the eight partial sums as one vector, so that a group of eight
/// tokens is one vector load, convert and add whatever the compiler's SLP pass decides (left to
/// it, GCC kept most lanes in scalar registers). Each lane is an IEEE add of its own: the same
/// bits as the scalar loop.
#define CONSR_DPO_LANE_VECTORS 1
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
typedef double dpo_lanes __attribute__((vector_size(sum_lanes * sizeof(double))));
typedef std::int64_t dpo_lane_mask __attribute__((vector_size(sum_lanes * sizeof(std::int64_t))));

// (Vectors go out through references: a vector return value would change the ABI between
// -mavx512f and not, which GCC warns about, -Wpsabi.)
template <class T>
CONSR_FORCEINLINE void dpo_load_lanes(const T* p, dpo_lanes& out) noexcept {
  if constexpr (std::is_same_v<T, double>) {
    std::memcpy(&out, p, sizeof out);
  } else {
#if defined(__AVX512F__)
    // One vcvtps2pd zmm, ymm: GCC 12 lowers the generic conversion below to two ymm converts and
    // three shuffles, which made the loads the bottleneck of the sums.
    // (The zero-masking form with every lane kept: _mm512_cvtps_pd draws GCC 12 -Wmaybe-uninitialized
    // from its own header.)
    out = reinterpret_cast<dpo_lanes>(_mm512_maskz_cvtps_pd(static_cast<__mmask8>(0xFF), _mm256_loadu_ps(p)));
#else
    typedef float floats __attribute__((vector_size(sum_lanes * sizeof(float))));
    floats v;
    std::memcpy(&v, p, sizeof v);
    out = __builtin_convertvector(v, dpo_lanes);
#endif
  }
}

/// All ones in the lanes whose label is not `ignore`, else zero.
template <class Label>
CONSR_FORCEINLINE void dpo_scored_lanes(const Label* p, std::int64_t ignore, dpo_lane_mask& out) noexcept {
  typedef Label labels __attribute__((vector_size(sum_lanes * sizeof(Label))));
  labels v;
  std::memcpy(&v, p, sizeof v);
  out = __builtin_convertvector(v, dpo_lane_mask) != ignore;
}
#else
#define CONSR_DPO_LANE_VECTORS 0
#endif

/// All bits set, in a register the compiler cannot see into (see dpo_unfused).
CONSR_FORCEINLINE std::int64_t opaque_all_ones() noexcept {
  std::int64_t v = -1;
#if defined(__GNUC__) || defined(__clang__)
  __asm__("" : "+r"(v));
#endif
  return v;
}

/// x unchanged (mask = opaque_all_ones()), but rounded on its own: a product passed through it is never
/// contracted with the sum it goes into. Without labels, ω·a goes straight into a sum, and GCC fuses
/// `s += ω·a` into one multiply-add on FMA targets (-march=native), while with labels the product is
/// masked first and rounded alone: the DPO sums would differ in the last bit between the two, and
/// between the contiguous loops here and dpo_side. Every weighted product of the DPO sums goes through
/// this (one AND), so they are the same bits with and without labels, strided or not, on every target.
CONSR_FORCEINLINE double dpo_unfused(double x, std::int64_t mask) noexcept {
  std::int64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= mask;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

/// The partial sums of one side: sum 0 is Σ (a − a_ref) (Σ a with a
/// per-sequence reference), sum 1 (when Second) Σ ω a (Σ a without weights),
/// both over the scored tokens; `count` the scored tokens (with Labels).
template <bool Labels, bool Reference, bool Weights, bool Second>
struct dpo_run_sums {
#if CONSR_DPO_LANE_VECTORS
  dpo_lanes s0{}, s1{};
  dpo_lane_mask minus_scored{};  // −1 per scored token of the full groups, per lane
#if !defined(__AVX512F__)
  dpo_lane_mask unfused = dpo_lane_mask{} + opaque_all_ones();
#endif
#else
  double s0[sum_lanes] = {}, s1[sum_lanes] = {};
#endif
  std::int64_t unfused_bits = opaque_all_ones();
  index_t count = 0;

  // dpo_unfused: the products of the scalar path are masked with unfused_bits; those of the vector
  // path with the scored lanes (with labels) or, without labels, pass through an empty asm that
  // holds them in a zmm register (AVX-512: no instruction at all; the AND cost 13 % of eq. 14) or an
  // AND with `unfused` (other targets, where the eight lanes are not one register).

  // Position j + k into lane k (scalar: the fallback and the last, partial group). An ignored
  // token adds 0 (a NaN stored there does not propagate).
  template <class T, class Label>
  CONSR_FORCEINLINE void add_one(const dpo_run<T, Label>& r, index_t j, int k, std::int64_t ignore) noexcept {
    const double a = static_cast<double>(r.logp[j + k]);
    double x0 = a, x1 = a;
    if constexpr (Reference) x0 = a - static_cast<double>(r.reference[j + k]);
    if constexpr (Weights) x1 = dpo_unfused(static_cast<double>(r.weights[j + k]) * a, unfused_bits);
    if constexpr (Labels) {
      const bool scored = static_cast<std::int64_t>(r.labels[j + k]) != ignore;
      x0 = scored ? x0 : 0.0;
      x1 = scored ? x1 : 0.0;
      count += scored ? 1 : 0;
    }
    s0[k] += x0;
    if constexpr (Second) s1[k] += x1;
  }

  // A full group of eight at position j.
  template <class T, class Label>
  CONSR_FORCEINLINE void add8(const dpo_run<T, Label>& r, index_t j, std::int64_t ignore) noexcept {
#if CONSR_DPO_LANE_VECTORS
    dpo_lanes a, x0, x1, y;
    dpo_load_lanes(r.logp + j, a);
    x0 = a;
    x1 = a;
    if constexpr (Reference) {
      dpo_load_lanes(r.reference + j, y);
      x0 = a - y;
    }
    if constexpr (Weights) {
      dpo_load_lanes(r.weights + j, y);
      x1 = y * a;
      if constexpr (!Labels) {
#if defined(__AVX512F__)
        __asm__("" : "+v"(x1));
#else
        x1 = reinterpret_cast<dpo_lanes>(reinterpret_cast<dpo_lane_mask>(x1) & unfused);
#endif
      }
    }
    if constexpr (Labels) {  // +0.0 in the ignored lanes, as the scalar select
      dpo_lane_mask scored;
      dpo_scored_lanes(r.labels + j, ignore, scored);
      x0 = reinterpret_cast<dpo_lanes>(reinterpret_cast<dpo_lane_mask>(x0) & scored);
      x1 = reinterpret_cast<dpo_lanes>(reinterpret_cast<dpo_lane_mask>(x1) & scored);
      minus_scored += scored;
    }
    s0 += x0;
    if constexpr (Second) s1 += x1;
#else
    for (int k = 0; k < sum_lanes; ++k) add_one(r, j, k, ignore);
#endif
  }

  // The last, partial group at position j: lanes [0, lanes).
  template <class T, class Label>
  CONSR_FORCEINLINE void add_tail(const dpo_run<T, Label>& r, index_t j, int lanes, std::int64_t ignore) noexcept {
    for (int k = 0; k < lanes; ++k) add_one(r, j, k, ignore);
  }

  double sum0() const noexcept { return combine(s0); }
  double sum1() const noexcept { return combine(s1); }
  index_t scored() const noexcept {
#if CONSR_DPO_LANE_VECTORS
    index_t n = count;
    for (int k = 0; k < sum_lanes; ++k) n -= static_cast<index_t>(minus_scored[k]);
    return n;
#else
    return count;
#endif
  }

  template <class Lanes>
  static double combine(const Lanes& a) noexcept {  // lane_sums' tree
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
};

/// Both sides' sums of one pair: `w` and `l` receive what lane_sums would give
/// for each side alone, bit for bit.
template <bool Labels, bool Reference, bool Weights, bool Second, class T, class Label>
CONSR_FORCEINLINE void dpo_run_pair_sums(const dpo_run<T, Label>& chosen, const dpo_run<T, Label>& rejected,
                                         std::int64_t ignore, dpo_run_sums<Labels, Reference, Weights, Second>& w,
                                         dpo_run_sums<Labels, Reference, Weights, Second>& l) noexcept {
  const index_t full_w = chosen.length - chosen.length % sum_lanes;
  const index_t full_l = rejected.length - rejected.length % sum_lanes;
  const index_t both = full_w < full_l ? full_w : full_l;
  index_t j = 0;
  for (; j < both; j += sum_lanes) {
    w.add8(chosen, j, ignore);
    l.add8(rejected, j, ignore);
  }
  for (index_t k = j; k < full_w; k += sum_lanes) w.add8(chosen, k, ignore);
  for (index_t k = j; k < full_l; k += sum_lanes) l.add8(rejected, k, ignore);
  // The last, partial groups: lane k gets position full + k, as in lane_sums.
  if (full_w < chosen.length) w.add_tail(chosen, full_w, static_cast<int>(chosen.length - full_w), ignore);
  if (full_l < rejected.length) l.add_tail(rejected, full_l, static_cast<int>(rejected.length - full_l), ignore);
}

/// One side's gradient on one pair: grad[t] = T(signed_g · ω_t) on scored
/// tokens (T(signed_g) without weights: ·1.0 is exact), 0 on ignored ones; the
/// values of dpo_backward's general loop.
template <class T, class Label>
CONSR_FORCEINLINE void dpo_run_gradient(T* grad, const dpo_run<T, Label>& r, double signed_g,
                                        std::int64_t ignore) noexcept {
  const index_t n = r.length;
  if (r.weights == nullptr && r.labels == nullptr) {
    const T v = static_cast<T>(signed_g);
    CONSR_SIMD
    for (index_t t = 0; t < n; ++t) grad[t] = v;
  } else if (r.labels == nullptr) {
    CONSR_SIMD
    for (index_t t = 0; t < n; ++t) grad[t] = static_cast<T>(signed_g * static_cast<double>(r.weights[t]));
  } else if (r.weights == nullptr) {
    const T v = static_cast<T>(signed_g);
    CONSR_SIMD
    for (index_t t = 0; t < n; ++t) grad[t] = static_cast<std::int64_t>(r.labels[t]) == ignore ? T(0) : v;
  } else {
    CONSR_SIMD
    for (index_t t = 0; t < n; ++t)
      grad[t] = static_cast<std::int64_t>(r.labels[t]) == ignore
                    ? T(0)
                    : static_cast<T>(signed_g * static_cast<double>(r.weights[t]));
  }
}

}  // namespace detail
}  // namespace consr
