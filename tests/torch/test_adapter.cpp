// The LibTorch adapter (consr/adapters/torch.hpp) against torch autograd of the same formulas,
// written here with ATen ops independently of consr: log_softmax + gather for token log-probs
// (spec §4), −logsigmoid for standard DPO (eq. 7), the ConSR surrogate with detach() (eq. 14), and
// the closed-form noise with consr's spec'd Philox normals (§3). Values and gradients agree to 1e-6
// in fp64 and 1e-4 in fp32. Bad input must raise c10::Error naming the argument.
// CUDA cases run where there is a GPU and this binary has consr's CUDA kernels (torch_cuda.cuh).
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <consr/adapters/torch.hpp>
#include <consr/reward.hpp>
#include <torch/autograd.h>
#include <torch/cuda.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "../host/test_util.hpp"

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace lt = consr::libtorch;
using Catch::Matchers::Contains;

namespace {

// ---- helpers -----------------------------------------------------------------------------------

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  if (a.numel() == 0) return 0.0;
  return (a.detach().to(at::kDouble).cpu() - b.detach().to(at::kDouble).cpu()).abs().max().item<double>();
}

/// The message of the c10::Error that f() throws ("<no error>" if none). Any other exception
/// type escapes and fails the test: the adapter must throw c10::Error.
template <class F>
std::string error_of(F&& f) {
  return consr_test::on_throw<c10::Error>(f, [](const c10::Error& e) { return std::string(e.what_without_backtrace()); });
}

/// Devices to run the numeric cases on: the CPU, plus CUDA when there is a GPU and consr's CUDA
/// implementation of `entry` is compiled into this binary.
template <class Entry>
std::vector<at::Device> devices_with(Entry entry) {
  std::vector<at::Device> d{at::kCPU};
  if (torch::cuda::is_available() && entry != nullptr) d.emplace_back(at::kCUDA);
  return d;
}

at::Tensor gradient(const at::Tensor& output, const at::Tensor& input, const at::Tensor& upstream) {
  return torch::autograd::grad({output}, {input}, {upstream}, /*retain_graph=*/true)[0];
}

// Reference token log-probs: log_softmax(logits / τ) gathered at the labels, 0 at ignored rows,
// computed in fp64 with ATen autograd.
at::Tensor reference_logprobs(const at::Tensor& logits, const at::Tensor& labels, double tau, int64_t ignore) {
  const at::Tensor lsm = at::log_softmax(logits.to(at::kDouble) / tau, -1);
  const at::Tensor keep = labels.ne(ignore);
  const at::Tensor safe = labels.masked_fill(keep.logical_not(), 0).to(at::kLong);
  const at::Tensor picked = lsm.gather(-1, safe.unsqueeze(-1)).squeeze(-1);
  return at::where(keep, picked, at::zeros_like(picked));
}

at::Tensor random_labels(at::IntArrayRef shape, int64_t vocab, double ignore_fraction, int64_t ignore) {
  at::Tensor labels = at::randint(0, vocab, shape, at::kLong);
  const at::Tensor drop = at::rand(shape, at::kDouble).lt(ignore_fraction);
  return labels.masked_fill(drop, ignore);
}

}  // namespace

// ================================================================================================
// Token log-probs
// ================================================================================================

TEST_CASE("token_logprobs equals log_softmax + gather, values and gradients (fp64, fp32)", "[torch][logprobs]") {
  at::manual_seed(11);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().token_logprobs)) {
    for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
      const double tol = dtype == at::kDouble ? 1e-6 : 1e-4;
      for (const int64_t vocab : {int64_t{37}, int64_t{3001}}) {
        for (const double tau : {1.0, 0.7}) {
          CAPTURE(device.str(), lt::dtype_name(dtype), vocab, tau);
          const int64_t rows = 13;
          const at::Tensor logits =
              (at::randn({rows, vocab}, at::kDouble) * 4.0).to(dtype).to(device).requires_grad_(true);
          const at::Tensor labels = random_labels({rows}, vocab, 0.25, -100).to(device);
          consr::logprob_options options;
          options.temperature = tau;
          const at::Tensor logp = lt::token_logprobs(logits, labels, options);
          REQUIRE(logp.scalar_type() == (dtype == at::kDouble ? at::kDouble : at::kFloat));
          REQUIRE(logp.device() == device);
          const at::Tensor ref = reference_logprobs(logits, labels, tau, -100);
          CHECK(max_abs_diff(logp, ref) < tol);
          const at::Tensor upstream = at::randn({rows}, logp.options());
          const at::Tensor grad = gradient(logp, logits, upstream);
          const at::Tensor grad_ref = gradient(ref, logits, upstream.to(at::kDouble));
          REQUIRE(grad.scalar_type() == dtype);
          CHECK(max_abs_diff(grad, grad_ref) < tol);
        }
      }
    }
  }
}

TEST_CASE("token_logprobs on [B, L, V]: merged rows and a causal shift read in place", "[torch][logprobs]") {
  at::manual_seed(12);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().token_logprobs)) {
    for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
      const double tol = dtype == at::kDouble ? 1e-6 : 1e-4;
      CAPTURE(device.str(), lt::dtype_name(dtype));
      const int64_t batch = 3, length = 6, vocab = 50;
      const at::Tensor logits =
          (at::randn({batch, length, vocab}, at::kDouble) * 3.0).to(dtype).to(device).requires_grad_(true);
      const at::Tensor labels = random_labels({batch, length}, vocab, 0.2, -100).to(device);
      // A TRL-style shift: rows l = 0..L-2 score labels l + 1. Neither view merges to [B·(L−1)] rows.
      const at::Tensor shifted_logits = logits.narrow(1, 0, length - 1);
      const at::Tensor shifted_labels = labels.narrow(1, 1, length - 1);
      REQUIRE_FALSE(lt::detail::rows_mergeable(shifted_logits));
      for (const bool shift : {false, true}) {
        CAPTURE(shift);
        const at::Tensor x = shift ? shifted_logits : logits;
        const at::Tensor y = shift ? shifted_labels : labels;
        const at::Tensor logp = lt::token_logprobs(x, y);
        REQUIRE(logp.sizes() == y.sizes());
        const at::Tensor ref = reference_logprobs(x, y, 1.0, -100);
        CHECK(max_abs_diff(logp, ref) < tol);
        const at::Tensor upstream = at::randn(y.sizes(), logp.options());
        CHECK(max_abs_diff(gradient(logp, logits, upstream), gradient(ref, logits, upstream.to(at::kDouble))) < tol);
      }
      // int32 labels and a batch of one.
      const at::Tensor one = logits.narrow(0, 1, 1);
      const at::Tensor one_labels = labels.narrow(0, 1, 1).to(at::kInt);
      CHECK(max_abs_diff(lt::token_logprobs(one, one_labels), reference_logprobs(one, one_labels, 1.0, -100)) < tol);
    }
  }
}

