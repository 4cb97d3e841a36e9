// consr/logprobs.hpp — token log-probabilities of the labels under the softmax
// of the logits (spec §4), forward and backward, on the host.
//
//   logp_i = z_i[y_i] − logsumexp_v z_i[v],   z_i = logits_i / τ
//   ∂L/∂logits_i[v] = (g_i / τ) · (1[v = y_i] − softmax(z_i)[v]),   g_i = ∂L/∂logp_i
//
// This is the hot loop of every ConSR step (three scoring passes per candidate,
// vocabularies of 152064), so the forward reads each row from memory exactly
// once: the row is walked in L1-sized blocks, each block is max-reduced and then
// exp-summed from cache with an online log-sum-exp (the running sum is rescaled
// when the maximum grows). Nothing proportional to N × V is allocated or
// written. The inner loops are `omp simd` loops over a branch-free exp
// (detail/exp.hpp), so they vectorize with whatever ISA the user compiles for.
//
// Accuracy: fp32/bf16/fp16 inputs accumulate in fp32 over short chunks whose
// sums are added in fp64, and the final z_y − max − log(sum) is formed in
// fp64, so logp and lse agree with an fp64 reference to about 1e-7 even at
// V = 152064. fp64 inputs run a full fp64 path.
//
// Memory: while one block is being exp-summed, the next one is prefetched, so
// the memory traffic overlaps the arithmetic instead of alternating with it. The
// backward writes a gradient larger than detail::streaming_store_min_bytes with
// streaming stores (detail/streaming_store.hpp): plain stores would first read
// every destination line, doubling the traffic of the N × V output.
//
// Determinism: rows run in parallel under OpenMP, each row by one thread in a
// fixed order, so results are bitwise identical for any thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "config.hpp"
#include "detail/exp.hpp"
#include "detail/logprob_exp_avx512.hpp"
#include "detail/streaming_store.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "view.hpp"


namespace consr {

/// Options of token_logprobs / token_logprobs_backward.
struct logprob_options {
  /// Softmax temperature τ: the logits are divided by it. Must be finite and > 0.
  double temperature = 1.0;
  /// Rows whose label equals this value are not scored: logp = 0, lse = 0, gradient 0.
  std::int64_t ignore_index = default_ignore_index;
};

namespace detail {

/// Elements per block: one block (8 KiB of fp32) is read from memory once and
/// then max-reduced and exp-summed from L1.
inline constexpr index_t logprob_block = 2048;
/// Terms per fp32 partial sum before it is added into the fp64 row sum; keeps
/// the fp32 rounding error of the sum near 1e-7 relative whatever V is.
inline constexpr index_t logprob_chunk = 256;
/// How far ahead of the block being summed the sparse L2 requests go (prefetch_ahead_to_l2).
inline constexpr index_t logprob_prefetch_blocks_ahead = 4;
/// Rows are split across threads only above this many logits (thread start-up
/// costs more than small problems).
inline constexpr double logprob_parallel_min_elements = 65536.0;

/// 1/τ as an unevaluated sum hi + lo in Acc. Multiplying by a single rounded
/// fp32 1/τ would bias every scaled logit by the same relative error (up to
/// 6e-8), which shifts log-probs of magnitude ~40 by 2e-6; the split removes it.
template <class Acc>
struct inverse_temperature {
  Acc hi;
  Acc lo;
  explicit inverse_temperature(double tau) noexcept {
    const double inv = 1.0 / tau;
    hi = static_cast<Acc>(inv);
    lo = static_cast<Acc>(std::is_same_v<Acc, float> ? inv - static_cast<double>(hi) : 0.0);
  }
};

// Maximum of a block, kept per lane in a small array: the element-wise max over
// 32 lanes vectorizes with GCC and Clang alike (no reduction to recognize), and
// gives several independent max chains, so the instruction's latency is hidden
// (one chain would make this loop, not the exp-sum, the bottleneck).
template <class Acc, class Logit>
CONSR_FORCEINLINE Acc logprob_block_max(const Logit* CONSR_RESTRICT block, index_t n) noexcept {
#if CONSR_LOGPROBS_AVX512
  if constexpr (std::is_same_v<Logit, bfloat16> && std::is_same_v<Acc, float>)
    return logprob_block_max_bf16_avx512(block, n);
#endif
  constexpr int lanes = 32;
  constexpr Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  Acc lane_max[lanes];
  for (int l = 0; l < lanes; ++l) lane_max[l] = neg_inf;
  index_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    CONSR_SIMD
    for (int l = 0; l < lanes; ++l) {
      const Acc v = to_accum<Acc>(block[j + l]);
      lane_max[l] = v > lane_max[l] ? v : lane_max[l];
    }
  }
  Acc m = neg_inf;
  for (; j < n; ++j) {
    const Acc v = to_accum<Acc>(block[j]);
    m = v > m ? v : m;
  }
  for (int l = 0; l < lanes; ++l) m = lane_max[l] > m ? lane_max[l] : m;
  return m;
}

// exp of a non-positive argument (or NaN): the forward only exponentiates z − max ≤ 0, so the fp32
// path skips the overflow handling of vector_exp (bitwise the same values, fewer instructions).
CONSR_FORCEINLINE float logprob_exp_nonpositive(float x) noexcept { return vector_exp_nonpositive(x); }
CONSR_FORCEINLINE double logprob_exp_nonpositive(double x) noexcept { return vector_exp(x); }


// Σ_j exp((z_j − shift) / τ) over one chunk, in Acc. shift is the running maximum, so every
// argument is ≤ 0 (or NaN, which propagates).
template <bool Scaled, class Acc, class Logit>
CONSR_FORCEINLINE Acc logprob_sum_exp(const Logit* CONSR_RESTRICT chunk, index_t n, Acc shift,
                                      inverse_temperature<Acc> inv_tau) noexcept {
#if CONSR_LOGPROBS_AVX512
  if constexpr (std::is_same_v<Acc, float> && (std::is_same_v<Logit, float> || std::is_same_v<Logit, bfloat16>))
    return logprob_sum_exp_avx512<Scaled>(chunk, n, shift, inv_tau.hi, inv_tau.lo);
#endif
  Acc sum = 0;
  CONSR_SIMD_REDUCTION(+, sum)
  for (index_t j = 0; j < n; ++j) {
    Acc d = to_accum<Acc>(chunk[j]) - shift;
    if constexpr (Scaled) {
      if constexpr (std::is_same_v<Acc, float>) d = d * inv_tau.hi + d * inv_tau.lo;
      else d = d * inv_tau.hi;
    }
    sum += logprob_exp_nonpositive(d);
  }
  return sum;
}

template <class Logit>
bool logprob_block_has_nan(const Logit* block, index_t n) noexcept {
  for (index_t j = 0; j < n; ++j) {
    const auto v = to_accum<accum_t<Logit>>(block[j]);
    if (v != v) return true;
  }
  return false;
}

/// logsumexp of one row, as max_logit / τ + log_sum (both in fp64), and the
/// row's results from it (formed in fp64; token_logprobs and
/// linear_token_logprobs both use these).
struct row_logsumexp {
  double max_logit;  ///< max_v logits[v] (unscaled)
  double log_sum;    ///< log Σ_v exp((logits[v] − max_logit) / τ)

