// CUDA benchmarks of consr/cuda/dpo.cuh: forward + backward of the ConSR loss
// (the paper's defaults: length normalization, visual weights, per-token
// reference, labels) and of standard DPO, for P pairs whose sides have
// 200–1000 response tokens. Bytes: forward reads policy, reference and
// weight (fp32) and label (int32) of every token, backward reads them again
// and writes one gradient per token: 36 bytes per token in all.
// LibTorch-CUDA baselines (autograd), when built: torch_dpo.cpp.
#include "cuda_bench.hpp"

#include <consr/cuda/dpo.cuh>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

/// One side of P pairs on the device.
struct side {
  std::vector<std::int32_t> offsets;
  index_t tokens = 0;
  device_array<float>* policy = nullptr;
  device_array<float>* reference = nullptr;
  device_array<float>* weights = nullptr;
  device_array<std::int32_t>* labels = nullptr;
  device_array<std::int32_t>* d_offsets = nullptr;
  device_array<float>* grad = nullptr;

  side(index_t pairs, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<index_t> len(200, 1000);
    offsets.push_back(0);
    for (index_t i = 0; i < pairs; ++i) offsets.push_back(static_cast<std::int32_t>(offsets.back() + len(rng)));
    tokens = offsets.back();
    std::uniform_real_distribution<float> lp(-4.0f, -0.01f), w(0.8f, 1.2f);
    std::vector<float> a(static_cast<size_t>(tokens)), r(a.size()), om(a.size());
    std::vector<std::int32_t> lab(a.size());
    for (size_t t = 0; t < a.size(); ++t) {
      a[t] = lp(rng);
      r[t] = a[t] + 0.01f;
      om[t] = w(rng);
      lab[t] = t % 40 == 1 ? -100 : 3;
    }
    policy = new device_array<float>(tokens);
    policy->upload(a);
    reference = new device_array<float>(tokens);
    reference->upload(r);
    weights = new device_array<float>(tokens);
    weights->upload(om);
    labels = new device_array<std::int32_t>(tokens);
    labels->upload(lab);
    d_offsets = new device_array<std::int32_t>(offsets.size());
    d_offsets->upload(offsets);
    grad = new device_array<float>(tokens);
  }
  ~side() {
    delete policy;
    delete reference;
    delete weights;
    delete labels;
    delete d_offsets;
    delete grad;
  }
  consr::cuda::dpo_sequences<float, std::int32_t, std::int32_t> sequences() const {
    consr::cuda::dpo_sequences<float, std::int32_t, std::int32_t> s;
    s.policy_logp = consr::make_view<consr::device_space>(static_cast<const float*>(policy->ptr), tokens);
    s.offsets = consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_offsets->ptr),
                                                      static_cast<index_t>(offsets.size()));
    s.reference_logp = consr::make_view<consr::device_space>(static_cast<const float*>(reference->ptr), tokens);
    s.labels = consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(labels->ptr), tokens);
    s.weights = consr::make_view<consr::device_space>(static_cast<const float*>(weights->ptr), tokens);
    return s;
  }
  consr::device_view<float, 1> grad_view() const { return consr::make_view<consr::device_space>(grad->ptr, tokens); }
};

void BM_dpo_forward_backward(benchmark::State& state, consr::dpo_loss_type loss) {
  const index_t pairs = state.range(0);
  const side w(pairs, 1), l(pairs, 2);
  consr::dpo_options o;
  o.loss = loss;
  const auto cw = w.sequences(), cl = l.sequences();
  device_array<float> d_loss(1);
  const auto loss_view = consr::make_view<consr::device_space>(d_loss.ptr, 1);
  size_t bytes = 0;
  require_ok(consr::cuda::dpo_forward(nullptr, bytes, cw, cl, o, loss_view));
  device_array<unsigned char> temp(bytes);
  const double weight_bytes = loss == consr::dpo_loss_type::consr ? 4.0 : 0.0;
  run_timed(state,
            [&] {
              require_ok(consr::cuda::dpo_forward(temp.ptr, bytes, cw, cl, o, loss_view));
              require_ok(consr::cuda::dpo_backward(cw, cl, o, 1.0, w.grad_view(), l.grad_view()));
            },
            static_cast<double>(w.tokens + l.tokens) * (2.0 * (12.0 + weight_bytes) + 4.0));
  state.counters["tokens"] = static_cast<double>(w.tokens + l.tokens);
}

}  // namespace

BENCHMARK_CAPTURE(BM_dpo_forward_backward, consr, consr::dpo_loss_type::consr)
    ->Name("consr/dpo_forward_backward/consr/fp32")->Arg(64)->Arg(1024)->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_dpo_forward_backward, standard, consr::dpo_loss_type::standard)
    ->Name("consr/dpo_forward_backward/standard/fp32")->Arg(64)->Arg(1024)->Apply(gpu_timed);
