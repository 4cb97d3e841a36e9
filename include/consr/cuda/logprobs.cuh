// consr/cuda/logprobs.cuh — token log-probabilities of the labels (spec §4) on the GPU, forward and
// backward: the device twin of consr/logprobs.hpp (same options, same semantics, same outputs).
//
//   logp_i = z_i[y_i] − logsumexp_v z_i[v],   z_i = logits_i / τ
//   ∂L/∂logits_i[v] = (g_i / τ) · (1[v = y_i] − softmax(z_i)[v]),   g_i = ∂L/∂logp_i
//
// Forward: every logit is read from memory exactly once. A row is cut into tiles of
// (threads per row) × 4 16-byte vectors; each thread loads its four vectors of a tile at once (16
// KiB in flight per 256-thread block), takes their maximum (packed bf16x2/f16x2 max for the 16-bit
// types), raises its running maximum if needed (rescaling its running sum) and adds the tile's
// exp-sum. Threads combine (max, sum) pairs once per row with warp shuffles and, for 256-thread
// groups, shared memory. Rows of up to 256 vectors (2048 bf16 / 1024 fp32 logits) get one warp each
// (8 rows per block); longer rows one 256-thread block, or — in the temp-storage overload — several
// blocks per row ("splits") whose (max, sum) partials a second tiny kernel combines in a fixed
// order, so that small N still fills the GPU. Results never depend on timing: every reduction
// order is fixed by the launch shape, which depends only on N, V, the dtype and the device's SM
// count.
//
// Rows need not be 16-byte aligned (row stride and base pointer are arbitrary): each row's scalar
// head (up to its first 16-byte boundary) and tail are handled separately and the body is read as
// aligned 16-byte vectors.
//
// Accuracy: exp is evaluated as exp2f((z − m) · (log2 e / τ)), with log2 e / τ held as a float
// pair hi + lo (so neither log2 e nor 1/τ carries a rounding bias into every term; lo > 0 so that
// −inf logits give −inf, not −inf + inf = NaN) and exp2f the
// CUDA math library's documented 2-ulp exp2. A thread sums the ≤ 32 terms of one tile in fp32 and
// adds that tile sum to a per-thread fp64 accumulator; rescaling, the cross-thread and cross-block
// combination and the final z_y − m − log(sum) are fp64. The fp32 logp/lse of bf16/fp16/fp32 logits
// agree with an fp64 evaluation of the same values to well within 1e-6 plus the output's own
// rounding at V = 152064. fp64 logits run a full fp64 path (exp in double).
//
// Non-finite logits: a NaN or +inf in a row makes that row's logp and lse NaN (a NaN is dropped by
// the max but reaches the exp-sum; +inf − +inf is NaN); −inf logits other than the label's add 0.
// No other row is affected.
//
// Bad labels: a label outside [0, V) that is not ignore_index cannot be reported before the launch
// (the labels live on the device). Its row is never read; its logp and lse are NaN (backward: its
// gradient row is NaN) and the row index is recorded in the caller's error_info (the smallest such
// row wins; code status::label_out_of_range). Nothing is read or written out of bounds.
#pragma once

#include "common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../logprobs.hpp"
#include "../numeric.hpp"
#include "../view.hpp"

