// Tests for consr/pairs.hpp: preference-pair selection (spec §6).
#include <catch2/catch.hpp>

#include <consr/pairs.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using consr::index_t;
using consr::preference_pair;

namespace {

using consr_test::error_argument;
using consr_test::inf_v;
using consr_test::nan_v;

consr::selection_report select(const std::vector<double>& rewards, const std::vector<std::int64_t>& groups,
                               std::vector<preference_pair>& pairs, const consr::pair_options& opt = {}) {
  return consr::select_pairs(consr::make_view(rewards.data(), rewards.size()),
                             consr::make_view(groups.data(), groups.size()), pairs, opt);
}

void check_invariant(const consr::selection_report& r) {
  CHECK(r.groups == r.groups_with_pairs + r.groups_too_few_candidates + r.groups_no_margin);
}

// Independent reference: stable sorts of the usable candidates (no tie-break
// comparator needed: stability keeps index order among equal rewards).
std::vector<preference_pair> reference_pairs(const std::vector<double>& r, const std::vector<std::int64_t>& groups,
                                             index_t k, double min_margin) {
  std::vector<preference_pair> out;
  for (std::size_t g = 0; g + 1 < groups.size(); ++g) {
    std::vector<index_t> usable;
    for (index_t c = groups[g]; c < groups[g + 1]; ++c)
      if (std::isfinite(r[c])) usable.push_back(c);
    if (usable.size() < 2) continue;
    if (k == 1) {
      // Brute force: the chosen is the first index whose reward no other exceeds.
      index_t best = -1, worst = -1;
      for (index_t c : usable) {
        bool is_max = true, is_min = true;
        for (index_t d : usable) {
          if (r[d] > r[c]) is_max = false;
          if (r[d] < r[c]) is_min = false;
        }
        if (is_max && best < 0) best = c;
        if (is_min && worst < 0) worst = c;
      }
      if (r[best] > r[worst] && r[best] - r[worst] >= min_margin)
        out.push_back({index_t(g), best, worst, r[best], r[worst], r[best] - r[worst]});
      continue;
    }
    auto desc = usable, asc = usable;
    std::stable_sort(desc.begin(), desc.end(), [&](index_t a, index_t b) { return r[a] > r[b]; });
    std::stable_sort(asc.begin(), asc.end(), [&](index_t a, index_t b) { return r[a] < r[b]; });
    for (index_t j = 0; j < k && j < index_t(usable.size()); ++j) {
      const index_t c = desc[j], l = asc[j];
      if (!(r[c] > r[l]) || r[c] - r[l] < min_margin) break;
      out.push_back({index_t(g), c, l, r[c], r[l], r[c] - r[l]});
    }
  }
  return out;
}

void check_same_pairs(const std::vector<preference_pair>& got, const std::vector<preference_pair>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].group == want[i].group);
    CHECK(got[i].chosen == want[i].chosen);
    CHECK(got[i].rejected == want[i].rejected);
    CHECK(got[i].chosen_reward == want[i].chosen_reward);
    CHECK(got[i].rejected_reward == want[i].rejected_reward);
    CHECK(got[i].margin == want[i].margin);
  }
}

}  // namespace

TEST_CASE("select_pairs: arg-max / arg-min with ties toward the lower index", "[pairs]") {
  // Group 0: max 3.0 at 1 and 2 -> chosen 1; min 0.5 at 3 and 4 -> rejected 3.
  // Group 1 (global 5..7): rewards 7, 7, 6 -> chosen 5, rejected 7.
  const std::vector<double> r = {1.0, 3.0, 3.0, 0.5, 0.5, 7.0, 7.0, 6.0};
  const std::vector<std::int64_t> g = {0, 5, 8};
  std::vector<preference_pair> pairs = {{9, 9, 9, 0, 0, 0}};  // cleared by select_pairs
  const auto rep = select(r, g, pairs);
  REQUIRE(pairs.size() == 2);
  CHECK(pairs[0].group == 0);
  CHECK(pairs[0].chosen == 1);
  CHECK(pairs[0].rejected == 3);
  CHECK(pairs[0].chosen_reward == 3.0);
  CHECK(pairs[0].rejected_reward == 0.5);
  CHECK(pairs[0].margin == 2.5);
  CHECK(pairs[1].group == 1);
  CHECK(pairs[1].chosen == 5);
  CHECK(pairs[1].rejected == 7);
  CHECK(rep.groups == 2);
  CHECK(rep.pairs == 2);
  CHECK(rep.groups_with_pairs == 2);
  check_invariant(rep);
}

