// Tests for consr/cuda/linear_logprobs.cuh (spec §4, memory-bounded log-probs) against an fp64
// reference of the materialized logits written here, the host twin (consr/linear_logprobs.hpp) and
// the materialized device path (one GEMM for all N × V logits, then consr::cuda::token_logprobs).
// Error bounds follow from the GEMMs' fp32 accumulation (|Δ logit| ≤ γ Σ_k |h_k w_k|) and, for bf16,
// the bf16 rounding of G before the backward GEMMs.
#include <catch2/catch.hpp>

#include <consr/cuda/linear_logprobs.cuh>
#include <consr/cuda/logprobs.cuh>
#include <consr/linear_logprobs.hpp>

#include "cuda_test_util.cuh"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using consr::bfloat16;
using consr::float16;
using consr::index_t;
using consr::status;
using consr_test::device_buffer;
using consr_test::from_double;
using consr_test::nan_v;
using device_error = consr_test::device_error_info;

class cublas_handle {
 public:
  cublas_handle() { REQUIRE(cublasCreate(&h_) == CUBLAS_STATUS_SUCCESS); }
  ~cublas_handle() { cublasDestroy(h_); }
  cublas_handle(const cublas_handle&) = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

template <class T>
double value_of(T x) {
  if constexpr (std::is_same_v<T, bfloat16>) return static_cast<double>(bfloat16::to_float(x.bits));
  else if constexpr (std::is_same_v<T, float16>) return static_cast<double>(float16::to_float(x.bits));
  else return static_cast<double>(x);
}

template <class T>
std::vector<T> random_values(std::size_t n, double stddev, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<T> out(n);
  for (auto& v : out) v = from_double<T>(normal(gen));
  return out;
}

bool names_argument(const std::string& arg) {
  const std::string message = consr::cuda::last_error_message();
  INFO("last error: " << message);
  return message.find("argument '" + arg + "'") != std::string::npos;
}

struct linear_case {
  index_t tokens, hidden, vocab, chunk;
  double tau;
  bool with_bias;
};

/// A problem on the host and the device: hidden [N, H] (row stride H + 3, so rows are not packed),
/// weight [V, H], bias [V], labels (one ignored row when N > 2).
template <class T, class Label>
struct linear_problem {
  using Acc = consr::accum_t<T>;
  linear_case c;
  index_t hidden_ld;
  std::vector<T> hidden, weight, bias;
  std::vector<Label> labels;
  device_buffer<T> d_hidden, d_weight, d_bias;
  device_buffer<Label> d_labels;

  linear_problem(const linear_case& lc, std::uint64_t seed)
      : c(lc), hidden_ld(lc.hidden + 3),
        hidden(random_values<T>(static_cast<std::size_t>(lc.tokens * (lc.hidden + 3)), 1.0, seed)),
        weight(random_values<T>(static_cast<std::size_t>(lc.vocab * lc.hidden), 2.0 / std::sqrt(static_cast<double>(std::max<index_t>(lc.hidden, 1))), seed + 1)),
        bias(random_values<T>(static_cast<std::size_t>(lc.with_bias ? lc.vocab : 0), 0.5, seed + 2)),
        labels(static_cast<std::size_t>(lc.tokens)),
        d_hidden(hidden), d_weight(weight), d_bias(bias), d_labels(static_cast<std::size_t>(lc.tokens)) {
    std::mt19937_64 gen(seed + 3);
    std::uniform_int_distribution<std::int64_t> pick(0, std::max<index_t>(lc.vocab - 1, 0));
    for (auto& y : labels) y = static_cast<Label>(pick(gen));
    if (lc.tokens > 2) labels[1] = static_cast<Label>(-100);
    d_labels.upload(labels);
  }
  double h(index_t i, index_t k) const { return value_of(hidden[static_cast<std::size_t>(i * hidden_ld + k)]); }
  double w(index_t v, index_t k) const { return value_of(weight[static_cast<std::size_t>(v * c.hidden + k)]); }
  double b(index_t v) const { return c.with_bias ? value_of(bias[static_cast<std::size_t>(v)]) : 0.0; }
  bool scored(index_t i) const { return labels[static_cast<std::size_t>(i)] != static_cast<Label>(-100); }
  std::int64_t label(index_t i) const { return static_cast<std::int64_t>(labels[static_cast<std::size_t>(i)]); }

