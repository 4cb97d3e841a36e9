// consr/adapters/torch/cuda_common.cuh — what the CUDA entries of the LibTorch adapter share: the
// current stream, the one error path (check_cuda_status) and the two ways to run a consr::cuda
// launcher — run_launcher, and run_with_temp_storage for CUB's two-phase temporary storage
// (two_phase_launch: can_implement() then run(), with a temp_storage the helper owns for the call).
// Part of consr/adapters/torch_cuda.cuh, which programs include (in one .cu file) instead.
#pragma once

#if !defined(__CUDACC__)
#error "consr/adapters/torch/cuda_common.cuh needs nvcc (CUDA). Host code includes consr/adapters/torch.hpp instead."
#endif

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "../../cuda/common.cuh"
#include "common.hpp"

namespace consr {
namespace libtorch {
namespace detail {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

/// c10::Error for a failed launcher status.
inline void check_cuda_status(status s, const char* fn) {
  if (s == status::success) return;
  if (s == status::invalid_argument) throw_torch_error(consr::cuda::last_error_message());
  const cudaError_t e = cudaGetLastError();
  throw_torch_error(std::string(fn) + ": " + consr::to_string(s) + ": " + cudaGetErrorString(e));
}

/// Runs a launcher that needs no temporary storage: launch() returns its consr::status.
template <class Launch>
void run_launcher(const char* fn, Launch&& launch) {
  check_cuda_status(std::forward<Launch>(launch)(), fn);
}

/// Device temporary storage of one launch: `bytes` (at least 1) on `like`'s device from PyTorch's
/// caching allocator, returned to it (stream-ordered) when this object goes out of scope.
class temp_storage {
 public:
  temp_storage(std::size_t bytes, const at::Tensor& like)
      : buffer_(at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte))),
        bytes_(bytes) {}
  void* data() const noexcept { return buffer_.data_ptr(); }
  /// The size the launcher asked for (the launcher's in/out temp_storage_bytes argument).
  std::size_t& bytes() noexcept { return bytes_; }

 private:
  at::Tensor buffer_;
  std::size_t bytes_;
};

/// A consr::cuda launcher with CUB's two-phase temporary storage, as one operation:
/// launch(d_temp_storage, temp_storage_bytes) returns the launcher's consr::status.
template <class Launch>
struct two_phase_launch {
  const char* fn;
  Launch& launch;

  /// The size query (d_temp_storage == nullptr): validates every argument — c10::Error naming the
  /// one that does not fit — and returns the temporary storage the launch needs. Launches nothing.
  std::size_t can_implement() const {
    std::size_t bytes = 0;
    check_cuda_status(launch(nullptr, bytes), fn);
    return bytes;
  }
  /// The launch, with storage of at least can_implement() bytes.
  void run(temp_storage& temp) const { check_cuda_status(launch(temp.data(), temp.bytes()), fn); }
};

/// can_implement(), then run() with temporary storage this function owns for the call (on `like`'s
/// device; the kernels are stream-ordered, so the caching allocator may reuse it after they run).
template <class Launch>
void run_with_temp_storage(const char* fn, const at::Tensor& like, Launch&& launch) {
  const two_phase_launch<std::remove_reference_t<Launch>> op{fn, launch};
  temp_storage temp(op.can_implement(), like);
  op.run(temp);
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
