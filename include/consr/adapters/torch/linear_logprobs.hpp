// consr/adapters/torch/linear_logprobs.hpp — memory-bounded token log-probs from hidden states and
// the output projection (spec §4, consr/linear_logprobs.hpp) on at::Tensor, with autograd, and
// torch_gemm, the GEMM policy on ATen's matrix product. Part of consr/adapters/torch.hpp.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../../linear_logprobs.hpp"
#include "common.hpp"
#include "registry.hpp"

namespace consr {
namespace libtorch {

/// GEMM policy (consr/detail/gemm.hpp's contract) on ATen's matrix product, i.e. the BLAS LibTorch
/// was built with: the row-major operands are wrapped with at::from_blob (no copy) and
/// C = alpha·op(A)·op(B) + beta·C is one in-place addmm_ (beta = 0 ignores C's contents, as BLAS).
struct torch_gemm {
  template <class T>
  static at::Tensor matrix(const T* data, index_t rows, index_t cols, index_t ld) {
    return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1}, at::TensorOptions().dtype(torch_dtype_v<T>));
  }
  template <class T>
  static void run(index_t m, index_t n, const at::Tensor& a, const at::Tensor& b, T alpha, T beta, T* c,
                  index_t ldc) {
    if (m == 0 || n == 0) return;
    at::Tensor out = matrix<T>(c, m, n, ldc);
    out.addmm_(a, b, beta, alpha);
  }
  /// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C.
  template <class T>
  static void gemm_nt(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, m, k, lda), matrix(b, n, k, ldb).t(), alpha, beta, c, ldc);
  }
  /// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C.
  template <class T>
  static void gemm_nn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, m, k, lda), matrix(b, k, n, ldb), alpha, beta, c, ldc);
  }
  /// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C.
  template <class T>
  static void gemm_tn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, k, m, lda).t(), matrix(b, k, n, ldb), alpha, beta, c, ldc);
  }
};

namespace detail {

/// linear_token_logprobs' arguments after validation: hidden [N, H] and labels [N] as rows (a copy
/// only where the rows of a [B, L, H] view cannot be merged), weight [V, H], bias [V] or empty.
struct linear_inputs {
  at::Tensor hidden, weight, bias, labels;
  bool has_bias;
};

inline linear_inputs check_linear_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                         bool has_bias, const at::Tensor& labels,
                                         const linear_logprob_options& options, const char* fn) {
  check_defined(hidden, fn, "hidden");
  check_defined(weight, fn, "weight");
  check_defined(labels, fn, "labels");
  check_floating(hidden, fn, "hidden");
  CONSR_TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), fn, "weight", "has dtype ",
                    dtype_name(weight.scalar_type()), " but 'hidden' has dtype ", dtype_name(hidden.scalar_type()),
                    " (hidden, weight and bias share one dtype)");
  check_index_dtype(labels, fn, "labels");
  CONSR_TORCH_CHECK(hidden.dim() == 2 || hidden.dim() == 3, fn, "hidden", "has shape ", shape_string(hidden.sizes()),
                    " but must be [N, H] or [B, L, H]");
  const auto rows = hidden.sizes().slice(0, static_cast<std::size_t>(hidden.dim() - 1));
  CONSR_TORCH_CHECK(labels.sizes() == rows, fn, "labels", "has shape ", shape_string(labels.sizes()), " but hidden ",
                    shape_string(hidden.sizes()), " needs labels ", shape_string(rows),
                    " (one label per row, already aligned: the causal shift is the caller's)");
  check_dim(weight, 2, fn, "weight");
  CONSR_TORCH_CHECK(weight.size(1) == hidden.size(-1), fn, "weight", "has shape ", shape_string(weight.sizes()),
                    " but must be [V, ", hidden.size(-1), "] (its columns are the hidden size of 'hidden')");
  CONSR_TORCH_CHECK(weight.size(1) <= 1 || weight.stride(1) == 1, fn, "weight", "rows have stride ",
                    weight.stride(1), " but must be contiguous (stride 1); pass weight.contiguous()");
  is_cuda_tensor(hidden, fn, "hidden");
  check_same_device(weight, hidden, fn, "weight", "hidden");
  check_same_device(labels, hidden, fn, "labels", "hidden");
  if (has_bias) {
    check_defined(bias, fn, "bias");
    CONSR_TORCH_CHECK(bias.scalar_type() == hidden.scalar_type(), fn, "bias", "has dtype ",
                      dtype_name(bias.scalar_type()), " but 'hidden' has dtype ", dtype_name(hidden.scalar_type()));
    check_shape(bias, {weight.size(0)}, fn, "bias", "one per vocabulary entry, rows of weight");
    check_same_device(bias, hidden, fn, "bias", "hidden");
  }
  CONSR_TORCH_CHECK(std::isfinite(options.temperature) && options.temperature > 0.0, fn, "temperature",
                    "must be finite and > 0, got ", options.temperature);
  CONSR_TORCH_CHECK(options.vocab_chunk > 0, fn, "vocab_chunk", "must be > 0, got ", options.vocab_chunk);
  check_labels_range(labels, weight.size(0), options.ignore_index, fn);
  linear_inputs in;
  in.hidden = hidden.reshape({-1, hidden.size(-1)});
  if (in.hidden.size(1) > 1 && in.hidden.stride(1) != 1) in.hidden = in.hidden.contiguous();
  in.weight = weight;
  in.bias = has_bias ? bias.contiguous() : at::Tensor();
  in.labels = labels.reshape({-1});
  in.has_bias = has_bias;
  return in;
}

}  // namespace detail

