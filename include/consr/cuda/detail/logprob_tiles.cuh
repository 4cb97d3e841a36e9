// consr/cuda/detail/logprob_tiles.cuh — the row machinery of the log-prob kernels (part of
// consr/cuda/logprobs.cuh, whose comment describes the method; consr/cuda/linear_logprobs.cuh
// reuses it): launch constants, element access and 16-byte vector loads, the row layout (scalar
// head, aligned body, tail), and the (max, sum) reductions of a warp or a 256-thread block.
#pragma once

#include "../common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../../logprobs.hpp"
#include "../../numeric.hpp"
#include "../../view.hpp"

namespace consr {
namespace cuda {
namespace detail {

inline constexpr int logprob_block_threads = 256;
inline constexpr int logprob_vectors_per_thread = 4;  // 16-byte vectors each thread loads per tile
// Rows of at most this many 16-byte vectors are handled by one warp (two warp tiles).
inline constexpr long long logprob_warp_row_max_vectors = 2LL * 32 * logprob_vectors_per_thread;
// Forward splits: aim for this many blocks per SM in total (≈ 8 waves of 8 resident blocks), so
// that the tail of the last wave is short; never fewer than 2 tiles per split.
inline constexpr int logprob_target_blocks_per_sm = 64;
inline constexpr unsigned logprob_max_grid = 1u << 24;  // kernels loop over their work items
inline constexpr double logprob_log2e = 1.4426950408889634074;
/// Largest vocabulary the kernels take (offsets within a row are 32-bit).
inline constexpr index_t logprob_max_vocab = (index_t{1} << 31) - 64;

template <class T>
inline constexpr bool logprob_is_16bit_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

/// Elements per 16-byte vector.
template <class T>
inline constexpr int logprob_vec_v = static_cast<int>(16 / sizeof(T));

// ---- element access ---------------------------------------------------------------------------

template <class Acc>
__device__ __forceinline__ Acc logprob_neg_inf() {
  if constexpr (std::is_same_v<Acc, float>) return __int_as_float(static_cast<int>(0xff800000u));
  else return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}
template <class Acc>
__device__ __forceinline__ Acc logprob_nan() {
  if constexpr (std::is_same_v<Acc, float>) return __int_as_float(0x7fc00000);
  else return __longlong_as_double(0x7ff8000000000000ll);
}

/// A 16-byte vector whose every element is −inf (fills the slots past the end of a row: they add 0).
template <class Logit>
__device__ __forceinline__ uint4 logprob_neg_inf_vector() {
  if constexpr (std::is_same_v<Logit, double>) {
    return make_uint4(0u, 0xfff00000u, 0u, 0xfff00000u);
  } else {
    constexpr unsigned w = std::is_same_v<Logit, float> ? 0xff800000u
                           : std::is_same_v<Logit, bfloat16> ? 0xff80ff80u
                                                             : 0xfc00fc00u;
    return make_uint4(w, w, w, w);
  }
}

/// Element j of a 16-byte vector of Logit, widened (exactly) to its accumulation type.
template <class Logit>
__device__ __forceinline__ accum_t<Logit> logprob_element(const uint4& v, int j) {
  const unsigned w[4] = {v.x, v.y, v.z, v.w};  // constant-indexed once the callers' loops unroll
  if constexpr (std::is_same_v<Logit, float>) {
    return __uint_as_float(w[j]);
  } else if constexpr (std::is_same_v<Logit, double>) {
    return __hiloint2double(static_cast<int>(w[2 * j + 1]), static_cast<int>(w[2 * j]));
  } else if constexpr (std::is_same_v<Logit, bfloat16>) {
    const unsigned x = w[j >> 1];
    return __uint_as_float((j & 1) ? (x & 0xffff0000u) : (x << 16));
  } else {
    const unsigned x = w[j >> 1];
    return __half2float(__ushort_as_half(static_cast<unsigned short>((j & 1) ? (x >> 16) : (x & 0xffffu))));
  }
}

/// One element loaded from memory, widened to its accumulation type. `ReadOnly` loads go through
/// the read-only cache (only for data no thread of the kernel writes).
template <class Logit, bool ReadOnly = true>
__device__ __forceinline__ accum_t<Logit> logprob_load(const Logit* p) {
  if constexpr (logprob_is_16bit_v<Logit>) {
    const unsigned short* q = reinterpret_cast<const unsigned short*>(p);
    const unsigned short bits = ReadOnly ? __ldg(q) : *q;
    if constexpr (std::is_same_v<Logit, bfloat16>) return __uint_as_float(static_cast<unsigned>(bits) << 16);
    else return __half2float(__ushort_as_half(bits));
  } else {
    return ReadOnly ? __ldg(p) : *p;
  }
}

__device__ __forceinline__ float logprob_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double logprob_max(double a, double b) { return fmax(a, b); }

/// Maximum over a thread's tile (NaNs are dropped here: they reach the exp-sum instead). The 16-bit
/// types use packed max instructions on the raw words (two elements per instruction).
template <class Logit, int N>
__device__ __forceinline__ accum_t<Logit> logprob_tile_max(const uint4 (&raw)[N]) {
  if constexpr (logprob_is_16bit_v<Logit>) {
    using pair = std::conditional_t<std::is_same_v<Logit, bfloat16>, __nv_bfloat162, __half2>;
    static_assert(sizeof(pair) == 4, "packed 16-bit pair must be 4 bytes");
    pair m;
    {
      const unsigned w0 = raw[0].x;
      memcpy(&m, &w0, 4);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const unsigned w[4] = {raw[k].x, raw[k].y, raw[k].z, raw[k].w};
#pragma unroll
      for (int i = (k == 0 ? 1 : 0); i < 4; ++i) {
        pair p;
        memcpy(&p, &w[i], 4);
        m = __hmax2(m, p);
      }
    }
    unsigned mw;
    memcpy(&mw, &m, 4);
    uint4 packed = make_uint4(mw, 0u, 0u, 0u);
    return fmaxf(logprob_element<Logit>(packed, 0), logprob_element<Logit>(packed, 1));
  } else {
    using Acc = accum_t<Logit>;
    Acc m = logprob_element<Logit>(raw[0], 0);
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
      for (int j = (k == 0 ? 1 : 0); j < logprob_vec_v<Logit>; ++j) m = logprob_max(m, logprob_element<Logit>(raw[k], j));
    }
    return m;
  }
}

/// exp((z − shift) / τ): float as exp2f((z − shift) · (hi + lo)) with hi + lo = log2 e / τ; double
/// as exp((z − shift) · hi) with hi = 1/τ.
__device__ __forceinline__ float logprob_term(float z, float shift, float c_hi, float c_lo) {
  const float d = z - shift;
  return exp2f(fmaf(d, c_hi, d * c_lo));
}
__device__ __forceinline__ double logprob_term(double z, double shift, double c_hi, double /*c_lo*/) {
  return exp((z - shift) * c_hi);
}

// ---- row layout -------------------------------------------------------------------------------

/// A row as [0, head) scalars, `body_vecs` aligned 16-byte vectors, [tail_begin, vocab) scalars.
/// Offsets within a row are 32-bit (the host rejects V > logprob_max_vocab): fewer registers.
struct logprob_row_layout {
  int head;
  int body_vecs;
  int tail_begin;
};

template <class T>
__device__ __forceinline__ logprob_row_layout logprob_layout(const T* row, int vocab) {
  constexpr int vec = logprob_vec_v<T>;
  // The host checked that the data pointer is aligned to sizeof(T), hence every row pointer is.
  const unsigned misalign = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(row) & 15u);
  int head = misalign == 0u ? 0 : static_cast<int>((16u - misalign) / sizeof(T));
  head = head < vocab ? head : vocab;
  const int body_vecs = (vocab - head) / vec;
  return {head, body_vecs, head + body_vecs * vec};
}

// ---- group reductions (a warp, or the whole 256-thread block) -------------------------------------

struct logprob_max_op {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return logprob_max(a, b); }
};
struct logprob_sum_op {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};

