// Helpers shared by the host tests (tests/host/test_*.cpp) and, for the
// references and random data they have in common with their host twins, by
// the CUDA tests (tests/cuda/*.cu, through cuda_test_util.cuh). Plain C++17:
// no Catch2, no CUDA. References here are written independently of the
// library (long double loops over the exact input values).
#pragma once

#include <consr/config.hpp>
#include <consr/error.hpp>
#include <consr/numeric.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#if defined(CONSR_TEST_REQUIRE_AVX512)
// host_test_<family>_avx512 (tests/CMakeLists.txt): the family's tests built for AVX-512, to test the
// code paths only such builds have; they run only on a CPU that has AVX-512 F, BW and VL, and report
// "skipped" (exit code 77) elsewhere, before any test runs.
#include <cstdio>
#include <cstdlib>
namespace consr_test {
inline const bool cpu_has_avx512 = [] {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl")) {
    std::puts("skipped: this CPU has no AVX-512 (F, BW, VL)");
    std::exit(77);
  }
  return true;
}();
}  // namespace consr_test
#endif

namespace consr_test {

using consr::index_t;

inline constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
inline constexpr double inf_v = std::numeric_limits<double>::infinity();

// ---- threads ------------------------------------------------------------------------------------

/// Calls f(k) for k = 0 .. count - 1 with k + 1 OpenMP threads (built without
/// OpenMP: with the one thread there is, each time), then restores the
/// thread count.
template <class F>
void for_thread_counts(int count, F&& f) {
#if CONSR_HAS_OPENMP
  const int saved = omp_get_max_threads();
  for (int k = 0; k < count; ++k) {
    omp_set_num_threads(k + 1);
    f(k);
  }
  omp_set_num_threads(saved);
#else
  for (int k = 0; k < count; ++k) f(k);
#endif
}

// ---- values -------------------------------------------------------------------------------------

/// x rounded to the element type T (bf16/fp16 through float).
template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, consr::bfloat16> || std::is_same_v<T, consr::float16>) return T(static_cast<float>(x));
  else return static_cast<T>(x);
}

/// Exact value of a stored element (bf16/fp16 widen exactly to float).
template <class T>
long double value_of(T x) {
  if constexpr (std::is_same_v<T, consr::bfloat16>) return static_cast<long double>(consr::bfloat16::to_float(x.bits));
  else if constexpr (std::is_same_v<T, consr::float16>) return static_cast<long double>(consr::float16::to_float(x.bits));
  else return static_cast<long double>(x);
}

/// True when the bit patterns of a and b are equal (NaN payloads included).
template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// 2^-(mantissa bits) of T: one ulp of 1.
template <class T>
double epsilon_of() {
  if constexpr (std::is_same_v<T, double>) return 0x1p-52;
  else if constexpr (std::is_same_v<T, float>) return 0x1p-23;
  else if constexpr (std::is_same_v<T, consr::bfloat16>) return 0x1p-7;
  else return 0x1p-10;
}

// ---- errors -------------------------------------------------------------------------------------

/// get(e) of the E that f() throws; `none` when f() returns. Any other exception escapes (the
/// tests of each floor pass their own error type: consr::error, c10::Error, consr_eval::error).
template <class E, class F, class Get>
std::string on_throw(F&& f, Get&& get, const char* none = "<no error>") {
  try {
    f();
  } catch (const E& e) {
    return get(e);
  }
  return none;
}

/// The argument a consr::error thrown by f() names (`part` = argument), or its message (`part` =
/// message); "<no error>" when f() does not throw, "<other exception>" when it throws something else.
enum class error_part { argument, message };
template <class F>
std::string consr_error_part(F&& f, error_part part) {
  try {
    return on_throw<consr::error>(f, [part](const consr::error& e) {
      return std::string(part == error_part::argument ? e.argument() : e.what());
    });
  } catch (...) {
    return "<other exception>";
  }
}

/// The argument a consr::error thrown by f() names; sentinels as consr_error_part.
template <class F>
std::string error_argument(F&& f) {
  return consr_error_part(f, error_part::argument);
}

/// The message of a consr::error thrown by f(); sentinels as consr_error_part.
template <class F>
std::string error_message(F&& f) {
  return consr_error_part(f, error_part::message);
}

// ---- accuracy ------------------------------------------------------------------------------------

/// The worst relative error of f(x) against a long-double sqrt over 400 000 arguments: even draws
/// uniform in [lo, hi] (where Box–Muller takes its radii), odd draws 2^e, e uniform in
/// [-max_exponent, max_exponent].
template <class F>
long double worst_sqrt_error(F&& f, std::uint64_t seed, double max_exponent, double lo, double hi) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> exponent(-max_exponent, max_exponent), range(lo, hi);
  long double worst = 0;
  for (int k = 0; k < 400000; ++k) {
    const double x = k % 2 ? std::exp2(exponent(gen)) : range(gen);
    const long double ref = std::sqrt(static_cast<long double>(x));
    worst = std::max(worst, std::fabs((static_cast<long double>(f(x)) - ref) / ref));
  }
  return worst;
}

