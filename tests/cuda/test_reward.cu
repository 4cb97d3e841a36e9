// consr/cuda/reward.cuh against its host twin consr/reward.hpp on the same
// inputs: random candidates with labels and empty candidates, both reward
// spaces, non-finite log-probs, no labels, no candidate, and errors.
//
// Tolerances: both sides sum in double; the device reassociates (CUB's tree)
// and evaluates exp with CUDA's libdevice (≤ 1 ulp from glibc's), so the
// double values agree to ~1e-15 relative; each output is then rounded once to
// R. The check is |dev − host| <= eps_R·|host| + 1e-12 (absolute, for rewards
// that are differences of nearly equal probabilities).
#include "cuda_test_util.cuh"

#include <consr/cuda/reward.cuh>
#include <consr/reward.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using consr::index_t;
using consr_test::device_buffer;
using consr_test::device_error_info;
using consr_test::epsilon_of;
using consr_test::run_two_phase;

namespace {

struct problem {
  std::vector<std::int64_t> offsets;
  std::vector<std::int32_t> labels;
  std::vector<double> logp, logp_corrupt, logp_semantic;
};

problem random_problem(std::mt19937_64& rng, index_t candidates, index_t max_len) {
  problem p;
  std::uniform_int_distribution<index_t> len(0, max_len);
  std::bernoulli_distribution empty(0.1), ignored(0.2);
  std::uniform_real_distribution<double> lp(-3.0, 0.0);
  p.offsets.push_back(0);
  for (index_t c = 0; c < candidates; ++c) p.offsets.push_back(p.offsets.back() + (empty(rng) ? 0 : len(rng)));
  const std::size_t n = static_cast<std::size_t>(p.offsets.back());
  for (std::size_t i = 0; i < n; ++i) {
    p.labels.push_back(ignored(rng) ? -100 : 7);
    p.logp.push_back(lp(rng));
    p.logp_corrupt.push_back(lp(rng));
    p.logp_semantic.push_back(lp(rng));
  }
  return p;
}

template <class R>
void check_close(const std::vector<R>& dev, const std::vector<R>& host, const char* what) {
  REQUIRE(dev.size() == host.size());
  for (std::size_t i = 0; i < dev.size(); ++i) {
    INFO(what << " of candidate " << i << ": device " << dev[i] << " host " << host[i]);
    if (std::isnan(host[i])) {
      CHECK(std::isnan(dev[i]));
    } else {
      CHECK(std::fabs(static_cast<double>(dev[i]) - host[i]) <= epsilon_of<R>() * std::fabs(host[i]) + 1e-12);
    }
  }
}

/// Runs host and device on `p` (values converted to V) and compares everything.
template <class V, class R>
void check_reward(const problem& p, const consr::reward_options& opt, bool with_labels) {
  const index_t C = static_cast<index_t>(p.offsets.size()) - 1;
  const index_t n = static_cast<index_t>(p.logp.size());
  auto convert = [](const std::vector<double>& v) {
    std::vector<V> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = consr::from_accum<V>(v[i]);
    return r;
  };
  std::vector<V> a = convert(p.logp), b = convert(p.logp_corrupt), c = convert(p.logp_semantic);
  std::vector<std::vector<R>> host(6, std::vector<R>(static_cast<std::size_t>(C)));
  consr::reward_outputs<R> hout{consr::make_view(host[0].data(), C), consr::make_view(host[1].data(), C),
                                consr::make_view(host[2].data(), C), consr::make_view(host[3].data(), C),
                                consr::make_view(host[4].data(), C), consr::make_view(host[5].data(), C)};
  const auto ha = consr::make_view(a.data(), n), hb = consr::make_view(b.data(), n), hc = consr::make_view(c.data(), n);
  const auto hoff = consr::make_view(p.offsets.data(), C + 1);
  const consr::reward_report report =
      with_labels ? consr::contrastive_reward(ha, hb, hc, hoff, consr::make_view(p.labels.data(), n), hout, opt)
                  : consr::contrastive_reward(ha, hb, hc, hoff, hout, opt);

  device_buffer<V> da(a), db(b), dc(c);
  device_buffer<std::int64_t> doff(p.offsets);
  device_buffer<std::int32_t> dlab(p.labels);
  std::vector<device_buffer<R>> dout;
  for (int k = 0; k < 6; ++k) dout.emplace_back(static_cast<std::size_t>(C));
  consr::cuda::reward_outputs<R> out{dout[0].view(), dout[1].view(), dout[2].view(),
                                     dout[3].view(), dout[4].view(), dout[5].view()};
  device_buffer<consr::cuda::reward_counts> counts(1);
  counts.fill_bytes(0x55);  // the launcher zeroes it
  device_error_info err;
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& bytes) {
    return with_labels ? consr::cuda::contrastive_reward(t, bytes, da.cview(), db.cview(), dc.cview(), doff.cview(),
                                                         dlab.cview(), out, counts.data(), opt, nullptr, err.get())
                       : consr::cuda::contrastive_reward(t, bytes, da.cview(), db.cview(), dc.cview(), doff.cview(),
                                                         out, counts.data(), opt, nullptr, err.get());
  }));
  const char* names[6] = {"p", "p_corrupt", "p_semantic", "s_semantic", "s_corrupt", "reward"};
  for (int k = 0; k < 6; ++k) check_close(dout[k].download(), host[k], names[k]);
  const consr::cuda::reward_counts got = consr_test::read_device_object(counts.data());
  CHECK(got.empty_candidates == static_cast<unsigned long long>(report.empty_candidates));
  CHECK(got.nonfinite_rewards == static_cast<unsigned long long>(report.nonfinite_rewards));
  CHECK(err.read().code == 0);
}

}  // namespace