// Butterfly shuffles, then (a 256-thread block) the warps' results in warp order: every lane ends
// with the same value (IEEE max and + are commutative).
template <int TPR, class T, class Op>
__device__ __forceinline__ T logprob_group_reduce(T v, T* scratch, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if constexpr (TPR == 32) {
    (void)scratch;
    return v;
  } else {
    if ((threadIdx.x & 31u) == 0u) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = scratch[0];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) r = op(r, scratch[w]);
    return r;
  }
}

template <int TPR, class T>
__device__ __forceinline__ T logprob_group_max(T v, T* scratch) {
  return logprob_group_reduce<TPR>(v, scratch, logprob_max_op{});
}

template <int TPR>
__device__ __forceinline__ double logprob_group_sum(double v, double* scratch) {
  return logprob_group_reduce<TPR>(v, scratch, logprob_sum_op{});
}

/// A running (max, sum) pair: sum = Σ exp((z − max) / τ) over the values absorbed so far.
template <class Acc>
struct logprob_running {
  Acc max;
  double sum;
};

/// Raises the running maximum to `new_max` (if larger), rescaling the sum. exp(−inf) = 0 covers the
/// first raise; a NaN sum stays NaN; a NaN new_max compares false and changes nothing.
template <class Acc>
__device__ __forceinline__ void logprob_raise_max(logprob_running<Acc>& r, Acc new_max, double inv_tau) {
  if (new_max > r.max) {
    r.sum *= exp((static_cast<double>(r.max) - static_cast<double>(new_max)) * inv_tau);
    r.max = new_max;
  }
}

