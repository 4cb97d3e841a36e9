// consr/cuda/dpo.cuh against its host twin consr/dpo.hpp: forward (loss and
// every metric) and backward (both overloads) for all 192 combinations of
// loss type, length normalization, visual weights, scale_by_beta, reduction,
// reference form and labels; the required exact equality of the ConSR and
// standard gradients; visual weights; the empty-sequence report; argument
// errors.
//
// Tolerances: both sides compute in double with the same formulas (the device
// with explicitly rounded operations); sums are reassociated on the device and
// exp/log1p come from CUDA's libdevice (≤ 1 ulp from glibc's). For double
// outputs the check is |dev − host| <= 1e-12·(1 + |host|); for float outputs
// one float rounding on top: 2^-22·|host| + 1e-9.
#include "cuda_test_util.cuh"

#include <consr/cuda/dpo.cuh>
#include <consr/dpo.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using consr::index_t;
using consr_test::device_buffer;
using consr_test::device_error_info;
using consr_test::run_two_phase;

namespace {

template <class T>
bool close(double dev, double host) {
  if (std::isnan(host)) return std::isnan(dev);
  if (std::is_same_v<T, double>) return std::fabs(dev - host) <= 1e-12 * (1.0 + std::fabs(host));
  return std::fabs(dev - host) <= 0x1p-22 * std::fabs(host) + 1e-9;
}

/// One side of P pairs: host vectors and their device copies.
template <class T, class O, class L>
struct side_data {
  std::vector<T> policy, reference, reference_sum, weights;
  std::vector<O> offsets;
  std::vector<L> labels;
  device_buffer<T> d_policy, d_reference, d_reference_sum, d_weights;
  device_buffer<O> d_offsets;
  device_buffer<L> d_labels;

