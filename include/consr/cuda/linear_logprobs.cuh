// consr/cuda/linear_logprobs.cuh — token log-probabilities straight from the hidden states and the
// output projection, never holding the N × V logits (spec §4, last paragraph), forward and
// backward on the GPU: the device twin of consr/linear_logprobs.hpp (same options and semantics).
//
//   logits_i = W h_i + b,   z_i = logits_i / τ,   logp_i = z_i[y_i] − lse_i
//   backward, G_iv = (g_i / τ)(1[v = y_i] − exp(z_i[v] − lse_i)):
//   ∂L/∂h = G W  (overwritten),   ∂L/∂W += Gᵀ h,   ∂L/∂b += Σ_i G_i
//
// The vocabulary is walked in chunks of C = options.vocab_chunk rows of W. Per chunk, one cuBLAS
// GEMM (cublasGemmEx, fp32 accumulation) writes the chunk's logits [N, C] into the caller's
// temporary storage, and a row kernel (one 256-thread block per token, the same 16-byte tiles,
// exp2f and fp64 combination as consr/cuda/logprobs.cuh) adds the bias and folds the chunk into a
// per-token online log-sum-exp: running max, sum and the label's logit in fp64, [N] each. The
// backward recomputes each chunk's logits, turns them into G with the token backward's formula, and
// applies the GEMMs G·W_chunk (into ∂h) and Gᵀ·h (into ∂W rows of the chunk), and Gᵀ·1 (into ∂b).
//
// Precision per input type:
//  - fp32, fp64: GEMMs in the input precision (fp32 GEMMs follow the handle's math mode: TF32 only
//    if the caller enabled it), G in fp32/fp64 — as the host twin.
//  - bf16: GEMMs on the bf16 inputs with fp32 accumulation (tensor cores); the chunk logits are
//    fp32. G is rounded to bf16 for the two backward GEMMs (what a bf16 materialized path does with
//    its bf16 gradient of the logits): ∂h, ∂W, ∂b carry that 2^-9 relative rounding of each term.
//  - fp16: hidden states and each W chunk are widened to fp32 in the temporary storage and every
//    GEMM is fp32 (fp16 cannot hold the small entries of G), as the host twin does.
// Temporary storage (CUB's two-phase query) for N tokens, H hidden, C = min(vocab_chunk, V):
//   N·C·4 (chunk logits) + 24·N (forward state)  [+ N·C·2 + 2·N for bf16 backward]
//   [+ 4·(N + C)·H for fp16]   — e.g. 134 MB + 0.2 MB at N = 8192, C = 4096, bf16, where the
//   materialized bf16 logits alone are 2.5 GB.
//
// Bad labels (outside [0, V), not ignore_index): reported through `error` (smallest row), that
// row's logp and lse are NaN; in the backward its row of G is NaN, which reaches its row of ∂h and,
// through the GEMMs, all of ∂W and ∂b (loud rather than silent).
#pragma once

#include "common.cuh"
#include "logprobs.cuh"

#include <cublas_v2.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../linear_logprobs.hpp"

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
  __shared__ Acc max_scratch[logprob_block_threads / 32];
  __shared__ double sum_scratch[logprob_block_threads / 32];
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
      const Acc z = __ldg(logits_row + j) + linear_bias(a.bias, j);
      logprob_raise_max(run, z, a.inv_tau);
      run.sum += static_cast<double>(logprob_term(z, logprob_shift(run.max), a.c_hi, a.c_lo));
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
    const double chunk_max = static_cast<double>(logprob_group_max<logprob_block_threads>(run.max, max_scratch));
    const double chunk_sum = logprob_group_sum<logprob_block_threads>(
        logprob_rescaled(static_cast<double>(run.max), run.sum, chunk_max, a.inv_tau), sum_scratch);
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
    Acc logp = Acc(0);
    Acc lse = Acc(0);
    if (y == a.ignore_index) {
      // not scored
    } else if (y < 0 || y >= a.vocab) {
      report_error(a.error, status::label_out_of_range, row);
      logp = logprob_nan<Acc>();
      lse = logprob_nan<Acc>();
    } else {
      const double log_sum = log(a.row_sum[row]);
      logp = static_cast<Acc>((a.label_logit[row] - a.row_max[row]) / a.tau - log_sum);
      lse = static_cast<Acc>(a.row_max[row] / a.tau + log_sum);
    }
    a.token_logp[row * a.logp_stride] = logp;
    if (a.lse != nullptr) a.lse[row * a.lse_stride] = lse;
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

// ---- host side --------------------------------------------------------------------------------

