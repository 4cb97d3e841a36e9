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
//  - Host-side argument checks reuse the host library's checks; their message
//    (naming the argument) is kept for last_error_message(). Offsets and
//    labels live on the device: kernels clamp every index they derive from
//    them, and the optional error_info reports what the data got wrong
//    (detail::validate_offsets for offsets).
#pragma once

#if !defined(__CUDACC__)
#error "consr/cuda/*.cuh headers need nvcc (CUDA). Host code includes consr/*.hpp instead."
#endif

#include <cuda_runtime.h>
#include <cuda/std/iterator>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>

#include "../config.hpp"
#include "../error.hpp"
#include "../numeric.hpp"
#include "../reductions.hpp"
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

/// Compile-time check that a launcher's view argument lives in device memory;
/// `host_fn` names the host twin to call instead (e.g. "token_logprobs").
#define CONSR_CUDA_REQUIRE_DEVICE_VIEW(S, fn, arg, host_fn)                                            \
  static_assert(std::is_same_v<S, ::consr::device_space>,                                             \
                fn ": argument '" arg "' must be a device view (consr::device_view); use consr::" host_fn \
                   " for host memory")

/// True when every one of the spaces S is device_space: a launcher runs only then (its
/// CONSR_CUDA_REQUIRE_DEVICE_VIEW asserts name the view that is not on the device).
template <class... S>
inline constexpr bool all_device_spaces_v = (std::is_same_v<S, ::consr::device_space> && ...);

/// Grid size for `n` work items at `block` threads each, capped for grid-stride loops.
inline unsigned grid_for(long long n, unsigned block, unsigned max_blocks = 65535u * 4u) noexcept {
  const long long g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 1 ? 1 : (g > max_blocks ? max_blocks : g));
}

// ------------------------------------------------------------------------------------------------
// Argument errors found on the host
// ------------------------------------------------------------------------------------------------

namespace detail {
inline std::string& last_error_message_storage() {
  thread_local std::string message;
  return message;
}
}  // namespace detail

/// The message of the most recent host-side argument error that a consr::cuda
/// launcher of the calling thread answered with status::invalid_argument, e.g.
/// "consr::cuda::segmented_sum: argument 'out': extent 0 is 3 but must be 4
/// (one value per segment)". It is not cleared by later successful calls (like
/// errno), so read it right after a failed call. Empty when none happened yet.
inline const char* last_error_message() noexcept { return detail::last_error_message_storage().c_str(); }

namespace detail {

/// Runs a launcher body that validates its arguments with the host library's
/// throwing checks (consr::error, naming the argument) and then launches.
/// A consr::error becomes status::invalid_argument (message kept for
/// last_error_message()); launchers therefore never throw, and a failed check
/// always comes before the first launch, so nothing is launched then.
template <class Body>
status guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const ::consr::error& e) {
    try {
      last_error_message_storage() = e.what();
    } catch (...) {
    }
    return status::invalid_argument;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc while formatting a message
    try {
      last_error_message_storage() = e.what();
    } catch (...) {
    }
    return status::device_error;
  } catch (...) {
    return status::device_error;
  }
}

// The overlap and alias checks of the host library (consr/view.hpp) serve device views alike.
using ::consr::detail::check_alias_exact_or_disjoint;
using ::consr::detail::check_disjoint;
using ::consr::detail::check_no_broadcast;
using ::consr::detail::views_identical;
using ::consr::detail::views_overlap;

/// An optional per-item view: empty (not used) or exactly `count` elements.
template <class T, class S>
void check_optional_size(const strided_view<T, 1, S>& v, index_t count, const char* fn, const char* arg,
                         const char* what) {
  ::consr::detail::check_view(v, fn, arg);
  CONSR_CHECK_ARG(v.size() == 0 || v.size() == count, fn, arg, "has ", v.size(), " elements but must have 0 (",
                  "not used) or ", count, " (", what, ")");
}

/// An optional per-item output: empty (not written) or exactly `count` distinct elements (the
/// host library's check, for any memory space).
using ::consr::detail::check_optional_output;

// ------------------------------------------------------------------------------------------------
// Temporary storage (CUB's two-phase convention)
// ------------------------------------------------------------------------------------------------

/// Alignment of every sub-allocation carved out of a caller's temporary storage.
inline constexpr std::size_t temp_alignment = 256;

inline constexpr std::size_t align_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }

/// Lays N sub-allocations of `sizes[i]` bytes out in one temporary-storage
/// block. Query phase (d_temp_storage == nullptr): writes the total (at least
/// 1 byte, as CUB) to temp_storage_bytes and leaves the pointers null. Run
/// phase: sets `parts[i]`, or throws consr::error naming 'temp_storage_bytes'
/// when the block is smaller than the total (caught by guarded()).
template <std::size_t N>
void partition_temp_storage(void* d_temp_storage, std::size_t& temp_storage_bytes, const std::size_t (&sizes)[N],
                            void* (&parts)[N], const char* fn) {
  std::size_t offsets[N];
  std::size_t total = 0;
  for (std::size_t i = 0; i < N; ++i) {
    offsets[i] = total;
    total += align_up(sizes[i], temp_alignment);
  }
  if (total == 0) total = 1;
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = total;
    for (std::size_t i = 0; i < N; ++i) parts[i] = nullptr;
    return;
  }
  CONSR_CHECK_ARG(temp_storage_bytes >= total, fn, "temp_storage_bytes", "is ", temp_storage_bytes, " but ", total,
                  " bytes are needed; call first with d_temp_storage == nullptr to get the size");
  for (std::size_t i = 0; i < N; ++i) parts[i] = static_cast<char*>(d_temp_storage) + offsets[i];
}