TEST_CASE("token_logprobs with bfloat16 and float16 logits", "[torch][logprobs]") {
  at::manual_seed(13);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().token_logprobs)) {
    for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
      CAPTURE(device.str(), lt::dtype_name(dtype));
      const int64_t rows = 9, vocab = 2500;
      const at::Tensor logits = (at::randn({rows, vocab}, at::kDouble) * 3.0).to(dtype).to(device).requires_grad_(true);
      const at::Tensor labels = random_labels({rows}, vocab, 0.2, -100).to(device);
      const at::Tensor logp = lt::token_logprobs(logits, labels);
      REQUIRE(logp.scalar_type() == at::kFloat);
      // Both read the same 16-bit values; consr accumulates in fp32 with fp64 finals.
      const at::Tensor ref = reference_logprobs(logits, labels, 1.0, -100);
      CHECK(max_abs_diff(logp, ref) < 1e-5);
      const at::Tensor upstream = at::randn({rows}, logp.options());
      const at::Tensor grad = gradient(logp, logits, upstream);
      REQUIRE(grad.scalar_type() == dtype);
      // Reference gradient in fp64 w.r.t. an fp64 copy of the same 16-bit values (not rounded back).
      const at::Tensor logits64 = logits.detach().to(at::kDouble).requires_grad_(true);
      const at::Tensor grad_ref =
          gradient(reference_logprobs(logits64, labels, 1.0, -100), logits64, upstream.to(at::kDouble)).cpu();
      // The gradient is rounded once to the 16-bit type: relative 2^-8 (bf16) or 2^-11 (fp16).
      const double rel = dtype == at::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
      const at::Tensor err = (grad.to(at::kDouble).cpu() - grad_ref).abs() - (grad_ref.abs() * rel + 1e-6);
      CHECK(err.max().item<double>() <= 0.0);
    }
  }
}

TEST_CASE("token_logprobs: zero upstream gradient and ignored rows give zeros", "[torch][logprobs]") {
  at::manual_seed(14);
  const at::Tensor logits = at::randn({5, 11}, at::kDouble).requires_grad_(true);
  at::Tensor labels = at::randint(0, 11, {5}, at::kLong);
  labels[2] = -100;
  const at::Tensor logp = lt::token_logprobs(logits, labels);
  CHECK(logp[2].item<double>() == 0.0);
  const at::Tensor zero_grad = gradient(logp, logits, at::zeros({5}, at::kDouble));
  CHECK(at::equal(zero_grad, at::zeros_like(logits)));
  const at::Tensor grad = gradient(logp, logits, at::ones({5}, at::kDouble));
  CHECK(at::equal(grad[2], at::zeros({11}, at::kDouble)));
  // Rows sum to zero: Σ_v (1[v = y] − softmax_v) = 0.
  CHECK(grad.sum(1).abs().max().item<double>() < 1e-12);
  // Without grad mode the forward runs and returns a tensor without history.
  {
    at::NoGradGuard no_grad;
    CHECK_FALSE(lt::token_logprobs(logits, labels).requires_grad());
  }
  // The raw forward/backward pair equals the autograd path.
  const auto [raw_logp, lse] = lt::token_logprobs_forward(logits.detach(), labels);
  CHECK(at::equal(raw_logp, logp.detach()));
  const at::Tensor ref_lse = at::logsumexp(logits.detach(), 1);
  CHECK(max_abs_diff(lse.index_select(0, at::tensor({0, 1, 3, 4}, at::kLong)),
                     ref_lse.index_select(0, at::tensor({0, 1, 3, 4}, at::kLong))) < 1e-12);
  const at::Tensor raw_grad = lt::token_logprobs_backward(logits.detach(), labels, lse, at::ones({5}, at::kDouble));
  CHECK(at::equal(raw_grad, grad));
}

TEST_CASE("token_logprobs: bad input raises c10::Error naming the argument", "[torch][logprobs][errors]") {
  const at::Tensor logits = at::randn({4, 7}, at::kFloat);
  const at::Tensor labels = at::randint(0, 7, {4}, at::kLong);
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits.to(at::kLong), labels); }),
             Contains("consr::libtorch::token_logprobs: argument 'logits': has dtype int64 but must be float32, "
                      "float64, bfloat16 or float16"));
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits, labels.to(at::kFloat)); }),
             Contains("argument 'labels': has dtype float32 but must be int64 or int32"));
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits, at::zeros({5}, at::kLong)); }),
             Contains("argument 'labels': has shape [5] but logits [4, 7] need labels [4]"));
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits.view({28}), labels); }),
             Contains("argument 'logits': has shape [28] but must be [N, V] or [B, L, V]"));
  CHECK_THAT(error_of([&] {
               lt::token_logprobs(logits, at::empty({4}, at::TensorOptions().dtype(at::kLong).device(at::kMeta)));
             }),
             Contains("argument 'labels': is on meta but 'logits' is on cpu"));
  at::Tensor bad = labels.clone();
  bad[2] = 7;
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits, bad); }),
             Contains("argument 'labels': labels[2] = 7 is outside [0, 7) and is not ignore_index (-100)"));
  at::Tensor bad3 = at::randint(0, 7, {2, 3}, at::kLong);
  bad3[1][2] = -5;
  CHECK_THAT(error_of([&] { lt::token_logprobs(at::randn({2, 3, 7}), bad3); }),
             Contains("argument 'labels': labels[1, 2] = -5 is outside [0, 7)"));
  CHECK_THAT(error_of([&] { lt::token_logprobs(at::randn({7, 4}).t(), labels); }),
             Contains("argument 'logits': the vocabulary (last) dimension has stride 4 but must be contiguous"));
  consr::logprob_options zero_tau;
  zero_tau.temperature = 0.0;
  CHECK_THAT(error_of([&] { lt::token_logprobs(logits, labels, zero_tau); }),
             Contains("argument 'temperature': must be finite and > 0"));
  const auto [logp, lse] = lt::token_logprobs_forward(logits, labels);
  CHECK_THAT(error_of([&] { lt::token_logprobs_backward(logits, labels, lse.to(at::kDouble), logp); }),
             Contains("consr::libtorch::token_logprobs_backward: argument 'lse': has dtype float64 but must be float32"));
  CHECK_THAT(error_of([&] { lt::token_logprobs_backward(logits, labels, lse, at::ones({3})); }),
             Contains("argument 'grad_token_logp': has shape [3] but must have [4]"));
  CHECK_THAT(error_of([&] { lt::token_logprobs(at::Tensor(), labels); }),
             Contains("argument 'logits': is an undefined tensor"));
  CHECK_THAT(error_of([&] { lt::add_diffusion_noise(at::Tensor(), consr::rng_key{1}); }),
             Contains("argument 'image': is an undefined tensor"));
  // A CUDA tensor in a binary without consr's CUDA kernels is a clear error, not a crash.
  if (torch::cuda::is_available() && lt::cuda_backend_registry().token_logprobs == nullptr) {
    CHECK_THAT(error_of([&] { lt::token_logprobs(logits.cuda(), labels.cuda()); }),
               Contains("is a CUDA tensor, but this program has no consr CUDA implementation"));
  }
}

// ================================================================================================
// Memory-bounded token log-probs from hidden states
// ================================================================================================