TEST_CASE("select_pairs: non-finite rewards are skipped and counted", "[pairs]") {
  const std::vector<double> r = {nan_v, 2.0, inf_v, -inf_v, 1.0, /*g1*/ nan_v, 4.0, /*g2*/ inf_v, -inf_v};
  const std::vector<std::int64_t> g = {0, 5, 7, 9};
  std::vector<preference_pair> pairs;
  const auto rep = select(r, g, pairs);
  REQUIRE(pairs.size() == 1);
  CHECK(pairs[0].chosen == 1);
  CHECK(pairs[0].rejected == 4);
  CHECK(rep.nonfinite_candidates == 6);
  CHECK(rep.groups_too_few_candidates == 2);  // group 1: one usable; group 2: none
  CHECK(rep.groups_with_pairs == 1);
  check_invariant(rep);
}

TEST_CASE("select_pairs: small, empty and all-equal groups; min_margin", "[pairs]") {
  // g0 empty, g1 one candidate, g2 all equal, g3 margin 0.5, g4 margin 2.
  const std::vector<double> r = {1.0, /*g2*/ 2.0, 2.0, 2.0, /*g3*/ 0.0, 0.5, /*g4*/ 3.0, 1.0};
  const std::vector<std::int64_t> g = {0, 0, 1, 4, 6, 8};
  std::vector<preference_pair> pairs;
  auto rep = select(r, g, pairs);
  CHECK(rep.groups == 5);
  CHECK(rep.groups_too_few_candidates == 2);
  CHECK(rep.groups_no_margin == 1);  // all equal: best == worst
  CHECK(rep.groups_with_pairs == 2);
  REQUIRE(pairs.size() == 2);
  CHECK(pairs[0].group == 3);
  CHECK(pairs[0].chosen == 5);
  CHECK(pairs[0].rejected == 4);
  CHECK(pairs[1].group == 4);
  check_invariant(rep);

  consr::pair_options opt;
  opt.min_margin = 0.5;  // margin == min_margin is enough
  rep = select(r, g, pairs, opt);
  CHECK(rep.pairs == 2);
  opt.min_margin = 0.6;
  rep = select(r, g, pairs, opt);
  CHECK(rep.pairs == 1);
  CHECK(rep.groups_no_margin == 2);
  REQUIRE(pairs.size() == 1);
  CHECK(pairs[0].group == 4);
  check_invariant(rep);
}

TEST_CASE("select_pairs: pairs_per_group matches the j-th best with the j-th worst", "[pairs]") {
  std::vector<preference_pair> pairs;
  consr::pair_options opt;
  SECTION("distinct rewards") {
    const std::vector<double> r = {5, 4, 3, 2, 1};
    const std::vector<std::int64_t> g = {0, 5};
    opt.pairs_per_group = 2;
    select(r, g, pairs, opt);
    REQUIRE(pairs.size() == 2);
    CHECK((pairs[0].chosen == 0 && pairs[0].rejected == 4));
    CHECK((pairs[1].chosen == 1 && pairs[1].rejected == 3));
    opt.pairs_per_group = 3;  // j = 2 would pair candidate 2 with itself
    auto rep = select(r, g, pairs, opt);
    CHECK(pairs.size() == 2);
    CHECK(rep.pairs == 2);
    opt.pairs_per_group = 10;
    select(r, g, pairs, opt);
    CHECK(pairs.size() == 2);
    opt.pairs_per_group = 2;
    opt.min_margin = 3.0;  // second pair's margin 2 < 3
    select(r, g, pairs, opt);
    REQUIRE(pairs.size() == 1);
    CHECK(pairs[0].margin == 4.0);
  }
  SECTION("ties stop the pairing at equal rewards") {
    // best = [0, 1, 2, 3], worst = [3, 1, 2, 0]: pair 1 would be (1, 1).
    const std::vector<double> r = {3, 2, 2, 1};
    const std::vector<std::int64_t> g = {0, 4};
    opt.pairs_per_group = 3;
    select(r, g, pairs, opt);
    REQUIRE(pairs.size() == 1);
    CHECK((pairs[0].chosen == 0 && pairs[0].rejected == 3));
    // best = [0, 1, 2, 3, 4, 5], worst = [5, 4, 2, 3, 1, 0].
    const std::vector<double> r2 = {4, 3, 2, 2, 1, 0};
    const std::vector<std::int64_t> g2 = {0, 6};
    select(r2, g2, pairs, opt);
    REQUIRE(pairs.size() == 2);
    CHECK((pairs[1].chosen == 1 && pairs[1].rejected == 4));
    // Ties at the bottom: worst order takes the lower index first.
    const std::vector<double> r3 = {0, 9, 0, 8, 0};
    const std::vector<std::int64_t> g3 = {0, 5};
    select(r3, g3, pairs, opt);
    REQUIRE(pairs.size() == 2);
    CHECK((pairs[0].chosen == 1 && pairs[0].rejected == 0));
    CHECK((pairs[1].chosen == 3 && pairs[1].rejected == 2));
  }
}