namespace consr {
namespace cuda {

/// Launch shape of the log-prob kernels. Zero fields mean "choose automatically" (what the public
/// functions always do); tests and benchmarks may force a shape through the detail:: entry points.
struct logprob_launch_shape {
  int threads_per_row = 0;  ///< 32 (one warp per row, 8 rows per block) or 256 (blocks per row)
  int splits = 0;           ///< blocks per row for threads_per_row = 256
};

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

// Butterfly shuffles: every lane ends with the same value (IEEE max and + are commutative).
template <int TPR, class T>
__device__ __forceinline__ T logprob_group_max(T v, T* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = logprob_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if constexpr (TPR == 32) {
    (void)scratch;
    return v;
  } else {
    if ((threadIdx.x & 31u) == 0u) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = scratch[0];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) r = logprob_max(r, scratch[w]);
    return r;
  }
}

template <int TPR>
__device__ __forceinline__ double logprob_group_sum(double v, double* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if constexpr (TPR == 32) {
    (void)scratch;
    return v;
  } else {
    if ((threadIdx.x & 31u) == 0u) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    double r = scratch[0];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) r += scratch[w];
    return r;
  }
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

// ---- forward ----------------------------------------------------------------------------------

template <class Logit, class Label>
struct logprob_forward_args {
  const Logit* logits;
  index_t rows;
  index_t vocab;
  index_t row_stride;
  const Label* labels;
  index_t label_stride;
  accum_t<Logit>* token_logp;
  index_t logp_stride;
  accum_t<Logit>* lse;  // nullptr: not written
  index_t lse_stride;
  double tau;
  double inv_tau;          // 1/τ for the fp64 rescaling
  accum_t<Logit> c_hi;     // float: log2 e / τ = c_hi + c_lo, c_lo > 0; double: 1/τ (c_lo = 0)
  accum_t<Logit> c_lo;
  std::int64_t ignore_index;
  int splits;              // blocks per row (threads_per_row = 256); > 1 → partials + combine kernel
  double2* partials;       // [rows × splits] (max, sum) when splits > 1
  error_info* error;
};

/// The last step of a row, in fp64: logp = (z_y − max)/τ − log(sum), lse = max/τ + log(sum).
template <class Logit, class Label>
__device__ void logprob_finish_row(const logprob_forward_args<Logit, Label>& a, index_t row, std::int64_t y,
                                   double row_max, double row_sum) {
  using Acc = accum_t<Logit>;
  Acc logp = Acc(0);
  Acc lse = Acc(0);
  if (y == a.ignore_index) {
    // not scored: logp = lse = 0
  } else if (y < 0 || y >= a.vocab) {
    report_error(a.error, status::label_out_of_range, row);
    logp = logprob_nan<Acc>();
    lse = logprob_nan<Acc>();
  } else {
    const double z_y = static_cast<double>(logprob_load<Logit>(a.logits + row * a.row_stride + y));
    const double log_sum = log(row_sum);
    logp = static_cast<Acc>((z_y - row_max) / a.tau - log_sum);
    lse = static_cast<Acc>(row_max / a.tau + log_sum);
  }
  a.token_logp[row * a.logp_stride] = logp;
  if (a.lse != nullptr) a.lse[row * a.lse_stride] = lse;
}

/// Work item = (row, split) for TPR = 256 (one block), or 8 consecutive rows for TPR = 32 (one
/// warp each). Control flow is uniform per group, so the group's shuffles and barriers are safe.
template <int TPR, class Logit, class Label>
__global__ void __launch_bounds__(logprob_block_threads, TPR == 32 ? 1 : 8)
    logprob_forward_kernel(const logprob_forward_args<Logit, Label> a, const index_t items) {
  static_assert(TPR == 32 || TPR == logprob_block_threads, "a row is handled by a warp or by a block");
  using Acc = accum_t<Logit>;
  constexpr int vec = logprob_vec_v<Logit>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = TPR * vpt;
  constexpr int rows_per_block = logprob_block_threads / TPR;
  const int vocab = static_cast<int>(a.vocab);
  __shared__ Acc max_scratch[logprob_block_threads / 32];
  __shared__ double sum_scratch[logprob_block_threads / 32];
  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int group = static_cast<int>(threadIdx.x) / TPR;

  for (index_t item = blockIdx.x; item < items; item += gridDim.x) {
    const index_t row = TPR == 32 ? item * rows_per_block + group : item / a.splits;
    const int split = TPR == 32 ? 0 : static_cast<int>(item % a.splits);
    if (row >= a.rows) continue;  // only the last block of the warp-per-row shape; whole warps
    const std::int64_t y = static_cast<std::int64_t>(__ldg(a.labels + row * a.label_stride));
    const bool scored = y != a.ignore_index && y >= 0 && y < a.vocab;
    double row_max = static_cast<double>(logprob_neg_inf<Acc>());
    double row_sum = 0.0;
    if (scored) {  // ignored and bad rows are never read
      const Logit* logits_row = a.logits + row * a.row_stride;
      const logprob_row_layout layout = logprob_layout(logits_row, vocab);
      logprob_running<Acc> run{logprob_neg_inf<Acc>(), 0.0};
      if (split == 0) {
        // Head and tail scalars (fewer than 2 × vec ≤ 16 elements): one per lane.
        const int edge_count = layout.head + (vocab - layout.tail_begin);
        if (lane < edge_count) {
          const int e = lane < layout.head ? lane : layout.tail_begin + (lane - layout.head);
          const Acc z = logprob_load<Logit>(logits_row + e);
          logprob_raise_max(run, z, a.inv_tau);
          run.sum += static_cast<double>(logprob_term(z, logprob_shift(run.max), a.c_hi, a.c_lo));
        }
      }
      const int tiles = (layout.body_vecs + tile_vecs - 1) / tile_vecs;
      const int tile_begin = static_cast<int>(static_cast<long long>(tiles) * split / a.splits);
      const int tile_end = static_cast<int>(static_cast<long long>(tiles) * (split + 1) / a.splits);
      const uint4* body = reinterpret_cast<const uint4*>(logits_row + layout.head);
      for (int t = tile_begin; t < tile_end; ++t) {
        uint4 raw[vpt];
        const int first = t * tile_vecs + lane;
#pragma unroll
        for (int k = 0; k < vpt; ++k) {
          const int v = first + k * TPR;
          raw[k] = v < layout.body_vecs ? __ldg(body + v) : logprob_neg_inf_vector<Logit>();
        }
        logprob_raise_max(run, logprob_tile_max<Logit>(raw), a.inv_tau);
        const Acc shift = logprob_shift(run.max);
        Acc tile_sum = Acc(0);  // ≤ 32 terms in fp32, each ≤ 1 (or NaN)
#pragma unroll
        for (int k = 0; k < vpt; ++k) {
#pragma unroll
          for (int j = 0; j < vec; ++j) tile_sum += logprob_term(logprob_element<Logit>(raw[k], j), shift, a.c_hi, a.c_lo);
        }
        run.sum += static_cast<double>(tile_sum);
      }
      const Acc group_max = logprob_group_max<TPR>(run.max, max_scratch);
      row_max = static_cast<double>(group_max);
      row_sum = logprob_group_sum<TPR>(
          logprob_rescaled(static_cast<double>(run.max), run.sum, row_max, a.inv_tau), sum_scratch);
    }
    if (lane == 0) {
      if (a.splits == 1) logprob_finish_row(a, row, y, row_max, row_sum);
      else if (scored) a.partials[row * a.splits + split] = make_double2(row_max, row_sum);
    }
  }
}

/// Second step of the split forward: one thread per row combines its splits in order.
template <class Logit, class Label>
__global__ void __launch_bounds__(logprob_block_threads)
    logprob_combine_kernel(const logprob_forward_args<Logit, Label> a) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t row = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < a.rows; row += stride) {
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    double row_max = static_cast<double>(logprob_neg_inf<accum_t<Logit>>());
    double row_sum = 0.0;
    if (y != a.ignore_index && y >= 0 && y < a.vocab) {
      const double2* p = a.partials + row * a.splits;
      for (int s = 0; s < a.splits; ++s) row_max = fmax(row_max, p[s].x);
      for (int s = 0; s < a.splits; ++s) row_sum += logprob_rescaled(p[s].x, p[s].y, row_max, a.inv_tau);
    }
    logprob_finish_row(a, row, y, row_max, row_sum);
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <class Logit, class Label, class Grad>
struct logprob_backward_args {
  const Logit* logits;  // may alias grad (in-place): read with plain loads, each element before its write
  index_t rows;
  index_t vocab;
  index_t row_stride;
  const Label* labels;
  index_t label_stride;
  const accum_t<Logit>* lse;
  index_t lse_stride;
  const accum_t<Logit>* grad_logp;
  index_t grad_logp_stride;
  Grad* grad;
  index_t grad_row_stride;
  double tau;
  accum_t<Logit> c_hi;  // as in logprob_forward_args
  accum_t<Logit> c_lo;
  std::int64_t ignore_index;
  int splits;
  error_info* error;
};

template <class Grad, class Acc>
__device__ __forceinline__ void logprob_store(Grad* out, Acc value) {
  if constexpr (std::is_same_v<Grad, bfloat16>) out->bits = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(value)));
  else if constexpr (std::is_same_v<Grad, float16>) out->bits = __half_as_ushort(__float2half_rn(static_cast<float>(value)));
  else *out = static_cast<Grad>(value);
}

