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
//
// The kernels live in detail/linear_logprob_kernels.cuh; this file holds the host side (checks,
// temporary storage, the chunk loop with its cuBLAS calls) and the public entry points.
#pragma once

#include "common.cuh"
#include "detail/linear_logprob_kernels.cuh"
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

/// The chunk [v0, v0 + cols) of both directions: its weight operand (the input rows, or (fp16)
/// their fp32 copy in `wide`) and the chunk's logits [N, cols] (row-major, ld) = hidden · W_chunkᵀ,
/// i.e. column-major (cols × N) = W_chunk_cmᵀ · hidden_cm. The operand is kept for the backward's GEMMs.
template <class T>
cudaError_t linear_chunk_logits(cublasHandle_t handle, const device_view<const T, 2>& weight, index_t v0, index_t cols,
                                index_t tokens, const linear_gemm_t<T>* hidden_gemm, index_t hidden_ld, float* wide,
                                accum_t<T>* logits, index_t ld, cudaStream_t stream, const char* fn,
                                const linear_gemm_t<T>*& weight_gemm, index_t& weight_gemm_ld) {
  using Acc = accum_t<T>;
  using GemmT = linear_gemm_t<T>;
  const index_t hidden_size = weight.extent(1);
  weight_gemm_ld = linear_ld(weight);
  const cudaError_t e =
      linear_gemm_operand(weight.data() + v0 * weight.stride(0), cols, hidden_size, wide, stream, weight_gemm,
                          weight_gemm_ld);
  if (e != cudaSuccess) return e;
  linear_gemm<Acc>(handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, tokens, hidden_size, weight_gemm, linear_cuda_type<GemmT>(),
                   weight_gemm_ld, hidden_gemm, linear_cuda_type<GemmT>(), hidden_ld, Acc(0), logits,
                   linear_cuda_type<Acc>(), ld, fn, "chunk logits");
  return cudaSuccess;
}

/// Checks shared by both directions; returns (N, H, V).
template <class T, class Label>
::consr::detail::linear_extents linear_check_inputs(cublasHandle_t handle, const device_view<const T, 2>& hidden,
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
  return {hidden.extent(0), hidden.extent(1), weight.extent(0)};
}

/// What both directions share after their checks: the chunk logits [N, cols] (row-major, ld) at the
/// start of the temporary storage, hidden as the GEMM operand (fp16: its fp32 copy), and the loop
/// over the vocabulary chunks [v0, v0 + cols) that first computes each chunk's logits.
template <class T>
struct linear_chunks {
  using Acc = accum_t<T>;
  using GemmT = linear_gemm_t<T>;

  cublasHandle_t handle;
  const device_view<const T, 2>& weight;
  index_t tokens;
  index_t vocab;
  index_t cols_max;
  void* const* parts;  // the temporary storage, cut as linear_temp_layout says
  cudaStream_t stream;
  const char* fn;
  Acc* logits = nullptr;
  index_t ld = 0;
  const GemmT* hidden_gemm = nullptr;
  index_t hidden_ld = 0;

  /// Sets logits, ld and the hidden operand.
  cudaError_t prepare(const device_view<const T, 2>& hidden) {
    logits = static_cast<Acc*>(parts[linear_temp_sizes::logits]);
    ld = linear_padded(cols_max, linear_vec_v<Acc>);
    hidden_ld = linear_ld(hidden);
    return linear_gemm_operand(hidden.data(), tokens, hidden.extent(1),
                               static_cast<float*>(parts[linear_temp_sizes::hidden_wide]), stream, hidden_gemm,
                               hidden_ld);
  }

  /// For each chunk: its logits, then body(v0, cols, weight_gemm, weight_gemm_ld) with the chunk's
  /// weight operand (for the backward's GEMMs). Stops at the first status other than success.
  template <class Body>
  status for_each(Body&& body) const {
    for (index_t v0 = 0; v0 < vocab; v0 += cols_max) {
      const index_t cols = vocab - v0 < cols_max ? vocab - v0 : cols_max;
      const GemmT* weight_gemm = nullptr;
      index_t weight_gemm_ld = 0;
      CONSR_CUDA_RETURN_IF_ERROR(linear_chunk_logits<T>(handle, weight, v0, cols, tokens, hidden_gemm, hidden_ld,
                                                        static_cast<float*>(parts[linear_temp_sizes::weight_wide]),
                                                        logits, ld, stream, fn, weight_gemm, weight_gemm_ld));
      const status s = body(v0, cols, weight_gemm, weight_gemm_ld);
      if (s != status::success) return s;
    }
    return status::success;
  }
};

