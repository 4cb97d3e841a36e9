// Example 02 — ConSR preference training of a tiny torch::nn language model with consr's
// LibTorch adapter (consr/adapters/torch.hpp).
//
// A real run trains a multimodal LLM on the pairs the ConSR reward selected (examples/01, the
// pipeline). Here the "MLLM" is a toy: token embeddings plus a projected image feature vector,
// a causal running mean and a linear head. Each preference pair shares a prompt and an image;
// the chosen response is grounded in the image (its tokens follow the image features), the
// rejected one is not. One training step is what a LibTorch trainer does with consr:
//
//   1. logits of the policy (with gradient) and of the frozen reference model (without);
//   2. token log-probs with consr::libtorch::token_logprobs on the shifted logits/labels
//      (fused backward: no N × V temporary besides the gradient);
//   3. visual weights (eqs. 12–13) from the policy's log-probs under the clean image and under the
//      image corrupted by 800 diffusion-noise steps (consr::libtorch::add_diffusion_noise);
//   4. the ConSR loss (eq. 14: length-normalized margin, visual weights, stop-gradient) with
//      consr::libtorch::dpo_loss, backward, optimizer step.
//
// It prints the loss and the per-pair metrics, and exits with 1 unless the reward margin grew.
// Usage: 02_torch_consr_training [--steps N] [--beta B] [--seed S]
#include <consr/adapters/torch.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace lt = consr::libtorch;

namespace {

constexpr int64_t vocab = 32;
constexpr int64_t hidden = 32;
constexpr int64_t image_dim = 8;
constexpr int64_t prompt_length = 3;
constexpr int64_t response_length = 6;
constexpr int64_t num_pairs = 8;

/// The toy multimodal LM: logits [B, L, V] of tokens [B, L] given image features [B, image_dim].
struct tiny_mllm_impl : torch::nn::Module {
  tiny_mllm_impl()
      : embed(register_module("embed", torch::nn::Embedding(vocab, hidden))),
        image_proj(register_module("image_proj", torch::nn::Linear(image_dim, hidden))),
        mix(register_module("mix", torch::nn::Linear(hidden, hidden))),
        head(register_module("head", torch::nn::Linear(hidden, vocab))) {}

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& image) {
    torch::Tensor h = embed(tokens) + image_proj(image).unsqueeze(1);
    // Causal context: position t sees the mean of positions 0..t.
    const torch::Tensor count = torch::arange(1, tokens.size(1) + 1, h.options()).view({1, -1, 1});
    h = torch::tanh(mix(h.cumsum(1) / count));
    return head(h);
  }

  torch::nn::Embedding embed;
  torch::nn::Linear image_proj, mix, head;
};
TORCH_MODULE_IMPL(tiny_mllm, tiny_mllm_impl);

struct batch {
  torch::Tensor image;     // [P, image_dim]
  torch::Tensor chosen;    // [P, L] prompt + grounded response
  torch::Tensor rejected;  // [P, L] prompt + response unrelated to the image
  torch::Tensor labels_chosen, labels_rejected;  // [P, L − 1]: next tokens, −100 on the prompt
};

/// Labels aligned with logits[:, :-1]: position t scores token t + 1; prompt tokens are not scored.
torch::Tensor shifted_labels(const torch::Tensor& tokens) {
  torch::Tensor labels = tokens.narrow(1, 1, tokens.size(1) - 1).clone();
  labels.narrow(1, 0, prompt_length - 1).fill_(-100);
  return labels;
}

batch make_batch() {
  batch b;
  b.image = torch::randn({num_pairs, image_dim});
  const torch::Tensor prompt = torch::arange(1, prompt_length + 1, torch::kLong).expand({num_pairs, prompt_length});
  // Grounded: the response names the image's strongest features, in order.
  const torch::Tensor grounded = std::get<1>(b.image.topk(response_length, 1)) + 10;
  const torch::Tensor unrelated = torch::randint(10, 10 + image_dim, {num_pairs, response_length}, torch::kLong);
  b.chosen = torch::cat({prompt, grounded}, 1);
  b.rejected = torch::cat({prompt, unrelated}, 1);
  b.labels_chosen = shifted_labels(b.chosen);
  b.labels_rejected = shifted_labels(b.rejected);
  return b;
}

/// Token log-probs [P, L − 1] of `tokens` under `model` given `image` (causal shift done here, spec §2).
torch::Tensor response_logprobs(tiny_mllm& model, const torch::Tensor& tokens, const torch::Tensor& labels,
                                const torch::Tensor& image) {
  const torch::Tensor logits = model->forward(tokens, image);
  return lt::token_logprobs(logits.narrow(1, 0, tokens.size(1) - 1), labels);
}

