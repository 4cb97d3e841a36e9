// bench/bench_reward.cpp — contrastive reward (spec §5, eqs. 1–6) and pair selection (spec §6) for
// one ConSR round: 10 000 prompts × 15 candidates, each candidate 32–160 scored tokens (≈ 14.4 M),
// scored three times: under (x, I), (x, Ĩ) and (x', I).
//   reward          consr::contrastive_reward (probability space, λ = 0.8)
//                   | torch: three segment_reduce means, exp, λ-combination
//   pairs           consr::select_pairs (best vs worst per group) on the 150 000 rewards
//                   | torch: rewards.view(10000, 15).max / .min along the candidates
//   reward_pairs    both, end to end
// Traffic: 3 × 4 B per token read once; rewards (8 B per candidate) written; pair selection reads
// the rewards once.
#include "common/bench_common.hpp"

#include <consr/pairs.hpp>
#include <consr/reward.hpp>

#include <cstdint>
#include <string>
#include <vector>

#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

namespace {

using consr::index_t;

constexpr index_t prompts = 10000, per_prompt = 15, candidates = prompts * per_prompt;
const std::string size_label = "10000x15,len=32..160";

struct scores {
  std::vector<std::int64_t> offsets = consr_bench::random_offsets(candidates, 31, 32, 160);
  index_t tokens = offsets.back();
  std::vector<float> logp = consr_bench::uniform_floats(static_cast<std::size_t>(tokens), 32, -3.0f, 0.0f);
  std::vector<float> logp_corrupt = consr_bench::uniform_floats(static_cast<std::size_t>(tokens), 33, -3.2f, 0.0f);
  std::vector<float> logp_semantic = consr_bench::uniform_floats(static_cast<std::size_t>(tokens), 34, -2.8f, 0.0f);
  std::vector<std::int64_t> group_offsets;
  scores() {
    for (index_t g = 0; g <= prompts; ++g) group_offsets.push_back(g * per_prompt);
  }
};

double reward_read_bytes(const scores& s) { return 12.0 * s.tokens + 8.0 * (candidates + 1); }

void consr_reward_into(const scores& s, std::vector<double>& reward) {
  consr::reward_outputs<double> out;
  out.reward = consr::make_view(reward.data(), candidates);
  consr::contrastive_reward(consr::make_view(s.logp.data(), s.tokens), consr::make_view(s.logp_corrupt.data(), s.tokens),
                            consr::make_view(s.logp_semantic.data(), s.tokens),
                            consr::make_view(s.offsets.data(), candidates + 1), out);
}

consr::selection_report consr_pairs_of(const std::vector<double>& reward, const scores& s,
                                       std::vector<consr::preference_pair>& pairs) {
  return consr::select_pairs(consr::make_view(reward.data(), candidates),
                             consr::make_view(s.group_offsets.data(), prompts + 1), pairs);
}

void consr_reward(benchmark::State& state) {
  const scores s;
  std::vector<double> reward(candidates);
  for (auto _ : state) {
    consr_reward_into(s, reward);
    benchmark::DoNotOptimize(reward.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, reward_read_bytes(s), 8.0 * candidates);
}

void consr_pairs(benchmark::State& state) {
  const scores s;
  std::vector<double> reward(candidates);
  consr_reward_into(s, reward);
  std::vector<consr::preference_pair> pairs;
  for (auto _ : state) {
    benchmark::DoNotOptimize(consr_pairs_of(reward, s, pairs).pairs);
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 8.0 * candidates, static_cast<double>(sizeof(consr::preference_pair)) * prompts);
}

void consr_reward_pairs(benchmark::State& state) {
  const scores s;
  std::vector<double> reward(candidates);
  std::vector<consr::preference_pair> pairs;
  for (auto _ : state) {
    consr_reward_into(s, reward);
    benchmark::DoNotOptimize(consr_pairs_of(reward, s, pairs).pairs);
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, reward_read_bytes(s), static_cast<double>(sizeof(consr::preference_pair)) * prompts);
}

#if defined(CONSR_BENCH_HAS_TORCH)
struct torch_scores {
  torch::Tensor logp, logp_corrupt, logp_semantic, lengths;
  index_t tokens;
  torch_scores() {
    scores s;
    tokens = s.tokens;
    logp = torch::from_blob(s.logp.data(), {tokens}, torch::kFloat32).clone();
    logp_corrupt = torch::from_blob(s.logp_corrupt.data(), {tokens}, torch::kFloat32).clone();
    logp_semantic = torch::from_blob(s.logp_semantic.data(), {tokens}, torch::kFloat32).clone();
    std::vector<std::int64_t> len(candidates);
    for (index_t c = 0; c < candidates; ++c) len[static_cast<std::size_t>(c)] = s.offsets[c + 1] - s.offsets[c];
    lengths = torch::from_blob(len.data(), {candidates}, torch::kInt64).clone();
  }
};

torch::Tensor torch_reward_of(const torch_scores& s) {
  const double lambda = 0.8;
  const torch::Tensor p = torch::segment_reduce(s.logp, "mean", s.lengths).to(torch::kFloat64).exp();
  const torch::Tensor pc = torch::segment_reduce(s.logp_corrupt, "mean", s.lengths).to(torch::kFloat64).exp();
  const torch::Tensor ps = torch::segment_reduce(s.logp_semantic, "mean", s.lengths).to(torch::kFloat64).exp();
  return lambda * (ps - p) + (1.0 - lambda) * (p - pc);
}

std::tuple<torch::Tensor, torch::Tensor> torch_pairs_of(const torch::Tensor& reward) {
  const torch::Tensor grouped = reward.view({prompts, per_prompt});
  return {grouped.argmax(1), grouped.argmin(1)};
}

void torch_reward(benchmark::State& state) {
  const torch_scores s;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor r = torch_reward_of(s);
    benchmark::DoNotOptimize(r.data_ptr());
  }
  consr_bench::set_traffic(state, 12.0 * s.tokens + 8.0 * (candidates + 1), 8.0 * candidates);
}

void torch_pairs(benchmark::State& state) {
  const torch_scores s;
  torch::NoGradGuard no_grad;
  const torch::Tensor reward = torch_reward_of(s);
  for (auto _ : state) {
    auto best_worst = torch_pairs_of(reward);
    benchmark::DoNotOptimize(std::get<0>(best_worst).data_ptr());
  }
  consr_bench::set_traffic(state, 8.0 * candidates, static_cast<double>(sizeof(consr::preference_pair)) * prompts);
}

void torch_reward_pairs(benchmark::State& state) {
  const torch_scores s;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    auto best_worst = torch_pairs_of(torch_reward_of(s));
    benchmark::DoNotOptimize(std::get<0>(best_worst).data_ptr());
  }
  consr_bench::set_traffic(state, 12.0 * s.tokens + 8.0 * (candidates + 1),
                           static_cast<double>(sizeof(consr::preference_pair)) * prompts);
}
#endif

void register_all() {
  consr_bench::add("reward", "consr", size_label, [](benchmark::State& s, int) { consr_reward(s); });
  consr_bench::add("pairs", "consr", "10000x15", [](benchmark::State& s, int) { consr_pairs(s); });
  consr_bench::add("reward_pairs", "consr", size_label, [](benchmark::State& s, int) { consr_reward_pairs(s); });
#if defined(CONSR_BENCH_HAS_TORCH)
  consr_bench::add("reward", "torch", size_label, [](benchmark::State& s, int) { torch_reward(s); });
  consr_bench::add("pairs", "torch", "10000x15", [](benchmark::State& s, int) { torch_pairs(s); });
  consr_bench::add("reward_pairs", "torch", size_label, [](benchmark::State& s, int) { torch_reward_pairs(s); });
#endif
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all); }
