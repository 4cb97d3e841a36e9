// consr/adapters/eigen.hpp — Eigen dense objects as consr views, without copies.
//
// Any Eigen expression with direct memory access (Matrix, Array, Map, Ref,
// Block of those) is a tensor: compile-time vectors are rank 1, everything
// else rank 2 with Eigen's own row and column strides, so row- and
// column-major storage both map to the same logical [rows, cols] view.
// Eigen::half / Eigen::bfloat16 scalars are viewed as consr::float16 /
// consr::bfloat16 (same bits). Link consr::eigen to get Eigen with consr.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "../numeric.hpp"
#include "../traits.hpp"

namespace consr {

namespace detail {

template <class Scalar>
struct eigen_scalar {
  using type = Scalar;
};
template <>
struct eigen_scalar<Eigen::half> {
  using type = float16;
};
template <>
struct eigen_scalar<Eigen::bfloat16> {
  using type = bfloat16;
};

template <class T, class = void>
struct is_eigen_direct_access : std::false_type {};
template <class T>
struct is_eigen_direct_access<T, std::enable_if_t<std::is_base_of_v<Eigen::EigenBase<T>, T>>>
    : std::bool_constant<(Eigen::internal::traits<T>::Flags & Eigen::DirectAccessBit) != 0> {};

}  // namespace detail

template <class E>
struct tensor_traits<E, std::enable_if_t<detail::is_eigen_direct_access<E>::value>> {
  using raw_pointer = decltype(std::declval<E&>().data());
  using raw_scalar = std::remove_pointer_t<raw_pointer>;
  using mapped = typename detail::eigen_scalar<std::remove_cv_t<raw_scalar>>::type;
  // Keep the constness of the Eigen object's data (Map<const M>, Ref<const M>).
  using value_type = std::conditional_t<std::is_const_v<raw_scalar>, const mapped, mapped>;
  using space = host_space;
  static constexpr int rank = E::IsVectorAtCompileTime ? 1 : 2;

  static value_type* data(E& e) { return reinterpret_cast<value_type*>(e.data()); }
  static index_t extent(const E& e, int d) {
    if constexpr (rank == 1) {
      return static_cast<index_t>(e.size());
    } else {
      return static_cast<index_t>(d == 0 ? e.rows() : e.cols());
    }
  }
  static index_t stride(const E& e, int d) {
    if constexpr (rank == 1) {
      return static_cast<index_t>(e.innerStride());
    } else {
      return static_cast<index_t>(d == 0 ? e.rowStride() : e.colStride());
    }
  }
};

}  // namespace consr