template <class Grad>
__device__ __forceinline__ unsigned logprob_pack2(float lo, float hi) {
  unsigned short a, b;
  if constexpr (std::is_same_v<Grad, bfloat16>) {
    a = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    b = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  } else {
    a = __half_as_ushort(__float2half_rn(lo));
    b = __half_as_ushort(__float2half_rn(hi));
  }
  return static_cast<unsigned>(a) | (static_cast<unsigned>(b) << 16);
}

/// Bytes of alignment the vectorized store of one input vector's worth of gradients needs.
template <class Logit, class Grad>
inline constexpr unsigned logprob_store_alignment_v =
    logprob_vec_v<Logit> * sizeof(Grad) >= 16 ? 16u : static_cast<unsigned>(logprob_vec_v<Logit> * sizeof(Grad));

/// Stores the gradients of one input vector (Vec elements) with 16-byte (or 8-byte) stores when the
/// destination is aligned for them, element by element otherwise.
template <class Grad, class Acc, int Vec>
__device__ __forceinline__ void logprob_store_vector(Grad* out, const Acc (&g)[Vec], bool vectorized) {
  if (vectorized) {
    if constexpr (logprob_is_16bit_v<Grad>) {
      static_assert(Vec == 8, "16-bit gradients come from 16-bit logits");
      *reinterpret_cast<uint4*>(out) = make_uint4(logprob_pack2<Grad>(g[0], g[1]), logprob_pack2<Grad>(g[2], g[3]),
                                                  logprob_pack2<Grad>(g[4], g[5]), logprob_pack2<Grad>(g[6], g[7]));
      return;
    } else if constexpr (std::is_same_v<Grad, float> && Vec >= 4) {
#pragma unroll
      for (int c = 0; c < Vec / 4; ++c)
        reinterpret_cast<float4*>(out)[c] =
            make_float4(static_cast<float>(g[4 * c]), static_cast<float>(g[4 * c + 1]),
                        static_cast<float>(g[4 * c + 2]), static_cast<float>(g[4 * c + 3]));
      return;
    } else if constexpr (std::is_same_v<Grad, float>) {
      static_assert(Vec == 2, "fp64 logits come two to a vector");
      *reinterpret_cast<float2*>(out) = make_float2(static_cast<float>(g[0]), static_cast<float>(g[1]));
      return;
    } else {
#pragma unroll
      for (int c = 0; c < Vec / 2; ++c)
        reinterpret_cast<double2*>(out)[c] = make_double2(static_cast<double>(g[2 * c]), static_cast<double>(g[2 * c + 1]));
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < Vec; ++j) logprob_store(out + j, g[j]);
}

/// Per-row constants of the backward.
template <class Acc>
struct logprob_grad_row {
  Acc neg_scale;  // −g/τ
  double scale;   // g/τ
  double lse;
  Acc l_hi;       // float: lse · log2 e = l_hi + l_lo; double: lse
  Acc l_lo;
};

/// −(g/τ) · exp(z/τ − lse): float as exp2f(z·(c_hi + c_lo) − (l_hi + l_lo)).
__device__ __forceinline__ float logprob_grad_term(float z, const logprob_grad_row<float>& r, float c_hi, float c_lo) {
  return r.neg_scale * exp2f(fmaf(z, c_hi, -r.l_hi) + fmaf(z, c_lo, -r.l_lo));
}
__device__ __forceinline__ double logprob_grad_term(double z, const logprob_grad_row<double>& r, double c_hi,
                                                     double /*c_lo*/) {
  return r.neg_scale * exp(z * c_hi - r.l_hi);
}

/// The label's entry, (g/τ)(1 − exp(z_y/τ − lse)) in fp64 (once per row: kept out of line).
template <class Acc>
__device__ __noinline__ Acc logprob_label_grad(Acc z_y, double scale, double tau, double lse) {
  return static_cast<Acc>(scale * (1.0 - exp(static_cast<double>(z_y) / tau - lse)));
}

// Block rows: at most 64 registers, so that 4 blocks (1024 threads, 64 KiB of loads in flight) fit
// on an SM. (Warp rows are short; a cap there would only spill.)
template <int TPR, class Logit, class Label, class Grad>
__global__ void __launch_bounds__(logprob_block_threads, TPR == 32 ? 1 : 4)
    logprob_backward_kernel(const logprob_backward_args<Logit, Label, Grad> a, const index_t items) {
  static_assert(TPR == 32 || TPR == logprob_block_threads, "a row is handled by a warp or by a block");
  using Acc = accum_t<Logit>;
  constexpr int vec = logprob_vec_v<Logit>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = TPR * vpt;
  constexpr int rows_per_block = logprob_block_threads / TPR;
  const int vocab = static_cast<int>(a.vocab);
  constexpr unsigned store_alignment = logprob_store_alignment_v<Logit, Grad>;
  const int lane = static_cast<int>(threadIdx.x) % TPR;
  const int group = static_cast<int>(threadIdx.x) / TPR;

  for (index_t item = blockIdx.x; item < items; item += gridDim.x) {
    const index_t row = TPR == 32 ? item * rows_per_block + group : item / a.splits;
    const int split = TPR == 32 ? 0 : static_cast<int>(item % a.splits);
    if (row >= a.rows) continue;
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    const bool ignored = y == a.ignore_index;
    const bool scored = !ignored && y >= 0 && y < a.vocab;
    const Logit* logits_row = a.logits + row * a.row_stride;
    Grad* out_row = a.grad + row * a.grad_row_stride;
    const logprob_row_layout layout = logprob_layout(logits_row, vocab);
    const bool vectorized =
        (reinterpret_cast<std::uintptr_t>(out_row + layout.head) & (store_alignment - 1u)) == 0u;
    const int tiles = (layout.body_vecs + tile_vecs - 1) / tile_vecs;
    const int tile_begin = static_cast<int>(static_cast<long long>(tiles) * split / a.splits);
    const int tile_end = static_cast<int>(static_cast<long long>(tiles) * (split + 1) / a.splits);
    const int edge_count = layout.head + (vocab - layout.tail_begin);
    const int edge = lane < layout.head ? lane : layout.tail_begin + (lane - layout.head);  // if lane < edge_count

    if (!scored) {
      // Ignored rows get 0; rows with a bad label NaN (and an error report). Their logits are not read.
      const Acc fill = ignored ? Acc(0) : logprob_nan<Acc>();
      if (!ignored && split == 0 && lane == 0) report_error(a.error, status::label_out_of_range, row);
      if (split == 0 && lane < edge_count) logprob_store(out_row + edge, fill);
      Acc g[vec];
#pragma unroll
      for (int j = 0; j < vec; ++j) g[j] = fill;
      for (int t = tile_begin; t < tile_end; ++t) {
#pragma unroll
        for (int k = 0; k < vpt; ++k) {
          const int v = t * tile_vecs + lane + k * TPR;
          if (v < layout.body_vecs) logprob_store_vector(out_row + layout.head + v * vec, g, vectorized);
        }
      }
      continue;
    }

    logprob_grad_row<Acc> r;
    r.lse = static_cast<double>(a.lse[row * a.lse_stride]);
    r.scale = static_cast<double>(a.grad_logp[row * a.grad_logp_stride]) / a.tau;
    r.neg_scale = static_cast<Acc>(-r.scale);
    if constexpr (std::is_same_v<Acc, float>) {
      const double l = r.lse * logprob_log2e;
      r.l_hi = static_cast<float>(l);
      r.l_lo = static_cast<float>(l - static_cast<double>(r.l_hi));
    } else {
      r.l_hi = r.lse;
      r.l_lo = 0.0;
    }

    if (split == 0 && lane < edge_count) {
      const Acc z = logprob_load<Logit, false>(logits_row + edge);
      const Acc g = edge == y ? logprob_label_grad(z, r.scale, a.tau, r.lse) : logprob_grad_term(z, r, a.c_hi, a.c_lo);
      logprob_store(out_row + edge, g);
    }
    // The body vector holding the label (−1 if the label is a head/tail scalar) and its slot.
    const int label = static_cast<int>(y);
    const int label_vector = label >= layout.head && label < layout.tail_begin ? (label - layout.head) / vec : -1;
    const int label_offset = (label - layout.head) % vec;
    const uint4* body = reinterpret_cast<const uint4*>(logits_row + layout.head);
    for (int t = tile_begin; t < tile_end; ++t) {
      uint4 raw[vpt];
      const int first = t * tile_vecs + lane;
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = first + k * TPR;
        if (v < layout.body_vecs) raw[k] = body[v];  // plain load: grad may be this very memory
      }
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = first + k * TPR;
        if (v < layout.body_vecs) {
          const int e0 = layout.head + v * vec;
          Acc g[vec];
#pragma unroll
          for (int j = 0; j < vec; ++j) g[j] = logprob_grad_term(logprob_element<Logit>(raw[k], j), r, a.c_hi, a.c_lo);
          if (v == label_vector) {  // once per row
            Acc z_y = Acc(0);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) z_y = logprob_element<Logit>(raw[k], j);
            const Acc label_grad = logprob_label_grad(z_y, r.scale, a.tau, r.lse);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) g[j] = label_grad;
          }
          logprob_store_vector(out_row + e0, g, vectorized);
        }
      }
    }
  }
}