// ---- sweeps --------------------------------------------------------------------------------------

/// The cases of the log-prob forward sweeps (host and CUDA tests): for each vocabulary size, logits
/// of standard deviation 1 and 5 at τ = 1 and 0.7, each with a random number of rows in
/// [1, max_rows] ([1, max_rows_large] from V = 32000 on); calls f(rows, vocab, stddev, tau).
template <std::size_t N, class F>
void for_each_forward_case(const index_t (&vocabs)[N], std::uint64_t seed, index_t max_rows, index_t max_rows_large,
                           F&& f) {
  std::mt19937_64 gen(seed);
  for (const index_t vocab : vocabs) {
    std::uniform_int_distribution<index_t> pick_rows(1, vocab >= 32000 ? max_rows_large : max_rows);
    for (const double stddev : {1.0, 5.0})
      for (const double tau : {1.0, 0.7}) f(pick_rows(gen), vocab, stddev, tau);
  }
}

// ---- random data --------------------------------------------------------------------------------

/// Offsets of `segments` random lengths in [0, max_len], a share `empty_prob` of them empty.
template <class O>
std::vector<O> random_offsets(std::mt19937_64& rng, index_t segments, index_t max_len, double empty_prob = 0.2) {
  std::uniform_int_distribution<index_t> len(0, max_len);
  std::bernoulli_distribution empty(empty_prob);
  std::vector<O> off(static_cast<std::size_t>(segments) + 1, 0);
  for (index_t s = 0; s < segments; ++s) off[s + 1] = static_cast<O>(off[s] + (empty(rng) ? 0 : len(rng)));
  return off;
}

/// n normal values (mean 0, standard deviation 3) rounded to V.
template <class V = double>
std::vector<V> random_values(std::mt19937_64& rng, index_t n) {
  std::normal_distribution<double> d(0.0, 3.0);
  std::vector<V> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = consr::from_accum<V>(d(rng));
  return v;
}

/// n token labels in [0, 1000], each -100 (ignored) with probability ignore_prob.
inline std::vector<std::int64_t> random_token_labels(std::mt19937_64& rng, index_t n, double ignore_prob) {
  std::bernoulli_distribution ign(ignore_prob);
  std::uniform_int_distribution<std::int64_t> tok(0, 1000);
  std::vector<std::int64_t> l(static_cast<std::size_t>(n));
  for (auto& x : l) x = ign(rng) ? -100 : tok(rng);
  return l;
}

/// One label per row, uniform in [0, vocab) (0 for vocab = 0).
template <class Label>
std::vector<Label> random_labels(index_t rows, index_t vocab, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<std::int64_t> pick(0, std::max<index_t>(vocab - 1, 0));
  std::vector<Label> out(static_cast<std::size_t>(rows));
  for (auto& y : out) y = static_cast<Label>(pick(gen));
  return out;
}

/// Upstream gradients of the token log-probs, uniform in [-2, 2).
inline std::vector<double> random_upstream(index_t rows, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::vector<double> out(static_cast<std::size_t>(rows));
  for (auto& x : out) x = u(gen);
  return out;
}

// ---- token log-prob reference (spec §4) ---------------------------------------------------------

struct reference_row {
  long double logp;
  long double lse;
};

/// logsumexp of z / tau in long double, straight from the definition (shifted by the max for range).
template <class T>
reference_row reference_logprob(const T* row, index_t vocab, std::int64_t label, long double tau) {
  long double m = -std::numeric_limits<long double>::infinity();
  for (index_t v = 0; v < vocab; ++v) m = std::max(m, value_of(row[v]) / tau);
  long double s = 0;
  for (index_t v = 0; v < vocab; ++v) s += std::exp(value_of(row[v]) / tau - m);
  const long double lse = m + std::log(s);
  return {value_of(row[label]) / tau - lse, lse};
}

/// Allowed error of an fp32 output: `tol` for the computation plus half an ulp of the value, since
/// the stored float itself cannot be closer than that (|logp| ~ 40 has an ulp of 3.8e-6).
inline double float_output_tolerance(long double ref, double tol) {
  const float f = static_cast<float>(std::fabs(static_cast<double>(ref)));
  const float next = std::nextafter(f, std::numeric_limits<float>::infinity());
  return tol + 0.5 * (static_cast<double>(next) - static_cast<double>(f));
}

}  // namespace consr_test