/// Sets the handle's stream and host pointer mode for the call, restoring both afterwards.
class linear_cublas_scope {
 public:
  linear_cublas_scope(cublasHandle_t handle, cudaStream_t stream, const char* fn) : handle_(handle) {
    if (cublasGetStream(handle, &old_stream_) != CUBLAS_STATUS_SUCCESS ||
        cublasGetPointerMode(handle, &old_mode_) != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error(std::string(fn) + ": cannot read the cuBLAS handle's stream and pointer mode");
    saved_ = true;
    if (cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST) != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error(std::string(fn) + ": cannot set the cuBLAS handle's stream and pointer mode");
  }
  linear_cublas_scope(const linear_cublas_scope&) = delete;
  linear_cublas_scope& operator=(const linear_cublas_scope&) = delete;
  ~linear_cublas_scope() {
    if (saved_) {
      cublasSetStream(handle_, old_stream_);
      cublasSetPointerMode(handle_, old_mode_);
    }
  }

 private:
  cublasHandle_t handle_;
  cudaStream_t old_stream_ = nullptr;
  cublasPointerMode_t old_mode_ = CUBLAS_POINTER_MODE_HOST;
  bool saved_ = false;
};

/// C (column-major m × n, ldc) = op(A) · op(B) + beta · C, fp32/fp64 accumulation; throws (→
/// status::device_error with a message) if cuBLAS fails.
template <class Acc>
void linear_gemm(cublasHandle_t handle, cublasOperation_t op_a, cublasOperation_t op_b, index_t m, index_t n,
                 index_t k, const void* a, cudaDataType_t a_type, index_t lda, const void* b, cudaDataType_t b_type,
                 index_t ldb, Acc beta, void* c, cudaDataType_t c_type, index_t ldc, const char* fn,
                 const char* what) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // An empty sum (H = 0, or no tokens for ∂W): C = beta · C, without handing cuBLAS empty operands.
    if (beta == Acc(0)) {
      cudaStream_t stream = nullptr;
      if (cublasGetStream(handle, &stream) != CUBLAS_STATUS_SUCCESS ||
          cudaMemset2DAsync(c, static_cast<std::size_t>(ldc) * sizeof(Acc), 0, static_cast<std::size_t>(m) * sizeof(Acc),
                            static_cast<std::size_t>(n), stream) != cudaSuccess)
        throw std::runtime_error(::consr::detail::concat(fn, ": clearing the output of an empty GEMM (", what, ") failed"));
    }
    return;
  }
  const Acc alpha = Acc(1);
  const cublasStatus_t s =
      cublasGemmEx(handle, op_a, op_b, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha, a, a_type,
                   static_cast<int>(lda), b, b_type, static_cast<int>(ldb), &beta, c, c_type, static_cast<int>(ldc),
                   linear_compute_type<Acc>(), CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(::consr::detail::concat(fn, ": cuBLAS GEMM (", what, ") failed with status ",
                                                     static_cast<int>(s)));
}

/// Leading dimension handed to cuBLAS for a row-major view: its row stride, or a valid value where
/// it is never used (one row, or empty rows).
template <class T>
index_t linear_ld(const device_view<T, 2>& v) noexcept {
  const index_t cols = v.extent(1);
  return (v.extent(0) > 1 && cols > 0) ? v.stride(0) : (cols > 1 ? cols : 1);
}

/// A row-major GEMM operand: aligned, unit inner stride, rows neither overlapping nor running
/// backwards, sizes within cuBLAS's int range.
template <class T>
void linear_check_matrix(const device_view<T, 2>& v, const char* fn, const char* arg) {
  ::consr::detail::check_view(v, fn, arg);
  ::consr::detail::check_unit_inner_stride(v, fn, arg);
  logprob_check_aligned(v, fn, arg);
  const index_t cols = v.extent(1);
  CONSR_CHECK_ARG(v.extent(0) <= 1 || cols == 0 || v.stride(0) >= cols, fn, arg, "row stride ", v.stride(0),
                  " must be at least the row length ", cols, " (rows must not overlap or run backwards)");
  CONSR_CHECK_ARG(v.extent(0) < INT_MAX && cols < INT_MAX && v.stride(0) < INT_MAX, fn, arg,
                  "extents and row stride must be below 2^31 (cuBLAS)");
}

template <class T>
void linear_check_vector(const device_view<T, 1>& v, index_t n, const char* fn, const char* arg, const char* what) {
  ::consr::detail::check_view(v, fn, arg);
  ::consr::detail::check_extent(v, 0, n, fn, arg, what);
  logprob_check_aligned(v, fn, arg);
  CONSR_CHECK_ARG(v.has_unit_inner_stride(), fn, arg, "must be contiguous (stride ", v.stride(0), ", must be 1)");
}

