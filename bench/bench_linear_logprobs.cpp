// bench/bench_linear_logprobs.cpp — token log-probs from hidden states × output projection (spec §4,
// last paragraph): consr::linear_token_logprobs (+ backward) in vocabulary chunks, against
//   (a) what a LibTorch user writes: linear → log_softmax → gather, with autograd ("torch_autograd";
//       "torch" for the no-grad forward), and
//   (b) consr's own materialized path: the full N × V logits by one GEMM (+ bias), then
//       consr::token_logprobs / token_logprobs_backward (in place) and the two gradient GEMMs
//       ("consr_materialized").
// consr's chunked path runs on the Eigen GEMM policy ("consr") and, where the build has a CBLAS, on
// it ("consr_cblas"); the materialized path uses the same policy as "consr".
//
// Benchmarks (naming and counters: common/bench_common.hpp):
//   linear_fwd       forward only (the reference model's scoring pass)       N=256,H=512,V=32768
//   linear_fwd_bwd   forward + backward (the policy's training step)         N=256,H=512,V=32768
//   linear_memory    peak extra resident memory of one forward + backward in a fresh process on one
//                    thread, inputs and caller-owned outputs excluded ("peak_extra_bytes", next to
//                    "logits_bytes" = 4·N·V and consr's "workspace_bytes"), and that one step's
//                    "step_wall_s" / "step_cpu_s"                               N=1024,H=64,V=152064
// With CONSR_BENCH_LARGE set, all three also run at the issue's size N=1024, H=3584, V=152064 (fp32:
// W alone is 2.2 GB; minutes per iteration on few cores).
// Counters: "gemm_flops" = the materialized path's GEMM work, 2·N·H·V forward and 6·N·H·V forward +
// backward, the same for every impl (the chunked backward actually does 8·N·H·V: it recomputes the
// logits); bytes_read / bytes_written = inputs read once, outputs written once.
// Thread counts: OpenMP and LibTorch are set per run; a BLAS behind consr_cblas and behind LibTorch
// uses its own threads (OPENBLAS_NUM_THREADS): set it to the same count for a fair comparison.
#include "common/bench_common.hpp"

#include <consr/linear_logprobs.hpp>
#include <consr/logprobs.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <time.h>

#if __has_include(<Eigen/Core>)
#include <consr/adapters/eigen_gemm.hpp>
#define CONSR_BENCH_LINEAR_EIGEN 1
#endif
#if defined(CONSR_BENCH_HAS_CBLAS)
#include <consr/adapters/cblas_gemm.hpp>
#endif
#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