// ---- host side --------------------------------------------------------------------------------

/// Checks that a view's data pointer is aligned to its element type (the kernels' loads need it).
template <class T, int R, class S>
void logprob_check_aligned(const strided_view<T, R, S>& v, const char* fn, const char* arg) {
  CONSR_CHECK_ARG(reinterpret_cast<std::uintptr_t>(v.data()) % alignof(std::remove_cv_t<T>) == 0, fn, arg,
                  "data pointer is not aligned to its element type (", alignof(std::remove_cv_t<T>), " bytes)");
}

/// The logits of either direction: a valid, aligned [N, V] view with contiguous rows, V within range.
template <class Logit>
void logprob_check_logits(const device_view<const Logit, 2>& logits, const char* fn) {
  ::consr::detail::check_view(logits, fn, "logits");
  ::consr::detail::check_unit_inner_stride(logits, fn, "logits");
  logprob_check_aligned(logits, fn, "logits");
  CONSR_CHECK_ARG(logits.extent(1) <= logprob_max_vocab, fn, "logits", "has ", logits.extent(1),
                  " columns; at most ", logprob_max_vocab, " are supported");
}

/// A rank-1 view of one value per row.
template <class T>
void logprob_check_per_row(const device_view<T, 1>& v, index_t rows, const char* fn, const char* arg) {
  ::consr::detail::check_view(v, fn, arg);
  ::consr::detail::check_extent(v, 0, rows, fn, arg, "rows of logits");
  logprob_check_aligned(v, fn, arg);
}

