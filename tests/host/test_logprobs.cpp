// Tests for consr/logprobs.hpp (spec §4) and the exp of consr/detail/exp.hpp.
// References are plain loops in long double over the exact input values (for
// bf16/fp16 inputs: the rounded values), written independently of the kernels.
#include <catch2/catch.hpp>

#include <consr/detail/exp.hpp>
#include <consr/logprobs.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(CONSR_TEST_REQUIRE_AVX512)  // host_test_logprobs_avx512 (test_util.hpp skips it without AVX-512)
static_assert(CONSR_LOGPROBS_AVX512, "host_test_logprobs_avx512 must compile the AVX-512 exp-sum");
#endif

namespace {

using consr::bfloat16;
using consr::float16;
using consr::index_t;
using consr::make_strided_view;
using consr::make_view;

using namespace consr_test;  // the shared values, references and random data (test_util.hpp)

template <class T>
std::vector<T> random_logits(index_t rows, index_t vocab, double stddev, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<T> out(static_cast<std::size_t>(rows * vocab));
  for (auto& v : out) v = from_double<T>(normal(gen));
  return out;
}

struct forward_case {
  index_t rows;
  index_t vocab;
  double stddev;
  double tau;
};

template <class Logit, class Label>
double check_forward_against_reference(const forward_case& c, std::uint64_t seed, double tol) {
  using Acc = consr::accum_t<Logit>;
  const auto logits = random_logits<Logit>(c.rows, c.vocab, c.stddev, seed);
  auto labels = random_labels<Label>(c.rows, c.vocab, seed + 1);
  if (c.rows > 2) labels[1] = static_cast<Label>(-100);  // an ignored row among scored ones
  std::vector<Acc> logp(static_cast<std::size_t>(c.rows), Acc(-7));
  std::vector<Acc> lse(static_cast<std::size_t>(c.rows), Acc(-7));
  consr::logprob_options options;
  options.temperature = c.tau;
  consr::token_logprobs(make_view(logits.data(), c.rows, c.vocab), make_view(labels.data(), c.rows),
                        make_view(logp.data(), c.rows), make_view(lse.data(), c.rows), options);
  double worst = 0;
  for (index_t i = 0; i < c.rows; ++i) {
    const auto idx = static_cast<std::size_t>(i);
    if (labels[idx] == -100) {
      CHECK(logp[idx] == Acc(0));
      CHECK(lse[idx] == Acc(0));
      continue;
    }
    const reference_row ref =
        reference_logprob(logits.data() + i * c.vocab, c.vocab, labels[idx], static_cast<long double>(c.tau));
    const double err_logp = std::fabs(static_cast<double>(static_cast<long double>(logp[idx]) - ref.logp));
    const double err_lse = std::fabs(static_cast<double>(static_cast<long double>(lse[idx]) - ref.lse));
    const double tol_logp = std::is_same_v<Acc, float> ? float_output_tolerance(ref.logp, tol) : tol;
    const double tol_lse = std::is_same_v<Acc, float> ? float_output_tolerance(ref.lse, tol) : tol;
    INFO("V=" << c.vocab << " std=" << c.stddev << " tau=" << c.tau << " row " << i << " logp " << logp[idx]
              << " ref " << static_cast<double>(ref.logp) << " lse " << lse[idx] << " ref "
              << static_cast<double>(ref.lse));
    CHECK(err_logp <= tol_logp);
    CHECK(err_lse <= tol_lse);
    worst = std::max({worst, err_logp - (tol_logp - tol), err_lse - (tol_lse - tol)});
  }
  return worst;
}

template <class Logit, class Label>
void check_forward_sweep(double tol) {
  const index_t vocabs[] = {1, 2, 3, 17, 1000, 2049, 32000, 152064};
  std::uint64_t seed = 1;
  double worst = 0;
  for_each_forward_case(vocabs, 12345, 9, 3, [&](index_t rows, index_t vocab, double stddev, double tau) {
    worst = std::max(worst, check_forward_against_reference<Logit, Label>({rows, vocab, stddev, tau}, seed++, tol));
  });
  // Large temperatures and a wide logit range exercise the rescaling of the running sum.
  worst = std::max(worst, check_forward_against_reference<Logit, Label>({4, 5000, 20.0, 2.5}, seed++, tol));
  INFO("largest error beyond the output's own rounding: " << worst);
  CHECK(worst <= tol);
}

// Analytic gradient of sum_i g_i logp_i in long double.
template <class T>
std::vector<long double> reference_grad(const std::vector<T>& logits, const std::vector<std::int64_t>& labels,
                                        const std::vector<double>& g, index_t rows, index_t vocab, long double tau,
                                        std::int64_t ignore_index = -100) {
  std::vector<long double> out(static_cast<std::size_t>(rows * vocab), 0.0L);
  for (index_t i = 0; i < rows; ++i) {
    const auto y = labels[static_cast<std::size_t>(i)];
    if (y == ignore_index) continue;
    const T* row = logits.data() + i * vocab;
    const long double lse = reference_logprob(row, vocab, y, tau).lse;
    const long double c = g[static_cast<std::size_t>(i)] / tau;
    for (index_t v = 0; v < vocab; ++v) {
      const long double p = std::exp(value_of(row[v]) / tau - lse);
      out[static_cast<std::size_t>(i * vocab + v)] = c * ((v == y ? 1.0L : 0.0L) - p);
    }
  }
  return out;
}

template <class Acc>
std::vector<Acc> cast_vector(const std::vector<double>& x) {
  return std::vector<Acc>(x.begin(), x.end());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// detail::vector_exp

TEST_CASE("vector_exp(float) is within 2 ulp of exp and handles special values", "[logprobs][exp]") {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> wide(-86.98f, 88.72f);
  std::uniform_real_distribution<float> narrow(-1.0f, 1.0f);
  double worst_ulp = 0;
  for (int k = 0; k < 400000; ++k) {
    const float x = (k & 1) ? wide(gen) : narrow(gen) * ((k & 2) ? 1e-3f : 1.0f);
    const double ref = std::exp(static_cast<double>(x));
    const float y = consr::detail::vector_exp(x);
    int e;
    std::frexp(static_cast<float>(ref), &e);
    const double ulp = std::ldexp(1.0, e - 24);
    worst_ulp = std::max(worst_ulp, std::fabs(static_cast<double>(y) - ref) / ulp);
  }
  INFO("worst error " << worst_ulp << " ulp");
  CHECK(worst_ulp < 2.0);
  CHECK(consr::detail::vector_exp(0.0f) == 1.0f);
  CHECK(std::isnan(consr::detail::vector_exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(consr::detail::vector_exp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(consr::detail::vector_exp(-1e30f) == 0.0f);
  CHECK(consr::detail::vector_exp(-87.5f) == 0.0f);  // flushed: no subnormal results
  CHECK(consr::detail::vector_exp(-86.9f) >= FLT_MIN);
  CHECK(consr::detail::vector_exp(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(consr::detail::vector_exp(89.0f) == std::numeric_limits<float>::infinity());
  CHECK(consr::detail::vector_exp(1e30f) == std::numeric_limits<float>::infinity());
  const float big = consr::detail::vector_exp(88.72f);  // just below ln(FLT_MAX): finite
  CHECK(std::isfinite(big));
  CHECK(std::fabs(static_cast<double>(big) / std::exp(static_cast<double>(88.72f)) - 1.0) < 2.5e-7);
}

TEST_CASE("vector_exp(double) is within 2 ulp of exp and handles special values", "[logprobs][exp]") {
  std::mt19937_64 gen(8);
  std::uniform_real_distribution<double> wide(-708.0, 709.78);
  std::uniform_real_distribution<double> narrow(-1.0, 1.0);
  long double worst_ulp = 0;
  for (int k = 0; k < 200000; ++k) {
    const double x = (k & 1) ? wide(gen) : narrow(gen) * 20.0;
    const long double ref = std::exp(static_cast<long double>(x));
    const double y = consr::detail::vector_exp(x);
    int e;
    std::frexp(static_cast<double>(ref), &e);
    const long double ulp = std::ldexp(1.0L, e - 53);
    worst_ulp = std::max(worst_ulp, std::fabs(static_cast<long double>(y) - ref) / ulp);
  }
  INFO("worst error " << static_cast<double>(worst_ulp) << " ulp");
  CHECK(worst_ulp < 2.0L);
  CHECK(consr::detail::vector_exp(0.0) == 1.0);
  CHECK(std::isnan(consr::detail::vector_exp(nan_v)));
  CHECK(consr::detail::vector_exp(-inf_v) == 0.0);
  CHECK(consr::detail::vector_exp(-709.0) == 0.0);
  CHECK(consr::detail::vector_exp(inf_v) == inf_v);
  CHECK(consr::detail::vector_exp(710.0) == inf_v);
  CHECK(std::isfinite(consr::detail::vector_exp(709.78)));
}

// ---------------------------------------------------------------------------------------------
// forward accuracy

TEST_CASE("token_logprobs fp32 matches an fp64 reference within 1e-6", "[logprobs]") {
  check_forward_sweep<float, std::int64_t>(1e-6);
}

TEST_CASE("token_logprobs fp64 matches a long double reference within 1e-12", "[logprobs]") {
  check_forward_sweep<double, std::int64_t>(1e-12);
}

TEST_CASE("token_logprobs bf16 and fp16 match the reference of the rounded inputs within 1e-6", "[logprobs]") {
  check_forward_sweep<bfloat16, std::int32_t>(1e-6);
  check_forward_sweep<float16, std::int64_t>(1e-6);
}

TEST_CASE("token_logprobs without lse writes the same log-probs", "[logprobs]") {
  const index_t rows = 5, vocab = 3001;
  const auto logits = random_logits<float>(rows, vocab, 3.0, 21);
  const auto labels = random_labels<std::int32_t>(rows, vocab, 22);
  std::vector<float> logp(rows), logp2(rows), lse(rows);
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows));
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp2.data(), rows));
  for (index_t i = 0; i < rows; ++i) CHECK(same_bits(logp[static_cast<std::size_t>(i)], logp2[static_cast<std::size_t>(i)]));
  // The exact signature with const views works too.
  const consr::host_view<const float, 2> clogits = make_view(logits.data(), rows, vocab);
  const consr::host_view<const std::int32_t, 1> clabels = make_view(labels.data(), rows);
  consr::token_logprobs<float, std::int32_t>(clogits, clabels, make_view(logp2.data(), rows), consr::host_view<float, 1>{});
  for (index_t i = 0; i < rows; ++i) CHECK(same_bits(logp[static_cast<std::size_t>(i)], logp2[static_cast<std::size_t>(i)]));
  std::fill(logp2.begin(), logp2.end(), 0.0f);
  consr::token_logprobs(clogits, clabels, make_view(logp2.data(), rows), make_view(lse.data(), rows));  // deduced
  for (index_t i = 0; i < rows; ++i) CHECK(same_bits(logp[static_cast<std::size_t>(i)], logp2[static_cast<std::size_t>(i)]));
  // The backward's exact signature, deduced from const views.
  const std::vector<float> g(rows, 1.0f);
  std::vector<float> grad(logits.size());
  const consr::host_view<const float, 1> clse = make_view(lse.data(), rows);
  const consr::host_view<const float, 1> cg = make_view(g.data(), rows);
  consr::token_logprobs_backward(clogits, clabels, clse, cg, make_view(grad.data(), rows, vocab));
  CHECK(grad[static_cast<std::size_t>(labels[0])] > 0.0f);
}

TEST_CASE("token_logprobs reads strided rows and nothing between them", "[logprobs]") {
  const index_t rows = 6, vocab = 2500, stride = vocab + 37;
  const auto dense = random_logits<float>(rows, vocab, 2.0, 31);
  std::vector<float> padded(static_cast<std::size_t>(rows * stride), std::numeric_limits<float>::quiet_NaN());
  for (index_t i = 0; i < rows; ++i)
    std::copy(dense.begin() + i * vocab, dense.begin() + (i + 1) * vocab, padded.begin() + i * stride);
  const auto labels = random_labels<std::int64_t>(rows, vocab, 32);
  std::vector<float> a(rows), b(rows), lse_a(rows), lse_b(rows);
  consr::token_logprobs(make_view(dense.data(), rows, vocab), make_view(labels.data(), rows), make_view(a.data(), rows),
                        make_view(lse_a.data(), rows));
  consr::token_logprobs(make_strided_view(padded.data(), std::array<index_t, 2>{rows, vocab},
                                          std::array<index_t, 2>{stride, 1}),
                        make_view(labels.data(), rows), make_view(b.data(), rows), make_view(lse_b.data(), rows));
  for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
    CHECK(same_bits(a[i], b[i]));
    CHECK(same_bits(lse_a[i], lse_b[i]));
  }
  // Strided outputs too.
  std::vector<float> out(static_cast<std::size_t>(2 * rows), -1.0f);
  consr::token_logprobs(make_view(dense.data(), rows, vocab), make_view(labels.data(), rows),
                        make_strided_view(out.data(), std::array<index_t, 1>{rows}, std::array<index_t, 1>{2}));
  for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
    CHECK(same_bits(out[2 * i], a[i]));
    CHECK(out[2 * i + 1] == -1.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// ignore_index, invalid labels, non-finite logits

TEST_CASE("token_logprobs and backward skip ignore_index rows (default and custom)", "[logprobs]") {
  const index_t rows = 4, vocab = 50;
  const auto logits = random_logits<float>(rows, vocab, 1.0, 41);
  for (const std::int64_t ignore : {std::int64_t{-100}, std::int64_t{-1}, std::int64_t{7}}) {
    std::vector<std::int64_t> labels = {3, ignore, 49, ignore};
    if (ignore == 7) labels[0] = 8;
    consr::logprob_options options;
    options.ignore_index = ignore;
    std::vector<float> logp(rows, 5.0f), lse(rows, 5.0f);
    consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                          make_view(logp.data(), rows), make_view(lse.data(), rows), options);
    CHECK(logp[1] == 0.0f);
    CHECK(lse[1] == 0.0f);
    CHECK(logp[3] == 0.0f);
    CHECK(lse[3] == 0.0f);
    CHECK(logp[0] < 0.0f);
    CHECK(logp[2] < 0.0f);
    const std::vector<float> g = {1.0f, 1.0f, -0.5f, 2.0f};
    std::vector<float> grad(static_cast<std::size_t>(rows * vocab), 9.0f);
    consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                   make_view(lse.data(), rows), make_view(g.data(), rows),
                                   make_view(grad.data(), rows, vocab), options);
    for (index_t v = 0; v < vocab; ++v) {
      CHECK(grad[static_cast<std::size_t>(1 * vocab + v)] == 0.0f);
      CHECK(grad[static_cast<std::size_t>(3 * vocab + v)] == 0.0f);
    }
    CHECK(grad[static_cast<std::size_t>(labels[0])] > 0.0f);
  }
}

TEST_CASE("an out-of-range label throws naming 'labels' and the row, and writes nothing", "[logprobs]") {
  const index_t rows = 4, vocab = 10;
  const auto logits = random_logits<float>(rows, vocab, 1.0, 51);
  for (const std::int64_t bad : {std::int64_t{10}, std::int64_t{152064}, std::int64_t{-5}, std::int64_t{-101}}) {
    const std::vector<std::int64_t> labels = {1, 2, bad, 3};
    std::vector<float> logp(rows, 42.0f), lse(rows, 42.0f);
    auto call = [&] {
      consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                            make_view(logp.data(), rows), make_view(lse.data(), rows));
    };
    CHECK_THROWS_AS(call(), consr::error);
    CHECK(error_argument(call) == "labels");
    const std::string msg = error_message(call);
    INFO(msg);
    CHECK(msg.find("consr::token_logprobs") != std::string::npos);
    CHECK(msg.find("row 2 has label " + std::to_string(bad)) != std::string::npos);
    CHECK(msg.find("[0, 10)") != std::string::npos);
    for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
      CHECK(logp[i] == 42.0f);
      CHECK(lse[i] == 42.0f);
    }
    const std::vector<float> g(rows, 1.0f), fake_lse(rows, 1.0f);
    std::vector<float> grad(static_cast<std::size_t>(rows * vocab), 42.0f);
    auto back = [&] {
      consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                     make_view(fake_lse.data(), rows), make_view(g.data(), rows),
                                     make_view(grad.data(), rows, vocab));
    };
    CHECK(error_argument(back) == "labels");
    CHECK(error_message(back).find("row 2") != std::string::npos);
    for (const float x : grad) CHECK(x == 42.0f);
  }
  // int32 labels too.
  const std::vector<std::int32_t> labels32 = {0, 0, 0, 11};
  std::vector<float> logp(rows, 42.0f);
  auto call32 = [&] {
    consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels32.data(), rows),
                          make_view(logp.data(), rows));
  };
  CHECK(error_argument(call32) == "labels");
  CHECK(error_message(call32).find("row 3 has label 11") != std::string::npos);
  for (const float x : logp) CHECK(x == 42.0f);
}

