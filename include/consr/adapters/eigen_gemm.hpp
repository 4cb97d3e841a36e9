// consr/adapters/eigen_gemm.hpp — `consr::eigen_gemm`, the GEMM policy of
// consr/linear_logprobs.hpp on Eigen's matrix products. Link consr::eigen.
//
// The row-major operands are mapped without copies (Eigen::Map with an outer
// stride). Eigen's GEMM packs panels into its own cache-sized buffers (a few MB,
// independent of N and V) and runs on OpenMP threads when the translation unit
// is compiled with OpenMP (consr::consr adds it when it was found); its speed
// depends on the instruction set the caller compiles for (-march=native gives
// AVX2/AVX-512 kernels, the x86-64 default only SSE2).
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "../config.hpp"
#include "../detail/gemm.hpp"

namespace consr {

/// GEMM policy on Eigen's products (contract: consr/detail/gemm.hpp).
struct eigen_gemm {
  template <class T>
  using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <class T>
  using const_map = Eigen::Map<const row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  template <class T>
  using map = Eigen::Map<row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

  /// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C (row-major, leading dimensions lda, ldb, ldc).
  template <class T>
  static void gemm_nt(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    gemm<false, true>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  /// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C.
  template <class T>
  static void gemm_nn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    gemm<false, false>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  /// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C.
  template <class T>
  static void gemm_tn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    gemm<true, false>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

 private:
  /// C = alpha·op(A)·op(B) + beta·C, op = transpose where TransA / TransB: A is stored [k×m] when
  /// transposed, [m×k] otherwise; B [n×k] when transposed, [k×n] otherwise.
  template <bool TransA, bool TransB, class T>
  static void gemm(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                   T beta, T* c, index_t ldc) {
    if (m == 0 || n == 0) return;
    const_map<T> a_mat(a, TransA ? k : m, TransA ? m : k, Eigen::OuterStride<>(lda));
    const_map<T> b_mat(b, TransB ? n : k, TransB ? k : n, Eigen::OuterStride<>(ldb));
    map<T> c_mat(c, m, n, Eigen::OuterStride<>(ldc));
    if constexpr (TransA) {
      update(c_mat, alpha, a_mat.transpose() * b_mat, beta, k);
    } else if constexpr (TransB) {
      update(c_mat, alpha, a_mat * b_mat.transpose(), beta, k);
    } else {
      update(c_mat, alpha, a_mat * b_mat, beta, k);
    }
  }

  template <class CMap, class Product, class T>
  static void update(CMap& c_mat, T alpha, const Product& product, T beta, index_t k) {
    static_assert(std::is_floating_point_v<T>, "consr::eigen_gemm: T must be float or double");
    if (k == 0 || alpha == T(0)) {
      detail::gemm_scale(c_mat.rows(), c_mat.cols(), beta, c_mat.data(), c_mat.outerStride());
      return;
    }
    // beta == 0: assign, so C is never read (it may hold garbage, as BLAS allows).
    if (beta == T(0)) {
      c_mat.noalias() = alpha * product;
      return;
    }
    if (beta != T(1)) c_mat *= beta;
    c_mat.noalias() += alpha * product;
  }
};

}  // namespace consr
