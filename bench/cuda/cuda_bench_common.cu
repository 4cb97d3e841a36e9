// The device-to-device copy bandwidth every CUDA benchmark reports its share
// of, and the device description (see cuda_bench.hpp).
#include "cuda_bench.hpp"

#include <cstdint>
#include <string>

#include "cuda_device_check.cuh"  // tests/cuda: the no-device skip the CUDA tests make too

namespace consr_bench_cuda {
namespace {

__global__ void copy_kernel(const uint4* __restrict__ in, uint4* __restrict__ out, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = in[i];
}

double measure_copy_bandwidth() {
  // 1 GiB each way (or a quarter of the free memory): far beyond any L2.
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  size_t bytes = size_t{1} << 30;
  while (bytes > (size_t{1} << 24) && 2 * bytes > free_bytes / 2) bytes /= 2;
  const size_t n = bytes / sizeof(uint4);
  uint4 *a = nullptr, *b = nullptr;
  check_cuda(cudaMalloc(&a, bytes), "cudaMalloc");
  check_cuda(cudaMalloc(&b, bytes), "cudaMalloc");
  check_cuda(cudaMemset(a, 1, bytes), "cudaMemset");
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const unsigned grid = static_cast<unsigned>(sms) * 8u;
  cudaEvent_t start, stop;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  double best = 0.0;
  for (int rep = 0; rep < 12; ++rep) {
    check_cuda(cudaEventRecord(start), "cudaEventRecord");
    copy_kernel<<<grid, 256>>>(a, b, n);
    check_cuda(cudaEventRecord(stop), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "copy");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    if (rep >= 2) best = std::max(best, 2.0 * static_cast<double>(bytes) / (static_cast<double>(ms) * 1e-3));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return best;
}

}  // namespace

double device_copy_bandwidth() {
  static const double bandwidth = measure_copy_bandwidth();
  return bandwidth;
}

std::string device_description() {
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, " +
         std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
}

}  // namespace consr_bench_cuda

// One main for every CUDA benchmark binary: without a device it says so and
// exits 77 (as the CUDA tests), else it adds the device to the context.
int main(int argc, char** argv) {
  if (!consr_cuda_main::cuda_device_present()) return consr_cuda_main::no_device_exit_code;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  consr_bench_cuda::add_device_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
