// consr/linear_logprobs.hpp — token log-probabilities straight from the hidden
// states and the output projection, without ever holding the N × V logits
// (spec §4, last paragraph), forward and backward, on the host.
//
//   logits_i = W h_i + b,   z_i = logits_i / τ
//   logp_i = z_i[y_i] − lse_i,   lse_i = logsumexp_v z_i[v]
//   backward, g_i = ∂L/∂logp_i and G_iv = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)):
//   ∂L/∂h = G W,   ∂L/∂W += Gᵀ h,   ∂L/∂b += Σ_i G_i
//
// Why: at a 152064-word vocabulary (Qwen2), the materialized logits of 1024
// tokens are 623 MB in fp32, and log_softmax plus its gradient triple that;
// this is where DPO training runs out of memory. Here the vocabulary is walked
// in chunks of `vocab_chunk` rows of W: each chunk's logits [N, chunk] are made
// by one GEMM into a workspace, folded into a per-token online log-sum-exp
// (running max and sum, as in consr/logprobs.hpp), and discarded. The backward
// recomputes each chunk's logits, turns them into G in place and applies two
// more GEMMs. Exact: every vocabulary entry contributes (no filtering).
//
// Cost: the forward does the one GEMM a materialized path does; the backward
// does three (recompute, ∂h, ∂W) where a materialized path does two, so a
// training step costs about 4/3 of the materialized path's GEMM work, in
// exchange for memory that does not grow with V.
//
// The GEMMs go through a policy type (contract in consr/detail/gemm.hpp), so the
// header itself depends on nothing: consr::loop_gemm (default, plain loops),
// consr::eigen_gemm (consr/adapters/eigen_gemm.hpp) or consr::cblas_gemm
// (consr/adapters/cblas_gemm.hpp). Element-wise passes run over tokens in
// parallel under OpenMP; the GEMMs parallelize themselves.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "config.hpp"
#include "detail/exp.hpp"
#include "detail/gemm.hpp"
#include "error.hpp"
#include "logprobs.hpp"
#include "numeric.hpp"
#include "view.hpp"

