// CUDA benchmarks of consr/cuda/reward.cuh and consr/cuda/pairs.cuh at the
// paper's data-construction scale: 10 000 prompts × 15 candidates of 20–200
// response tokens (~16.5 M tokens), three fp32 log-prob arrays (+ int32
// labels), then one pair per prompt. Bytes: every input read once, every
// output written once. LibTorch-CUDA baselines, when built: torch_reward_pairs.cpp.
#include "cuda_bench.hpp"

#include <consr/cuda/pairs.cuh>
#include <consr/cuda/reward.cuh>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

constexpr index_t prompts = 10000, per_prompt = 15, candidates = prompts * per_prompt;

/// The inputs of one data-construction step, on the device.
struct reward_problem {
  std::vector<std::int32_t> offsets, group_offsets;
  index_t tokens = 0;
  device_array<float>* logp[3] = {nullptr, nullptr, nullptr};
  device_array<std::int32_t>* labels = nullptr;
  device_array<std::int32_t>* d_offsets = nullptr;
  device_array<std::int32_t>* d_groups = nullptr;

  reward_problem() {
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<index_t> len(20, 200);
    offsets.push_back(0);
    for (index_t c = 0; c < candidates; ++c) offsets.push_back(static_cast<std::int32_t>(offsets.back() + len(rng)));
    for (index_t g = 0; g <= prompts; ++g) group_offsets.push_back(static_cast<std::int32_t>(g * per_prompt));
    tokens = offsets.back();
    std::uniform_real_distribution<float> lp(-3.0f, 0.0f);
    std::vector<float> h(static_cast<size_t>(tokens));
    for (auto& arr : logp) {
      for (auto& x : h) x = lp(rng);
      arr = new device_array<float>(tokens);
      arr->upload(h);
    }
    std::vector<std::int32_t> lab(static_cast<size_t>(tokens));
    for (index_t i = 0; i < tokens; ++i) lab[i] = i % 50 == 0 ? -100 : 17;
    labels = new device_array<std::int32_t>(tokens);
    labels->upload(lab);
    d_offsets = new device_array<std::int32_t>(offsets.size());
    d_offsets->upload(offsets);
    d_groups = new device_array<std::int32_t>(group_offsets.size());
    d_groups->upload(group_offsets);
  }
  ~reward_problem() {
    for (auto* a : logp) delete a;
    delete labels;
    delete d_offsets;
    delete d_groups;
  }
  consr::device_view<const float, 1> view(int k) const {
    return consr::make_view<consr::device_space>(static_cast<const float*>(logp[k]->ptr), tokens);
  }
  consr::device_view<const std::int32_t, 1> label_view() const {
    return consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(labels->ptr), tokens);
  }
  consr::device_view<const std::int32_t, 1> offset_view() const {
    return consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_offsets->ptr), candidates + 1);
  }
  consr::device_view<const std::int32_t, 1> group_view() const {
    return consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_groups->ptr), prompts + 1);
  }
};

const reward_problem& problem() {
  static const reward_problem p;
  return p;
}

void BM_reward(benchmark::State& state, bool with_labels) {
  const reward_problem& p = problem();
  device_array<float> reward(candidates);
  device_array<consr::cuda::reward_counts> counts(1);
  consr::cuda::reward_outputs<float> out;
  out.reward = consr::make_view<consr::device_space>(reward.ptr, candidates);
  const auto call = [&](void* t, size_t& b) {
    return with_labels ? consr::cuda::contrastive_reward(t, b, p.view(0), p.view(1), p.view(2), p.offset_view(),
                                                         p.label_view(), out, counts.ptr)
                       : consr::cuda::contrastive_reward(t, b, p.view(0), p.view(1), p.view(2), p.offset_view(), out,
                                                         counts.ptr);
  };
  size_t bytes = 0;
  require_ok(call(nullptr, bytes));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(call(temp.ptr, bytes)); },
            static_cast<double>(p.tokens) * (with_labels ? 16.0 : 12.0) + static_cast<double>(candidates) * 8.0);
}

void BM_select_pairs(benchmark::State& state) {
  const reward_problem& p = problem();
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> r(static_cast<size_t>(candidates));
  for (auto& x : r) x = d(rng);
  device_array<float> rewards(candidates);
  rewards.upload(r);
  device_array<std::int32_t> chosen(prompts), rejected(prompts);
  device_array<consr::cuda::selection_counts> counts(1);
  consr::cuda::pair_outputs<std::int32_t> out;
  out.chosen = consr::make_view<consr::device_space>(chosen.ptr, prompts);
  out.rejected = consr::make_view<consr::device_space>(rejected.ptr, prompts);
  const auto rv = consr::make_view<consr::device_space>(static_cast<const float*>(rewards.ptr), candidates);
  size_t bytes = 0;
  require_ok(consr::cuda::select_pairs(nullptr, bytes, rv, p.group_view(), out, counts.ptr));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(consr::cuda::select_pairs(temp.ptr, bytes, rv, p.group_view(), out, counts.ptr)); },
            static_cast<double>(candidates) * 4.0 + static_cast<double>(prompts) * 12.0);
}

/// The whole step: rewards (with labels) then one pair per prompt.
void BM_reward_then_pairs(benchmark::State& state) {
  const reward_problem& p = problem();
  device_array<float> reward(candidates);
  device_array<std::int32_t> chosen(prompts), rejected(prompts);
  device_array<consr::cuda::reward_counts> rcounts(1);
  device_array<consr::cuda::selection_counts> scounts(1);
  consr::cuda::reward_outputs<float> rout;
  rout.reward = consr::make_view<consr::device_space>(reward.ptr, candidates);
  consr::cuda::pair_outputs<std::int32_t> pout;
  pout.chosen = consr::make_view<consr::device_space>(chosen.ptr, prompts);
  pout.rejected = consr::make_view<consr::device_space>(rejected.ptr, prompts);
  const auto rv = consr::make_view<consr::device_space>(static_cast<const float*>(reward.ptr), candidates);
  size_t b1 = 0, b2 = 0;
  require_ok(consr::cuda::contrastive_reward(nullptr, b1, p.view(0), p.view(1), p.view(2), p.offset_view(),
                                             p.label_view(), rout, rcounts.ptr));
  require_ok(consr::cuda::select_pairs(nullptr, b2, rv, p.group_view(), pout, scounts.ptr));
  device_array<unsigned char> t1(b1), t2(b2);
  run_timed(state,
            [&] {
              require_ok(consr::cuda::contrastive_reward(t1.ptr, b1, p.view(0), p.view(1), p.view(2), p.offset_view(),
                                                         p.label_view(), rout, rcounts.ptr));
              require_ok(consr::cuda::select_pairs(t2.ptr, b2, rv, p.group_view(), pout, scounts.ptr));
            },
            static_cast<double>(p.tokens) * 16.0 + static_cast<double>(candidates) * 16.0 +
                static_cast<double>(prompts) * 12.0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_reward, labels, true)->Name("consr/contrastive_reward/fp32/10000x15_labels")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_reward, no_labels, false)->Name("consr/contrastive_reward/fp32/10000x15")->Apply(gpu_timed);
BENCHMARK(BM_select_pairs)->Name("consr/select_pairs/fp32/10000x15")->Apply(gpu_timed);
BENCHMARK(BM_reward_then_pairs)->Name("consr/reward_then_pairs/fp32/10000x15_labels")->Apply(gpu_timed);