  consr::device_view<const T, 2> hidden_view() const {
    return consr::make_strided_view<consr::device_space>(static_cast<const T*>(d_hidden.data()),
                                                         std::array<index_t, 2>{c.tokens, c.hidden},
                                                         std::array<index_t, 2>{hidden_ld, 1});
  }
  consr::device_view<const T, 2> weight_view() const {
    return consr::make_view<consr::device_space>(static_cast<const T*>(d_weight.data()), c.vocab, c.hidden);
  }
  consr::device_view<const T, 1> bias_view() const {
    if (!c.with_bias) return {};
    return consr::make_view<consr::device_space>(static_cast<const T*>(d_bias.data()), c.vocab);
  }
  consr::device_view<const Label, 1> labels_view() const {
    return consr::make_view<consr::device_space>(static_cast<const Label*>(d_labels.data()), c.tokens);
  }
  consr::host_view<const T, 2> hidden_host() const {
    return consr::make_strided_view(hidden.data(), std::array<index_t, 2>{c.tokens, c.hidden},
                                    std::array<index_t, 2>{hidden_ld, 1});
  }
  consr::host_view<const T, 2> weight_host() const { return consr::make_view(weight.data(), c.vocab, c.hidden); }
  consr::host_view<const T, 1> bias_host() const {
    if (!c.with_bias) return {};
    return consr::make_view(bias.data(), c.vocab);
  }
  consr::linear_logprob_options options() const {
    consr::linear_logprob_options o;
    o.temperature = c.tau;
    o.vocab_chunk = c.chunk;
    return o;
  }