TEST_CASE("linear_token_logprobs equals log_softmax of hidden·Wᵀ + b, with gradients for hidden, weight, bias",
          "[torch][linear]") {
  at::manual_seed(15);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().linear_token_logprobs)) {
  for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-6 : 1e-4;
    for (const bool with_bias : {true, false}) {
      for (const int64_t chunk : {int64_t{8}, int64_t{4096}}) {
        CAPTURE(device.str(), lt::dtype_name(dtype), with_bias, chunk);
        const int64_t batch = 2, length = 5, hidden_size = 12, vocab = 37;
        const at::Tensor hidden =
            at::randn({batch, length, hidden_size}, at::kDouble).to(dtype).to(device).requires_grad_(true);
        const at::Tensor weight =
            (at::randn({vocab, hidden_size}, at::kDouble) * 0.5).to(dtype).to(device).requires_grad_(true);
        const at::Tensor bias =
            with_bias ? at::randn({vocab}, at::kDouble).to(dtype).to(device).requires_grad_(true) : at::Tensor();
        const at::Tensor labels = random_labels({batch, length}, vocab, 0.2, -100).to(device);
        // A causal shift: hidden[:, :-1] (a view whose rows do not merge) against labels[:, 1:].
        const at::Tensor h = hidden.narrow(1, 0, length - 1);
        const at::Tensor y = labels.narrow(1, 1, length - 1);
        consr::linear_logprob_options options;
        options.vocab_chunk = chunk;
        options.temperature = 0.9;
        const at::Tensor logp = lt::linear_token_logprobs(h, weight, bias, y, options);
        REQUIRE(logp.sizes() == y.sizes());
        REQUIRE(logp.scalar_type() == (dtype == at::kDouble ? at::kDouble : at::kFloat));
        // Reference: the materialized logits in fp64, log_softmax + gather.
        at::Tensor logits = at::matmul(h.to(at::kDouble), weight.to(at::kDouble).t());
        if (with_bias) logits = logits + bias.to(at::kDouble);
        const at::Tensor ref = reference_logprobs(logits, y, 0.9, -100);
        CHECK(max_abs_diff(logp, ref) < tol);
        const at::Tensor upstream = at::randn(y.sizes(), at::kDouble).to(device);
        std::vector<at::Tensor> inputs{hidden, weight};
        if (with_bias) inputs.push_back(bias);
        const auto grads = torch::autograd::grad({logp}, inputs, {upstream.to(logp.scalar_type())});
        const auto ref_grads = torch::autograd::grad({ref}, inputs, {upstream});
        for (std::size_t i = 0; i < inputs.size(); ++i) {
          CAPTURE(i);
          REQUIRE(grads[i].scalar_type() == dtype);
          REQUIRE(grads[i].device() == device);
          CHECK(max_abs_diff(grads[i], ref_grads[i]) < tol);
        }
      }
    }
  }
  }
}

TEST_CASE("linear_token_logprobs: a frozen projection, bf16, and the values of token_logprobs", "[torch][linear]") {
  at::manual_seed(16);
  const at::Tensor hidden = at::randn({6, 10}, at::kFloat).requires_grad_(true);
  const at::Tensor weight = at::randn({23, 10}, at::kFloat);  // frozen: no gradient wanted
  const at::Tensor labels = at::randint(0, 23, {6}, at::kLong);
  const at::Tensor logp = lt::linear_token_logprobs(hidden, weight, at::Tensor(), labels);
  const at::Tensor via_logits = lt::token_logprobs(at::matmul(hidden, weight.t()), labels);
  CHECK(max_abs_diff(logp, via_logits) < 1e-5);
  const at::Tensor upstream = at::randn({6});
  CHECK(max_abs_diff(gradient(logp, hidden, upstream), gradient(via_logits, hidden, upstream)) < 1e-5);
  // bfloat16 hidden states and projection: the same values as the materialized bf16 logits' fp32 log-probs.
  const at::Tensor hb = hidden.detach().to(at::kBFloat16).requires_grad_(true);
  const at::Tensor wb = weight.to(at::kBFloat16);
  const at::Tensor logp_bf16 = lt::linear_token_logprobs(hb, wb, at::Tensor(), labels);
  REQUIRE(logp_bf16.scalar_type() == at::kFloat);
  const at::Tensor exact = reference_logprobs(at::matmul(hb.to(at::kDouble), wb.to(at::kDouble).t()), labels, 1.0, -100);
  CHECK(max_abs_diff(logp_bf16, exact) < 1e-4);
  CHECK(gradient(logp_bf16, hb, upstream).scalar_type() == at::kBFloat16);
}

TEST_CASE("linear_token_logprobs: bad input raises c10::Error naming the argument", "[torch][linear][errors]") {
  const at::Tensor hidden = at::randn({4, 6});
  const at::Tensor weight = at::randn({9, 6});
  const at::Tensor labels = at::randint(0, 9, {4}, at::kLong);
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, at::randn({9, 5}), at::Tensor(), labels); }),
             Contains("consr::libtorch::linear_token_logprobs: argument 'weight': has shape [9, 5] but must be [V, 6]"));
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, weight.to(at::kDouble), at::Tensor(), labels); }),
             Contains("argument 'weight': has dtype float64 but 'hidden' has dtype float32"));
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, weight, at::randn({8}), labels); }),
             Contains("argument 'bias': has shape [8] but must have [9]"));
  at::Tensor bad = labels.clone();
  bad[3] = 9;
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, weight, at::Tensor(), bad); }),
             Contains("argument 'labels': labels[3] = 9 is outside [0, 9)"));
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, at::randn({6, 9}).t(), at::Tensor(), labels); }),
             Contains("argument 'weight': rows have stride 9 but must be contiguous"));
  consr::linear_logprob_options zero_chunk;
  zero_chunk.vocab_chunk = 0;
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, weight, at::Tensor(), labels, zero_chunk); }),
             Contains("argument 'vocab_chunk': must be > 0"));
  CHECK_THAT(error_of([&] { lt::linear_token_logprobs(hidden, weight, at::Tensor(), labels.narrow(0, 0, 3)); }),
             Contains("argument 'labels': has shape [3] but hidden [4, 6] needs labels [4]"));
}

// ================================================================================================
// DPO objectives
// ================================================================================================

