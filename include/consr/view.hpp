// consr/view.hpp — the one data structure every algorithm takes: a small,
// trivially copyable strided view (pointer, extents, strides in elements) whose
// memory space is part of its type, so a host algorithm cannot be handed device
// memory and vice versa (cf. mdspan's accessor, CCCL's memory-space tags).
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "config.hpp"
#include "error.hpp"

namespace consr {

/// Memory-space tags. A view's space says where its pointer may be read.
struct host_space {
  static constexpr const char* name = "host";
};
struct device_space {
  static constexpr const char* name = "device";
};

/// A non-owning, strided, rank-`Rank` view of `T` living in `Space`.
/// Strides are in elements and may be any value (including 0 for broadcast
/// and negative); algorithms that need contiguity check it at their boundary.
template <class T, int Rank, class Space = host_space>
class strided_view {
  static_assert(Rank >= 0 && Rank <= 8, "consr::strided_view: rank must be in [0, 8]");
  static_assert(!std::is_reference_v<T>, "consr::strided_view: element type must not be a reference");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using space = Space;
  static constexpr int rank = Rank;

  constexpr strided_view() = default;

  CONSR_HOST_DEVICE constexpr strided_view(T* data, const index_t* extents, const index_t* strides) noexcept
      : data_(data) {
    for (int d = 0; d < Rank; ++d) {
      ext_[d] = extents[d];
      str_[d] = strides[d];
    }
  }

  /// A view of const T from a view of T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_const_v<U>>>
  CONSR_HOST_DEVICE constexpr strided_view(const strided_view<U, Rank, Space>& other) noexcept
      : data_(other.data()) {
    for (int d = 0; d < Rank; ++d) {
      ext_[d] = other.extent(d);
      str_[d] = other.stride(d);
    }
  }

  CONSR_HOST_DEVICE constexpr T* data() const noexcept { return data_; }
  CONSR_HOST_DEVICE constexpr index_t extent(int d) const noexcept { return ext_[d]; }
  CONSR_HOST_DEVICE constexpr index_t stride(int d) const noexcept { return str_[d]; }

  /// Number of elements (product of extents; 1 for rank 0).
  CONSR_HOST_DEVICE constexpr index_t size() const noexcept {
    index_t n = 1;
    for (int d = 0; d < Rank; ++d) n *= ext_[d];
    return n;
  }
  CONSR_HOST_DEVICE constexpr bool empty() const noexcept { return size() == 0; }

  /// True when the elements are laid out row-major without gaps
  /// (extents of 1 may carry any stride, as in NumPy/PyTorch).
  CONSR_HOST_DEVICE constexpr bool is_contiguous() const noexcept {
    index_t expected = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (ext_[d] != 1 && str_[d] != expected) return false;
      expected *= ext_[d];
    }
    return true;
  }

  /// True when the last dimension has unit stride (rows are contiguous).
  CONSR_HOST_DEVICE constexpr bool has_unit_inner_stride() const noexcept {
    if constexpr (Rank == 0) {
      return true;
    } else {
      return ext_[Rank - 1] <= 1 || str_[Rank - 1] == 1;
    }
  }

  /// Element access by multi-index (no bounds check).
  template <class... I>
  CONSR_HOST_DEVICE constexpr T& operator()(I... idx) const noexcept {
    static_assert(sizeof...(I) == Rank, "consr::strided_view: wrong number of indices");
    const index_t is[Rank > 0 ? Rank : 1] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (int d = 0; d < Rank; ++d) off += is[d] * str_[d];
    return data_[off];
  }

  /// Element access for rank-1 views.
  CONSR_HOST_DEVICE constexpr T& operator[](index_t i) const noexcept {
    static_assert(Rank == 1, "consr::strided_view: operator[] is for rank-1 views");
    return data_[i * str_[0]];
  }

  /// Row `i` of a rank-2 view as a rank-1 view.
  CONSR_HOST_DEVICE constexpr strided_view<T, 1, Space> row(index_t i) const noexcept {
    static_assert(Rank == 2, "consr::strided_view: row() is for rank-2 views");
    const index_t e[1] = {ext_[1]};
    const index_t s[1] = {str_[1]};
    return strided_view<T, 1, Space>(data_ + i * str_[0], e, s);
  }