TEST_CASE("NaN and +inf logits poison only their own row; -inf logits are fine", "[logprobs]") {
  const index_t rows = 6, vocab = 5000;
  const auto clean = random_logits<float>(rows, vocab, 2.0, 61);
  auto dirty = clean;
  auto at = [&](index_t i, index_t v) -> float& { return dirty[static_cast<std::size_t>(i * vocab + v)]; };
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  const float inf_f = std::numeric_limits<float>::infinity();
  at(1, 4321) = nan_f;  // NaN in a late block
  at(2, 17) = inf_f;    // +inf
  // Row 3: the first 3000 logits are -inf (whole blocks of them), the label's is finite.
  for (index_t v = 0; v < 3000; ++v) at(3, v) = -inf_f;
  // Row 4: -inf everywhere in the first block except a NaN, which the max may skip but must still poison.
  for (index_t v = 0; v < 2048; ++v) at(4, v) = -inf_f;
  at(4, 100) = nan_f;
  // Row 5: scattered -inf logits that are not the label.
  for (index_t v = 0; v < vocab; v += 7) at(5, v) = -inf_f;
  std::vector<std::int64_t> labels = random_labels<std::int64_t>(rows, vocab, 62);
  labels[3] = 4000;
  labels[5] = 3;  // 3 % 7 != 0: finite
  std::vector<float> logp_clean(rows), lse_clean(rows), logp(rows), lse(rows);
  consr::token_logprobs(make_view(clean.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp_clean.data(), rows), make_view(lse_clean.data(), rows));
  consr::token_logprobs(make_view(dirty.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows));
  CHECK(same_bits(logp[0], logp_clean[0]));
  CHECK(same_bits(lse[0], lse_clean[0]));
  CHECK(std::isnan(logp[1]));
  CHECK(std::isnan(lse[1]));
  CHECK(std::isnan(logp[2]));
  CHECK(std::isnan(lse[2]));
  CHECK(std::isnan(logp[4]));
  CHECK(std::isnan(lse[4]));
  for (const index_t i : {index_t{3}, index_t{5}}) {
    const auto idx = static_cast<std::size_t>(i);
    const reference_row ref = reference_logprob(dirty.data() + i * vocab, vocab, labels[idx], 1.0L);
    CHECK(std::isfinite(logp[idx]));
    CHECK(std::fabs(static_cast<double>(logp[idx] - ref.logp)) <= float_output_tolerance(ref.logp, 1e-6));
    CHECK(std::fabs(static_cast<double>(lse[idx] - ref.lse)) <= float_output_tolerance(ref.lse, 1e-6));
  }
  // The label's own logit being -inf gives -inf (log of probability 0).
  std::vector<std::int64_t> labels_neg = labels;
  labels_neg[5] = 0;
  consr::token_logprobs(make_view(dirty.data(), rows, vocab), make_view(labels_neg.data(), rows),
                        make_view(logp.data(), rows));
  CHECK(logp[5] == -std::numeric_limits<float>::infinity());
}

