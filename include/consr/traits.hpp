// consr/traits.hpp — how any tensor type becomes a consr view.
//
// A backend opts in by specialising `consr::tensor_traits<Tensor>` (one
// specialisation per type, as Eigen and xtensor do); `consr::as_view<Rank>()`
// then turns any such object into a strided_view, checking the rank at the
// boundary and naming the argument when it does not fit. The adapters in
// consr/adapters/ are such specialisations; writing one for another tensor
// library takes a dozen lines.
#pragma once

#include <type_traits>

#include "error.hpp"
#include "view.hpp"

namespace consr {

/// Rank value meaning "known only at run time" (e.g. xt::xarray).
inline constexpr int dynamic_rank = -1;

/// Specialise for a tensor type `Tensor` with:
///   using value_type = ...;       // element type, const-qualified for read-only access
///   using space = host_space;     // or device_space
///   static constexpr int rank;    // or consr::dynamic_rank
///   static int runtime_rank(const Tensor&);            // only for dynamic_rank
///   static value_type* data(Tensor&);
///   static index_t extent(const Tensor&, int d);
///   static index_t stride(const Tensor&, int d);        // in elements
/// `Tensor` is matched without references; const objects use `const Tensor`
/// when a separate specialisation exists, else the non-const one with a
/// const-qualified value_type.
template <class Tensor, class Enable = void>
struct tensor_traits;  // not defined: a type without traits fails in as_view with a readable message

namespace detail {
template <class T, class = void>
struct has_tensor_traits : std::false_type {};
template <class T>
struct has_tensor_traits<T, std::void_t<typename tensor_traits<T>::value_type>> : std::true_type {};

template <class Tensor>
using traits_of = tensor_traits<std::remove_cv_t<std::remove_reference_t<Tensor>>>;

// Element type as seen through a possibly-const object.
template <class Tensor>
using view_element_t =
    std::conditional_t<std::is_const_v<std::remove_reference_t<Tensor>>,
                       const typename traits_of<Tensor>::value_type, typename traits_of<Tensor>::value_type>;
}  // namespace detail

/// True when `Tensor` has a tensor_traits specialisation.
template <class Tensor>
inline constexpr bool has_tensor_traits_v =
    detail::has_tensor_traits<std::remove_cv_t<std::remove_reference_t<Tensor>>>::value;

/// Views are their own backend.
template <class T, int R, class S>
struct tensor_traits<strided_view<T, R, S>> {
  using value_type = T;
  using space = S;
  static constexpr int rank = R;
  static T* data(const strided_view<T, R, S>& v) { return v.data(); }
  static index_t extent(const strided_view<T, R, S>& v, int d) { return v.extent(d); }
  static index_t stride(const strided_view<T, R, S>& v, int d) { return v.stride(d); }
};

/// The view of `tensor` with rank `Rank`. A tensor whose rank is fixed at
/// compile time must have exactly `Rank`; one with a run-time rank is
/// checked here and a mismatch throws consr::error naming `argument`.
template <int Rank, class Tensor>
auto as_view(Tensor&& tensor, const char* argument = "tensor", const char* function = "consr::as_view") {
  using Bare = std::remove_cv_t<std::remove_reference_t<Tensor>>;
  static_assert(detail::has_tensor_traits<Bare>::value,
                "consr::as_view: no consr::tensor_traits specialisation for this type; include the adapter "
                "header for its library (consr/adapters/eigen.hpp, xtensor.hpp, span.hpp; LibTorch tensors use consr::libtorch::view_of)");
  using traits = tensor_traits<Bare>;
  using T = detail::view_element_t<Tensor>;
  using view_t = strided_view<T, Rank, typename traits::space>;
  if constexpr (traits::rank == dynamic_rank) {
    const int r = traits::runtime_rank(tensor);
    CONSR_CHECK_ARG(r == Rank, function, argument, "has rank ", r, " but rank ", Rank, " is required");
  } else {
    static_assert(traits::rank == Rank, "consr::as_view: the tensor's compile-time rank differs from the requested rank");
  }
  index_t ext[Rank > 0 ? Rank : 1] = {};
  index_t str[Rank > 0 ? Rank : 1] = {};
  for (int d = 0; d < Rank; ++d) {
    ext[d] = traits::extent(tensor, d);
    str[d] = traits::stride(tensor, d);
  }
  auto* p = traits::data(const_cast<Bare&>(static_cast<const Bare&>(tensor)));
  return view_t(const_cast<T*>(p), ext, str);
}

/// The view of `tensor` with its own compile-time rank.
template <class Tensor>
auto as_view(Tensor&& tensor, const char* argument = "tensor", const char* function = "consr::as_view") {
  using traits = detail::traits_of<Tensor>;
  static_assert(traits::rank != dynamic_rank,
                "consr::as_view: this tensor's rank is dynamic; call consr::as_view<Rank>(tensor)");
  return as_view<traits::rank>(std::forward<Tensor>(tensor), argument, function);
}

/// A read-only view of `tensor` with rank `Rank`.
template <int Rank, class Tensor>
auto as_const_view(const Tensor& tensor, const char* argument = "tensor", const char* function = "consr::as_view") {
  return as_view<Rank>(tensor, argument, function);
}

}  // namespace consr
