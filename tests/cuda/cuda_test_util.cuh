// Helpers shared by the CUDA tests: an owning device buffer, host <-> device
// copies, the two-phase temporary-storage dance, and error_info reads; plus the
// host tests' own helpers (../host/test_util.hpp: values, random data, the
// references the CUDA tests share with their host twins).
#pragma once

#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <consr/cuda/common.cuh>

#include "../host/test_util.hpp"

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

namespace consr_test {

/// Fails the current test with the CUDA error string unless `expr` is cudaSuccess.
#define CONSR_TEST_CUDA(...)                                                        \
  do {                                                                              \
    const cudaError_t consr_test_err_ = (__VA_ARGS__);                              \
    INFO(#__VA_ARGS__ << ": " << cudaGetErrorString(consr_test_err_));              \
    REQUIRE(consr_test_err_ == cudaSuccess);                                        \
  } while (0)

/// Fails the current test unless a consr::cuda launcher returned status::success
/// (printing consr::cuda::last_error_message() otherwise).
#define CONSR_TEST_OK(...)                                                          \
  do {                                                                              \
    const ::consr::status consr_test_st_ = (__VA_ARGS__);                           \
    INFO(#__VA_ARGS__ << " -> " << ::consr::to_string(consr_test_st_) << ": "              \
               << ::consr::cuda::last_error_message());                             \
    REQUIRE(consr_test_st_ == ::consr::status::success);                            \
  } while (0)

/// An owning device allocation of `n` T (n may be 0: no allocation).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n_ > 0) CONSR_TEST_CUDA(cudaMalloc(&p_, n_ * sizeof(T)));
  }
  explicit device_buffer(const std::vector<T>& host) : device_buffer(host.size()) { upload(host); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      if (p_ != nullptr) cudaFree(p_);
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  ~device_buffer() {
    if (p_ != nullptr) cudaFree(p_);
  }

  T* data() const { return p_; }
  std::size_t size() const { return n_; }

  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == n_);
    if (n_ > 0) CONSR_TEST_CUDA(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_ > 0) CONSR_TEST_CUDA(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  /// Sets every byte to `byte` (e.g. 0xFF, so untouched outputs are recognisable).
  void fill_bytes(int byte) {
    if (n_ > 0) CONSR_TEST_CUDA(cudaMemset(p_, byte, n_ * sizeof(T)));
  }
  /// A contiguous rank-1 device view of the whole buffer.
  consr::device_view<T, 1> view() const { return consr::make_view<consr::device_space>(p_, static_cast<consr::index_t>(n_)); }
  consr::device_view<const T, 1> cview() const {
    return consr::make_view<consr::device_space>(static_cast<const T*>(p_), static_cast<consr::index_t>(n_));
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// A zero-initialised consr::cuda::error_info on the device.
class device_error_info {
 public:
  device_error_info() { CONSR_TEST_CUDA(cudaMalloc(&p_, sizeof(consr::cuda::error_info))); reset(); }
  ~device_error_info() { cudaFree(p_); }
  device_error_info(const device_error_info&) = delete;
  device_error_info& operator=(const device_error_info&) = delete;
  consr::cuda::error_info* get() const { return p_; }
  void reset() { CONSR_TEST_CUDA(cudaMemset(p_, 0, sizeof(consr::cuda::error_info))); }
  /// Waits for the device and reads the report.
  consr::cuda::error_info read() const {
    CONSR_TEST_CUDA(cudaDeviceSynchronize());
    consr::cuda::error_info h{};
    CONSR_TEST_CUDA(cudaMemcpy(&h, p_, sizeof h, cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  consr::cuda::error_info* p_ = nullptr;
};

/// Runs a launcher that follows CUB's two-phase convention: `call(d_temp, bytes)`
/// once with d_temp == nullptr for the size, then with a buffer of that size.
template <class Call>
consr::status run_two_phase(Call&& call) {
  std::size_t bytes = 0;
  const consr::status s = call(static_cast<void*>(nullptr), bytes);
  if (s != consr::status::success) return s;
  REQUIRE(bytes > 0);
  device_buffer<unsigned char> temp(bytes);
  const consr::status r = call(static_cast<void*>(temp.data()), bytes);
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  return r;
}

/// Copies one device object of type T to the host (after a device sync).
template <class T>
T read_device_object(const T* p) {
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  T h;
  CONSR_TEST_CUDA(cudaMemcpy(&h, p, sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace consr_test
