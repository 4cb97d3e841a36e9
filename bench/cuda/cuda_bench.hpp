// Helpers of the CUDA benchmarks (bench/cuda/bench_<family>.cu) and of their
// LibTorch-CUDA baselines (bench/cuda/torch_<family>.cpp): host C++ only, so
// both nvcc and the host compiler build against it; the part at the end that
// needs consr's CUDA headers is compiled by nvcc only.
//
// Timing: CUDA events around a batch of back-to-back launches on one stream
// (Google Benchmark's manual time = the batch's GPU time), so the launch gap
// before a ~10 µs kernel is amortized; the batch is calibrated to take about
// 2 ms. Reported per benchmark: bytes/s (bytes the algorithm must move at the
// least, stated at each benchmark), `us_per_call`, and `bw_share` = achieved
// bytes/s ÷ the device-to-device copy bandwidth measured in the same binary
// (a grid-stride 16-byte copy kernel, counting bytes read + written).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace consr_bench_cuda {

/// Aborts the benchmark binary with a message unless `e` is cudaSuccess.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

/// The timing every CUDA benchmark and LibTorch baseline registers with (`->Apply(gpu_timed)`):
/// manual time (the batch's GPU time, see run_timed), at least 0.3 s each, in microseconds.
inline void gpu_timed(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->MinTime(0.3)->Unit(benchmark::kMicrosecond);
}

/// The row counts N of the token log-prob benchmarks and of their LibTorch baselines (one list, so
/// that both measure the same sizes), timed as gpu_timed.
inline void logprob_rows(benchmark::internal::Benchmark* b) { gpu_timed(b->Arg(256)->Arg(1024)->Arg(4096)); }

/// Device-to-device copy bandwidth of this GPU in bytes/s (read + written),
/// measured once per process (defined in cuda_bench_common.cu).
double device_copy_bandwidth();

/// Name of device 0 and its memory, for the benchmark context.
std::string device_description();

/// Runs `launch()` (which enqueues one call on `stream`) in calibrated
/// batches and reports time per batch (manual time), bytes/s,
/// us_per_call and bw_share. `bytes_per_call` is the minimal traffic of one call.
template <class Launch>
void run_timed(benchmark::State& state, Launch&& launch, double bytes_per_call, cudaStream_t stream = nullptr) {
  cudaEvent_t start, stop;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  // Warm-up and calibration: time a batch of 4 launches.
  launch();
  check_cuda(cudaStreamSynchronize(stream), "warm-up");
  check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int k = 0; k < 4; ++k) launch();
  check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(stop), "calibration");
  float ms = 0.0f;
  check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  const double per_call = std::max(1e-7, static_cast<double>(ms) * 1e-3 / 4.0);
  const long batch = std::clamp(static_cast<long>(2e-3 / per_call), 1L, 20000L);

  double total_seconds = 0.0;
  long calls = 0;
  for (auto _ : state) {
    check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
    for (long k = 0; k < batch; ++k) launch();
    check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "timed batch");
    check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    const double seconds = static_cast<double>(ms) * 1e-3;
    state.SetIterationTime(seconds);
    total_seconds += seconds;
    calls += batch;
  }
  check_cuda(cudaGetLastError(), "timed launches");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (calls == 0 || total_seconds <= 0.0) return;
  const double bytes_per_second = bytes_per_call * static_cast<double>(calls) / total_seconds;
  state.SetBytesProcessed(static_cast<int64_t>(bytes_per_call * static_cast<double>(calls)));
  state.counters["us_per_call"] = total_seconds / static_cast<double>(calls) * 1e6;
  state.counters["GBps"] = bytes_per_second * 1e-9;
  state.counters["bw_share"] = bytes_per_second / device_copy_bandwidth();
  state.counters["batch"] = static_cast<double>(batch);
}

/// The int32 offsets of `segments` segments of random lengths in [min_len, max_len] (seed 42): the
/// same segments for a consr benchmark and its LibTorch baseline.
inline std::vector<std::int32_t> segment_offsets(std::int64_t segments, std::int64_t min_len, std::int64_t max_len) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::int64_t> len(min_len, max_len);
  std::vector<std::int32_t> off{0};
  for (std::int64_t s = 0; s < segments; ++s) off.push_back(static_cast<std::int32_t>(off.back() + len(rng)));
  return off;
}

/// A cudaMalloc'ed buffer of n T, freed at scope exit (benchmark setup only).
template <class T>
struct device_array {
  T* ptr = nullptr;
  size_t n = 0;
  explicit device_array(size_t count) : n(count) {
    if (n > 0) check_cuda(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  template <class V>
  void upload(const V& host) {
    check_cuda(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
};

/// Adds the device name and copy bandwidth to the benchmark context once.
inline void add_device_context() {
  benchmark::AddCustomContext("cuda_device", device_description());
  benchmark::AddCustomContext("cuda_copy_bandwidth_GBps", std::to_string(device_copy_bandwidth() * 1e-9));
}

}  // namespace consr_bench_cuda

#if defined(__CUDACC__)
#include <consr/cuda/common.cuh>

namespace consr_bench_cuda {

/// Aborts the benchmark binary with consr's message unless a consr::cuda launcher succeeded.
inline void require_ok(consr::status s) {
  if (s != consr::status::success) {
    std::fprintf(stderr, "consr::cuda call failed: %s (%s)\n", consr::to_string(s), consr::cuda::last_error_message());
    std::exit(1);
  }
}

/// 64 random bits for element i of stream `seed` (the splitmix64 finalizer of seed + i·φ·2^64), so
/// benchmark inputs are made on the device without host generation.
__device__ inline unsigned long long bench_hash(unsigned long long seed, long long i) {
  unsigned long long z = seed + static_cast<unsigned long long>(i) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace consr_bench_cuda
#endif  // __CUDACC__