// ---------------------------------------------------------------------------------------------
// backward

TEST_CASE("token_logprobs_backward matches central finite differences in fp64", "[logprobs][backward]") {
  for (const double tau : {1.0, 0.7, 1.9}) {
    const index_t rows = 3, vocab = 23;
    auto logits = random_logits<double>(rows, vocab, 2.0, 71);
    const std::vector<std::int64_t> labels = {4, 0, 22};
    const auto g = random_upstream(rows, 72);
    std::vector<double> logp(rows), lse(rows);
    consr::logprob_options options;
    options.temperature = tau;
    consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                          make_view(logp.data(), rows), make_view(lse.data(), rows), options);
    std::vector<double> grad(static_cast<std::size_t>(rows * vocab));
    consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                   make_view(lse.data(), rows), make_view(g.data(), rows),
                                   make_view(grad.data(), rows, vocab), options);
    // L = sum_i g_i logp_i with logp from the long double reference, differentiated numerically.
    auto loss = [&](const std::vector<double>& z) {
      long double total = 0;
      for (index_t i = 0; i < rows; ++i)
        total += g[static_cast<std::size_t>(i)] *
                 reference_logprob(z.data() + i * vocab, vocab, labels[static_cast<std::size_t>(i)], tau).logp;
      return total;
    };
    const double h = 1e-5;
    for (std::size_t k = 0; k < logits.size(); ++k) {
      const double saved = logits[k];
      logits[k] = saved + h;
      const long double up = loss(logits);
      logits[k] = saved - h;
      const long double down = loss(logits);
      logits[k] = saved;
      const double numeric = static_cast<double>((up - down) / (2 * h));
      INFO("tau " << tau << " element " << k);
      CHECK(std::fabs(grad[k] - numeric) <= 1e-8);
    }
  }
}