  void upload() {
    d_policy = device_buffer<T>(policy);
    d_reference = device_buffer<T>(reference);
    d_reference_sum = device_buffer<T>(reference_sum);
    d_weights = device_buffer<T>(weights);
    d_offsets = device_buffer<O>(offsets);
    d_labels = device_buffer<L>(labels);
  }
  /// The side as consr::dpo_sequences over the host vectors (host_space) or their device copies.
  template <class Space>
  consr::dpo_sequences<T, O, L, Space> sequences(bool per_sequence_ref, bool use_labels, bool use_weights) const {
    const auto v = [](const auto& host, const auto& device) {
      if constexpr (std::is_same_v<Space, consr::host_space>) {
        return consr::make_view(host.data(), static_cast<index_t>(host.size()));
      } else {
        return device.cview();
      }
    };
    consr::dpo_sequences<T, O, L, Space> s;
    s.policy_logp = v(policy, d_policy);
    s.offsets = v(offsets, d_offsets);
    if (per_sequence_ref) s.reference_logp_sum = v(reference_sum, d_reference_sum);
    else s.reference_logp = v(reference, d_reference);
    if (use_labels) s.labels = v(labels, d_labels);
    if (use_weights) s.weights = v(weights, d_weights);
    return s;
  }
  consr::dpo_sequences<T, O, L> host(bool per_sequence_ref, bool use_labels, bool use_weights) const {
    return sequences<consr::host_space>(per_sequence_ref, use_labels, use_weights);
  }
  consr::cuda::dpo_sequences<T, O, L> device(bool per_sequence_ref, bool use_labels, bool use_weights) const {
    return sequences<consr::device_space>(per_sequence_ref, use_labels, use_weights);
  }
};

/// Random side: lengths in [1, max_len], about 15% ignored labels but at
/// least one scored token per sequence (so length normalization is valid).
template <class T, class O, class L>
void make_side(side_data<T, O, L>& s, std::mt19937_64& rng, index_t pairs, index_t max_len, bool chosen) {
  std::uniform_int_distribution<index_t> len(1, max_len);
  std::uniform_real_distribution<double> lp(-4.0, -0.01), dp(-0.3, 0.3);
  std::bernoulli_distribution ignored(0.15);
  s.offsets = {0};
  for (index_t i = 0; i < pairs; ++i) {
    const index_t n = len(rng);
    s.offsets.push_back(static_cast<O>(s.offsets.back() + n));
    for (index_t t = 0; t < n; ++t) {
      const double a = lp(rng);
      s.policy.push_back(static_cast<T>(a));
      s.reference.push_back(static_cast<T>(a + dp(rng)));
      s.labels.push_back(static_cast<L>(t == 0 || !ignored(rng) ? 5 : -100));
    }
  }
  // Per-sequence reference = the per-token reference summed over scored tokens.
  for (index_t i = 0; i < pairs; ++i) {
    double sum = 0.0;
    for (O t = s.offsets[i]; t < s.offsets[i + 1]; ++t)
      if (s.labels[t] != -100) sum += static_cast<double>(s.reference[t]);
    s.reference_sum.push_back(static_cast<T>(sum));
  }
  // Visual weights from the host twin (their device version is tested below).
  std::vector<double> corrupt(s.policy.size());
  for (std::size_t t = 0; t < corrupt.size(); ++t) corrupt[t] = static_cast<double>(s.policy[t]) - std::fabs(dp(rng));
  s.weights.resize(s.policy.size());
  consr::visual_weights(consr::make_view(s.policy.data(), static_cast<index_t>(s.policy.size())),
                        consr::make_view(corrupt.data(), static_cast<index_t>(corrupt.size())),
                        chosen ? consr::weight_side::chosen : consr::weight_side::rejected,
                        consr::make_view(s.weights.data(), static_cast<index_t>(s.weights.size())));
  s.upload();
}

std::string describe(const consr::dpo_options& o, bool per_seq, bool labels) {
  std::string d = o.loss == consr::dpo_loss_type::standard ? "standard" : "consr";
  d += o.length_normalize ? " LN" : "";
  d += o.visual_weights ? " VW" : "";
  d += o.scale_by_beta ? " xbeta" : "";
  d += o.reduction == consr::loss_reduction::mean ? " mean" : (o.reduction == consr::loss_reduction::sum ? " sum" : " none");
  d += per_seq ? " ref-per-seq" : " ref-per-token";
  d += labels ? " labels" : "";
  return d;
}

/// Forward and backward of one option combination, device against host.
template <class T, class O, class L>
void check_combination(const side_data<T, O, L>& w, const side_data<T, O, L>& l, const consr::dpo_options& o,
                       bool per_seq, bool labels) {
  INFO(describe(o, per_seq, labels));
  const bool weights = o.loss == consr::dpo_loss_type::consr && o.visual_weights;
  const index_t P = static_cast<index_t>(w.offsets.size()) - 1;
  const auto hw = w.host(per_seq, labels, weights), hl = l.host(per_seq, labels, weights);
  const auto dw = w.device(per_seq, labels, weights), dl = l.device(per_seq, labels, weights);

  // Forward.
  std::vector<std::vector<T>> hm(8, std::vector<T>(static_cast<std::size_t>(P)));
  consr::dpo_pair_metrics<T> hmetrics;
  consr::host_view<T, 1>* hviews[8] = {&hmetrics.margin_logit, &hmetrics.sigma_neg,     &hmetrics.chosen_reward,
                                       &hmetrics.rejected_reward, &hmetrics.reward_margin, &hmetrics.accuracy,
                                       &hmetrics.dpo_loss,     &hmetrics.loss};
  for (int k = 0; k < 8; ++k) *hviews[k] = consr::make_view(hm[k].data(), P);
  const double host_loss = consr::dpo_forward(hw, hl, o, hmetrics);

  // Outputs start as NaN bytes: a metric or loss the device does not write cannot pass on values
  // left in recycled device memory by an earlier combination.
  std::vector<device_buffer<T>> dm;
  for (int k = 0; k < 8; ++k) {
    dm.emplace_back(static_cast<std::size_t>(P));
    dm.back().fill_bytes(0xFF);
  }
  consr::cuda::dpo_pair_metrics<T> dmetrics{dm[0].view(), dm[1].view(), dm[2].view(), dm[3].view(),
                                            dm[4].view(), dm[5].view(), dm[6].view(), dm[7].view()};
  device_buffer<T> d_loss(1);
  d_loss.fill_bytes(0xFF);
  device_error_info err;
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::dpo_forward(t, b, dw, dl, o, d_loss.view(), dmetrics, nullptr, err.get());
  }));
  const T dev_loss = d_loss.download()[0];
  INFO("loss: device " << dev_loss << " host " << host_loss);
  CHECK(close<T>(static_cast<double>(dev_loss), static_cast<double>(static_cast<T>(host_loss))));
  const char* names[8] = {"margin_logit", "sigma_neg", "chosen_reward", "rejected_reward",
                          "reward_margin", "accuracy", "dpo_loss", "loss"};
  for (int k = 0; k < 8; ++k) {
    const std::vector<T> got = dm[k].download();
    std::size_t bad = 0;
    for (index_t i = 0; i < P; ++i) bad += close<T>(got[i], hm[k][i]) ? 0 : 1;
    INFO("metric " << names[k] << ": " << bad << " of " << P << " pairs differ");
    CHECK(bad == 0);
  }

  // Backward: scalar upstream for mean/sum, per-pair upstream for none, and the device-scalar overload.
  std::vector<T> hgw(w.policy.size()), hgl(l.policy.size());
  device_buffer<T> dgw(w.policy.size()), dgl(l.policy.size());
  const auto hgw_v = consr::make_view(hgw.data(), static_cast<index_t>(hgw.size()));
  const auto hgl_v = consr::make_view(hgl.data(), static_cast<index_t>(hgl.size()));
  std::vector<T> upstream(static_cast<std::size_t>(P));
  for (index_t i = 0; i < P; ++i) upstream[i] = static_cast<T>(0.5 + 0.25 * static_cast<double>(i % 5));
  device_buffer<T> d_upstream(upstream);
  const auto compare_grads = [&](const char* what) {
    const std::vector<T> gw = dgw.download(), gl = dgl.download();
    std::size_t bad = 0;
    for (std::size_t t = 0; t < gw.size(); ++t) bad += close<T>(gw[t], hgw[t]) ? 0 : 1;
    for (std::size_t t = 0; t < gl.size(); ++t) bad += close<T>(gl[t], hgl[t]) ? 0 : 1;
    INFO(what << ": " << bad << " of " << gw.size() + gl.size() << " token gradients differ");
    CHECK(bad == 0);
  };
  if (o.reduction == consr::loss_reduction::none) {
    consr::dpo_backward(hw, hl, o, consr::make_view(static_cast<const T*>(upstream.data()), P), hgw_v, hgl_v);
    dgw.fill_bytes(0xFF);
    dgl.fill_bytes(0xFF);
    CONSR_TEST_OK(consr::cuda::dpo_backward(dw, dl, o, d_upstream.cview(), dgw.view(), dgl.view(), nullptr, err.get()));
    compare_grads("per-pair upstream");
  } else {
    const double g = 1.75;
    consr::dpo_backward(hw, hl, o, g, hgw_v, hgl_v);
    dgw.fill_bytes(0xFF);
    dgl.fill_bytes(0xFF);
    CONSR_TEST_OK(consr::cuda::dpo_backward(dw, dl, o, g, dgw.view(), dgl.view(), nullptr, err.get()));
    compare_grads("host scalar upstream");
    device_buffer<T> d_g(std::vector<T>{static_cast<T>(g)});
    dgw.fill_bytes(0xFF);
    dgl.fill_bytes(0xFF);
    CONSR_TEST_OK(consr::cuda::dpo_backward(dw, dl, o, d_g.cview(), dgw.view(), dgl.view(), nullptr, err.get()));
    compare_grads("device scalar upstream");
  }
  CHECK(err.read().code == 0);
}

}  // namespace

