// Tests for consr/reward.hpp: sequence probabilities and the contrastive
// reward (spec §5, eqs. 1–6), by hand and against plain double loops.
#include <catch2/catch.hpp>

#include <consr/reward.hpp>

#include "test_util.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using consr::index_t;

namespace {

using consr_test::error_argument;
using consr_test::inf_v;
using consr_test::nan_v;

}  // namespace

TEST_CASE("contrastive_reward: a small case written out by hand", "[reward]") {
  // Candidate 0: 3 tokens; means: clean −2, corrupt −3, semantic −1.
  // Candidate 1: empty.
  // Candidate 2: 2 tokens; means: clean −0.5, corrupt −1.5, semantic −0.25.
  const std::vector<double> logp = {-1.0, -2.0, -3.0, /*c2*/ -0.25, -0.75};
  const std::vector<double> logp_corrupt = {-2.0, -3.0, -4.0, /*c2*/ -1.0, -2.0};
  const std::vector<double> logp_semantic = {-0.5, -1.0, -1.5, /*c2*/ 0.0, -0.5};
  const std::vector<std::int32_t> offsets = {0, 3, 3, 5};
  std::vector<double> p(3), pc(3), ps(3), ss(3), sc(3), r(3);
  consr::reward_outputs<double> out;
  out.p = consr::make_view(p.data(), 3);
  out.p_corrupt = consr::make_view(pc.data(), 3);
  out.p_semantic = consr::make_view(ps.data(), 3);
  out.s_semantic = consr::make_view(ss.data(), 3);
  out.s_corrupt = consr::make_view(sc.data(), 3);
  out.reward = consr::make_view(r.data(), 3);
  const auto report = consr::contrastive_reward(consr::make_view(logp.data(), 5), consr::make_view(logp_corrupt.data(), 5),
                                                consr::make_view(logp_semantic.data(), 5),
                                                consr::make_view(offsets.data(), 4), out);

  // Candidate 0, by hand: P = e^-2, P_corrupt = e^-3, P_semantic = e^-1.
  const double P0 = std::exp(-2.0), Pc0 = std::exp(-3.0), Ps0 = std::exp(-1.0);
  CHECK(p[0] == Approx(P0).epsilon(1e-14));
  CHECK(pc[0] == Approx(Pc0).epsilon(1e-14));
  CHECK(ps[0] == Approx(Ps0).epsilon(1e-14));
  CHECK(ss[0] == Approx(Ps0 - P0).epsilon(1e-14));
  CHECK(sc[0] == Approx(P0 - Pc0).epsilon(1e-14));
  CHECK(r[0] == Approx(0.8 * (Ps0 - P0) + 0.2 * (P0 - Pc0)).epsilon(1e-14));
  // Candidate 2: P = e^-0.5, P_corrupt = e^-1.5, P_semantic = e^-0.25.
  const double P2 = std::exp(-0.5), Pc2 = std::exp(-1.5), Ps2 = std::exp(-0.25);
  CHECK(r[2] == Approx(0.8 * (Ps2 - P2) + 0.2 * (P2 - Pc2)).epsilon(1e-14));
  // Candidate 1 has no token: NaN everywhere, reported.
  for (const std::vector<double>* column : {&p, &pc, &ps, &ss, &sc, &r}) CHECK(std::isnan((*column)[1]));
  CHECK(report.candidates == 3);
  CHECK(report.empty_candidates == 1);
  REQUIRE(report.empty_indices.size() == 1);
  CHECK(report.empty_indices[0] == 1);
  CHECK(report.nonfinite_rewards == 0);

  SECTION("log space: differences of mean log-probs") {
    consr::reward_options opt;
    opt.space = consr::reward_space::log;
    opt.lambda = 0.25;
    consr::contrastive_reward(consr::make_view(logp.data(), 5), consr::make_view(logp_corrupt.data(), 5),
                              consr::make_view(logp_semantic.data(), 5), consr::make_view(offsets.data(), 4), out, opt);
    CHECK(p[0] == -2.0);
    CHECK(pc[0] == -3.0);
    CHECK(ps[0] == -1.0);
    CHECK(ss[0] == 1.0);
    CHECK(sc[0] == 1.0);
    CHECK(r[0] == Approx(0.25 * 1.0 + 0.75 * 1.0));
    CHECK(r[2] == Approx(0.25 * (-0.25 + 0.5) + 0.75 * (-0.5 + 1.5)));
    CHECK(std::isnan(r[1]));
  }
  SECTION("lambda at the ends of [0, 1] selects one term") {
    consr::reward_options opt;
    opt.lambda = 1.0;
    consr::contrastive_reward(consr::make_view(logp.data(), 5), consr::make_view(logp_corrupt.data(), 5),
                              consr::make_view(logp_semantic.data(), 5), consr::make_view(offsets.data(), 4), out, opt);
    CHECK(r[0] == Approx(Ps0 - P0).epsilon(1e-14));
    opt.lambda = 0.0;
    consr::contrastive_reward(consr::make_view(logp.data(), 5), consr::make_view(logp_corrupt.data(), 5),
                              consr::make_view(logp_semantic.data(), 5), consr::make_view(offsets.data(), 4), out, opt);
    CHECK(r[0] == Approx(P0 - Pc0).epsilon(1e-14));
  }
}