template <class Logit, class Grad>
void check_backward_against_analytic(double tau, double rel_tol, double abs_tol = 1e-30) {
  using Acc = consr::accum_t<Logit>;
  const index_t rows = 5, vocab = 4099;
  const auto logits = random_logits<Logit>(rows, vocab, 3.0, 81);
  auto labels32 = random_labels<std::int32_t>(rows, vocab, 82);
  labels32[3] = -100;
  const std::vector<std::int64_t> labels(labels32.begin(), labels32.end());
  const auto g = cast_vector<Acc>(random_upstream(rows, 83));
  consr::logprob_options options;
  options.temperature = tau;
  std::vector<Acc> logp(rows), lse(rows);
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels32.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows), options);
  std::vector<Grad> grad(static_cast<std::size_t>(rows * vocab), from_double<Grad>(9.0));
  consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels32.data(), rows),
                                 make_view(lse.data(), rows), make_view(g.data(), rows),
                                 make_view(grad.data(), rows, vocab), options);
  const auto ref = reference_grad(logits, labels, std::vector<double>(g.begin(), g.end()), rows, vocab, tau);
  // Error sources: the stored lse (fp32: half an ulp of |lse| ~ 12, i.e. 5e-7, shifts every softmax
  // value by that much relatively), the exp (1 ulp) and the rounding of the output type.
  double worst = 0;
  for (index_t i = 0; i < rows; ++i) {
    for (index_t v = 0; v < vocab; ++v) {
      const auto k = static_cast<std::size_t>(i * vocab + v);
      const long double err = std::fabs(value_of(grad[k]) - ref[k]);
      const long double allowed = rel_tol * std::fabs(ref[k]) + abs_tol;
      if (!(err <= allowed)) {
        INFO("row " << i << " v " << v << " got " << static_cast<double>(value_of(grad[k])) << " ref "
                    << static_cast<double>(ref[k]));
        CHECK(err <= allowed);
      }
      if (ref[k] != 0 && std::fabs(ref[k]) >= 2048 * abs_tol)  // (for fp16: the normal range)
        worst = std::max(worst, static_cast<double>(err / std::fabs(ref[k])));
    }
  }
  INFO("worst relative error " << worst);
  CHECK(worst <= rel_tol);
}

