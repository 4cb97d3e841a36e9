// consr/cuda/detail/linear_logprob_kernels.cuh — the kernels of the log-probs from hidden states
// (part of consr/cuda/linear_logprobs.cuh, whose comment describes the method): the GEMM operand
// types, the chunk fold of the online log-sum-exp, the finish, and the chunk gradient G, on the row
// machinery of the token log-prob kernels (logprob_kernels.cuh).
#pragma once

#include "logprob_kernels.cuh"

#include <cublas_v2.h>

#include <cstdint>
#include <type_traits>

#include "../../linear_logprobs.hpp"

namespace consr {
namespace cuda {
namespace detail {

/// Element type of the GEMM operands: T, except fp16, which is widened to fp32.
template <class T>
using linear_gemm_t = std::conditional_t<std::is_same_v<T, float16>, float, T>;
/// Element type of G for the backward GEMMs: bf16 for bf16 inputs, the accumulation type otherwise.
template <class T>
using linear_grad_t = std::conditional_t<std::is_same_v<T, bfloat16>, bfloat16, accum_t<T>>;

template <class T>
constexpr cudaDataType_t linear_cuda_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

template <class Acc>
constexpr cublasComputeType_t linear_compute_type() noexcept {
  return std::is_same_v<Acc, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
}

/// Elements of the accumulation type per 16-byte vector.
template <class Acc>
inline constexpr int linear_vec_v = static_cast<int>(16 / sizeof(Acc));

/// Row length of a chunk buffer: C rounded up to whole 16-byte vectors (rows stay aligned).
inline index_t linear_padded(index_t cols, int vec) noexcept { return (cols + vec - 1) / vec * vec; }

// ---- kernels ----------------------------------------------------------------------------------

template <class T, class Label>
struct linear_fold_args {
  const accum_t<T>* logits;  // chunk logits [rows, cols], row stride ld (a multiple of the vector width)
  index_t ld;
  index_t rows;
  int cols;
  index_t v0;          // first vocabulary entry of the chunk
  index_t vocab;
  const T* bias;       // bias + v0 (unit stride), or nullptr
  const Label* labels;
  index_t label_stride;
  double* row_max;     // [rows] running state
  double* row_sum;
  double* label_logit;
  accum_t<T> c_hi;     // as logprob_forward_args
  accum_t<T> c_lo;
  double inv_tau;
  std::int64_t ignore_index;
  bool first;          // the first chunk: no state to merge with
};

template <class T>
__device__ __forceinline__ accum_t<T> linear_bias(const T* bias, int j) {
  return bias != nullptr ? logprob_load<T>(bias + j) : accum_t<T>(0);
}

/// One block per token: the chunk row (+ bias) folded into the token's running (max, sum), and the
/// label's logit kept when the label lies in the chunk. Rows of ignored or bad labels are not read.
template <class T, class Label>
__global__ void __launch_bounds__(logprob_block_threads) linear_fold_kernel(const linear_fold_args<T, Label> a) {
  using Acc = accum_t<T>;
  constexpr int vec = linear_vec_v<Acc>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = logprob_block_threads * vpt;
  __shared__ logprob_group_scratch<Acc> scratch;
  const int lane = static_cast<int>(threadIdx.x);
  const int body_vecs = a.cols / vec;
  const int tail_begin = body_vecs * vec;

  for (index_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const std::int64_t y = static_cast<std::int64_t>(__ldg(a.labels + row * a.label_stride));
    if (!(y != a.ignore_index && y >= 0 && y < a.vocab)) continue;  // uniform per block
    const Acc* logits_row = a.logits + row * a.ld;
    logprob_running<Acc> run{logprob_neg_inf<Acc>(), 0.0};
    if (lane < a.cols - tail_begin) {
      const int j = tail_begin + lane;
      logprob_absorb(run, __ldg(logits_row + j) + linear_bias(a.bias, j), a.inv_tau, a.c_hi, a.c_lo);
    }
    const uint4* body = reinterpret_cast<const uint4*>(logits_row);
    for (int t0 = 0; t0 < body_vecs; t0 += tile_vecs) {
      Acc z[vpt][vec];
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = t0 + k * logprob_block_threads + lane;
        if (v < body_vecs) {
          const uint4 raw = __ldg(body + v);
#pragma unroll
          for (int j = 0; j < vec; ++j) z[k][j] = logprob_element<Acc>(raw, j) + linear_bias(a.bias, v * vec + j);
        } else {
#pragma unroll
          for (int j = 0; j < vec; ++j) z[k][j] = logprob_neg_inf<Acc>();
        }
      }
      Acc tile_max = z[0][0];
#pragma unroll
      for (int k = 0; k < vpt; ++k)
#pragma unroll
        for (int j = 0; j < vec; ++j) tile_max = logprob_max(tile_max, z[k][j]);
      logprob_raise_max(run, tile_max, a.inv_tau);
      const Acc shift = logprob_shift(run.max);
      Acc tile_sum = Acc(0);
#pragma unroll
      for (int k = 0; k < vpt; ++k)
#pragma unroll
        for (int j = 0; j < vec; ++j) tile_sum += logprob_term(z[k][j], shift, a.c_hi, a.c_lo);
      run.sum += static_cast<double>(tile_sum);
    }
    const logprob_total chunk = logprob_group_total<logprob_block_threads>(run, a.inv_tau, scratch);
    const double chunk_max = chunk.max, chunk_sum = chunk.sum;
    if (lane == 0) {
      if (a.first) {
        a.row_max[row] = chunk_max;
        a.row_sum[row] = chunk_sum;
      } else {
        const double old_max = a.row_max[row];
        const double new_max = fmax(old_max, chunk_max);
        a.row_sum[row] = logprob_rescaled(old_max, a.row_sum[row], new_max, a.inv_tau) +
                         logprob_rescaled(chunk_max, chunk_sum, new_max, a.inv_tau);
        a.row_max[row] = new_max;
      }
      const std::int64_t label_col = y - a.v0;
      if (label_col >= 0 && label_col < a.cols) {
        const int j = static_cast<int>(label_col);
        a.label_logit[row] = static_cast<double>(static_cast<Acc>(logits_row[j] + linear_bias(a.bias, j)));
      }
    }
  }
}

template <class T, class Label>
struct linear_finish_args {
  index_t rows;
  index_t vocab;
  const Label* labels;
  index_t label_stride;
  const double* row_max;
  const double* row_sum;
  const double* label_logit;
  accum_t<T>* token_logp;
  index_t logp_stride;
  accum_t<T>* lse;  // nullptr: not written
  index_t lse_stride;
  double tau;
  std::int64_t ignore_index;
  error_info* error;
};

/// logp = (z_y − max)/τ − log(sum), lse = max/τ + log(sum) in fp64, as the host twin.
template <class T, class Label>
__global__ void __launch_bounds__(logprob_block_threads) linear_finish_kernel(const linear_finish_args<T, Label> a) {
  using Acc = accum_t<T>;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t row = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < a.rows; row += stride) {
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    logprob_finish<Acc>(a, row, y,
                        [&] { return logprob_row_stats{a.label_logit[row], a.row_max[row], a.row_sum[row]}; });
  }
}

template <class T, class Label>
struct linear_grad_args {
  const accum_t<T>* logits;  // chunk logits; may be `grad` itself (in place): plain loads, read before written
  index_t ld;
  linear_grad_t<T>* grad;    // G [rows, cols], row stride grad_ld (a multiple of the vector width)
  index_t grad_ld;
  index_t rows;
  int cols;
  index_t v0;
  index_t vocab;
  const T* bias;  // bias + v0, or nullptr
  const Label* labels;
  index_t label_stride;
  const accum_t<T>* lse;
  index_t lse_stride;
  const accum_t<T>* grad_logp;
  index_t grad_logp_stride;
  double tau;
  accum_t<T> c_hi;
  accum_t<T> c_lo;
  std::int64_t ignore_index;
  error_info* error;
};

/// Stores one vector's worth (vec values) of G at an aligned position of a G row.
template <class G, class Acc, int Vec>
__device__ __forceinline__ void linear_store_grad(G* out, const Acc (&g)[Vec]) {
  if constexpr (std::is_same_v<G, bfloat16>) {
    static_assert(Vec == 4, "bf16 G comes from fp32 chunk logits");
    *reinterpret_cast<uint2*>(out) = make_uint2(logprob_pack2<G>(g[0], g[1]), logprob_pack2<G>(g[2], g[3]));
  } else if constexpr (std::is_same_v<G, float>) {
    *reinterpret_cast<float4*>(out) = make_float4(g[0], g[1], g[2], g[3]);
  } else {
    *reinterpret_cast<double2*>(out) = make_double2(g[0], g[1]);
  }
}

/// One block per token: G for the chunk, from its logits (+ bias), the forward's lse and g.
/// Ignored rows get 0, rows with bad labels NaN (reported once, at the first chunk).
template <class T, class Label>
__global__ void __launch_bounds__(logprob_block_threads) linear_grad_kernel(const linear_grad_args<T, Label> a) {
  using Acc = accum_t<T>;
  using G = linear_grad_t<T>;
  constexpr int vec = linear_vec_v<Acc>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = logprob_block_threads * vpt;
  const int lane = static_cast<int>(threadIdx.x);
  const int body_vecs = a.cols / vec;
  const int tail_begin = body_vecs * vec;

  for (index_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    const bool ignored = y == a.ignore_index;
    const bool scored = !ignored && y >= 0 && y < a.vocab;
    const Acc* logits_row = a.logits + row * a.ld;
    G* grad_row = a.grad + row * a.grad_ld;
    if (!scored) {
      const Acc fill = ignored ? Acc(0) : logprob_nan<Acc>();
      if (!ignored && a.v0 == 0 && lane == 0) report_error(a.error, status::label_out_of_range, row);
      if (lane < a.cols - tail_begin) logprob_store(grad_row + tail_begin + lane, fill);
      Acc g[vec];
#pragma unroll
      for (int j = 0; j < vec; ++j) g[j] = fill;
      for (int v = lane; v < body_vecs; v += logprob_block_threads) linear_store_grad(grad_row + v * vec, g);
      continue;
    }
    const logprob_grad_row<Acc> r =
        make_logprob_grad_row<Acc>(static_cast<double>(a.lse[row * a.lse_stride]),
                                   static_cast<double>(a.grad_logp[row * a.grad_logp_stride]), a.tau);
    const std::int64_t label_col = y - a.v0;  // in [0, cols) when the label lies in this chunk
    const int label_vector = label_col >= 0 && label_col < tail_begin ? static_cast<int>(label_col) / vec : -1;
    const int label_offset = static_cast<int>(label_col & (vec - 1));
    if (lane < a.cols - tail_begin) {
      const int j = tail_begin + lane;
      const Acc z = logits_row[j] + linear_bias(a.bias, j);
      const Acc g = j == label_col ? logprob_label_grad(z, r.scale, a.tau, r.lse) : logprob_grad_term(z, r, a.c_hi, a.c_lo);
      logprob_store(grad_row + j, g);
    }
    const uint4* body = reinterpret_cast<const uint4*>(logits_row);
    for (int t0 = 0; t0 < body_vecs; t0 += tile_vecs) {
      uint4 raw[vpt];
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = t0 + k * logprob_block_threads + lane;
        if (v < body_vecs) raw[k] = body[v];  // plain load: G may overwrite these logits
      }
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = t0 + k * logprob_block_threads + lane;
        if (v < body_vecs) {
          Acc z[vec];
          Acc g[vec];
#pragma unroll
          for (int j = 0; j < vec; ++j) {
            z[j] = logprob_element<Acc>(raw[k], j) + linear_bias(a.bias, v * vec + j);
            g[j] = logprob_grad_term(z[j], r, a.c_hi, a.c_lo);
          }
          if (v == label_vector) {  // once per row
            Acc z_y = Acc(0);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) z_y = z[j];
            const Acc label_grad = logprob_label_grad(z_y, r.scale, a.tau, r.lse);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) g[j] = label_grad;
          }
          linear_store_grad(grad_row + v * vec, g);
        }
      }
    }
  }
}