TEST_CASE("cuda dpo forward/backward match the host twin for every option combination", "[cuda][dpo]") {
  std::mt19937_64 rng(1234);
  side_data<double, std::int64_t, std::int64_t> w, l;
  make_side(w, rng, 23, 300, true);
  make_side(l, rng, 23, 300, false);
  int combos = 0;
  for (auto loss : {consr::dpo_loss_type::standard, consr::dpo_loss_type::consr})
    for (bool ln : {false, true})
      for (bool vw : {false, true})
        for (bool sb : {false, true})
          for (auto red : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none})
            for (bool per_seq : {false, true})
              for (bool labels : {false, true}) {
                consr::dpo_options o;
                o.loss = loss;
                o.length_normalize = ln;
                o.visual_weights = vw;
                o.scale_by_beta = sb;
                o.reduction = red;
                o.beta = 0.1;
                check_combination(w, l, o, per_seq, labels);
                ++combos;
              }
  CHECK(combos == 192);
}

TEST_CASE("cuda dpo in float with int32 offsets and labels, long pairs", "[cuda][dpo]") {
  std::mt19937_64 rng(77);
  side_data<float, std::int32_t, std::int32_t> w, l;
  make_side(w, rng, 64, 1000, true);
  make_side(l, rng, 64, 1000, false);
  consr::dpo_options o;  // the paper's ConSR defaults
  check_combination(w, l, o, false, true);
  o.beta = 2.5;  // large margins: σ and softplus in their tails
  o.reduction = consr::loss_reduction::sum;
  check_combination(w, l, o, true, true);
}

