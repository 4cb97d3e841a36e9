// bench/bench_logprobs.cpp — token log-probs (spec §4) at the sizes of Qwen2-family models:
// V = 152064, N scored tokens. consr::token_logprobs / token_logprobs_backward against what a
// LibTorch user writes: log_softmax(logits).gather(labels) and its autograd backward.
//
// Benchmarks (see common/bench_common.hpp for the naming and counters):
//   logprobs_fwd      fp32 forward          consr | torch            N = 256, 1024 (+4096 with CONSR_BENCH_LARGE)
//   logprobs_fwd_bf16 bf16 logits forward   consr | torch            N = 256
//   logprobs_fwd_bwd  forward + backward    consr | torch_autograd   N = 256, 1024
//                     consr_fused: token_logprobs_forward_backward (one call, each row read once)
//   logprobs_fwd_incache, logprobs_fwd_bf16_incache, logprobs_fwd_bwd_incache
//                     the same calls on rows that stay in each core's L2 cache (2 rows per thread
//                     for the forwards, 1 row and its gradient for the backward), repeated: the
//                     kernel's compute ceiling, in the bytes per second the memory-bound row would
//                     move at that speed (tools/run-benchmarks.py sets it beside the probe: the
//                     roofline table)
//   logprobs_memory   peak extra resident memory of one forward in a fresh process (counter
//                     "peak_extra_bytes"; inputs excluded)   consr | torch   N = 64, 256, 1024
// Traffic: the forward must read N×V logits (+ labels) and write N values; the backward also writes
// the N×V gradient. consr's forward + backward reads the logits twice (once per pass): its counted
// traffic is the minimum, 1 read + 1 write of N×V, which is what the share is measured against.
#include "common/bench_common.hpp"

#include <consr/logprobs.hpp>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