TEST_CASE("contrastive_reward: ignored tokens are not scored and not read", "[reward]") {
  // Candidate 0: the middle token is ignored (and holds NaN / garbage).
  // Candidate 1: every token ignored -> empty.
  const std::vector<float> logp = {-1.0f, float(nan_v), -3.0f, -7.0f};
  const std::vector<float> logp_corrupt = {-2.0f, 100.0f, -2.0f, -7.0f};
  const std::vector<float> logp_semantic = {-1.0f, float(-inf_v), -1.0f, -7.0f};
  const std::vector<std::int64_t> labels = {11, -100, 12, -100};
  const std::vector<std::int64_t> offsets = {0, 3, 4};
  std::vector<float> r(2), p(2);
  consr::reward_outputs<float> out;
  out.reward = consr::make_view(r.data(), 2);
  out.p = consr::make_view(p.data(), 2);
  const auto report = consr::contrastive_reward(consr::make_view(logp.data(), 4), consr::make_view(logp_corrupt.data(), 4),
                                                consr::make_view(logp_semantic.data(), 4),
                                                consr::make_view(offsets.data(), 3), consr::make_view(labels.data(), 4), out);
  const double P = std::exp(-2.0), Pc = std::exp(-2.0), Ps = std::exp(-1.0);
  CHECK(p[0] == Approx(P).epsilon(1e-6));
  CHECK(r[0] == Approx(0.8 * (Ps - P) + 0.2 * (P - Pc)).epsilon(1e-6));
  CHECK(std::isnan(r[1]));
  CHECK(report.empty_candidates == 1);
  REQUIRE(report.empty_indices.size() == 1);
  CHECK(report.empty_indices[0] == 1);

  // A custom ignore_index: now label 12 is ignored instead.
  consr::reward_options opt;
  opt.ignore_index = 12;
  const std::vector<std::int64_t> labels2 = {11, 5, 12, 3};
  consr::contrastive_reward(consr::make_view(logp_semantic.data(), 4), consr::make_view(logp_corrupt.data(), 4),
                            consr::make_view(logp.data(), 4), consr::make_view(offsets.data(), 3),
                            consr::make_view(labels2.data(), 4), out, opt);
  // Candidate 0 clean = semantic array {-1, -inf}: mean -inf -> P = 0; the corrupt
  // mean is (−2 + 100)/2 = 49 -> huge; semantic = logp array {-1, NaN} -> NaN.
  CHECK(p[0] == 0.0f);
  CHECK(std::isnan(r[0]));
}

TEST_CASE("contrastive_reward: non-finite rewards are counted, not hidden", "[reward]") {
  const std::vector<double> logp = {-1.0, nan_v, -1.0};
  const std::vector<double> logp_corrupt = {-1.0, -1.0, -1.0};
  const std::vector<double> logp_semantic = {-1.0, -1.0, inf_v};
  const std::vector<std::int64_t> offsets = {0, 1, 2, 3};
  std::vector<double> r(3);
  consr::reward_outputs<double> out;
  out.reward = consr::make_view(r.data(), 3);
  const auto report =
      consr::contrastive_reward(consr::make_view(logp.data(), 3), consr::make_view(logp_corrupt.data(), 3),
                                consr::make_view(logp_semantic.data(), 3), consr::make_view(offsets.data(), 4), out);
  CHECK(r[0] == 0.0);
  CHECK(std::isnan(r[1]));
  CHECK(std::isinf(r[2]));
  CHECK(report.nonfinite_rewards == 2);
  CHECK(report.empty_candidates == 0);
}