TEST_CASE("cuda dpo: ConSR with scale_by_beta, no length normalization and unit weights has the standard gradient "
          "exactly",
          "[cuda][dpo]") {
  std::mt19937_64 rng(5);
  side_data<double, std::int64_t, std::int64_t> w, l;
  make_side(w, rng, 17, 200, true);
  make_side(l, rng, 17, 200, false);
  // α = 0 makes every visual weight exactly 1.
  std::fill(w.weights.begin(), w.weights.end(), 1.0);
  std::fill(l.weights.begin(), l.weights.end(), 1.0);
  w.upload();
  l.upload();
  consr::dpo_options standard;
  standard.loss = consr::dpo_loss_type::standard;
  consr::dpo_options consr_opt;
  consr_opt.loss = consr::dpo_loss_type::consr;
  consr_opt.scale_by_beta = true;
  consr_opt.length_normalize = false;
  for (bool vw : {false, true}) {
    consr_opt.visual_weights = vw;
    device_buffer<double> a_w(w.policy.size()), a_l(l.policy.size()), b_w(w.policy.size()), b_l(l.policy.size());
    CONSR_TEST_OK(consr::cuda::dpo_backward(w.device(false, true, false), l.device(false, true, false), standard, 1.0,
                                            a_w.view(), a_l.view()));
    CONSR_TEST_OK(consr::cuda::dpo_backward(w.device(false, true, vw), l.device(false, true, vw), consr_opt, 1.0,
                                            b_w.view(), b_l.view()));
    CONSR_TEST_CUDA(cudaDeviceSynchronize());
    const auto x_w = a_w.download(), x_l = a_l.download(), y_w = b_w.download(), y_l = b_l.download();
    std::size_t differ = 0;
    for (std::size_t t = 0; t < x_w.size(); ++t) differ += consr_test::same_bits(x_w[t], y_w[t]) ? 0 : 1;
    for (std::size_t t = 0; t < x_l.size(); ++t) differ += consr_test::same_bits(x_l[t], y_l[t]) ? 0 : 1;
    INFO("visual_weights " << vw << ": " << differ << " gradients differ");
    CHECK(differ == 0);
  }
}