  /// fp64 logits of token i and, per entry, Σ_k |h_k w_k| (the scale of its GEMM rounding).
  void reference_logits(index_t i, std::vector<double>& logits, std::vector<double>& magnitude) const {
    logits.assign(static_cast<std::size_t>(c.vocab), 0.0);
    magnitude.assign(static_cast<std::size_t>(c.vocab), 0.0);
    for (index_t v = 0; v < c.vocab; ++v) {
      double s = 0, m = 0;
      for (index_t k = 0; k < c.hidden; ++k) {
        s += h(i, k) * w(v, k);
        m += std::fabs(h(i, k) * w(v, k));
      }
      logits[static_cast<std::size_t>(v)] = s + b(v);
      magnitude[static_cast<std::size_t>(v)] = m + std::fabs(b(v));
    }
  }
  /// Relative rounding bound of an fp32-accumulated dot product of length n (with a factor 2 margin).
  static double gamma(index_t n) {
    return std::is_same_v<Acc, float> ? (static_cast<double>(n) + 2.0) * std::ldexp(1.0, -23)
                                      : (static_cast<double>(n) + 2.0) * std::ldexp(1.0, -52);
  }
};

double float_output_tolerance(double ref, double tol) {
  const float f = static_cast<float>(std::fabs(ref));
  const float next = std::nextafter(f, std::numeric_limits<float>::infinity());
  return tol + 0.5 * (static_cast<double>(next) - static_cast<double>(f));
}

template <class T, class Label>
struct forward_out {
  std::vector<consr::accum_t<T>> logp, lse;
  consr::cuda::error_info error{};
  std::size_t temp_bytes = 0;
};

template <class T, class Label>
forward_out<T, Label> run_linear_forward(const linear_problem<T, Label>& p, const cublas_handle& handle,
                                         const consr::linear_logprob_options& options) {
  using Acc = consr::accum_t<T>;
  device_buffer<Acc> d_logp(std::vector<Acc>(static_cast<std::size_t>(p.c.tokens), Acc(-7)));
  device_buffer<Acc> d_lse(std::vector<Acc>(static_cast<std::size_t>(p.c.tokens), Acc(-7)));
  device_error err;
  forward_out<T, Label> out;
  const auto logp_view = consr::make_view<consr::device_space>(d_logp.data(), p.c.tokens);
  const auto lse_view = consr::make_view<consr::device_space>(d_lse.data(), p.c.tokens);
  REQUIRE(consr::cuda::linear_token_logprobs(handle.get(), nullptr, out.temp_bytes, p.hidden_view(), p.weight_view(),
                                             p.bias_view(), p.labels_view(), logp_view, lse_view, options,
                                             err.get()) == status::success);
  device_buffer<unsigned char> temp(out.temp_bytes);
  const status s = consr::cuda::linear_token_logprobs(handle.get(), temp.data(), out.temp_bytes, p.hidden_view(),
                                                      p.weight_view(), p.bias_view(), p.labels_view(), logp_view,
                                                      lse_view, options, err.get());
  INFO(consr::cuda::last_error_message());
  REQUIRE(s == status::success);
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  out.logp = d_logp.download();
  out.lse = d_lse.download();
  out.error = err.read();
  return out;
}

/// Forward vs the fp64 reference, the host twin, the unchunked call and the materialized device path.
template <class T, class Label>
void check_linear_forward(const linear_case& c, std::uint64_t seed) {
  using Acc = consr::accum_t<T>;
  const linear_problem<T, Label> p(c, seed);
  const cublas_handle handle;
  const auto dev = run_linear_forward(p, handle, p.options());
  CHECK(dev.error.code == 0);

  // Host twin (loop_gemm).
  std::vector<Acc> host_logp(static_cast<std::size_t>(c.tokens)), host_lse(static_cast<std::size_t>(c.tokens));
  consr::linear_token_logprobs(p.hidden_host(), p.weight_host(), p.bias_host(),
                               consr::make_view(p.labels.data(), c.tokens), consr::make_view(host_logp.data(), c.tokens),
                               consr::make_view(host_lse.data(), c.tokens), p.options());
  // One chunk holding the whole vocabulary.
  auto whole = p.options();
  whole.vocab_chunk = std::max<index_t>(c.vocab, 1);
  const auto unchunked = run_linear_forward(p, handle, whole);

  std::vector<double> logits, magnitude;
  for (index_t i = 0; i < c.tokens; ++i) {
    const auto k = static_cast<std::size_t>(i);
    INFO("N=" << c.tokens << " H=" << c.hidden << " V=" << c.vocab << " chunk=" << c.chunk << " tau=" << c.tau
              << " bias=" << c.with_bias << " row " << i << " logp " << dev.logp[k] << " host " << host_logp[k]);
    if (!p.scored(i)) {
      CHECK(dev.logp[k] == Acc(0));
      CHECK(dev.lse[k] == Acc(0));
      continue;
    }
    p.reference_logits(i, logits, magnitude);
    double m = -std::numeric_limits<double>::infinity(), worst_logit_error = 0;
    for (std::size_t v = 0; v < logits.size(); ++v) {
      m = std::max(m, logits[v] / c.tau);
      // GEMM rounding, plus the rounding of the fp32 logit itself and of the bias addition.
      worst_logit_error = std::max(worst_logit_error, (p.gamma(c.hidden) * magnitude[v] +
                                                       (std::is_same_v<Acc, float> ? 2 * std::ldexp(std::fabs(logits[v]), -24) : 0.0)) / c.tau);
    }
    double s = 0;
    for (const double z : logits) s += std::exp(z / c.tau - m);
    const double lse = m + std::log(s);
    const double logp = logits[static_cast<std::size_t>(p.label(i))] / c.tau - lse;
    const double tol = 2 * worst_logit_error + (std::is_same_v<Acc, float> ? 1e-6 : 1e-12);
    CHECK(std::fabs(dev.logp[k] - logp) <= float_output_tolerance(logp, tol));
    CHECK(std::fabs(dev.lse[k] - lse) <= float_output_tolerance(lse, tol));
    // The host twin and the unchunked call meet the same bound.
    CHECK(std::fabs(dev.logp[k] - host_logp[k]) <= 2 * float_output_tolerance(logp, tol));
    CHECK(std::fabs(dev.lse[k] - host_lse[k]) <= 2 * float_output_tolerance(lse, tol));
    CHECK(std::fabs(dev.logp[k] - unchunked.logp[k]) <= 2 * float_output_tolerance(logp, tol));
  }
}

template <class T, class Label>
void forward_sweep() {
  const linear_case cases[] = {
      {1, 8, 1, 1, 1.0, false},       {5, 16, 7, 3, 1.0, true},        {6, 16, 7, 3, 0.8, false},
      {33, 64, 1000, 256, 1.0, true}, {17, 40, 300, 4096, 0.7, true},  {64, 96, 5003, 1024, 1.0, false},
      {40, 33, 2001, 999, 1.3, true}, {9, 0, 50, 16, 1.0, true},
  };
  std::uint64_t seed = 10;
  for (const auto& c : cases) check_linear_forward<T, Label>(c, seed += 7);
}

}  // namespace

// One case per input type: (T, Label) = (fp32, int64), (bf16, int64), (fp16, int32), (fp64, int64).
TEMPLATE_TEST_CASE("cuda linear_token_logprobs matches the fp64 reference, the host twin and one chunk",
                   "[cuda][linear_logprobs]", (std::pair<float, std::int64_t>), (std::pair<bfloat16, std::int64_t>),
                   (std::pair<float16, std::int32_t>), (std::pair<double, std::int64_t>)) {
  forward_sweep<typename TestType::first_type, typename TestType::second_type>();
}