  /// logp = (z_y − max) / τ − log Σ, for the label's (unscaled) logit z_y.
  double logp(double label_logit, double tau) const noexcept { return (label_logit - max_logit) / tau - log_sum; }
  /// lse = max / τ + log Σ.
  double lse(double tau) const noexcept { return max_logit / tau + log_sum; }
};

// Folds one block of a row into the online log-sum-exp (running max m, running sum): the block's
// maximum, a rescale of the running sum if the maximum grew, then the block's exp-sum relative to
// the running maximum, in fp32 chunks added in fp64. `prefetch` issues the forward's prefetches:
// prefetch.before_sum() once, prefetch.before_chunk(c) before chunk c (no `if` on c: GCC splits a
// loop at such a condition, and the split copy loses the `omp simd` of the inner loop).
template <bool Scaled, class Acc, class Logit, class Prefetch>
CONSR_FORCEINLINE void logprob_fold_block(const Logit* block, index_t n, Acc& m, double& sum, double tau,
                                          inverse_temperature<Acc> inv_tau, const Prefetch& prefetch) noexcept {
  constexpr Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  const Acc block_max = logprob_block_max<Acc>(block, n);
  if (block_max > m) {
    // First block: exp(-inf) = 0 and sum is 0 anyway. A NaN sum stays NaN.
    sum *= std::exp((static_cast<double>(m) - static_cast<double>(block_max)) / tau);
    m = block_max;
  }
  if (m == neg_inf) {
    // Every logit so far is -inf: they add nothing, but z − m would be NaN.
    // The max reduction may have dropped a NaN, which must still poison the row.
    if (logprob_block_has_nan(block, n)) sum = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  // A NaN or +inf logit makes m or the terms NaN/inf, hence the sum NaN: that
  // row's result is NaN and no other row is touched (spec §4).
  prefetch.before_sum();
  for (index_t c = 0; c < n; c += logprob_chunk) {
    prefetch.before_chunk(c);
    sum += static_cast<double>(logprob_sum_exp<Scaled>(block + c, std::min(logprob_chunk, n - c), m, inv_tau));
  }
}

// The prefetch policies of logprob_fold_block. Members, not lambdas, and always inlined: GCC deems
// a function that only prefetches free of effects and deletes calls to it that are not inlined
// first (lambdas were, and the forward lost its prefetches).
struct no_prefetch {
  CONSR_FORCEINLINE void before_sum() const noexcept {}
  CONSR_FORCEINLINE void before_chunk(index_t) const noexcept {}
};
template <class Logit>
struct row_block_prefetch {
  const Logit* row;
  index_t block_begin, vocab;
  index_t next_begin, next_n;  // the next block
  // The pages the stream will reach four blocks later (see prefetch_ahead_to_l2).
  CONSR_FORCEINLINE void before_sum() const noexcept {
    const index_t far_begin = std::min(block_begin + logprob_prefetch_blocks_ahead * logprob_block, vocab);
    prefetch_ahead_to_l2(row + far_begin,
                         static_cast<std::size_t>(std::min(logprob_block, vocab - far_begin)) * sizeof(Logit));
  }
  // Chunk c's slice of the next block.
  CONSR_FORCEINLINE void before_chunk(index_t c) const noexcept {
    const index_t pf_begin = std::min(c, next_n);
    const index_t pf_end = std::min(c + logprob_chunk, next_n);
    prefetch_range(row + next_begin + pf_begin, static_cast<std::size_t>(pf_end - pf_begin) * sizeof(Logit), false);
  }
};

// One pass over the row, block by block (logprob_fold_block), with the next block prefetched
// slice by slice while this one is summed.
template <bool Scaled, class Logit>
row_logsumexp logprob_row(const Logit* row, index_t vocab, double tau,
                          inverse_temperature<accum_t<Logit>> inv_tau) noexcept {
  using Acc = accum_t<Logit>;
  double sum = 0.0;
  Acc m = -std::numeric_limits<Acc>::infinity();
  for (index_t b = 0; b < vocab; b += logprob_block) {
    const index_t next_begin = std::min(b + logprob_block, vocab);
    const row_block_prefetch<Logit> prefetch{row, b, vocab, next_begin, std::min(logprob_block, vocab - next_begin)};
    logprob_fold_block<Scaled>(row + b, std::min(logprob_block, vocab - b), m, sum, tau, inv_tau, prefetch);
  }
  return {static_cast<double>(m), std::log(sum)};
}

// g_i / τ · (1 − exp(z_y / τ − lse)): the gradient of the label's own logit, in fp64.
inline double logprob_label_grad(double scale, double label_logit, double tau, double lse) noexcept {
  return scale * (1.0 - std::exp(label_logit / tau - lse));
}

// *out = value rounded to Grad. The 16-bit types are stored through `.bits`: a whole-struct
// assignment is a memory-to-memory copy that keeps GCC from vectorizing the loop.
template <class Grad, class Acc>
CONSR_FORCEINLINE void store_grad(Grad* out, Acc value) noexcept {
  if constexpr (std::is_same_v<Grad, bfloat16> || std::is_same_v<Grad, float16>) {
    out->bits = Grad::from_float(static_cast<float>(value));
  } else {
    *out = static_cast<Grad>(value);
  }
}

// out[v] = neg_scale · exp(z[v]/τ − lse) for the whole row (the label's entry is fixed up by the caller).
template <bool Scaled, class Acc, class Logit, class Grad>
CONSR_FORCEINLINE void logprob_grad_row(const Logit* row, Grad* out, index_t vocab, inverse_temperature<Acc> inv_tau,
                                        Acc lse, Acc neg_scale) noexcept {
  // No restrict: `out` may be `row` (in-place backward); each element is read before it is written.
#if CONSR_LOGPROBS_AVX512
  if constexpr (std::is_same_v<Acc, float> && std::is_same_v<Grad, float> &&
                (std::is_same_v<Logit, float> || std::is_same_v<Logit, bfloat16>)) {
    logprob_grad_block_avx512<Scaled>(row, out, vocab, inv_tau.hi, inv_tau.lo, lse, neg_scale);
    return;
  }
#endif
  CONSR_SIMD
  for (index_t j = 0; j < vocab; ++j) {
    const Acc z = to_accum<Acc>(row[j]);
    Acc x;
    if constexpr (!Scaled) x = z - lse;
    else if constexpr (std::is_same_v<Acc, float>) x = z * inv_tau.hi + (z * inv_tau.lo - lse);
    else x = z * inv_tau.hi - lse;
    store_grad(out + j, neg_scale * vector_exp(x));
  }
}

inline void check_logprob_options(const logprob_options& options, const char* fn) {
  const double tau = options.temperature;
  CONSR_CHECK_ARG(std::isfinite(tau) && tau > 0.0, fn, "options.temperature", "must be finite and > 0, got ", tau);
}

// The arguments token_logprobs and its backward share, checked in this order: options, logits (rows
// contiguous), labels (one per row).
template <class Logit, class Label>
void check_logits_and_labels(const host_view<const Logit, 2>& logits, const host_view<const Label, 1>& labels,
                             const logprob_options& options, const char* fn) {
  check_logprob_options(options, fn);
  check_view(logits, fn, "logits");
  check_unit_inner_stride(logits, fn, "logits");
  check_view_extent(labels, 0, logits.extent(0), fn, "labels", "rows of logits");
}

// A rank-1 output written by several rows must not map two rows to one element.
template <class T>
void check_distinct_rows(const host_view<T, 1>& v, const char* fn, const char* arg) {
  CONSR_CHECK_ARG(v.extent(0) <= 1 || v.stride(0) != 0, fn, arg, "has stride 0, so all ", v.extent(0),
                  " rows would be written to one element");
}

// The per-row outputs of a forward (token_logprobs, linear_token_logprobs): token_logp of `rows`
// elements and lse of `rows` or none (not written); `what` / `lse_what` say what the rows are.
// Returns whether lse is written.
template <class Acc>
bool check_row_outputs(const host_view<Acc, 1>& token_logp, const host_view<Acc, 1>& lse, index_t rows,
                       const char* fn, const char* what, const char* lse_what) {
  check_view_extent(token_logp, 0, rows, fn, "token_logp", what);
  check_distinct_rows(token_logp, fn, "token_logp");
  const bool write_lse = lse.size() != 0;
  if (write_lse) {
    check_view_extent(lse, 0, rows, fn, "lse", lse_what);
    check_distinct_rows(lse, fn, "lse");
  }
  return write_lse;
}

// Every label is in [0, vocab) or equals ignore_index; checked for all rows before anything is written.
template <class Label>
void check_labels(const host_view<const Label, 1>& labels, index_t vocab, std::int64_t ignore_index, const char* fn) {
  const index_t n = labels.extent(0);
  for (index_t i = 0; i < n; ++i) {
    const std::int64_t y = static_cast<std::int64_t>(labels[i]);
    CONSR_CHECK_ARG(y == ignore_index || (y >= 0 && y < vocab), fn, "labels", "row ", i, " has label ", y,
                    " outside [0, ", vocab, ") (ignore_index is ", ignore_index, ")");
  }
}

inline bool parallel_worth_it(index_t rows, index_t vocab) noexcept {
  return rows > 1 && static_cast<double>(rows) * static_cast<double>(vocab) >= logprob_parallel_min_elements;
}

// Rows per scheduling chunk: about 16K logits, so that cheap (ignored or small) rows are not scheduled one by one.
inline index_t logprob_rows_per_task(index_t vocab) noexcept {
  return std::max<index_t>(1, index_t{16384} / std::max<index_t>(vocab, 1));
}

template <class Logit, class Label>
void token_logprobs_impl(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                         host_view<accum_t<Logit>, 1> token_logp, host_view<accum_t<Logit>, 1> lse,
                         const logprob_options& options) {
  static_assert(is_supported_float_v<Logit>,
                "consr::token_logprobs: logits must be float, double, consr::bfloat16 or consr::float16");
  static_assert(is_index_type_v<Label>, "consr::token_logprobs: labels must be int32 or int64");
  using Acc = accum_t<Logit>;
  constexpr const char* fn = "consr::token_logprobs";

  check_logits_and_labels(logits, labels, options, fn);
  const index_t rows = logits.extent(0);
  const index_t vocab = logits.extent(1);
  const bool write_lse =
      check_row_outputs(token_logp, lse, rows, fn, "rows of logits", "rows of logits, or 0 to skip it");
  check_labels(labels, vocab, options.ignore_index, fn);

  const double tau = options.temperature;
  const bool scaled = tau != 1.0;
  const inverse_temperature<Acc> inv_tau(tau);
  const std::int64_t ignore_index = options.ignore_index;
  const index_t rows_per_task = logprob_rows_per_task(vocab);
  const bool run_parallel = parallel_worth_it(rows, vocab);
  (void)rows_per_task;
  (void)run_parallel;

  CONSR_OMP(parallel for schedule(dynamic, rows_per_task) if (run_parallel))
  for (index_t i = 0; i < rows; ++i) {
    const std::int64_t y = static_cast<std::int64_t>(labels[i]);
    if (y == ignore_index) {
      token_logp[i] = Acc(0);
      if (write_lse) lse[i] = Acc(0);
      continue;
    }
    const Logit* row = logits.data() + i * logits.stride(0);
    const row_logsumexp r =
        scaled ? logprob_row<true>(row, vocab, tau, inv_tau) : logprob_row<false>(row, vocab, tau, inv_tau);
    token_logp[i] = static_cast<Acc>(r.logp(static_cast<double>(to_accum<Acc>(row[y])), tau));
    if (write_lse) lse[i] = static_cast<Acc>(r.lse(tau));
  }
}

template <class Logit, class Label, class Grad>
void check_backward_types() {
  static_assert(is_supported_float_v<Logit>,
                "consr::token_logprobs_backward: logits must be float, double, consr::bfloat16 or consr::float16");
  static_assert(is_index_type_v<Label>, "consr::token_logprobs_backward: labels must be int32 or int64");
  static_assert(!std::is_const_v<Grad> && (std::is_same_v<Grad, Logit> || std::is_same_v<Grad, float> ||
                                           std::is_same_v<Grad, double>),
                "consr::token_logprobs_backward: grad_logits must be non-const and of the logits' type, float or "
                "double");
}

// grad_token_logp (one per row) and grad_logits (the logits' shape, unit inner stride, rows that do not
// overlap, and either disjoint from logits or exactly the same view: in-place).
template <class Logit, class Grad, class Acc>
void check_gradient_views(const host_view<const Logit, 2>& logits, const host_view<const Acc, 1>& grad_token_logp,
                          const host_view<Grad, 2>& grad_logits, const char* fn) {
  const index_t rows = logits.extent(0);
  const index_t vocab = logits.extent(1);
  check_view_extent(grad_token_logp, 0, rows, fn, "grad_token_logp", "rows of logits");
  check_view_extent(grad_logits, 0, rows, fn, "grad_logits", "rows of logits");
  check_extent(grad_logits, 1, vocab, fn, "grad_logits", "vocabulary size of logits");
  check_unit_inner_stride(grad_logits, fn, "grad_logits");
  CONSR_CHECK_ARG(rows <= 1 || vocab == 0 || grad_logits.stride(0) >= vocab || grad_logits.stride(0) <= -vocab, fn,
                  "grad_logits", "rows overlap (row stride ", grad_logits.stride(0), ", row length ", vocab, ")");
  if (views_overlap(logits, grad_logits)) {
    // In place is fine only as the very same view: element j of a row is read before it is written.
    const bool same_view = std::is_same_v<Grad, Logit> &&
                           static_cast<const void*>(grad_logits.data()) == static_cast<const void*>(logits.data()) &&
                           grad_logits.stride(0) == logits.stride(0);
    CONSR_CHECK_ARG(same_view, fn, "grad_logits",
                    "overlaps logits without being the same view; in-place backward needs the same pointer, "
                    "strides and element type");
  }
}

// The backward's rows (all arguments checked). Fused: each row's forward first (logprob_row), writing
// token_logp and lse (unless empty), then its gradient from that lse while the row is still in the
// cache; otherwise the gradient from lse_in.
template <bool Fused, class Logit, class Label, class Grad>
void logprob_backward_rows(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                           host_view<const accum_t<Logit>, 1> lse_in, host_view<const accum_t<Logit>, 1> grad_token_logp,
                           host_view<Grad, 2> grad_logits, host_view<accum_t<Logit>, 1> token_logp,
                           host_view<accum_t<Logit>, 1> lse_out, const logprob_options& options) {
  using Acc = accum_t<Logit>;
  const index_t rows = logits.extent(0);
  const index_t vocab = logits.extent(1);
  const double tau = options.temperature;
  const bool scaled = tau != 1.0;
  const inverse_temperature<Acc> inv_tau(tau);
  const std::int64_t ignore_index = options.ignore_index;
  const bool write_lse = Fused && lse_out.size() != 0;
  const index_t rows_per_task = logprob_rows_per_task(vocab);
  const bool run_parallel = parallel_worth_it(rows, vocab);
  (void)rows_per_task;
  (void)run_parallel;
  // An N × V gradient larger than the caches is written with streaming stores (half the memory
  // traffic of plain stores, which first read every line).
  const bool streaming = use_streaming_stores(static_cast<double>(rows) * static_cast<double>(vocab) * sizeof(Grad));

  CONSR_OMP(parallel for schedule(dynamic, rows_per_task) if (run_parallel))
  for (index_t i = 0; i < rows; ++i) {
    const Logit* row = logits.data() + i * logits.stride(0);
    Grad* out = grad_logits.data() + i * grad_logits.stride(0);
    const std::int64_t y = static_cast<std::int64_t>(labels[i]);
    if (y == ignore_index) {
      if constexpr (Fused) {
        token_logp[i] = Acc(0);
        if (write_lse) lse_out[i] = Acc(0);
      }
      CONSR_SIMD
      for (index_t j = 0; j < vocab; ++j) store_grad(out + j, Acc(0));
      continue;
    }
    const double scale = static_cast<double>(grad_token_logp[i]) / tau;  // g_i / τ
    const double z_y = static_cast<double>(to_accum<Acc>(row[y]));  // read before an in-place pass overwrites it
    Acc row_lse;
    if constexpr (Fused) {
      const row_logsumexp r =
          scaled ? logprob_row<true>(row, vocab, tau, inv_tau) : logprob_row<false>(row, vocab, tau, inv_tau);
      token_logp[i] = static_cast<Acc>(r.logp(z_y, tau));
      row_lse = static_cast<Acc>(r.lse(tau));
      if (write_lse) lse_out[i] = row_lse;
    } else {
      row_lse = lse_in[i];
    }
    const Acc neg_scale = static_cast<Acc>(-scale);
    const bool separate_output = static_cast<const void*>(out) != static_cast<const void*>(row);
    for (index_t b = 0; b < vocab; b += logprob_block) {
      const index_t n = std::min(logprob_block, vocab - b);
      const index_t next_begin = std::min(b + logprob_block, vocab);
      const index_t next_n = std::min(logprob_block, vocab - next_begin);
      prefetch_range(row + next_begin, static_cast<std::size_t>(next_n) * sizeof(Logit), false);
      if constexpr (!Fused) {  // a fused row is in the cache already
        const index_t far_begin = std::min(b + logprob_prefetch_blocks_ahead * logprob_block, vocab);
        prefetch_ahead_to_l2(row + far_begin,
                             static_cast<std::size_t>(std::min(logprob_block, vocab - far_begin)) * sizeof(Logit));
      }
      if (streaming) {
        // The block's gradient goes to an L1 scratch, then to memory with streaming stores.
        alignas(64) Grad scratch[logprob_block];
        if (scaled) logprob_grad_row<true>(row + b, scratch, n, inv_tau, row_lse, neg_scale);
        else logprob_grad_row<false>(row + b, scratch, n, inv_tau, row_lse, neg_scale);
        copy_streaming(out + b, scratch, static_cast<std::size_t>(n) * sizeof(Grad));
        continue;
      }
      if (separate_output) prefetch_range(out + next_begin, static_cast<std::size_t>(next_n) * sizeof(Grad), true);
      if (scaled) logprob_grad_row<true>(row + b, out + b, n, inv_tau, row_lse, neg_scale);
      else logprob_grad_row<false>(row + b, out + b, n, inv_tau, row_lse, neg_scale);
    }
    if (streaming) streaming_store_fence();  // the label's entry below, and other threads, see the row
    store_grad(out + y, logprob_label_grad(scale, z_y, tau, static_cast<double>(row_lse)));
  }
}

template <class Logit, class Label, class Grad>
void token_logprobs_backward_impl(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                                  host_view<const accum_t<Logit>, 1> lse,
                                  host_view<const accum_t<Logit>, 1> grad_token_logp, host_view<Grad, 2> grad_logits,
                                  const logprob_options& options) {
  constexpr const char* fn = "consr::token_logprobs_backward";
  check_backward_types<Logit, Label, Grad>();
  check_logits_and_labels(logits, labels, options, fn);
  check_view_extent(lse, 0, logits.extent(0), fn, "lse", "rows of logits");
  check_gradient_views(logits, grad_token_logp, grad_logits, fn);
  check_labels(labels, logits.extent(1), options.ignore_index, fn);
  logprob_backward_rows<false>(logits, labels, lse, grad_token_logp, grad_logits, host_view<accum_t<Logit>, 1>{},
                               host_view<accum_t<Logit>, 1>{}, options);
}

template <class Logit, class Label, class Grad>
void token_logprobs_forward_backward_impl(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                                          host_view<const accum_t<Logit>, 1> grad_token_logp,
                                          host_view<accum_t<Logit>, 1> token_logp, host_view<accum_t<Logit>, 1> lse,
                                          host_view<Grad, 2> grad_logits, const logprob_options& options) {
  constexpr const char* fn = "consr::token_logprobs_forward_backward";
  check_backward_types<Logit, Label, Grad>();
  check_logits_and_labels(logits, labels, options, fn);
  check_row_outputs(token_logp, lse, logits.extent(0), fn, "rows of logits", "rows of logits, or 0 to skip it");
  check_gradient_views(logits, grad_token_logp, grad_logits, fn);
  // The forward's outputs must not alias the inputs they are computed from.
  CONSR_CHECK_ARG(!views_overlap(token_logp, grad_token_logp), fn, "token_logp", "overlaps grad_token_logp");
  check_labels(labels, logits.extent(1), options.ignore_index, fn);
  logprob_backward_rows<true>(logits, labels, host_view<const accum_t<Logit>, 1>{}, grad_token_logp, grad_logits,
                              token_logp, lse, options);
}

/// The forwards' output types (token_logprobs, linear_token_logprobs, host and CUDA): token_logp
/// and lse are non-const views of accum_t<T>, T the logits' or hidden's element type. Asserted at
/// compile time; the value lets an entry point skip its body when it fails (one error, not many).
template <class T, class LogpT, class LseT = accum_t<T>>
constexpr bool logprob_outputs_ok() noexcept {
  constexpr bool ok = std::is_same_v<LogpT, accum_t<T>> && std::is_same_v<LseT, accum_t<T>>;
  static_assert(ok, "consr: token_logp and lse must be non-const views of accum_t<T>, T the element type of the "
                    "logits (or hidden): float for float/bfloat16/float16, double for double");
  return ok;
}

}  // namespace detail

/// Token log-probabilities (spec §4): logp_i = z_i[y_i] − logsumexp_v z_i[v] with z_i = logits_i / τ, and
/// lse_i = logsumexp_v z_i[v], the one value per row the backward needs.
///
/// - `logits` [N, V]: rows must be contiguous (unit inner stride); any row stride.
/// - `labels` [N]: y_i in [0, V), or options.ignore_index, whose rows get logp = 0 and lse = 0 without
///   reading their logits (padded and prompt rows are common).
/// - `token_logp` [N] and `lse` [N] (or an empty view to skip it): fp32 for fp32/bf16/fp16 logits, fp64 for fp64.
/// Non-finite logits (NaN, +inf) make that row's logp and lse NaN and touch no other row; -inf logits
/// other than the label's contribute 0. Rows run in parallel under OpenMP, bitwise identical for any
/// thread count; each row is read from memory once and no N × V temporary is used.
/// Throws consr::error naming the argument for a shape or stride mismatch, options.temperature not
/// finite and > 0, or a label outside [0, V) that is not ignore_index ("row i has label ..."); all of
/// this is checked before any output is written.
template <class Logit, class Label>
void token_logprobs(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                    host_view<accum_t<Logit>, 1> token_logp, host_view<accum_t<Logit>, 1> lse,
                    const logprob_options& options = {}) {
  detail::token_logprobs_impl<Logit, Label>(logits, labels, token_logp, lse, options);
}

/// token_logprobs for views of any constness (e.g. `make_view(ptr, n, v)` of mutable data).
/// Same contract as above; a device view is rejected at compile time.
template <class LogitsT, class LabelsT, class LogpT, class LseT, class S1, class S2, class S3, class S4>
void token_logprobs(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                    strided_view<LogpT, 1, S3> token_logp, strided_view<LseT, 1, S4> lse,
                    const logprob_options& options = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3, S4);
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  constexpr bool outputs_ok = detail::logprob_outputs_ok<Logit, LogpT, LseT>();
  if constexpr (detail::all_host_v<S1, S2, S3, S4> && outputs_ok)
    detail::token_logprobs_impl<Logit, Label>(logits, labels, token_logp, lse, options);
}