/// Byte sizes of the temporary-storage parts (unused parts are 0).
struct linear_temp_sizes {
  enum part { logits, row_max, row_sum, label_logit, grad16, ones, hidden_wide, weight_wide, count };
  std::size_t bytes[count] = {};
};

template <class T>
linear_temp_sizes linear_temp_layout(index_t tokens, index_t hidden, index_t vocab, index_t chunk, bool forward,
                                     bool want_bias_grad) {
  using Acc = accum_t<T>;
  const index_t cols = vocab < chunk ? vocab : chunk;
  const index_t ld = linear_padded(cols, linear_vec_v<Acc>);
  const std::size_t n = static_cast<std::size_t>(tokens);
  linear_temp_sizes s;
  s.bytes[linear_temp_sizes::logits] = n * static_cast<std::size_t>(ld) * sizeof(Acc);
  if (forward) {
    s.bytes[linear_temp_sizes::row_max] = n * sizeof(double);
    s.bytes[linear_temp_sizes::row_sum] = n * sizeof(double);
    s.bytes[linear_temp_sizes::label_logit] = n * sizeof(double);
  } else {
    if (std::is_same_v<T, bfloat16>)
      s.bytes[linear_temp_sizes::grad16] = n * static_cast<std::size_t>(linear_padded(cols, 8)) * sizeof(bfloat16);
    if (want_bias_grad) s.bytes[linear_temp_sizes::ones] = n * sizeof(linear_gemm_t<T>);
  }
  if (std::is_same_v<T, float16>) {
    s.bytes[linear_temp_sizes::hidden_wide] = n * static_cast<std::size_t>(hidden) * sizeof(float);
    s.bytes[linear_temp_sizes::weight_wide] = static_cast<std::size_t>(cols) * static_cast<std::size_t>(hidden) * sizeof(float);
  }
  return s;
}

inline unsigned linear_row_grid(index_t rows) noexcept {
  return static_cast<unsigned>(rows < 1 ? 1 : (rows > 65535 * 16 ? 65535 * 16 : rows));
}

/// Checks shared by both directions; returns (N, H, V).
template <class T, class Label>
void linear_check_inputs(cublasHandle_t handle, const device_view<const T, 2>& hidden,
                         const device_view<const T, 2>& weight, const device_view<const T, 1>& bias,
                         const device_view<const Label, 1>& labels, const linear_logprob_options& options,
                         const char* fn) {
  CONSR_CHECK_ARG(handle != nullptr, fn, "handle", "is null; pass a cuBLAS handle (cublasCreate)");
  ::consr::detail::check_linear_options(options, fn);
  linear_check_matrix(hidden, fn, "hidden");
  linear_check_matrix(weight, fn, "weight");
  ::consr::detail::check_extent(weight, 1, hidden.extent(1), fn, "weight", "hidden size, columns of hidden");
  if (bias.size() != 0) linear_check_vector(bias, weight.extent(0), fn, "bias", "vocabulary size, rows of weight; or an empty view for no bias");
  logprob_check_per_row(labels, hidden.extent(0), fn, "labels");
}