namespace consr {

/// Default number of vocabulary rows per chunk: at N = 1024 fp32 tokens the chunk logits take 16 MiB
/// (the materialized logits of V = 152064 take 594 MiB), and every GEMM is still large enough to run
/// at full speed.
inline constexpr index_t default_linear_vocab_chunk = 4096;

/// Options of linear_token_logprobs / linear_token_logprobs_backward: those of token_logprobs
/// (temperature, ignore_index; same meaning) plus the vocabulary chunk size.
struct linear_logprob_options : logprob_options {
  /// Rows of W (vocabulary entries) per chunk; must be > 0. Larger chunks need more workspace
  /// (N × min(vocab_chunk, V) accumulator values) and make bigger, more efficient GEMMs.
  index_t vocab_chunk = default_linear_vocab_chunk;
};

namespace detail {

inline constexpr std::size_t linear_workspace_align = 64;

inline std::size_t linear_align_up(std::size_t bytes) noexcept {
  return (bytes + linear_workspace_align - 1) / linear_workspace_align * linear_workspace_align;
}

// a · b · c bytes, or an error naming `fn` if it does not fit size_t (absurd extents must not wrap).
inline std::size_t linear_checked_bytes(index_t a, index_t b, std::size_t elem, const char* fn) {
  const double approx = static_cast<double>(a) * static_cast<double>(b) * static_cast<double>(elem);
  CONSR_CHECK_ARG(approx < static_cast<double>(std::numeric_limits<std::size_t>::max() / 4), fn, "workspace",
                  "would need ", approx, " bytes, more than the address space");
  return static_cast<std::size_t>(a) * static_cast<std::size_t>(b) * elem;
}

// Byte offsets of the workspace regions, each aligned to 64 bytes from an aligned base.
struct linear_workspace_layout {
  std::size_t logits = 0;      // N × chunk accumulator values: one chunk of logits, then of G
  std::size_t row_max = 0;     // forward: N doubles, running max of the logits
  std::size_t row_sum = 0;     // forward: N doubles, running Σ exp((logit − max) / τ)
  std::size_t label_logit = 0; // forward: N doubles, the label's logit
  std::size_t hidden_acc = 0;  // 16-bit inputs: the hidden states widened, N × H
  std::size_t weight_acc = 0;  // 16-bit inputs: one chunk of W widened, chunk × H
  std::size_t bytes = 0;       // total, including linear_workspace_align − 1 bytes of slack to align the base
};

template <class T>
linear_workspace_layout linear_layout(index_t tokens, index_t hidden, index_t vocab, index_t chunk, bool forward,
                                      const char* fn) {
  using Acc = accum_t<T>;
  constexpr bool widen = !std::is_same_v<T, Acc>;
  const index_t chunk_cols = std::min(chunk, vocab);
  linear_workspace_layout l;
  std::size_t at = 0;
  const auto region = [&at](std::size_t bytes) {
    const std::size_t offset = at;
    at += linear_align_up(bytes);
    return offset;
  };
  l.logits = region(linear_checked_bytes(tokens, chunk_cols, sizeof(Acc), fn));
  if (forward) {
    l.row_max = region(linear_checked_bytes(tokens, 1, sizeof(double), fn));
    l.row_sum = region(linear_checked_bytes(tokens, 1, sizeof(double), fn));
    l.label_logit = region(linear_checked_bytes(tokens, 1, sizeof(double), fn));
  }
  if (widen) {
    l.hidden_acc = region(linear_checked_bytes(tokens, hidden, sizeof(Acc), fn));
    l.weight_acc = region(linear_checked_bytes(chunk_cols, hidden, sizeof(Acc), fn));
  }
  l.bytes = at + linear_workspace_align - 1;
  return l;
}

inline void check_linear_options(const linear_logprob_options& options, const char* fn) {
  check_logprob_options(options, fn);
  CONSR_CHECK_ARG(options.vocab_chunk > 0, fn, "options.vocab_chunk", "must be > 0, got ", options.vocab_chunk);
}

inline void check_linear_extents(index_t tokens, index_t hidden, index_t vocab, const char* fn) {
  CONSR_CHECK_ARG(tokens >= 0, fn, "tokens", "must be >= 0, got ", tokens);
  CONSR_CHECK_ARG(hidden >= 0, fn, "hidden", "must be >= 0, got ", hidden);
  CONSR_CHECK_ARG(vocab >= 0, fn, "vocab", "must be >= 0, got ", vocab);
}

// A GEMM operand: unit inner stride, and rows that neither overlap nor run backwards (BLAS needs ld >= cols).
template <class T>
void check_gemm_rows(const host_view<T, 2>& v, const char* fn, const char* arg) {
  check_unit_inner_stride(v, fn, arg);
  const index_t cols = v.extent(1);
  CONSR_CHECK_ARG(v.extent(0) <= 1 || cols == 0 || v.stride(0) >= cols, fn, arg, "row stride ", v.stride(0),
                  " must be at least the row length ", cols, " (rows must not overlap or run backwards)");
}

// Leading dimension to hand a GEMM: the row stride, or any valid value where it is never used.
template <class T>
index_t gemm_leading_dim(const host_view<T, 2>& v) noexcept {
  const index_t cols = v.extent(1);
  return (v.extent(0) > 1 && cols > 0) ? v.stride(0) : std::max<index_t>(cols, 1);
}

// A rank-1 vector read or written with unit stride.
template <class T>
void check_unit_stride_vector(const host_view<T, 1>& v, const char* fn, const char* arg) {
  CONSR_CHECK_ARG(v.has_unit_inner_stride(), fn, arg, "must be contiguous (stride ", v.stride(0), ", must be 1)");
}

// A view and the name the messages give it.
template <class T, int R>
struct named_view {
  const host_view<T, R>& view;
  const char* name;
};
template <class T, int R>
named_view<T, R> named(const host_view<T, R>& view, const char* name) {
  return {view, name};
}

// `out` must share no memory with any of `others`; checked in the order given (the first overlap is
// the one reported).
template <class A, int RA, class... Others>
void check_no_overlap(const char* fn, const named_view<A, RA>& out, const Others&... others) {
  const auto check_one = [&](const auto& other) {
    CONSR_CHECK_ARG(!views_overlap(out.view, other.view), fn, out.name, "overlaps '", other.name,
                    "'; outputs and workspace must not share memory with any other argument");
  };
  (check_one(others), ...);
}

// The workspace: the caller's (checked for size and stride) or a fresh allocation, aligned.
class linear_workspace {
 public:
  linear_workspace(host_view<std::byte, 1> given, std::size_t bytes, const char* fn) {
    std::byte* base = nullptr;
    if (given.size() == 0) {
      owned_.reset(new std::byte[bytes]);
      base = owned_.get();
    } else {
      CONSR_CHECK_ARG(given.extent(0) <= 1 || given.stride(0) == 1, fn, "workspace",
                      "must be contiguous (stride ", given.stride(0), ")");
      CONSR_CHECK_ARG(static_cast<std::size_t>(given.extent(0)) >= bytes, fn, "workspace", "has ", given.extent(0),
                      " bytes but needs ", bytes, " (ask the matching *_workspace_bytes function)");
      base = given.data();
    }
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(base);
    aligned_ = base + (linear_workspace_align - address % linear_workspace_align) % linear_workspace_align;
  }
  template <class U>
  U* at(std::size_t offset) const noexcept {
    return reinterpret_cast<U*>(aligned_ + offset);
  }

