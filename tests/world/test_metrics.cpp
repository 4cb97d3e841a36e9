// consr_world metrics against values computed by hand (see shared/reference/evaluation-metrics.md).
#include <catch2/catch.hpp>

#include "consr_world/metrics.hpp"

namespace cw = consr_world;

TEST_CASE("Wilson 95 % interval", "[world][metrics]") {
  // 0/10: centre = (z^2/20) / (1 + z^2/10) = 0.13877, half-width the same -> [0, 0.2775]
  auto w = cw::wilson(0, 10);
  CHECK(w.lo == Approx(0.0).margin(1e-12));
  CHECK(w.hi == Approx(0.27753).margin(1e-5));
  // 5/10: centre 0.5, half = 1.96 sqrt(0.025 + 0.0096) / 1.38415 = 0.26341
  w = cw::wilson(5, 10);
  CHECK(w.lo == Approx(0.23659).margin(1e-5));
  CHECK(w.hi == Approx(0.76341).margin(1e-5));
  // 10/10 mirrors 0/10
  w = cw::wilson(10, 10);
  CHECK(w.lo == Approx(1 - 0.27753).margin(1e-5));
  CHECK(w.hi == Approx(1.0).margin(1e-12));
  // 81/100: centre (0.81 + 0.019207) / 1.038415 = 0.79853, half 1.96 sqrt(0.001539 + 0.000096) / 1.038415 = 0.07634
  w = cw::wilson(81, 100);
  CHECK(w.lo == Approx(0.72219).margin(1e-4));
  CHECK(w.hi == Approx(0.87487).margin(1e-4));
  // n = 0: no information
  w = cw::wilson(0, 0);
  CHECK(w.lo == 0.0);
  CHECK(w.hi == 1.0);
}

TEST_CASE("POPE metrics", "[world][metrics]") {
  // 4 yes / 4 no; TP 3, FN 1, FP 1, TN 3
  auto m = cw::pope({true, true, true, true, false, false, false, false},
                    {true, true, true, false, true, false, false, false});
  CHECK(m.tp == 3);
  CHECK(m.fn == 1);
  CHECK(m.fp == 1);
  CHECK(m.tn == 3);
  CHECK(m.accuracy == Approx(0.75));
  CHECK(m.precision == Approx(0.75));
  CHECK(m.recall == Approx(0.75));
  CHECK(m.f1 == Approx(0.75));
  CHECK(m.yes_ratio == Approx(0.5));
  CHECK(m.false_yes_rate == Approx(0.25));
  // always "yes": precision 0.5, recall 1, F1 2/3, yes-ratio 1, false-yes 1
  m = cw::pope({true, true, false, false}, {true, true, true, true});
  CHECK(m.accuracy == Approx(0.5));
  CHECK(m.precision == Approx(0.5));
  CHECK(m.recall == Approx(1.0));
  CHECK(m.f1 == Approx(2.0 / 3.0));
  CHECK(m.yes_ratio == Approx(1.0));
  CHECK(m.false_yes_rate == Approx(1.0));
  // always "no": precision and F1 are 0 by convention
  m = cw::pope({true, false}, {false, false});
  CHECK(m.precision == 0.0);
  CHECK(m.f1 == 0.0);
  CHECK(m.yes_ratio == 0.0);
  CHECK_THROWS(cw::pope({true}, {}));
}

TEST_CASE("exact McNemar", "[world][metrics]") {
  CHECK(cw::mcnemar_exact(0, 0) == 1.0);
  CHECK(cw::mcnemar_exact(0, 5) == Approx(2.0 / 32.0));            // 2 * 1/32
  CHECK(cw::mcnemar_exact(5, 0) == Approx(2.0 / 32.0));
  CHECK(cw::mcnemar_exact(1, 5) == Approx(14.0 / 64.0));           // 2 * (1 + 6)/64
  CHECK(cw::mcnemar_exact(2, 10) == Approx(158.0 / 4096.0));       // 2 * (1 + 12 + 66)/4096
  CHECK(cw::mcnemar_exact(3, 3) == 1.0);                           // min(1, 2 * 42/64)
  CHECK(cw::mcnemar_exact(500, 500) == 1.0);
  // b + c = 2200: chi^2 = 200^2 / 2200 = 18.2 -> p about 2e-5 (exact and asymptotic agree here)
  const double p = cw::mcnemar_exact(1000, 1200);
  CHECK(p > 1e-5);
  CHECK(p < 4e-5);
}

TEST_CASE("paired difference: McNemar and a deterministic bootstrap interval", "[world][metrics]") {
  // n = 200: 10 right under A only, 30 under B only, 100 both, 60 neither.
  std::vector<bool> a, b;
  for (int i = 0; i < 10; ++i) a.push_back(true), b.push_back(false);
  for (int i = 0; i < 30; ++i) a.push_back(false), b.push_back(true);
  for (int i = 0; i < 100; ++i) a.push_back(true), b.push_back(true);
  for (int i = 0; i < 60; ++i) a.push_back(false), b.push_back(false);
  const auto r = cw::paired(a, b);
  CHECK(r.n == 200);
  CHECK(r.a_only == 10);
  CHECK(r.b_only == 30);
  CHECK(r.diff == Approx(0.1));
  CHECK(r.p_value == Approx(cw::mcnemar_exact(10, 30)));
  CHECK(r.p_value < 0.01);
  // The per-question difference d in {-1, 0, 1} has mean 0.1 and variance 0.2 - 0.01 = 0.19, so the
  // normal-approximation interval is 0.1 -+ 1.96 sqrt(0.19 / 200) = [0.0396, 0.1604].
  CHECK(r.ci95.lo == Approx(0.0396).margin(0.01));
  CHECK(r.ci95.hi == Approx(0.1604).margin(0.01));
  const auto again = cw::paired(a, b);
  CHECK(again.ci95.lo == r.ci95.lo);
  CHECK(again.ci95.hi == r.ci95.hi);
  // identical systems: a zero-width interval at 0 and p = 1
  const auto same = cw::paired(a, a);
  CHECK(same.diff == 0.0);
  CHECK(same.ci95.lo == 0.0);
  CHECK(same.ci95.hi == 0.0);
  CHECK(same.p_value == 1.0);
  CHECK_THROWS(cw::paired(a, {}));
}