TEST_CASE("select_pairs: skip_duplicates drops repeated token sequences", "[pairs]") {
  // Group 0: c0 [1 2 3] r=1, c1 [1 2 3] r=5 (duplicate of c0), c2 [1 2] r=0, c3 [1 2 3 4] r=3.
  // Group 1: c4 [1 2 3] r=2 (not a duplicate: other group), c5 [7] r=NaN, c6 [7] r=1 (c5 unusable).
  // Group 2: c7 [] r=4, c8 [] r=2 (empty sequences are equal: duplicate).
  const std::vector<double> r = {1, 5, 0, 3, 2, nan_v, 1, 4, 2};
  const std::vector<std::int64_t> g = {0, 4, 7, 9};
  const std::vector<std::int32_t> tokens = {1, 2, 3, 1, 2, 3, 1, 2, 1, 2, 3, 4, 1, 2, 3, 7, 7};
  const std::vector<std::int64_t> toff = {0, 3, 6, 8, 12, 15, 16, 17, 17, 17};
  std::vector<preference_pair> pairs;
  consr::pair_options opt;
  opt.skip_duplicates = true;
  auto run = [&] {
    return consr::select_pairs(consr::make_view(r.data(), r.size()), consr::make_view(g.data(), g.size()),
                               consr::make_view(tokens.data(), tokens.size()),
                               consr::make_view(toff.data(), toff.size()), pairs, opt);
  };
  auto rep = run();
  CHECK(rep.duplicate_candidates == 2);
  CHECK(rep.nonfinite_candidates == 1);
  REQUIRE(pairs.size() == 2);
  CHECK((pairs[0].group == 0 && pairs[0].chosen == 3 && pairs[0].rejected == 2));
  CHECK((pairs[1].group == 1 && pairs[1].chosen == 4 && pairs[1].rejected == 6));
  CHECK(rep.groups_too_few_candidates == 1);  // group 2 after dropping c8
  check_invariant(rep);

  opt.skip_duplicates = false;  // tokens validated, not used
  rep = run();
  CHECK(rep.duplicate_candidates == 0);
  REQUIRE(pairs.size() == 3);
  CHECK(pairs[0].chosen == 1);
}