/// dst[i, j] = src[i * src_ld + j] widened to fp32 (fp16 inputs), dst rows of `cols` elements.
template <class T>
__global__ void linear_widen_kernel(const T* src, index_t src_ld, index_t rows, index_t cols, float* dst) {
  const index_t n = rows * cols;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const index_t i = k / cols;
    const index_t j = k - i * cols;
    dst[k] = static_cast<float>(logprob_load<T>(src + i * src_ld + j));
  }
}

/// A GEMM operand of `rows` rows of H = `cols` elements starting at `data` (leading dimension `ld`):
/// the input itself, or (fp16) its fp32 copy in `wide`, which then has leading dimension max(H, 1).
/// Sets `operand` and `ld`; returns the launch's error.
template <class T>
cudaError_t linear_gemm_operand(const T* data, index_t rows, index_t cols, float* wide, cudaStream_t stream,
                                const linear_gemm_t<T>*& operand, index_t& ld) {
  if constexpr (std::is_same_v<T, float16>) {
    linear_widen_kernel<T><<<elementwise_grid(rows * cols), elementwise_block, 0, stream>>>(data, ld, rows, cols, wide);
    operand = wide;
    ld = cols > 1 ? cols : 1;
    return cudaGetLastError();
  } else {
    (void)rows;
    (void)cols;
    (void)wide;
    (void)stream;
    operand = reinterpret_cast<const linear_gemm_t<T>*>(data);
    return cudaSuccess;
  }
}

/// Vocabulary rows per chunk (min(V, options.vocab_chunk)), checked to fit the kernels' int columns.
inline index_t linear_chunk_columns(index_t vocab, const linear_logprob_options& options, const char* fn) {
  const index_t cols_max = vocab < options.vocab_chunk ? vocab : options.vocab_chunk;
  CONSR_CHECK_ARG(cols_max < INT_MAX / 2, fn, "options.vocab_chunk", "chunks must be below 2^30 columns");
  return cols_max;
}

template <class T>
__global__ void linear_ones_kernel(T* out, index_t n) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    if constexpr (std::is_same_v<T, bfloat16>) out[k].bits = 0x3f80u;
    else out[k] = T(1);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace consr