namespace {

at::Tensor segment_sums(const at::Tensor& x, const std::vector<int64_t>& offsets) {
  std::vector<at::Tensor> sums;
  for (std::size_t s = 0; s + 1 < offsets.size(); ++s) sums.push_back(x.narrow(0, offsets[s], offsets[s + 1] - offsets[s]).sum());
  return at::stack(sums);
}

struct dpo_side_data {
  std::vector<int64_t> offsets;
  at::Tensor policy;     // leaf, requires grad
  at::Tensor reference;  // per token
  at::Tensor labels;     // some ignored, every sequence keeps >= 1 scored token
  at::Tensor weights;
};

dpo_side_data make_side(const std::vector<int64_t>& lengths, at::ScalarType dtype, bool chosen) {
  dpo_side_data d;
  d.offsets.push_back(0);
  for (const int64_t n : lengths) d.offsets.push_back(d.offsets.back() + n);
  const int64_t n = d.offsets.back();
  d.policy = (at::randn({n}, at::kDouble) - 2.0).to(dtype).requires_grad_(true);
  d.reference = (at::randn({n}, at::kDouble) - 2.0).to(dtype);
  d.labels = at::randint(0, 100, {n}, at::kLong);
  for (std::size_t s = 0; s + 1 < d.offsets.size(); ++s)
    if (d.offsets[s + 1] - d.offsets[s] >= 2) d.labels[d.offsets[s]] = -100;  // a prompt-like ignored token
  const at::Tensor w = at::rand({n}, at::kDouble) * 0.2;
  d.weights = (chosen ? 1.0 + w : 1.0 - w).to(dtype);
  return d;
}

struct reference_dpo {
  at::Tensor per_pair;  // the per-pair objective (autograd through the policies)
  at::Tensor delta, chosen_reward, rejected_reward;
};

// Spec §7 written with ATen ops: eq. 7 with logsigmoid, eq. 11, eq. 14 with detach().
reference_dpo reference_objective(const dpo_side_data& c, const dpo_side_data& r, const consr::dpo_options& o,
                                  bool use_labels, bool per_sequence_reference) {
  auto side = [&](const dpo_side_data& d, at::Tensor& log_ratio, at::Tensor& length, at::Tensor& weighted) {
    const at::Tensor a = d.policy.to(at::kDouble);
    const at::Tensor mask = use_labels ? d.labels.ne(o.ignore_index).to(at::kDouble) : at::ones_like(a);
    const at::Tensor ref = d.reference.to(at::kDouble);
    log_ratio = per_sequence_reference ? segment_sums(a * mask, d.offsets) - segment_sums(ref * mask, d.offsets)
                                       : segment_sums((a - ref) * mask, d.offsets);
    length = segment_sums(mask, d.offsets);
    const at::Tensor omega = o.loss == consr::dpo_loss_type::consr && o.visual_weights ? d.weights.to(at::kDouble)
                                                                                        : at::ones_like(a);
    weighted = segment_sums(omega * a * mask, d.offsets);
  };
  at::Tensor sw, nw, ww, sl, nl, wl;
  side(c, sw, nw, ww);
  side(r, sl, nl, wl);
  const double beta = o.beta;
  reference_dpo ref;
  if (o.loss == consr::dpo_loss_type::consr && o.length_normalize)
    ref.delta = (nw + nl) / 2 * (beta / nw * sw - beta / nl * sl);
  else
    ref.delta = beta * (sw - sl);
  ref.chosen_reward = beta * sw;
  ref.rejected_reward = beta * sl;
  if (o.loss == consr::dpo_loss_type::standard) {
    ref.per_pair = -at::log_sigmoid(ref.delta);
  } else {
    const double factor = o.scale_by_beta ? beta : 1.0;
    ref.per_pair = -at::sigmoid(-ref.delta).detach() * (ww - wl) * factor;
  }
  return ref;
}

lt::dpo_side torch_side(const dpo_side_data& d, bool use_labels, bool per_sequence_reference, int64_t ignore) {
  lt::dpo_side s;
  s.policy_logp = d.policy;
  s.offsets = at::tensor(d.offsets, at::kLong).to(at::kInt);  // int32 offsets are accepted too
  if (per_sequence_reference) {
    const at::Tensor mask = use_labels ? d.labels.ne(ignore).to(d.reference.scalar_type()) : at::ones_like(d.reference);
    s.reference_logp_sum = segment_sums(d.reference.to(at::kDouble) * mask.to(at::kDouble), d.offsets);
  } else {
    s.reference_logp = d.reference;
  }
  if (use_labels) s.labels = d.labels;
  s.weights = d.weights;
  return s;
}

}  // namespace

TEST_CASE("dpo_loss equals eq. 7 (logsigmoid) and eq. 14 (detach) for every option of spec §7", "[torch][dpo]") {
  at::manual_seed(21);
  int combinations = 0;
  for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-6 : 1e-4;
    const dpo_side_data chosen = make_side({3, 1, 5, 2}, dtype, true);
    const dpo_side_data rejected = make_side({2, 4, 1, 3}, dtype, false);
    for (const auto loss : {consr::dpo_loss_type::standard, consr::dpo_loss_type::consr}) {
      for (const bool length_normalize : {false, true}) {
        for (const bool visual : {false, true}) {
          for (const bool scale_by_beta : {false, true}) {
            for (const auto reduction : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none}) {
              for (const bool use_labels : {false, true}) {
                for (const bool per_sequence : {false, true}) {
                  consr::dpo_options o;
                  o.loss = loss;
                  o.beta = 0.3;
                  o.length_normalize = length_normalize;
                  o.visual_weights = visual;
                  o.scale_by_beta = scale_by_beta;
                  o.reduction = reduction;
                  CAPTURE(lt::dtype_name(dtype), static_cast<int>(loss), length_normalize, visual, scale_by_beta,
                          static_cast<int>(reduction), use_labels, per_sequence);
                  const lt::dpo_result got =
                      lt::dpo_loss(torch_side(chosen, use_labels, per_sequence, o.ignore_index),
                                   torch_side(rejected, use_labels, per_sequence, o.ignore_index), o);
                  const reference_dpo ref = reference_objective(chosen, rejected, o, use_labels, per_sequence);
                  const int64_t pairs = 4;
                  at::Tensor ref_loss, upstream;
                  if (reduction == consr::loss_reduction::none) {
                    ref_loss = ref.per_pair;
                    upstream = at::randn({pairs}, at::kDouble);
                    REQUIRE(got.loss.sizes() == at::IntArrayRef{pairs});
                  } else {
                    ref_loss = reduction == consr::loss_reduction::mean ? ref.per_pair.mean() : ref.per_pair.sum();
                    upstream = at::scalar_tensor(1.7, at::kDouble);
                    REQUIRE(got.loss.dim() == 0);
                  }
                  REQUIRE(got.loss.scalar_type() == dtype);
                  CHECK(max_abs_diff(got.loss, ref_loss) < tol);
                  // Metrics (spec §7 "reported per pair").
                  REQUIRE(got.metrics.sizes() == at::IntArrayRef{pairs, lt::dpo_metric_count});
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::margin_logit), ref.delta) < tol);
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::sigma_neg), at::sigmoid(-ref.delta)) < tol);
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::chosen_reward), ref.chosen_reward) < tol);
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::rejected_reward), ref.rejected_reward) < tol);
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::reward_margin), ref.chosen_reward - ref.rejected_reward) < tol);
                  CHECK(at::equal(got.metric(lt::dpo_metric::accuracy).to(at::kDouble), ref.delta.gt(0).to(at::kDouble)));
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::dpo_loss), -at::log_sigmoid(ref.delta)) < tol);
                  CHECK(max_abs_diff(got.metric(lt::dpo_metric::loss), ref.per_pair) < tol);
                  CHECK_FALSE(got.metrics.requires_grad());
                  // Gradients w.r.t. both policies.
                  const auto grads = torch::autograd::grad({got.loss}, {chosen.policy, rejected.policy},
                                                           {upstream.to(dtype)});
                  const auto ref_grads = torch::autograd::grad({ref_loss}, {chosen.policy, rejected.policy}, {upstream});
                  CHECK(max_abs_diff(grads[0], ref_grads[0]) < tol);
                  CHECK(max_abs_diff(grads[1], ref_grads[1]) < tol);
                  ++combinations;
                }
              }
            }
          }
        }
      }
    }
  }
  CHECK(combinations == 2 * 2 * 2 * 2 * 2 * 3 * 2 * 2);
}

