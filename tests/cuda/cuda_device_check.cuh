// The start of every CUDA test and benchmark main (tests/cuda/cuda_test_main.cu,
// bench/cuda/cuda_bench_common.cu): without a usable CUDA device the binary prints
// "skipped: no CUDA device (<why>)" and exits with 77, which CTest reports as *skipped*
// (SKIP_RETURN_CODE 77 in tests/cuda/CMakeLists.txt), never as passed.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>

namespace consr_cuda_main {

/// The exit status of a CUDA test or benchmark run where there is no CUDA device.
constexpr int no_device_exit_code = 77;

/// Whether a CUDA device is usable. When not, prints "skipped: no CUDA device (<why>)" and the
/// caller returns no_device_exit_code from main.
inline bool cuda_device_present() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("skipped: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return false;
  }
  return true;
}

}  // namespace consr_cuda_main