/// The forward behind the public overload.
template <class T, class Label>
status linear_forward(cublasHandle_t handle, void* d_temp_storage, std::size_t& temp_storage_bytes,
                      device_view<const T, 2> hidden, device_view<const T, 2> weight, device_view<const T, 1> bias,
                      device_view<const Label, 1> labels, device_view<accum_t<T>, 1> token_logp,
                      device_view<accum_t<T>, 1> lse, const linear_logprob_options& options, error_info* error,
                      cudaStream_t stream) {
  ::consr::detail::assert_linear_types<T, Label>();
  using GemmT = linear_gemm_t<T>;
  constexpr const char* fn = "consr::cuda::linear_token_logprobs";
  return guarded([&]() -> status {
    const ::consr::detail::linear_extents extents =
        linear_check_inputs(handle, hidden, weight, bias, labels, options, fn);
    const index_t tokens = extents.tokens, hidden_size = extents.hidden_size, vocab = extents.vocab;
    const bool write_lse = logprob_check_row_outputs(token_logp, lse, tokens, fn, "tokens, rows of hidden");
    const index_t cols_max = linear_chunk_columns(vocab, options, fn);
    const linear_temp_sizes sizes = linear_temp_layout<T>(tokens, hidden_size, vocab, options.vocab_chunk, true, false);
    void* parts[linear_temp_sizes::count];
    partition_temp_storage(d_temp_storage, temp_storage_bytes, sizes.bytes, parts, fn);
    if (d_temp_storage == nullptr) return status::success;
    if (tokens == 0) return status::success;
    const linear_cublas_scope scope(handle, stream, fn);

    double* row_max = static_cast<double*>(parts[linear_temp_sizes::row_max]);
    double* row_sum = static_cast<double*>(parts[linear_temp_sizes::row_sum]);
    double* label_logit = static_cast<double*>(parts[linear_temp_sizes::label_logit]);
    linear_chunks<T> chunks{handle, weight, tokens, vocab, cols_max, parts, stream, fn};
    CONSR_CUDA_RETURN_IF_ERROR(chunks.prepare(hidden));

    // The fold's and the finish's arguments: the rows, their labels and their running state.
    const auto set_rows = [&](auto& a) {
      a.rows = tokens;
      a.vocab = vocab;
      a.labels = labels.data();
      a.label_stride = labels.stride(0);
      a.row_max = row_max;
      a.row_sum = row_sum;
      a.label_logit = label_logit;
    };
    linear_fold_args<T, Label> f{};
    set_rows(f);
    f.logits = chunks.logits;
    f.ld = chunks.ld;
    logprob_scale_constants(options.temperature, f.c_hi, f.c_lo);
    f.inv_tau = 1.0 / options.temperature;
    f.ignore_index = options.ignore_index;

    const status folded = chunks.for_each([&](index_t v0, index_t cols, const GemmT*, index_t) -> status {
      f.cols = static_cast<int>(cols);
      f.v0 = v0;
      f.bias = bias.size() != 0 ? bias.data() + v0 : nullptr;
      f.first = v0 == 0;
      linear_fold_kernel<T, Label><<<linear_row_grid(tokens), logprob_block_threads, 0, stream>>>(f);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      return status::success;
    });
    if (folded != status::success) return folded;

    linear_finish_args<T, Label> fin{};
    set_rows(fin);
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
  ::consr::detail::assert_linear_types<T, Label>();
  using Acc = accum_t<T>;
  using GemmT = linear_gemm_t<T>;
  using G = linear_grad_t<T>;
  constexpr const char* fn = "consr::cuda::linear_token_logprobs_backward";
  return guarded([&]() -> status {
    const ::consr::detail::linear_extents extents =
        linear_check_inputs(handle, hidden, weight, bias, labels, options, fn);
    const index_t tokens = extents.tokens, hidden_size = extents.hidden_size, vocab = extents.vocab;
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

    linear_chunks<T> chunks{handle, weight, tokens, vocab, cols_max, parts, stream, fn};
    CONSR_CUDA_RETURN_IF_ERROR(chunks.prepare(hidden));
    Acc* const logits = chunks.logits;
    const index_t ld = chunks.ld;
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

    GemmT* ones = nullptr;
    if (want_bias) {
      ones = static_cast<GemmT*>(parts[linear_temp_sizes::ones]);
      linear_ones_kernel<GemmT><<<elementwise_grid(tokens), elementwise_block, 0, stream>>>(ones, tokens);
      CONSR_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }

    linear_grad_args<T, Label> ga{};
    ga.logits = logits;
    ga.ld = ld;
    ga.grad = grad;
    ga.grad_ld = grad_ld;
    ga.rows = tokens;
    ga.vocab = vocab;
    ga.labels = labels.data();
    ga.label_stride = labels.stride(0);
    logprob_set_backward_inputs(ga, lse, grad_token_logp, options);
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
    // Per chunk: its logits recomputed, then G (in place, or into the bf16 buffer), then the GEMMs.
    return chunks.for_each([&](index_t v0, index_t cols, const GemmT* weight_gemm, index_t weight_gemm_ld) -> status {
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
        linear_gemm<Acc>(handle, CUBLAS_OP_N, CUBLAS_OP_T, hidden_size, cols, tokens, chunks.hidden_gemm, gemm_type,
                         chunks.hidden_ld, grad, grad_type, grad_ld, Acc(1),
                         grad_weight.data() + v0 * grad_weight.stride(0), acc_type, grad_weight_ld, fn,
                         "weight gradient");
      return status::success;
    });
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
  constexpr bool outputs_ok = ::consr::detail::logprob_outputs_ok<T, LogpT, LseT>();
  if constexpr (same_type && outputs_ok && all_device_spaces_v<S1, S2, S3, S4, S5, S6>) {
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
  if constexpr (same_type && inputs_ok && outputs_ok && all_device_spaces_v<S1, S2, S3, S4, S5, S6, S7, S8, S9>) {
    return detail::linear_backward<T, Label>(handle, d_temp_storage, temp_storage_bytes, hidden, weight, bias, labels,
                                             lse, grad_token_logp, grad_hidden, grad_weight, grad_bias, options, error,
                                             stream);
  } else {
    return status::invalid_argument;
  }
}

}  // namespace cuda
}  // namespace consr