TEST_CASE("dpo_loss and visual_weights on CUDA equal the CPU", "[torch][dpo][cuda]") {
  if (!torch::cuda::is_available() || lt::cuda_backend_registry().dpo_forward == nullptr) {
    WARN("no CUDA device or no consr CUDA kernels in this binary: CUDA DPO cases not run");
    return;
  }
  at::manual_seed(26);
  const dpo_side_data c = make_side({3, 1, 5, 2}, at::kDouble, true);
  const dpo_side_data r = make_side({2, 4, 1, 3}, at::kDouble, false);
  auto to_cuda = [](lt::dpo_side s) {
    for (at::Tensor* t : {&s.offsets, &s.reference_logp, &s.reference_logp_sum, &s.labels, &s.weights})
      if (t->defined()) *t = t->cuda();
    return s;
  };
  for (const auto loss : {consr::dpo_loss_type::standard, consr::dpo_loss_type::consr}) {
    for (const auto reduction : {consr::loss_reduction::mean, consr::loss_reduction::none}) {
      for (const bool per_sequence : {false, true}) {
        consr::dpo_options o;
        o.loss = loss;
        o.reduction = reduction;
        CAPTURE(static_cast<int>(loss), static_cast<int>(reduction), per_sequence);
        const lt::dpo_side cpu_c = torch_side(c, true, per_sequence, -100), cpu_r = torch_side(r, true, per_sequence, -100);
        const at::Tensor gpu_policy_c = c.policy.detach().cuda().requires_grad_(true);
        const at::Tensor gpu_policy_r = r.policy.detach().cuda().requires_grad_(true);
        lt::dpo_side gpu_c = to_cuda(cpu_c), gpu_r = to_cuda(cpu_r);
        gpu_c.policy_logp = gpu_policy_c;
        gpu_r.policy_logp = gpu_policy_r;
        const lt::dpo_result want = lt::dpo_loss(cpu_c, cpu_r, o);
        const lt::dpo_result got = lt::dpo_loss(gpu_c, gpu_r, o);
        REQUIRE(got.loss.device().is_cuda());
        CHECK(max_abs_diff(got.loss, want.loss) < 1e-12);
        CHECK(max_abs_diff(got.metrics, want.metrics) < 1e-12);
        const at::Tensor upstream = reduction == consr::loss_reduction::none ? at::randn({4}, at::kDouble)
                                                                             : at::scalar_tensor(0.7, at::kDouble);
        const auto g_want = torch::autograd::grad({want.loss}, {c.policy, r.policy}, {upstream});
        const auto g_got = torch::autograd::grad({got.loss}, {gpu_policy_c, gpu_policy_r}, {upstream.cuda()});
        CHECK(max_abs_diff(g_got[0], g_want[0]) < 1e-12);
        CHECK(max_abs_diff(g_got[1], g_want[1]) < 1e-12);
      }
    }
  }
  // An empty sequence under length normalization is reported from the device, naming side and pair.
  lt::dpo_side bad = to_cuda(torch_side(r, true, false, -100));
  bad.policy_logp = r.policy.detach().cuda();
  bad.labels = at::full({10}, -100, at::kLong).cuda();
  lt::dpo_side good = to_cuda(torch_side(c, true, false, -100));
  good.policy_logp = c.policy.detach().cuda();
  CHECK_THAT(error_of([&] { lt::dpo_loss(good, bad); }), Contains("argument 'rejected': pair 0 has no scored token"));
  const at::Tensor clean = at::rand({9}, at::kDouble).log(), corrupt = at::rand({9}, at::kDouble).log();
  CHECK(max_abs_diff(lt::visual_weights(clean.cuda(), corrupt.cuda(), consr::weight_side::chosen),
                     lt::visual_weights(clean, corrupt, consr::weight_side::chosen)) < 1e-15);
}

TEST_CASE("dpo_loss: padded [P, L] sides equal the packed form", "[torch][dpo]") {
  at::manual_seed(22);
  const dpo_side_data c = make_side({3, 1, 4}, at::kDouble, true);
  const dpo_side_data r = make_side({2, 4, 1}, at::kDouble, false);
  auto padded = [](const dpo_side_data& d, at::Tensor& policy, lt::dpo_side& side) {
    const int64_t pairs = static_cast<int64_t>(d.offsets.size()) - 1, width = 5;
    policy = at::zeros({pairs, width}, at::kDouble).requires_grad_(true);
    at::Tensor labels = at::full({pairs, width}, -100, at::kLong);
    at::Tensor ref = at::zeros({pairs, width}, at::kDouble);
    at::Tensor w = at::ones({pairs, width}, at::kDouble);
    at::Tensor scatter_index = at::zeros({d.offsets.back()}, at::kLong);
    for (int64_t s = 0; s < pairs; ++s)
      for (int64_t t = d.offsets[s]; t < d.offsets[s + 1]; ++t) {
        labels[s][t - d.offsets[s]] = d.labels[t];
        ref[s][t - d.offsets[s]] = d.reference[t];
        w[s][t - d.offsets[s]] = d.weights[t];
        scatter_index[t] = s * width + (t - d.offsets[s]);
      }
    // The padded policy holds the packed values (its own leaf, so gradients can be compared).
    {
      at::NoGradGuard g;
      policy.view({-1}).index_copy_(0, scatter_index, d.policy.detach());
    }
    side.policy_logp = policy;
    side.reference_logp = ref;
    side.labels = labels;
    side.weights = w;
    return scatter_index;
  };
  at::Tensor pc, pr;
  lt::dpo_side sc, sr;
  const at::Tensor ic = padded(c, pc, sc), ir = padded(r, pr, sr);
  consr::dpo_options o;
  const lt::dpo_result packed = lt::dpo_loss(torch_side(c, true, false, -100), torch_side(r, true, false, -100), o);
  const lt::dpo_result pad = lt::dpo_loss(sc, sr, o);
  CHECK(max_abs_diff(packed.loss, pad.loss) < 1e-12);
  CHECK(max_abs_diff(packed.metrics, pad.metrics) < 1e-12);
  const auto g_packed = torch::autograd::grad({packed.loss}, {c.policy, r.policy});
  const auto g_pad = torch::autograd::grad({pad.loss}, {pc, pr});
  CHECK(max_abs_diff(g_pad[0].view({-1}).index_select(0, ic), g_packed[0]) < 1e-12);
  CHECK(max_abs_diff(g_pad[1].view({-1}).index_select(0, ir), g_packed[1]) < 1e-12);
  // Padding positions get no gradient.
  CHECK(g_pad[0].view({-1}).abs().sum().item<double>() == Approx(g_packed[0].abs().sum().item<double>()));
}

TEST_CASE("dpo_loss: consr with scale_by_beta, no length normalization and unit weights is standard DPO",
          "[torch][dpo]") {
  // Spec §7 required check, through the adapter: ω = 1 from visual_weights with α = 0.
  at::manual_seed(23);
  dpo_side_data c = make_side({4, 2}, at::kDouble, true);
  dpo_side_data r = make_side({3, 3}, at::kDouble, false);
  consr::visual_weight_options zero_alpha;
  zero_alpha.alpha = 0.0;
  c.weights = lt::visual_weights(c.policy, c.reference, consr::weight_side::chosen, zero_alpha);
  r.weights = lt::visual_weights(r.policy, r.reference, consr::weight_side::rejected, zero_alpha);
  REQUIRE(at::equal(c.weights, at::ones_like(c.weights)));
  consr::dpo_options standard;
  standard.loss = consr::dpo_loss_type::standard;
  consr::dpo_options surrogate;
  surrogate.scale_by_beta = true;
  surrogate.length_normalize = false;
  const auto gs = torch::autograd::grad(
      {lt::dpo_loss(torch_side(c, true, false, -100), torch_side(r, true, false, -100), standard).loss},
      {c.policy, r.policy});
  const auto gc = torch::autograd::grad(
      {lt::dpo_loss(torch_side(c, true, false, -100), torch_side(r, true, false, -100), surrogate).loss},
      {c.policy, r.policy});
  CHECK(at::equal(gs[0], gc[0]));
  CHECK(at::equal(gs[1], gc[1]));
}

