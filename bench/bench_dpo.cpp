// bench/bench_dpo.cpp — DPO objectives forward + backward (spec §7) on realistic batches: P pairs,
// chosen and rejected responses of 200–1000 scored tokens each, reference log-probs given as
// per-sequence sums (as TRL precomputes them).
//   dpo_standard  eq. 7: consr::dpo_forward + dpo_backward (loss = standard), the backward from the
//                 gradient scales the forward saved (as the LibTorch adapter runs them)
//                 | consr_fused: consr::dpo_forward_backward, one call
//                 | torch_autograd: TRL's dpo_loss on padded [P, L] token log-probs: masked sums,
//                   logits = (π_w − π_l) − (ref_w − ref_l), −logsigmoid(β·logits).mean(), backward
//   dpo_consr     eq. 14 with length normalization (eq. 11) and visual weights (eq. 13)
//                 | torch_autograd: the same formula in torch ops, σ(−Δ') detached
// Traffic: policy log-probs read and their gradients written once (4 B per token each); consr's
// objective also reads the visual weights (4 B per token).
#include "common/bench_common.hpp"

#include <consr/dpo.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

namespace {

using consr::index_t;

std::string size_label(index_t pairs) { return "P=" + std::to_string(pairs) + ",len=200..1000"; }

struct side_data {
  std::vector<std::int64_t> offsets;
  index_t tokens;
  std::vector<float> logp, ref_sum, weights, grad;
  side_data(index_t pairs, std::uint64_t seed)
      : offsets(consr_bench::random_offsets(static_cast<std::size_t>(pairs), seed, 200, 1000)),
        tokens(offsets.back()),
        logp(consr_bench::uniform_floats(static_cast<std::size_t>(tokens), seed + 1, -4.0f, 0.0f)),
        ref_sum(static_cast<std::size_t>(pairs)),
        weights(consr_bench::uniform_floats(static_cast<std::size_t>(tokens), seed + 2, 0.8f, 1.2f)),
        grad(static_cast<std::size_t>(tokens)) {
    const std::vector<float> noise = consr_bench::uniform_floats(static_cast<std::size_t>(pairs), seed + 3, -20.f, 20.f);
    for (index_t p = 0; p < pairs; ++p) {
      double s = 0;
      for (index_t t = offsets[p]; t < offsets[p + 1]; ++t) s += logp[static_cast<std::size_t>(t)];
      ref_sum[static_cast<std::size_t>(p)] = static_cast<float>(s) + noise[static_cast<std::size_t>(p)];
    }
  }
  consr::dpo_sequences<float, std::int64_t> view(index_t pairs, bool with_weights) const {
    consr::dpo_sequences<float, std::int64_t> s;
    s.policy_logp = consr::make_view(logp.data(), tokens);
    s.offsets = consr::make_view(offsets.data(), pairs + 1);
    s.reference_logp_sum = consr::make_view(ref_sum.data(), pairs);
    if (with_weights) s.weights = consr::make_view(weights.data(), tokens);
    return s;
  }
};

consr::dpo_options options_for(bool consr_loss) {
  consr::dpo_options o;
  o.beta = 0.1;
  o.loss = consr_loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
  o.length_normalize = consr_loss;
  o.visual_weights = consr_loss;
  return o;
}

void consr_dpo(benchmark::State& state, index_t pairs, bool consr_loss, bool fused) {
  side_data chosen(pairs, 41), rejected(pairs, 51);
  const consr::dpo_options o = options_for(consr_loss);
  const auto c = chosen.view(pairs, consr_loss), r = rejected.view(pairs, consr_loss);
  const auto gc = consr::make_view(chosen.grad.data(), chosen.tokens);
  const auto gr = consr::make_view(rejected.grad.data(), rejected.tokens);
  std::vector<double> grad_scale(static_cast<std::size_t>(pairs));
  const auto saved = consr::make_view(grad_scale.data(), pairs);
  for (auto _ : state) {
    if (fused) {
      benchmark::DoNotOptimize(consr::dpo_forward_backward(c, r, o, 1.0, gc, gr));
    } else {
      benchmark::DoNotOptimize(consr::dpo_forward(c, r, o, {}, saved));
      consr::dpo_backward(c, r, o, 1.0, gc, gr, saved);
    }
    benchmark::ClobberMemory();
  }
  const double tokens = static_cast<double>(chosen.tokens + rejected.tokens);
  consr_bench::set_traffic(state, (consr_loss ? 8.0 : 4.0) * tokens, 4.0 * tokens);
}

#if defined(CONSR_BENCH_HAS_TORCH)
// A side as TRL holds it: right-padded [P, L] token log-probs with a 0/1 loss mask.
struct torch_side {
  torch::Tensor logp, mask, weights, ref_sum;
  torch_side(const side_data& s, index_t pairs) {
    index_t longest = 0;
    for (index_t p = 0; p < pairs; ++p) longest = std::max(longest, s.offsets[p + 1] - s.offsets[p]);
    std::vector<float> lp(static_cast<std::size_t>(pairs * longest), 0.0f), m(lp.size(), 0.0f), w(lp.size(), 0.0f);
    for (index_t p = 0; p < pairs; ++p)
      for (index_t t = s.offsets[p]; t < s.offsets[p + 1]; ++t) {
        const std::size_t k = static_cast<std::size_t>(p * longest + (t - s.offsets[p]));
        lp[k] = s.logp[static_cast<std::size_t>(t)];
        m[k] = 1.0f;
        w[k] = s.weights[static_cast<std::size_t>(t)];
      }
    logp = torch::from_blob(lp.data(), {pairs, longest}, torch::kFloat32).clone().requires_grad_(true);
    mask = torch::from_blob(m.data(), {pairs, longest}, torch::kFloat32).clone();
    weights = torch::from_blob(w.data(), {pairs, longest}, torch::kFloat32).clone();
    ref_sum = torch::from_blob(const_cast<float*>(s.ref_sum.data()), {pairs}, torch::kFloat32).clone();
  }
};

void torch_dpo(benchmark::State& state, index_t pairs, bool consr_loss) {
  const side_data chosen_data(pairs, 41), rejected_data(pairs, 51);
  torch_side w(chosen_data, pairs), l(rejected_data, pairs);
  const double beta = 0.1;
  for (auto _ : state) {
    torch::Tensor loss;
    const torch::Tensor chosen_logps = (w.logp * w.mask).sum(-1);
    const torch::Tensor rejected_logps = (l.logp * l.mask).sum(-1);
    if (!consr_loss) {
      // trl.DPOTrainer.dpo_loss, loss_type = "sigmoid", label_smoothing = 0.
      const torch::Tensor logits = (chosen_logps - rejected_logps) - (w.ref_sum - l.ref_sum);
      loss = -torch::log_sigmoid(beta * logits).mean();
    } else {
      const torch::Tensor len_w = w.mask.sum(-1), len_l = l.mask.sum(-1);
      const torch::Tensor delta =
          (len_w + len_l) / 2 * (beta / len_w * (chosen_logps - w.ref_sum) - beta / len_l * (rejected_logps - l.ref_sum));
      const torch::Tensor sigma_neg = torch::sigmoid(-delta).detach();
      loss = -(sigma_neg * ((w.weights * w.logp * w.mask).sum(-1) - (l.weights * l.logp * l.mask).sum(-1))).mean();
    }
    loss.backward();
    benchmark::DoNotOptimize(w.logp.grad().data_ptr());
    w.logp.mutable_grad().reset();
    l.logp.mutable_grad().reset();
  }
  const double tokens = static_cast<double>(chosen_data.tokens + rejected_data.tokens);
  consr_bench::set_traffic(state, (consr_loss ? 8.0 : 4.0) * tokens, 4.0 * tokens);
}
#endif

void register_all() {
  for (const index_t pairs : {16, 256}) {
    for (const bool consr_loss : {false, true}) {
      const std::string kernel = consr_loss ? "dpo_consr" : "dpo_standard";
      consr_bench::add(kernel, "consr", size_label(pairs),
                       [pairs, consr_loss](benchmark::State& s, int) { consr_dpo(s, pairs, consr_loss, false); });
      consr_bench::add(kernel, "consr_fused", size_label(pairs),
                       [pairs, consr_loss](benchmark::State& s, int) { consr_dpo(s, pairs, consr_loss, true); });
#if defined(CONSR_BENCH_HAS_TORCH)
      consr_bench::add(kernel, "torch_autograd", size_label(pairs),
                       [pairs, consr_loss](benchmark::State& s, int) { torch_dpo(s, pairs, consr_loss); });
#endif
    }
  }
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all); }