inline void logprob_check_shape(const logprob_launch_shape& s, const char* fn) {
  const bool ok = s.threads_per_row == 0 || (s.threads_per_row == 32 && s.splits == 1) ||
                  (s.threads_per_row == logprob_block_threads && s.splits >= 1);
  CONSR_CHECK_ARG(ok, fn, "shape", "threads_per_row must be 32 (with splits = 1) or ", logprob_block_threads,
                  " (with splits >= 1), got ", s.threads_per_row, " and ", s.splits);
}

/// log2 e / τ as c_hi + c_lo (float) with 0 < c_lo: then both products of a −inf logit are −inf
/// and their sum too (a c_lo of the other sign, or 0, would give −inf + inf or −inf · 0 = NaN and
/// poison rows with masked logits). fp64: c_hi = 1/τ.
inline void logprob_scale_constants(double tau, float& c_hi, float& c_lo) noexcept {
  const double c = logprob_log2e / tau;
  float hi = static_cast<float>(c);
  if (static_cast<double>(hi) >= c) hi = std::nextafter(hi, 0.0f);
  const float lo = static_cast<float>(c - static_cast<double>(hi));
  c_hi = hi;
  c_lo = lo < std::numeric_limits<float>::min() ? std::numeric_limits<float>::min() : lo;  // normal under FTZ
}
inline void logprob_scale_constants(double tau, double& c_hi, double& c_lo) noexcept {
  c_hi = 1.0 / tau;
  c_lo = 0.0;
}

inline status logprob_sm_count(int& sms) noexcept {
  int device = 0;
  CONSR_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  CONSR_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (sms < 1) sms = 1;
  return status::success;
}

/// Tiles of a 256-thread row (an upper bound over all row alignments).
inline index_t logprob_block_tiles(index_t vocab, int elem_size) noexcept {
  const index_t vectors = vocab / (16 / elem_size);
  const index_t tile_vecs = index_t{logprob_block_threads} * logprob_vectors_per_thread;
  return (vectors + tile_vecs - 1) / tile_vecs;
}

inline bool logprob_warp_rows(index_t vocab, int elem_size) noexcept {
  return vocab / (16 / elem_size) <= logprob_warp_row_max_vectors;
}

/// Most blocks the forward ever gives one row (≥ 2 tiles each): what the temporary storage holds
/// partials for, whatever the device. 1 means never split.
inline int logprob_max_splits(index_t vocab, int elem_size) noexcept {
  if (logprob_warp_rows(vocab, elem_size)) return 1;
  const index_t half = logprob_block_tiles(vocab, elem_size) / 2;
  return static_cast<int>(half < 1 ? 1 : (half > 4096 ? 4096 : half));
}

/// The forward's launch shape: a warp per short row; otherwise blocks, split (up to `max_splits`)
/// until N × splits gives ≈ logprob_target_blocks_per_sm blocks per SM.
inline logprob_launch_shape logprob_forward_shape(index_t rows, index_t vocab, int elem_size, int sms,
                                                  int max_splits) noexcept {
  if (logprob_warp_rows(vocab, elem_size)) return {32, 1};
  if (max_splits <= 1 || rows <= 0) return {logprob_block_threads, 1};
  const index_t target = static_cast<index_t>(sms) * logprob_target_blocks_per_sm;
  index_t splits = (target + rows - 1) / rows;
  splits = splits < 1 ? 1 : (splits > max_splits ? max_splits : splits);
  return {logprob_block_threads, static_cast<int>(splits)};
}

/// The backward's launch shape: a warp per short row; otherwise one block per tile.
inline logprob_launch_shape logprob_backward_shape(index_t vocab, int elem_size) noexcept {
  if (logprob_warp_rows(vocab, elem_size)) return {32, 1};
  const index_t tiles = logprob_block_tiles(vocab, elem_size);
  return {logprob_block_threads, static_cast<int>(tiles < 1 ? 1 : (tiles > 65536 ? 65536 : tiles))};
}