TEST_CASE("cuda linear_token_logprobs equals the materialized device path", "[cuda][linear_logprobs]") {
  // All N × V logits from one cuBLAS GEMM (+ bias), then consr::cuda::token_logprobs: what the
  // memory-bounded path replaces. Both round each logit once in fp32, so they agree to the
  // log-sum-exp's own accuracy plus the GEMMs' (possibly different) summation orders.
  const linear_case c{48, 128, 3001, 512, 1.0, true};
  const linear_problem<bfloat16, std::int64_t> p(c, 4242);
  const cublas_handle handle;
  const auto chunked = run_linear_forward(p, handle, p.options());
  device_buffer<float> d_logits(static_cast<std::size_t>(c.tokens * c.vocab));
  const float one = 1.0f, zero = 0.0f;
  REQUIRE(cublasGemmEx(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(c.vocab), static_cast<int>(c.tokens),
                       static_cast<int>(c.hidden), &one, p.d_weight.data(), CUDA_R_16BF, static_cast<int>(c.hidden),
                       p.d_hidden.data(), CUDA_R_16BF, static_cast<int>(p.hidden_ld), &zero, d_logits.data(),
                       CUDA_R_32F, static_cast<int>(c.vocab), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
          CUBLAS_STATUS_SUCCESS);
  auto logits = d_logits.download();
  for (index_t i = 0; i < c.tokens; ++i)
    for (index_t v = 0; v < c.vocab; ++v) logits[static_cast<std::size_t>(i * c.vocab + v)] += static_cast<float>(p.b(v));
  d_logits.upload(logits);
  device_buffer<float> d_logp(static_cast<std::size_t>(c.tokens)), d_lse(static_cast<std::size_t>(c.tokens));
  REQUIRE(consr::cuda::token_logprobs(
              consr::make_view<consr::device_space>(static_cast<const float*>(d_logits.data()), c.tokens, c.vocab),
              p.labels_view(), consr::make_view<consr::device_space>(d_logp.data(), c.tokens),
              consr::make_view<consr::device_space>(d_lse.data(), c.tokens)) == status::success);
  const auto logp = d_logp.download();
  std::vector<double> ref, magnitude;
  for (index_t i = 0; i < c.tokens; ++i) {
    const auto k = static_cast<std::size_t>(i);
    if (!p.scored(i)) continue;
    p.reference_logits(i, ref, magnitude);
    const double bound = 2 * p.gamma(c.hidden) * *std::max_element(magnitude.begin(), magnitude.end());
    INFO("row " << i << " chunked " << chunked.logp[k] << " materialized " << logp[k]);
    CHECK(std::fabs(chunked.logp[k] - logp[k]) <= float_output_tolerance(logp[k], 2 * bound + 2e-6));
  }
}

// ---------------------------------------------------------------------------------------------
// backward

namespace {

/// Backward vs the fp64 analytic gradients (G from the device's own lse), with ∂W and ∂b
/// accumulated onto random initial values and ∂h overwritten; `want` picks the outputs.
template <class T, class Label>
void check_linear_backward(const linear_case& c, std::uint64_t seed, bool want_hidden, bool want_weight,
                           bool want_bias) {
  using Acc = consr::accum_t<T>;
  const linear_problem<T, Label> p(c, seed);
  const cublas_handle handle;
  const auto fwd = run_linear_forward(p, handle, p.options());
  REQUIRE(fwd.error.code == 0);
  const index_t N = c.tokens, H = c.hidden, V = c.vocab;
  const auto g_double = random_values<double>(static_cast<std::size_t>(N), 1.0, seed + 9);
  const std::vector<Acc> g(g_double.begin(), g_double.end());
  const auto gw_init = random_values<Acc>(static_cast<std::size_t>(V * H), 0.1, seed + 10);
  const auto gb_init = random_values<Acc>(static_cast<std::size_t>(V), 0.1, seed + 11);
  device_buffer<Acc> d_lse(fwd.lse), d_g(g);
  device_buffer<Acc> d_gh(std::vector<Acc>(static_cast<std::size_t>(N * H), static_cast<Acc>(nan_v)));
  device_buffer<Acc> d_gw(gw_init), d_gb(gb_init);
  device_error err;
  const consr::device_view<Acc, 2> gh = want_hidden ? consr::make_view<consr::device_space>(d_gh.data(), N, H)
                                                    : consr::device_view<Acc, 2>{};
  const consr::device_view<Acc, 2> gw = want_weight ? consr::make_view<consr::device_space>(d_gw.data(), V, H)
                                                    : consr::device_view<Acc, 2>{};
  const consr::device_view<Acc, 1> gb =
      want_bias ? consr::make_view<consr::device_space>(d_gb.data(), V) : consr::device_view<Acc, 1>{};
  const auto lse_view = consr::make_view<consr::device_space>(static_cast<const Acc*>(d_lse.data()), N);
  const auto g_view = consr::make_view<consr::device_space>(static_cast<const Acc*>(d_g.data()), N);
  std::size_t bytes = 0;
  REQUIRE(consr::cuda::linear_token_logprobs_backward(handle.get(), nullptr, bytes, p.hidden_view(), p.weight_view(),
                                                      p.bias_view(), p.labels_view(), lse_view, g_view, gh, gw, gb,
                                                      p.options(), err.get()) == status::success);
  device_buffer<unsigned char> temp(bytes);
  const status s = consr::cuda::linear_token_logprobs_backward(handle.get(), temp.data(), bytes, p.hidden_view(),
                                                               p.weight_view(), p.bias_view(), p.labels_view(),
                                                               lse_view, g_view, gh, gw, gb, p.options(), err.get());
  INFO(consr::cuda::last_error_message());
  REQUIRE(s == status::success);
  CHECK(err.read().code == 0);
  const auto got_h = d_gh.download();
  const auto got_w = d_gw.download();
  const auto got_b = d_gb.download();

  // Reference G (fp64, from the device's lse) and A ≥ |G| (the scale of each entry's error).
  std::vector<double> G(static_cast<std::size_t>(N * V), 0.0), A(G.size(), 0.0), eps_row(static_cast<std::size_t>(N), 0.0);
  std::vector<double> logits, magnitude;
  for (index_t i = 0; i < N; ++i) {
    if (!p.scored(i)) continue;
    p.reference_logits(i, logits, magnitude);
    const double scale = static_cast<double>(g[static_cast<std::size_t>(i)]) / c.tau;
    double logit_error = 0;
    for (index_t v = 0; v < V; ++v) {
      const auto kv = static_cast<std::size_t>(v);
      logit_error = std::max(logit_error, (p.gamma(H) * magnitude[kv] +
                                           (std::is_same_v<Acc, float> ? 2 * std::ldexp(std::fabs(logits[kv]), -24) : 0.0)) / c.tau);
      const double prob = std::exp(logits[kv] / c.tau - static_cast<double>(fwd.lse[static_cast<std::size_t>(i)]));
      const double delta = v == p.label(i) ? 1.0 : 0.0;
      G[static_cast<std::size_t>(i * V + v)] = scale * (delta - prob);
      A[static_cast<std::size_t>(i * V + v)] = std::fabs(scale) * (delta + prob);
    }
    // Relative error of each G entry: the logit errors (z and, through lse... the lse is given), the
    // exp2f, and for bf16 the rounding of G to bf16.
    eps_row[static_cast<std::size_t>(i)] = logit_error * 1.01 + (std::is_same_v<Acc, float> ? 2e-6 : 1e-12) +
                                            (std::is_same_v<T, bfloat16> ? std::ldexp(1.0, -8) : 0.0);
  }
  int bad = 0;
  const auto report = [&](const char* what, index_t a, index_t b, double got, double ref, double tol) {
    if (!(std::fabs(got - ref) <= tol)) {
      if (bad < 5) {
        INFO(what << "[" << a << ", " << b << "] got " << got << " ref " << ref << " tol " << tol << " (N=" << N
                  << " H=" << H << " V=" << V << " chunk=" << c.chunk << ")");
        CHECK(false);
      }
      ++bad;
    }
  };
  const double out_round = std::is_same_v<Acc, float> ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53);
  if (want_hidden) {
    for (index_t i = 0; i < N; ++i) {
      for (index_t k = 0; k < H; ++k) {
        double ref = 0, scale = 0;
        for (index_t v = 0; v < V; ++v) {
          ref += G[static_cast<std::size_t>(i * V + v)] * p.w(v, k);
          scale += A[static_cast<std::size_t>(i * V + v)] * std::fabs(p.w(v, k));
        }
        const double tol = (eps_row[static_cast<std::size_t>(i)] + p.gamma(V)) * scale + out_round * std::fabs(ref) + 1e-30;
        report("grad_hidden", i, k, static_cast<double>(got_h[static_cast<std::size_t>(i * H + k)]), ref, tol);
      }
    }
  } else {
    for (const Acc x : got_h) CHECK(std::isnan(static_cast<double>(x)));  // untouched
  }
  for (index_t v = 0; v < V; ++v) {
    for (index_t k = 0; k < H; ++k) {
      const double init = static_cast<double>(gw_init[static_cast<std::size_t>(v * H + k)]);
      double ref = init, scale = std::fabs(init) * out_round;
      if (want_weight)
        for (index_t i = 0; i < N; ++i) {
          ref += G[static_cast<std::size_t>(i * V + v)] * p.h(i, k);
          scale += (eps_row[static_cast<std::size_t>(i)] + p.gamma(N)) * A[static_cast<std::size_t>(i * V + v)] * std::fabs(p.h(i, k));
        }
      report("grad_weight", v, k, static_cast<double>(got_w[static_cast<std::size_t>(v * H + k)]), ref,
             want_weight ? scale + out_round * std::fabs(ref) + 1e-30 : 0.0);
    }
    const double init = static_cast<double>(gb_init[static_cast<std::size_t>(v)]);
    double ref = init, scale = std::fabs(init) * out_round;
    if (want_bias)
      for (index_t i = 0; i < N; ++i) {
        ref += G[static_cast<std::size_t>(i * V + v)];
        scale += (eps_row[static_cast<std::size_t>(i)] + p.gamma(N)) * A[static_cast<std::size_t>(i * V + v)];
      }
    report("grad_bias", v, 0, static_cast<double>(got_b[static_cast<std::size_t>(v)]), ref,
           want_bias ? scale + out_round * std::fabs(ref) + 1e-30 : 0.0);
  }
  CHECK(bad == 0);
}

template <class T, class Label>
void backward_sweep() {
  const linear_case cases[] = {
      {1, 8, 1, 1, 1.0, false},     {5, 16, 7, 3, 1.0, true},         {33, 64, 1000, 256, 0.8, true},
      {17, 40, 300, 4096, 1.0, true}, {64, 96, 2003, 512, 1.0, false}, {9, 0, 50, 16, 1.0, true},
  };
  std::uint64_t seed = 100;
  for (const auto& c : cases) check_linear_backward<T, Label>(c, seed += 13, true, true, true);
  // Subsets of the outputs (a frozen projection needs only ∂h).
  check_linear_backward<T, Label>({20, 32, 700, 128, 1.0, true}, 7, true, false, false);
  check_linear_backward<T, Label>({20, 32, 700, 128, 1.0, true}, 8, false, true, false);
  check_linear_backward<T, Label>({20, 32, 700, 128, 1.0, true}, 9, false, false, true);
  check_linear_backward<T, Label>({20, 32, 700, 128, 1.0, true}, 10, false, false, false);
}

}  // namespace