namespace {

using consr::index_t;
using consr::make_view;

// The policy of "consr" and "consr_materialized": Eigen when the build has it, else plain loops.
#if defined(CONSR_BENCH_LINEAR_EIGEN)
using default_gemm = consr::eigen_gemm;
#else
using default_gemm = consr::loop_gemm;
#endif

struct shape {
  index_t n, h, v;
  std::string label() const {
    return "N=" + std::to_string(n) + ",H=" + std::to_string(h) + ",V=" + std::to_string(v);
  }
  double gemm_flops() const { return 2.0 * static_cast<double>(n) * static_cast<double>(h) * static_cast<double>(v); }
};

// Hidden states uniform in [-1, 1), W scaled so that the logits have a standard deviation near 2 (as a
// trained head's do), a small bias, labels uniform over the vocabulary, upstream gradients in [-1, 1).
struct problem {
  shape s;
  std::vector<float> hidden, weight, bias, grad_logp;
  std::vector<std::int64_t> labels;
  explicit problem(shape sh)
      : s(sh),
        hidden(consr_bench::uniform_floats(static_cast<std::size_t>(sh.n * sh.h), 21, -1.0f, 1.0f)),
        weight(consr_bench::uniform_floats(static_cast<std::size_t>(sh.v * sh.h), 22,
                                           -6.0f / std::sqrt(static_cast<float>(sh.h)),
                                           6.0f / std::sqrt(static_cast<float>(sh.h)))),
        bias(consr_bench::uniform_floats(static_cast<std::size_t>(sh.v), 23, -0.5f, 0.5f)),
        grad_logp(consr_bench::uniform_floats(static_cast<std::size_t>(sh.n), 24, -1.0f, 1.0f)),
        labels(consr_bench::uniform_ints(static_cast<std::size_t>(sh.n), 25, sh.v)) {}
};

// Caller-owned outputs (the gradients of W and b accumulate, as a trainer's .grad does).
struct outputs {
  std::vector<float> logp, lse, grad_hidden, grad_weight, grad_bias;
  explicit outputs(const shape& s)
      : logp(static_cast<std::size_t>(s.n)),
        lse(static_cast<std::size_t>(s.n)),
        grad_hidden(static_cast<std::size_t>(s.n * s.h)),
        grad_weight(static_cast<std::size_t>(s.v * s.h), 0.0f),
        grad_bias(static_cast<std::size_t>(s.v), 0.0f) {}
};

void set_counters(benchmark::State& state, const shape& s, bool backward) {
  const double n = static_cast<double>(s.n), h = static_cast<double>(s.h), v = static_cast<double>(s.v);
  const double inputs = 4.0 * (n * h + v * h + v) + 8.0 * n;
  if (backward) {
    consr_bench::set_traffic(state, inputs + 4.0 * n + 4.0 * (v * h + v), 4.0 * (2.0 * n + n * h + v * h + v));
  } else {
    consr_bench::set_traffic(state, inputs, 8.0 * n);
  }
  state.counters["gemm_flops"] =
      benchmark::Counter((backward ? 3.0 : 1.0) * s.gemm_flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- consr, chunked --------------------------------------------------------------------------------

template <class Gemm>
void chunked_forward(const problem& p, outputs& o) {
  const shape& s = p.s;
  consr::linear_token_logprobs<Gemm>(make_view(p.hidden.data(), s.n, s.h), make_view(p.weight.data(), s.v, s.h),
                                     make_view(p.bias.data(), s.v), make_view(p.labels.data(), s.n),
                                     make_view(o.logp.data(), s.n), make_view(o.lse.data(), s.n));
}

template <class Gemm>
void chunked_backward(const problem& p, outputs& o) {
  const shape& s = p.s;
  consr::linear_token_logprobs_backward<Gemm>(
      make_view(p.hidden.data(), s.n, s.h), make_view(p.weight.data(), s.v, s.h), make_view(p.bias.data(), s.v),
      make_view(p.labels.data(), s.n), make_view(o.lse.data(), s.n), make_view(p.grad_logp.data(), s.n),
      make_view(o.grad_hidden.data(), s.n, s.h), make_view(o.grad_weight.data(), s.v, s.h),
      make_view(o.grad_bias.data(), s.v));
}

template <class Gemm>
void bench_chunked(benchmark::State& state, shape s, bool backward) {
  const problem p(s);
  outputs o(s);
  for (auto _ : state) {
    chunked_forward<Gemm>(p, o);
    if (backward) chunked_backward<Gemm>(p, o);
    benchmark::DoNotOptimize(o.logp.data());
    benchmark::DoNotOptimize(o.grad_weight.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, backward);
}

// ---- consr, materialized ---------------------------------------------------------------------------

// logits = h Wᵀ + b into a fresh N × V buffer, token_logprobs, and (backward) the in-place gradient of
// the logits followed by ∂h = G W, ∂W += Gᵀ h, ∂b += Σ_i G_i.
template <class Gemm>
void materialized_step(const problem& p, outputs& o, bool backward) {
  const shape& s = p.s;
  std::vector<float> logits(static_cast<std::size_t>(s.n * s.v));
  Gemm::gemm_nt(s.n, s.v, s.h, 1.0f, p.hidden.data(), s.h, p.weight.data(), s.h, 0.0f, logits.data(), s.v);
  const bool run_parallel = s.n * s.v >= 65536;
  (void)run_parallel;
#pragma omp parallel for schedule(static) if (run_parallel)
  for (index_t i = 0; i < s.n; ++i) {
    float* row = logits.data() + i * s.v;
    for (index_t c = 0; c < s.v; ++c) row[c] += p.bias[static_cast<std::size_t>(c)];
  }
  const auto logits_view = make_view(logits.data(), s.n, s.v);
  consr::token_logprobs(logits_view, make_view(p.labels.data(), s.n), make_view(o.logp.data(), s.n),
                        make_view(o.lse.data(), s.n));
  if (!backward) return;
  consr::token_logprobs_backward(logits_view, make_view(p.labels.data(), s.n), make_view(o.lse.data(), s.n),
                                 make_view(p.grad_logp.data(), s.n), logits_view);
#pragma omp parallel for schedule(static) if (run_parallel)
  for (index_t c = 0; c < s.v; ++c) {
    float sum = 0;
    for (index_t i = 0; i < s.n; ++i) sum += logits[static_cast<std::size_t>(i * s.v + c)];
    o.grad_bias[static_cast<std::size_t>(c)] += sum;
  }
  Gemm::gemm_nn(s.n, s.h, s.v, 1.0f, logits.data(), s.v, p.weight.data(), s.h, 0.0f, o.grad_hidden.data(), s.h);
  Gemm::gemm_tn(s.v, s.h, s.n, 1.0f, logits.data(), s.v, p.hidden.data(), s.h, 1.0f, o.grad_weight.data(), s.h);
}

template <class Gemm>
void bench_materialized(benchmark::State& state, shape s, bool backward) {
  const problem p(s);
  outputs o(s);
  for (auto _ : state) {
    materialized_step<Gemm>(p, o, backward);
    benchmark::DoNotOptimize(o.logp.data());
    benchmark::DoNotOptimize(o.grad_weight.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, backward);
}

// ---- LibTorch ----------------------------------------------------------------------------------------

#if defined(CONSR_BENCH_HAS_TORCH)
struct torch_problem {
  torch::Tensor hidden, weight, bias, labels, grad_logp;
  torch_problem(const problem& p, bool requires_grad) {
    const shape& s = p.s;
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    hidden = torch::from_blob(const_cast<float*>(p.hidden.data()), {s.n, s.h}, f32).clone();
    weight = torch::from_blob(const_cast<float*>(p.weight.data()), {s.v, s.h}, f32).clone();
    bias = torch::from_blob(const_cast<float*>(p.bias.data()), {s.v}, f32).clone();
    labels = torch::from_blob(const_cast<std::int64_t*>(p.labels.data()), {s.n}, torch::kInt64).clone();
    grad_logp = torch::from_blob(const_cast<float*>(p.grad_logp.data()), {s.n}, f32).clone();
    if (requires_grad) {
      // Gradients already exist, as they do from the second training step on: backward accumulates.
      for (torch::Tensor* t : {&hidden, &weight, &bias}) {
        t->requires_grad_(true);
        t->mutable_grad() = torch::zeros_like(*t);
      }
    }
  }
  torch::Tensor token_logprobs() const {
    return torch::log_softmax(torch::linear(hidden, weight, bias), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1);
  }
  void step(bool backward) {
    if (!backward) {
      torch::NoGradGuard no_grad;
      torch::Tensor logp = token_logprobs();
      benchmark::DoNotOptimize(logp.data_ptr());
      return;
    }
    torch::Tensor logp = token_logprobs();
    logp.backward(grad_logp);
    benchmark::DoNotOptimize(weight.grad().data_ptr());
  }
};

void bench_torch(benchmark::State& state, shape s, bool backward) {
  torch_problem t(problem(s), backward);
  for (auto _ : state) t.step(backward);
  set_counters(state, s, backward);
}
#endif

// ---- memory: one forward + backward in a fresh child process ---------------------------------------------

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Child: "<impl>,<N>,<H>,<V>", on one thread (a BLAS's own threads: OPENBLAS_NUM_THREADS). Allocates
// and touches the inputs and the caller-owned outputs, warms up (thread pools, lazy library state) on a
// tiny problem, resets the peak, runs one forward + backward and prints how far the peak resident size
// rose, then that step's wall-clock and CPU seconds (one run: a rough time where the timed benchmarks
// would take too long).
int memory_child(const std::string& spec) {
  consr_bench::set_threads(1);
  std::stringstream in(spec);
  std::string impl, field;
  std::getline(in, impl, ',');
  index_t dims[3] = {0, 0, 0};
  for (index_t& d : dims) {
    if (!std::getline(in, field, ',')) return 2;
    d = std::atoll(field.c_str());
  }
  const shape s{dims[0], dims[1], dims[2]};
  const shape tiny{4, 8, 64};
  consr_bench::peak_rss_meter meter;
  double extra = -1, wall = 0, cpu = 0;
  std::chrono::steady_clock::time_point start;
  const auto begin = [&] {
    meter.reset();
    cpu = process_cpu_seconds();
    start = std::chrono::steady_clock::now();
  };
  const auto end = [&] {
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    cpu = process_cpu_seconds() - cpu;
    extra = meter.extra_bytes();
  };
  const auto measure_consr = [&](auto run) {
    problem warm(tiny);
    outputs warm_out(tiny);
    run(warm, warm_out);
    const problem p(s);
    outputs o(s);
    begin();
    run(p, o);
    end();
    benchmark::DoNotOptimize(o.grad_weight.data());
  };
  if (impl == "consr") {
    measure_consr([](const problem& p, outputs& o) {
      chunked_forward<default_gemm>(p, o);
      chunked_backward<default_gemm>(p, o);
    });
  }
#if defined(CONSR_BENCH_HAS_CBLAS)
  if (impl == "consr_cblas") {
    measure_consr([](const problem& p, outputs& o) {
      chunked_forward<consr::cblas_gemm>(p, o);
      chunked_backward<consr::cblas_gemm>(p, o);
    });
  }
#endif
  if (impl == "consr_materialized") {
    measure_consr([](const problem& p, outputs& o) { materialized_step<default_gemm>(p, o, true); });
  }
#if defined(CONSR_BENCH_HAS_TORCH)
  if (impl == "torch_autograd") {
    torch_problem warm(problem(tiny), true);
    warm.step(true);
    torch_problem t(problem(s), true);
    begin();
    t.step(true);
    end();
  }
#endif
  if (extra < 0) return 3;
  std::printf("%.0f %.3f %.3f\n", extra, wall, cpu);
  return 0;
}

void memory_benchmark(benchmark::State& state, const std::string& impl, shape s) {
  double extra = -1, wall = 0, cpu = 0;
  for (auto _ : state) {
    const std::string out = consr_bench::run_child(
        {"--consr-child=" + impl + "," + std::to_string(s.n) + "," + std::to_string(s.h) + "," + std::to_string(s.v)});
    if (out.empty() || std::sscanf(out.c_str(), "%lf %lf %lf", &extra, &wall, &cpu) != 3) extra = -1;
  }
  if (extra < 0) {
    state.SkipWithError("the child process failed");
    return;
  }
  state.counters["peak_extra_bytes"] = extra;
  state.counters["step_wall_s"] = wall;
  state.counters["step_cpu_s"] = cpu;
  state.counters["logits_bytes"] = 4.0 * static_cast<double>(s.n) * static_cast<double>(s.v);
  state.counters["workspace_bytes"] = static_cast<double>(
      std::max(consr::linear_token_logprobs_workspace_bytes<float>(s.n, s.h, s.v),
               consr::linear_token_logprobs_backward_workspace_bytes<float>(s.n, s.h, s.v)));
}

void register_all() {
  const bool large = std::getenv("CONSR_BENCH_LARGE") != nullptr;
  const shape issue{1024, 3584, 152064};  // the issue's size: Qwen2.5-7B's hidden size and vocabulary
  std::vector<shape> timed{{256, 512, 32768}};
  std::vector<shape> memory{{1024, 64, 152064}};
  if (large) {
    timed.push_back(issue);
    memory.push_back(issue);
  }
  for (const shape& s : timed) {
    for (const bool backward : {false, true}) {
      const std::string kernel = backward ? "linear_fwd_bwd" : "linear_fwd";
      consr_bench::add(kernel, "consr", s.label(),
                       [s, backward](benchmark::State& st, int) { bench_chunked<default_gemm>(st, s, backward); });
#if defined(CONSR_BENCH_HAS_CBLAS)
      consr_bench::add(kernel, "consr_cblas", s.label(), [s, backward](benchmark::State& st, int) {
        bench_chunked<consr::cblas_gemm>(st, s, backward);
      });
#endif
      consr_bench::add(kernel, "consr_materialized", s.label(), [s, backward](benchmark::State& st, int) {
        bench_materialized<default_gemm>(st, s, backward);
      });
#if defined(CONSR_BENCH_HAS_TORCH)
      consr_bench::add(kernel, backward ? "torch_autograd" : "torch", s.label(),
                       [s, backward](benchmark::State& st, int) { bench_torch(st, s, backward); });
#endif
    }
  }
  for (const shape& s : memory) {
    std::vector<std::string> impls{"consr", "consr_materialized"};
#if defined(CONSR_BENCH_HAS_CBLAS)
    impls.push_back("consr_cblas");
#endif
#if defined(CONSR_BENCH_HAS_TORCH)
    impls.push_back("torch_autograd");
#endif
    for (const std::string& impl : impls)
      consr_bench::add_once("linear_memory", impl, s.label(),
                            [impl, s](benchmark::State& st) { memory_benchmark(st, impl, s); });
  }
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all, memory_child); }
