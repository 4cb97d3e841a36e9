// Tests for consr/linear_logprobs.hpp (spec §4, last paragraph): token log-probs and their gradients
// from hidden states × output projection, in vocabulary chunks.
//
// References are written independently of the library: the materialized logits h Wᵀ + b, log-softmax
// and its gradient in long double plain loops over the exact input values (bf16/fp16: the rounded
// values); central finite differences in fp64; and consr's own materialized path (token_logprobs and
// token_logprobs_backward on full logits). Every GEMM policy available to the build is run.
#include <catch2/catch.hpp>

#include <consr/linear_logprobs.hpp>
#include <consr/logprobs.hpp>
#if CONSR_TEST_EIGEN_GEMM
#include <consr/adapters/eigen_gemm.hpp>
#endif
#if CONSR_TEST_CBLAS_GEMM
#include <consr/adapters/cblas_gemm.hpp>
#endif

#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

// Test cases (at global scope) spell consr::bfloat16 / consr::float16 out: OpenBLAS's <cblas.h>,
// included by cblas_gemm.hpp, declares a global `bfloat16` that would make the bare name ambiguous.
using consr::bfloat16;
using consr::float16;
using consr::host_view;
using consr::index_t;
using consr::linear_logprob_options;
using consr::make_strided_view;
using consr::make_view;

using consr_test::error_argument;
using consr_test::error_message;
using consr_test::from_double;
using consr_test::inf_v;
using consr_test::nan_v;
using consr_test::same_bits;
using consr_test::value_of;

using ld = long double;

// Runs `f(policy, name)` for every GEMM policy this build has.
template <class F>
void for_each_policy(F&& f) {
  f(consr::loop_gemm{}, "loop_gemm");
#if CONSR_TEST_EIGEN_GEMM
  f(consr::eigen_gemm{}, "eigen_gemm");
#endif
#if CONSR_TEST_CBLAS_GEMM
  f(consr::cblas_gemm{}, "cblas_gemm");
#endif
}

// ---------------------------------------------------------------------------------------------
// problems and the long double reference

template <class T>
struct problem {
  using acc = consr::accum_t<T>;
  index_t n = 0, h = 0, v = 0;
  std::vector<T> hidden, weight, bias;  // bias empty: no bias
  std::vector<std::int64_t> labels;
  std::vector<acc> upstream;            // g = ∂L/∂logp

  host_view<const T, 2> hidden_view() const { return make_view(hidden.data(), n, h); }
  host_view<const T, 2> weight_view() const { return make_view(weight.data(), v, h); }
  host_view<const T, 1> bias_view() const { return bias.empty() ? host_view<const T, 1>{} : make_view(bias.data(), v); }
  host_view<const std::int64_t, 1> labels_view() const { return make_view(labels.data(), n); }
};

// Logits of realistic size (std ≈ logit_std, like a language model's), labels uniform, and with
// `ignored` rows labelled -100 (every third row from row 1) when requested.
template <class T>
problem<T> make_problem(index_t n, index_t h, index_t v, bool with_bias, std::uint64_t seed, bool ignored = true,
                        double logit_std = 2.0) {
  problem<T> p;
  p.n = n;
  p.h = h;
  p.v = v;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  p.hidden.resize(static_cast<std::size_t>(n * h));
  for (auto& x : p.hidden) x = from_double<T>(normal(gen));
  const double w_std = h > 0 ? logit_std / std::sqrt(static_cast<double>(h)) : 0.0;
  p.weight.resize(static_cast<std::size_t>(v * h));
  for (auto& x : p.weight) x = from_double<T>(w_std * normal(gen));
  if (with_bias) {
    p.bias.resize(static_cast<std::size_t>(v));
    for (auto& x : p.bias) x = from_double<T>(0.5 * normal(gen));
  }
  std::uniform_int_distribution<std::int64_t> pick(0, std::max<index_t>(v - 1, 0));
  p.labels.resize(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const bool skip = v == 0 || (ignored && n > 2 && i % 3 == 1);
    p.labels[static_cast<std::size_t>(i)] = skip ? -100 : pick(gen);
  }
  p.upstream.resize(static_cast<std::size_t>(n));
  for (auto& g : p.upstream) g = static_cast<typename problem<T>::acc>(normal(gen));
  return p;
}

// The materialized path in long double, plus first-order error bounds for an fp32 computation of the
// same quantities from the same inputs (used only for fp32/bf16/fp16; see fp32_bounds below).
struct reference {
  std::vector<ld> logp, lse, grad_hidden, grad_weight, grad_bias;
  // fp32 bounds (absolute, per element)
  std::vector<ld> logp_bound, grad_hidden_bound, grad_weight_bound, grad_bias_bound;
};