TEST_CASE("token_logprobs_backward matches the analytic fp64 gradient", "[logprobs][backward]") {
  check_backward_against_analytic<float, float>(1.0, 4e-6);
  check_backward_against_analytic<float, float>(0.7, 4e-6);
  check_backward_against_analytic<float, double>(1.0, 4e-6);
  check_backward_against_analytic<bfloat16, float>(1.0, 4e-6);
  check_backward_against_analytic<bfloat16, float>(0.7, 4e-6);
  check_backward_against_analytic<float16, float>(1.3, 4e-6);
  check_backward_against_analytic<bfloat16, bfloat16>(1.0, 1.0 / 256 + 4e-6);  // bf16: 8 significant bits
  // fp16: 11 significant bits, and values below 2^-14 lose bits (subnormals), hence the absolute term.
  check_backward_against_analytic<float16, float16>(1.0, 1.0 / 2048 + 4e-6, std::ldexp(1.0, -25));
  check_backward_against_analytic<double, double>(0.7, 1e-13);
  check_backward_against_analytic<double, float>(1.0, 4e-7);
}

// The backward of random logits (seed) into a new array and in place on a copy of them: the same bits.
template <class T>
void check_in_place_backward(std::uint64_t seed, const consr::logprob_options& options) {
  const index_t rows = 7, vocab = 3000;
  auto labels = random_labels<std::int64_t>(rows, vocab, 92);
  labels[2] = -100;
  const auto g = cast_vector<float>(random_upstream(rows, 93));
  const auto logits = random_logits<T>(rows, vocab, 2.0, seed);
  std::vector<float> lse(rows), logp(rows);
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows), options);
  std::vector<T> out(logits.size());
  auto inplace = logits;
  for (std::vector<T>* into : {&out, &inplace}) {
    consr::token_logprobs_backward(make_view((into == &out ? logits : inplace).data(), rows, vocab),
                                   make_view(labels.data(), rows), make_view(lse.data(), rows),
                                   make_view(g.data(), rows), make_view(into->data(), rows, vocab), options);
  }
  for (std::size_t k = 0; k < out.size(); ++k) REQUIRE(same_bits(out[k], inplace[k]));
}