TEMPLATE_TEST_CASE("contrastive_reward matches a plain double loop on random candidates", "[reward]", std::int32_t,
                   std::int64_t) {
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<int> len(0, 9);
  std::uniform_real_distribution<double> lp(-6.0, 0.0);
  std::bernoulli_distribution ign(0.25);
  for (int space = 0; space < 2; ++space) {
    const index_t C = 50;
    std::vector<TestType> off(C + 1, 0);
    for (index_t c = 0; c < C; ++c) off[c + 1] = off[c] + len(rng);
    const index_t n = off[C];
    std::vector<double> a(n), b(n), s(n);
    std::vector<std::int32_t> labels(n);
    for (index_t i = 0; i < n; ++i) {
      a[i] = lp(rng);
      b[i] = lp(rng);
      s[i] = lp(rng);
      labels[i] = ign(rng) ? -100 : 42;
    }
    std::vector<double> r(C), pr(C);
    consr::reward_outputs<double> out;
    out.reward = consr::make_view(r.data(), C);
    out.p = consr::make_view(pr.data(), C);
    consr::reward_options opt;
    opt.lambda = 0.6;
    opt.space = space == 0 ? consr::reward_space::probability : consr::reward_space::log;
    const auto rep = consr::contrastive_reward(consr::make_view(a.data(), n), consr::make_view(b.data(), n),
                                               consr::make_view(s.data(), n), consr::make_view(off.data(), C + 1),
                                               consr::make_view(labels.data(), n), out, opt);
    std::vector<double> seqp(C);
    consr::sequence_probability(consr::make_view(a.data(), n), consr::make_view(off.data(), C + 1),
                                consr::make_view(labels.data(), n), consr::make_view(seqp.data(), C));
    index_t empties = 0;
    for (index_t c = 0; c < C; ++c) {
      double sa = 0, sb = 0, ssem = 0;
      int t = 0;
      for (index_t i = off[c]; i < off[c + 1]; ++i) {
        if (labels[i] == -100) continue;
        sa += a[i];
        sb += b[i];
        ssem += s[i];
        ++t;
      }
      if (t == 0) {
        ++empties;
        CHECK(std::isnan(r[c]));
        CHECK(std::isnan(seqp[c]));
        continue;
      }
      double P = sa / t, Pc = sb / t, Ps = ssem / t;
      CHECK(seqp[c] == Approx(std::exp(P)).epsilon(1e-13));
      if (space == 0) {
        P = std::exp(P);
        Pc = std::exp(Pc);
        Ps = std::exp(Ps);
      }
      CHECK(pr[c] == Approx(P).epsilon(1e-13));
      CHECK(r[c] == Approx(0.6 * (Ps - P) + 0.4 * (P - Pc)).margin(1e-13));
    }
    CHECK(rep.empty_candidates == empties);
    CHECK(rep.empty_indices.size() == std::size_t(empties));
  }
}

TEST_CASE("sequence_probability: eq. 1 without labels", "[reward]") {
  const std::vector<double> logp = {std::log(0.5), std::log(0.125), std::log(0.9)};
  const std::vector<std::int64_t> off = {0, 2, 2, 3};
  std::vector<double> out(3);
  consr::sequence_probability(consr::make_view(logp.data(), 3), consr::make_view(off.data(), 4),
                              consr::make_view(out.data(), 3));
  CHECK(out[0] == Approx(0.25).epsilon(1e-14));  // geometric mean of 0.5 and 0.125
  CHECK(std::isnan(out[1]));
  CHECK(out[2] == Approx(0.9).epsilon(1e-14));
}