/// The autograd function of linear_token_logprobs: saves hidden, weight, bias, labels and lse and
/// recomputes the logits chunk by chunk in the backward (three GEMMs, none of them N × V).
/// `bias` is always a tensor argument (an empty one when `has_bias` is false) because
/// Function::apply needs defined tensors.
struct linear_logprobs_function : public torch::autograd::Function<linear_logprobs_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& bias, bool has_bias, const at::Tensor& labels,
                            const linear_logprob_options& options) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
    const detail::linear_inputs in = detail::check_linear_inputs(hidden, weight, bias, has_bias, labels, options, fn);
    const at::TensorOptions out_options = hidden.options().dtype(accum_dtype(hidden.scalar_type()));
    at::Tensor token_logp = at::empty({in.hidden.size(0)}, out_options);
    at::Tensor lse = at::empty({in.hidden.size(0)}, out_options);
    if (hidden.device().is_cuda()) {
      detail::cuda_entry(cuda_backend_registry().linear_token_logprobs, fn, "hidden", "linear_token_logprobs")(
          in.hidden, in.weight, in.bias, in.labels, token_logp, lse, options);
    } else {
      forward_on_cpu(in, token_logp, lse, options);
    }
    ctx->save_for_backward({in.hidden, in.weight, in.has_bias ? in.bias : at::empty({0}, weight.options()),
                            in.labels, lse});
    ctx->saved_data["has_bias"] = in.has_bias;
    ctx->saved_data["temperature"] = options.temperature;
    ctx->saved_data["ignore_index"] = static_cast<int64_t>(options.ignore_index);
    ctx->saved_data["vocab_chunk"] = static_cast<int64_t>(options.vocab_chunk);
    ctx->saved_data["hidden_sizes"] = hidden.sizes().vec();
    return token_logp.view(labels.sizes());
  }

  static void forward_on_cpu(const detail::linear_inputs& in, const at::Tensor& token_logp, const at::Tensor& lse,
                             const linear_logprob_options& options) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
    detail::dispatch_values_and_labels(in.hidden, in.labels, fn, "hidden", [&](auto tag, auto label_tag) {
      using T = typename decltype(tag)::type;
      using Label = typename decltype(label_tag)::type;
      using Acc = accum_t<T>;
      detail::translate_errors([&] {
        consr::linear_token_logprobs<torch_gemm>(
            host_view_of<const T, 2>(in.hidden, "hidden", fn), host_view_of<const T, 2>(in.weight, "weight", fn),
            optional_view_of<const T, 1>(in.has_bias ? in.bias : at::Tensor(), "bias", fn),
            host_view_of<const Label, 1>(in.labels, "labels", fn), host_view_of<Acc, 1>(token_logp, "token_logp", fn),
            host_view_of<Acc, 1>(lse, "lse", fn), options);
      });
    });
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs (backward)";
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &bias = saved[2], &labels = saved[3], &lse = saved[4];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    linear_logprob_options options;
    options.temperature = ctx->saved_data["temperature"].toDouble();
    options.ignore_index = ctx->saved_data["ignore_index"].toInt();
    options.vocab_chunk = ctx->saved_data["vocab_chunk"].toInt();
    const std::vector<int64_t> hidden_sizes = ctx->saved_data["hidden_sizes"].toIntVector();
    const bool want_hidden = ctx->needs_input_grad(0), want_weight = ctx->needs_input_grad(1);
    const bool want_bias = has_bias && ctx->needs_input_grad(2);
    const at::ScalarType acc = accum_dtype(hidden.scalar_type());
    const at::TensorOptions acc_options = hidden.options().dtype(acc);
    // grad_hidden is overwritten; grad_weight and grad_bias are accumulated into zeros.
    at::Tensor grad_hidden = want_hidden ? at::empty(hidden.sizes(), acc_options) : at::Tensor();
    at::Tensor grad_weight = want_weight ? at::zeros(weight.sizes(), acc_options) : at::Tensor();
    at::Tensor grad_bias = want_bias ? at::zeros({weight.size(0)}, acc_options) : at::Tensor();
    const at::Tensor& g = grad_outputs[0];
    if (!g.defined()) {
      if (want_hidden) grad_hidden.zero_();
    } else if ((want_hidden || want_weight || want_bias) && hidden.device().is_cuda()) {
      const at::Tensor upstream = g.reshape({-1}).to(acc).contiguous();
      detail::cuda_entry(cuda_backend_registry().linear_token_logprobs_backward, fn, "hidden",
                         "linear_token_logprobs (backward)")(hidden, weight, has_bias ? bias : at::Tensor(), labels,
                                                             lse, upstream, grad_hidden, grad_weight, grad_bias,
                                                             options);
    } else if (want_hidden || want_weight || want_bias) {
      const at::Tensor upstream = g.reshape({-1}).to(acc).contiguous();
      detail::dispatch_values_and_labels(hidden, labels, fn, "hidden", [&](auto tag, auto label_tag) {
        using T = typename decltype(tag)::type;
        using Label = typename decltype(label_tag)::type;
        using Acc = accum_t<T>;
        detail::translate_errors([&] {  // gradients not wanted are undefined tensors: empty views
          consr::linear_token_logprobs_backward<torch_gemm>(
              host_view_of<const T, 2>(hidden, "hidden", fn), host_view_of<const T, 2>(weight, "weight", fn),
              optional_view_of<const T, 1>(has_bias ? bias : at::Tensor(), "bias", fn),
              host_view_of<const Label, 1>(labels, "labels", fn), host_view_of<const Acc, 1>(lse, "lse", fn),
              host_view_of<const Acc, 1>(upstream, "grad_token_logp", fn),
              optional_view_of<Acc, 2>(grad_hidden, "grad_hidden", fn),
              optional_view_of<Acc, 2>(grad_weight, "grad_weight", fn),
              optional_view_of<Acc, 1>(grad_bias, "grad_bias", fn), options);
        });
      });
    }
    const at::ScalarType dtype = hidden.scalar_type();
    return {want_hidden ? grad_hidden.to(dtype).view(hidden_sizes) : at::Tensor(),
            want_weight ? grad_weight.to(dtype) : at::Tensor(),
            want_bias ? grad_bias.to(dtype) : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

/// Token log-probs from hidden states and the output projection (spec §4, last paragraph), with
/// autograd, without ever holding the N × V logits: logp = z[y] − logsumexp(z), z = (hidden·Wᵀ + b)/τ,
/// exactly what token_logprobs(at::linear(hidden, weight, bias), labels) gives, through
/// consr::linear_token_logprobs in vocabulary chunks of options.vocab_chunk with ATen's GEMM
/// (torch_gemm). The backward recomputes each chunk and yields ∂/∂hidden, ∂/∂weight and ∂/∂bias
/// (only those that require grad: a frozen lm_head skips a quarter of the work).
/// - hidden [N, H] or [B, L, H], weight [V, H] (rows contiguous), bias [V] or an undefined tensor for
///   none: one floating dtype; labels [N] or [B, L] (int64/int32) aligned with the rows (the causal
///   shift is the caller's). Returns labels' shape, float32 (float64 for float64). CPU tensors run
///   the host algorithm; CUDA tensors consr::cuda's (cuBLAS GEMMs on PyTorch's handle and stream).
/// Throws c10::Error naming 'hidden', 'weight', 'bias', 'labels' (with the offending index),
/// 'temperature' or 'vocab_chunk'.
inline at::Tensor linear_token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                        const at::Tensor& labels, const linear_logprob_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
  detail::check_defined(hidden, fn, "hidden");
  detail::check_defined(weight, fn, "weight");
  detail::check_defined(labels, fn, "labels");
  const bool has_bias = bias.defined();
  const at::Tensor bias_argument = has_bias ? bias : at::empty({0}, weight.options());
  return linear_logprobs_function::apply(hidden, weight, bias_argument, has_bias, labels, options);
}

}  // namespace libtorch
}  // namespace consr