TEST_CASE("in-place backward equals out-of-place backward", "[logprobs][backward]") {
  SECTION("fp32") { check_in_place_backward<float>(91, {}); }
  SECTION("bf16 with temperature") {
    consr::logprob_options options;
    options.temperature = 0.8;
    check_in_place_backward<bfloat16>(94, options);
  }
}

TEST_CASE("backward writes strided gradient rows and nothing between them", "[logprobs][backward]") {
  const index_t rows = 4, vocab = 1500, stride = vocab + 11;
  const auto logits = random_logits<float>(rows, vocab, 2.0, 101);
  const auto labels = random_labels<std::int64_t>(rows, vocab, 102);
  const auto g = cast_vector<float>(random_upstream(rows, 103));
  std::vector<float> lse(rows), logp(rows);
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows));
  std::vector<float> dense(logits.size());
  consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                 make_view(lse.data(), rows), make_view(g.data(), rows),
                                 make_view(dense.data(), rows, vocab));
  std::vector<float> padded(static_cast<std::size_t>(rows * stride), 123.0f);
  consr::token_logprobs_backward(
      make_view(logits.data(), rows, vocab), make_view(labels.data(), rows), make_view(lse.data(), rows),
      make_view(g.data(), rows),
      make_strided_view(padded.data(), std::array<index_t, 2>{rows, vocab}, std::array<index_t, 2>{stride, 1}));
  for (index_t i = 0; i < rows; ++i) {
    for (index_t v = 0; v < stride; ++v) {
      const float got = padded[static_cast<std::size_t>(i * stride + v)];
      if (v < vocab) REQUIRE(same_bits(got, dense[static_cast<std::size_t>(i * vocab + v)]));
      else REQUIRE(got == 123.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// threads

TEST_CASE("results are bitwise identical with 1 and 2 threads", "[logprobs][threads]") {
#if CONSR_HAS_OPENMP
  const index_t rows = 41, vocab = 4100;  // above the parallel threshold
  const auto logits = random_logits<float>(rows, vocab, 3.0, 111);
  auto labels = random_labels<std::int64_t>(rows, vocab, 112);
  labels[0] = labels[1] = labels[2] = -100;  // uneven work
  const auto g = cast_vector<float>(random_upstream(rows, 113));
  const int saved = omp_get_max_threads();
  std::vector<float> logp[2], lse[2], grad[2];
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    logp[t].assign(rows, 0.0f);
    lse[t].assign(rows, 0.0f);
    grad[t].assign(logits.size(), 0.0f);
    consr::logprob_options options;
    options.temperature = 0.9;
    consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                          make_view(logp[t].data(), rows), make_view(lse[t].data(), rows), options);
    consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                   make_view(lse[t].data(), rows), make_view(g.data(), rows),
                                   make_view(grad[t].data(), rows, vocab), options);
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
    REQUIRE(same_bits(logp[0][i], logp[1][i]));
    REQUIRE(same_bits(lse[0][i], lse[1][i]));
  }
  for (std::size_t k = 0; k < logits.size(); ++k) REQUIRE(same_bits(grad[0][k], grad[1][k]));
#else
  WARN("built without OpenMP: nothing to compare");
#endif
}

// ---------------------------------------------------------------------------------------------
// argument checks

TEST_CASE("token_logprobs rejects bad shapes, strides and temperatures, naming the argument", "[logprobs][errors]") {
  const index_t rows = 3, vocab = 8;
  const auto logits = random_logits<float>(rows, vocab, 1.0, 121);
  const std::vector<std::int64_t> labels = {0, 1, 2, 3};
  std::vector<float> out(4, 42.0f), lse(4, 42.0f);
  const auto lv = make_view(logits.data(), rows, vocab);
  const auto yv = make_view(labels.data(), rows);
  const auto ov = make_view(out.data(), rows);
  CHECK(error_argument([&] { consr::token_logprobs(lv, make_view(labels.data(), 4), ov); }) == "labels");
  CHECK(error_argument([&] { consr::token_logprobs(lv, make_view(labels.data(), 2), ov); }) == "labels");
  CHECK(error_argument([&] { consr::token_logprobs(lv, yv, make_view(out.data(), 4)); }) == "token_logp");
  CHECK(error_argument([&] { consr::token_logprobs(lv, yv, ov, make_view(lse.data(), 2)); }) == "lse");
  CHECK(error_argument([&] {
          consr::token_logprobs(lv, yv, make_strided_view(out.data(), std::array<index_t, 1>{rows},
                                                           std::array<index_t, 1>{0}));
        }) == "token_logp");
  // Column-major logits: rows are not contiguous.
  const auto column_major =
      make_strided_view(logits.data(), std::array<index_t, 2>{rows, vocab}, std::array<index_t, 2>{1, rows});
  CHECK(error_argument([&] { consr::token_logprobs(column_major, yv, ov); }) == "logits");
  CHECK(error_message([&] { consr::token_logprobs(column_major, yv, ov); }).find("contiguous") != std::string::npos);
  for (const double tau : {0.0, -1.0, nan_v, inf_v}) {
    consr::logprob_options options;
    options.temperature = tau;
    INFO("tau " << tau);
    CHECK(error_argument([&] { consr::token_logprobs(lv, yv, ov, options); }) == "options.temperature");
    CHECK(error_message([&] { consr::token_logprobs(lv, yv, ov, options); }).find("temperature") !=
          std::string::npos);
  }
  for (const float x : out) CHECK(x == 42.0f);
  for (const float x : lse) CHECK(x == 42.0f);
  // Null data with a non-empty shape.
  CHECK(error_argument([&] {
          consr::token_logprobs(make_view(static_cast<const float*>(nullptr), rows, vocab), yv, ov);
        }) == "logits");
  // Zero rows is a valid no-op; all-ignored rows with V = 0 too.
  consr::token_logprobs(make_view(logits.data(), 0, vocab), make_view(labels.data(), 0), make_view(out.data(), 0));
  const std::vector<std::int64_t> ignored = {-100, -100};
  consr::token_logprobs(make_view(logits.data(), 2, 0), make_view(ignored.data(), 2), make_view(out.data(), 2));
  CHECK(out[0] == 0.0f);
  CHECK(out[1] == 0.0f);
}

