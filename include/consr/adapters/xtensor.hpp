// consr/adapters/xtensor.hpp — xtensor containers and adaptors as consr views.
//
// xt::xtensor<T, N> and xt::xtensor_fixed have their rank at compile time;
// xt::xarray<T> has it at run time (consr::as_view<Rank> checks it and names
// the argument). xt::adapt(...) results are covered too, as is any xtensor
// type exposing data(), shape() and strides() in elements (xtensor's strides
// are in elements, 0 for extents of 1). Link consr::xtensor to get xtensor.
#pragma once

#include <tuple>
#include <type_traits>
#include <xtensor/xcontainer.hpp>
#include <xtensor/xutils.hpp>

#include "../traits.hpp"

namespace consr {

namespace detail {

template <class T, class = void>
struct is_xtensor_container : std::false_type {};
template <class T>
struct is_xtensor_container<T, std::enable_if_t<xt::is_xexpression<T>::value && xt::has_data_interface<T>::value &&
                                                 !std::is_base_of_v<xt::xview_semantic<T>, T>>>
    : std::true_type {};

template <class Shape, class = void>
struct static_shape_rank : std::integral_constant<int, dynamic_rank> {};
template <class Shape>
struct static_shape_rank<Shape, std::void_t<decltype(std::tuple_size<Shape>::value)>>
    : std::integral_constant<int, static_cast<int>(std::tuple_size<Shape>::value)> {};

}  // namespace detail

template <class E>
struct tensor_traits<E, std::enable_if_t<detail::is_xtensor_container<E>::value>> {
  using raw_scalar = std::remove_pointer_t<decltype(std::declval<E&>().data())>;
  using value_type = raw_scalar;
  using space = host_space;
  static constexpr int rank = detail::static_shape_rank<std::decay_t<decltype(std::declval<const E&>().shape())>>::value;

  static int runtime_rank(const E& e) { return static_cast<int>(e.dimension()); }
  static value_type* data(E& e) { return e.data() + e.data_offset(); }
  static index_t extent(const E& e, int d) { return static_cast<index_t>(e.shape()[static_cast<std::size_t>(d)]); }
  static index_t stride(const E& e, int d) {
    return static_cast<index_t>(e.strides()[static_cast<std::size_t>(d)]);
  }
};

}  // namespace consr
