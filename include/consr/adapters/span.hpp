// consr/adapters/span.hpp — raw memory as consr views: std::vector, std::array,
// C arrays, and std::span (C++20) are rank-1 tensors; pointers go through
// consr::make_view / make_strided_view (view.hpp).
#pragma once

#include <array>
#include <vector>

#include "../traits.hpp"

#if defined(__cpp_lib_span) || (__cplusplus >= 202002L && __has_include(<span>))
#include <span>
#define CONSR_HAS_STD_SPAN 1
#else
#define CONSR_HAS_STD_SPAN 0
#endif

namespace consr {

template <class T, class A>
struct tensor_traits<std::vector<T, A>> {
  using value_type = T;
  using space = host_space;
  static constexpr int rank = 1;
  static T* data(std::vector<T, A>& v) { return v.data(); }
  static index_t extent(const std::vector<T, A>& v, int) { return static_cast<index_t>(v.size()); }
  static index_t stride(const std::vector<T, A>&, int) { return 1; }
};

template <class T, std::size_t N>
struct tensor_traits<std::array<T, N>> {
  using value_type = T;
  using space = host_space;
  static constexpr int rank = 1;
  static T* data(std::array<T, N>& v) { return v.data(); }
  static index_t extent(const std::array<T, N>&, int) { return static_cast<index_t>(N); }
  static index_t stride(const std::array<T, N>&, int) { return 1; }
};

#if CONSR_HAS_STD_SPAN
template <class T, std::size_t E>
struct tensor_traits<std::span<T, E>> {
  using value_type = T;
  using space = host_space;
  static constexpr int rank = 1;
  static T* data(const std::span<T, E>& v) { return v.data(); }
  static index_t extent(const std::span<T, E>& v, int) { return static_cast<index_t>(v.size()); }
  static index_t stride(const std::span<T, E>&, int) { return 1; }
};
#endif

/// A rank-1 host view of `n` elements at `data` (the raw-pointer adapter).
template <class T>
constexpr host_view<T, 1> make_span_view(T* data, index_t n) noexcept {
  return make_view(data, n);
}

}  // namespace consr