 private:
  std::unique_ptr<std::byte[]> owned_;
  std::byte* aligned_ = nullptr;
};

// dst[i, :cols] = src[i, :cols] in the accumulation type (16-bit inputs only).
template <class T, class Acc>
void widen_rows(const T* src, index_t src_ld, index_t rows, index_t cols, Acc* dst, index_t dst_ld) noexcept {
  const bool run_parallel = parallel_worth_it(rows, cols);
  (void)run_parallel;
  CONSR_OMP(parallel for schedule(static) if (run_parallel))
  for (index_t i = 0; i < rows; ++i) {
    const T* CONSR_RESTRICT s = src + i * src_ld;
    Acc* CONSR_RESTRICT d = dst + i * dst_ld;
    CONSR_SIMD
    for (index_t j = 0; j < cols; ++j) d[j] = to_accum<Acc>(s[j]);
  }
}

/// The element rules of the linear log-probs, host and device, both directions (the compiler's note
/// names the function that broke them).
template <class T, class Label>
constexpr void assert_linear_types() {
  static_assert(is_supported_float_v<T>,
                "consr linear log-probs: hidden, weight and bias must be float, double, consr::bfloat16 or "
                "consr::float16 (all the same type)");
  static_assert(is_index_type_v<Label>, "consr linear log-probs: labels must be int32 or int64");
}

// The arguments linear_token_logprobs and its backward share (options, hidden, weight, bias,
// labels), checked in this order; returns N, H and V.
struct linear_extents {
  index_t tokens, hidden_size, vocab;
};
template <class T, class Label>
linear_extents check_linear_inputs(const host_view<const T, 2>& hidden, const host_view<const T, 2>& weight,
                                   const host_view<const T, 1>& bias, const host_view<const Label, 1>& labels,
                                   const linear_logprob_options& options, const char* fn) {
  check_linear_options(options, fn);
  check_view(hidden, fn, "hidden");
  check_gemm_rows(hidden, fn, "hidden");
  const index_t tokens = hidden.extent(0);
  const index_t hidden_size = hidden.extent(1);
  check_view_extent(weight, 1, hidden_size, fn, "weight", "hidden size, columns of hidden");
  check_gemm_rows(weight, fn, "weight");
  const index_t vocab = weight.extent(0);
  if (bias.size() != 0) {
    check_view_extent(bias, 0, vocab, fn, "bias", "vocabulary size, rows of weight; or an empty view for no bias");
    check_unit_stride_vector(bias, fn, "bias");
  }
  check_view_extent(labels, 0, tokens, fn, "labels", "tokens, rows of hidden");
  return {tokens, hidden_size, vocab};
}

// The GEMM operands in the accumulation type: hidden, and rows [v0, v0 + cols) of W, as given
// (fp32, fp64) or widened into their workspace regions (bf16, fp16). `ld` receives the leading
// dimension of what is returned.
template <class T>
const accum_t<T>* linear_hidden_operand(const host_view<const T, 2>& hidden, const linear_workspace& ws,
                                        const linear_workspace_layout& layout, index_t& ld) noexcept {
  using Acc = accum_t<T>;
  ld = gemm_leading_dim(hidden);
  if constexpr (std::is_same_v<T, Acc>) {
    return hidden.data();
  } else {
    Acc* widened = ws.at<Acc>(layout.hidden_acc);
    const index_t hidden_size = hidden.extent(1);
    widen_rows(hidden.data(), ld, hidden.extent(0), hidden_size, widened, std::max<index_t>(hidden_size, 1));
    ld = std::max<index_t>(hidden_size, 1);
    return widened;
  }
}
template <class T>
const accum_t<T>* linear_weight_chunk(const host_view<const T, 2>& weight, index_t v0, index_t cols,
                                      const linear_workspace& ws, const linear_workspace_layout& layout,
                                      index_t& ld) noexcept {
  using Acc = accum_t<T>;
  const T* rows = weight.data() + v0 * weight.stride(0);
  ld = gemm_leading_dim(weight);
  if constexpr (std::is_same_v<T, Acc>) {
    return rows;
  } else {
    Acc* widened = ws.at<Acc>(layout.weight_acc);
    const index_t hidden_size = weight.extent(1);
    widen_rows(rows, ld, cols, hidden_size, widened, std::max<index_t>(hidden_size, 1));
    ld = std::max<index_t>(hidden_size, 1);
    return widened;
  }
}

// Both directions: logits[N, cols] = hidden · W[v0 : v0 + cols]ᵀ (no bias); returns the chunk's
// weight operand (widened for bf16/fp16; leading dimension in `ld`) for the backward's GEMMs.
template <class Gemm, class T>
const accum_t<T>* linear_chunk_logits(const host_view<const T, 2>& weight, index_t v0, index_t cols, index_t tokens,
                                      const accum_t<T>* hidden_acc, index_t hidden_ld, const linear_workspace& ws,
                                      const linear_workspace_layout& layout, accum_t<T>* logits, index_t& ld) {
  using Acc = accum_t<T>;
  const Acc* weight_chunk = linear_weight_chunk(weight, v0, cols, ws, layout, ld);
  Gemm::gemm_nt(tokens, cols, weight.extent(1), Acc(1), hidden_acc, hidden_ld, weight_chunk, ld, Acc(0), logits, cols);
  return weight_chunk;
}

template <class T>  // the bias entries of the chunk at v0, or null without a bias
const T* linear_bias_chunk(const host_view<const T, 1>& bias, index_t v0) noexcept {
  return bias.size() != 0 ? bias.data() + v0 * bias.stride(0) : nullptr;
}

// row[j] += bias[j], the bias widened to the accumulation type.
template <class Acc, class T>
CONSR_FORCEINLINE void add_bias(Acc* CONSR_RESTRICT row, const T* CONSR_RESTRICT bias, index_t n) noexcept {
  CONSR_SIMD
  for (index_t j = 0; j < n; ++j) row[j] += to_accum<Acc>(bias[j]);
}

// Folds one chunk of a row's logits into its online log-sum-exp: block by block, with the very
// block step of token_logprobs (logprob_fold_block), so the result matches token_logprobs on the
// materialized logits to rounding.
template <bool Scaled, class Acc>
void linear_fold_chunk(const Acc* row, index_t n_cols, double& running_max, double& running_sum, double tau,
                       inverse_temperature<Acc> inv_tau) noexcept {
  Acc m = static_cast<Acc>(running_max);  // always holds an Acc value exactly
  double sum = running_sum;
  for (index_t b = 0; b < n_cols; b += logprob_block)
    logprob_fold_block<Scaled>(row + b, std::min(logprob_block, n_cols - b), m, sum, tau, inv_tau, no_prefetch{});
  running_max = static_cast<double>(m);
  running_sum = sum;
}

// What the forward and the backward set up alike once the checks pass: the temperature, the
// vocabulary chunk, the chunk-logits buffer and the hidden operand in the accumulation type.
template <class T>
struct linear_pass {
  using Acc = accum_t<T>;
  double tau;
  bool scaled;
  inverse_temperature<Acc> inv_tau;
  std::int64_t ignore_index;
  index_t chunk;
  Acc* logits;
  index_t hidden_ld = 0;
  const Acc* hidden_acc;

