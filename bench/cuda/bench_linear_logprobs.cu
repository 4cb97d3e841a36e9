// CUDA benchmarks of consr/cuda/linear_logprobs.cuh (issue 6): token log-probs straight from the
// hidden states at Qwen2.5-7B's output layer — H = 3584, V = 152064, bf16, no bias — for N = 2048
// and 8192 tokens, default vocabulary chunk (4096):
//   consr/linear_logprobs_forward/bf16/N            forward (one chunk GEMM + fold per chunk)
//   consr/linear_logprobs_forward_backward/bf16/N   forward + backward into fp32 ∂h and ∂W
// Counters: TFLOPS (2·N·V·H per GEMM: 1 forward, 3 more in the backward), temp_bytes (the
// temporary storage asked for: the whole extra memory beyond inputs and outputs, besides cuBLAS's
// own workspace), device_bytes_extra (cudaMemGetInfo drop across the first call: temp storage plus
// anything cuBLAS allocates). The LibTorch-CUDA baseline (torch_linear_logprobs.cpp, when built)
// materializes the N × V logits and reports its peak allocation the same way.
#include "cuda_bench.hpp"

#include <consr/cuda/linear_logprobs.cuh>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

constexpr index_t hidden_size = 3584;  // Qwen2.5-7B
constexpr index_t vocab = 152064;

// Normal-ish values of standard deviation `scale` from a counter hash (sum of 4 uniforms).
__global__ void fill_bf16(consr::bfloat16* out, long long n, unsigned long long seed, float scale) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const unsigned long long z = bench_hash(seed, i);
    float s = 0.0f;
    for (int q = 0; q < 4; ++q) s += static_cast<float>((z >> (16 * q)) & 0xffffu) * (1.0f / 65536.0f);
    out[i] = consr::bfloat16((s - 2.0f) * 1.7320508f * scale);
  }
}

struct linear_problem {
  index_t tokens;
  device_array<consr::bfloat16> hidden, weight;
  device_array<std::int64_t> labels;
  device_array<float> logp, lse, grad_logp;
  cublasHandle_t handle = nullptr;
  explicit linear_problem(index_t n)
      : tokens(n), hidden(static_cast<size_t>(n * hidden_size)), weight(static_cast<size_t>(vocab * hidden_size)),
        labels(static_cast<size_t>(n)), logp(static_cast<size_t>(n)), lse(static_cast<size_t>(n)),
        grad_logp(static_cast<size_t>(n)) {
    fill_bf16<<<1024, 256>>>(hidden.ptr, static_cast<long long>(n * hidden_size), 1, 1.0f);
    fill_bf16<<<1024, 256>>>(weight.ptr, static_cast<long long>(vocab * hidden_size), 2, 0.03f);
    check_cuda(cudaGetLastError(), "fill");
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<std::int64_t> pick(0, vocab - 1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<std::int64_t> y(static_cast<size_t>(n));
    std::vector<float> g(static_cast<size_t>(n));
    for (auto& v : y) v = pick(rng);
    for (auto& v : g) v = u(rng);
    labels.upload(y);
    grad_logp.upload(g);
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "cublasCreate failed\n");
      std::exit(1);
    }
    check_cuda(cudaDeviceSynchronize(), "problem setup");
  }
  ~linear_problem() { cublasDestroy(handle); }
  consr::device_view<const consr::bfloat16, 2> h() const {
    return consr::make_view<consr::device_space>(static_cast<const consr::bfloat16*>(hidden.ptr), tokens, hidden_size);
  }
  consr::device_view<const consr::bfloat16, 2> w() const {
    return consr::make_view<consr::device_space>(static_cast<const consr::bfloat16*>(weight.ptr), vocab, hidden_size);
  }
  consr::device_view<const std::int64_t, 1> y() const {
    return consr::make_view<consr::device_space>(static_cast<const std::int64_t*>(labels.ptr), tokens);
  }
  double input_bytes() const { return 2.0 * static_cast<double>(tokens + vocab) * hidden_size; }
};

double free_device_bytes() {
  size_t free_bytes = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  return static_cast<double>(free_bytes);
}

void set_flops(benchmark::State& state, double flops_per_call) {
  const auto it = state.counters.find("us_per_call");
  if (it != state.counters.end() && it->second.value > 0)
    state.counters["TFLOPS"] = flops_per_call / (it->second.value * 1e-6) * 1e-12;
}

