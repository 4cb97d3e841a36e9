// The torch.ops.consr library: consr's LibTorch adapter (consr/adapters/torch.hpp) registered with
// the PyTorch dispatcher, so that Python trainers can call
//
//   torch.ops.load_library("libconsr_torch_ops.so")
//   logp = torch.ops.consr.token_logprobs(logits, labels)
//   logp = torch.ops.consr.linear_token_logprobs(hidden, lm_head.weight, None, labels)
//   loss, metrics = torch.ops.consr.dpo_loss(chosen_logp, rejected_logp, ...)
//   noisy = torch.ops.consr.add_diffusion_noise(image, seed)
//
// with autograd working. Every op is registered as a composite (CompositeImplicitAutograd) kernel
// that calls the adapter's torch::autograd::Function, which works the same on LibTorch 1.13 and 2.x
// and for CPU and CUDA tensors. Errors are c10::Error (Python: RuntimeError) naming the argument.
#include <torch/library.h>

#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include <consr/adapters/torch.hpp>

namespace {

namespace lt = consr::libtorch;

at::Tensor undefined_if_none(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

consr::rng_key make_key(int64_t seed, int64_t offset, const char* fn) {
  CONSR_TORCH_CHECK(seed >= 0, fn, "seed", "must be >= 0, got ", seed);
  CONSR_TORCH_CHECK(offset >= 0, fn, "offset", "must be >= 0, got ", offset);
  return consr::rng_key{static_cast<std::uint64_t>(seed), static_cast<std::uint64_t>(offset)};
}

std::uint64_t non_negative(int64_t value, const char* fn, const char* arg) {
  CONSR_TORCH_CHECK(value >= 0, fn, arg, "must be >= 0, got ", value);
  return static_cast<std::uint64_t>(value);
}

int int_argument(int64_t value, const char* fn, const char* arg) {
  CONSR_TORCH_CHECK(value >= std::numeric_limits<int>::min() && value <= std::numeric_limits<int>::max(), fn, arg,
                    "is ", value, ", outside the range of int");
  return static_cast<int>(value);
}

// The C++ adapter names the fields of dpo_side ('chosen.offsets'); the op's arguments are
// chosen_offsets, ...: rewrite the names so a Python message names the argument as written.
std::string python_argument_names(std::string message) {
  for (const char* side : {"'chosen.", "'rejected."}) {
    const std::string from = side;
    std::string to = from;
    to.back() = '_';
    for (std::size_t pos = message.find(from); pos != std::string::npos; pos = message.find(from, pos + to.size()))
      message.replace(pos, from.size(), to);
  }
  return message;
}

at::Tensor token_logprobs_op(const at::Tensor& logits, const at::Tensor& labels, double temperature,
                             int64_t ignore_index) {
  consr::logprob_options options;
  options.temperature = temperature;
  options.ignore_index = ignore_index;
  return lt::token_logprobs(logits, labels, options);
}

at::Tensor linear_token_logprobs_op(const at::Tensor& hidden, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                                    double temperature, int64_t ignore_index, int64_t vocab_chunk) {
  consr::linear_logprob_options options;
  options.temperature = temperature;
  options.ignore_index = ignore_index;
  options.vocab_chunk = vocab_chunk;
  return lt::linear_token_logprobs(hidden, weight, undefined_if_none(bias), labels, options);
}

std::tuple<at::Tensor, at::Tensor> dpo_loss_op(
    const at::Tensor& chosen_policy_logp, const at::Tensor& rejected_policy_logp,
    const c10::optional<at::Tensor>& chosen_offsets, const c10::optional<at::Tensor>& rejected_offsets,
    const c10::optional<at::Tensor>& chosen_reference_logp, const c10::optional<at::Tensor>& rejected_reference_logp,
    const c10::optional<at::Tensor>& chosen_reference_logp_sum,
    const c10::optional<at::Tensor>& rejected_reference_logp_sum, const c10::optional<at::Tensor>& chosen_labels,
    const c10::optional<at::Tensor>& rejected_labels, const c10::optional<at::Tensor>& chosen_weights,
    const c10::optional<at::Tensor>& rejected_weights, const std::string& loss_type, double beta,
    bool length_normalize, bool visual_weights, bool scale_by_beta, const std::string& reduction,
    int64_t ignore_index) {
  lt::dpo_side chosen{chosen_policy_logp,
                      undefined_if_none(chosen_offsets),
                      undefined_if_none(chosen_reference_logp),
                      undefined_if_none(chosen_reference_logp_sum),
                      undefined_if_none(chosen_labels),
                      undefined_if_none(chosen_weights)};
  lt::dpo_side rejected{rejected_policy_logp,
                        undefined_if_none(rejected_offsets),
                        undefined_if_none(rejected_reference_logp),
                        undefined_if_none(rejected_reference_logp_sum),
                        undefined_if_none(rejected_labels),
                        undefined_if_none(rejected_weights)};
  consr::dpo_options options;
  options.loss = lt::parse_dpo_loss_type(loss_type);
  options.beta = beta;
  options.length_normalize = length_normalize;
  options.visual_weights = visual_weights;
  options.scale_by_beta = scale_by_beta;
  options.reduction = lt::parse_loss_reduction(reduction);
  options.ignore_index = ignore_index;
  try {
    lt::dpo_result r = lt::dpo_loss(chosen, rejected, options);
    return {r.loss, r.metrics};
  } catch (const c10::Error& e) {
    lt::detail::throw_torch_error(python_argument_names(e.what_without_backtrace()));
  }
}

std::vector<std::string> dpo_metric_names_op() {
  std::vector<std::string> names;
  for (int m = 0; m < lt::dpo_metric_count; ++m) names.emplace_back(lt::to_string(static_cast<lt::dpo_metric>(m)));
  return names;
}

at::Tensor visual_weights_op(const at::Tensor& logp_clean, const at::Tensor& logp_corrupt, const std::string& side,
                             double alpha, double clip_lo, double clip_hi) {
  consr::visual_weight_options options;
  options.alpha = alpha;
  options.clip_lo = clip_lo;
  options.clip_hi = clip_hi;
  return lt::visual_weights(logp_clean, logp_corrupt, lt::parse_weight_side(side), options);
}

at::Tensor add_diffusion_noise_op(const at::Tensor& image, int64_t seed, int64_t offset, int64_t step,
                                  const std::string& schedule, int64_t num_steps, int64_t element_offset) {
  constexpr const char* fn = "consr::libtorch::add_diffusion_noise";
  consr::diffusion_noise_options options;
  options.step = int_argument(step, fn, "step");
  options.schedule = lt::parse_noise_schedule(schedule);
  options.num_steps = int_argument(num_steps, fn, "num_steps");
  options.element_offset = non_negative(element_offset, fn, "element_offset");
  return lt::add_diffusion_noise(image, make_key(seed, offset, fn), options);
}

std::tuple<double, double> diffusion_noise_coefficients_op(int64_t step, const std::string& schedule,
                                                           int64_t num_steps) {
  constexpr const char* fn = "consr::libtorch::diffusion_noise_coefficients";
  consr::diffusion_noise_options options;
  options.step = int_argument(step, fn, "step");
  options.schedule = lt::parse_noise_schedule(schedule);
  options.num_steps = int_argument(num_steps, fn, "num_steps");
  const consr::diffusion_coefficients c =
      lt::detail::translate_errors([&] { return consr::diffusion_noise_coefficients(options); });
  return {c.sqrt_alpha_bar, c.sqrt_one_minus_alpha_bar};
}

at::Tensor random_patch_mask_op(const at::Tensor& image, int64_t seed, int64_t offset, int64_t patch_size,
                                double probability, double fill_value, int64_t image_offset) {
  constexpr const char* fn = "consr::libtorch::random_patch_mask";
  consr::patch_mask_options options;
  options.patch_size = patch_size;
  options.probability = probability;
  options.fill_value = fill_value;
  options.image_offset = non_negative(image_offset, fn, "image_offset");
  return lt::random_patch_mask(image, make_key(seed, offset, fn), options);
}

at::Tensor mixup_op(const at::Tensor& image, const at::Tensor& other, double lam) {
  return lt::mixup(image, other, lam);
}

at::Tensor random_resized_crop_op(const at::Tensor& image, int64_t seed, int64_t offset, double scale_min,
                                  double scale_max, double ratio_min, double ratio_max, int64_t image_offset) {
  constexpr const char* fn = "consr::libtorch::random_resized_crop";
  consr::resized_crop_options options;
  options.scale_min = scale_min;
  options.scale_max = scale_max;
  options.ratio_min = ratio_min;
  options.ratio_max = ratio_max;
  options.image_offset = non_negative(image_offset, fn, "image_offset");
  return lt::random_resized_crop(image, make_key(seed, offset, fn), options);
}

bool has_cuda_op() {
  const lt::cuda_backend& b = lt::cuda_backend_registry();
  return b.token_logprobs != nullptr;
}

}  // namespace

TORCH_LIBRARY(consr, m) {
  // Token log-probs (spec §4): logits [N, V] or [B, L, V] (float32/64, bfloat16, float16), labels [N] or
  // [B, L] (int64/int32) aligned with the rows (the causal shift is the caller's). Returns float32
  // (float64 for float64 logits) of labels' shape; ignore_index rows give 0. Differentiable w.r.t. logits.
  m.def("token_logprobs(Tensor logits, Tensor labels, float temperature=1.0, int ignore_index=-100) -> Tensor",
        &token_logprobs_op);
  // Memory-bounded token log-probs (spec §4): hidden [N, H] or [B, L, H], weight [V, H], bias [V] or None;
  // the same values as token_logprobs(hidden @ weight.T + bias, labels) without the N x V logits.
  // Differentiable w.r.t. hidden, weight and bias (CPU tensors).
  m.def(
      "linear_token_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, float temperature=1.0, "
      "int ignore_index=-100, int vocab_chunk=4096) -> Tensor",
      &linear_token_logprobs_op);
  // DPO objectives (spec §7). Each side: policy log-probs, packed [n] with offsets [P+1] or padded [P, L]
  // without offsets; a reference per token (same shape) or per sequence (_sum, [P]); optional labels
  // (ignore_index tokens are not scored) and visual weights (consr loss with visual_weights).
  // Returns loss (0-dim for mean/sum, [P] for none; differentiable w.r.t. both policy log-probs) and
  // metrics [P, 8], columns as dpo_metric_names().
  m.def(
      "dpo_loss(Tensor chosen_policy_logp, Tensor rejected_policy_logp, Tensor? chosen_offsets=None, "
      "Tensor? rejected_offsets=None, Tensor? chosen_reference_logp=None, Tensor? rejected_reference_logp=None, "
      "Tensor? chosen_reference_logp_sum=None, Tensor? rejected_reference_logp_sum=None, "
      "Tensor? chosen_labels=None, Tensor? rejected_labels=None, Tensor? chosen_weights=None, "
      "Tensor? rejected_weights=None, str loss_type=\"consr\", float beta=0.1, bool length_normalize=True, "
      "bool visual_weights=True, bool scale_by_beta=False, str reduction=\"mean\", int ignore_index=-100) "
      "-> (Tensor loss, Tensor metrics)",
      &dpo_loss_op);
  m.def("dpo_metric_names() -> str[]", &dpo_metric_names_op);
  // Visual weights (eqs. 12-13), no gradient: side "chosen" (1 + clip) or "rejected" (1 - clip).
  m.def(
      "visual_weights(Tensor logp_clean, Tensor logp_corrupt, str side, float alpha=0.5, float clip_lo=0.0, "
      "float clip_hi=0.2) -> Tensor",
      &visual_weights_op);
  // Diffusion noise (spec §3): sqrt(abar_t) * image + sqrt(1 - abar_t) * eps, eps from Philox (seed, offset)
  // at the element's row-major index + element_offset; 0-based step. Gradient: sqrt(abar_t).
  m.def(
      "add_diffusion_noise(Tensor image, int seed, int offset=0, int step=800, str schedule=\"sigmoid\", "
      "int num_steps=1000, int element_offset=0) -> Tensor",
      &add_diffusion_noise_op);
  m.def(
      "diffusion_noise_coefficients(int step=800, str schedule=\"sigmoid\", int num_steps=1000) -> "
      "(float, float)",
      &diffusion_noise_coefficients_op);
  // Table-7 corruptions on [C, H, W] / [B, C, H, W] images, with gradients.
  m.def(
      "random_patch_mask(Tensor image, int seed, int offset=0, int patch_size=14, float probability=0.5, "
      "float fill_value=0.0, int image_offset=0) -> Tensor",
      &random_patch_mask_op);
  m.def("mixup(Tensor image, Tensor other, float lam) -> Tensor", &mixup_op);
  m.def(
      "random_resized_crop(Tensor image, int seed, int offset=0, float scale_min=0.08, float scale_max=1.0, "
      "float ratio_min=0.75, float ratio_max=1.3333333333333333, int image_offset=0) -> Tensor",
      &random_resized_crop_op);
  // True when this library was built with consr's CUDA kernels for CUDA tensors.
  m.def("has_cuda() -> bool", &has_cuda_op);
}