  linear_pass(const host_view<const T, 2>& hidden, index_t vocab, const linear_logprob_options& options,
              const linear_workspace& ws, const linear_workspace_layout& layout) noexcept
      : tau(options.temperature),
        scaled(options.temperature != 1.0),
        inv_tau(options.temperature),
        ignore_index(options.ignore_index),
        chunk(std::min(options.vocab_chunk, vocab)),
        logits(ws.at<Acc>(layout.logits)),
        hidden_acc(linear_hidden_operand(hidden, ws, layout, hidden_ld)) {}
};

template <class Gemm, class T, class Label>
void linear_token_logprobs_impl(host_view<const T, 2> hidden, host_view<const T, 2> weight,
                                host_view<const T, 1> bias, host_view<const Label, 1> labels,
                                host_view<accum_t<T>, 1> token_logp, host_view<accum_t<T>, 1> lse,
                                const linear_logprob_options& options, host_view<std::byte, 1> workspace) {
  assert_linear_types<T, Label>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "consr::linear_token_logprobs";

  // ---- checks: everything before anything is written -------------------------------------------
  const linear_extents extents = check_linear_inputs(hidden, weight, bias, labels, options, fn);
  const index_t tokens = extents.tokens, hidden_size = extents.hidden_size, vocab = extents.vocab;
  const bool write_lse = check_row_outputs(token_logp, lse, tokens, fn, "tokens, rows of hidden",
                                           "tokens, rows of hidden; or an empty view to skip it");
  check_view(workspace, fn, "workspace");
  check_no_overlap(fn, named(workspace, "workspace"), named(hidden, "hidden"), named(weight, "weight"),
                   named(bias, "bias"), named(labels, "labels"), named(token_logp, "token_logp"), named(lse, "lse"));
  check_labels(labels, vocab, options.ignore_index, fn);
  const linear_workspace_layout layout =
      linear_layout<T>(tokens, hidden_size, vocab, options.vocab_chunk, /*forward=*/true, fn);
  if (tokens == 0) return;
  const linear_workspace ws(workspace, layout.bytes, fn);

  // ---- setup -----------------------------------------------------------------------------------
  const linear_pass<T> pass(hidden, vocab, options, ws, layout);
  double* row_max = ws.at<double>(layout.row_max);
  double* row_sum = ws.at<double>(layout.row_sum);
  double* label_logit = ws.at<double>(layout.label_logit);
  for (index_t i = 0; i < tokens; ++i) {
    row_max[i] = -std::numeric_limits<double>::infinity();
    row_sum[i] = 0.0;
    label_logit[i] = 0.0;
  }

  // ---- vocabulary chunks: one GEMM, then one pass over each token's chunk row ---------------------
  for (index_t v0 = 0; v0 < vocab; v0 += pass.chunk) {
    const index_t cols = std::min(pass.chunk, vocab - v0);
    index_t weight_chunk_ld = 0;
    linear_chunk_logits<Gemm>(weight, v0, cols, tokens, pass.hidden_acc, pass.hidden_ld, ws, layout, pass.logits,
                              weight_chunk_ld);
    const T* bias_chunk = linear_bias_chunk(bias, v0);
    const bool run_parallel = parallel_worth_it(tokens, cols);
    (void)run_parallel;
    CONSR_OMP(parallel for schedule(static) if (run_parallel))
    for (index_t i = 0; i < tokens; ++i) {
      const std::int64_t y = static_cast<std::int64_t>(labels[i]);
      if (y == pass.ignore_index) continue;
      Acc* row = pass.logits + i * cols;
      if (bias_chunk) add_bias(row, bias_chunk, cols);
      if (y >= v0 && y < v0 + cols) label_logit[i] = static_cast<double>(row[y - v0]);
      if (pass.scaled) linear_fold_chunk<true>(row, cols, row_max[i], row_sum[i], pass.tau, pass.inv_tau);
      else linear_fold_chunk<false>(row, cols, row_max[i], row_sum[i], pass.tau, pass.inv_tau);
    }
  }

  // ---- results: logp = (z_y − max) / τ − log Σ, lse = max / τ + log Σ (in fp64, as token_logprobs) ---
  for (index_t i = 0; i < tokens; ++i) {
    const std::int64_t y = static_cast<std::int64_t>(labels[i]);
    if (y == pass.ignore_index) {
      token_logp[i] = Acc(0);
      if (write_lse) lse[i] = Acc(0);
      continue;
    }
    const row_logsumexp r{row_max[i], std::log(row_sum[i])};
    token_logp[i] = static_cast<Acc>(r.logp(label_logit[i], pass.tau));
    if (write_lse) lse[i] = static_cast<Acc>(r.lse(pass.tau));
  }
}

template <class Gemm, class T, class Label>
void linear_token_logprobs_backward_impl(host_view<const T, 2> hidden, host_view<const T, 2> weight,
                                         host_view<const T, 1> bias, host_view<const Label, 1> labels,
                                         host_view<const accum_t<T>, 1> lse,
                                         host_view<const accum_t<T>, 1> grad_token_logp,
                                         host_view<accum_t<T>, 2> grad_hidden, host_view<accum_t<T>, 2> grad_weight,
                                         host_view<accum_t<T>, 1> grad_bias, const linear_logprob_options& options,
                                         host_view<std::byte, 1> workspace) {
  assert_linear_types<T, Label>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "consr::linear_token_logprobs_backward";

  // ---- checks: everything before anything is written -------------------------------------------
  const linear_extents extents = check_linear_inputs(hidden, weight, bias, labels, options, fn);
  const index_t tokens = extents.tokens, hidden_size = extents.hidden_size, vocab = extents.vocab;
  check_view_extent(lse, 0, tokens, fn, "lse", "tokens, rows of hidden");
  check_view_extent(grad_token_logp, 0, tokens, fn, "grad_token_logp", "tokens, rows of hidden");
  const bool want_hidden = grad_hidden.size() != 0;
  const bool want_weight = grad_weight.size() != 0;
  const bool want_bias = grad_bias.size() != 0;
  if (want_hidden) {
    check_view_extent(grad_hidden, 0, tokens, fn, "grad_hidden", "tokens, rows of hidden; or an empty view to skip it");
    check_extent(grad_hidden, 1, hidden_size, fn, "grad_hidden", "hidden size, columns of hidden");
    check_gemm_rows(grad_hidden, fn, "grad_hidden");
  }
  if (want_weight) {
    check_view_extent(grad_weight, 0, vocab, fn, "grad_weight", "vocabulary size, rows of weight; or an empty view");
    check_extent(grad_weight, 1, hidden_size, fn, "grad_weight", "hidden size, columns of weight");
    check_gemm_rows(grad_weight, fn, "grad_weight");
  }
  if (want_bias) {
    check_view_extent(grad_bias, 0, vocab, fn, "grad_bias", "vocabulary size, rows of weight; or an empty view");
    check_unit_stride_vector(grad_bias, fn, "grad_bias");
  }
  check_view(workspace, fn, "workspace");
  // Outputs must not alias inputs, each other or the workspace (a GEMM reading what it writes is garbage).
  const auto h = named(hidden, "hidden"), w = named(weight, "weight");
  const auto b = named(bias, "bias");
  const auto gh = named(grad_hidden, "grad_hidden"), gw = named(grad_weight, "grad_weight");
  const auto gb = named(grad_bias, "grad_bias");
  check_no_overlap(fn, gh, h, w, b, gw, gb);
  check_no_overlap(fn, gw, h, w, b, gb);
  check_no_overlap(fn, gb, h, w, b);
  check_no_overlap(fn, named(workspace, "workspace"), h, w, b, named(labels, "labels"), named(lse, "lse"),
                   named(grad_token_logp, "grad_token_logp"), gh, gw, gb);
  check_labels(labels, vocab, options.ignore_index, fn);
  const linear_workspace_layout layout =
      linear_layout<T>(tokens, hidden_size, vocab, options.vocab_chunk, /*forward=*/false, fn);
  if (tokens == 0 || !(want_hidden || want_weight || want_bias)) return;
  const index_t grad_hidden_ld = gemm_leading_dim(grad_hidden);
  if (vocab == 0) {
    // No vocabulary, so every label is ignore_index: ∂L/∂h = 0 (∂W and ∂b are empty).
    if (want_hidden) gemm_scale(tokens, hidden_size, Acc(0), grad_hidden.data(), grad_hidden_ld);
    return;
  }
  const linear_workspace ws(workspace, layout.bytes, fn);

  // ---- setup -----------------------------------------------------------------------------------
  const linear_pass<T> pass(hidden, vocab, options, ws, layout);
  const index_t grad_weight_ld = gemm_leading_dim(grad_weight);

  for (index_t v0 = 0; v0 < vocab; v0 += pass.chunk) {
    const index_t cols = std::min(pass.chunk, vocab - v0);
    // Recompute the chunk's logits, then turn them into G in place.
    index_t weight_chunk_ld = 0;
    const Acc* weight_chunk = linear_chunk_logits<Gemm>(weight, v0, cols, tokens, pass.hidden_acc, pass.hidden_ld, ws,
                                                        layout, pass.logits, weight_chunk_ld);
    const T* bias_chunk = linear_bias_chunk(bias, v0);
    const bool run_parallel = parallel_worth_it(tokens, cols);
    (void)run_parallel;
    CONSR_OMP(parallel for schedule(static) if (run_parallel))
    for (index_t i = 0; i < tokens; ++i) {
      Acc* row = pass.logits + i * cols;
      const std::int64_t y = static_cast<std::int64_t>(labels[i]);
      if (y == pass.ignore_index) {
        std::fill(row, row + cols, Acc(0));
        continue;
      }
      if (bias_chunk) add_bias(row, bias_chunk, cols);
      const double scale = static_cast<double>(grad_token_logp[i]) / pass.tau;  // g_i / τ
      const Acc row_lse = lse[i];
      const bool label_here = y >= v0 && y < v0 + cols;
      const double z_y = label_here ? static_cast<double>(row[y - v0]) : 0.0;  // read before it is overwritten
      const Acc neg_scale = static_cast<Acc>(-scale);
      if (pass.scaled) logprob_grad_row<true>(row, row, cols, pass.inv_tau, row_lse, neg_scale);
      else logprob_grad_row<false>(row, row, cols, pass.inv_tau, row_lse, neg_scale);
      if (label_here)
        row[y - v0] = static_cast<Acc>(logprob_label_grad(scale, z_y, pass.tau, static_cast<double>(row_lse)));
    }
    if (want_bias) {
      // ∂b[v0 + j] += Σ_i G[i, j]: column blocks in parallel, rows summed in order within each.
      constexpr index_t column_block = 256;
      const index_t blocks = (cols + column_block - 1) / column_block;
      Acc* grad_bias_chunk = grad_bias.data() + v0 * grad_bias.stride(0);
      CONSR_OMP(parallel for schedule(static) if (run_parallel))
      for (index_t blk = 0; blk < blocks; ++blk) {
        const index_t j0 = blk * column_block;
        const index_t nj = std::min(column_block, cols - j0);
        Acc column_sum[column_block] = {};
        for (index_t i = 0; i < tokens; ++i) {
          const Acc* g_row = pass.logits + i * cols + j0;
          CONSR_SIMD
          for (index_t j = 0; j < nj; ++j) column_sum[j] += g_row[j];
        }
        for (index_t j = 0; j < nj; ++j) grad_bias_chunk[j0 + j] += column_sum[j];
      }
    }
    // ∂h (=, then +=) G · W_chunk;  ∂W_chunk += Gᵀ · hidden.
    if (want_hidden)
      Gemm::gemm_nn(tokens, hidden_size, cols, Acc(1), pass.logits, cols, weight_chunk, weight_chunk_ld,
                    v0 == 0 ? Acc(0) : Acc(1), grad_hidden.data(), grad_hidden_ld);
    if (want_weight)
      Gemm::gemm_tn(cols, hidden_size, tokens, Acc(1), pass.logits, cols, pass.hidden_acc, pass.hidden_ld, Acc(1),
                    grad_weight.data() + v0 * grad_weight.stride(0), grad_weight_ld);
  }
}

// The public *_workspace_bytes: the sizes and options checked, then the layout's total.
template <class T>
std::size_t linear_workspace_bytes(index_t tokens, index_t hidden, index_t vocab, const linear_logprob_options& options,
                                   bool forward, const char* fn) {
  check_linear_extents(tokens, hidden, vocab, fn);
  check_linear_options(options, fn);
  return linear_layout<T>(tokens, hidden, vocab, options.vocab_chunk, forward, fn).bytes;
}

}  // namespace detail

/// Workspace bytes linear_token_logprobs needs for `tokens` rows of hidden states of width `hidden`,
/// a vocabulary of `vocab` and the chunk size of `options`, for hidden/weight of element type T:
///
///   64 − 1 + A(N · C · sizeof(accum_t<T>)) + 3 · A(8 · N)       (fp32, fp64)
///   … + A(N · H · 4) + A(C · H · 4)                              (bf16, fp16: widened hidden and W chunk)
///
/// with C = min(options.vocab_chunk, V) and A(x) = x rounded up to a multiple of 64. At N = 1024,
/// H = 3584, V = 152064, fp32 and the default chunk this is 16.8 MB (the N × V logits are 623 MB).
/// Throws consr::error for negative sizes or options.vocab_chunk <= 0.
template <class T>
std::size_t linear_token_logprobs_workspace_bytes(index_t tokens, index_t hidden, index_t vocab,
                                                  const linear_logprob_options& options = {}) {
  return detail::linear_workspace_bytes<std::remove_const_t<T>>(tokens, hidden, vocab, options, /*forward=*/true,
                                                                "consr::linear_token_logprobs_workspace_bytes");
}

/// Workspace bytes linear_token_logprobs_backward needs: as for the forward without the 3 · A(8 · N)
/// row state, i.e. 64 − 1 + A(N · C · sizeof(accum_t<T>)) (+ A(N · H · 4) + A(C · H · 4) for bf16/fp16).
template <class T>
std::size_t linear_token_logprobs_backward_workspace_bytes(index_t tokens, index_t hidden, index_t vocab,
                                                           const linear_logprob_options& options = {}) {
  return detail::linear_workspace_bytes<std::remove_const_t<T>>(
      tokens, hidden, vocab, options, /*forward=*/false, "consr::linear_token_logprobs_backward_workspace_bytes");
}

/// Token log-probabilities from hidden states and the output projection (spec §4, last paragraph):
/// logp_i = z_i[y_i] − lse_i and lse_i = logsumexp_v z_i[v] with z_i = (W h_i + b) / τ — the same values
/// token_logprobs gives on the materialized logits, without materializing them.
///
/// - `hidden` [N, H], `weight` [V, H], `bias` [V] or an empty view (`{}`) for none: all of one element type
///   T (float, double, consr::bfloat16, consr::float16); rows contiguous, row stride >= H, any alignment.
/// - `labels` [N] (int32/int64): y_i in [0, V), or options.ignore_index, whose rows get logp = lse = 0.
///   Their logits are still computed (the GEMM runs over all N rows): pass only scored rows when most are not.
/// - `token_logp` [N], `lse` [N] or an empty view to skip it: accum_t<T> (fp32; fp64 for fp64).
/// - `workspace`: an empty view to allocate linear_token_logprobs_workspace_bytes<T>(N, H, V, options) bytes
///   once per call, or a contiguous byte view at least that large (any alignment; its contents are scratch).
///   Peak memory beyond the arguments is exactly that, plus what the GEMM policy allocates internally
///   (Eigen and BLAS pack panels into buffers of a few MB that do not grow with V).
/// - `Gemm`: the GEMM policy (consr/detail/gemm.hpp): loop_gemm by default, eigen_gemm or cblas_gemm for speed.
/// Accumulation in fp32 (fp64 for fp64); the logits of a chunk are rounded once to fp32 by the GEMM, then
/// + bias, exactly as `logits = h Wᵀ + b` would store them. A NaN/inf logit makes its own row NaN only.
/// Deterministic for a given thread count and policy; with loop_gemm, for any thread count.
/// Throws consr::error naming the argument for a shape or stride mismatch, overlap of the workspace with an
/// argument, options.temperature not finite and > 0, options.vocab_chunk <= 0, a workspace too small, or a
/// label outside [0, V) that is not ignore_index ("row i has label ..."); all before any output is written.
template <class Gemm = loop_gemm, class HiddenT, class WeightT, class LabelT, class LogpT, class LseT, class S1,
          class S2, class S3, class S4, class S5>
void linear_token_logprobs(strided_view<HiddenT, 2, S1> hidden, strided_view<WeightT, 2, S2> weight,
                           host_view<const std::remove_const_t<HiddenT>, 1> bias, strided_view<LabelT, 1, S3> labels,
                           strided_view<LogpT, 1, S4> token_logp, strided_view<LseT, 1, S5> lse,
                           const linear_logprob_options& options = {}, host_view<std::byte, 1> workspace = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3, S4, S5);
  using T = std::remove_const_t<HiddenT>;
  using Label = std::remove_const_t<LabelT>;
  constexpr bool same_type = std::is_same_v<std::remove_const_t<WeightT>, T>;
  static_assert(same_type, "consr::linear_token_logprobs: hidden and weight must have the same element type");
  constexpr bool outputs_ok = detail::logprob_outputs_ok<T, LogpT, LseT>();
  if constexpr (detail::all_host_v<S1, S2, S3, S4, S5> && same_type && outputs_ok)
    detail::linear_token_logprobs_impl<Gemm, T, Label>(hidden, weight, bias, labels, token_logp, lse, options,
                                                       workspace);
}

