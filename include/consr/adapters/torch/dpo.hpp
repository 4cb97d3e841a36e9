// consr/adapters/torch/dpo.hpp — the DPO objectives of ConSR (spec §7: standard DPO, eq. 7, and the
// ConSR surrogate, eq. 14) on at::Tensor, with autograd through both sides' policy log-probs.
// Part of consr/adapters/torch.hpp.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "../../dpo.hpp"
#include "common.hpp"
#include "registry.hpp"

namespace consr {
namespace libtorch {

/// One side (chosen or rejected) of P preference pairs, as tensors on one device. Either packed
/// (policy_logp [n] with offsets [P + 1], int64/int32) or padded (policy_logp [P, L] and no offsets;
/// mark padding with labels == ignore_index). The policy log-probs are the differentiable input
/// (float32/64; bfloat16/float16 are upcast to float32); everything else is a constant (no gradient):
///  - reference_logp: per token, policy_logp's shape; or reference_logp_sum [P] per sequence (exactly one);
///  - labels (optional, policy_logp's shape, int64/int32): tokens equal to ignore_index are not scored;
///  - weights (policy_logp's shape): visual weights ω_t (visual_weights()), needed by the consr loss
///    with visual_weights on.
struct dpo_side {
  at::Tensor policy_logp;
  at::Tensor offsets;
  at::Tensor reference_logp;
  at::Tensor reference_logp_sum;
  at::Tensor labels;
  at::Tensor weights;
};

namespace detail {
/// A dpo_side after validation: 1-D tensors on one device, policy/reference/weights of one float
/// dtype (float32 or float64), offsets and labels int64; the constants are detached. Undefined
/// tensors are absent (one of the two references is). What the CUDA registry's dpo entries receive.
struct dpo_prepared_side : dpo_side {};
}  // namespace detail

/// The columns of dpo_result::metrics (consr::dpo_pair_metrics, spec §7 "reported per pair").
enum class dpo_metric : int {
  margin_logit = 0,     ///< Δ (eq. 7) or Δ' (eq. 11)
  sigma_neg = 1,        ///< σ(−Δ')
  chosen_reward = 2,    ///< β·Σ(a − a_ref)
  rejected_reward = 3,  ///< β·Σ(b − b_ref)
  reward_margin = 4,    ///< chosen_reward − rejected_reward
  accuracy = 5,         ///< 1 if Δ' > 0 else 0
  dpo_loss = 6,         ///< −log σ(Δ') = softplus(−Δ'), the DPO loss value of the pair
  loss = 7,             ///< the pair's objective being reduced (L or the ConSR surrogate L')
};
inline constexpr int dpo_metric_count = 8;

/// Name of a metric column ("margin_logit", ...), as torch.ops.consr.dpo_metric_names() lists them.
inline const char* to_string(dpo_metric m) noexcept {
  switch (m) {
    case dpo_metric::margin_logit: return "margin_logit";
    case dpo_metric::sigma_neg: return "sigma_neg";
    case dpo_metric::chosen_reward: return "chosen_reward";
    case dpo_metric::rejected_reward: return "rejected_reward";
    case dpo_metric::reward_margin: return "reward_margin";
    case dpo_metric::accuracy: return "accuracy";
    case dpo_metric::dpo_loss: return "dpo_loss";
    case dpo_metric::loss: return "loss";
  }
  return "unknown";
}

/// What dpo_loss returns: `loss` (a 0-dim tensor for reduction mean/sum, [P] for none;
/// differentiable w.r.t. both sides' policy_logp) and `metrics` [P, 8] (no gradient), one column
/// per dpo_metric.
struct dpo_result {
  at::Tensor loss;
  at::Tensor metrics;
  /// Column `m` of metrics, [P].
  at::Tensor metric(dpo_metric m) const { return metrics.select(1, static_cast<int64_t>(m)); }
};

/// "consr" / "standard" as a dpo_loss_type (consr::parse_dpo_loss_type). Throws c10::Error naming
/// 'loss_type' otherwise.
inline dpo_loss_type parse_dpo_loss_type(const std::string& name) {
  return detail::parse_option("consr::libtorch::parse_dpo_loss_type", [&] { return consr::parse_dpo_loss_type(name); });
}

/// "mean" / "sum" / "none" as a loss_reduction (consr::parse_loss_reduction). Throws c10::Error
/// naming 'reduction' otherwise.
inline loss_reduction parse_loss_reduction(const std::string& name) {
  return detail::parse_option("consr::libtorch::parse_loss_reduction",
                              [&] { return consr::parse_loss_reduction(name); });
}

namespace detail {

struct dpo_arg_names {
  std::string policy_logp, offsets, reference_logp, reference_logp_sum, labels, weights;
  explicit dpo_arg_names(const std::string& side)
      : policy_logp(side + ".policy_logp"),
        offsets(side + ".offsets"),
        reference_logp(side + ".reference_logp"),
        reference_logp_sum(side + ".reference_logp_sum"),
        labels(side + ".labels"),
        weights(side + ".weights") {}
};

/// The float dtype the DPO computation runs in for policy log-probs of dtype `s`.
inline at::ScalarType dpo_value_dtype(at::ScalarType s) noexcept { return s == at::kDouble ? at::kDouble : at::kFloat; }

inline at::Tensor dpo_optional_float(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& policy,
                                     const std::string& arg, const std::string& policy_arg, bool same_shape,
                                     const char* fn) {
  if (!t.defined()) return t;
  check_floating(t, fn, arg.c_str());
  check_same_device(t, policy, fn, arg.c_str(), policy_arg.c_str());
  if (same_shape)
    CONSR_TORCH_CHECK(t.sizes() == policy.sizes(), fn, arg.c_str(), "has shape ", shape_string(t.sizes()), " but '",
                      policy_arg, "' has shape ", shape_string(policy.sizes()), " (one value per token)");
  else
    check_dim(t, 1, fn, arg.c_str());
  return t.detach().reshape({-1}).to(dtype);
}

/// Validates one side and brings it to the packed 1-D form. `policy_logp` stays differentiable.
inline dpo_prepared_side prepare_dpo_side(const dpo_side& s, const std::string& side, at::ScalarType value_dtype,
                                          const at::Tensor& device_reference, const std::string& device_reference_arg,
                                          const char* fn) {
  const dpo_arg_names names(side);
  dpo_prepared_side p;
  check_defined(s.policy_logp, fn, names.policy_logp.c_str());
  check_floating(s.policy_logp, fn, names.policy_logp.c_str());
  is_cuda_tensor(s.policy_logp, fn, names.policy_logp.c_str());
  check_same_device(s.policy_logp, device_reference, fn, names.policy_logp.c_str(), device_reference_arg.c_str());
  CONSR_TORCH_CHECK(dpo_value_dtype(s.policy_logp.scalar_type()) == value_dtype, fn, names.policy_logp.c_str(),
                    "has dtype ", dtype_name(s.policy_logp.scalar_type()), " but '", device_reference_arg,
                    "' has dtype ", dtype_name(device_reference.scalar_type()),
                    "; both sides must be float64, or both float32/bfloat16/float16");
  const at::Tensor& policy = s.policy_logp;
  if (s.offsets.defined()) {
    check_index_dtype(s.offsets, fn, names.offsets.c_str());
    check_dim(s.offsets, 1, fn, names.offsets.c_str());
    check_same_device(s.offsets, policy, fn, names.offsets.c_str(), names.policy_logp.c_str());
    CONSR_TORCH_CHECK(policy.dim() == 1, fn, names.policy_logp.c_str(), "has shape ", shape_string(policy.sizes()),
                      " but with '", names.offsets,
                      "' it must be packed 1-D [n]; pass padded [P, L] log-probs without offsets");
    p.offsets = s.offsets.to(at::kLong);
  } else {
    CONSR_TORCH_CHECK(policy.dim() == 2, fn, names.policy_logp.c_str(), "has shape ", shape_string(policy.sizes()),
                      " but without '", names.offsets,
                      "' it must be padded [P, L] (mark padding with labels == ignore_index)");
    p.offsets = at::arange(policy.size(0) + 1, policy.options().dtype(at::kLong)).mul(policy.size(1));
  }
  p.policy_logp = policy.reshape({-1}).to(value_dtype);
  p.reference_logp =
      dpo_optional_float(s.reference_logp, value_dtype, policy, names.reference_logp, names.policy_logp, true, fn);
  p.reference_logp_sum = dpo_optional_float(s.reference_logp_sum, value_dtype, policy, names.reference_logp_sum,
                                            names.policy_logp, false, fn);
  p.weights = dpo_optional_float(s.weights, value_dtype, policy, names.weights, names.policy_logp, true, fn);
  CONSR_TORCH_CHECK(p.reference_logp.defined() || p.reference_logp_sum.defined(), fn, names.reference_logp.c_str(),
                    "is missing: pass the reference model's log-probs per token ('", names.reference_logp,
                    "') or per sequence ('", names.reference_logp_sum, "')");
  if (s.labels.defined()) {
    check_index_dtype(s.labels, fn, names.labels.c_str());
    check_same_device(s.labels, policy, fn, names.labels.c_str(), names.policy_logp.c_str());
    CONSR_TORCH_CHECK(s.labels.sizes() == policy.sizes(), fn, names.labels.c_str(), "has shape ",
                      shape_string(s.labels.sizes()), " but '", names.policy_logp, "' has shape ",
                      shape_string(policy.sizes()), " (one label per token)");
    p.labels = s.labels.reshape({-1}).to(at::kLong);
  }
  return p;
}

/// One prepared side as consr::dpo_sequences in memory space Space (host views of CPU tensors,
/// device views of CUDA tensors for consr::cuda::dpo_*), `policy_logp` being the side's log-probs.
template <class T, class Space = host_space>
dpo_sequences<T, std::int64_t, std::int64_t, Space> dpo_sequences_of(const at::Tensor& policy_logp,
                                                                     const dpo_prepared_side& s,
                                                                     const dpo_arg_names& names, const char* fn) {
  dpo_sequences<T, std::int64_t, std::int64_t, Space> q;
  q.policy_logp = view_of<const T, 1, Space>(policy_logp, names.policy_logp.c_str(), fn);
  q.offsets = view_of<const std::int64_t, 1, Space>(s.offsets, names.offsets.c_str(), fn);
  q.reference_logp = optional_view_of<const T, 1, Space>(s.reference_logp, names.reference_logp.c_str(), fn);
  q.reference_logp_sum =
      optional_view_of<const T, 1, Space>(s.reference_logp_sum, names.reference_logp_sum.c_str(), fn);
  q.labels = optional_view_of<const std::int64_t, 1, Space>(s.labels, names.labels.c_str(), fn);
  q.weights = optional_view_of<const T, 1, Space>(s.weights, names.weights.c_str(), fn);
  return q;
}

/// Column m of a [P, 8] metrics tensor as a view (empty for P = 0: no pointer arithmetic on null).
template <class T, class Space>
strided_view<T, 1, Space> metric_column(const at::Tensor& metrics, dpo_metric m) {
  if (metrics.size(0) == 0) return {};
  const index_t ext[1] = {metrics.size(0)};
  const index_t str[1] = {metrics.stride(0)};
  return strided_view<T, 1, Space>(static_cast<T*>(metrics.data_ptr()) + static_cast<int>(m) * metrics.stride(1),
                                   ext, str);
}

/// The columns of a [P, 8] metrics tensor (dpo_metric order) as consr::dpo_pair_metrics.
template <class T, class Space = host_space>
dpo_pair_metrics<T, Space> dpo_metrics_of(const at::Tensor& metrics) {
  dpo_pair_metrics<T, Space> m;
  m.margin_logit = metric_column<T, Space>(metrics, dpo_metric::margin_logit);
  m.sigma_neg = metric_column<T, Space>(metrics, dpo_metric::sigma_neg);
  m.chosen_reward = metric_column<T, Space>(metrics, dpo_metric::chosen_reward);
  m.rejected_reward = metric_column<T, Space>(metrics, dpo_metric::rejected_reward);
  m.reward_margin = metric_column<T, Space>(metrics, dpo_metric::reward_margin);
  m.accuracy = metric_column<T, Space>(metrics, dpo_metric::accuracy);
  m.dpo_loss = metric_column<T, Space>(metrics, dpo_metric::dpo_loss);
  m.loss = metric_column<T, Space>(metrics, dpo_metric::loss);
  return m;
}

inline void save_dpo_side(torch::autograd::AutogradContext* ctx, const std::string& side, const dpo_prepared_side& s) {
  ctx->saved_data[side + ".offsets"] = s.offsets;
  ctx->saved_data[side + ".reference_logp"] = s.reference_logp;
  ctx->saved_data[side + ".reference_logp_sum"] = s.reference_logp_sum;
  ctx->saved_data[side + ".labels"] = s.labels;
  ctx->saved_data[side + ".weights"] = s.weights;
}

inline dpo_prepared_side load_dpo_side(torch::autograd::AutogradContext* ctx, const std::string& side,
                                       const at::Tensor& policy_logp) {
  dpo_prepared_side s;
  s.policy_logp = policy_logp;
  s.offsets = ctx->saved_data[side + ".offsets"].toTensor();
  s.reference_logp = ctx->saved_data[side + ".reference_logp"].toTensor();
  s.reference_logp_sum = ctx->saved_data[side + ".reference_logp_sum"].toTensor();
  s.labels = ctx->saved_data[side + ".labels"].toTensor();
  s.weights = ctx->saved_data[side + ".weights"].toTensor();
  return s;
}

inline void save_dpo_options(torch::autograd::AutogradContext* ctx, const dpo_options& o) {
  ctx->saved_data["loss"] = static_cast<int64_t>(o.loss);
  ctx->saved_data["beta"] = o.beta;
  ctx->saved_data["length_normalize"] = o.length_normalize;
  ctx->saved_data["visual_weights"] = o.visual_weights;
  ctx->saved_data["scale_by_beta"] = o.scale_by_beta;
  ctx->saved_data["reduction"] = static_cast<int64_t>(o.reduction);
  ctx->saved_data["ignore_index"] = static_cast<int64_t>(o.ignore_index);
}

inline dpo_options load_dpo_options(torch::autograd::AutogradContext* ctx) {
  dpo_options o;
  o.loss = static_cast<dpo_loss_type>(ctx->saved_data["loss"].toInt());
  o.beta = ctx->saved_data["beta"].toDouble();
  o.length_normalize = ctx->saved_data["length_normalize"].toBool();
  o.visual_weights = ctx->saved_data["visual_weights"].toBool();
  o.scale_by_beta = ctx->saved_data["scale_by_beta"].toBool();
  o.reduction = static_cast<loss_reduction>(ctx->saved_data["reduction"].toInt());
  o.ignore_index = ctx->saved_data["ignore_index"].toInt();
  return o;
}

}  // namespace detail

/// The constant (non-differentiable) tensors of both sides, as dpo_loss_function receives them.
struct dpo_constants {
  detail::dpo_prepared_side chosen;
  detail::dpo_prepared_side rejected;
};

/// The autograd function of dpo_loss: inputs the two packed policy log-prob tensors (1-D, float32
/// or float64), the constants and the options; outputs (loss, metrics), metrics non-differentiable.
/// Backward: consr::dpo_backward (eq. 8 / eq. 14 with σ(−Δ') held fixed), scaled by the upstream
/// gradient of loss (a scalar for mean/sum, one per pair for none); on the CPU from the gradient
/// scales the forward saved (no second pass over the log-probs).
struct dpo_loss_function : public torch::autograd::Function<dpo_loss_function> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& chosen_logp,
                                                const at::Tensor& rejected_logp, const dpo_constants& constants,
                                                const dpo_options& options) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const int64_t num_pairs = std::max<int64_t>(constants.chosen.offsets.size(0) - 1, 0);
    at::Tensor metrics = at::empty({num_pairs, dpo_metric_count}, chosen_logp.options());
    at::Tensor loss;
    if (chosen_logp.device().is_cuda()) {
      detail::dpo_prepared_side chosen = constants.chosen, rejected = constants.rejected;
      chosen.policy_logp = chosen_logp;
      rejected.policy_logp = rejected_logp;
      at::Tensor reduced = at::empty({1}, chosen_logp.options());
      detail::cuda_entry(cuda_backend_registry().dpo_forward, fn, "chosen.policy_logp", "dpo_loss")(
          chosen, rejected, options, reduced, metrics);
      loss = options.reduction == loss_reduction::none
                 ? metrics.select(1, static_cast<int64_t>(dpo_metric::loss)).clone()
                 : reduced.view({});
    } else {
      // Each pair's gradient scale (P doubles), so that the backward only writes the gradients
      // instead of summing the log-probs a second time.
      at::Tensor grad_scale = at::empty({num_pairs}, chosen_logp.options().dtype(at::kDouble));
      loss = cpu_forward(chosen_logp, rejected_logp, constants, options, metrics, grad_scale);
      ctx->saved_data["grad_scale"] = grad_scale;
    }
    ctx->save_for_backward({chosen_logp, rejected_logp});
    detail::save_dpo_side(ctx, "chosen", constants.chosen);
    detail::save_dpo_side(ctx, "rejected", constants.rejected);
    detail::save_dpo_options(ctx, options);
    ctx->mark_non_differentiable({metrics});
    return {loss, metrics};
  }

  /// The host forward: fills metrics and grad_scale (float64, one per pair, for the backward),
  /// returns the loss tensor.
  static at::Tensor cpu_forward(const at::Tensor& chosen_logp, const at::Tensor& rejected_logp,
                                const dpo_constants& constants, const dpo_options& options, const at::Tensor& metrics,
                                const at::Tensor& grad_scale) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const double total = detail::dispatch_float_or_double(chosen_logp, fn, "chosen.policy_logp", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto chosen = detail::dpo_sequences_of<T>(chosen_logp, constants.chosen, detail::dpo_arg_names("chosen"), fn);
      const auto rejected =
          detail::dpo_sequences_of<T>(rejected_logp, constants.rejected, detail::dpo_arg_names("rejected"), fn);
      const auto m = detail::dpo_metrics_of<T>(metrics);
      const auto saved = host_view_of<double, 1>(grad_scale, "grad_scale", fn);
      return detail::translate_errors([&] { return consr::dpo_forward(chosen, rejected, options, m, saved); });
    });
    return options.reduction == loss_reduction::none
               ? metrics.select(1, static_cast<int64_t>(dpo_metric::loss)).clone()
               : at::scalar_tensor(total, chosen_logp.options());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& chosen_logp = saved[0];
    const at::Tensor& rejected_logp = saved[1];
    const detail::dpo_prepared_side chosen_side = detail::load_dpo_side(ctx, "chosen", chosen_logp);
    const detail::dpo_prepared_side rejected_side = detail::load_dpo_side(ctx, "rejected", rejected_logp);
    const dpo_options options = detail::load_dpo_options(ctx);
    at::Tensor grad_chosen = at::empty({chosen_logp.size(0)}, chosen_logp.options());
    at::Tensor grad_rejected = at::empty({rejected_logp.size(0)}, rejected_logp.options());
    const at::Tensor& grad_loss = grad_outputs[0];
    if (chosen_logp.device().is_cuda()) {
      // The upstream gradient stays on the device: no synchronization in the backward.
      const int64_t count =
          options.reduction == loss_reduction::none ? std::max<int64_t>(chosen_side.offsets.size(0) - 1, 0) : 1;
      const at::Tensor upstream = grad_loss.defined()
                                      ? grad_loss.to(chosen_logp.scalar_type()).reshape({count}).contiguous()
                                      : at::zeros({count}, chosen_logp.options());
      detail::cuda_entry(cuda_backend_registry().dpo_backward, fn, "chosen.policy_logp", "dpo_loss (backward)")(
          chosen_side, rejected_side, options, upstream, grad_chosen, grad_rejected);
      return {grad_chosen, grad_rejected, at::Tensor(), at::Tensor()};
    }
    detail::dispatch_float_or_double(chosen_logp, fn, "chosen.policy_logp", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto chosen = detail::dpo_sequences_of<T>(chosen_logp, chosen_side, detail::dpo_arg_names("chosen"), fn);
      const auto rejected =
          detail::dpo_sequences_of<T>(rejected_logp, rejected_side, detail::dpo_arg_names("rejected"), fn);
      const auto gc = host_view_of<T, 1>(grad_chosen, "grad_chosen_logp", fn);
      const auto gr = host_view_of<T, 1>(grad_rejected, "grad_rejected_logp", fn);
      const auto saved = host_view_of<const double, 1>(ctx->saved_data["grad_scale"].toTensor(), "grad_scale", fn);
      detail::translate_errors([&] {
        if (options.reduction == loss_reduction::none) {
          const int64_t num_pairs = std::max<int64_t>(chosen_side.offsets.size(0) - 1, 0);
          const at::Tensor upstream = grad_loss.defined() ? grad_loss.to(chosen_logp.scalar_type()).contiguous()
                                                          : at::zeros({num_pairs}, chosen_logp.options());
          consr::dpo_backward(chosen, rejected, options, host_view_of<const T, 1>(upstream, "grad_loss", fn), gc, gr,
                              saved);
        } else {
          const double upstream = grad_loss.defined() ? grad_loss.item<double>() : 0.0;
          consr::dpo_backward(chosen, rejected, options, upstream, gc, gr, saved);
        }
      });
    });
    return {grad_chosen, grad_rejected, at::Tensor(), at::Tensor()};
  }
};

