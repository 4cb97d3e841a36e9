// consr/detail/gemm.hpp — the GEMM policy contract of the memory-bounded log-probs
// (consr/linear_logprobs.hpp) and `consr::loop_gemm`, a policy in plain loops.
//
// A GEMM policy is any type with three static member function templates, called
// for T = float and T = double on row-major matrices with leading dimensions
// (elements from one row to the next, >= max(1, row length)):
//
//   gemm_nt(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)  C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C
//   gemm_nn(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)  C[m×n] = alpha·A[m×k]·B[k×n]  + beta·C
//   gemm_tn(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)  C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C
//
// with BLAS semantics: beta == 0 overwrites C without reading it (it may hold
// garbage or NaN), k == 0 gives beta·C, m == 0 or n == 0 does nothing. C never
// aliases A or B. The policy may run threads of its own; consr calls it from
// outside any parallel region. Shipped policies: loop_gemm (here, no dependency),
// consr::eigen_gemm (consr/adapters/eigen_gemm.hpp, link consr::eigen) and
// consr::cblas_gemm (consr/adapters/cblas_gemm.hpp, link consr::cblas).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "../config.hpp"

namespace consr {
namespace detail {

// C ← beta·C over an m×n block; beta == 0 writes zeros without reading C (BLAS semantics).
template <class T>
void gemm_scale(index_t m, index_t n, T beta, T* c, index_t ldc) noexcept {
  if (beta == T(1)) return;
  for (index_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      std::fill(row, row + n, T(0));
    } else {
      CONSR_SIMD
      for (index_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

// Threads cost more than they save below about a million multiply-adds.
inline bool gemm_parallel_worth_it(index_t m, index_t n, index_t k) noexcept {
  return m > 1 && static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) >= 1048576.0;
}

// C[m×n] = alpha·Σ_p a(i, p)·B[p, :] + beta·C with a(i, p) = a[i·a_row + p·a_depth]: the shared body of
// gemm_nn (a_row = lda, a_depth = 1) and gemm_tn (a_row = 1, a_depth = lda). Each row of C is an axpy
// over contiguous rows of B, which vectorizes; depth and columns are blocked so that the B block
// (256 × 512 elements) stays in L2 while every row of C sweeps it.
template <class T>
void loop_gemm_axpy_rows(index_t m, index_t n, index_t k, T alpha, const T* a, index_t a_row, index_t a_depth,
                         const T* b, index_t ldb, T beta, T* c, index_t ldc) noexcept {
  constexpr index_t depth_block = 256;
  constexpr index_t column_block = 512;
  const bool run_parallel = gemm_parallel_worth_it(m, n, k);
  (void)run_parallel;
  CONSR_OMP(parallel for schedule(static) if (run_parallel))
  for (index_t i = 0; i < m; ++i) gemm_scale(index_t{1}, n, beta, c + i * ldc, ldc);
  if (k == 0 || alpha == T(0)) return;
  for (index_t j0 = 0; j0 < n; j0 += column_block) {
    const index_t nj = std::min(column_block, n - j0);
    for (index_t p0 = 0; p0 < k; p0 += depth_block) {
      const index_t np = std::min(depth_block, k - p0);
      CONSR_OMP(parallel for schedule(static) if (run_parallel))
      for (index_t i = 0; i < m; ++i) {
        T* CONSR_RESTRICT c_row = c + i * ldc + j0;
        for (index_t p = p0; p < p0 + np; ++p) {
          const T a_ip = alpha * a[i * a_row + p * a_depth];
          const T* CONSR_RESTRICT b_row = b + p * ldb + j0;
          CONSR_SIMD
          for (index_t j = 0; j < nj; ++j) c_row[j] += a_ip * b_row[j];
        }
      }
    }
  }
}

}  // namespace detail

/// GEMM policy in plain loops (see the contract at the top of this file): no dependency, any C++17
/// compiler, rows of C in parallel under OpenMP, vectorized inner loops. It is the default policy so that
/// the library works everywhere; it reaches a fraction of a tuned BLAS, so for real vocabularies use
/// consr::eigen_gemm or consr::cblas_gemm. Each element of C is computed by one thread in a fixed order,
/// so results do not depend on the thread count.
struct loop_gemm {
  /// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C (row-major, leading dimensions lda, ldb, ldc).
  template <class T>
  static void gemm_nt(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) noexcept {
    static_assert(std::is_floating_point_v<T>, "consr::loop_gemm: T must be float or double");
    // Four rows of A share each load of a row of B (four dot products at once); depth is blocked so the
    // four A row pieces stay in L1 while all of B's rows stream past.
    constexpr index_t depth_block = 1024;
    constexpr index_t row_tile = 4;
    const bool run_parallel = detail::gemm_parallel_worth_it(m, n, k);
    (void)run_parallel;
    const index_t tiles = (m + row_tile - 1) / row_tile;
    CONSR_OMP(parallel for schedule(static) if (run_parallel))
    for (index_t t = 0; t < tiles; ++t) {
      const index_t i0 = t * row_tile;
      const index_t ni = std::min(row_tile, m - i0);
      detail::gemm_scale(ni, n, beta, c + i0 * ldc, ldc);
      if (k == 0 || alpha == T(0)) continue;
      // Rows past the tile's end re-read row i0 (valid memory) and their sums are discarded.
      const T* a0 = a + i0 * lda;
      const T* a1 = ni > 1 ? a0 + lda : a0;
      const T* a2 = ni > 2 ? a0 + 2 * lda : a0;
      const T* a3 = ni > 3 ? a0 + 3 * lda : a0;
      for (index_t p0 = 0; p0 < k; p0 += depth_block) {
        const index_t np = std::min(depth_block, k - p0);
        for (index_t j = 0; j < n; ++j) {
          const T* CONSR_RESTRICT b_row = b + j * ldb + p0;
          T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          _Pragma("omp simd reduction(+ : s0, s1, s2, s3)")
          for (index_t p = 0; p < np; ++p) {
            const T bv = b_row[p];
            s0 += a0[p0 + p] * bv;
            s1 += a1[p0 + p] * bv;
            s2 += a2[p0 + p] * bv;
            s3 += a3[p0 + p] * bv;
          }
          const T sums[row_tile] = {s0, s1, s2, s3};
          for (index_t r = 0; r < ni; ++r) c[(i0 + r) * ldc + j] += alpha * sums[r];
        }
      }
    }
  }

  /// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C.
  template <class T>
  static void gemm_nn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) noexcept {
    static_assert(std::is_floating_point_v<T>, "consr::loop_gemm: T must be float or double");
    detail::loop_gemm_axpy_rows(m, n, k, alpha, a, lda, index_t{1}, b, ldb, beta, c, ldc);
  }

  /// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C.
  template <class T>
  static void gemm_tn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) noexcept {
    static_assert(std::is_floating_point_v<T>, "consr::loop_gemm: T must be float or double");
    detail::loop_gemm_axpy_rows(m, n, k, alpha, a, index_t{1}, lda, b, ldb, beta, c, ldc);
  }
};

}  // namespace consr