/// Backward of linear_token_logprobs (spec §4): with g_i = grad_token_logp[i] and
/// G_iv = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)) (zero for ignored rows),
///
///   grad_hidden  = G W      [N, H]  overwritten
///   grad_weight += Gᵀ h     [V, H]  accumulated
///   grad_bias   += Σ_i G_i  [V]     accumulated (defined whether or not a bias is given)
///
/// each of accum_t<T> (fp32; fp64 for fp64), rows contiguous, or an empty view to skip it (a frozen
/// output projection needs only grad_hidden, which saves a quarter of the work). `lse` is the forward's,
/// computed with the same options; inputs as for linear_token_logprobs. Each chunk's logits are recomputed,
/// so the cost is three GEMMs (the forward's one, then ∂h and ∂W).
/// `workspace`: empty (allocated per call) or at least linear_token_logprobs_backward_workspace_bytes<T>(N, H,
/// V, options) contiguous bytes. A non-finite logit or g_i makes its row of G non-finite, and through the
/// GEMMs all of grad_weight and grad_bias, as in any autograd framework; non-finite hidden rows of
/// *ignored* tokens also reach grad_weight (0 · NaN), so padding must be finite.
/// Throws consr::error naming the argument for a shape or stride mismatch, outputs or workspace overlapping
/// another argument, bad options, a workspace too small or an out-of-range label; all before any write.
template <class Gemm = loop_gemm, class HiddenT, class WeightT, class LabelT, class LseT, class GradLogpT,
          class S1, class S2, class S3, class S4, class S5>