/// The DPO objective over P pairs (spec §7), with autograd through both sides' policy_logp:
///   standard (eq. 7):  L = −log σ(Δ),  Δ = β(Σ(a − a_ref) − Σ(b − b_ref));
///   consr (eq. 14):    L' = −sg(σ(−Δ'))·(Σ ω a − Σ ω b) [×β with scale_by_beta], Δ' of eq. 11 with
///                      length_normalize, ω = weights with visual_weights;
/// reduced over pairs by options.reduction. Returns loss and the [P, 8] per-pair metrics (dpo_metric).
/// Sides as dpo_side (packed with offsets, or padded [P, L]); references, labels and weights are
/// constants. CPU tensors run consr::dpo_forward / dpo_backward; CUDA tensors consr::cuda's (the
/// forward synchronizes once, to report bad offsets or empty sequences; the backward does not).
/// Throws c10::Error naming the argument ('chosen.offsets', 'rejected.weights', 'options.beta', ...):
/// dtype, shape, device mismatch, offsets not matching the packed length, a missing reference, an
/// empty sequence under length normalization (the message names the pair).
inline dpo_result dpo_loss(const dpo_side& chosen, const dpo_side& rejected, const dpo_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::dpo_loss";
  detail::check_defined(chosen.policy_logp, fn, "chosen.policy_logp");
  detail::check_floating(chosen.policy_logp, fn, "chosen.policy_logp");
  const at::ScalarType value_dtype = detail::dpo_value_dtype(chosen.policy_logp.scalar_type());
  dpo_constants constants;
  constants.chosen =
      detail::prepare_dpo_side(chosen, "chosen", value_dtype, chosen.policy_logp, "chosen.policy_logp", fn);
  constants.rejected =
      detail::prepare_dpo_side(rejected, "rejected", value_dtype, chosen.policy_logp, "chosen.policy_logp", fn);
  const at::Tensor chosen_logp = constants.chosen.policy_logp;
  const at::Tensor rejected_logp = constants.rejected.policy_logp;
  constants.chosen.policy_logp = at::Tensor();  // passed to the function as its differentiable inputs
  constants.rejected.policy_logp = at::Tensor();
  torch::autograd::variable_list out = dpo_loss_function::apply(chosen_logp, rejected_logp, constants, options);
  return {out[0], out[1]};
}

}  // namespace libtorch
}  // namespace consr