TEST_CASE("cuda visual weights match the host twin", "[cuda][dpo]") {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<double> lp(-3.0, 0.0);
  const index_t n = 10007;
  std::vector<float> clean(n), corrupt(n);
  for (index_t t = 0; t < n; ++t) {
    clean[t] = static_cast<float>(lp(rng));
    corrupt[t] = static_cast<float>(lp(rng));
  }
  clean[5] = std::numeric_limits<float>::quiet_NaN();
  device_buffer<float> d_clean(clean), d_corrupt(corrupt);
  consr::visual_weight_options opt;
  for (const auto side : {consr::weight_side::chosen, consr::weight_side::rejected}) {
    for (double alpha : {0.5, 3.0, -1.0}) {
      opt.alpha = alpha;
      opt.clip_lo = alpha < 0 ? -0.1 : 0.0;
      std::vector<double> host(n);
      consr::visual_weights(consr::make_view(clean.data(), n), consr::make_view(corrupt.data(), n), side,
                            consr::make_view(host.data(), n), opt);
      device_buffer<double> dev(static_cast<std::size_t>(n));
      CONSR_TEST_OK(consr::cuda::visual_weights(d_clean.cview(), d_corrupt.cview(), side, dev.view(), opt));
      const std::vector<double> got = dev.download();
      std::size_t bad = 0;
      for (index_t t = 0; t < n; ++t) bad += close<double>(got[t], host[t]) ? 0 : 1;
      INFO("alpha " << alpha << ": " << bad << " weights differ");
      CHECK(bad == 0);
      CHECK(std::isnan(got[5]));
    }
  }
  opt.clip_lo = 1.0;
  opt.clip_hi = 0.0;
  device_buffer<double> dev(static_cast<std::size_t>(n));
  CHECK(consr::cuda::visual_weights(d_clean.cview(), d_corrupt.cview(), consr::weight_side::chosen, dev.view(), opt) ==
        consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.clip_lo'"));
}

TEST_CASE("cuda dpo reports an empty sequence under length normalization in error_info", "[cuda][dpo]") {
  std::mt19937_64 rng(9);
  side_data<double, std::int64_t, std::int64_t> w, l;
  make_side(w, rng, 8, 20, true);
  make_side(l, rng, 8, 20, false);
  // Pairs 3 and 6: every rejected label ignored (|y_l| = 0).
  for (int pair : {6, 3})
    for (auto t = l.offsets[pair]; t < l.offsets[pair + 1]; ++t) l.labels[t] = -100;
  l.upload();
  consr::dpo_options o;  // consr with length normalization
  CHECK_THROWS_AS(consr::dpo_forward(w.host(false, true, true), l.host(false, true, true), o), consr::error);

  device_buffer<double> d_loss(1), sigma(8);
  consr::cuda::dpo_pair_metrics<double> m;
  m.sigma_neg = sigma.view();
  device_error_info err;
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::dpo_forward(t, b, w.device(false, true, true), l.device(false, true, true), o, d_loss.view(), m,
                                    nullptr, err.get());
  }));
  consr::cuda::error_info e = err.read();
  CHECK(e.code == static_cast<int>(consr::status::empty_sequence));
  CHECK(consr::cuda::error_index(e) == 3);
  const auto s = sigma.download();
  CHECK(std::isnan(s[3]));
  CHECK(std::isnan(s[6]));
  CHECK(std::isfinite(s[0]));

  err.reset();
  device_buffer<double> gw(w.policy.size()), gl(l.policy.size());
  CONSR_TEST_OK(consr::cuda::dpo_backward(w.device(false, true, true), l.device(false, true, true), o, 1.0, gw.view(),
                                          gl.view(), nullptr, err.get()));
  e = err.read();
  CHECK(e.code == static_cast<int>(consr::status::empty_sequence));
  CHECK(consr::cuda::error_index(e) == 3);
}

TEST_CASE("cuda dpo rejects bad arguments on the host, launching nothing", "[cuda][dpo]") {
  std::mt19937_64 rng(10);
  side_data<float, std::int32_t, std::int32_t> w, l;
  make_side(w, rng, 4, 10, true);
  make_side(l, rng, 5, 10, false);  // one pair more
  consr::dpo_options o;
  device_buffer<float> d_loss(1);
  d_loss.fill_bytes(0x42);
  std::size_t bytes = 0;
  const auto fwd = [&](const consr::cuda::dpo_sequences<float, std::int32_t, std::int32_t>& a,
                       const consr::cuda::dpo_sequences<float, std::int32_t, std::int32_t>& b) {
    return consr::cuda::dpo_forward(nullptr, bytes, a, b, o, d_loss.view());
  };
  CHECK(fwd(w.device(false, true, true), l.device(false, true, true)) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'rejected.offsets'"));

  auto both = w.device(false, true, true);
  both.reference_logp_sum = w.d_reference_sum.cview();
  CHECK(fwd(both, both) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'chosen.reference_logp'"));

  CHECK(fwd(w.device(false, true, false), w.device(false, true, false)) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'chosen.weights'"));

  o.beta = 0.0;
  CHECK(fwd(w.device(false, true, true), w.device(false, true, true)) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.beta'"));
  o.beta = 0.1;

  o.reduction = consr::loss_reduction::none;
  device_buffer<float> gw(w.policy.size()), gw2(w.policy.size());
  CHECK(consr::cuda::dpo_backward(w.device(false, true, true), w.device(false, true, true), o, 1.0, gw.view(),
                                  gw2.view()) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.reduction'"));
  o.reduction = consr::loss_reduction::mean;
  CHECK(consr::cuda::dpo_backward(w.device(false, true, true), w.device(false, true, true), o, 1.0, gw.view(),
                                  gw.view()) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("grad_"));

  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  device_buffer<float> fresh(1);
  fresh.fill_bytes(0x42);
  CHECK(consr_test::same_bits(d_loss.download()[0], fresh.download()[0]));
}