TEST_CASE("visual_weights equals 1 ± clip(α·Δp, lo, hi) (eqs. 12-13)", "[torch][dpo]") {
  at::manual_seed(24);
  const at::Tensor clean = at::rand({3, 7}, at::kDouble).log();
  const at::Tensor corrupt = at::rand({3, 7}, at::kDouble).log();
  consr::visual_weight_options o;
  o.alpha = 0.7;
  o.clip_lo = -0.05;
  o.clip_hi = 0.15;
  const at::Tensor clipped = (o.alpha * (clean.exp() - corrupt.exp())).clamp(o.clip_lo, o.clip_hi);
  CHECK(max_abs_diff(lt::visual_weights(clean, corrupt, consr::weight_side::chosen, o), 1.0 + clipped) < 1e-15);
  CHECK(max_abs_diff(lt::visual_weights(clean, corrupt, consr::weight_side::rejected, o), 1.0 - clipped) < 1e-15);
  const at::Tensor w32 = lt::visual_weights(clean.to(at::kBFloat16), corrupt.to(at::kFloat), consr::weight_side::chosen);
  CHECK(w32.scalar_type() == at::kFloat);
  CHECK_THAT(error_of([&] { lt::visual_weights(clean, corrupt.view({21}), consr::weight_side::chosen); }),
             Contains("argument 'logp_corrupt': has shape [21] but must have [3, 7]"));
  o.clip_lo = 0.3;
  CHECK_THAT(error_of([&] { lt::visual_weights(clean, corrupt, consr::weight_side::chosen, o); }),
             Contains("argument 'options.clip_lo'"));
}

TEST_CASE("dpo_loss: bad input raises c10::Error naming the argument", "[torch][dpo][errors]") {
  at::manual_seed(25);
  const dpo_side_data c = make_side({3, 2}, at::kDouble, true);
  const dpo_side_data r = make_side({2, 2}, at::kDouble, false);
  const consr::dpo_options o;
  auto run = [&](const lt::dpo_side& a, const lt::dpo_side& b, const consr::dpo_options& opt) {
    return error_of([&] { lt::dpo_loss(a, b, opt); });
  };
  const lt::dpo_side good_c = torch_side(c, true, false, -100), good_r = torch_side(r, true, false, -100);
  REQUIRE(run(good_c, good_r, o) == "<no error>");

  lt::dpo_side s = good_c;
  s.offsets = at::tensor(std::vector<int64_t>{0, 3, 4}, at::kLong);
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.offsets': offsets[2] (the end of the last segment) is 4 "
                                         "but 'chosen.policy_logp' has 5 elements"));
  s = good_r;
  s.offsets = at::tensor(std::vector<int64_t>{0, 4}, at::kLong);
  CHECK_THAT(run(good_c, s, o), Contains("argument 'rejected.offsets': describes 1 pairs but 'chosen.offsets' describes 2"));
  s = good_c;
  s.offsets = at::tensor(std::vector<double>{0, 3, 5}, at::kDouble);
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.offsets': has dtype float64 but must be int64 or int32"));
  s = good_c;
  s.policy_logp = at::zeros({5}, at::kLong);
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.policy_logp': has dtype int64"));
  s = good_r;
  s.policy_logp = r.policy.to(at::kFloat);
  CHECK_THAT(run(good_c, s, o), Contains("argument 'rejected.policy_logp': has dtype float32 but 'chosen.policy_logp' "
                                         "has dtype float64"));
  s = good_c;
  s.labels = at::zeros({4}, at::kLong);
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.labels': has shape [4] but 'chosen.policy_logp' has shape [5]"));
  s = good_r;
  s.reference_logp = at::Tensor();
  CHECK_THAT(run(good_c, s, o), Contains("argument 'rejected.reference_logp': is missing"));
  s = good_c;
  s.weights = at::Tensor();
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.weights': has 0 elements but the consr loss with "
                                         "visual_weights needs one per token"));
  s = good_c;
  s.weights = at::empty({5}, at::TensorOptions().dtype(at::kDouble).device(at::kMeta));
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.weights': is on meta but 'chosen.policy_logp' is on cpu"));
  s = good_r;
  s.labels = at::full({4}, -100, at::kLong);
  s.labels[0] = 3;
  s.labels[1] = 3;  // pair 1 (tokens 2..3) keeps no scored token
  CHECK_THAT(run(good_c, s, o), Contains("argument 'rejected': pair 1 has no scored token"));
  s = good_c;
  s.offsets = at::Tensor();
  CHECK_THAT(run(s, good_r, o), Contains("argument 'chosen.policy_logp': has shape [5] but without 'chosen.offsets' it "
                                         "must be padded [P, L]"));
  consr::dpo_options bad_beta;
  bad_beta.beta = -1.0;
  CHECK_THAT(run(good_c, good_r, bad_beta), Contains("argument 'options.beta'"));
  CHECK_THAT(error_of([] { lt::parse_loss_reduction("avg"); }),
             Contains("argument 'reduction': is \"avg\" but must be \"mean\", \"sum\" or \"none\""));
  CHECK_THAT(error_of([] { lt::parse_dpo_loss_type("ipo"); }), Contains("argument 'loss_type'"));
}

// ================================================================================================
// Corruptions
// ================================================================================================

TEST_CASE("add_diffusion_noise: the host algorithm, the spec's formula, and ∂out/∂image = sqrt(ᾱ_t)",
          "[torch][corruption]") {
  at::manual_seed(31);
  const consr::rng_key key{1234, 5};
  consr::diffusion_noise_options o;  // step 800, sigmoid schedule: the reward corruption
  const consr::diffusion_coefficients coef = consr::diffusion_noise_coefficients(o);
  // Spec §3 table, t = 800: sqrt(ᾱ) = 0.467014, sqrt(1 − ᾱ) = 0.884250 (6 digits).
  CHECK(std::abs(coef.sqrt_alpha_bar - 0.467014) < 1e-6);
  CHECK(std::abs(coef.sqrt_one_minus_alpha_bar - 0.884250) < 1e-6);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().add_diffusion_noise)) {
    for (const at::ScalarType dtype : {at::kDouble, at::kFloat, at::kBFloat16}) {
      CAPTURE(device.str(), lt::dtype_name(dtype));
      const at::Tensor image = at::randn({2, 3, 5, 7}, at::kDouble).to(dtype).to(device).requires_grad_(true);
      const at::Tensor out = lt::add_diffusion_noise(image, key, o);
      REQUIRE(out.scalar_type() == dtype);
      // Host algorithm on the same bits (CUDA: same noise to within float rounding, spec §3).
      const at::Tensor x = image.detach().cpu().contiguous();
      at::Tensor expected = at::empty_like(x);
      lt::detail::dispatch_floating(x, "test", "image", [&](auto tag) {
        using T = typename decltype(tag)::type;
        consr::add_diffusion_noise<T, 4>(lt::host_view_of<const T, 4>(x), lt::host_view_of<T, 4>(expected), key, o);
      });
      if (device.is_cpu()) CHECK(at::equal(out, expected));
      else CHECK(max_abs_diff(out, expected) < (dtype == at::kBFloat16 ? 1e-2 : 1e-5));
      // The formula with consr's spec'd normals ε_i = normal_at(key, i).
      const int64_t n = x.numel();
      std::vector<double> eps(static_cast<std::size_t>(n));
      for (int64_t i = 0; i < n; ++i) eps[static_cast<std::size_t>(i)] = consr::normal_at(key, static_cast<std::uint64_t>(i));
      const at::Tensor formula = coef.sqrt_alpha_bar * x.to(at::kDouble) +
                                 coef.sqrt_one_minus_alpha_bar * at::tensor(eps, at::kDouble).view(x.sizes());
      const double value_tol = dtype == at::kDouble ? 1e-6 : dtype == at::kFloat ? 1e-5 : 3e-2;
      CHECK(max_abs_diff(out, formula) < value_tol);
      // Gradient: sqrt(ᾱ_t) · upstream.
      const at::Tensor upstream = at::randn(out.sizes(), at::kDouble).to(dtype).to(device);
      const at::Tensor grad = gradient(out, image, upstream);
      const double grad_tol = dtype == at::kDouble ? 1e-12 : dtype == at::kFloat ? 1e-6 : 1e-2;
      CHECK(max_abs_diff(grad, upstream.to(at::kDouble) * coef.sqrt_alpha_bar) < grad_tol);
    }
  }
}

