// consr/adapters/torch/logprobs.hpp — token log-probs of logits (spec §4) on at::Tensor: the
// forward and fused backward without autograd, and token_logprobs with autograd. Part of
// consr/adapters/torch.hpp.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "../../logprobs.hpp"
#include "common.hpp"
#include "registry.hpp"

namespace consr {
namespace libtorch {
namespace detail {

/// Shared checks of token_logprobs / token_logprobs_backward. Returns true for [B, L, V] logits.
inline bool check_logprob_inputs(const at::Tensor& logits, const at::Tensor& labels, const logprob_options& options,
                                 const char* fn, bool validate_labels = true) {
  check_defined(logits, fn, "logits");
  check_defined(labels, fn, "labels");
  check_floating(logits, fn, "logits");
  check_index_dtype(labels, fn, "labels");
  CONSR_TORCH_CHECK(logits.dim() == 2 || logits.dim() == 3, fn, "logits", "has shape ",
                    shape_string(logits.sizes()), " but must be [N, V] or [B, L, V]");
  CONSR_TORCH_CHECK(labels.sizes() == logits.sizes().slice(0, static_cast<std::size_t>(logits.dim() - 1)), fn,
                    "labels", "has shape ", shape_string(labels.sizes()), " but logits ",
                    shape_string(logits.sizes()), " need labels ",
                    shape_string(logits.sizes().slice(0, static_cast<std::size_t>(logits.dim() - 1))),
                    " (one label per row, already aligned: the causal shift is the caller's)");
  is_cuda_tensor(logits, fn, "logits");
  check_same_device(labels, logits, fn, "labels", "logits");
  const int64_t vocab = logits.size(-1);
  CONSR_TORCH_CHECK(vocab <= 1 || logits.stride(-1) == 1, fn, "logits",
                    "the vocabulary (last) dimension has stride ", logits.stride(-1),
                    " but must be contiguous (stride 1); pass logits.contiguous()");
  CONSR_TORCH_CHECK(std::isfinite(options.temperature) && options.temperature > 0.0, fn, "temperature",
                    "must be finite and > 0, got ", options.temperature);
  // On CUDA this costs one synchronization; the autograd backward skips it (the forward checked).
  if (validate_labels) check_labels_range(labels, vocab, options.ignore_index, fn);
  return logits.dim() == 3;
}

}  // namespace detail

// ================================================================================================
// Token log-probs (spec §4)
// ================================================================================================

/// Forward of token_logprobs without autograd: returns (token_logp, lse), both of labels' shape and
/// of dtype accum_dtype(logits) (float64 for float64 logits, else float32):
///   token_logp = z[y] − logsumexp(z),  lse = logsumexp(z),  z = logits / temperature.
/// - logits [N, V] or [B, L, V] (float32/64, bfloat16, float16), the vocabulary dimension contiguous,
///   any other strides (a view such as logits[:, :-1] is read in place, without a copy);
/// - labels [N] or [B, L] (int64 or int32) on the same device, already aligned with the rows: the
///   causal shift (logits[:, :-1] against labels[:, 1:]) is the caller's (spec §2). Rows whose label
///   is options.ignore_index get 0.
/// CPU tensors run consr::token_logprobs; CUDA tensors the CUDA registry's kernel.
/// Throws c10::Error naming 'logits', 'labels' (dtype, shape, device, a label outside [0, V) that is
/// not ignore_index, with its index) or 'temperature'.
inline std::tuple<at::Tensor, at::Tensor> token_logprobs_forward(const at::Tensor& logits, const at::Tensor& labels,
                                                                 const logprob_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::token_logprobs";
  const bool batched = detail::check_logprob_inputs(logits, labels, options, fn);
  const at::TensorOptions out_options = logits.options().dtype(accum_dtype(logits.scalar_type()));
  at::Tensor token_logp = at::empty(labels.sizes(), out_options);
  at::Tensor lse = at::empty(labels.sizes(), out_options);
  if (logits.device().is_cuda()) {
    const auto run = detail::cuda_entry(cuda_backend_registry().token_logprobs, fn, "logits", "token_logprobs");
    detail::for_each_row_block<4>({logits, labels, token_logp, lse}, batched, [&](const std::array<at::Tensor, 4>& b) {
      run(b[0], b[1], b[2], b[3], options);
    });
    return {token_logp, lse};
  }
  detail::dispatch_values_and_labels(logits, labels, fn, "logits", [&](auto logit_tag, auto label_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Label = typename decltype(label_tag)::type;
    using Acc = accum_t<Logit>;
    detail::for_each_row_block<4>({logits, labels, token_logp, lse}, batched, [&](const std::array<at::Tensor, 4>& b) {
      detail::translate_errors([&] {
        consr::token_logprobs<Logit, Label>(host_view_of<const Logit, 2>(b[0], "logits", fn),
                                            host_view_of<const Label, 1>(b[1], "labels", fn),
                                            host_view_of<Acc, 1>(b[2], "token_logp", fn),
                                            host_view_of<Acc, 1>(b[3], "lse", fn), options);
      });
    });
  });
  return {token_logp, lse};
}

/// Backward of token_logprobs without autograd (spec §4): returns grad_logits, a new contiguous
/// tensor of logits' shape and dtype,
///   grad_logits[i, v] = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)),  g = grad_token_logp,
/// in one fused pass per row (no other N × V temporary). `lse` is the forward's; grad_token_logp
/// has labels' shape (any floating dtype, any strides). Throws c10::Error naming the argument.
inline at::Tensor token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                          const at::Tensor& grad_token_logp, const logprob_options& options = {});

namespace detail {

inline at::Tensor token_logprobs_backward_impl(const at::Tensor& logits, const at::Tensor& labels,
                                               const at::Tensor& lse, const at::Tensor& grad_token_logp,
                                               const logprob_options& options, bool validate_labels) {
  constexpr const char* fn = "consr::libtorch::token_logprobs_backward";
  const bool batched = detail::check_logprob_inputs(logits, labels, options, fn, validate_labels);
  const at::ScalarType acc = accum_dtype(logits.scalar_type());
  detail::check_defined(lse, fn, "lse");
  detail::check_dtype_in(lse, {acc}, fn, "lse");
  detail::check_shape(lse, labels.sizes(), fn, "lse", "one per row, from the forward");
  detail::check_same_device(lse, logits, fn, "lse", "logits");
  detail::check_defined(grad_token_logp, fn, "grad_token_logp");
  detail::check_floating(grad_token_logp, fn, "grad_token_logp");
  detail::check_shape(grad_token_logp, labels.sizes(), fn, "grad_token_logp", "one per row");
  detail::check_same_device(grad_token_logp, logits, fn, "grad_token_logp", "logits");
  const at::Tensor grad = grad_token_logp.to(acc);
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (logits.device().is_cuda()) {
    const auto run = detail::cuda_entry(cuda_backend_registry().token_logprobs_backward, fn, "logits",
                                        "token_logprobs_backward");
    detail::for_each_row_block<5>({logits, labels, lse, grad, grad_logits}, batched,
                                  [&](const std::array<at::Tensor, 5>& b) { run(b[0], b[1], b[2], b[3], b[4], options); });
    return grad_logits;
  }
  detail::dispatch_values_and_labels(logits, labels, fn, "logits", [&](auto logit_tag, auto label_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Label = typename decltype(label_tag)::type;
    using Acc = accum_t<Logit>;
    detail::for_each_row_block<5>(
        {logits, labels, lse, grad, grad_logits}, batched, [&](const std::array<at::Tensor, 5>& b) {
          detail::translate_errors([&] {
            consr::token_logprobs_backward<Logit, Label, Logit>(
                host_view_of<const Logit, 2>(b[0], "logits", fn), host_view_of<const Label, 1>(b[1], "labels", fn),
                host_view_of<const Acc, 1>(b[2], "lse", fn), host_view_of<const Acc, 1>(b[3], "grad_token_logp", fn),
                host_view_of<Logit, 2>(b[4], "grad_logits", fn), options);
          });
        });
  });
  return grad_logits;
}

}  // namespace detail

inline at::Tensor token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                          const at::Tensor& grad_token_logp, const logprob_options& options) {
  return detail::token_logprobs_backward_impl(logits, labels, lse, grad_token_logp, options, true);
}