TEST_CASE("cuda linear_token_logprobs_backward matches the analytic gradients (fp32)", "[cuda][linear_logprobs]") {
  backward_sweep<float, std::int64_t>();
}
TEST_CASE("cuda linear_token_logprobs_backward matches the analytic gradients (bf16)", "[cuda][linear_logprobs]") {
  backward_sweep<bfloat16, std::int32_t>();
}
TEST_CASE("cuda linear_token_logprobs_backward matches the analytic gradients (fp16)", "[cuda][linear_logprobs]") {
  backward_sweep<float16, std::int64_t>();
}
TEST_CASE("cuda linear_token_logprobs_backward matches the analytic gradients (fp64)", "[cuda][linear_logprobs]") {
  backward_sweep<double, std::int64_t>();
}

TEST_CASE("cuda linear_token_logprobs: bad labels are reported and NaN their rows", "[cuda][linear_logprobs]") {
  const linear_case c{6, 16, 300, 128, 1.0, true};
  linear_problem<float, std::int64_t> p(c, 77);
  p.labels = {5, 300, -3, 7, -100, 1000};
  p.d_labels.upload(p.labels);
  const cublas_handle handle;
  const auto fwd = run_linear_forward(p, handle, p.options());
  CHECK(fwd.error.code == static_cast<int>(status::label_out_of_range));
  CHECK(consr::cuda::error_index(fwd.error) == 1);
  for (const std::size_t i : {std::size_t{1}, std::size_t{2}, std::size_t{5}}) {
    CHECK(std::isnan(fwd.logp[i]));
    CHECK(std::isnan(fwd.lse[i]));
  }
  CHECK(std::isfinite(fwd.logp[0]));
  CHECK(std::isfinite(fwd.logp[3]));
  CHECK(fwd.logp[4] == 0.0f);
  // Backward: the bad rows of ∂h are NaN, the good ones finite; the error is reported.
  device_buffer<float> d_lse(fwd.lse), d_g(std::vector<float>(6, 1.0f)), d_gh(static_cast<std::size_t>(6 * 16));
  device_error err;
  std::size_t bytes = 0;
  const auto run = [&](void* temp) {
    return consr::cuda::linear_token_logprobs_backward(
        handle.get(), temp, bytes, p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
        consr::make_view<consr::device_space>(static_cast<const float*>(d_lse.data()), 6),
        consr::make_view<consr::device_space>(static_cast<const float*>(d_g.data()), 6),
        consr::make_view<consr::device_space>(d_gh.data(), 6, 16), consr::device_view<float, 2>{},
        consr::device_view<float, 1>{}, p.options(), err.get());
  };
  REQUIRE(run(nullptr) == status::success);
  device_buffer<unsigned char> temp(bytes);
  REQUIRE(run(temp.data()) == status::success);
  const auto gh = d_gh.download();
  const auto info = err.read();
  CHECK(info.code == static_cast<int>(status::label_out_of_range));
  CHECK(consr::cuda::error_index(info) == 1);
  for (index_t i = 0; i < 6; ++i) {
    const bool bad_row = i == 1 || i == 2 || i == 5;
    for (index_t k = 0; k < 16; ++k) CHECK(std::isnan(gh[static_cast<std::size_t>(i * 16 + k)]) == bad_row);
  }
}

