// CUDA benchmarks of consr/cuda/logprobs.cuh at the Qwen2 vocabulary (V = 152064), N scored tokens
// ∈ {256, 1024, 4096}, bf16 and fp32 logits:
//   consr/logprobs_forward/<dtype>/N            token_logprobs with temporary storage (split rows)
//   consr/logprobs_forward_no_temp/<dtype>/N    the overload without temporary storage (block per row)
//   consr/logprobs_forward_backward/<dtype>/N   forward + backward into a separate gradient (logits' dtype)
//   consr/logprobs_forward_splits/bf16/N/S      forward forced to S blocks per row (tuning the heuristic)
// Bytes (the least the operation must move, the same for the baselines): forward reads N × V logits
// and N int64 labels and writes N logp + N lse; forward + backward also writes the N × V gradient
// (its second read of the logits is not counted, so its bw_share is at most 2/3 of the forward's).
// bw_share = bytes/s ÷ the device-to-device copy bandwidth measured in the same binary.
// LibTorch-CUDA eager baselines (log_softmax(...).gather(...) and its autograd backward), when built:
// torch_logprobs.cpp.
#include "cuda_bench.hpp"

#include <consr/cuda/logprobs.cuh>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

constexpr index_t vocab = 152064;  // Qwen2 / Qwen2.5(-VL)

// Logits uniform in [-12, 12) (as the host benchmark), from a counter hash: no host generation.
template <class T>
__global__ void fill_logits(T* out, long long n, unsigned long long seed) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const unsigned long long z = bench_hash(seed, i);
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    const float x = -12.0f + 24.0f * u;
    if constexpr (std::is_same_v<T, float>) out[i] = x;
    else out[i] = T(x);
  }
}

template <class T>
struct problem {
  index_t rows;
  device_array<T> logits;
  device_array<std::int64_t> labels;
  device_array<float> logp, lse, grad_logp;
  explicit problem(index_t n, bool with_grad_logp = false)
      : rows(n), logits(static_cast<size_t>(n * vocab)), labels(static_cast<size_t>(n)), logp(static_cast<size_t>(n)),
        lse(static_cast<size_t>(n)), grad_logp(with_grad_logp ? static_cast<size_t>(n) : 0) {
    fill_logits<T><<<1024, 256>>>(logits.ptr, static_cast<long long>(n * vocab), 7);
    check_cuda(cudaGetLastError(), "fill_logits");
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<std::int64_t> pick(0, vocab - 1);
    std::vector<std::int64_t> y(static_cast<size_t>(n));
    for (auto& v : y) v = pick(rng);
    labels.upload(y);
    if (with_grad_logp) {
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      std::vector<float> g(static_cast<size_t>(n));
      for (auto& v : g) v = u(rng);
      grad_logp.upload(g);
    }
    check_cuda(cudaDeviceSynchronize(), "problem setup");
  }
  consr::device_view<const T, 2> logits_view() const {
    return consr::make_view<consr::device_space>(static_cast<const T*>(logits.ptr), rows, vocab);
  }
  consr::device_view<const std::int64_t, 1> labels_view() const {
    return consr::make_view<consr::device_space>(static_cast<const std::int64_t*>(labels.ptr), rows);
  }
  consr::device_view<float, 1> logp_view() const { return consr::make_view<consr::device_space>(logp.ptr, rows); }
  consr::device_view<float, 1> lse_view() const { return consr::make_view<consr::device_space>(lse.ptr, rows); }
  double forward_bytes() const { return static_cast<double>(rows) * (vocab * sizeof(T) + 8.0 + 8.0); }
};

template <class T>
void BM_forward(benchmark::State& state) {
  problem<T> p(state.range(0));
  const auto logits = p.logits_view();
  const auto labels = p.labels_view();
  size_t bytes = 0;
  require_ok(consr::cuda::token_logprobs(nullptr, bytes, logits, labels, p.logp_view(), p.lse_view()));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(consr::cuda::token_logprobs(temp.ptr, bytes, logits, labels, p.logp_view(), p.lse_view())); },
            p.forward_bytes());
  state.counters["temp_bytes"] = static_cast<double>(bytes);
}

