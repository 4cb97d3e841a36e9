// LibTorch-CUDA baselines of bench_reductions.cu: torch::segment_reduce with
// the same offsets (unsafe = true: no validation, hence no synchronization).
#include <torch/torch.h>

#include "cuda_bench.hpp"

#include <random>
#include <vector>

using namespace consr_bench_cuda;

namespace {

torch::Tensor offsets_tensor(int64_t segments, int64_t min_len, int64_t max_len) {
  const std::vector<int32_t> off = segment_offsets(segments, min_len, max_len);  // as bench_reductions.cu
  return torch::tensor(off, torch::TensorOptions().dtype(torch::kInt32)).to(torch::kCUDA);
}

void BM_torch_segment_sum(benchmark::State& state, int64_t segments, int64_t min_len, int64_t max_len) {
  const auto off = offsets_tensor(segments, min_len, max_len);
  const int64_t n = off[-1].item<int64_t>();
  const auto values = torch::rand({n}, torch::TensorOptions().device(torch::kCUDA));
  torch::Tensor out;
  run_timed(state, [&] { out = torch::segment_reduce(values, "sum", {}, {}, off, 0, true); },
            static_cast<double>(n) * 4.0 + static_cast<double>(segments) * 8.0);
}

void BM_torch_masked_mean(benchmark::State& state, int64_t segments, int64_t min_len, int64_t max_len) {
  const auto off = offsets_tensor(segments, min_len, max_len);
  const int64_t n = off[-1].item<int64_t>();
  const auto values = torch::rand({n}, torch::TensorOptions().device(torch::kCUDA));
  const auto labels = torch::randint(0, 7, {n}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kInt32));
  torch::Tensor out;
  run_timed(state,
            [&] {
              const auto mask = labels.ne(0).to(torch::kFloat32);
              out = torch::segment_reduce(values * mask, "sum", {}, {}, off, 0, true) /
                    torch::segment_reduce(mask, "sum", {}, {}, off, 0, true);
            },
            static_cast<double>(n) * 8.0 + static_cast<double>(segments) * 8.0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_segment_sum, short_segments, 150000, 1, 400)->Name("torch/segment_reduce_sum/fp32/150000_segments_1-400")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_torch_segment_sum, long_segments, 64, 65536, 65536)->Name("torch/segment_reduce_sum/fp32/64_segments_65536")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_torch_masked_mean, short_segments, 150000, 1, 400)->Name("torch/masked_mean/fp32/150000_segments_1-400")->Apply(gpu_timed);
