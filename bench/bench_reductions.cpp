// bench/bench_reductions.cpp — segmented reductions over packed token log-probs (spec §2) at the
// size of one ConSR scoring round: 10 000 prompts × 15 candidates = 150 000 segments of 32–160
// tokens (≈ 14.4 M tokens), fp32 values, int64 labels with ~10 % ignored tokens.
//   segment_sum          consr::segmented_sum          | torch::segment_reduce(values, "sum", lengths)
//   segment_masked_mean  consr::segmented_masked_mean  | torch: where(mask, values, 0) summed per segment
//                                                         by segment_reduce, divided by the segment_reduce
//                                                         of the mask (what a LibTorch user writes)
// Traffic: values (4 B) [+ labels (8 B)] per token read once, one fp32 per segment written.
#include "common/bench_common.hpp"

#include <consr/reductions.hpp>

#include <cstdint>
#include <string>
#include <vector>

#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

namespace {

using consr::index_t;

constexpr index_t segments = 10000 * 15;
const std::string size_label = "S=150000,len=32..160";

struct packed {
  std::vector<std::int64_t> offsets = consr_bench::random_offsets(segments, 21, 32, 160);
  index_t tokens = offsets.back();
  std::vector<float> values = consr_bench::uniform_floats(static_cast<std::size_t>(tokens), 22, -8.0f, 0.0f);
  std::vector<std::int64_t> labels;
  packed() {
    const std::vector<std::int64_t> r = consr_bench::uniform_ints(static_cast<std::size_t>(tokens), 23, 10);
    labels.resize(r.size());
    for (std::size_t i = 0; i < r.size(); ++i) labels[i] = r[i] == 0 ? -100 : static_cast<std::int64_t>(i % 151000);
  }
};

void consr_sum(benchmark::State& state) {
  const packed p;
  std::vector<float> out(segments);
  for (auto _ : state) {
    consr::segmented_sum(consr::make_view(p.values.data(), p.tokens), consr::make_view(p.offsets.data(), segments + 1),
                         consr::make_view(out.data(), segments));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 4.0 * p.tokens + 8.0 * (segments + 1), 4.0 * segments);
}

void consr_masked_mean(benchmark::State& state) {
  const packed p;
  std::vector<float> out(segments);
  for (auto _ : state) {
    consr::segmented_masked_mean(consr::make_view(p.values.data(), p.tokens), consr::make_view(p.labels.data(), p.tokens),
                                 consr::make_view(p.offsets.data(), segments + 1), consr::make_view(out.data(), segments));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 12.0 * p.tokens + 8.0 * (segments + 1), 4.0 * segments);
}

#if defined(CONSR_BENCH_HAS_TORCH)
struct torch_packed {
  torch::Tensor values, labels, lengths;
  index_t tokens;
  torch_packed() {
    packed p;
    tokens = p.tokens;
    values = torch::from_blob(p.values.data(), {p.tokens}, torch::kFloat32).clone();
    labels = torch::from_blob(p.labels.data(), {p.tokens}, torch::kInt64).clone();
    std::vector<std::int64_t> len(segments);
    for (index_t s = 0; s < segments; ++s) len[static_cast<std::size_t>(s)] = p.offsets[s + 1] - p.offsets[s];
    lengths = torch::from_blob(len.data(), {segments}, torch::kInt64).clone();
  }
};

void torch_sum(benchmark::State& state) {
  const torch_packed p;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor out = torch::segment_reduce(p.values, "sum", p.lengths);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  consr_bench::set_traffic(state, 4.0 * p.tokens + 8.0 * (segments + 1), 4.0 * segments);
}

void torch_masked_mean(benchmark::State& state) {
  const torch_packed p;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    const torch::Tensor mask = p.labels.ne(-100);
    const torch::Tensor sums = torch::segment_reduce(torch::where(mask, p.values, torch::zeros({}, p.values.options())),
                                                     "sum", p.lengths);
    const torch::Tensor counts = torch::segment_reduce(mask.to(torch::kFloat32), "sum", p.lengths);
    torch::Tensor out = sums / counts;
    benchmark::DoNotOptimize(out.data_ptr());
  }
  consr_bench::set_traffic(state, 12.0 * p.tokens + 8.0 * (segments + 1), 4.0 * segments);
}
#endif

void register_all() {
  consr_bench::add("segment_sum", "consr", size_label, [](benchmark::State& s, int) { consr_sum(s); });
  consr_bench::add("segment_masked_mean", "consr", size_label, [](benchmark::State& s, int) { consr_masked_mean(s); });
#if defined(CONSR_BENCH_HAS_TORCH)
  consr_bench::add("segment_sum", "torch", size_label, [](benchmark::State& s, int) { torch_sum(s); });
  consr_bench::add("segment_masked_mean", "torch", size_label, [](benchmark::State& s, int) { torch_masked_mean(s); });
#endif
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all); }