void linear_token_logprobs_backward(strided_view<HiddenT, 2, S1> hidden, strided_view<WeightT, 2, S2> weight,
                                    host_view<const std::remove_const_t<HiddenT>, 1> bias,
                                    strided_view<LabelT, 1, S3> labels, strided_view<LseT, 1, S4> lse,
                                    strided_view<GradLogpT, 1, S5> grad_token_logp,
                                    host_view<accum_t<std::remove_const_t<HiddenT>>, 2> grad_hidden,
                                    host_view<accum_t<std::remove_const_t<HiddenT>>, 2> grad_weight,
                                    host_view<accum_t<std::remove_const_t<HiddenT>>, 1> grad_bias,
                                    const linear_logprob_options& options = {},
                                    host_view<std::byte, 1> workspace = {}) {
  CONSR_REQUIRE_HOST_SPACES(S1, S2, S3, S4, S5);
  using T = std::remove_const_t<HiddenT>;
  using Label = std::remove_const_t<LabelT>;
  using Acc = accum_t<T>;
  constexpr bool same_type = std::is_same_v<std::remove_const_t<WeightT>, T>;
  static_assert(same_type, "consr::linear_token_logprobs_backward: hidden and weight must have the same element type");
  constexpr bool inputs_ok =
      std::is_same_v<std::remove_const_t<LseT>, Acc> && std::is_same_v<std::remove_const_t<GradLogpT>, Acc>;
  static_assert(inputs_ok,
                "consr::linear_token_logprobs_backward: lse and grad_token_logp must be views of accum_t<T>");
  if constexpr (detail::all_host_v<S1, S2, S3, S4, S5> && same_type && inputs_ok)
    detail::linear_token_logprobs_backward_impl<Gemm, T, Label>(hidden, weight, bias, labels, lse, grad_token_logp,
                                                                grad_hidden, grad_weight, grad_bias, options,
                                                                workspace);
}

}  // namespace consr