double mean_metric(const lt::dpo_result& r, lt::dpo_metric m) { return r.metric(m).mean().item<double>(); }

}  // namespace

int main(int argc, char** argv) {
  int steps = 40;
  double beta = 0.1;
  std::uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && arg == "--steps") steps = std::atoi(argv[++i]);
    else if (i + 1 < argc && arg == "--beta") beta = std::atof(argv[++i]);
    else if (i + 1 < argc && arg == "--seed") seed = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--steps N] [--beta B] [--seed S]\n", argv[0]);
      return 2;
    }
  }
  try {
    torch::manual_seed(seed);
    tiny_mllm policy;
    torch::manual_seed(seed);
    tiny_mllm reference;  // same initialization as the policy, then frozen
    for (auto& p : reference->parameters()) p.requires_grad_(false);
    torch::manual_seed(seed + 1);
    const batch data = make_batch();
    torch::optim::Adam optimizer(policy->parameters(), torch::optim::AdamOptions(1e-2));

    // The corrupted image Ĩ of the visual weights: 800 noise steps (spec §3), fixed per sample.
    consr::diffusion_noise_options noise;
    noise.step = 800;
    const torch::Tensor corrupted = lt::add_diffusion_noise(data.image, consr::rng_key{seed, 7}, noise);

    // The reference model's per-token log-probs are constants of the whole run.
    torch::Tensor ref_chosen, ref_rejected;
    {
      torch::NoGradGuard no_grad;
      ref_chosen = response_logprobs(reference, data.chosen, data.labels_chosen, data.image);
      ref_rejected = response_logprobs(reference, data.rejected, data.labels_rejected, data.image);
    }

    consr::dpo_options options;  // ConSR (eq. 14): length-normalized, visual weights, β = 0.1
    options.beta = beta;
    double first_margin = 0.0, last_margin = 0.0, last_accuracy = 0.0;
    std::printf("step  consr_loss   dpo_loss  reward_margin  accuracy  mean_weight(chosen)\n");
    for (int step = 0; step < steps; ++step) {
      // Visual weights from the policy's current log-probs under I and Ĩ, without gradient.
      torch::Tensor weights_chosen, weights_rejected;
      {
        torch::NoGradGuard no_grad;
        const torch::Tensor clean_c = response_logprobs(policy, data.chosen, data.labels_chosen, data.image);
        const torch::Tensor noisy_c = response_logprobs(policy, data.chosen, data.labels_chosen, corrupted);
        const torch::Tensor clean_r = response_logprobs(policy, data.rejected, data.labels_rejected, data.image);
        const torch::Tensor noisy_r = response_logprobs(policy, data.rejected, data.labels_rejected, corrupted);
        weights_chosen = lt::visual_weights(clean_c, noisy_c, consr::weight_side::chosen);
        weights_rejected = lt::visual_weights(clean_r, noisy_r, consr::weight_side::rejected);
      }
      lt::dpo_side chosen, rejected;  // padded [P, L − 1]: no offsets, padding and prompt via labels
      chosen.policy_logp = response_logprobs(policy, data.chosen, data.labels_chosen, data.image);
      chosen.reference_logp = ref_chosen;
      chosen.labels = data.labels_chosen;
      chosen.weights = weights_chosen;
      rejected.policy_logp = response_logprobs(policy, data.rejected, data.labels_rejected, data.image);
      rejected.reference_logp = ref_rejected;
      rejected.labels = data.labels_rejected;
      rejected.weights = weights_rejected;

      const lt::dpo_result result = lt::dpo_loss(chosen, rejected, options);
      optimizer.zero_grad();
      result.loss.backward();
      optimizer.step();

      const double margin = mean_metric(result, lt::dpo_metric::reward_margin);
      if (step == 0) first_margin = margin;
      last_margin = margin;
      last_accuracy = mean_metric(result, lt::dpo_metric::accuracy);
      const torch::Tensor scored = data.labels_chosen.ne(-100);
      const double mean_weight = weights_chosen.masked_select(scored).mean().item<double>();
      if (step % 5 == 0 || step + 1 == steps)
        std::printf("%4d  %10.5f  %9.5f  %13.5f  %8.3f  %19.5f\n", step, result.loss.item<double>(),
                    mean_metric(result, lt::dpo_metric::dpo_loss), margin, last_accuracy, mean_weight);
    }
    if (!(last_margin > first_margin)) {
      std::printf("error: the reward margin did not grow (%.5f -> %.5f)\n", first_margin, last_margin);
      return 1;
    }
    std::printf("reward margin grew from %.5f to %.5f; pair accuracy %.3f\n", first_margin, last_margin,
                last_accuracy);
    return 0;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
}