inline index_t logprob_items(index_t rows, const logprob_launch_shape& s) noexcept {
  return s.threads_per_row == 32 ? (rows + logprob_block_threads / 32 - 1) / (logprob_block_threads / 32)
                                 : rows * s.splits;
}

inline unsigned logprob_grid(index_t items) noexcept {
  return static_cast<unsigned>(items < 1 ? 1 : (items > logprob_max_grid ? logprob_max_grid : items));
}

/// The forward behind every public overload. `temp_storage_bytes == nullptr`: no temporary storage
/// (never split). `forced` (tests, benchmarks): a launch shape instead of the automatic one; the
/// temporary storage is then sized for its splits.
template <class Logit, class Label>
status logprob_forward(void* d_temp_storage, std::size_t* temp_storage_bytes, device_view<const Logit, 2> logits,
                       device_view<const Label, 1> labels, device_view<accum_t<Logit>, 1> token_logp,
                       device_view<accum_t<Logit>, 1> lse, const logprob_options& options, error_info* error,
                       cudaStream_t stream, logprob_launch_shape forced = {}) {
  static_assert(is_supported_float_v<Logit>,
                "consr::cuda::token_logprobs: logits must be float, double, consr::bfloat16 or consr::float16");
  static_assert(is_index_type_v<Label>, "consr::cuda::token_logprobs: labels must be int32 or int64");
  constexpr const char* fn = "consr::cuda::token_logprobs";
  return guarded([&]() -> status {
    // Everything is checked before anything is launched (status::invalid_argument + message).
    ::consr::detail::check_logprob_options(options, fn);
    logprob_check_logits(logits, fn);
    const index_t rows = logits.extent(0);
    const index_t vocab = logits.extent(1);
    logprob_check_per_row(labels, rows, fn, "labels");
    logprob_check_per_row(token_logp, rows, fn, "token_logp");
    check_no_broadcast(token_logp, fn, "token_logp");
    check_optional_size(lse, rows, fn, "lse", "rows of logits");
    const bool write_lse = lse.size() != 0;
    if (write_lse) {
      logprob_check_aligned(lse, fn, "lse");
      check_no_broadcast(lse, fn, "lse");
    }
    logprob_check_shape(forced, fn);

    const bool may_split = temp_storage_bytes != nullptr;
    CONSR_CHECK_ARG(may_split || forced.splits <= 1, fn, "shape",
                    "splits > 1 need temporary storage (the overload with d_temp_storage)");
    const int elem_size = static_cast<int>(sizeof(Logit));
    const int capacity = forced.threads_per_row != 0 ? forced.splits : logprob_max_splits(vocab, elem_size);
    double2* partials = nullptr;
    if (may_split) {
      const std::size_t sizes[1] = {capacity > 1 ? static_cast<std::size_t>(rows) * static_cast<std::size_t>(capacity) *
                                                       sizeof(double2)
                                                 : 0};
      void* parts[1];
      partition_temp_storage(d_temp_storage, *temp_storage_bytes, sizes, parts, fn);
      if (d_temp_storage == nullptr) return status::success;  // size query: nothing launched
      partials = static_cast<double2*>(parts[0]);
    }
    if (rows == 0) return status::success;

    logprob_launch_shape shape = forced;
    if (shape.threads_per_row == 0) {
      int sms = 1;
      if (may_split && capacity > 1) {
        const status s = logprob_sm_count(sms);
        if (s != status::success) return s;
      }
      shape = logprob_forward_shape(rows, vocab, elem_size, sms, may_split ? capacity : 1);
    }

    logprob_forward_args<Logit, Label> a{};
    a.logits = logits.data();
    a.rows = rows;
    a.vocab = vocab;
    a.row_stride = logits.stride(0);
    a.labels = labels.data();
    a.label_stride = labels.stride(0);
    a.token_logp = token_logp.data();
    a.logp_stride = token_logp.stride(0);
    a.lse = write_lse ? lse.data() : nullptr;
    a.lse_stride = write_lse ? lse.stride(0) : 0;
    a.tau = options.temperature;
    a.inv_tau = 1.0 / options.temperature;
    logprob_scale_constants(options.temperature, a.c_hi, a.c_lo);
    a.ignore_index = options.ignore_index;
    a.splits = shape.splits;
    a.partials = shape.splits > 1 ? partials : nullptr;
    a.error = error;

    const index_t items = logprob_items(rows, shape);
    if (shape.threads_per_row == 32)
      logprob_forward_kernel<32, Logit, Label><<<logprob_grid(items), logprob_block_threads, 0, stream>>>(a, items);
    else
      logprob_forward_kernel<logprob_block_threads, Logit, Label>
          <<<logprob_grid(items), logprob_block_threads, 0, stream>>>(a, items);
    CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    if (shape.splits > 1) {
      const index_t blocks = (rows + logprob_block_threads - 1) / logprob_block_threads;
      logprob_combine_kernel<Logit, Label><<<logprob_grid(blocks), logprob_block_threads, 0, stream>>>(a);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    return status::success;
  });
}

/// The backward behind the public overload; `forced` as in logprob_forward.
template <class Logit, class Label, class Grad>
status logprob_backward(device_view<const Logit, 2> logits, device_view<const Label, 1> labels,
                        device_view<const accum_t<Logit>, 1> lse, device_view<const accum_t<Logit>, 1> grad_token_logp,
                        device_view<Grad, 2> grad_logits, const logprob_options& options, error_info* error,
                        cudaStream_t stream, logprob_launch_shape forced = {}) {
  static_assert(is_supported_float_v<Logit>,
                "consr::cuda::token_logprobs_backward: logits must be float, double, consr::bfloat16 or "
                "consr::float16");
  static_assert(is_index_type_v<Label>, "consr::cuda::token_logprobs_backward: labels must be int32 or int64");
  static_assert(!std::is_const_v<Grad> &&
                    (std::is_same_v<Grad, Logit> || std::is_same_v<Grad, float> || std::is_same_v<Grad, double>),
                "consr::cuda::token_logprobs_backward: grad_logits must be non-const and of the logits' type, "
                "float or double");
  constexpr const char* fn = "consr::cuda::token_logprobs_backward";
  return guarded([&]() -> status {
    ::consr::detail::check_logprob_options(options, fn);
    logprob_check_logits(logits, fn);
    const index_t rows = logits.extent(0);
    const index_t vocab = logits.extent(1);
    logprob_check_per_row(labels, rows, fn, "labels");
    logprob_check_per_row(lse, rows, fn, "lse");
    logprob_check_per_row(grad_token_logp, rows, fn, "grad_token_logp");
    ::consr::detail::check_view(grad_logits, fn, "grad_logits");
    ::consr::detail::check_extent(grad_logits, 0, rows, fn, "grad_logits", "rows of logits");
    ::consr::detail::check_extent(grad_logits, 1, vocab, fn, "grad_logits", "vocabulary size of logits");
    ::consr::detail::check_unit_inner_stride(grad_logits, fn, "grad_logits");
    logprob_check_aligned(grad_logits, fn, "grad_logits");
    CONSR_CHECK_ARG(rows <= 1 || vocab == 0 || grad_logits.stride(0) >= vocab || grad_logits.stride(0) <= -vocab, fn,
                    "grad_logits", "rows overlap (row stride ", grad_logits.stride(0), ", row length ", vocab, ")");
    // In place only as the very same view: each element is read by the thread that then writes it.
    const bool in_place = std::is_same_v<Grad, Logit> && views_identical(logits, grad_logits);
    CONSR_CHECK_ARG(in_place || !views_overlap(logits, grad_logits), fn, "grad_logits",
                    "overlaps 'logits' without being the same view; in-place backward needs the same pointer, "
                    "strides and element type");
    logprob_check_shape(forced, fn);
    if (rows == 0) return status::success;  // (V = 0 still launches: bad labels are reported as in the forward)

    const logprob_launch_shape shape =
        forced.threads_per_row != 0 ? forced : logprob_backward_shape(vocab, static_cast<int>(sizeof(Logit)));
    logprob_backward_args<Logit, Label, Grad> a{};
    a.logits = logits.data();
    a.rows = rows;
    a.vocab = vocab;
    a.row_stride = logits.stride(0);
    a.labels = labels.data();
    a.label_stride = labels.stride(0);
    a.lse = lse.data();
    a.lse_stride = lse.stride(0);
    a.grad_logp = grad_token_logp.data();
    a.grad_logp_stride = grad_token_logp.stride(0);
    a.grad = grad_logits.data();
    a.grad_row_stride = grad_logits.stride(0);
    a.tau = options.temperature;
    logprob_scale_constants(options.temperature, a.c_hi, a.c_lo);
    a.ignore_index = options.ignore_index;
    a.splits = shape.splits;
    a.error = error;

    const index_t items = logprob_items(rows, shape);
    if (shape.threads_per_row == 32)
      logprob_backward_kernel<32, Logit, Label, Grad>
          <<<logprob_grid(items), logprob_block_threads, 0, stream>>>(a, items);
    else
      logprob_backward_kernel<logprob_block_threads, Logit, Label, Grad>
          <<<logprob_grid(items), logprob_block_threads, 0, stream>>>(a, items);
    CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return status::success;
  });
}

}  // namespace detail