TEST_CASE("cuda contrastive reward matches the host twin", "[cuda][reward]") {
  std::mt19937_64 rng(99);
  consr::reward_options opt;
  SECTION("probability space, labels, float in / double out") {
    const problem p = random_problem(rng, 300, 60);
    check_reward<float, double>(p, opt, true);
  }
  SECTION("log space, lambda 0.3, bf16 in / float out") {
    opt.space = consr::reward_space::log;
    opt.lambda = 0.3;
    const problem p = random_problem(rng, 200, 40);
    check_reward<consr::bfloat16, float>(p, opt, true);
  }
  SECTION("no labels; the paper's 10 000 prompts x 15 candidates") {
    const problem p = random_problem(rng, 150000, 30);
    check_reward<float, float>(p, opt, false);
  }
  SECTION("no candidate") {
    problem p;
    p.offsets = {0};
    check_reward<float, double>(p, opt, true);
  }
  SECTION("non-finite log-probs: NaN at a scored token, NaN at an ignored one, -inf") {
    problem p = random_problem(rng, 20, 10);
    for (std::size_t c = 0; c + 1 < p.offsets.size(); ++c) {
      if (p.offsets[c + 1] - p.offsets[c] < 2) continue;
      const std::size_t t = static_cast<std::size_t>(p.offsets[c]);
      if (c % 3 == 0) {
        p.labels[t] = 7;
        p.logp[t] = std::numeric_limits<double>::quiet_NaN();
      } else if (c % 3 == 1) {
        p.labels[t] = -100;
        p.logp_corrupt[t] = std::numeric_limits<double>::quiet_NaN();  // never read
      } else {
        p.labels[t] = 7;
        p.logp_semantic[t] = -std::numeric_limits<double>::infinity();
      }
    }
    check_reward<float, double>(p, opt, true);
    opt.space = consr::reward_space::log;
    check_reward<double, double>(p, opt, true);
  }
}

TEST_CASE("cuda contrastive reward: argument errors and bad offsets", "[cuda][reward]") {
  device_buffer<float> a(std::vector<float>(10, -1.0f));
  device_buffer<std::int64_t> off(std::vector<std::int64_t>{0, 4, 10});
  device_buffer<float> r(2), p(3);
  r.fill_bytes(0x11);
  std::size_t bytes = 0;
  consr::cuda::reward_outputs<float> out;
  out.reward = r.view();
  SECTION("lambda outside [0, 1]") {
    consr::reward_options opt;
    opt.lambda = 1.5;
    CHECK(consr::cuda::contrastive_reward(nullptr, bytes, a.cview(), a.cview(), a.cview(), off.cview(), out, nullptr,
                                          opt) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.lambda'"));
  }
  SECTION("an optional output of the wrong size") {
    out.p = p.view();
    CHECK(consr::cuda::contrastive_reward(nullptr, bytes, a.cview(), a.cview(), a.cview(), off.cview(), out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out.p'"));
  }
  SECTION("logp_semantic shorter than logp") {
    const auto shorter = consr::make_view<consr::device_space>(static_cast<const float*>(a.data()), 9);
    CHECK(consr::cuda::contrastive_reward(nullptr, bytes, a.cview(), a.cview(), shorter, off.cview(), out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'logp_semantic'"));
  }
  SECTION("offsets past the end are reported, not followed") {
    device_buffer<std::int64_t> bad(std::vector<std::int64_t>{0, 4, 1 << 30});
    device_error_info err;
    CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
      return consr::cuda::contrastive_reward(t, b, a.cview(), a.cview(), a.cview(), bad.cview(), out, nullptr, {},
                                             nullptr, err.get());
    }));
    const consr::cuda::error_info e = err.read();
    CHECK(e.code == static_cast<int>(consr::status::invalid_argument));
    CHECK(consr::cuda::error_index(e) == 1);
    return;
  }
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  // Nothing launched: the output still holds the 0x11 bytes written before the call.
  float fill;
  std::memset(&fill, 0x11, sizeof fill);
  for (float v : r.download()) CHECK(consr_test::same_bits(v, fill));
}
