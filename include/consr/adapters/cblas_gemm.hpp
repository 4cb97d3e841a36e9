// consr/adapters/cblas_gemm.hpp — `consr::cblas_gemm`, the GEMM policy of
// consr/linear_logprobs.hpp on any CBLAS (OpenBLAS, BLIS, MKL, the reference
// BLAS). Link consr::cblas, or include <cblas.h> yourself and link a BLAS.
//
// How fast it is depends entirely on the BLAS behind it: OpenBLAS or MKL reach
// most of the machine's peak (on Debian, install libopenblas-dev and the
// `libblas.so.3` alternative switches to it); the reference BLAS is a plain
// triple loop. The BLAS runs its own threads (OPENBLAS_NUM_THREADS, ...).
#pragma once

#include <cblas.h>

#include <climits>
#include <type_traits>

#include "../config.hpp"
#include "../detail/gemm.hpp"
#include "../error.hpp"

namespace consr {

/// GEMM policy on cblas_sgemm / cblas_dgemm (contract: consr/detail/gemm.hpp).
/// Throws consr::error if a dimension or leading dimension does not fit the BLAS's `int`.
struct cblas_gemm {
  /// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C (row-major, leading dimensions lda, ldb, ldc).
  template <class T>
  static void gemm_nt(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    call(CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  /// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C.
  template <class T>
  static void gemm_nn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    call(CblasNoTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  /// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C.
  template <class T>
  static void gemm_tn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    call(CblasTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

 private:
  static int to_blas_int(index_t v, const char* what) {
    CONSR_CHECK_ARG(v >= 0 && v <= static_cast<index_t>(INT_MAX), "consr::cblas_gemm", what, "is ", v,
                    ", which does not fit the BLAS integer type (int)");
    return static_cast<int>(v);
  }

  template <class T>
  static void call(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, index_t m, index_t n, index_t k, T alpha,
                   const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "consr::cblas_gemm: T must be float or double");
    if (m == 0 || n == 0) return;
    if (k == 0 || alpha == T(0)) {
      // Some BLAS builds return early for k == 0 without applying beta; do it here.
      detail::gemm_scale(m, n, beta, c, ldc);
      return;
    }
    const int bm = to_blas_int(m, "m");
    const int bn = to_blas_int(n, "n");
    const int bk = to_blas_int(k, "k");
    const int blda = to_blas_int(lda, "lda");
    const int bldb = to_blas_int(ldb, "ldb");
    const int bldc = to_blas_int(ldc, "ldc");
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasRowMajor, trans_a, trans_b, bm, bn, bk, alpha, a, blda, b, bldb, beta, c, bldc);
    } else {
      cblas_dgemm(CblasRowMajor, trans_a, trans_b, bm, bn, bk, alpha, a, blda, b, bldb, beta, c, bldc);
    }
  }
};

}  // namespace consr