TEST_CASE("select_pairs: skip_duplicates on many equal sequences", "[pairs]") {
  // 40 candidates in one group, token sequences drawn from 5 patterns: exactly
  // the lowest index of each pattern survives.
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> pat(0, 4);
  std::vector<std::int64_t> tokens, toff = {0};
  std::vector<int> pattern;
  std::vector<double> r;
  for (int c = 0; c < 40; ++c) {
    const int p = pat(rng);
    pattern.push_back(p);
    for (int t = 0; t < p; ++t) tokens.push_back(100 + t * p);
    toff.push_back(static_cast<std::int64_t>(tokens.size()));
    r.push_back(double(c));  // later candidates have higher reward
  }
  const std::vector<std::int64_t> g = {0, 40};
  std::vector<preference_pair> pairs;
  consr::pair_options opt;
  opt.skip_duplicates = true;
  const auto rep = consr::select_pairs(consr::make_view(r.data(), 40), consr::make_view(g.data(), 2),
                                       consr::make_view(tokens.data(), tokens.size()),
                                       consr::make_view(toff.data(), toff.size()), pairs, opt);
  std::vector<int> first(5, -1);
  int distinct = 0;
  for (int c = 0; c < 40; ++c)
    if (first[pattern[c]] < 0) {
      first[pattern[c]] = c;
      ++distinct;
    }
  CHECK(rep.duplicate_candidates == 40 - distinct);
  REQUIRE(pairs.size() == 1);
  CHECK(pairs[0].chosen == *std::max_element(first.begin(), first.end()));
  CHECK(pairs[0].rejected == 0);
}

TEST_CASE("select_pairs matches an independent reference on random groups", "[pairs]") {
  std::mt19937_64 rng(123);
  std::uniform_int_distribution<int> size(0, 9);
  std::uniform_int_distribution<int> level(0, 5);  // few levels: many ties
  std::bernoulli_distribution bad(0.1);
  for (int trial = 0; trial < 40; ++trial) {
    std::vector<std::int64_t> g = {0};
    std::vector<double> r;
    for (int grp = 0; grp < 12; ++grp) {
      const int m = size(rng);
      for (int c = 0; c < m; ++c) r.push_back(bad(rng) ? nan_v : 0.25 * level(rng));
      g.push_back(static_cast<std::int64_t>(r.size()));
    }
    for (index_t k : {1, 2, 3, 5}) {
      for (double mm : {0.0, 0.5}) {
        consr::pair_options opt;
        opt.pairs_per_group = k;
        opt.min_margin = mm;
        std::vector<preference_pair> pairs;
        const auto rep = select(r, g, pairs, opt);
        check_same_pairs(pairs, reference_pairs(r, g, k, mm));
        CHECK(rep.pairs == index_t(pairs.size()));
        check_invariant(rep);
      }
    }
    // float rewards give the same selection as their double values.
    std::vector<float> rf(r.begin(), r.end());
    std::vector<preference_pair> pf;
    consr::select_pairs(consr::make_view(rf.data(), rf.size()), consr::make_view(g.data(), g.size()), pf);
    check_same_pairs(pf, reference_pairs(r, g, 1, 0.0));
  }
}

TEST_CASE("select_pairs: errors name the argument", "[pairs]") {
  const std::vector<double> r = {1, 2, 3};
  const std::vector<std::int64_t> g = {0, 3};
  std::vector<preference_pair> pairs;
  consr::pair_options opt;
  opt.pairs_per_group = 0;
  CHECK(error_argument([&] { select(r, g, pairs, opt); }) == "options.pairs_per_group");
  opt = {};
  opt.min_margin = -1;
  CHECK(error_argument([&] { select(r, g, pairs, opt); }) == "options.min_margin");
  opt.min_margin = nan_v;
  CHECK(error_argument([&] { select(r, g, pairs, opt); }) == "options.min_margin");
  opt = {};
  opt.skip_duplicates = true;
  CHECK(error_argument([&] { select(r, g, pairs, opt); }) == "options.skip_duplicates");
  CHECK(error_argument([&] { select(r, {0, 2}, pairs); }) == "group_offsets");
  CHECK(error_argument([&] { select(r, {0, 2, 1, 3}, pairs); }) == "group_offsets");
  const std::vector<std::int32_t> tokens = {1, 2};
  const std::vector<std::int32_t> toff = {0, 1, 2};  // 2 sequences for 3 candidates
  CHECK(error_argument([&] {
          consr::select_pairs(consr::make_view(r.data(), 3), consr::make_view(g.data(), 2),
                              consr::make_view(tokens.data(), 2), consr::make_view(toff.data(), 3), pairs, opt);
        }) == "token_offsets");
  // No group at all: a successful no-op.
  const std::vector<double> none;
  const auto rep = select(none, {0}, pairs);
  CHECK(rep.groups == 0);
  CHECK(pairs.empty());
}
