// Reward quality (examples/experiment): pair agreement and within-item AUC against values worked
// out by hand on small items.
#include <catch2/catch.hpp>

#include <cmath>
#include <stdexcept>

#include "consr_experiment/reward_quality.hpp"

using namespace consr_experiment;

namespace {
candidate_record cand(double r, bool correct, double P = 0.5, double len = 3) {
  candidate_record c;
  c.r = r;
  c.P = P;
  c.S_corrupt = -r;  // the opposite ranking, so s_corrupt's numbers are the mirror of reward's
  c.S_semantic = r;
  c.length = len;
  c.correct = correct;
  return c;
}
}  // namespace

TEST_CASE("reward quality: agreement and AUC by hand") {
  std::vector<item_record> items(4);
  // item 0: correct ranked on top, wrong at the bottom → agree; AUC pairs (c: 0.9, 0.5) × (w: 0.1, 0.5)
  //   wins: 0.9>0.1, 0.9>0.5, 0.5>0.1, 0.5=0.5 (½) → 3.5 / 4
  items[0] = {"a", "existence", {cand(0.9, true), cand(0.5, true), cand(0.1, false), cand(0.5, false)}};
  // item 1: the wrong answer has the highest reward → reversed pair; AUC 0 / 2
  items[1] = {"b", "colour", {cand(0.2, true), cand(0.8, false), cand(0.3, true)}};
  // item 2: all correct → not mixed, no pair counted
  items[2] = {"c", "existence", {cand(0.2, true), cand(0.4, true)}};
  // item 3: one unusable correct candidate and two wrong ones → all wrong among usable
  items[3] = {"d", "count", {cand(0.9, true), cand(0.2, false), cand(0.1, false)}};
  items[3].candidates[0].usable = false;

  const quality q = measure(items, signal::reward, 7);
  CHECK(q.items == 4);
  CHECK(q.items_mixed == 2);
  CHECK(q.items_all_correct == 1);
  CHECK(q.items_all_wrong == 1);
  CHECK(q.pairs == 2);
  CHECK(q.pairs_agree == 1);
  CHECK(q.pairs_reversed == 1);
  CHECK(q.agreement() == 0.5);
  CHECK(q.auc_pairs == 6);
  CHECK(q.auc_wins == 3.5);
  CHECK(q.auc() == Approx(3.5 / 6));
  CHECK(q.auc_item_mean() == Approx((3.5 / 4 + 0.0) / 2));

  // s_corrupt = −r: item 0 chooses the wrong 0.1 over... best by −r is 0.1 (wrong), worst −0.9 (correct)
  const quality m = measure(items, signal::s_corrupt, 7);
  CHECK(m.pairs == 2);
  CHECK(m.pairs_agree == 1);     // item 1: best −0.2 (correct), worst −0.8 (wrong)
  CHECK(m.pairs_reversed == 1);  // item 0
  CHECK(m.auc_wins == Approx(0.5 + 2.0));  // item 0: only the tie (½); item 1: both wins

  // per type: the existence items are 0 and 2
  const auto rep = report(items, 7);
  CHECK(rep["per_type"]["existence"]["reward"]["pairs"] == 1);
  CHECK(rep["per_type"]["existence"]["reward"]["pair_agreement"] == 1.0);
  CHECK(rep["per_type"]["colour"]["reward"]["pair_agreement"] == 0.0);
  CHECK(rep["per_type"]["count"]["reward"]["pair_agreement"].is_null());
  CHECK(rep["overall"]["reward"]["auc_pairs"] == 6);
}

TEST_CASE("reward quality: ties give no pair, length and random signals") {
  std::vector<item_record> items(1);
  items[0] = {"t", "existence", {cand(0.3, true, 0.5, 4), cand(0.3, false, 0.5, 2)}};
  const quality q = measure(items, signal::reward, 0);
  CHECK(q.items_mixed == 1);
  CHECK(q.pairs == 0);  // best == worst: spec §6, no pair
  CHECK(q.auc_wins == 0.5);
  const quality len = measure(items, signal::length, 0);
  CHECK(len.pairs_agree == 1);  // the longer (correct) one is chosen
  // random: a pure function of (seed, item, candidate)
  CHECK(signal_value(items[0].candidates[0], signal::random, 3, 0, 0) ==
        signal_value(items[0].candidates[0], signal::random, 3, 0, 0));
  CHECK(signal_value(items[0].candidates[0], signal::random, 3, 0, 0) !=
        signal_value(items[0].candidates[0], signal::random, 4, 0, 0));
}

TEST_CASE("reward quality: the random signal agrees about as often as chance") {
  // 2,000 items of 1 correct + 3 wrong: a random pair is (correct, wrong) with probability 1/4.
  std::vector<item_record> items(2000);
  for (std::size_t i = 0; i < items.size(); ++i)
    items[i] = {"i", "x", {cand(0, true), cand(0, false), cand(0, false), cand(0, false)}};
  const quality q = measure(items, signal::random, 11);
  CHECK(q.pairs == 2000);
  CHECK(q.agreement() == Approx(0.25).margin(0.03));
  CHECK(q.auc() == Approx(0.5).margin(0.03));
}

TEST_CASE("reward quality: Wilson interval against hand values and bad input") {
  // k = 8, n = 10: centre (0.8 + 0.19207) / 1.38415 = 0.71682, half 0.24813 → [0.4902, 0.9433]
  const auto ci = wilson95(8, 10);
  CHECK(ci.first == Approx(0.4902).margin(1e-4));
  CHECK(ci.second == Approx(0.9433).margin(1e-4));
  CHECK(std::isnan(wilson95(0, 0).first));
  const auto z = wilson95(0, 20);
  CHECK(z.first == 0.0);
  CHECK(z.second == Approx(0.1611).margin(1e-4));
  std::vector<item_record> bad(1);
  bad[0].id = "empty";
  CHECK_THROWS_WITH(measure(bad, signal::reward, 0), Catch::Contains("'items'") && Catch::Contains("empty"));
  std::vector<std::size_t> subset{3};
  CHECK_THROWS_WITH(measure(bad, signal::reward, 0, &subset), Catch::Contains("'subset'"));
}
