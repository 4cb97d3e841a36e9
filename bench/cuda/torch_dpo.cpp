// LibTorch-CUDA baselines of bench_dpo.cu: the ConSR and standard DPO losses
// written with torch ops (masked segment sums) and differentiated by autograd
// (torch::autograd::grad), on pairs of the same lengths.
#include <torch/torch.h>

#include "cuda_bench.hpp"

#include <random>
#include <vector>

using namespace consr_bench_cuda;

namespace {

struct torch_side {
  torch::Tensor offsets, policy, reference, weights, mask;
  int64_t tokens = 0;
  torch_side(int64_t pairs, std::uint64_t seed) {
    std::mt19937_64 rng(seed);  // the same lengths as bench_dpo.cu
    std::uniform_int_distribution<int64_t> len(200, 1000);
    std::vector<int32_t> off{0};
    for (int64_t i = 0; i < pairs; ++i) off.push_back(static_cast<int32_t>(off.back() + len(rng)));
    tokens = off.back();
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    offsets = torch::tensor(off, torch::TensorOptions().dtype(torch::kInt32)).to(torch::kCUDA);
    policy = (-4.0 * torch::rand({tokens}, opts)).requires_grad_(true);
    reference = policy.detach() + 0.01;
    weights = 0.8 + 0.4 * torch::rand({tokens}, opts);
    mask = (torch::arange(tokens, opts) % 40 != 1).to(torch::kFloat32);
  }
  torch::Tensor sum(const torch::Tensor& per_token) const {
    return torch::segment_reduce(per_token, "sum", {}, {}, offsets, 0, true);
  }
};

void BM_torch_dpo(benchmark::State& state, bool consr_loss) {
  const int64_t pairs = state.range(0);
  const torch_side w(pairs, 1), l(pairs, 2);
  const double beta = 0.1;
  std::vector<torch::Tensor> grads;
  run_timed(state,
            [&] {
              const auto lr_w = w.sum((w.policy - w.reference) * w.mask);
              const auto lr_l = l.sum((l.policy - l.reference) * l.mask);
              torch::Tensor loss;
              if (consr_loss) {
                const auto n_w = w.sum(w.mask), n_l = l.sum(l.mask);
                const auto delta = 0.5 * (n_w + n_l) * (beta / n_w * lr_w - beta / n_l * lr_l);
                const auto sig = torch::sigmoid(-delta).detach();
                const auto wp_w = w.sum(w.policy * w.weights * w.mask), wp_l = l.sum(l.policy * l.weights * l.mask);
                loss = (-sig * (wp_w - wp_l)).mean();
              } else {
                loss = torch::softplus(-beta * (lr_w - lr_l)).mean();
              }
              grads = torch::autograd::grad({loss}, {w.policy, l.policy});
            },
            static_cast<double>(w.tokens + l.tokens) * (2.0 * (12.0 + (consr_loss ? 4.0 : 0.0)) + 4.0));
  state.counters["tokens"] = static_cast<double>(w.tokens + l.tokens);
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_dpo, consr, true)->Name("torch/dpo_forward_backward/consr/fp32")->Arg(64)->Arg(1024)->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_torch_dpo, standard, false)->Name("torch/dpo_forward_backward/standard/fp32")->Arg(64)->Arg(1024)->Apply(gpu_timed);