TEST_CASE("add_diffusion_noise: logical indices, element_offset pieces, schedules", "[torch][corruption]") {
  at::manual_seed(32);
  const consr::rng_key key{99, 0};
  consr::diffusion_noise_options o;
  o.step = 500;
  o.schedule = consr::noise_schedule::cosine;
  const at::Tensor image = at::randn({3, 4, 6}, at::kFloat);
  // A non-contiguous view gets the noise of its logical (row-major) positions.
  const at::Tensor t = image.transpose(1, 2);
  CHECK(at::equal(lt::add_diffusion_noise(t, key, o), lt::add_diffusion_noise(t.contiguous(), key, o)));
  // Noising in pieces with element_offset gives the noise of the whole.
  const at::Tensor whole = lt::add_diffusion_noise(image, key, o);
  consr::diffusion_noise_options second = o;
  second.element_offset = 24;
  const at::Tensor a = lt::add_diffusion_noise(image.narrow(0, 0, 1), key, o);
  const at::Tensor b = lt::add_diffusion_noise(image.narrow(0, 1, 2), key, second);
  CHECK(at::equal(at::cat({a, b}, 0), whole));
  // Another key gives other noise.
  CHECK_FALSE(at::equal(lt::add_diffusion_noise(image, consr::rng_key{99, 1}, o), whole));
  o.step = 1000;
  CHECK_THAT(error_of([&] { lt::add_diffusion_noise(image, key, o); }),
             Contains("argument 'step': step 1000 outside [0, 1000)"));
  CHECK_THAT(error_of([&] { lt::add_diffusion_noise(image.to(at::kInt), key); }), Contains("argument 'image': has dtype int32"));
  CHECK_THAT(error_of([] { lt::parse_noise_schedule("quadratic"); }), Contains("argument 'schedule'"));
}

TEST_CASE("random_patch_mask: the host algorithm and a masked gradient", "[torch][corruption]") {
  at::manual_seed(33);
  const consr::rng_key key{7, 2};
  consr::patch_mask_options o{4, 0.4, -1.5, 3};  // patch size, probability, fill value, image offset
  for (const at::Device device : devices_with(lt::cuda_backend_registry().random_patch_mask)) {
    CAPTURE(device.str());
    const at::Tensor image = at::randn({2, 3, 9, 10}, at::kDouble).to(device).requires_grad_(true);
    const at::Tensor out = lt::random_patch_mask(image, key, o);
    at::Tensor mask = at::zeros({2, 1, 9, 10}, at::kDouble);
    const int64_t grid_cols = (10 + 3) / 4;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t y = 0; y < 9; ++y)
        for (int64_t x = 0; x < 10; ++x)
          if (consr::patch_is_masked(key, o.image_offset + static_cast<std::uint64_t>(b),
                                     static_cast<std::uint64_t>((y / 4) * grid_cols + x / 4), o.probability))
            mask[b][0][y][x] = 1.0;
    REQUIRE(mask.sum().item<double>() > 0);
    REQUIRE(mask.sum().item<double>() < 180);
    const at::Tensor x = image.detach().cpu();
    const at::Tensor expected = at::where(mask.to(at::kBool).expand_as(x), at::full_like(x, o.fill_value), x);
    CHECK(at::equal(out.detach().cpu(), expected));
    const at::Tensor upstream = at::randn(out.sizes(), at::kDouble).to(device);
    CHECK(at::equal(gradient(out, image, upstream).cpu(), upstream.cpu() * (1.0 - mask)));
    // [C, H, W] is image image_offset of the stream, as the host's.
    const at::Tensor single = lt::random_patch_mask(image.detach().select(0, 0), key, o);
    CHECK(at::equal(single.cpu(), expected.select(0, 0)));
  }
  o.probability = 1.5;
  CHECK_THAT(error_of([&] { lt::random_patch_mask(at::randn({3, 4, 4}), key, o); }),
             Contains("argument 'probability': must be in [0, 1]"));
  CHECK_THAT(error_of([&] { lt::random_patch_mask(at::randn({4, 4}), key); }),
             Contains("argument 'image': has shape [4, 4] but must be [C, H, W] or [B, C, H, W]"));
}

TEST_CASE("mixup: λ·image + (1 − λ)·other and its gradients", "[torch][corruption]") {
  at::manual_seed(34);
  for (const at::Device device : devices_with(lt::cuda_backend_registry().mixup)) {
    CAPTURE(device.str());
    const at::Tensor image = at::randn({2, 3, 4}, at::kDouble).to(device).requires_grad_(true);
    const at::Tensor other = at::randn({2, 3, 4}, at::kDouble).to(device).requires_grad_(true);
    const double lambda = 0.3;
    const at::Tensor out = lt::mixup(image, other, lambda);
    CHECK(max_abs_diff(out, lambda * image + (1 - lambda) * other) < 1e-15);
    const at::Tensor upstream = at::randn(out.sizes(), at::kDouble).to(device);
    const auto grads = torch::autograd::grad({out}, {image, other}, {upstream});
    CHECK(max_abs_diff(grads[0], lambda * upstream) < 1e-15);
    CHECK(max_abs_diff(grads[1], (1 - lambda) * upstream) < 1e-15);
  }
  const at::Tensor x = at::randn({2, 3});
  CHECK_THAT(error_of([&] { lt::mixup(x, at::randn({3, 2}), 0.5); }), Contains("argument 'other': has shape [3, 2]"));
  CHECK_THAT(error_of([&] { lt::mixup(x, x.to(at::kDouble), 0.5); }),
             Contains("argument 'other': has dtype float64 but 'image' has dtype float32"));
  CHECK_THAT(error_of([&] { lt::mixup(x, x, 1.5); }), Contains("argument 'lambda': must be in [0, 1], got 1.5"));
}