/// The autograd function of token_logprobs: saves logits, labels and lse (one float per row) and
/// computes ∂L/∂logits in one fused pass; an undefined or all-zero upstream gradient gives zeros
/// without running the kernel. Labels get no gradient.
struct token_logprobs_function : public torch::autograd::Function<token_logprobs_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            const logprob_options& options) {
    auto [token_logp, lse] = token_logprobs_forward(logits, labels, options);
    ctx->save_for_backward({logits, labels, lse});
    ctx->saved_data["temperature"] = options.temperature;
    ctx->saved_data["ignore_index"] = static_cast<int64_t>(options.ignore_index);
    ctx->set_materialize_grads(false);
    return token_logp;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    if (!ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor& grad = grad_outputs[0];
    // Zero upstream gradient (e.g. a loss that does not use these log-probs): zeros, no kernel.
    if (!grad.defined() || (grad.device().is_cpu() && !grad.ne(0).any().item<bool>()))
      return {at::zeros_like(logits, at::MemoryFormat::Contiguous), at::Tensor(), at::Tensor()};
    logprob_options options;
    options.temperature = ctx->saved_data["temperature"].toDouble();
    options.ignore_index = ctx->saved_data["ignore_index"].toInt();
    return {detail::token_logprobs_backward_impl(logits, saved[1], saved[2], grad, options, false), at::Tensor(),
            at::Tensor()};
  }
};

/// Token log-probs with autograd (spec §4): logp = z[y] − logsumexp(z), z = logits / temperature,
/// of labels' shape, float32 (float64 for float64 logits). Differentiable w.r.t. logits (fused
/// backward: the only N × V memory is the gradient itself). Inputs as token_logprobs_forward:
/// logits [N, V] or [B, L, V], labels [N] or [B, L] aligned with the rows (shift them yourself),
/// ignore_index rows give 0 and gradient 0. Throws c10::Error naming the argument.
inline at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& labels,
                                 const logprob_options& options = {}) {
  // Function::apply reads every tensor argument's device: undefined ones are rejected first.
  detail::check_defined(logits, "consr::libtorch::token_logprobs", "logits");
  detail::check_defined(labels, "consr::libtorch::token_logprobs", "labels");
  return token_logprobs_function::apply(logits, labels, options);
}

}  // namespace libtorch
}  // namespace consr