TEST_CASE("token_logprobs_backward rejects bad shapes and overlap, naming the argument", "[logprobs][errors]") {
  const index_t rows = 3, vocab = 8;
  // One buffer one row longer than the logits, so that a view shifted by a row overlaps them.
  auto buffer = random_logits<float>(rows + 1, vocab, 1.0, 131);
  float* logits = buffer.data();
  const std::vector<std::int64_t> labels = {0, 1, 2};
  const std::vector<float> lse(4, 3.0f), g(4, 1.0f);
  std::vector<float> grad(static_cast<std::size_t>((rows + 1) * vocab), 42.0f);
  const auto lv = make_view(logits, rows, vocab);
  const auto yv = make_view(labels.data(), rows);
  const auto sv = make_view(lse.data(), rows);
  const auto gv = make_view(g.data(), rows);
  const auto dv = make_view(grad.data(), rows, vocab);
  auto backward = [&](auto&&... args) {
    return error_argument([&] { consr::token_logprobs_backward(args...); });
  };
  CHECK(backward(lv, make_view(labels.data(), 2), sv, gv, dv) == "labels");
  CHECK(backward(lv, yv, make_view(lse.data(), 4), gv, dv) == "lse");
  CHECK(backward(lv, yv, sv, make_view(g.data(), 2), dv) == "grad_token_logp");
  CHECK(backward(lv, yv, sv, gv, make_view(grad.data(), rows + 1, vocab)) == "grad_logits");
  CHECK(backward(lv, yv, sv, gv, make_view(grad.data(), rows, vocab - 1)) == "grad_logits");
  CHECK(backward(lv, yv, sv, gv,
                 make_strided_view(grad.data(), std::array<index_t, 2>{rows, vocab}, std::array<index_t, 2>{1, rows})) ==
        "grad_logits");
  CHECK(backward(lv, yv, sv, gv,
                 make_strided_view(grad.data(), std::array<index_t, 2>{rows, vocab}, std::array<index_t, 2>{4, 1})) ==
        "grad_logits");  // rows overlap each other
  CHECK(backward(make_strided_view(logits, std::array<index_t, 2>{rows, vocab}, std::array<index_t, 2>{1, rows}), yv,
                 sv, gv, dv) == "logits");
  consr::logprob_options options;
  options.temperature = -0.5;
  CHECK(error_argument([&] { consr::token_logprobs_backward(lv, yv, sv, gv, dv, options); }) ==
        "options.temperature");
  for (const float x : grad) CHECK(x == 42.0f);
  // Partial overlap with logits is an error (shifted by one element, or by one row); the very same
  // view is the in-place backward.
  const auto before = buffer;
  CHECK(backward(lv, yv, sv, gv, make_view(logits + 1, rows, vocab)) == "grad_logits");
  CHECK(backward(lv, yv, sv, gv, make_view(logits + vocab, rows, vocab)) == "grad_logits");
  CHECK(error_message([&] { consr::token_logprobs_backward(lv, yv, sv, gv, make_view(logits + vocab, rows, vocab)); })
            .find("overlaps logits") != std::string::npos);
  CHECK(buffer == before);
  CHECK(backward(lv, yv, sv, gv, make_view(logits, rows, vocab)) == "<no error>");
  CHECK(buffer != before);
}

// ---------------------------------------------------------------------------------------------
// token_logprobs_forward_backward: the outputs of the two calls, in one pass over each row