/// The forward behind the public overload.
template <class T, class Label>
status linear_forward(cublasHandle_t handle, void* d_temp_storage, std::size_t& temp_storage_bytes,
                      device_view<const T, 2> hidden, device_view<const T, 2> weight, device_view<const T, 1> bias,
                      device_view<const Label, 1> labels, device_view<accum_t<T>, 1> token_logp,
                      device_view<accum_t<T>, 1> lse, const linear_logprob_options& options, error_info* error,
                      cudaStream_t stream) {
  static_assert(is_supported_float_v<T>,
                "consr::cuda::linear_token_logprobs: hidden, weight and bias must be float, double, consr::bfloat16 "
                "or consr::float16 (all the same type)");
  static_assert(is_index_type_v<Label>, "consr::cuda::linear_token_logprobs: labels must be int32 or int64");
  using Acc = accum_t<T>;
  using GemmT = linear_gemm_t<T>;
  constexpr const char* fn = "consr::cuda::linear_token_logprobs";
  return guarded([&]() -> status {
    linear_check_inputs(handle, hidden, weight, bias, labels, options, fn);
    const index_t tokens = hidden.extent(0);
    const index_t hidden_size = hidden.extent(1);
    const index_t vocab = weight.extent(0);
    logprob_check_per_row(token_logp, tokens, fn, "token_logp");
    check_no_broadcast(token_logp, fn, "token_logp");
    check_optional_size(lse, tokens, fn, "lse", "tokens, rows of hidden");
    const bool write_lse = lse.size() != 0;
    if (write_lse) {
      logprob_check_aligned(lse, fn, "lse");
      check_no_broadcast(lse, fn, "lse");
    }
    const index_t cols_max = linear_chunk_columns(vocab, options, fn);
    const linear_temp_sizes sizes = linear_temp_layout<T>(tokens, hidden_size, vocab, options.vocab_chunk, true, false);
    void* parts[linear_temp_sizes::count];
    partition_temp_storage(d_temp_storage, temp_storage_bytes, sizes.bytes, parts, fn);
    if (d_temp_storage == nullptr) return status::success;
    if (tokens == 0) return status::success;
    const linear_cublas_scope scope(handle, stream, fn);

    Acc* logits = static_cast<Acc*>(parts[linear_temp_sizes::logits]);
    double* row_max = static_cast<double*>(parts[linear_temp_sizes::row_max]);
    double* row_sum = static_cast<double*>(parts[linear_temp_sizes::row_sum]);
    double* label_logit = static_cast<double*>(parts[linear_temp_sizes::label_logit]);
    const index_t ld = linear_padded(cols_max, linear_vec_v<Acc>);

    // GEMM operands: the inputs, or (fp16) their fp32 copies.
    const GemmT* hidden_gemm = nullptr;
    index_t hidden_ld = linear_ld(hidden);
    CONSR_CUDA_RETURN_IF_ERROR(linear_gemm_operand(hidden.data(), tokens, hidden_size,
                                                   static_cast<float*>(parts[linear_temp_sizes::hidden_wide]), stream,
                                                   hidden_gemm, hidden_ld));
    const index_t weight_ld = linear_ld(weight);

    linear_fold_args<T, Label> f{};
    f.logits = logits;
    f.ld = ld;
    f.rows = tokens;
    f.vocab = vocab;
    f.labels = labels.data();
    f.label_stride = labels.stride(0);
    f.row_max = row_max;
    f.row_sum = row_sum;
    f.label_logit = label_logit;
    logprob_scale_constants(options.temperature, f.c_hi, f.c_lo);
    f.inv_tau = 1.0 / options.temperature;
    f.ignore_index = options.ignore_index;

    for (index_t v0 = 0; v0 < vocab; v0 += cols_max) {
      const index_t cols = vocab - v0 < cols_max ? vocab - v0 : cols_max;
      const GemmT* weight_gemm = nullptr;
      index_t weight_gemm_ld = weight_ld;
      CONSR_CUDA_RETURN_IF_ERROR(linear_gemm_operand(weight.data() + v0 * weight.stride(0), cols, hidden_size,
                                                     static_cast<float*>(parts[linear_temp_sizes::weight_wide]),
                                                     stream, weight_gemm, weight_gemm_ld));
      // logits[N, cols] (row-major, ld) = hidden · W_chunkᵀ, i.e. column-major (cols × N) = W_chunk_cmᵀ · hidden_cm.
      linear_gemm<Acc>(handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, tokens, hidden_size, weight_gemm,
                       linear_cuda_type<GemmT>(), weight_gemm_ld, hidden_gemm, linear_cuda_type<GemmT>(), hidden_ld,
                       Acc(0), logits, linear_cuda_type<Acc>(), ld, fn, "chunk logits");
      f.cols = static_cast<int>(cols);
      f.v0 = v0;
      f.bias = bias.size() != 0 ? bias.data() + v0 : nullptr;
      f.first = v0 == 0;
      linear_fold_kernel<T, Label><<<linear_row_grid(tokens), logprob_block_threads, 0, stream>>>(f);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }

    linear_finish_args<T, Label> fin{};
    fin.rows = tokens;
    fin.vocab = vocab;
    fin.labels = labels.data();
    fin.label_stride = labels.stride(0);
    fin.row_max = row_max;
    fin.row_sum = row_sum;
    fin.label_logit = label_logit;
    fin.token_logp = token_logp.data();
    fin.logp_stride = token_logp.stride(0);
    fin.lse = write_lse ? lse.data() : nullptr;
    fin.lse_stride = write_lse ? lse.stride(0) : 0;
    fin.tau = options.temperature;
    fin.ignore_index = options.ignore_index;
    fin.error = error;
    linear_finish_kernel<T, Label><<<elementwise_grid(tokens), logprob_block_threads, 0, stream>>>(fin);
    CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return status::success;
  });
}