namespace {

constexpr consr::index_t vocab = 152064;  // Qwen2 / Qwen2.5(-VL) vocabulary

std::string size_label(consr::index_t n) { return "N=" + std::to_string(n) + ",V=" + std::to_string(vocab); }

struct problem {
  consr::index_t rows;
  std::vector<float> logits;
  std::vector<std::int64_t> labels;
  explicit problem(consr::index_t n)
      : rows(n),
        logits(consr_bench::uniform_floats(static_cast<std::size_t>(n * vocab), 7, -12.0f, 12.0f)),
        labels(consr_bench::uniform_ints(static_cast<std::size_t>(n), 11, vocab)) {}
};

// Google Benchmark calls a benchmark function once per repetition (and more to size the runs):
// the inputs of the last size used are kept instead of being regenerated (up to 2.5 GB each time).
const problem& cached_problem(consr::index_t n) {
  static std::unique_ptr<problem> p;
  if (!p || p->rows != n) {
    p.reset();
    p = std::make_unique<problem>(n);
  }
  return *p;
}

/// The forward on the problem's logits as Logit: fp32 as generated, bf16 rounded from them once
/// before timing.
template <class Logit>
void consr_forward(benchmark::State& state, consr::index_t n) {
  const problem& p = cached_problem(n);
  std::vector<Logit> converted;
  const Logit* logits = nullptr;
  if constexpr (std::is_same_v<Logit, float>) {
    logits = p.logits.data();
  } else {
    converted.resize(p.logits.size());
    for (std::size_t i = 0; i < converted.size(); ++i) converted[i] = Logit(p.logits[i]);
    logits = converted.data();
  }
  std::vector<float> logp(static_cast<std::size_t>(n)), lse(static_cast<std::size_t>(n));
  for (auto _ : state) {
    consr::token_logprobs(consr::make_view(logits, n, vocab), consr::make_view(p.labels.data(), n),
                          consr::make_view(logp.data(), n), consr::make_view(lse.data(), n));
    benchmark::DoNotOptimize(logp.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, static_cast<double>(sizeof(Logit)) * n * vocab + 8.0 * n, 8.0 * n);
}

/// token_logprobs then token_logprobs_backward, or with `fused` token_logprobs_forward_backward: the
/// same outputs in one call that reads each row from memory once (for a caller that knows the upstream
/// gradient first, e.g. the NLL loss of fine-tuning).
void consr_forward_backward(benchmark::State& state, consr::index_t n, bool fused) {
  const problem& p = cached_problem(n);
  std::vector<float> logp(static_cast<std::size_t>(n)), lse(static_cast<std::size_t>(n));
  const std::vector<float> grad_logp = consr_bench::uniform_floats(static_cast<std::size_t>(n), 3, -1.0f, 1.0f);
  std::vector<float> grad(p.logits.size());
  const auto logits = consr::make_view(p.logits.data(), n, vocab);
  const auto labels = consr::make_view(p.labels.data(), n);
  for (auto _ : state) {
    if (fused) {
      consr::token_logprobs_forward_backward(logits, labels, consr::make_view(grad_logp.data(), n),
                                             consr::make_view(logp.data(), n), consr::make_view(lse.data(), n),
                                             consr::make_view(grad.data(), n, vocab));
    } else {
      consr::token_logprobs(logits, labels, consr::make_view(logp.data(), n), consr::make_view(lse.data(), n));
      consr::token_logprobs_backward(logits, labels, consr::make_view(lse.data(), n),
                                     consr::make_view(grad_logp.data(), n), consr::make_view(grad.data(), n, vocab));
    }
    benchmark::DoNotOptimize(grad.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 4.0 * n * vocab + 12.0 * n, 4.0 * n * vocab + 4.0 * n);
}

// ---- compute ceiling: the same calls on rows that stay in L2 --------------------------------------

/// The forward (and with `backward`, the backward too) on `rows_per_thread` · threads rows of V
/// logits that stay in each core's L2 cache (608 KB per fp32 row), timed over and over: what the
/// kernel costs when memory is free. The traffic counted is that of the memory-bound rows above
/// (per element: 4 B read, or 2 B for bf16; + 4 B written by the backward), so its bytes per second
/// are the rate the arithmetic alone would sustain, comparable with the bandwidth probe.
template <class Logit>
void consr_in_cache(benchmark::State& state, int threads, consr::index_t rows_per_thread, bool backward) {
  const consr::index_t n = rows_per_thread * threads;
  const std::vector<float> source = consr_bench::uniform_floats(static_cast<std::size_t>(n * vocab), 7, -12.0f, 12.0f);
  const std::vector<Logit> logits(source.begin(), source.end());
  const std::vector<std::int64_t> labels = consr_bench::uniform_ints(static_cast<std::size_t>(n), 11, vocab);
  const std::vector<float> grad_logp = consr_bench::uniform_floats(static_cast<std::size_t>(n), 3, -1.0f, 1.0f);
  std::vector<float> logp(static_cast<std::size_t>(n)), lse(static_cast<std::size_t>(n));
  std::vector<float> grad(backward ? logits.size() : 0);
  for (auto _ : state) {
    consr::token_logprobs(consr::make_view(logits.data(), n, vocab), consr::make_view(labels.data(), n),
                          consr::make_view(logp.data(), n), consr::make_view(lse.data(), n));
    if constexpr (std::is_same_v<Logit, float>) {
      if (backward)
        consr::token_logprobs_backward(consr::make_view(logits.data(), n, vocab), consr::make_view(labels.data(), n),
                                       consr::make_view(lse.data(), n), consr::make_view(grad_logp.data(), n),
                                       consr::make_view(grad.data(), n, vocab));
    }
    benchmark::DoNotOptimize(logp.data());
    benchmark::DoNotOptimize(grad.data());
    benchmark::ClobberMemory();
  }
  const double elements = static_cast<double>(n) * vocab;
  consr_bench::set_traffic(state, sizeof(Logit) * elements, backward ? 4.0 * elements : 0.0);
}

#if defined(CONSR_BENCH_HAS_TORCH)
struct torch_problem {
  torch::Tensor logits, labels;
  explicit torch_problem(consr::index_t n, torch::Dtype dtype = torch::kFloat32) {
    const problem& p = cached_problem(n);
    logits = torch::from_blob(const_cast<float*>(p.logits.data()), {n, vocab}, torch::kFloat32).to(dtype).clone();
    labels = torch::from_blob(const_cast<std::int64_t*>(p.labels.data()), {n}, torch::kInt64).clone();
  }
};

const torch_problem& cached_torch_problem(consr::index_t n, torch::Dtype dtype) {
  static std::unique_ptr<torch_problem> p;
  static consr::index_t rows = -1;
  static torch::Dtype type = torch::kFloat32;
  if (!p || rows != n || type != dtype) {
    p.reset();
    p = std::make_unique<torch_problem>(n, dtype);
    rows = n;
    type = dtype;
  }
  return *p;
}

// What a LibTorch user writes (and what TRL / transformers do per token): the full log_softmax, then
// the label's entry.
torch::Tensor torch_token_logprobs(const torch::Tensor& logits, const torch::Tensor& labels) {
  return torch::log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1);
}

void torch_forward(benchmark::State& state, consr::index_t n, torch::Dtype dtype) {
  const torch_problem& p = cached_torch_problem(n, dtype);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor logp = torch_token_logprobs(p.logits, p.labels);
    benchmark::DoNotOptimize(logp.data_ptr());
  }
  const double elem = dtype == torch::kFloat32 ? 4.0 : 2.0;
  consr_bench::set_traffic(state, elem * n * vocab + 8.0 * n, 8.0 * n);
}

void torch_forward_backward(benchmark::State& state, consr::index_t n) {
  torch_problem p(n);  // its own copy: the leaf tensor gets requires_grad
  p.logits.requires_grad_(true);
  const torch::Tensor grad_logp = torch::rand({n}) * 2 - 1;
  for (auto _ : state) {
    torch::Tensor logp = torch_token_logprobs(p.logits, p.labels);
    logp.backward(grad_logp);
    benchmark::DoNotOptimize(p.logits.grad().data_ptr());
    p.logits.mutable_grad().reset();  // as optimizer.zero_grad(set_to_none=True)
  }
  consr_bench::set_traffic(state, 4.0 * n * vocab + 12.0 * n, 4.0 * n * vocab + 4.0 * n);
}
#endif

// ---- memory: one forward in a fresh child process -----------------------------------------------------

// Child: "<impl>,<n>" — allocates and touches the inputs, warms up (thread pools, lazy library state)
// on a small problem, resets the peak, runs one forward, prints the peak's rise in bytes.
int memory_child(const std::string& spec) {
  const std::size_t comma = spec.find(',');
  if (comma == std::string::npos) return 2;
  const std::string impl = spec.substr(0, comma);
  const consr::index_t n = std::atoll(spec.c_str() + comma + 1);
  consr_bench::peak_rss_meter meter;
  double extra = -1;
  if (impl == "consr") {
    problem p(n);
    std::vector<float> logp(static_cast<std::size_t>(n)), lse(static_cast<std::size_t>(n));
    auto run = [&](consr::index_t rows) {
      consr::token_logprobs(consr::make_view(p.logits.data(), rows, vocab), consr::make_view(p.labels.data(), rows),
                            consr::make_view(logp.data(), rows), consr::make_view(lse.data(), rows));
    };
    run(2);
    meter.reset();
    run(n);
    extra = meter.extra_bytes();
  }
#if defined(CONSR_BENCH_HAS_TORCH)
  if (impl == "torch") {
    torch_problem p(n);
    torch::NoGradGuard no_grad;
    benchmark::DoNotOptimize(torch_token_logprobs(p.logits.narrow(0, 0, 2), p.labels.narrow(0, 0, 2)).data_ptr());
    meter.reset();
    torch::Tensor logp = torch_token_logprobs(p.logits, p.labels);
    extra = meter.extra_bytes();
    benchmark::DoNotOptimize(logp.data_ptr());
  }
#endif
  if (extra < 0) return 3;
  std::printf("%.0f\n", extra);
  return 0;
}

void memory_benchmark(benchmark::State& state, const std::string& impl, consr::index_t n) {
  double extra = -1;
  for (auto _ : state) {
    const std::string out = consr_bench::run_child({"--consr-child=" + impl + "," + std::to_string(n)});
    extra = out.empty() ? -1 : std::atof(out.c_str());
  }
  if (extra < 0) {
    state.SkipWithError("the child process failed");
    return;
  }
  state.counters["peak_extra_bytes"] = extra;
  state.counters["logits_bytes"] = 4.0 * n * vocab;
}

void register_all() {
  const bool large = std::getenv("CONSR_BENCH_LARGE") != nullptr;
  std::vector<consr::index_t> forward_sizes{256, 1024};
  if (large) forward_sizes.push_back(4096);
  for (const consr::index_t n : forward_sizes) {
    consr_bench::add("logprobs_fwd", "consr", size_label(n), [n](benchmark::State& s, int) { consr_forward<float>(s, n); });
#if defined(CONSR_BENCH_HAS_TORCH)
    consr_bench::add("logprobs_fwd", "torch", size_label(n),
                     [n](benchmark::State& s, int) { torch_forward(s, n, torch::kFloat32); });
#endif
  }
  consr_bench::add("logprobs_fwd_bf16", "consr", size_label(256),
                   [](benchmark::State& s, int) { consr_forward<consr::bfloat16>(s, 256); });
#if defined(CONSR_BENCH_HAS_TORCH)
  consr_bench::add("logprobs_fwd_bf16", "torch", size_label(256),
                   [](benchmark::State& s, int) { torch_forward(s, 256, torch::kBFloat16); });
#endif
  for (const consr::index_t n : {256, 1024}) {
    consr_bench::add("logprobs_fwd_bwd", "consr", size_label(n),
                     [n](benchmark::State& s, int) { consr_forward_backward(s, n, false); });
    consr_bench::add("logprobs_fwd_bwd", "consr_fused", size_label(n),
                     [n](benchmark::State& s, int) { consr_forward_backward(s, n, true); });
#if defined(CONSR_BENCH_HAS_TORCH)
    consr_bench::add("logprobs_fwd_bwd", "torch_autograd", size_label(n),
                     [n](benchmark::State& s, int) { torch_forward_backward(s, n); });
#endif
  }
  const std::string in_l2 = "V=" + std::to_string(vocab) + ",in L2";
  consr_bench::add("logprobs_fwd_incache", "consr", in_l2,
                   [](benchmark::State& s, int t) { consr_in_cache<float>(s, t, 2, false); });
  consr_bench::add("logprobs_fwd_bf16_incache", "consr", in_l2,
                   [](benchmark::State& s, int t) { consr_in_cache<consr::bfloat16>(s, t, 2, false); });
  consr_bench::add("logprobs_fwd_bwd_incache", "consr", in_l2,
                   [](benchmark::State& s, int t) { consr_in_cache<float>(s, t, 1, true); });
  for (const consr::index_t n : {64, 256, 1024}) {
    consr_bench::add_once("logprobs_memory", "consr", size_label(n),
                          [n](benchmark::State& s) { memory_benchmark(s, "consr", n); });
#if defined(CONSR_BENCH_HAS_TORCH)
    consr_bench::add_once("logprobs_memory", "torch", size_label(n),
                          [n](benchmark::State& s) { memory_benchmark(s, "torch", n); });
#endif
  }
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all, memory_child); }