/// Shift the terms are taken relative to: the running max, or 0 while it is −inf (so that −inf
/// logits give exp(−inf) = 0 rather than −inf − (−inf) = NaN).
template <class Acc>
__device__ __forceinline__ Acc logprob_shift(Acc running_max) {
  return running_max == logprob_neg_inf<Acc>() ? Acc(0) : running_max;
}

/// A pair's sum rescaled to the group maximum `to_max` (exactly the sum when the maxima are equal,
/// which also covers −inf = −inf).
__device__ __forceinline__ double logprob_rescaled(double from_max, double sum, double to_max, double inv_tau) {
  return from_max == to_max ? sum : sum * exp((from_max - to_max) * inv_tau);
}

/// Absorbs one value z into a running pair (a head or tail scalar of a row).
template <class Acc>
__device__ __forceinline__ void logprob_absorb(logprob_running<Acc>& r, Acc z, double inv_tau, Acc c_hi, Acc c_lo) {
  logprob_raise_max(r, z, inv_tau);
  r.sum += static_cast<double>(logprob_term(z, logprob_shift(r.max), c_hi, c_lo));
}

/// Shared memory of logprob_group_total: one slot per warp of a block.
template <class Acc>
struct logprob_group_scratch {
  Acc max[logprob_block_threads / 32];
  double sum[logprob_block_threads / 32];
};

/// A group's (max, sum) in fp64.
struct logprob_total {
  double max;
  double sum;
};

/// The group's total of the lanes' running pairs, in every lane: the largest max, and the sums
/// rescaled to it and added.
template <int TPR, class Acc>
__device__ __forceinline__ logprob_total logprob_group_total(const logprob_running<Acc>& run, double inv_tau,
                                                             logprob_group_scratch<Acc>& scratch) {
  const double max = static_cast<double>(logprob_group_max<TPR>(run.max, scratch.max));
  return {max, logprob_group_sum<TPR>(logprob_rescaled(static_cast<double>(run.max), run.sum, max, inv_tau),
                                      scratch.sum)};
}

}  // namespace detail
}  // namespace cuda
}  // namespace consr