/// The backward behind the public overload.
template <class T, class Label>
status linear_backward(cublasHandle_t handle, void* d_temp_storage, std::size_t& temp_storage_bytes,
                       device_view<const T, 2> hidden, device_view<const T, 2> weight, device_view<const T, 1> bias,
                       device_view<const Label, 1> labels, device_view<const accum_t<T>, 1> lse,
                       device_view<const accum_t<T>, 1> grad_token_logp, device_view<accum_t<T>, 2> grad_hidden,
                       device_view<accum_t<T>, 2> grad_weight, device_view<accum_t<T>, 1> grad_bias,
                       const linear_logprob_options& options, error_info* error, cudaStream_t stream) {
  static_assert(is_supported_float_v<T>,
                "consr::cuda::linear_token_logprobs_backward: hidden, weight and bias must be float, double, "
                "consr::bfloat16 or consr::float16 (all the same type)");
  static_assert(is_index_type_v<Label>, "consr::cuda::linear_token_logprobs_backward: labels must be int32 or int64");
  using Acc = accum_t<T>;
  using GemmT = linear_gemm_t<T>;
  using G = linear_grad_t<T>;
  constexpr const char* fn = "consr::cuda::linear_token_logprobs_backward";
  return guarded([&]() -> status {
    linear_check_inputs(handle, hidden, weight, bias, labels, options, fn);
    const index_t tokens = hidden.extent(0);
    const index_t hidden_size = hidden.extent(1);
    const index_t vocab = weight.extent(0);
    logprob_check_per_row(lse, tokens, fn, "lse");
    logprob_check_per_row(grad_token_logp, tokens, fn, "grad_token_logp");
    const bool want_hidden = grad_hidden.size() != 0;
    const bool want_weight = grad_weight.size() != 0;
    const bool want_bias = grad_bias.size() != 0;
    if (want_hidden) {
      linear_check_matrix(grad_hidden, fn, "grad_hidden");
      ::consr::detail::check_extent(grad_hidden, 0, tokens, fn, "grad_hidden", "tokens, rows of hidden; or an empty view to skip it");
      ::consr::detail::check_extent(grad_hidden, 1, hidden_size, fn, "grad_hidden", "hidden size, columns of hidden");
    }
    if (want_weight) {
      linear_check_matrix(grad_weight, fn, "grad_weight");
      ::consr::detail::check_extent(grad_weight, 0, vocab, fn, "grad_weight", "vocabulary size, rows of weight; or an empty view");
      ::consr::detail::check_extent(grad_weight, 1, hidden_size, fn, "grad_weight", "hidden size, columns of weight");
    }
    if (want_bias) linear_check_vector(grad_bias, vocab, fn, "grad_bias", "vocabulary size, rows of weight; or an empty view");
    // Outputs must not alias inputs or each other (a GEMM reading what it writes is garbage).
    check_disjoint(hidden, grad_hidden, fn, "hidden", "grad_hidden");
    check_disjoint(weight, grad_hidden, fn, "weight", "grad_hidden");
    check_disjoint(bias, grad_hidden, fn, "bias", "grad_hidden");
    check_disjoint(grad_weight, grad_hidden, fn, "grad_weight", "grad_hidden");
    check_disjoint(grad_bias, grad_hidden, fn, "grad_bias", "grad_hidden");
    check_disjoint(hidden, grad_weight, fn, "hidden", "grad_weight");
    check_disjoint(weight, grad_weight, fn, "weight", "grad_weight");
    check_disjoint(bias, grad_weight, fn, "bias", "grad_weight");
    check_disjoint(grad_bias, grad_weight, fn, "grad_bias", "grad_weight");
    check_disjoint(hidden, grad_bias, fn, "hidden", "grad_bias");
    check_disjoint(weight, grad_bias, fn, "weight", "grad_bias");
    check_disjoint(bias, grad_bias, fn, "bias", "grad_bias");
    const index_t cols_max = linear_chunk_columns(vocab, options, fn);
    const linear_temp_sizes sizes =
        linear_temp_layout<T>(tokens, hidden_size, vocab, options.vocab_chunk, false, want_bias);
    void* parts[linear_temp_sizes::count];
    partition_temp_storage(d_temp_storage, temp_storage_bytes, sizes.bytes, parts, fn);
    if (d_temp_storage == nullptr) return status::success;
    if (tokens == 0 || !(want_hidden || want_weight || want_bias)) return status::success;
    const linear_cublas_scope scope(handle, stream, fn);

    Acc* logits = static_cast<Acc*>(parts[linear_temp_sizes::logits]);
    const index_t ld = linear_padded(cols_max, linear_vec_v<Acc>);
    G* grad = nullptr;
    index_t grad_ld = ld;
    if constexpr (std::is_same_v<G, bfloat16>) {
      grad = static_cast<G*>(parts[linear_temp_sizes::grad16]);
      grad_ld = linear_padded(cols_max, 8);
    } else {
      grad = logits;  // G overwrites the chunk logits in place
    }
    const index_t grad_hidden_ld = want_hidden ? linear_ld(grad_hidden) : 1;
    const index_t grad_weight_ld = want_weight ? linear_ld(grad_weight) : 1;

    const GemmT* hidden_gemm = nullptr;
    index_t hidden_ld = linear_ld(hidden);
    CONSR_CUDA_RETURN_IF_ERROR(linear_gemm_operand(hidden.data(), tokens, hidden_size,
                                                   static_cast<float*>(parts[linear_temp_sizes::hidden_wide]), stream,
                                                   hidden_gemm, hidden_ld));
    GemmT* ones = nullptr;
    if (want_bias) {
      ones = static_cast<GemmT*>(parts[linear_temp_sizes::ones]);
      linear_ones_kernel<GemmT><<<elementwise_grid(tokens), elementwise_block, 0, stream>>>(ones, tokens);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    const index_t weight_ld = linear_ld(weight);

    linear_grad_args<T, Label> ga{};
    ga.logits = logits;
    ga.ld = ld;
    ga.grad = grad;
    ga.grad_ld = grad_ld;
    ga.rows = tokens;
    ga.vocab = vocab;
    ga.labels = labels.data();
    ga.label_stride = labels.stride(0);
    ga.lse = lse.data();
    ga.lse_stride = lse.stride(0);
    ga.grad_logp = grad_token_logp.data();
    ga.grad_logp_stride = grad_token_logp.stride(0);
    ga.tau = options.temperature;
    logprob_scale_constants(options.temperature, ga.c_hi, ga.c_lo);
    ga.ignore_index = options.ignore_index;
    ga.error = error;

    if (vocab == 0) {
      // No vocabulary: ∂h = 0 (∂W and ∂b are empty); labels other than ignore_index are still reported.
      ga.cols = 0;
      ga.v0 = 0;
      ga.bias = nullptr;
      linear_grad_kernel<T, Label><<<linear_row_grid(tokens), logprob_block_threads, 0, stream>>>(ga);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      if (want_hidden)
        CONSR_CUDA_RETURN_IF_ERROR(cudaMemset2DAsync(grad_hidden.data(), static_cast<std::size_t>(grad_hidden_ld) * sizeof(Acc), 0,
                                                     static_cast<std::size_t>(hidden_size) * sizeof(Acc),
                                                     static_cast<std::size_t>(tokens), stream));
      return status::success;
    }

    const cudaDataType_t gemm_type = linear_cuda_type<GemmT>();
    const cudaDataType_t grad_type = linear_cuda_type<G>();
    const cudaDataType_t acc_type = linear_cuda_type<Acc>();
    for (index_t v0 = 0; v0 < vocab; v0 += cols_max) {
      const index_t cols = vocab - v0 < cols_max ? vocab - v0 : cols_max;
      const GemmT* weight_gemm = nullptr;
      index_t weight_gemm_ld = weight_ld;
      CONSR_CUDA_RETURN_IF_ERROR(linear_gemm_operand(weight.data() + v0 * weight.stride(0), cols, hidden_size,
                                                     static_cast<float*>(parts[linear_temp_sizes::weight_wide]),
                                                     stream, weight_gemm, weight_gemm_ld));
      // Recompute the chunk's logits, then G (in place, or into the bf16 buffer).
      linear_gemm<Acc>(handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, tokens, hidden_size, weight_gemm, gemm_type,
                       weight_gemm_ld, hidden_gemm, gemm_type, hidden_ld, Acc(0), logits, acc_type, ld, fn,
                       "chunk logits");
      ga.cols = static_cast<int>(cols);
      ga.v0 = v0;
      ga.bias = bias.size() != 0 ? bias.data() + v0 : nullptr;
      linear_grad_kernel<T, Label><<<linear_row_grid(tokens), logprob_block_threads, 0, stream>>>(ga);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      // ∂b[v0 : v0 + cols] += Gᵀ · 1: column-major (cols × 1) = G_cm (cols × N) · ones (N × 1).
      if (want_bias)
        linear_gemm<Acc>(handle, CUBLAS_OP_N, CUBLAS_OP_N, cols, 1, tokens, grad, grad_type, grad_ld, ones, gemm_type,
                         tokens, Acc(1), grad_bias.data() + v0, acc_type, cols, fn, "bias gradient");
      // ∂h (=, then +=) G · W_chunk: column-major (H × N) = W_chunk_cm (H × cols) · G_cm (cols × N).
      if (want_hidden)
        linear_gemm<Acc>(handle, CUBLAS_OP_N, CUBLAS_OP_N, hidden_size, tokens, cols, weight_gemm, gemm_type,
                         weight_gemm_ld, grad, grad_type, grad_ld, v0 == 0 ? Acc(0) : Acc(1), grad_hidden.data(),
                         acc_type, grad_hidden_ld, fn, "hidden gradient");
      // ∂W_chunk += Gᵀ · h: column-major (H × cols) = hidden_cm (H × N) · G_cmᵀ (N × cols).
      if (want_weight)
        linear_gemm<Acc>(handle, CUBLAS_OP_N, CUBLAS_OP_T, hidden_size, cols, tokens, hidden_gemm, gemm_type, hidden_ld,
                         grad, grad_type, grad_ld, Acc(1), grad_weight.data() + v0 * grad_weight.stride(0), acc_type,
                         grad_weight_ld, fn, "weight gradient");
    }
    return status::success;
  });
}

}  // namespace detail