// Error model of the fp32 path (u = 2^-24, γ_k = k·u / (1 − k·u)), the standard worst-case bounds:
//  - a GEMM logit Σ_k h_k w_vk, then + b: |e_iv| ≤ γ_H · Σ_k |h_ik w_vk| + u · |logit_iv|;
//  - lse is 1-Lipschitz in the max-norm, so |Δlogp_i| ≤ (|e_iy| + max_v |e_iv|) / τ, plus 1e-6 for the
//    fp32 exp-sum (consr/logprobs.hpp's own test bound) and half an ulp of the stored result;
//  - each softmax entry then has relative error ≤ ρ_i = 2·max_v|e_iv|/τ + 2u(|lse_i| + 4) (the stored
//    fp32 lse, exp's 1.2 ulp), so |ΔG_iv| ≤ ρ_i |g_i/τ| p_iv, and the gradient GEMMs add γ_{K+1}·Σ|G||x|.
template <class T>
reference compute_reference(const problem<T>& p, double tau_d, std::int64_t ignore_index) {
  const ld tau = tau_d;
  const index_t n = p.n, h = p.h, v = p.v;
  const ld u = std::ldexp(1.0L, -24);
  const auto gamma = [u](index_t k) { return static_cast<ld>(k) * u / (1 - static_cast<ld>(k) * u); };
  reference r;
  r.logp.assign(n, 0);
  r.lse.assign(n, 0);
  r.grad_hidden.assign(n * h, 0);
  r.grad_weight.assign(v * h, 0);
  r.grad_bias.assign(v, 0);
  r.logp_bound.assign(n, 0);
  r.grad_hidden_bound.assign(n * h, 0);
  r.grad_weight_bound.assign(v * h, 0);
  r.grad_bias_bound.assign(v, 0);
  std::vector<ld> logits(v), err(v), prob(v), grad(v), grad_scale(v);
  for (index_t i = 0; i < n; ++i) {
    const std::int64_t y = p.labels[i];
    if (y == ignore_index) continue;
    ld emax = 0;
    for (index_t c = 0; c < v; ++c) {
      ld s = 0, a = 0;
      for (index_t k = 0; k < h; ++k) {
        const ld term = value_of(p.hidden[i * h + k]) * value_of(p.weight[c * h + k]);
        s += term;
        a += std::fabs(term);
      }
      if (!p.bias.empty()) s += value_of(p.bias[c]);
      logits[c] = s;
      err[c] = gamma(h) * a + u * std::fabs(s);
      emax = std::max(emax, err[c]);
    }
    ld m = -std::numeric_limits<ld>::infinity();
    for (index_t c = 0; c < v; ++c) m = std::max(m, logits[c] / tau);
    ld sum = 0;
    for (index_t c = 0; c < v; ++c) sum += std::exp(logits[c] / tau - m);
    const ld lse = m + std::log(sum);
    r.lse[i] = lse;
    r.logp[i] = logits[y] / tau - lse;
    r.logp_bound[i] = (err[y] + emax) / tau;
    const ld g = p.upstream[i];
    const ld rho = 2 * emax / tau + 2 * u * (std::fabs(lse) + 4);
    for (index_t c = 0; c < v; ++c) {
      prob[c] = std::exp(logits[c] / tau - lse);
      grad[c] = g / tau * ((c == y ? 1 : 0) - prob[c]);
      grad_scale[c] = rho * std::fabs(g / tau) * prob[c];
    }
    for (index_t c = 0; c < v; ++c) {
      r.grad_bias[c] += grad[c];
      r.grad_bias_bound[c] += grad_scale[c] + gamma(n + 1) * std::fabs(grad[c]);
      for (index_t k = 0; k < h; ++k) {
        const ld hv = value_of(p.hidden[i * h + k]);
        const ld wv = value_of(p.weight[c * h + k]);
        r.grad_hidden[i * h + k] += grad[c] * wv;
        r.grad_hidden_bound[i * h + k] += (grad_scale[c] + gamma(v + 1) * std::fabs(grad[c])) * std::fabs(wv);
        r.grad_weight[c * h + k] += grad[c] * hv;
        r.grad_weight_bound[c * h + k] += (grad_scale[c] + gamma(n + 1) * std::fabs(grad[c])) * std::fabs(hv);
      }
    }
  }
  return r;
}

// Half an ulp of an fp32 value of magnitude |x|: no stored float can be closer than that.
double half_ulp_float(ld x) {
  const float f = static_cast<float>(std::fabs(static_cast<double>(x)));
  return 0.5 * (static_cast<double>(std::nextafter(f, std::numeric_limits<float>::infinity())) - static_cast<double>(f));
}

// ---------------------------------------------------------------------------------------------
// running the library

template <class T>
struct outputs {
  using acc = consr::accum_t<T>;
  std::vector<acc> logp, lse, grad_hidden, grad_weight, grad_bias;
};

// Forward then backward with `Gemm`; grad_weight / grad_bias start from `grad_init` (they accumulate).
template <class Gemm, class T>
outputs<T> run(const problem<T>& p, const linear_logprob_options& options, double grad_init = 0.0) {
  using Acc = consr::accum_t<T>;
  outputs<T> o;
  o.logp.assign(p.n, Acc(-7));
  o.lse.assign(p.n, Acc(-7));
  consr::linear_token_logprobs<Gemm>(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                     make_view(o.logp.data(), p.n), make_view(o.lse.data(), p.n), options);
  o.grad_hidden.assign(p.n * p.h, Acc(-7));  // overwritten
  o.grad_weight.assign(p.v * p.h, static_cast<Acc>(grad_init));
  o.grad_bias.assign(p.v, static_cast<Acc>(grad_init));
  consr::linear_token_logprobs_backward<Gemm>(
      p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), make_view(o.lse.data(), p.n),
      make_view(p.upstream.data(), p.n), make_view(o.grad_hidden.data(), p.n, p.h),
      make_view(o.grad_weight.data(), p.v, p.h), make_view(o.grad_bias.data(), p.v), options);
  return o;
}

struct worst_error {
  double logp = 0, lse = 0;
  double grad = 0;  // relative to max(1, |gradient|): gradients reach ~6 in magnitude
};

// Compares against the reference: fp64 within `tol64` absolute; fp32 within the error model's bound.
template <class T>
worst_error compare(const problem<T>& p, const outputs<T>& o, const reference& r, double grad_init, double tol64) {
  using Acc = consr::accum_t<T>;
  constexpr bool is64 = std::is_same_v<Acc, double>;
  worst_error w;
  for (index_t i = 0; i < p.n; ++i) {
    if (p.labels[i] == -100) {
      CHECK(o.logp[i] == Acc(0));
      CHECK(o.lse[i] == Acc(0));
    }
    const double e_logp = std::fabs(static_cast<double>(o.logp[i] - r.logp[i]));
    const double e_lse = std::fabs(static_cast<double>(o.lse[i] - r.lse[i]));
    const double b_logp = is64 ? tol64 : static_cast<double>(r.logp_bound[i]) + 1e-6 + half_ulp_float(r.logp[i]);
    const double b_lse = is64 ? tol64 : static_cast<double>(r.logp_bound[i]) + 1e-6 + half_ulp_float(r.lse[i]);
    INFO("row " << i << " logp " << o.logp[i] << " ref " << static_cast<double>(r.logp[i]) << " lse " << o.lse[i]
                << " ref " << static_cast<double>(r.lse[i]));
    CHECK(e_logp <= b_logp);
    CHECK(e_lse <= b_lse);
    w.logp = std::max(w.logp, e_logp);
    w.lse = std::max(w.lse, e_lse);
  }
  // A gradient accumulated onto `init` by a GEMM of depth K rounds against init up to K + 1 times.
  const auto check_grad = [&](const std::vector<Acc>& got, const std::vector<ld>& ref, const std::vector<ld>& bound,
                              ld init, index_t depth, const char* what) {
    const ld u = std::ldexp(1.0L, -24);
    const ld init_error = static_cast<ld>(depth + 2) * u * std::fabs(init);
    for (std::size_t k = 0; k < got.size(); ++k) {
      const ld expected = ref[k] + init;
      const double e = std::fabs(static_cast<double>(got[k] - expected));
      const double b = is64 ? tol64 : static_cast<double>(bound[k] + init_error + u * std::fabs(expected)) + 1e-30;
      if (!(e <= b)) {
        INFO(what << "[" << k << "] = " << got[k] << " expected " << static_cast<double>(expected) << " bound " << b);
        CHECK(e <= b);
      }
      w.grad = std::max(w.grad, e / std::max(1.0, static_cast<double>(std::fabs(expected))));
    }
  };
  check_grad(o.grad_hidden, r.grad_hidden, r.grad_hidden_bound, 0, p.v, "grad_hidden");
  check_grad(o.grad_weight, r.grad_weight, r.grad_weight_bound, grad_init, p.n, "grad_weight");
  check_grad(o.grad_bias, r.grad_bias, r.grad_bias_bound, grad_init, p.n, "grad_bias");
  return w;
}