// ------------------------------------------------------------------------------------------------
// Fancy iterators for CUB (no Thrust dependency): item i is f(base + i)
// ------------------------------------------------------------------------------------------------

/// A random-access iterator whose item i is `at(base + i)` converted to
/// Reference (CUB needs only operator[], + and *).
template <class At, class Value, class Reference>
struct index_iterator {
  using value_type = Value;
  using reference = Reference;
  using pointer = void;
  using difference_type = std::ptrdiff_t;
  using iterator_category = ::cuda::std::random_access_iterator_tag;

  At at;
  index_t base = 0;

  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  __host__ __device__ index_iterator operator+(I d) const {
    return {at, base + static_cast<index_t>(d)};
  }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  __host__ __device__ index_iterator& operator+=(I d) {
    base += static_cast<index_t>(d);
    return *this;
  }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  __device__ Reference operator[](I i) const {
    return at(base + static_cast<index_t>(i));
  }
  __device__ Reference operator*() const { return at(base); }
};

/// A random-access input iterator whose item i is `f(i)`: a strided read with
/// a type conversion, a masked pair, ...
template <class F, class Value>
using index_input_iterator = index_iterator<F, Value, Value>;

/// Assigning to item i of an index_output_iterator calls `g(i, value)`.
template <class G>
struct index_output_proxy {
  G g;
  index_t i;
  template <class A>
  __device__ const index_output_proxy& operator=(const A& value) const {
    g(i, value);
    return *this;
  }
};

/// Item i of an index_output_iterator: the proxy that passes an assignment to g.
template <class G>
struct index_output_at {
  G g;
  __device__ index_output_proxy<G> operator()(index_t i) const { return {g, i}; }
};

/// A random-access output iterator: `it[i] = v` runs `g(base + i, v)` (writes
/// several outputs from one reduction result, converts, counts, ...).
template <class G>
using index_output_iterator = index_iterator<index_output_at<G>, void, index_output_proxy<G>>;

// ------------------------------------------------------------------------------------------------
// Packed segments on the device (spec §2)
// ------------------------------------------------------------------------------------------------

/// The S + 1 offsets of a packed array of `packed_size` items, as kernels read
/// them. Offsets live on the device, so the host can check only their count;
/// every bound a kernel uses goes through begin()/end(), which clamp to
/// [0, packed_size] and make a decreasing pair an empty segment: bad offsets
/// give meaningless results but never an out-of-bounds access. Their values
/// are checked by validate_offsets() (an error_info report), when asked.
template <class Offset>
struct packed_segments {
  const Offset* offsets = nullptr;
  index_t stride = 1;
  index_t num_segments = 0;
  index_t packed_size = 0;

  __device__ index_t raw(index_t k) const { return static_cast<index_t>(offsets[k * stride]); }
  __device__ index_t clamp(index_t v) const { return v < 0 ? 0 : (v > packed_size ? packed_size : v); }
  /// First item of segment s (clamped).
  __device__ index_t begin(index_t s) const { return clamp(raw(s)); }
  /// One past the last item of segment s (clamped, and never below begin(s)).
  __device__ index_t end(index_t s) const {
    const index_t b = begin(s), e = clamp(raw(s + 1));
    return e < b ? b : e;
  }
};

/// Checks a device offsets view on the host (a valid view with at least one
/// element) and returns it as packed_segments over `packed_size` items.
template <class Offset>
packed_segments<std::remove_cv_t<Offset>> make_packed_segments(const device_view<Offset, 1>& offsets,
                                                                index_t packed_size, const char* fn,
                                                                const char* arg) {
  const index_t num_segments = ::consr::detail::check_offsets_count(offsets, fn, arg);
  packed_segments<std::remove_cv_t<Offset>> seg;
  seg.offsets = offsets.data();
  seg.stride = offsets.stride(0);
  seg.num_segments = num_segments;
  seg.packed_size = packed_size;
  return seg;
}

template <class Offset>
__global__ void validate_offsets_kernel(packed_segments<Offset> seg, error_info* info) {
  const index_t S = seg.num_segments;
  const index_t n = seg.packed_size;
  if (S == 0) {
    if (blockIdx.x == 0 && threadIdx.x == 0 && (seg.raw(0) != 0 || n != 0))
      report_error(info, status::invalid_argument, 0);
    return;
  }
  for (index_t s = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < S;
       s += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = seg.raw(s), e = seg.raw(s + 1);
    const bool bad = b < 0 || e > n || b > e || (s == 0 && b != 0) || (s == S - 1 && e != n);
    if (bad) report_error(info, status::invalid_argument, s);
  }
}

/// Launches the offsets check when `info` is not null: segment s is reported
/// (status::invalid_argument, index s) unless 0 <= offsets[s] <= offsets[s+1]
/// <= packed_size, offsets[0] == 0 (s = 0) and offsets[S] == packed_size
/// (s = S − 1); with S = 0, index 0 unless offsets[0] == 0 == packed_size.
/// The error index is the smallest offending segment.
template <class Offset>
status validate_offsets(const packed_segments<Offset>& seg, error_info* info, cudaStream_t stream) {
  if (info == nullptr) return status::success;
  constexpr unsigned block = 256;
  validate_offsets_kernel<Offset><<<grid_for(seg.num_segments, block), block, 0, stream>>>(seg, info);
  return to_status(cudaGetLastError());
}

/// Number of threads per block of consr's own element-wise kernels.
inline constexpr unsigned elementwise_block = 256;

/// Grid size of a grid-stride loop over `n` items.
inline unsigned elementwise_grid(index_t n) noexcept { return grid_for(n, elementwise_block); }

}  // namespace detail

}  // namespace cuda
}  // namespace consr