TEST_CASE("cuda linear_token_logprobs restores the cuBLAS handle's stream and pointer mode", "[cuda][linear_logprobs]") {
  const linear_case c{8, 16, 100, 32, 1.0, false};
  const linear_problem<float, std::int64_t> p(c, 5);
  const cublas_handle handle;
  cudaStream_t stream = nullptr, other = nullptr;
  CONSR_TEST_CUDA(cudaStreamCreate(&stream));
  CONSR_TEST_CUDA(cudaStreamCreate(&other));
  REQUIRE(cublasSetStream(handle.get(), other) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasSetPointerMode(handle.get(), CUBLAS_POINTER_MODE_DEVICE) == CUBLAS_STATUS_SUCCESS);
  device_buffer<float> d_logp(8);
  std::size_t bytes = 0;
  const auto logp = consr::make_view<consr::device_space>(d_logp.data(), 8);
  REQUIRE(consr::cuda::linear_token_logprobs(handle.get(), nullptr, bytes, p.hidden_view(), p.weight_view(),
                                             p.bias_view(), p.labels_view(), logp, consr::device_view<float, 1>{},
                                             p.options(), nullptr, stream) == status::success);
  device_buffer<unsigned char> temp(bytes);
  REQUIRE(consr::cuda::linear_token_logprobs(handle.get(), temp.data(), bytes, p.hidden_view(), p.weight_view(),
                                             p.bias_view(), p.labels_view(), logp, consr::device_view<float, 1>{},
                                             p.options(), nullptr, stream) == status::success);
  CONSR_TEST_CUDA(cudaStreamSynchronize(stream));
  cudaStream_t now = nullptr;
  cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
  REQUIRE(cublasGetStream(handle.get(), &now) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasGetPointerMode(handle.get(), &mode) == CUBLAS_STATUS_SUCCESS);
  CHECK(now == other);
  CHECK(mode == CUBLAS_POINTER_MODE_DEVICE);
  const auto got = d_logp.download();
  const auto ref = run_linear_forward(p, handle, p.options());
  for (std::size_t i = 0; i < 8; ++i) CHECK(got[i] == ref.logp[i]);
  cudaStreamDestroy(stream);
  cudaStreamDestroy(other);
}

