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
//
// The device code lives in detail/logprob_tiles.cuh (row layout, vector loads, group reductions)
// and detail/logprob_kernels.cuh (forward and backward kernels); this file holds the host side
// (checks, launch shapes, temporary storage) and the public entry points.
#pragma once

#include "common.cuh"
#include "detail/logprob_kernels.cuh"
#include "detail/logprob_tiles.cuh"

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

/// The checks both directions start with: the options, the logits, one label per row.
template <class Logit, class Label>
void logprob_check_inputs(const logprob_options& options, const device_view<const Logit, 2>& logits,
                          const device_view<const Label, 1>& labels, const char* fn) {
  ::consr::detail::check_logprob_options(options, fn);
  logprob_check_logits(logits, fn);
  logprob_check_per_row(labels, logits.extent(0), fn, "labels");
}

/// The per-row outputs of a forward (token_logprobs, linear_token_logprobs): token_logp of `rows`
/// elements, lse of `rows` or none (not written; `lse_what` says what the rows are), aligned and
/// without broadcast strides. Returns whether lse is written.
template <class Acc>
bool logprob_check_row_outputs(const device_view<Acc, 1>& token_logp, const device_view<Acc, 1>& lse, index_t rows,
                               const char* fn, const char* lse_what) {
  logprob_check_per_row(token_logp, rows, fn, "token_logp");
  check_no_broadcast(token_logp, fn, "token_logp");
  check_optional_size(lse, rows, fn, "lse", lse_what);
  const bool write_lse = lse.size() != 0;
  if (write_lse) {
    logprob_check_aligned(lse, fn, "lse");
    check_no_broadcast(lse, fn, "lse");
  }
  return write_lse;
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

/// The fields of a log-probs kernel's arguments that come from the logits [rows, vocab] and
/// their labels.
template <class Args, class Logit, class Label>
void logprob_set_rows(Args& a, const device_view<const Logit, 2>& logits, const device_view<const Label, 1>& labels) {
  a.logits = logits.data();
  a.rows = logits.extent(0);
  a.vocab = logits.extent(1);
  a.row_stride = logits.stride(0);
  a.labels = labels.data();
  a.label_stride = labels.stride(0);
}

/// The fields of a backward kernel's arguments (log-probs and linear log-probs) that come from the
/// forward's lse, the incoming gradient and the options (τ, its exp2 constants, ignore_index).
template <class Args, class Acc, class Options>
void logprob_set_backward_inputs(Args& a, const device_view<const Acc, 1>& lse,
                                 const device_view<const Acc, 1>& grad_token_logp, const Options& options) {
  a.lse = lse.data();
  a.lse_stride = lse.stride(0);
  a.grad_logp = grad_token_logp.data();
  a.grad_logp_stride = grad_token_logp.stride(0);
  a.tau = options.temperature;
  logprob_scale_constants(options.temperature, a.c_hi, a.c_lo);
  a.ignore_index = options.ignore_index;
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
    logprob_check_inputs(options, logits, labels, fn);
    const index_t rows = logits.extent(0);
    const index_t vocab = logits.extent(1);
    const bool write_lse = logprob_check_row_outputs(token_logp, lse, rows, fn, "rows of logits");
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
    logprob_set_rows(a, logits, labels);
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
    logprob_check_inputs(options, logits, labels, fn);
    const index_t rows = logits.extent(0);
    const index_t vocab = logits.extent(1);
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
    logprob_set_rows(a, logits, labels);
    logprob_set_backward_inputs(a, lse, grad_token_logp, options);
    a.grad = grad_logits.data();
    a.grad_row_stride = grad_logits.stride(0);
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
  constexpr bool outputs_ok = ::consr::detail::logprob_outputs_ok<Logit, LogpT, LseT>();
  if constexpr (outputs_ok && all_device_spaces_v<S1, S2, S3, S4>) {
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
  if constexpr (inputs_ok && all_device_spaces_v<S1, S2, S3, S4, S5>) {
    return detail::logprob_backward<Logit, Label, Grad>(logits, labels, lse, grad_token_logp, grad_logits, options,
                                                        error, stream);
  } else {
    return status::invalid_argument;
  }
}

}  // namespace cuda
}  // namespace consr
