// consr/cuda/common.cuh — what every consr CUDA header shares: the nvcc guard,
// status conversion, the error-flag convention and launch helpers.
//
// Conventions of the CUDA backend (namespace consr::cuda):
//  - Launchers take device views (consr::device_view), a cudaStream_t, and
//    return consr::status; they never throw and never synchronize the device
//    unless their documentation says so. Shapes are checked on the host before
//    any launch (status::invalid_argument, nothing launched).
//  - Errors only the data can reveal (a label outside [0, V)) are reported
//    through a caller-provided device `error_info` that the kernel fills with
//    atomics (the first offending row); the caller reads it after the stream
//    work completes. Kernels never read or write out of bounds on bad data.
//  - Temporary storage follows CUB's two-phase convention: a call with
//    `d_temp_storage == nullptr` only writes the bytes it needs.
//  - Every algorithm has a host twin in include/consr/*.hpp that is its test reference.
#pragma once

#if !defined(__CUDACC__)
#error "consr/cuda/*.cuh headers need nvcc (CUDA). Host code includes consr/*.hpp instead."
#endif

#include <cuda_runtime.h>

#include <cstdint>

#include "../config.hpp"
#include "../error.hpp"
#include "../view.hpp"

namespace consr {
namespace cuda {

/// consr::status of a CUDA runtime error code.
inline status to_status(cudaError_t e) noexcept { return e == cudaSuccess ? status::success : status::device_error; }

/// Device-side error report. Zero-initialise it before the launch (e.g. with
/// cudaMemsetAsync); afterwards `code` holds the first status any thread
/// reported (0 = none) and error_index() the smallest offending index (row,
/// segment or pair) — the caller can read the offending value from its own
/// input at that index.
struct error_info {
  int code;                          ///< a consr::status value; 0 when nothing went wrong
  int reserved;
  unsigned long long encoded_index;  ///< ULLONG_MAX - index of the smallest offender; 0 = unset
};

/// Records an error from device code (race-free: atomics only).
__device__ inline void report_error(error_info* info, status code, long long index) {
  if (info == nullptr) return;
  atomicCAS(&info->code, 0, static_cast<int>(code));
  // atomicMax of the complement keeps the smallest index and lets 0 mean "unset".
  atomicMax(&info->encoded_index, ~static_cast<unsigned long long>(index));
}

/// The smallest offending index recorded in `info`, or -1 when none.
inline long long error_index(const error_info& info) noexcept {
  return info.encoded_index == 0ull ? -1 : static_cast<long long>(~info.encoded_index);
}

/// Returns from the enclosing launcher with the status of a failed CUDA call.
#define CONSR_CUDA_RETURN_IF_ERROR(expr)                  \
  do {                                                    \
    const cudaError_t consr_cuda_err_ = (expr);           \
    if (consr_cuda_err_ != cudaSuccess) return ::consr::cuda::to_status(consr_cuda_err_); \
  } while (0)

/// Grid size for `n` work items at `block` threads each, capped for grid-stride loops.
inline unsigned grid_for(long long n, unsigned block, unsigned max_blocks = 65535u * 4u) noexcept {
  const long long g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 1 ? 1 : (g > max_blocks ? max_blocks : g));
}

}  // namespace cuda
}  // namespace consr