// The fused call against token_logprobs then token_logprobs_backward on the same inputs: every
// output bitwise the same (the same row functions run in the same order), out of place and in place.
template <class T>
void check_fused_equals_two_calls(index_t rows, index_t vocab, std::uint64_t seed,
                                  const consr::logprob_options& options) {
  using Acc = consr::accum_t<T>;
  auto labels = random_labels<std::int64_t>(rows, vocab, seed + 1);
  if (rows > 2) labels[1] = options.ignore_index;
  const auto g = cast_vector<Acc>(random_upstream(rows, seed + 2));
  const auto logits = random_logits<T>(rows, vocab, 3.0, seed);
  std::vector<Acc> logp(rows), lse(rows);
  consr::token_logprobs(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                        make_view(logp.data(), rows), make_view(lse.data(), rows), options);
  std::vector<T> grad(logits.size());
  consr::token_logprobs_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                 make_view(lse.data(), rows), make_view(g.data(), rows),
                                 make_view(grad.data(), rows, vocab), options);

  std::vector<Acc> fused_logp(rows, Acc(-7)), fused_lse(rows, Acc(-7));
  std::vector<T> fused_grad(logits.size(), from_double<T>(9.0));
  consr::token_logprobs_forward_backward(make_view(logits.data(), rows, vocab), make_view(labels.data(), rows),
                                         make_view(g.data(), rows), make_view(fused_logp.data(), rows),
                                         make_view(fused_lse.data(), rows), make_view(fused_grad.data(), rows, vocab),
                                         options);
  for (index_t i = 0; i < rows; ++i) {
    REQUIRE(same_bits(fused_logp[i], logp[i]));
    REQUIRE(same_bits(fused_lse[i], lse[i]));
  }
  for (std::size_t k = 0; k < grad.size(); ++k) REQUIRE(same_bits(fused_grad[k], grad[k]));

  // In place, and without the lse output.
  auto inplace = logits;
  std::vector<Acc> inplace_logp(rows, Acc(-7));
  consr::token_logprobs_forward_backward(make_view(inplace.data(), rows, vocab), make_view(labels.data(), rows),
                                         make_view(g.data(), rows), make_view(inplace_logp.data(), rows),
                                         consr::host_view<Acc, 1>{}, make_view(inplace.data(), rows, vocab), options);
  for (index_t i = 0; i < rows; ++i) REQUIRE(same_bits(inplace_logp[i], logp[i]));
  for (std::size_t k = 0; k < grad.size(); ++k) REQUIRE(same_bits(inplace[k], grad[k]));
}

TEST_CASE("token_logprobs_forward_backward writes exactly what the two calls write", "[logprobs][fused]") {
  consr::logprob_options tempered;
  tempered.temperature = 0.7;
  consr::logprob_options custom_ignore;
  custom_ignore.ignore_index = -1;
  SECTION("fp32, small rows") { check_fused_equals_two_calls<float>(9, 1000, 201, {}); }
  SECTION("fp32, Qwen2 vocabulary, temperature") { check_fused_equals_two_calls<float>(5, 152064, 211, tempered); }
  SECTION("bf16, custom ignore_index") { check_fused_equals_two_calls<bfloat16>(6, 32000, 221, custom_ignore); }
  SECTION("fp64") { check_fused_equals_two_calls<double>(4, 2049, 231, tempered); }
  SECTION("large enough for streaming stores and threads") {
    // 80 × 152064 fp32 = 46 MiB of gradient: above the streaming-store threshold, and split over threads.
    check_fused_equals_two_calls<float>(80, 152064, 241, {});
  }
}

TEST_CASE("token_logprobs_forward_backward rejects bad arguments, naming them, before writing", "[logprobs][fused][errors]") {
  const index_t rows = 3, vocab = 8;
  auto logits = random_logits<float>(rows, vocab, 1.0, 251);
  const std::vector<std::int64_t> labels = {0, 9, 2};  // row 1 out of range
  const std::vector<std::int64_t> good_labels = {0, 1, 2};
  std::vector<float> g(4, 1.0f), logp(4, 5.0f), lse(4, 5.0f);
  std::vector<float> grad(static_cast<std::size_t>(rows * vocab), 42.0f);
  const auto lv = make_view(logits.data(), rows, vocab);
  const auto gv = make_view(g.data(), rows);
  const auto pv = make_view(logp.data(), rows);
  const auto sv = make_view(lse.data(), rows);
  const auto dv = make_view(grad.data(), rows, vocab);
  auto fused = [&](auto&&... args) {
    return error_argument([&] { consr::token_logprobs_forward_backward(args...); });
  };
  CHECK(fused(lv, make_view(labels.data(), rows), gv, pv, sv, dv) == "labels");
  const auto yv = make_view(good_labels.data(), rows);
  CHECK(fused(lv, yv, make_view(g.data(), 2), pv, sv, dv) == "grad_token_logp");
  CHECK(fused(lv, yv, gv, make_view(logp.data(), 4), sv, dv) == "token_logp");
  CHECK(fused(lv, yv, gv, pv, make_view(lse.data(), 2), dv) == "lse");
  CHECK(fused(lv, yv, gv, pv, sv, make_view(grad.data(), rows, vocab - 1)) == "grad_logits");
  CHECK(fused(lv, yv, gv, make_view(g.data(), rows), sv, dv) == "token_logp");  // aliases grad_token_logp
  consr::logprob_options bad;
  bad.temperature = 0.0;
  CHECK(fused(lv, yv, gv, pv, sv, dv, bad) == "options.temperature");
  CHECK(std::all_of(grad.begin(), grad.end(), [](float v) { return v == 42.0f; }));
  CHECK(std::all_of(logp.begin(), logp.end(), [](float v) { return v == 5.0f; }));
  CHECK(fused(lv, yv, gv, pv, sv, dv) == "<no error>");
}