/// token_logprobs without the lse output (for scoring passes that need no backward).
template <class LogitsT, class LabelsT, class LogpT, class S1, class S2, class S3>
void token_logprobs(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                    strided_view<LogpT, 1, S3> token_logp, const logprob_options& options = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3);
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  constexpr bool output_ok = detail::logprob_outputs_ok<Logit, LogpT>();
  if constexpr (detail::all_host_v<S1, S2, S3> && output_ok)
    detail::token_logprobs_impl<Logit, Label>(logits, labels, token_logp, host_view<accum_t<Logit>, 1>{}, options);
}

/// Backward of token_logprobs (spec §4): grad_logits_i[v] = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)),
/// g_i = grad_token_logp[i], lse from the forward with the same temperature. Rows with ignored labels get 0.
///
/// `grad_logits` [N, V] (fp32, fp64 or the logits' type; unit inner stride, rows must not overlap) may be
/// `logits` itself — same pointer, strides and type — for an in-place backward that saves the N × V
/// buffer; any other overlap with logits is an error. One vectorized pass per row; parallel over rows.
/// Throws consr::error naming the argument for shape/stride mismatches, overlap, options.temperature
/// not finite and > 0, or an out-of-range label; all checked before anything is written.
template <class Logit, class Label, class Grad>
void token_logprobs_backward(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                             host_view<const accum_t<Logit>, 1> lse, host_view<const accum_t<Logit>, 1> grad_token_logp,
                             host_view<Grad, 2> grad_logits, const logprob_options& options = {}) {
  detail::token_logprobs_backward_impl<Logit, Label, Grad>(logits, labels, lse, grad_token_logp, grad_logits, options);
}