 private:
  T* data_ = nullptr;
  index_t ext_[Rank > 0 ? Rank : 1] = {};
  index_t str_[Rank > 0 ? Rank : 1] = {};
};

template <class T, int Rank>
using host_view = strided_view<T, Rank, host_space>;
template <class T, int Rank>
using device_view = strided_view<T, Rank, device_space>;

/// True for consr::strided_view of any parameters.
template <class V>
struct is_strided_view : std::false_type {};
template <class T, int R, class S>
struct is_strided_view<strided_view<T, R, S>> : std::true_type {};
template <class V>
inline constexpr bool is_strided_view_v = is_strided_view<std::remove_cv_t<std::remove_reference_t<V>>>::value;

/// A row-major contiguous view of `data` with the given extents.
template <class Space = host_space, class T, class... E>
CONSR_HOST_DEVICE constexpr strided_view<T, static_cast<int>(sizeof...(E)), Space> make_view(T* data,
                                                                                               E... extents) noexcept {
  constexpr int R = static_cast<int>(sizeof...(E));
  const index_t ext[R > 0 ? R : 1] = {static_cast<index_t>(extents)...};
  index_t str[R > 0 ? R : 1] = {};
  index_t s = 1;
  for (int d = R - 1; d >= 0; --d) {
    str[d] = s;
    s *= ext[d];
  }
  return strided_view<T, R, Space>(data, ext, str);
}

/// A view with explicit extents and strides (in elements).
template <class Space = host_space, class T, std::size_t R>
constexpr strided_view<T, static_cast<int>(R), Space> make_strided_view(T* data, const std::array<index_t, R>& extents,
                                                                        const std::array<index_t, R>& strides) noexcept {
  return strided_view<T, static_cast<int>(R), Space>(data, extents.data(), strides.data());
}