struct shape {
  index_t n, h, v;
};

// Shapes and chunk sizes: chunks that divide V and that do not, chunk 1, chunk > V, V = 1, H = 1, N = 1.
const shape shapes[] = {{1, 1, 1}, {1, 7, 13}, {5, 1, 9}, {7, 16, 100}, {13, 33, 257}, {2, 64, 64}};
const index_t chunks[] = {1, 3, 4, 50, 64, 100, 4096};

template <class T>
void sweep_against_reference(double tol64, double fp32_abs_target) {
  for_each_policy([&](auto policy, const char* name) {
    using Gemm = decltype(policy);
    worst_error worst;
    std::uint64_t seed = 1000;
    for (const shape& s : shapes) {
      for (const bool with_bias : {false, true}) {
        for (const double tau : {1.0, 0.7}) {
          const problem<T> p = make_problem<T>(s.n, s.h, s.v, with_bias, ++seed);
          const reference r = compute_reference(p, tau, -100);
          for (const index_t chunk : chunks) {
            if (chunk > 2 * s.v && chunk != 4096) continue;
            linear_logprob_options options;
            options.temperature = tau;
            options.vocab_chunk = chunk;
            INFO(name << " N=" << s.n << " H=" << s.h << " V=" << s.v << " chunk=" << chunk << " bias=" << with_bias
                      << " tau=" << tau);
            const outputs<T> o = run<Gemm>(p, options, 0.25);
            const worst_error w = compare(p, o, r, 0.25, tol64);
            worst.logp = std::max(worst.logp, w.logp);
            worst.lse = std::max(worst.lse, w.lse);
            worst.grad = std::max(worst.grad, w.grad);
          }
        }
      }
    }
    INFO(name << ": worst |Δlogp| " << worst.logp << ", |Δlse| " << worst.lse << ", |Δgrad| " << worst.grad);
    // Beyond the per-element bounds: at realistic logit scales the fp32 path is well within 1e-5 (the
    // number the issue asks for); the bounds above are worst cases and much looser.
    CHECK(worst.logp <= fp32_abs_target);
    CHECK(worst.lse <= fp32_abs_target);
    CHECK(worst.grad <= fp32_abs_target);
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// values against the long double materialized reference

TEST_CASE("fp64: log-probs and gradients match the long double reference within 1e-10", "[linear_logprobs]") {
  sweep_against_reference<double>(1e-10, 1e-10);
}

TEST_CASE("fp32: within the GEMM rounding bound of the reference, and within 1e-5", "[linear_logprobs]") {
  sweep_against_reference<float>(0.0, 1e-5);
}

TEST_CASE("bf16 and fp16 inputs: within the fp32 bound of the reference of the rounded inputs", "[linear_logprobs]") {
  sweep_against_reference<consr::bfloat16>(0.0, 1e-5);
  sweep_against_reference<consr::float16>(0.0, 1e-5);
}

TEST_CASE("fp32 at a wider vocabulary with several chunks: within bound and 1e-5", "[linear_logprobs]") {
  for_each_policy([&](auto policy, const char* name) {
    using Gemm = decltype(policy);
    const problem<float> p = make_problem<float>(9, 96, 5000, true, 77);
    const reference r = compute_reference(p, 1.0, -100);
    for (const index_t chunk : {index_t{2048}, index_t{1000}, index_t{4096}}) {
      linear_logprob_options options;
      options.vocab_chunk = chunk;
      INFO(name << " chunk " << chunk);
      const worst_error w = compare(p, run<Gemm>(p, options), r, 0.0, 0.0);
      CHECK(w.logp <= 1e-5);
      CHECK(w.lse <= 1e-5);
      CHECK(w.grad <= 1e-5);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// against consr's own materialized path and finite differences

TEST_CASE("equals consr::token_logprobs (+ backward) on the materialized logits", "[linear_logprobs]") {
  // fp64: materialize logits = h Wᵀ + b with plain loops, then the logits API of consr/logprobs.hpp.
  const index_t n = 11, h = 24, v = 300;
  for (const double tau : {1.0, 1.3}) {
    const problem<double> p = make_problem<double>(n, h, v, true, 5 + static_cast<std::uint64_t>(tau * 10));
    std::vector<double> logits(n * v);
    for (index_t i = 0; i < n; ++i)
      for (index_t c = 0; c < v; ++c) {
        double s = 0;
        for (index_t k = 0; k < h; ++k) s += p.hidden[i * h + k] * p.weight[c * h + k];
        logits[i * v + c] = s + p.bias[c];
      }
    consr::logprob_options lo;
    lo.temperature = tau;
    std::vector<double> logp_m(n), lse_m(n), grad_logits(n * v);
    consr::token_logprobs(make_view(logits.data(), n, v), p.labels_view(), make_view(logp_m.data(), n),
                          make_view(lse_m.data(), n), lo);
    consr::token_logprobs_backward(make_view(logits.data(), n, v), p.labels_view(), make_view(lse_m.data(), n),
                                   make_view(p.upstream.data(), n), make_view(grad_logits.data(), n, v), lo);
    std::vector<double> dh(n * h, 0.0), dw(v * h, 0.0), db(v, 0.0);
    for (index_t i = 0; i < n; ++i)
      for (index_t c = 0; c < v; ++c) {
        const double gic = grad_logits[i * v + c];
        db[c] += gic;
        for (index_t k = 0; k < h; ++k) {
          dh[i * h + k] += gic * p.weight[c * h + k];
          dw[c * h + k] += gic * p.hidden[i * h + k];
        }
      }
    for (const index_t chunk : {index_t{7}, index_t{100}, index_t{300}}) {
      linear_logprob_options options;
      options.temperature = tau;
      options.vocab_chunk = chunk;
      const outputs<double> o = run<consr::loop_gemm>(p, options);
      INFO("tau " << tau << " chunk " << chunk);
      for (index_t i = 0; i < n; ++i) {
        CHECK(std::fabs(o.logp[i] - logp_m[i]) <= 1e-12);
        CHECK(std::fabs(o.lse[i] - lse_m[i]) <= 1e-12);
      }
      for (std::size_t k = 0; k < dh.size(); ++k) CHECK(std::fabs(o.grad_hidden[k] - dh[k]) <= 1e-12);
      for (std::size_t k = 0; k < dw.size(); ++k) CHECK(std::fabs(o.grad_weight[k] - dw[k]) <= 1e-12);
      for (std::size_t k = 0; k < db.size(); ++k) CHECK(std::fabs(o.grad_bias[k] - db[k]) <= 1e-12);
    }
  }
  // fp32, loop_gemm: the chunk logits are the very floats a full GEMM gives (each dot product does not
  // depend on the chunk), so only the exp-sum order differs from token_logprobs: within 1e-6 + ½ ulp.
  const problem<float> pf = make_problem<float>(6, 40, 6000, true, 99);
  std::vector<float> logits_f(6 * 6000);
  consr::loop_gemm::gemm_nt<float>(6, 6000, 40, 1.0f, pf.hidden.data(), 40, pf.weight.data(), 40, 0.0f,
                                   logits_f.data(), 6000);
  for (index_t i = 0; i < 6; ++i)
    for (index_t c = 0; c < 6000; ++c) logits_f[i * 6000 + c] += pf.bias[c];
  std::vector<float> logp_m(6), lse_m(6);
  consr::token_logprobs(make_view(logits_f.data(), 6, 6000), pf.labels_view(), make_view(logp_m.data(), 6),
                        make_view(lse_m.data(), 6));
  for (const index_t chunk : {index_t{2048}, index_t{4096}, index_t{999}}) {
    linear_logprob_options options;
    options.vocab_chunk = chunk;
    const outputs<float> o = run<consr::loop_gemm>(pf, options);
    for (index_t i = 0; i < 6; ++i) {
      INFO("chunk " << chunk << " row " << i);
      CHECK(std::fabs(static_cast<double>(o.logp[i]) - logp_m[i]) <= 1e-6 + half_ulp_float(logp_m[i]));
      CHECK(std::fabs(static_cast<double>(o.lse[i]) - lse_m[i]) <= 1e-6 + half_ulp_float(lse_m[i]));
    }
  }
}

TEST_CASE("fp64 gradients match central finite differences", "[linear_logprobs][backward]") {
  for_each_policy([&](auto policy, const char* name) {
    using Gemm = decltype(policy);
    for (const double tau : {1.0, 0.6}) {
      const index_t n = 6, h = 9, v = 37;
      problem<double> p = make_problem<double>(n, h, v, true, 300 + static_cast<std::uint64_t>(tau * 10));
      linear_logprob_options options;
      options.temperature = tau;
      options.vocab_chunk = 8;  // does not divide 37
      const outputs<double> o = run<Gemm>(p, options);
      // L = Σ_i g_i logp_i, from the forward alone.
      const auto loss = [&](const problem<double>& q) {
        std::vector<double> logp(n);
        consr::linear_token_logprobs<Gemm>(q.hidden_view(), q.weight_view(), q.bias_view(), q.labels_view(),
                                           make_view(logp.data(), n), host_view<double, 1>{}, options);
        double l = 0;
        for (index_t i = 0; i < n; ++i) l += p.upstream[i] * logp[i];
        return l;
      };
      const double step = 1e-6;
      const auto fd = [&](std::vector<double>& param, std::size_t k) {
        const double saved = param[k];
        param[k] = saved + step;
        const double up = loss(p);
        param[k] = saved - step;
        const double down = loss(p);
        param[k] = saved;
        return (up - down) / (2 * step);
      };
      INFO(name << " tau " << tau);
      for (std::size_t k = 0; k < p.hidden.size(); k += 5) {
        const double expected = fd(p.hidden, k);
        INFO("hidden " << k);
        CHECK(std::fabs(o.grad_hidden[k] - expected) <= 1e-7 * (1 + std::fabs(expected)));
      }
      for (std::size_t k = 0; k < p.weight.size(); k += 7) {
        const double expected = fd(p.weight, k);
        INFO("weight " << k);
        CHECK(std::fabs(o.grad_weight[k] - expected) <= 1e-7 * (1 + std::fabs(expected)));
      }
      for (std::size_t k = 0; k < p.bias.size(); ++k) {
        const double expected = fd(p.bias, k);
        INFO("bias " << k);
        CHECK(std::fabs(o.grad_bias[k] - expected) <= 1e-7 * (1 + std::fabs(expected)));
      }
      // Ignored rows have no gradient.
      for (index_t i = 0; i < n; ++i)
        if (p.labels[i] == -100)
          for (index_t k = 0; k < h; ++k) CHECK(o.grad_hidden[i * h + k] == 0.0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// semantics: ignore_index, accumulation, optional outputs, workspace, strides, threads, edge sizes

TEST_CASE("ignore_index: default and custom (even a valid vocabulary id)", "[linear_logprobs]") {
  problem<double> p = make_problem<double>(6, 5, 20, false, 41, /*ignored=*/false);
  p.labels = {3, 7, 7, 0, 19, 7};
  linear_logprob_options options;
  options.ignore_index = 7;
  options.vocab_chunk = 6;
  const outputs<double> o = run<consr::loop_gemm>(p, options);
  const reference r = compute_reference(p, 1.0, 7);
  for (index_t i = 0; i < 6; ++i) {
    if (p.labels[i] == 7) {
      CHECK(o.logp[i] == 0.0);
      CHECK(o.lse[i] == 0.0);
      for (index_t k = 0; k < 5; ++k) CHECK(o.grad_hidden[i * 5 + k] == 0.0);
    } else {
      CHECK(std::fabs(o.logp[i] - static_cast<double>(r.logp[i])) <= 1e-12);
    }
  }
  for (std::size_t k = 0; k < r.grad_weight.size(); ++k)
    CHECK(std::fabs(o.grad_weight[k] - static_cast<double>(r.grad_weight[k])) <= 1e-12);
  // A label of -100 is out of range when ignore_index is 7.
  p.labels[0] = -100;
  std::vector<double> logp(6);
  CHECK(error_argument([&] {
          consr::linear_token_logprobs(p.hidden_view(), p.weight_view(), {}, p.labels_view(),
                                       make_view(logp.data(), 6), host_view<double, 1>{}, options);
        }) == "labels");
}

TEST_CASE("grad_weight and grad_bias accumulate, grad_hidden is overwritten; outputs can be skipped",
          "[linear_logprobs][backward]") {
  const problem<float> p = make_problem<float>(8, 12, 50, true, 61);
  linear_logprob_options options;
  options.vocab_chunk = 16;
  const outputs<float> once = run<consr::loop_gemm>(p, options);
  // Second backward into the same buffers: weight/bias gradients double, hidden gradient unchanged.
  outputs<float> twice = once;
  std::fill(twice.grad_weight.begin(), twice.grad_weight.end(), 0.0f);
  std::fill(twice.grad_bias.begin(), twice.grad_bias.end(), 0.0f);
  for (int rep = 0; rep < 2; ++rep)
    consr::linear_token_logprobs_backward(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                          make_view(once.lse.data(), 8), make_view(p.upstream.data(), 8),
                                          make_view(twice.grad_hidden.data(), 8, 12),
                                          make_view(twice.grad_weight.data(), 50, 12),
                                          make_view(twice.grad_bias.data(), 50), options);
  for (std::size_t k = 0; k < once.grad_hidden.size(); ++k) CHECK(same_bits(twice.grad_hidden[k], once.grad_hidden[k]));
  // The GEMM accumulates into grad_weight term by term, so the second pass rounds against the first's value.
  for (std::size_t k = 0; k < once.grad_weight.size(); ++k)
    CHECK(std::fabs(twice.grad_weight[k] - 2 * once.grad_weight[k]) <= 1e-6f * (1 + std::fabs(once.grad_weight[k])));
  // grad_bias adds each chunk's column sums once: exactly twice.
  for (std::size_t k = 0; k < once.grad_bias.size(); ++k) CHECK(same_bits(twice.grad_bias[k], 2 * once.grad_bias[k]));

  // Only grad_hidden (a frozen head): the same values.
  std::vector<float> dh(8 * 12, 42.0f);
  consr::linear_token_logprobs_backward(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                        make_view(once.lse.data(), 8), make_view(p.upstream.data(), 8),
                                        make_view(dh.data(), 8, 12), {}, {}, options);
  for (std::size_t k = 0; k < dh.size(); ++k) CHECK(same_bits(dh[k], once.grad_hidden[k]));
  // Only grad_weight / only grad_bias.
  std::vector<float> dw(50 * 12, 0.0f), db(50, 0.0f);
  consr::linear_token_logprobs_backward(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                        make_view(once.lse.data(), 8), make_view(p.upstream.data(), 8), {},
                                        make_view(dw.data(), 50, 12), {}, options);
  consr::linear_token_logprobs_backward(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                        make_view(once.lse.data(), 8), make_view(p.upstream.data(), 8), {}, {},
                                        make_view(db.data(), 50), options);
  for (std::size_t k = 0; k < dw.size(); ++k) CHECK(same_bits(dw[k], once.grad_weight[k]));
  for (std::size_t k = 0; k < db.size(); ++k) CHECK(same_bits(db[k], once.grad_bias[k]));
}

TEST_CASE("workspace: size formula, caller-provided (unaligned) equals allocated", "[linear_logprobs]") {
  // The size: N = 1024, H = 3584, V = 152064, fp32, default chunk 4096.
  const auto a64 = [](std::size_t x) { return (x + 63) / 64 * 64; };
  const std::size_t expected_fwd = 63 + a64(1024u * 4096u * 4u) + 3 * a64(1024u * 8u);
  const std::size_t expected_bwd = 63 + a64(1024u * 4096u * 4u);
  CHECK(consr::linear_token_logprobs_workspace_bytes<float>(1024, 3584, 152064) == expected_fwd);
  CHECK(consr::linear_token_logprobs_backward_workspace_bytes<float>(1024, 3584, 152064) == expected_bwd);
  CHECK(expected_fwd * 20 < std::size_t{1024} * 152064 * 4);  // at least 20× below the logits alone
  // bf16 adds the widened hidden states and one widened chunk of W; chunk clamps to V.
  linear_logprob_options small;
  small.vocab_chunk = 100;
  CHECK(consr::linear_token_logprobs_workspace_bytes<consr::bfloat16>(10, 30, 70, small) ==
        63 + a64(10 * 70 * 4) + 3 * a64(80) + a64(10 * 30 * 4) + a64(70 * 30 * 4));
  CHECK(consr::linear_token_logprobs_backward_workspace_bytes<double>(10, 30, 70, small) == 63 + a64(10 * 70 * 8));
  small.vocab_chunk = 0;
  CHECK(error_argument([&] { consr::linear_token_logprobs_workspace_bytes<float>(1, 1, 1, small); }) ==
        "options.vocab_chunk");
  CHECK(error_argument([] { consr::linear_token_logprobs_workspace_bytes<float>(-1, 1, 1); }) == "tokens");

  const problem<consr::bfloat16> p = make_problem<consr::bfloat16>(7, 10, 45, true, 91);
  linear_logprob_options options;
  options.vocab_chunk = 16;
  options.temperature = 0.8;
  const outputs<consr::bfloat16> allocated = run<consr::loop_gemm>(p, options);
  const std::size_t fwd_bytes = consr::linear_token_logprobs_workspace_bytes<consr::bfloat16>(7, 10, 45, options);
  const std::size_t bwd_bytes =
      consr::linear_token_logprobs_backward_workspace_bytes<consr::bfloat16>(7, 10, 45, options);
  std::vector<std::byte> storage(std::max(fwd_bytes, bwd_bytes) + 3, std::byte{0xAB});
  std::byte* base = storage.data() + 3;  // deliberately misaligned
  std::vector<float> logp(7), lse(7), dh(70, 42.0f), dw(450, 0.0f), db(45, 0.0f);
  consr::linear_token_logprobs(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                               make_view(logp.data(), 7), make_view(lse.data(), 7), options,
                               make_view(base, static_cast<index_t>(fwd_bytes)));
  consr::linear_token_logprobs_backward(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                        make_view(lse.data(), 7), make_view(p.upstream.data(), 7),
                                        make_view(dh.data(), 7, 10), make_view(dw.data(), 45, 10),
                                        make_view(db.data(), 45), options,
                                        make_view(base, static_cast<index_t>(bwd_bytes)));
  for (int i = 0; i < 7; ++i) CHECK(same_bits(logp[i], allocated.logp[i]));
  for (int i = 0; i < 7; ++i) CHECK(same_bits(lse[i], allocated.lse[i]));
  for (std::size_t k = 0; k < dh.size(); ++k) CHECK(same_bits(dh[k], allocated.grad_hidden[k]));
  for (std::size_t k = 0; k < dw.size(); ++k) CHECK(same_bits(dw[k], allocated.grad_weight[k]));
  for (std::size_t k = 0; k < db.size(); ++k) CHECK(same_bits(db[k], allocated.grad_bias[k]));
  // A workspace one byte short is rejected before anything is written.
  std::vector<float> untouched(7, 42.0f);
  const std::string msg = error_message([&] {
    consr::linear_token_logprobs(p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
                                 make_view(untouched.data(), 7), host_view<float, 1>{}, options,
                                 make_view(base, static_cast<index_t>(fwd_bytes - 1)));
  });
  CHECK(msg.find("argument 'workspace'") != std::string::npos);
  CHECK(msg.find(std::to_string(fwd_bytes)) != std::string::npos);
  for (const float x : untouched) CHECK(x == 42.0f);
}

TEST_CASE("strided rows: reads nothing between rows, writes nothing between gradient rows", "[linear_logprobs]") {
  const index_t n = 5, h = 6, v = 23, pad = 3;
  const problem<float> p = make_problem<float>(n, h, v, true, 71);
  // Copies with NaN between rows: a read of the padding would poison the results.
  std::vector<float> hs(n * (h + pad), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> ws(v * (h + pad), std::numeric_limits<float>::quiet_NaN());
  for (index_t i = 0; i < n; ++i) std::copy_n(p.hidden.data() + i * h, h, hs.data() + i * (h + pad));
  for (index_t c = 0; c < v; ++c) std::copy_n(p.weight.data() + c * h, h, ws.data() + c * (h + pad));
  const auto hv = make_strided_view(static_cast<const float*>(hs.data()), std::array<index_t, 2>{n, h},
                                    std::array<index_t, 2>{h + pad, 1});
  const auto wv = make_strided_view(static_cast<const float*>(ws.data()), std::array<index_t, 2>{v, h},
                                    std::array<index_t, 2>{h + pad, 1});
  linear_logprob_options options;
  options.vocab_chunk = 5;
  const outputs<float> dense = run<consr::loop_gemm>(p, options);
  std::vector<float> logp(n), lse(n);
  consr::linear_token_logprobs(hv, wv, p.bias_view(), p.labels_view(), make_view(logp.data(), n),
                               make_view(lse.data(), n), options);
  std::vector<float> dh(n * (h + pad), 42.0f), dw(v * (h + pad), 0.0f), db(v, 0.0f);
  consr::linear_token_logprobs_backward(
      hv, wv, p.bias_view(), p.labels_view(), make_view(lse.data(), n), make_view(p.upstream.data(), n),
      make_strided_view(dh.data(), std::array<index_t, 2>{n, h}, std::array<index_t, 2>{h + pad, 1}),
      make_strided_view(dw.data(), std::array<index_t, 2>{v, h}, std::array<index_t, 2>{h + pad, 1}),
      make_view(db.data(), v), options);
  for (index_t i = 0; i < n; ++i) {
    CHECK(same_bits(logp[i], dense.logp[i]));
    CHECK(same_bits(lse[i], dense.lse[i]));
    for (index_t k = 0; k < h + pad; ++k) {
      if (k < h) CHECK(same_bits(dh[i * (h + pad) + k], dense.grad_hidden[i * h + k]));
      else CHECK(dh[i * (h + pad) + k] == 42.0f);
    }
  }
  for (index_t c = 0; c < v; ++c)
    for (index_t k = 0; k < h + pad; ++k) {
      if (k < h) CHECK(same_bits(dw[c * (h + pad) + k], dense.grad_weight[c * h + k]));
      else CHECK(dw[c * (h + pad) + k] == 0.0f);
    }
}

TEST_CASE("results are bitwise identical with 1 and 2 threads (loop_gemm)", "[linear_logprobs][threads]") {
#if CONSR_HAS_OPENMP
  const problem<float> p = make_problem<float>(40, 32, 5000, true, 81);  // above the parallel thresholds
  linear_logprob_options options;
  options.vocab_chunk = 2048;
  options.temperature = 0.9;
  const int saved = omp_get_max_threads();
  outputs<float> o[2];
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    o[t] = run<consr::loop_gemm>(p, options);
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 0; i < o[0].logp.size(); ++i) REQUIRE(same_bits(o[0].logp[i], o[1].logp[i]));
  for (std::size_t i = 0; i < o[0].lse.size(); ++i) REQUIRE(same_bits(o[0].lse[i], o[1].lse[i]));
  for (std::size_t k = 0; k < o[0].grad_hidden.size(); ++k) REQUIRE(same_bits(o[0].grad_hidden[k], o[1].grad_hidden[k]));
  for (std::size_t k = 0; k < o[0].grad_weight.size(); ++k) REQUIRE(same_bits(o[0].grad_weight[k], o[1].grad_weight[k]));
  for (std::size_t k = 0; k < o[0].grad_bias.size(); ++k) REQUIRE(same_bits(o[0].grad_bias[k], o[1].grad_bias[k]));
#else
  WARN("built without OpenMP: nothing to compare");
#endif
}

TEST_CASE("edge sizes: N = 0, V = 0 with every row ignored, H = 0 (logits = bias)", "[linear_logprobs]") {
  for_each_policy([&](auto policy, const char* name) {
    using Gemm = decltype(policy);
    INFO(name);
    // N = 0: a no-op that writes nothing.
    const problem<float> p = make_problem<float>(3, 4, 9, true, 3);
    std::vector<float> dw(36, 1.0f);
    consr::linear_token_logprobs<Gemm>(make_view(p.hidden.data(), 0, 4), p.weight_view(), p.bias_view(),
                                       make_view(p.labels.data(), 0), make_view(static_cast<float*>(nullptr), 0),
                                       host_view<float, 1>{});
    consr::linear_token_logprobs_backward<Gemm>(
        make_view(p.hidden.data(), 0, 4), p.weight_view(), p.bias_view(), make_view(p.labels.data(), 0),
        make_view(static_cast<const float*>(nullptr), 0), make_view(static_cast<const float*>(nullptr), 0),
        make_view(static_cast<float*>(nullptr), 0, 4), make_view(dw.data(), 9, 4), {});
    for (const float x : dw) CHECK(x == 1.0f);
    // V = 0: every label must be ignored; logp = lse = 0 and grad_hidden = 0.
    const std::vector<std::int64_t> ignored = {-100, -100};
    std::vector<float> logp(2, 5.0f), lse(2, 5.0f), dh(8, 5.0f);
    consr::linear_token_logprobs<Gemm>(make_view(p.hidden.data(), 2, 4), make_view(p.weight.data(), 0, 4), {},
                                       make_view(ignored.data(), 2), make_view(logp.data(), 2),
                                       make_view(lse.data(), 2));
    consr::linear_token_logprobs_backward<Gemm>(
        make_view(p.hidden.data(), 2, 4), make_view(p.weight.data(), 0, 4), {}, make_view(ignored.data(), 2),
        make_view(lse.data(), 2), make_view(p.upstream.data(), 2), make_view(dh.data(), 2, 4), {}, {});
    for (const float x : logp) CHECK(x == 0.0f);
    for (const float x : lse) CHECK(x == 0.0f);
    for (const float x : dh) CHECK(x == 0.0f);
    // H = 0: the logits are the bias alone; grad_hidden is empty, grad_bias is Σ_i G_i.
    const problem<double> q = make_problem<double>(4, 0, 6, true, 4);
    const reference r = compute_reference(q, 1.0, -100);
    linear_logprob_options options;
    options.vocab_chunk = 4;
    const outputs<double> o = run<Gemm>(q, options);
    for (index_t i = 0; i < 4; ++i) CHECK(std::fabs(o.logp[i] - static_cast<double>(r.logp[i])) <= 1e-14);
    for (index_t c = 0; c < 6; ++c) CHECK(std::fabs(o.grad_bias[c] - static_cast<double>(r.grad_bias[c])) <= 1e-14);
  });
}

TEST_CASE("a non-finite hidden row makes only its own log-prob NaN", "[linear_logprobs]") {
  problem<float> p = make_problem<float>(5, 8, 40, false, 21, false);
  p.hidden[2 * 8 + 3] = std::numeric_limits<float>::quiet_NaN();
  p.hidden[4 * 8 + 0] = std::numeric_limits<float>::infinity();
  linear_logprob_options options;
  options.vocab_chunk = 16;
  std::vector<float> logp(5), lse(5);
  consr::linear_token_logprobs(p.hidden_view(), p.weight_view(), {}, p.labels_view(), make_view(logp.data(), 5),
                               make_view(lse.data(), 5), options);
  const reference r = compute_reference(p, 1.0, -100);
  CHECK(std::isnan(logp[2]));
  CHECK(std::isnan(lse[2]));
  CHECK(std::isnan(logp[4]));
  for (const index_t i : {0, 1, 3}) CHECK(std::fabs(logp[i] - static_cast<double>(r.logp[i])) <= 1e-5);
}

// ---------------------------------------------------------------------------------------------
// argument checks

TEST_CASE("bad arguments throw consr::error naming the argument, before anything is written",
          "[linear_logprobs][errors]") {
  const index_t n = 4, h = 3, v = 10;
  const problem<float> p = make_problem<float>(n, h, v, true, 11, false);
  std::vector<float> logp(n, 42.0f), lse(n, 42.0f);
  const auto hv = p.hidden_view();
  const auto wv = p.weight_view();
  const auto bv = p.bias_view();
  const auto yv = p.labels_view();
  const auto ov = make_view(logp.data(), n);
  const auto lv = make_view(lse.data(), n);
  const auto forward = [&](auto... args) { consr::linear_token_logprobs(args...); };

  // Labels: every bad value, named with its row, nothing written.
  for (const std::int64_t bad : {std::int64_t{10}, std::int64_t{152064}, std::int64_t{-5}, std::int64_t{-101}}) {
    std::vector<std::int64_t> labels = p.labels;
    labels[2] = bad;
    const auto bad_labels = make_view(static_cast<const std::int64_t*>(labels.data()), n);
    const std::string msg = error_message([&] { forward(hv, wv, bv, bad_labels, ov, lv); });
    INFO(msg);
    CHECK(msg.find("consr::linear_token_logprobs: argument 'labels'") != std::string::npos);
    CHECK(msg.find("row 2 has label " + std::to_string(bad)) != std::string::npos);
    CHECK(msg.find("[0, 10)") != std::string::npos);
    std::vector<float> dh(n * h, 42.0f), dw(v * h, 42.0f), db(v, 42.0f);
    const std::string back = error_message([&] {
      consr::linear_token_logprobs_backward(hv, wv, bv, bad_labels, lv, make_view(p.upstream.data(), n),
                                            make_view(dh.data(), n, h), make_view(dw.data(), v, h),
                                            make_view(db.data(), v));
    });
    CHECK(back.find("consr::linear_token_logprobs_backward: argument 'labels': row 2") != std::string::npos);
    for (const float x : dh) CHECK(x == 42.0f);
    for (const float x : dw) CHECK(x == 42.0f);
    for (const float x : db) CHECK(x == 42.0f);
  }
  // Options.
  for (const double tau : {0.0, -1.0, nan_v, inf_v}) {
    linear_logprob_options options;
    options.temperature = tau;
    CHECK(error_argument([&] { forward(hv, wv, bv, yv, ov, lv, options); }) == "options.temperature");
  }
  for (const index_t chunk : {index_t{0}, index_t{-1}}) {
    linear_logprob_options options;
    options.vocab_chunk = chunk;
    const std::string msg = error_message([&] { forward(hv, wv, bv, yv, ov, lv, options); });
    CHECK(msg.find("argument 'options.vocab_chunk': must be > 0, got " + std::to_string(chunk)) != std::string::npos);
  }
  // Shapes.
  CHECK(error_argument([&] { forward(hv, make_view(p.weight.data(), 5, 2), bv, yv, ov, lv); }) == "weight");
  CHECK(error_argument([&] { forward(hv, wv, make_view(p.bias.data(), v - 1), yv, ov, lv); }) == "bias");
  CHECK(error_argument([&] { forward(hv, wv, bv, make_view(p.labels.data(), n - 1), ov, lv); }) == "labels");
  CHECK(error_argument([&] { forward(hv, wv, bv, yv, make_view(logp.data(), n - 1), lv); }) == "token_logp");
  CHECK(error_argument([&] { forward(hv, wv, bv, yv, ov, make_view(lse.data(), n - 1)); }) == "lse");
  // Strides: column-major hidden, overlapping weight rows, strided bias, stride-0 output.
  const auto column_major =
      make_strided_view(p.hidden.data(), std::array<index_t, 2>{n, h}, std::array<index_t, 2>{1, n});
  CHECK(error_argument([&] { forward(column_major, wv, bv, yv, ov, lv); }) == "hidden");
  const auto overlapping =
      make_strided_view(p.weight.data(), std::array<index_t, 2>{v - 1, h}, std::array<index_t, 2>{1, 1});
  CHECK(error_message([&] { forward(hv, overlapping, host_view<const float, 1>{}, yv, ov, lv); })
            .find("argument 'weight': row stride 1 must be at least the row length 3") != std::string::npos);
  const auto strided_bias = make_strided_view(p.weight.data(), std::array<index_t, 1>{v}, std::array<index_t, 1>{2});
  CHECK(error_argument([&] { forward(hv, wv, strided_bias, yv, ov, lv); }) == "bias");
  CHECK(error_argument([&] {
          forward(hv, wv, bv, yv, make_strided_view(logp.data(), std::array<index_t, 1>{n}, std::array<index_t, 1>{0}),
                  lv);
        }) == "token_logp");
  CHECK(error_argument([&] {
          forward(make_view(static_cast<const float*>(nullptr), n, h), wv, bv, yv, ov, lv);
        }) == "hidden");
  // A workspace overlapping an input.
  std::vector<std::byte> ws(consr::linear_token_logprobs_workspace_bytes<float>(n, h, v));
  CHECK(error_argument([&] {
          forward(hv, wv, bv, yv, ov, lv, linear_logprob_options{},
                  make_view(reinterpret_cast<std::byte*>(logp.data()), static_cast<index_t>(ws.size())));
        }) == "workspace");
  for (const float x : logp) CHECK(x == 42.0f);
  for (const float x : lse) CHECK(x == 42.0f);

  // Backward: shapes of the gradients, and outputs that alias inputs.
  std::vector<float> dh(n * h, 42.0f), dw(v * h, 42.0f), db(v, 42.0f), g(n, 1.0f), lse_ok(n, 3.0f);
  const auto backward = [&](auto grad_hidden, auto grad_weight, auto grad_bias) {
    consr::linear_token_logprobs_backward(hv, wv, bv, yv, make_view(lse_ok.data(), n), make_view(g.data(), n),
                                          grad_hidden, grad_weight, grad_bias);
  };
  CHECK(error_argument([&] { backward(make_view(dh.data(), n, h - 1), make_view(dw.data(), v, h), make_view(db.data(), v)); }) ==
        "grad_hidden");
  CHECK(error_argument([&] { backward(make_view(dh.data(), n, h), make_view(dw.data(), v - 1, h), make_view(db.data(), v)); }) ==
        "grad_weight");
  CHECK(error_argument([&] { backward(make_view(dh.data(), n, h), make_view(dw.data(), v, h), make_view(db.data(), v - 1)); }) ==
        "grad_bias");
  CHECK(error_argument([&] {
          consr::linear_token_logprobs_backward(hv, wv, bv, yv, make_view(lse_ok.data(), n - 1), make_view(g.data(), n),
                                                make_view(dh.data(), n, h), {}, {});
        }) == "lse");
  CHECK(error_argument([&] {
          consr::linear_token_logprobs_backward(hv, wv, bv, yv, make_view(lse_ok.data(), n), make_view(g.data(), 1),
                                                make_view(dh.data(), n, h), {}, {});
        }) == "grad_token_logp");
  // grad_weight sharing memory with grad_hidden, and grad_hidden written over hidden itself.
  std::vector<float> shared(v * h + n * h);
  CHECK(error_argument([&] {
          backward(make_view(shared.data(), n, h), make_view(shared.data() + 2, v, h), host_view<float, 1>{});
        }) == "grad_hidden");
  std::vector<float> hidden_copy = p.hidden;
  CHECK(error_argument([&] {
          consr::linear_token_logprobs_backward(make_view(static_cast<const float*>(hidden_copy.data()), n, h), wv, bv, yv,
                                                make_view(lse_ok.data(), n), make_view(g.data(), n),
                                                make_view(hidden_copy.data(), n, h), {}, {});
        }) == "grad_hidden");
  for (const float x : dh) CHECK(x == 42.0f);
  for (const float x : dw) CHECK(x == 42.0f);
  for (const float x : db) CHECK(x == 42.0f);
}