/// Token log-probabilities from hidden states and the output projection on the GPU (spec §4, last
/// paragraph), the device twin of consr::linear_token_logprobs: logp_i = z_i[y_i] − lse_i,
/// lse_i = logsumexp_v z_i[v], z_i = (W h_i + b) / τ, without ever holding the N × V logits.
///
/// - `handle`: the caller's cuBLAS handle; for the call its stream is set to `stream` and its pointer
///   mode to host, both restored afterwards (its math mode is left as the caller set it).
/// - CUB-style temporary storage: with `d_temp_storage == nullptr` only `temp_storage_bytes` is
///   written (about N · min(vocab_chunk, V) · 4 + 24 N bytes; see the file comment).
/// - `hidden` [N, H], `weight` [V, H], `bias` [V] (contiguous) or an empty view: one element type T
///   (fp32, fp64, bf16, fp16), device memory, rows contiguous with row stride ≥ H.
/// - `labels` [N] int32/int64: y_i in [0, V) or options.ignore_index (logp = lse = 0).
/// - `token_logp`, `lse` [N]: accum_t<T>; `lse` may be an empty view.
/// - `options`: temperature, ignore_index and vocab_chunk (columns per GEMM) as the host twin.
/// - `error`: optional zeroed device error_info for labels outside [0, V) (their rows: NaN).
/// Returns status::invalid_argument (nothing launched; last_error_message() names the argument) for
/// bad shapes, strides, alignment, options, a null handle or too little temporary storage;
/// status::device_error if CUDA or cuBLAS fails; status::success otherwise. Asynchronous on `stream`.
template <class HiddenT, class WeightT, class BiasT, class LabelT, class LogpT, class LseT, class S1, class S2,
          class S3, class S4, class S5, class S6>
