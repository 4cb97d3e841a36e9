// Catch2 main for the CUDA tests. Without a usable CUDA device the binary prints
// "skipped: no CUDA device" and exits with 77, which CTest reports as *skipped*
// (SKIP_RETURN_CODE), never as passed (cuda_device_check.cuh, shared with the benchmarks).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdio>

#include "cuda_device_check.cuh"

int main(int argc, char** argv) {
  if (!consr_cuda_main::cuda_device_present()) return consr_cuda_main::no_device_exit_code;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("CUDA device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  return Catch::Session().run(argc, argv);
}