/// Forward and backward in one call, for a caller that knows ∂L/∂logp_i before the forward (a token-level
/// loss with fixed weights: the negative log-likelihood of supervised fine-tuning, a weighted
/// log-likelihood): writes what token_logprobs and token_logprobs_backward write, bitwise the same, but
/// reads each row of logits from memory once instead of twice — the gradient pass re-reads the row from
/// the cache (a 152064-wide fp32 row is 594 KiB; a core's L2 is usually larger). `lse` may be empty (not
/// written). Arguments, in-place use and errors as for token_logprobs and token_logprobs_backward;
/// token_logp must not overlap grad_token_logp.
template <class Logit, class Label, class Grad>
void token_logprobs_forward_backward(host_view<const Logit, 2> logits, host_view<const Label, 1> labels,
                                     host_view<const accum_t<Logit>, 1> grad_token_logp,
                                     host_view<accum_t<Logit>, 1> token_logp, host_view<accum_t<Logit>, 1> lse,
                                     host_view<Grad, 2> grad_logits, const logprob_options& options = {}) {
  detail::token_logprobs_forward_backward_impl<Logit, Label, Grad>(logits, labels, grad_token_logp, token_logp, lse,
                                                                   grad_logits, options);
}

/// token_logprobs_backward for views of any constness. Same contract as above.
template <class LogitsT, class LabelsT, class LseT, class GradLogpT, class Grad, class S1, class S2, class S3,
          class S4, class S5>