void BM_linear_forward(benchmark::State& state) {
  linear_problem p(state.range(0));
  const consr::device_view<const consr::bfloat16, 1> no_bias;
  const auto logp = consr::make_view<consr::device_space>(p.logp.ptr, p.tokens);
  const auto lse = consr::make_view<consr::device_space>(p.lse.ptr, p.tokens);
  size_t bytes = 0;
  require_ok(consr::cuda::linear_token_logprobs(p.handle, nullptr, bytes, p.h(), p.w(), no_bias, p.y(), logp, lse));
  const double free_before = free_device_bytes();
  device_array<unsigned char> temp(bytes);
  require_ok(consr::cuda::linear_token_logprobs(p.handle, temp.ptr, bytes, p.h(), p.w(), no_bias, p.y(), logp, lse));
  check_cuda(cudaDeviceSynchronize(), "first call");
  const double extra = free_before - free_device_bytes();
  run_timed(state,
            [&] {
              require_ok(consr::cuda::linear_token_logprobs(p.handle, temp.ptr, bytes, p.h(), p.w(), no_bias, p.y(),
                                                            logp, lse));
            },
            p.input_bytes());
  set_flops(state, 2.0 * static_cast<double>(p.tokens) * vocab * hidden_size);
  state.counters["temp_bytes"] = static_cast<double>(bytes);
  state.counters["device_bytes_extra"] = extra;
  state.counters["logits_bytes_bf16"] = 2.0 * static_cast<double>(p.tokens) * vocab;
}

void BM_linear_forward_backward(benchmark::State& state) {
  linear_problem p(state.range(0));
  const index_t n = p.tokens;
  const consr::device_view<const consr::bfloat16, 1> no_bias;
  const auto logp = consr::make_view<consr::device_space>(p.logp.ptr, n);
  const auto lse = consr::make_view<consr::device_space>(p.lse.ptr, n);
  const auto lse_in = consr::make_view<consr::device_space>(static_cast<const float*>(p.lse.ptr), n);
  const auto g_in = consr::make_view<consr::device_space>(static_cast<const float*>(p.grad_logp.ptr), n);
  device_array<float> grad_hidden(static_cast<size_t>(n * hidden_size));
  device_array<float> grad_weight(static_cast<size_t>(vocab * hidden_size));
  check_cuda(cudaMemset(grad_weight.ptr, 0, grad_weight.n * sizeof(float)), "cudaMemset");
  const auto gh = consr::make_view<consr::device_space>(grad_hidden.ptr, n, hidden_size);
  const auto gw = consr::make_view<consr::device_space>(grad_weight.ptr, vocab, hidden_size);
  const consr::device_view<float, 1> no_grad_bias;
  size_t fwd_bytes = 0, bwd_bytes = 0;
  require_ok(consr::cuda::linear_token_logprobs(p.handle, nullptr, fwd_bytes, p.h(), p.w(), no_bias, p.y(), logp, lse));
  require_ok(consr::cuda::linear_token_logprobs_backward(p.handle, nullptr, bwd_bytes, p.h(), p.w(), no_bias, p.y(),
                                                         lse_in, g_in, gh, gw, no_grad_bias));
  size_t bytes = fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes;  // one buffer serves both calls
  const double free_before = free_device_bytes();
  device_array<unsigned char> temp(bytes);
  const auto step = [&] {
    size_t b = bytes;
    require_ok(consr::cuda::linear_token_logprobs(p.handle, temp.ptr, b, p.h(), p.w(), no_bias, p.y(), logp, lse));
    b = bytes;
    require_ok(consr::cuda::linear_token_logprobs_backward(p.handle, temp.ptr, b, p.h(), p.w(), no_bias, p.y(), lse_in,
                                                           g_in, gh, gw, no_grad_bias));
  };
  step();
  check_cuda(cudaDeviceSynchronize(), "first call");
  const double extra = free_before - free_device_bytes();
  run_timed(state, step, p.input_bytes());
  set_flops(state, 8.0 * static_cast<double>(n) * vocab * hidden_size);
  state.counters["temp_bytes"] = static_cast<double>(bytes);
  state.counters["device_bytes_extra"] = extra;
  state.counters["logits_bytes_bf16"] = 2.0 * static_cast<double>(n) * vocab;
}

}  // namespace

BENCHMARK(BM_linear_forward)
    ->Name("consr/linear_logprobs_forward/bf16")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_linear_forward_backward)
    ->Name("consr/linear_logprobs_forward_backward/bf16")->Arg(2048)->Arg(8192)->UseManualTime()->MinTime(0.5)->Unit(benchmark::kMillisecond);