status linear_token_logprobs(cublasHandle_t handle, void* d_temp_storage, std::size_t& temp_storage_bytes,
                             strided_view<HiddenT, 2, S1> hidden, strided_view<WeightT, 2, S2> weight,
                             strided_view<BiasT, 1, S3> bias, strided_view<LabelT, 1, S4> labels,
                             strided_view<LogpT, 1, S5> token_logp, strided_view<LseT, 1, S6> lse,
                             const linear_logprob_options& options = {}, error_info* error = nullptr,
                             cudaStream_t stream = nullptr) {
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S1, "consr::cuda::linear_token_logprobs", "hidden", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S2, "consr::cuda::linear_token_logprobs", "weight", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S3, "consr::cuda::linear_token_logprobs", "bias", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S4, "consr::cuda::linear_token_logprobs", "labels", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S5, "consr::cuda::linear_token_logprobs", "token_logp", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S6, "consr::cuda::linear_token_logprobs", "lse", "linear_token_logprobs");
  using T = std::remove_const_t<HiddenT>;
  using Label = std::remove_const_t<LabelT>;
  constexpr bool same_type =
      std::is_same_v<std::remove_const_t<WeightT>, T> && std::is_same_v<std::remove_const_t<BiasT>, T>;
  static_assert(same_type, "consr::cuda::linear_token_logprobs: hidden, weight and bias must have one element type");
  constexpr bool outputs_ok = std::is_same_v<LogpT, accum_t<T>> && std::is_same_v<LseT, accum_t<T>>;
  static_assert(outputs_ok,
                "consr::cuda::linear_token_logprobs: token_logp and lse must be non-const device views of "
                "accum_t<T> (float for float/bfloat16/float16, double for double)");
  if constexpr (same_type && outputs_ok && std::is_same_v<S1, device_space> && std::is_same_v<S2, device_space> &&
                std::is_same_v<S3, device_space> && std::is_same_v<S4, device_space> &&
                std::is_same_v<S5, device_space> && std::is_same_v<S6, device_space>) {
    return detail::linear_forward<T, Label>(handle, d_temp_storage, temp_storage_bytes, hidden, weight, bias, labels,
                                            token_logp, lse, options, error, stream);
  } else {
    return status::invalid_argument;
  }
}