namespace detail {

/// Both token_logprobs overloads (temp_storage_bytes null: no temporary storage): the compile-time
/// checks of the views' spaces and output types, then the forward.
template <class LogitsT, class LabelsT, class LogpT, class LseT, class S1, class S2, class S3, class S4>
status token_logprobs_entry(void* d_temp_storage, std::size_t* temp_storage_bytes,
                            strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                            strided_view<LogpT, 1, S3> token_logp, strided_view<LseT, 1, S4> lse,
                            const logprob_options& options, error_info* error, cudaStream_t stream) {
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S1, "consr::cuda::token_logprobs", "logits", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S2, "consr::cuda::token_logprobs", "labels", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S3, "consr::cuda::token_logprobs", "token_logp", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S4, "consr::cuda::token_logprobs", "lse", "token_logprobs");
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  constexpr bool outputs_ok = std::is_same_v<LogpT, accum_t<Logit>> && std::is_same_v<LseT, accum_t<Logit>>;
  static_assert(outputs_ok,
                "consr::cuda::token_logprobs: token_logp and lse must be non-const device views of accum_t<Logit> "
                "(float for float/bfloat16/float16 logits, double for double)");
  if constexpr (outputs_ok && std::is_same_v<S1, device_space> && std::is_same_v<S2, device_space> &&
                std::is_same_v<S3, device_space> && std::is_same_v<S4, device_space>) {
    return logprob_forward<Logit, Label>(d_temp_storage, temp_storage_bytes, logits, labels, token_logp, lse, options,
                                         error, stream);
  } else {
    return status::invalid_argument;
  }
}

}  // namespace detail

