// LibTorch-CUDA baseline of bench_linear_logprobs.cu: the materialized path a PyTorch user writes,
// logits = h · Wᵀ (bf16, all N × V of them), then log_softmax(logits).gather(labels) — in bf16, and
// with the logits upcast to fp32 first — and autograd for ∂h and ∂W. Same sizes (H = 3584,
// V = 152064, N = 2048 and 8192). Counter peak_extra_bytes: the caching allocator's peak allocation
// during one call above what was allocated before it, minus the gradients it returns (the outputs
// consr writes into caller-owned buffers) — comparable with consr's temp_bytes.
#include <torch/torch.h>

#include <c10/cuda/CUDACachingAllocator.h>

#include "cuda_bench.hpp"

#include <cstdint>
#include <vector>

using namespace consr_bench_cuda;

namespace {

constexpr int64_t hidden_size = 3584;
constexpr int64_t vocab = 152064;

struct torch_linear_problem {
  torch::Tensor hidden, weight, labels, grad_logp;
  explicit torch_linear_problem(int64_t n) {
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    torch::manual_seed(3);
    hidden = torch::randn({n, hidden_size}, opts).to(torch::kBFloat16);
    weight = (torch::randn({vocab, hidden_size}, opts) * 0.03).to(torch::kBFloat16);
    labels = torch::randint(0, vocab, {n}, opts.dtype(torch::kInt64));
    grad_logp = torch::rand({n}, opts) * 2.0 - 1.0;
  }
};

torch::Tensor materialized_logprobs(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& labels, bool upcast) {
  torch::Tensor logits = torch::matmul(hidden, weight.t());
  if (upcast) logits = logits.to(torch::kFloat32);
  return torch::log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1);
}

double allocated_now() { return static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current); }
double allocated_peak() { return static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak); }

void set_flops(benchmark::State& state, double flops_per_call) {
  const auto it = state.counters.find("us_per_call");
  if (it != state.counters.end() && it->second.value > 0)
    state.counters["TFLOPS"] = flops_per_call / (it->second.value * 1e-6) * 1e-12;
}

void BM_torch_linear_forward(benchmark::State& state, bool upcast) {
  const int64_t n = state.range(0);
  torch_linear_problem p(n);
  torch::NoGradGuard no_grad;
  torch::Tensor out = materialized_logprobs(p.hidden, p.weight, p.labels, upcast);  // warm-up
  out = torch::Tensor();
  torch::cuda::synchronize();
  const double before = allocated_now();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  out = materialized_logprobs(p.hidden, p.weight, p.labels, upcast);
  torch::cuda::synchronize();
  const double peak_extra = allocated_peak() - before;
  run_timed(state, [&] { out = materialized_logprobs(p.hidden, p.weight, p.labels, upcast); },
            2.0 * static_cast<double>(n + vocab) * hidden_size);
  set_flops(state, 2.0 * static_cast<double>(n) * vocab * hidden_size);
  state.counters["peak_extra_bytes"] = peak_extra;
}

void BM_torch_linear_forward_backward(benchmark::State& state, bool upcast) {
  const int64_t n = state.range(0);
  torch_linear_problem p(n);
  p.hidden.requires_grad_(true);
  p.weight.requires_grad_(true);
  std::vector<torch::Tensor> grads;
  const auto step = [&] {
    const auto logp = materialized_logprobs(p.hidden, p.weight, p.labels, upcast);
    grads = torch::autograd::grad({logp}, {p.hidden, p.weight}, {p.grad_logp.to(logp.scalar_type())});
  };
  step();  // warm-up
  grads.clear();
  torch::cuda::synchronize();
  const double before = allocated_now();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  step();
  torch::cuda::synchronize();
  double grad_bytes = 0;
  for (const auto& t : grads) grad_bytes += static_cast<double>(t.numel() * t.element_size());
  const double peak_extra = allocated_peak() - before - grad_bytes;
  run_timed(state, step, 2.0 * static_cast<double>(n + vocab) * hidden_size);
  set_flops(state, 6.0 * static_cast<double>(n) * vocab * hidden_size);
  state.counters["peak_extra_bytes"] = peak_extra;
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_linear_forward, bf16, false)
    ->Name("torch/linear_logprobs_forward/bf16_materialized")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_torch_linear_forward, upcast, true)
    ->Name("torch/linear_logprobs_forward/bf16_materialized_upcast_fp32")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_torch_linear_forward_backward, bf16, false)
    ->Name("torch/linear_logprobs_forward_backward/bf16_materialized")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_torch_linear_forward_backward, upcast, true)
    ->Name("torch/linear_logprobs_forward_backward/bf16_materialized_upcast_fp32")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