/// Backward of linear_token_logprobs on the GPU, the device twin of
/// consr::linear_token_logprobs_backward: with G_iv = (g_i / τ)(1[v = y_i] − exp(z_i[v] − lse_i)),
///   grad_hidden = G W (overwritten), grad_weight += Gᵀ h, grad_bias += Σ_i G_i (accumulated),
/// each accum_t<T> [N, H] / [V, H] / [V] or an empty view to skip it. `lse` is the forward's (same
/// options). Each chunk's logits are recomputed: three GEMMs per chunk (two if ∂W is skipped).
/// Temporary storage as the forward (plus N · C · 2 bytes for bf16's G and N values for ∂b).
/// Outputs must not overlap the inputs or each other. Returns as linear_token_logprobs.
template <class HiddenT, class WeightT, class BiasT, class LabelT, class LseT, class GradLogpT, class S1, class S2,
          class S3, class S4, class S5, class S6, class S7, class S8, class S9, class GH, class GW, class GB>
status linear_token_logprobs_backward(cublasHandle_t handle, void* d_temp_storage, std::size_t& temp_storage_bytes,
                                      strided_view<HiddenT, 2, S1> hidden, strided_view<WeightT, 2, S2> weight,
                                      strided_view<BiasT, 1, S3> bias, strided_view<LabelT, 1, S4> labels,
                                      strided_view<LseT, 1, S5> lse, strided_view<GradLogpT, 1, S6> grad_token_logp,
                                      strided_view<GH, 2, S7> grad_hidden, strided_view<GW, 2, S8> grad_weight,
                                      strided_view<GB, 1, S9> grad_bias, const linear_logprob_options& options = {},
                                      error_info* error = nullptr, cudaStream_t stream = nullptr) {
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S1, "consr::cuda::linear_token_logprobs_backward", "hidden", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S2, "consr::cuda::linear_token_logprobs_backward", "weight", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S3, "consr::cuda::linear_token_logprobs_backward", "bias", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S4, "consr::cuda::linear_token_logprobs_backward", "labels", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S5, "consr::cuda::linear_token_logprobs_backward", "lse", "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S6, "consr::cuda::linear_token_logprobs_backward", "grad_token_logp",
                                 "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S7, "consr::cuda::linear_token_logprobs_backward", "grad_hidden",
                                 "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S8, "consr::cuda::linear_token_logprobs_backward", "grad_weight",
                                 "linear_token_logprobs");
  CONSR_CUDA_REQUIRE_DEVICE_VIEW(S9, "consr::cuda::linear_token_logprobs_backward", "grad_bias",
                                 "linear_token_logprobs");
  using T = std::remove_const_t<HiddenT>;
  using Label = std::remove_const_t<LabelT>;
  using Acc = accum_t<T>;
  constexpr bool same_type =
      std::is_same_v<std::remove_const_t<WeightT>, T> && std::is_same_v<std::remove_const_t<BiasT>, T>;
  static_assert(same_type,
                "consr::cuda::linear_token_logprobs_backward: hidden, weight and bias must have one element type");
  constexpr bool inputs_ok =
      std::is_same_v<std::remove_const_t<LseT>, Acc> && std::is_same_v<std::remove_const_t<GradLogpT>, Acc>;
  static_assert(inputs_ok,
                "consr::cuda::linear_token_logprobs_backward: lse and grad_token_logp must be device views of "
                "accum_t<T>");
  constexpr bool outputs_ok = std::is_same_v<GH, Acc> && std::is_same_v<GW, Acc> && std::is_same_v<GB, Acc>;
  static_assert(outputs_ok,
                "consr::cuda::linear_token_logprobs_backward: grad_hidden, grad_weight and grad_bias must be "
                "non-const device views of accum_t<T>");
  if constexpr (same_type && inputs_ok && outputs_ok && std::is_same_v<S1, device_space> &&
                std::is_same_v<S2, device_space> && std::is_same_v<S3, device_space> &&
                std::is_same_v<S4, device_space> && std::is_same_v<S5, device_space> &&
                std::is_same_v<S6, device_space> && std::is_same_v<S7, device_space> &&
                std::is_same_v<S8, device_space> && std::is_same_v<S9, device_space>) {
    return detail::linear_backward<T, Label>(handle, d_temp_storage, temp_storage_bytes, hidden, weight, bias, labels,
                                             lse, grad_token_logp, grad_hidden, grad_weight, grad_bias, options, error,
                                             stream);
  } else {
    return status::invalid_argument;
  }
}

}  // namespace cuda
}  // namespace consr
