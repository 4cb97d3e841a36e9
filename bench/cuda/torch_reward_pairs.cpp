// LibTorch-CUDA baselines of bench_reward_pairs.cu: three segment means (a
// masked sum over a count with labels), exp and eq. 6, then argmax / argmin
// per prompt on a [10000, 15] view. Simpler than consr's (no NaN skipping, no
// tie rule beyond torch's, no per-group report), so a lower bound of the work.
#include <torch/torch.h>

#include "cuda_bench.hpp"

#include <random>
#include <vector>

using namespace consr_bench_cuda;

namespace {

constexpr int64_t prompts = 10000, per_prompt = 15, candidates = prompts * per_prompt;

struct torch_problem {
  torch::Tensor offsets, logp[3], mask;
  int64_t tokens = 0;
  torch_problem() {
    std::mt19937_64 rng(3);  // the same lengths as bench_reward_pairs.cu
    std::uniform_int_distribution<int64_t> len(20, 200);
    std::vector<int32_t> off{0};
    for (int64_t c = 0; c < candidates; ++c) off.push_back(static_cast<int32_t>(off.back() + len(rng)));
    tokens = off.back();
    offsets = torch::tensor(off, torch::TensorOptions().dtype(torch::kInt32)).to(torch::kCUDA);
    for (auto& t : logp) t = -3.0 * torch::rand({tokens}, torch::TensorOptions().device(torch::kCUDA));
    mask = (torch::arange(tokens, torch::TensorOptions().device(torch::kCUDA)) % 50 != 0).to(torch::kFloat32);
  }
};

const torch_problem& problem() {
  static const torch_problem p;
  return p;
}

torch::Tensor reward(const torch_problem& p, bool labels) {
  torch::Tensor prob[3];
  if (labels) {
    const auto count = torch::segment_reduce(p.mask, "sum", {}, {}, p.offsets, 0, true);
    for (int k = 0; k < 3; ++k)
      prob[k] = (torch::segment_reduce(p.logp[k] * p.mask, "sum", {}, {}, p.offsets, 0, true) / count).exp_();
  } else {
    for (int k = 0; k < 3; ++k) prob[k] = torch::segment_reduce(p.logp[k], "mean", {}, {}, p.offsets, 0, true).exp_();
  }
  const double lambda = 0.8;
  return lambda * (prob[2] - prob[0]) + (1.0 - lambda) * (prob[0] - prob[1]);
}

void BM_torch_reward(benchmark::State& state, bool labels) {
  const torch_problem& p = problem();
  torch::Tensor r;
  run_timed(state, [&] { r = reward(p, labels); },
            static_cast<double>(p.tokens) * (labels ? 16.0 : 12.0) + static_cast<double>(candidates) * 8.0);
}

void BM_torch_pairs(benchmark::State& state) {
  const auto r = 0.05 * torch::randn({candidates}, torch::TensorOptions().device(torch::kCUDA));
  torch::Tensor chosen, rejected, margin;
  run_timed(state,
            [&] {
              const auto g = r.view({prompts, per_prompt});
              chosen = g.argmax(1);
              rejected = g.argmin(1);
              margin = g.gather(1, chosen.unsqueeze(1)) - g.gather(1, rejected.unsqueeze(1));
            },
            static_cast<double>(candidates) * 4.0 + static_cast<double>(prompts) * 12.0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_reward, labels, true)->Name("torch/contrastive_reward/fp32/10000x15_labels")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_torch_reward, no_labels, false)->Name("torch/contrastive_reward/fp32/10000x15")->Apply(gpu_timed);
BENCHMARK(BM_torch_pairs)->Name("torch/select_pairs/fp32/10000x15")->Apply(gpu_timed);