template <class T>
void BM_forward_no_temp(benchmark::State& state) {
  problem<T> p(state.range(0));
  const auto logits = p.logits_view();
  const auto labels = p.labels_view();
  run_timed(state, [&] { require_ok(consr::cuda::token_logprobs(logits, labels, p.logp_view(), p.lse_view())); },
            p.forward_bytes());
}

template <class T>
void BM_forward_backward(benchmark::State& state) {
  problem<T> p(state.range(0), true);
  const index_t n = p.rows;
  device_array<T> grad(static_cast<size_t>(n * vocab));
  const auto logits = p.logits_view();
  const auto labels = p.labels_view();
  const auto grad_view = consr::make_view<consr::device_space>(grad.ptr, n, vocab);
  const auto lse_in = consr::make_view<consr::device_space>(static_cast<const float*>(p.lse.ptr), n);
  const auto g_in = consr::make_view<consr::device_space>(static_cast<const float*>(p.grad_logp.ptr), n);
  size_t bytes = 0;
  require_ok(consr::cuda::token_logprobs(nullptr, bytes, logits, labels, p.logp_view(), p.lse_view()));
  device_array<unsigned char> temp(bytes);
  run_timed(state,
            [&] {
              require_ok(consr::cuda::token_logprobs(temp.ptr, bytes, logits, labels, p.logp_view(), p.lse_view()));
              require_ok(consr::cuda::token_logprobs_backward(logits, labels, lse_in, g_in, grad_view));
            },
            p.forward_bytes() + static_cast<double>(n) * (vocab * sizeof(T) + 4.0));
}

// Forward with a forced number of blocks per row (the automatic choice is what BM_forward runs).
void BM_forward_splits(benchmark::State& state) {
  problem<consr::bfloat16> p(state.range(0));
  const int splits = static_cast<int>(state.range(1));
  const auto logits = p.logits_view();
  const auto labels = p.labels_view();
  const consr::cuda::logprob_launch_shape shape{256, splits};
  size_t bytes = 0;
  require_ok(consr::cuda::detail::logprob_forward<consr::bfloat16, std::int64_t>(
      nullptr, &bytes, logits, labels, p.logp_view(), p.lse_view(), {}, nullptr, nullptr, shape));
  device_array<unsigned char> temp(bytes);
  run_timed(state,
            [&] {
              require_ok(consr::cuda::detail::logprob_forward<consr::bfloat16, std::int64_t>(
                  temp.ptr, &bytes, logits, labels, p.logp_view(), p.lse_view(), {}, nullptr, nullptr, shape));
            },
            p.forward_bytes());
}

}  // namespace

BENCHMARK_TEMPLATE(BM_forward, consr::bfloat16)->Name("consr/logprobs_forward/bf16")->Apply(logprob_rows);
BENCHMARK_TEMPLATE(BM_forward, float)->Name("consr/logprobs_forward/fp32")->Apply(logprob_rows);
BENCHMARK_TEMPLATE(BM_forward_no_temp, consr::bfloat16)->Name("consr/logprobs_forward_no_temp/bf16")->Apply(logprob_rows);
BENCHMARK_TEMPLATE(BM_forward_backward, consr::bfloat16)->Name("consr/logprobs_forward_backward/bf16")->Apply(logprob_rows);
BENCHMARK_TEMPLATE(BM_forward_backward, float)->Name("consr/logprobs_forward_backward/fp32")->Apply(logprob_rows);
BENCHMARK(BM_forward_splits)
    ->Name("consr/logprobs_forward_splits/bf16")
    ->ArgsProduct({{256, 1024, 4096}, {1, 2, 3, 5, 9, 19}})->UseManualTime()->MinTime(0.2)->Unit(benchmark::kMicrosecond);