void token_logprobs_backward(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                             strided_view<LseT, 1, S3> lse, strided_view<GradLogpT, 1, S4> grad_token_logp,
                             strided_view<Grad, 2, S5> grad_logits, const logprob_options& options = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3, S4, S5);
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  using Acc = accum_t<Logit>;
  constexpr bool inputs_ok =
      std::is_same_v<std::remove_const_t<LseT>, Acc> && std::is_same_v<std::remove_const_t<GradLogpT>, Acc>;
  static_assert(inputs_ok, "consr::token_logprobs_backward: lse and grad_token_logp must be views of accum_t<Logit>");
  if constexpr (detail::all_host_v<S1, S2, S3, S4, S5> && inputs_ok)
    detail::token_logprobs_backward_impl<Logit, Label, Grad>(logits, labels, lse, grad_token_logp, grad_logits,
                                                             options);
}

/// token_logprobs_forward_backward for views of any constness. Same contract as above.
template <class LogitsT, class LabelsT, class GradLogpT, class LogpT, class LseT, class Grad, class S1, class S2,
          class S3, class S4, class S5, class S6>
void token_logprobs_forward_backward(strided_view<LogitsT, 2, S1> logits, strided_view<LabelsT, 1, S2> labels,
                                     strided_view<GradLogpT, 1, S3> grad_token_logp, strided_view<LogpT, 1, S4> token_logp,
                                     strided_view<LseT, 1, S5> lse, strided_view<Grad, 2, S6> grad_logits,
                                     const logprob_options& options = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3, S4, S5, S6);
  using Logit = std::remove_const_t<LogitsT>;
  using Label = std::remove_const_t<LabelsT>;
  using Acc = accum_t<Logit>;
  constexpr bool views_ok = std::is_same_v<std::remove_const_t<GradLogpT>, Acc> && std::is_same_v<LogpT, Acc> &&
                            std::is_same_v<LseT, Acc>;
  static_assert(views_ok,
                "consr::token_logprobs_forward_backward: grad_token_logp must be a view of accum_t<Logit>, token_logp "
                "and lse non-const views of it");
  if constexpr (detail::all_host_v<S1, S2, S3, S4, S5, S6> && views_ok)
    detail::token_logprobs_forward_backward_impl<Logit, Label, Grad>(logits, labels, grad_token_logp, token_logp, lse,
                                                                     grad_logits, options);
}

}  // namespace consr
