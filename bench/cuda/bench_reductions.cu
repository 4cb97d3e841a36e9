// CUDA benchmarks of consr/cuda/reductions.cuh (cub::DeviceSegmentedReduce):
// many short segments (150 000 candidates of 1–400 tokens, the reward's
// shape), few long ones (64 × 65 536), the masked mean with labels, and bf16
// values. Bytes: values (+ labels) read once, offsets read, one output per
// segment written. LibTorch-CUDA baselines, when built: torch_reductions.cpp.
#include "cuda_bench.hpp"

#include <consr/cuda/reductions.cuh>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

template <class V>
void BM_segmented_sum(benchmark::State& state, index_t segments, index_t min_len, index_t max_len) {
  const std::vector<std::int32_t> off = segment_offsets(segments, min_len, max_len);
  const index_t n = off.back();
  std::vector<V> values(static_cast<size_t>(n));
  for (index_t i = 0; i < n; ++i) values[i] = consr::from_accum<V>(static_cast<float>(i % 97) * 0.01f);
  device_array<V> d_values(n);
  device_array<std::int32_t> d_off(off.size());
  device_array<float> d_out(segments);
  d_values.upload(values);
  d_off.upload(off);
  const auto vv = consr::make_view<consr::device_space>(static_cast<const V*>(d_values.ptr), n);
  const auto ov = consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_off.ptr), segments + 1);
  const auto out = consr::make_view<consr::device_space>(d_out.ptr, segments);
  size_t bytes = 0;
  require_ok(consr::cuda::segmented_sum(nullptr, bytes, vv, ov, out));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(consr::cuda::segmented_sum(temp.ptr, bytes, vv, ov, out)); },
            static_cast<double>(n) * sizeof(V) + static_cast<double>(segments) * (sizeof(std::int32_t) + sizeof(float)));
}

void BM_segmented_masked_mean(benchmark::State& state, index_t segments, index_t min_len, index_t max_len) {
  const std::vector<std::int32_t> off = segment_offsets(segments, min_len, max_len);
  const index_t n = off.back();
  std::vector<float> values(static_cast<size_t>(n));
  std::vector<std::int32_t> labels(static_cast<size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    values[i] = static_cast<float>(i % 97) * -0.01f;
    labels[i] = i % 7 == 0 ? -100 : 11;
  }
  device_array<float> d_values(n), d_out(segments);
  device_array<std::int32_t> d_labels(n), d_off(off.size());
  d_values.upload(values);
  d_labels.upload(labels);
  d_off.upload(off);
  const auto vv = consr::make_view<consr::device_space>(static_cast<const float*>(d_values.ptr), n);
  const auto lv = consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_labels.ptr), n);
  const auto ov = consr::make_view<consr::device_space>(static_cast<const std::int32_t*>(d_off.ptr), segments + 1);
  const auto out = consr::make_view<consr::device_space>(d_out.ptr, segments);
  size_t bytes = 0;
  require_ok(consr::cuda::segmented_masked_mean(nullptr, bytes, vv, lv, ov, out));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(consr::cuda::segmented_masked_mean(temp.ptr, bytes, vv, lv, ov, out)); },
            static_cast<double>(n) * 8.0 + static_cast<double>(segments) * 8.0);
}

void BM_segmented_sum_fp32(benchmark::State& state, index_t segments, index_t min_len, index_t max_len) {
  BM_segmented_sum<float>(state, segments, min_len, max_len);
}
void BM_segmented_sum_bf16(benchmark::State& state, index_t segments, index_t min_len, index_t max_len) {
  BM_segmented_sum<consr::bfloat16>(state, segments, min_len, max_len);
}

}  // namespace

BENCHMARK_CAPTURE(BM_segmented_sum_fp32, short_segments, 150000, 1, 400)->Name("consr/segmented_sum/fp32/150000_segments_1-400")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_segmented_sum_fp32, long_segments, 64, 65536, 65536)->Name("consr/segmented_sum/fp32/64_segments_65536")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_segmented_sum_bf16, short_segments_bf16, 150000, 1, 400)->Name("consr/segmented_sum/bf16/150000_segments_1-400")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_segmented_masked_mean, short_segments, 150000, 1, 400)->Name("consr/segmented_masked_mean/fp32/150000_segments_1-400")->Apply(gpu_timed);
