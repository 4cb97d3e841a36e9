// LibTorch-CUDA eager baselines of bench_logprobs.cu: what a PyTorch user writes for token
// log-probs, log_softmax(logits, -1).gather(-1, labels[:, None]) — in the logits' dtype, and with
// the bf16 logits upcast to fp32 first (as much training code does) — and its autograd backward
// (torch::autograd::grad with the upstream gradient), at the same sizes and with the same byte
// counts as the consr benchmarks.
#include <torch/torch.h>

#include "cuda_bench.hpp"

#include <cstdint>

using namespace consr_bench_cuda;

namespace {

constexpr int64_t vocab = 152064;

torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& labels) {
  return torch::log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1);
}

struct torch_problem {
  torch::Tensor logits, labels, grad_logp;
  double elem = 4.0;
  torch_problem(int64_t n, torch::Dtype dtype) {
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    torch::manual_seed(7);
    logits = (torch::rand({n, vocab}, opts) * 24.0 - 12.0).to(dtype);
    labels = torch::randint(0, vocab, {n}, opts.dtype(torch::kInt64));
    grad_logp = torch::rand({n}, opts) * 2.0 - 1.0;
    elem = dtype == torch::kFloat32 ? 4.0 : 2.0;
  }
  double forward_bytes(int64_t n) const { return static_cast<double>(n) * (static_cast<double>(vocab) * elem + 16.0); }
};

void BM_torch_forward(benchmark::State& state, torch::Dtype dtype, bool upcast) {
  const int64_t n = state.range(0);
  torch_problem p(n, dtype);
  torch::NoGradGuard no_grad;
  torch::Tensor out;
  run_timed(state,
            [&] { out = upcast ? token_logprobs(p.logits.to(torch::kFloat32), p.labels) : token_logprobs(p.logits, p.labels); },
            p.forward_bytes(n));
}

void BM_torch_forward_backward(benchmark::State& state, torch::Dtype dtype, bool upcast) {
  const int64_t n = state.range(0);
  torch_problem p(n, dtype);
  p.logits.requires_grad_(true);
  std::vector<torch::Tensor> grads;
  run_timed(state,
            [&] {
              const auto logp =
                  upcast ? token_logprobs(p.logits.to(torch::kFloat32), p.labels) : token_logprobs(p.logits, p.labels);
              grads = torch::autograd::grad({logp}, {p.logits}, {p.grad_logp.to(logp.scalar_type())});
            },
            p.forward_bytes(n) + static_cast<double>(n) * (static_cast<double>(vocab) * p.elem + 4.0));
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_forward, bf16, torch::kBFloat16, false)->Name("torch/logprobs_forward/bf16")->Apply(logprob_rows);
BENCHMARK_CAPTURE(BM_torch_forward, bf16_upcast, torch::kBFloat16, true)->Name("torch/logprobs_forward/bf16_upcast_fp32")->Apply(logprob_rows);
BENCHMARK_CAPTURE(BM_torch_forward, fp32, torch::kFloat32, false)->Name("torch/logprobs_forward/fp32")->Apply(logprob_rows);
BENCHMARK_CAPTURE(BM_torch_forward_backward, bf16, torch::kBFloat16, false)->Name("torch/logprobs_forward_backward/bf16")->Apply(logprob_rows);
BENCHMARK_CAPTURE(BM_torch_forward_backward, bf16_upcast, torch::kBFloat16, true)
    ->Name("torch/logprobs_forward_backward/bf16_upcast_fp32")->Apply(logprob_rows);
BENCHMARK_CAPTURE(BM_torch_forward_backward, fp32, torch::kFloat32, false)->Name("torch/logprobs_forward_backward/fp32")->Apply(logprob_rows);