namespace detail {

/// `std::type_identity_t` (C++20): keeps a parameter out of template argument
/// deduction, so that implicit view conversions (T -> const T) apply to it.
template <class T>
struct type_identity {
  using type = T;
};
template <class T>
using type_identity_t = typename type_identity<T>::type;

/// Checks that `v` is a well-formed view: extents non-negative, and a null
/// pointer only when it holds no element. `fn`/`arg` name the caller.
template <class T, int R, class S>
void check_view(const strided_view<T, R, S>& v, const char* fn, const char* arg) {
  for (int d = 0; d < R; ++d)
    CONSR_CHECK_ARG(v.extent(d) >= 0, fn, arg, "extent ", d, " is negative (", v.extent(d), ")");
  CONSR_CHECK_ARG(v.data() != nullptr || v.size() == 0, fn, arg, "null data pointer for ", v.size(), " elements");
}

/// Checks `v.extent(d) == expected`, naming what the expected size means.
template <class T, int R, class S>
void check_extent(const strided_view<T, R, S>& v, int d, index_t expected, const char* fn, const char* arg,
                  const char* what) {
  CONSR_CHECK_ARG(v.extent(d) == expected, fn, arg, "extent ", d, " is ", v.extent(d), " but must be ", expected,
                  " (", what, ")");
}

/// check_view, then check_extent on dimension `d`: an argument whose size another one fixes.
template <class T, int R, class S>
void check_view_extent(const strided_view<T, R, S>& v, int d, index_t expected, const char* fn, const char* arg,
                       const char* what) {
  check_view(v, fn, arg);
  check_extent(v, d, expected, fn, arg, what);
}

/// Checks that rows (the last dimension) are contiguous.
template <class T, int R, class S>
void check_unit_inner_stride(const strided_view<T, R, S>& v, const char* fn, const char* arg) {
  CONSR_CHECK_ARG(v.has_unit_inner_stride(), fn, arg, "rows must be contiguous (stride of the last dimension is ",
                  v.stride(R - 1), ", must be 1); pass a row-major tensor");
}

/// Checks that the whole view is row-major contiguous.
template <class T, int R, class S>
void check_contiguous(const strided_view<T, R, S>& v, const char* fn, const char* arg) {
  CONSR_CHECK_ARG(v.is_contiguous(), fn, arg, "must be row-major contiguous");
}

/// Address range [lo, hi) of the bytes a view's elements occupy (lo == hi == 0
/// for an empty view), for overlap checks. Nothing is dereferenced, so device
/// views are checked on the host alike.
template <class T, int R, class S>
void view_byte_span(const strided_view<T, R, S>& v, std::uintptr_t& lo, std::uintptr_t& hi) noexcept {
  if (v.size() == 0) {
    lo = hi = 0;
    return;
  }
  std::intptr_t min_off = 0, max_off = 0;  // element offsets of the lowest and highest element
  for (int d = 0; d < R; ++d) {
    const std::intptr_t reach = static_cast<std::intptr_t>((v.extent(d) - 1) * v.stride(d));
    (reach < 0 ? min_off : max_off) += reach;
  }
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(v.data());
  constexpr std::intptr_t size = static_cast<std::intptr_t>(sizeof(T));
  lo = base + static_cast<std::uintptr_t>(min_off * size);
  hi = base + static_cast<std::uintptr_t>((max_off + 1) * size);
}

/// True when the memory of `a` and `b` intersects (an empty view intersects nothing).
template <class A, int RA, class B, int RB, class S>
bool views_overlap(const strided_view<A, RA, S>& a, const strided_view<B, RB, S>& b) noexcept {
  std::uintptr_t alo, ahi, blo, bhi;
  view_byte_span(a, alo, ahi);
  view_byte_span(b, blo, bhi);
  return alo < bhi && blo < ahi;
}

/// True when `a` and `b` address exactly the same elements in the same order.
template <class A, class B, int R, class S>
bool views_identical(const strided_view<A, R, S>& a, const strided_view<B, R, S>& b) noexcept {
  if (static_cast<const void*>(a.data()) != static_cast<const void*>(b.data())) return false;
  for (int d = 0; d < R; ++d)
    if (a.extent(d) != b.extent(d) || (a.extent(d) > 1 && a.stride(d) != b.stride(d))) return false;
  return true;
}

/// An output must be `in` exactly (in place) or disjoint from it; anything else is a partial overlap.
template <class A, class B, int R, class S>
void check_alias_exact_or_disjoint(const strided_view<A, R, S>& in, const strided_view<B, R, S>& out, const char* fn,
                                   const char* in_name, const char* out_name = "out") {
  CONSR_CHECK_ARG(views_identical(in, out) || !views_overlap(in, out), fn, out_name, "partially overlaps '", in_name,
                  "'; pass the same view for in-place operation or disjoint memory");
}

/// An output must not overlap an input at all.
template <class A, int RA, class B, int RB, class S>
void check_disjoint(const strided_view<A, RA, S>& in, const strided_view<B, RB, S>& out, const char* fn,
                    const char* in_name, const char* out_name) {
  CONSR_CHECK_ARG(!views_overlap(in, out), fn, out_name, "overlaps '", in_name, "'; pass disjoint memory");
}

/// An output must hold one element per logical position: no zero (broadcast)
/// stride on a dimension of extent > 1, which would also race between threads.
/// A zero-size output has no elements to alias, whatever its strides (numpy and
/// PyTorch give some empty arrays stride 0), and is accepted.
template <class T, int R, class S>
void check_no_broadcast(const strided_view<T, R, S>& out, const char* fn, const char* arg = "out") {
  if (out.size() == 0) return;
  for (int d = 0; d < R; ++d)
    CONSR_CHECK_ARG(out.extent(d) <= 1 || out.stride(d) != 0, fn, arg, "dimension ", d,
                    " has stride 0 (a broadcast view); an output needs distinct elements");
}

template <class V>
inline constexpr bool is_host_view_v =
    is_strided_view_v<V> && std::is_same_v<typename std::remove_reference_t<V>::space, host_space>;

/// True when every one of the memory spaces is host_space.
template <class Space, class... Spaces>
inline constexpr bool all_host_v = (std::is_same_v<Space, host_space> && ... && std::is_same_v<Spaces, host_space>);

}  // namespace detail

/// Host algorithms reject device views at compile time with this message (the memory spaces of all
/// of an overload's view arguments at once).
#define CONSR_REQUIRE_HOST_SPACES(...)                      \
  static_assert(::consr::detail::all_host_v<__VA_ARGS__>, \
                "consr: a host algorithm was given a device view; use the consr::cuda version")

}  // namespace consr
