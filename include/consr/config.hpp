// consr/config.hpp — compiler and platform configuration shared by every header.
//
// Plain C++17: no CUDA header is included here. Under nvcc (__CUDACC__) the
// qualifiers expand to __host__ __device__ so the same inline functions (Philox,
// bf16 conversion, the exp/log kernels of random.hpp) serve host and device.
#pragma once

#include <cstddef>
#include <cstdint>

#define CONSR_VERSION_MAJOR 0
#define CONSR_VERSION_MINOR 1
#define CONSR_VERSION_PATCH 0

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CONSR_HOST_DEVICE __host__ __device__
#define CONSR_DEVICE __device__
#define CONSR_HOST __host__
#else
#define CONSR_HOST_DEVICE
#define CONSR_DEVICE
#define CONSR_HOST
#endif

#if defined(__CUDA_ARCH__)
#define CONSR_DEVICE_COMPILE 1
#else
#define CONSR_DEVICE_COMPILE 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CONSR_FORCEINLINE inline __attribute__((always_inline))
#define CONSR_RESTRICT __restrict__
#define CONSR_LIKELY(x) __builtin_expect(!!(x), 1)
#define CONSR_UNLIKELY(x) __builtin_expect(!!(x), 0)
#elif defined(_MSC_VER)
#define CONSR_FORCEINLINE __forceinline
#define CONSR_RESTRICT __restrict
#define CONSR_LIKELY(x) (x)
#define CONSR_UNLIKELY(x) (x)
#else
#define CONSR_FORCEINLINE inline
#define CONSR_RESTRICT
#define CONSR_LIKELY(x) (x)
#define CONSR_UNLIKELY(x) (x)
#endif

// OpenMP is optional. With it, row-parallel algorithms run their rows in
// parallel; results never depend on the thread count (each output element is
// computed by exactly one thread, in a fixed order).
#if defined(_OPENMP)
#include <omp.h>
#define CONSR_HAS_OPENMP 1
#define CONSR_PRAGMA(x) _Pragma(#x)
#define CONSR_OMP(x) CONSR_PRAGMA(omp x)
#else
#define CONSR_HAS_OPENMP 0
#define CONSR_PRAGMA(x) _Pragma(#x)
#define CONSR_OMP(x)
#endif

// `#pragma omp simd` is honoured with -fopenmp or -fopenmp-simd (consr::consr
// adds the latter when the compiler has it) and ignored otherwise.
#define CONSR_SIMD CONSR_PRAGMA(omp simd)
#define CONSR_SIMD_REDUCTION(op, var) CONSR_PRAGMA(omp simd reduction(op : var))

namespace consr {

/// Index and extent type of every view: signed 64-bit, so that N × V products
/// of real vocabularies (4096 × 152064) never overflow.
using index_t = std::int64_t;

/// The label value that marks a token as not scored (spec §2).
inline constexpr std::int64_t default_ignore_index = -100;

}  // namespace consr