/// Token log-probabilities on the GPU (spec §4), the device twin of consr::token_logprobs:
/// logp_i = z_i[y_i] − logsumexp_v z_i[v] with z_i = logits_i / τ, and lse_i = logsumexp_v z_i[v].
///
/// CUB-style two-phase temporary storage: with `d_temp_storage == nullptr` only
/// `temp_storage_bytes` is written (nothing launched). The storage (at most 16 bytes × N × ⌈V/16K⌉
/// for bf16, e.g. 590 KB at N = 4096, V = 152064; its size depends on N, V and the dtype only) lets
/// long rows be split over several blocks so that small N still fills the GPU.
///
/// - `logits` [N, V]: device memory, fp32/fp64/bf16/fp16, rows contiguous (any row stride, any
///   alignment of the element type).
/// - `labels` [N]: int32/int64 in [0, V), or options.ignore_index (logp = lse = 0; row not read).
/// - `token_logp`, `lse` [N]: fp32 (fp64 for fp64 logits); `lse` may be an empty view (not written).
/// - `error`: optional device error_info, zeroed by the caller; a label outside [0, V) that is not
///   ignore_index sets code = status::label_out_of_range and the smallest such row, and that row's
///   logp and lse are NaN. NaN/+inf logits make their row NaN and touch no other row.
/// Runs on `stream`, asynchronously. Returns status::invalid_argument for bad shapes, strides,
/// alignment, temperature or too little temporary storage — checked before anything is launched;
/// consr::cuda::last_error_message() then names the argument — status::device_error if a CUDA call
/// fails, status::success otherwise. Call it qualified (consr::cuda::token_logprobs): the host twin
/// is found by argument-dependent lookup too.
template <class LogitsT, class LabelsT, class LogpT, class LseT, class S1, class S2, class S3, class S4>
status token_logprobs(void* d_temp_storage, std::size_t& temp_storage_bytes, strided_view<LogitsT, 2, S1> logits,
                      strided_view<LabelsT, 1, S2> labels, strided_view<LogpT, 1, S3> token_logp,
                      strided_view<LseT, 1, S4> lse, const logprob_options& options = {},
                      error_info* error = nullptr, cudaStream_t stream = nullptr) {
  return detail::token_logprobs_entry(d_temp_storage, &temp_storage_bytes, logits, labels, token_logp, lse, options,
                                      error, stream);
}

/// token_logprobs without temporary storage: one block (or warp) per row, never split. Same
/// contract; fills the GPU once N is a few hundred rows or more.
template <class LogitsT, class LabelsT, class LogpT, class LseT, class S1, class S2, class S3, class S4>
status token_logprobs(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                      strided_view<LogpT, 1, S3> token_logp, strided_view<LseT, 1, S4> lse,
                      const logprob_options& options = {}, error_info* error = nullptr,
                      cudaStream_t stream = nullptr) {
  return detail::token_logprobs_entry(nullptr, nullptr, logits, labels, token_logp, lse, options, error, stream);
}

/// Backward of token_logprobs on the GPU (spec §4), the device twin of consr::token_logprobs_backward:
/// grad_logits_i[v] = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)), g_i = grad_token_logp[i], lse from
/// the forward with the same temperature. Rows with ignored labels get 0; rows with a label outside
/// [0, V) get NaN and are reported through `error` as in the forward. One pass; nothing is allocated.
///
/// `grad_logits` [N, V]: the logits' type, fp32 or fp64; unit inner stride; rows must not overlap. It
/// may be `logits` itself (same pointer, row stride and type: in-place); any other overlap with the
/// logits is status::invalid_argument. Stores are 16-byte vectors where the gradient rows' alignment
/// allows, scalar otherwise. Returns as token_logprobs.
template <class LogitsT, class LabelsT, class LseT, class GradLogpT, class Grad, class S1, class S2, class S3,
          class S4, class S5>
status token_logprobs_backward(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                               strided_view<LseT, 1, S3> lse, strided_view<GradLogpT, 1, S4> grad_token_logp,
                               strided_view<Grad, 2, S5> grad_logits, const logprob_options& options = {},
                               error_info* error = nullptr, cudaStream_t stream = nullptr) {
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S1, "consr::cuda::token_logprobs_backward", "logits", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S2, "consr::cuda::token_logprobs_backward", "labels", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S3, "consr::cuda::token_logprobs_backward", "lse", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S4, "consr::cuda::token_logprobs_backward", "grad_token_logp", "token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S5, "consr::cuda::token_logprobs_backward", "grad_logits", "token_logprobs");
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  using Acc = accum_t<Logit>;
  constexpr bool inputs_ok =
      std::is_same_v<std::remove_const_t<LseT>, Acc> && std::is_same_v<std::remove_const_t<GradLogpT>, Acc>;
  static_assert(inputs_ok,
                "consr::cuda::token_logprobs_backward: lse and grad_token_logp must be device views of accum_t<Logit>");
  if constexpr (inputs_ok && std::is_same_v<S1, device_space> && std::is_same_v<S2, device_space> &&
                std::is_same_v<S3, device_space> && std::is_same_v<S4, device_space> &&
                std::is_same_v<S5, device_space>) {
    return detail::logprob_backward<Logit, Label, Grad>(logits, labels, lse, grad_token_logp, grad_logits, options,
                                                        error, stream);
  } else {
    return status::invalid_argument;
  }
}

}  // namespace cuda
}  // namespace consr