TEST_CASE("contrastive_reward: errors name the argument", "[reward]") {
  const std::vector<double> x = {-1.0, -2.0, -3.0};
  const std::vector<std::int64_t> off = {0, 1, 3};
  const std::vector<std::int64_t> labels = {1, 2};
  std::vector<double> r(2), small(1);
  consr::reward_outputs<double> out;
  out.reward = consr::make_view(r.data(), 2);
  auto v3 = consr::make_view(x.data(), 3);
  auto o = consr::make_view(off.data(), 3);
  auto call = [&](consr::reward_outputs<double> ou, consr::reward_options opt) {
    consr::contrastive_reward(v3, v3, v3, o, ou, opt);
  };
  consr::reward_options bad;
  bad.lambda = 1.5;
  CHECK(error_argument([&] { call(out, bad); }) == "options.lambda");
  bad.lambda = -0.1;
  CHECK(error_argument([&] { call(out, bad); }) == "options.lambda");
  bad.lambda = nan_v;
  CHECK(error_argument([&] { call(out, bad); }) == "options.lambda");
  consr::reward_options bad_space;
  bad_space.space = static_cast<consr::reward_space>(7);
  CHECK(consr_test::error_message([&] { call(out, bad_space); }) ==
        "consr::contrastive_reward: argument 'options.space': is not a reward_space value (7)");
  CHECK(error_argument([&] {
          consr::contrastive_reward(v3, consr::make_view(x.data(), 2), v3, o, out);
        }) == "logp_corrupt");
  CHECK(error_argument([&] {
          consr::contrastive_reward(v3, v3, consr::make_view(x.data(), 2), o, out);
        }) == "logp_semantic");
  CHECK(error_argument([&] {
          consr::contrastive_reward(v3, v3, v3, o, consr::make_view(labels.data(), 2), out);
        }) == "labels");
  CHECK(error_argument([&] {
          consr::contrastive_reward(consr::make_view(x.data(), 2), consr::make_view(x.data(), 2),
                                    consr::make_view(x.data(), 2), o, out);
        }) == "offsets");
  consr::reward_outputs<double> no_reward;
  CHECK(error_argument([&] { call(no_reward, {}); }) == "out.reward");
  consr::reward_outputs<double> bad_p = out;
  bad_p.p = consr::make_view(small.data(), 1);
  CHECK(error_argument([&] { call(bad_p, {}); }) == "out.p");
  consr::reward_outputs<double> bad_s = out;
  bad_s.s_corrupt = consr::make_view(small.data(), 1);
  CHECK(error_argument([&] { call(bad_s, {}); }) == "out.s_corrupt");
  std::vector<double> sp(1);
  CHECK(error_argument([&] {
          consr::sequence_probability(v3, o, consr::make_view(sp.data(), 1));
        }) == "out");
  // Broadcast outputs (stride 0 over two candidates) are rejected, not raced on.
  const auto broadcast = consr::make_strided_view(small.data(), std::array<index_t, 1>{2}, std::array<index_t, 1>{0});
  consr::reward_outputs<double> bcast_reward;
  bcast_reward.reward = broadcast;
  CHECK(error_argument([&] { call(bcast_reward, {}); }) == "out.reward");
  consr::reward_outputs<double> bcast_p = out;
  bcast_p.p_semantic = broadcast;
  CHECK(error_argument([&] { call(bcast_p, {}); }) == "out.p_semantic");
  CHECK(error_argument([&] { consr::sequence_probability(v3, o, broadcast); }) == "out");
  // No candidate at all: a successful no-op with an empty report.
  const std::vector<std::int64_t> off0 = {0};
  consr::reward_outputs<double> none;
  const double* np = nullptr;
  auto e = consr::make_view(np, 0);
  const auto rep = consr::contrastive_reward(e, e, e, consr::make_view(off0.data(), 1), none);
  CHECK(rep.candidates == 0);
  CHECK(rep.empty_candidates == 0);
}

TEST_CASE("contrastive_reward: long candidates against plain loops; same bits for 1, 2 and 3 threads",
          "[reward][threads]") {
  std::mt19937_64 rng(5);
  const index_t candidates = 600;
  const auto off = consr_test::random_offsets<std::int64_t>(rng, candidates, 160);
  const index_t n = off.back();
  REQUIRE(n >= consr::detail::segment_parallel_threshold);
  std::uniform_real_distribution<double> lp(-4.0, 0.0);
  std::vector<double> logp(n), logp_c(n), logp_s(n);
  for (index_t t = 0; t < n; ++t) {
    logp[t] = lp(rng);
    logp_c[t] = lp(rng);
    logp_s[t] = lp(rng);
  }
  const auto labels = consr_test::random_token_labels(rng, n, 0.2);
  std::vector<double> reward[3];
  consr_test::for_thread_counts(3, [&](int k) {
    reward[k].assign(candidates, 0.0);
    consr::reward_outputs<double> out;
    out.reward = consr::make_view(reward[k].data(), candidates);
    consr::contrastive_reward(consr::make_view(logp.data(), n), consr::make_view(logp_c.data(), n),
                              consr::make_view(logp_s.data(), n), consr::make_view(off.data(), candidates + 1),
                              consr::make_view(labels.data(), n), out);
  });
  const consr::reward_options o;
  for (index_t c = 0; c < candidates; ++c) {
    double m = 0, mc = 0, ms = 0, cnt = 0;
    for (index_t t = off[c]; t < off[c + 1]; ++t) {
      if (labels[t] == -100) continue;
      m += logp[t];
      mc += logp_c[t];
      ms += logp_s[t];
      cnt += 1;
    }
    if (cnt == 0) {
      CHECK(std::isnan(reward[0][c]));
      continue;
    }
    const double P = std::exp(m / cnt), Pc = std::exp(mc / cnt), Ps = std::exp(ms / cnt);
    CHECK(reward[0][c] == Approx(o.lambda * (Ps - P) + (1 - o.lambda) * (P - Pc)).epsilon(1e-12).margin(1e-15));
    for (int k = 1; k < 3; ++k) CHECK(consr_test::same_bits(reward[0][c], reward[k][c]));
  }
}