TEST_CASE("cuda linear_token_logprobs rejects bad arguments, naming them", "[cuda][linear_logprobs][errors]") {
  const linear_case c{4, 8, 20, 8, 1.0, true};
  const linear_problem<float, std::int64_t> p(c, 3);
  const cublas_handle handle;
  device_buffer<float> d_out(std::vector<float>(64, -7.0f));
  const auto logp = consr::make_view<consr::device_space>(d_out.data(), 4);
  const consr::device_view<float, 1> no_lse;
  using arr1 = std::array<index_t, 1>;
  using arr2 = std::array<index_t, 2>;
  std::size_t bytes = 0;
  const auto fwd = [&](cublasHandle_t h, auto hidden, auto weight, auto bias, auto labels, auto out,
                       consr::linear_logprob_options o) {
    bytes = 0;
    return consr::cuda::linear_token_logprobs(h, nullptr, bytes, hidden, weight, bias, labels, out, no_lse, o);
  };
  const auto o = p.options();
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), logp, o) == status::success);
  CHECK(fwd(nullptr, p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), logp, o) == status::invalid_argument);
  CHECK(names_argument("handle"));
  const auto* w = static_cast<const float*>(p.d_weight.data());
  CHECK(fwd(handle.get(), p.hidden_view(), consr::make_view<consr::device_space>(w, 20, 7), p.bias_view(),
            p.labels_view(), logp, o) == status::invalid_argument);
  CHECK(names_argument("weight"));
  const auto* b = static_cast<const float*>(p.d_bias.data());
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), consr::make_view<consr::device_space>(b, 19),
            p.labels_view(), logp, o) == status::invalid_argument);
  CHECK(names_argument("bias"));
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(),
            consr::make_strided_view<consr::device_space>(b, arr1{10}, arr1{2}), p.labels_view(), logp, o) ==
        status::invalid_argument);
  CHECK(names_argument("bias"));
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(),
            consr::make_view<consr::device_space>(static_cast<const std::int64_t*>(p.d_labels.data()), 3), logp, o) ==
        status::invalid_argument);
  CHECK(names_argument("labels"));
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(),
            consr::make_view<consr::device_space>(d_out.data(), 5), o) == status::invalid_argument);
  CHECK(names_argument("token_logp"));
  // Overlapping rows of the weight (row stride below its length).
  CHECK(fwd(handle.get(), p.hidden_view(), consr::make_strided_view<consr::device_space>(w, arr2{20, 8}, arr2{4, 1}),
            p.bias_view(), p.labels_view(), logp, o) == status::invalid_argument);
  CHECK(names_argument("weight"));
  auto bad = o;
  bad.vocab_chunk = 0;
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), logp, bad) ==
        status::invalid_argument);
  CHECK(names_argument("options.vocab_chunk"));
  bad = o;
  bad.temperature = -1.0;
  CHECK(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), logp, bad) ==
        status::invalid_argument);
  CHECK(names_argument("options.temperature"));
  // Too little temporary storage.
  REQUIRE(fwd(handle.get(), p.hidden_view(), p.weight_view(), p.bias_view(), p.labels_view(), logp, o) ==
          status::success);
  device_buffer<unsigned char> temp(bytes);
  std::size_t small = bytes - 1;
  CHECK(consr::cuda::linear_token_logprobs(handle.get(), temp.data(), small, p.hidden_view(), p.weight_view(),
                                           p.bias_view(), p.labels_view(), logp, no_lse, o) == status::invalid_argument);
  CHECK(names_argument("temp_storage_bytes"));
  for (const float x : d_out.download()) CHECK(x == -7.0f);

  // Backward: outputs overlapping inputs or each other, wrong extents.
  device_buffer<float> d_lse(std::vector<float>(4, 1.0f));
  device_buffer<float> d_grads(std::vector<float>(1024, -7.0f));
  const auto lse = consr::make_view<consr::device_space>(static_cast<const float*>(d_lse.data()), 4);
  const auto bwd = [&](auto gh, auto gw, auto gb) {
    bytes = 0;
    return consr::cuda::linear_token_logprobs_backward(handle.get(), nullptr, bytes, p.hidden_view(), p.weight_view(),
                                                       p.bias_view(), p.labels_view(), lse, lse, gh, gw, gb, o);
  };
  float* grads = d_grads.data();
  const auto gh = consr::make_view<consr::device_space>(grads, 4, 8);
  const auto gw = consr::make_view<consr::device_space>(grads + 64, 20, 8);
  const auto gb = consr::make_view<consr::device_space>(grads + 256, 20);
  CHECK(bwd(gh, gw, gb) == status::success);
  CHECK(bwd(consr::make_view<consr::device_space>(grads, 4, 7), gw, gb) == status::invalid_argument);
  CHECK(names_argument("grad_hidden"));
  CHECK(bwd(gh, consr::make_view<consr::device_space>(grads + 64, 19, 8), gb) == status::invalid_argument);
  CHECK(names_argument("grad_weight"));
  CHECK(bwd(gh, gw, consr::make_view<consr::device_space>(grads + 256, 21)) == status::invalid_argument);
  CHECK(names_argument("grad_bias"));
  CHECK(bwd(gh, consr::make_view<consr::device_space>(grads + 16, 20, 8), gb) == status::invalid_argument);
  CHECK(names_argument("grad_hidden"));  // grad_hidden [0, 32) overlaps grad_weight [16, 176)
  CHECK(bwd(consr::make_view<consr::device_space>(const_cast<float*>(static_cast<const float*>(p.d_weight.data())), 4, 8),
            gw, gb) == status::invalid_argument);
  CHECK(names_argument("grad_hidden"));
  for (const float x : d_grads.download()) CHECK(x == -7.0f);
}