TEST_CASE("random_resized_crop: the host algorithm, ATen's bilinear resize, and the adjoint gradient",
          "[torch][corruption]") {
  at::manual_seed(35);
  const consr::rng_key key{42, 1};
  consr::resized_crop_options o;
  o.image_offset = 5;
  for (const at::Device device : devices_with(lt::cuda_backend_registry().random_resized_crop)) {
    CAPTURE(device.str());
    const int64_t height = 11, width = 13;
    const at::Tensor image = at::randn({3, 2, height, width}, at::kDouble).to(device).requires_grad_(true);
    const at::Tensor out = lt::random_resized_crop(image, key, o);
    const at::Tensor x = image.detach().cpu();
    at::Tensor expected = at::empty_like(x);
    consr::random_resized_crop<double, 4>(lt::host_view_of<const double, 4>(x), lt::host_view_of<double, 4>(expected), key, o);
    if (device.is_cpu()) CHECK(at::equal(out, expected));
    else CHECK(max_abs_diff(out, expected) < 1e-12);
    // Independent check of the forward: ATen's bilinear resize (align_corners = false) of each box.
    for (int64_t b = 0; b < 3; ++b) {
      const consr::crop_box box = consr::draw_resized_crop_box(height, width, key, o.image_offset + static_cast<std::uint64_t>(b), o);
      const at::Tensor crop = x.narrow(0, b, 1).narrow(2, box.top, box.height).narrow(3, box.left, box.width);
      const std::array<int64_t, 2> size{height, width};
      const at::Tensor resized = at::upsample_bilinear2d(crop, at::IntArrayRef(size), false, c10::nullopt, c10::nullopt);
      CHECK(max_abs_diff(resized.select(0, 0), expected.select(0, b)) < 1e-12);
    }
    // The backward is the adjoint of the (linear) forward: <crop(v), g> = <v, crop^T(g)>.
    const at::Tensor g = at::randn(out.sizes(), at::kDouble).to(device);
    const at::Tensor v = at::randn(image.sizes(), at::kDouble).to(device);
    const at::Tensor adjoint = gradient(out, image, g);
    const double lhs = (lt::random_resized_crop(v, key, o) * g).sum().item<double>();
    const double rhs = (v * adjoint).sum().item<double>();
    CHECK(std::abs(lhs - rhs) < 1e-10 * (1.0 + std::abs(lhs)));
    // [C, H, W] input.
    const at::Tensor single = lt::random_resized_crop(image.detach().select(0, 0), key, o);
    CHECK(max_abs_diff(single, expected.select(0, 0)) < 1e-12);
    const at::Tensor g3 = gradient(lt::random_resized_crop(image.select(0, 1), key, o), image, g.select(0, 0));
    CHECK(g3.select(0, 0).abs().sum().item<double>() == 0.0);
  }
  o.scale_min = 0.0;
  CHECK_THAT(error_of([&] { lt::random_resized_crop(at::randn({1, 4, 4}), key, o); }), Contains("argument 'scale_min'"));
}

TEST_CASE("view_of checks dtype, rank and device", "[torch][views]") {
  const at::Tensor t = at::arange(12, at::kFloat).view({3, 4});
  const consr::host_view<const float, 2> v = lt::host_view_of<const float, 2>(t, "t");
  CHECK(v.extent(0) == 3);
  CHECK(v.stride(0) == 4);
  CHECK(v(2, 1) == 9.0f);
  const auto tt = lt::host_view_of<float, 2>(t.t(), "t");
  CHECK(tt.stride(0) == 1);
  CHECK(tt(1, 2) == 9.0f);
  const at::Tensor h = at::ones({2}, at::kBFloat16);
  CHECK(static_cast<float>(lt::host_view_of<const consr::bfloat16, 1>(h)[1]) == 1.0f);
  CHECK_THAT(error_of([&] { lt::host_view_of<const double, 2>(t, "weights", "my_fn"); }),
             Contains("my_fn: argument 'weights': has dtype float32 but float64 is required"));
  CHECK_THAT(error_of([&] { lt::host_view_of<const float, 1>(t, "weights"); }),
             Contains("argument 'weights': has 2 dimensions [3, 4] but must have 1"));
  CHECK_THAT(error_of([&] { lt::device_view_of<const float, 2>(t, "weights"); }),
             Contains("argument 'weights': is on cpu but a CUDA tensor is required here"));
}

TEST_CASE("option enums: consr's parse/to_string and the adapter's c10::Error wrappers", "[torch][options]") {
  // consr's own parsers (consr/{corruption,dpo,reward}.hpp) round-trip with to_string.
  for (const auto s : {consr::noise_schedule::sigmoid, consr::noise_schedule::linear,
                       consr::noise_schedule::scaled_linear, consr::noise_schedule::cosine}) {
    CHECK(consr::parse_noise_schedule(consr::to_string(s)) == s);
    CHECK(lt::parse_noise_schedule(consr::to_string(s)) == s);
  }
  for (const auto t : {consr::dpo_loss_type::standard, consr::dpo_loss_type::consr}) {
    CHECK(consr::parse_dpo_loss_type(consr::to_string(t)) == t);
    CHECK(lt::parse_dpo_loss_type(consr::to_string(t)) == t);
  }
  for (const auto r : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none}) {
    CHECK(consr::parse_loss_reduction(consr::to_string(r)) == r);
    CHECK(lt::parse_loss_reduction(consr::to_string(r)) == r);
  }
  for (const auto w : {consr::weight_side::chosen, consr::weight_side::rejected}) {
    CHECK(consr::parse_weight_side(consr::to_string(w)) == w);
    CHECK(lt::parse_weight_side(consr::to_string(w)) == w);
  }
  for (const auto s : {consr::reward_space::probability, consr::reward_space::log})
    CHECK(consr::parse_reward_space(consr::to_string(s)) == s);
  // consr's parsers throw consr::error naming the argument ...
  auto consr_error = [](auto&& f) { return consr_test::error_message(f); };
  CHECK(consr_error([] { consr::parse_noise_schedule("quadratic"); }) ==
        "consr::parse_noise_schedule: argument 'schedule': is \"quadratic\" but must be \"sigmoid\", \"linear\", "
        "\"scaled_linear\" or \"cosine\"");
  CHECK(consr_error([] { consr::parse_dpo_loss_type("ipo"); }) ==
        "consr::parse_dpo_loss_type: argument 'loss_type': is \"ipo\" but must be \"consr\" (eq. 14) or \"standard\" "
        "(eq. 7)");
  CHECK_THAT(consr_error([] { consr::parse_loss_reduction("avg"); }), Contains("argument 'reduction'"));
  CHECK_THAT(consr_error([] { consr::parse_weight_side("both"); }), Contains("argument 'side'"));
  CHECK_THAT(consr_error([] { consr::parse_reward_space("linear"); }),
             Contains("consr::parse_reward_space: argument 'space': is \"linear\" but must be \"probability\" or "
                      "\"log\""));
  // ... and the adapter's wrappers c10::Error with the same message under their own name.
  const std::pair<std::function<void()>, const char*> wrapped[] = {
      {[] { lt::parse_noise_schedule("quadratic"); },
       "consr::libtorch::parse_noise_schedule: argument 'schedule': is \"quadratic\" but must be \"sigmoid\", "
       "\"linear\", \"scaled_linear\" or \"cosine\""},
      {[] { lt::parse_loss_reduction("avg"); },
       "consr::libtorch::parse_loss_reduction: argument 'reduction': is \"avg\" but must be \"mean\", \"sum\" or "
       "\"none\""},
      {[] { lt::parse_weight_side("both"); },
       "consr::libtorch::parse_weight_side: argument 'side': is \"both\" but must be \"chosen\" or \"rejected\""},
  };
  for (const auto& [call, message] : wrapped) CHECK_THAT(error_of(call), Contains(message));
}
