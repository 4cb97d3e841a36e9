// consr/cuda/pairs.cuh against its host twin consr::select_pairs (k = 1) on
// the same rewards: many ties (rewards on a coarse grid), non-finite rewards,
// empty and single-candidate groups, min_margin, no group, and errors.
// Everything is exact: the device copies rewards and computes the margin with
// the same double subtraction as the host.
#include "cuda_test_util.cuh"

#include <consr/cuda/pairs.cuh>
#include <consr/pairs.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using consr::index_t;
using consr_test::device_buffer;
using consr_test::device_error_info;
using consr_test::run_two_phase;

namespace {

template <class R, class GO>
void check_select(const std::vector<R>& rewards, const std::vector<GO>& group_offsets, double min_margin) {
  const index_t C = static_cast<index_t>(rewards.size());
  const index_t G = static_cast<index_t>(group_offsets.size()) - 1;
  consr::pair_options opt;
  opt.min_margin = min_margin;
  std::vector<consr::preference_pair> pairs;
  const consr::selection_report report =
      consr::select_pairs(consr::make_view(rewards.data(), C), consr::make_view(group_offsets.data(), G + 1), pairs, opt);

  device_buffer<R> d_rewards(rewards);
  device_buffer<GO> d_off(group_offsets);
  device_buffer<std::int64_t> chosen(static_cast<std::size_t>(G)), rejected(static_cast<std::size_t>(G));
  device_buffer<std::int32_t> outcome(static_cast<std::size_t>(G));
  device_buffer<double> chosen_reward(static_cast<std::size_t>(G)), rejected_reward(static_cast<std::size_t>(G)),
      margin(static_cast<std::size_t>(G));
  device_buffer<consr::cuda::selection_counts> counts(1);
  device_error_info err;
  consr::cuda::pair_outputs<std::int64_t> out{chosen.view(),        rejected.view(),        outcome.view(),
                                              chosen_reward.view(), rejected_reward.view(), margin.view()};
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::select_pairs(t, b, d_rewards.cview(), d_off.cview(), out, counts.data(), opt, nullptr,
                                     err.get());
  }));
  const auto got_chosen = chosen.download(), got_rejected = rejected.download();
  const auto got_outcome = outcome.download();
  const auto got_cr = chosen_reward.download(), got_rr = rejected_reward.download(), got_m = margin.download();

  // The host's compacted list, spread back over the groups.
  std::vector<const consr::preference_pair*> by_group(static_cast<std::size_t>(G), nullptr);
  for (const auto& p : pairs) by_group[static_cast<std::size_t>(p.group)] = &p;
  for (index_t g = 0; g < G; ++g) {
    INFO("group " << g << " of " << G << ", candidates [" << group_offsets[g] << ", " << group_offsets[g + 1] << ")");
    const consr::preference_pair* p = by_group[static_cast<std::size_t>(g)];
    if (p != nullptr) {
      CHECK(got_outcome[g] == static_cast<std::int32_t>(consr::cuda::pair_status::paired));
      CHECK(got_chosen[g] == p->chosen);
      CHECK(got_rejected[g] == p->rejected);
      CHECK(got_cr[g] == p->chosen_reward);
      CHECK(got_rr[g] == p->rejected_reward);
      CHECK(got_m[g] == p->margin);
    } else {
      CHECK(got_outcome[g] != static_cast<std::int32_t>(consr::cuda::pair_status::paired));
      CHECK(got_chosen[g] == -1);
      CHECK(got_rejected[g] == -1);
      CHECK(std::isnan(got_m[g]));
    }
  }
  // Per-group reasons against an independent count of usable candidates.
  index_t too_few = 0;
  for (index_t g = 0; g < G; ++g) {
    index_t usable = 0;
    for (GO c = group_offsets[g]; c < group_offsets[g + 1]; ++c) usable += std::isfinite(static_cast<double>(rewards[c]));
    if (usable < 2) {
      CHECK(got_outcome[g] == static_cast<std::int32_t>(consr::cuda::pair_status::too_few_candidates));
      ++too_few;
    }
  }
  const consr::cuda::selection_counts c = consr_test::read_device_object(counts.data());
  CHECK(too_few == report.groups_too_few_candidates);
  CHECK(c.pairs == static_cast<unsigned long long>(report.pairs));
  CHECK(c.pairs == static_cast<unsigned long long>(report.groups_with_pairs));
  CHECK(c.groups_too_few_candidates == static_cast<unsigned long long>(report.groups_too_few_candidates));
  CHECK(c.groups_no_margin == static_cast<unsigned long long>(report.groups_no_margin));
  CHECK(c.nonfinite_candidates == static_cast<unsigned long long>(report.nonfinite_candidates));
  CHECK(err.read().code == 0);
}

template <class R, class GO>
void random_case(std::mt19937_64& rng, index_t groups, index_t max_size, double min_margin) {
  std::uniform_int_distribution<index_t> size(0, max_size);
  std::uniform_int_distribution<int> grid(-4, 4);  // rewards k/8: many exact ties
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<GO> off{0};
  for (index_t g = 0; g < groups; ++g) off.push_back(static_cast<GO>(off.back() + size(rng)));
  std::vector<R> rewards(static_cast<std::size_t>(off.back()));
  for (auto& r : rewards) {
    const double x = u(rng);
    if (x < 0.03) r = std::numeric_limits<R>::quiet_NaN();
    else if (x < 0.05) r = (x < 0.04 ? 1 : -1) * std::numeric_limits<R>::infinity();
    else r = static_cast<R>(grid(rng) / 8.0);
  }
  check_select(rewards, off, min_margin);
}

}  // namespace

TEST_CASE("cuda select_pairs matches the host twin (k = 1)", "[cuda][pairs]") {
  std::mt19937_64 rng(314);
  SECTION("float rewards, int32 group offsets") {
    for (int rep = 0; rep < 3; ++rep) random_case<float, std::int32_t>(rng, 500, 20, 0.0);
  }
  SECTION("double rewards, int64 group offsets, min_margin 0.25") {
    random_case<double, std::int64_t>(rng, 500, 20, 0.25);
  }
  SECTION("all rewards tied inside groups") {
    const std::vector<float> r = {0.5f, 0.5f, 0.5f, -1.0f, -1.0f};
    check_select<float, std::int32_t>(r, {0, 3, 5}, 0.0);
  }
  SECTION("ties toward the lower index on both sides") {
    const std::vector<float> r = {1.0f, 3.0f, 0.0f, 3.0f, 0.0f, 2.0f};
    check_select<float, std::int32_t>(r, {0, 6}, 0.0);
  }
  SECTION("no group, empty groups, one candidate") {
    check_select<float, std::int32_t>({}, {0}, 0.0);
    check_select<float, std::int32_t>({}, {0, 0, 0}, 0.0);
    check_select<float, std::int32_t>({1.0f}, {0, 0, 1}, 0.0);
  }
  SECTION("the paper's 10 000 prompts x 15 candidates") {
    std::vector<std::int32_t> off{0};
    for (int g = 0; g < 10000; ++g) off.push_back(off.back() + 15);
    std::mt19937_64 r2(1);
    std::normal_distribution<float> d(0.0f, 0.1f);
    std::vector<float> rewards(150000);
    for (auto& x : rewards) x = d(r2);
    check_select<float, std::int32_t>(rewards, off, 0.01);
  }
}

TEST_CASE("cuda select_pairs: argument errors and bad offsets", "[cuda][pairs]") {
  device_buffer<float> r(std::vector<float>{1, 2, 3, 4});
  device_buffer<std::int32_t> off(std::vector<std::int32_t>{0, 2, 4});
  device_buffer<std::int32_t> chosen(2), rejected(2);
  consr::cuda::pair_outputs<std::int32_t> out;
  out.chosen = chosen.view();
  out.rejected = rejected.view();
  std::size_t bytes = 0;
  consr::pair_options opt;
  SECTION("k > 1 is host-only") {
    opt.pairs_per_group = 2;
    CHECK(consr::cuda::select_pairs(nullptr, bytes, r.cview(), off.cview(), out, nullptr, opt) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.pairs_per_group'"));
  }
  SECTION("negative min_margin") {
    opt.min_margin = -1.0;
    CHECK(consr::cuda::select_pairs(nullptr, bytes, r.cview(), off.cview(), out, nullptr, opt) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'options.min_margin'"));
  }
  SECTION("out.rejected of the wrong size") {
    out.rejected = consr::make_view<consr::device_space>(rejected.data(), 1);
    CHECK(consr::cuda::select_pairs(nullptr, bytes, r.cview(), off.cview(), out) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out.rejected'"));
  }
  SECTION("a broadcast out.chosen") {
    out.chosen = consr::make_strided_view<consr::device_space>(chosen.data(), std::array<index_t, 1>{2},
                                                               std::array<index_t, 1>{0});
    CHECK(consr::cuda::select_pairs(nullptr, bytes, r.cview(), off.cview(), out) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out.chosen'") && Catch::Contains("stride 0"));
  }
  SECTION("more candidates than 32-bit indices can name") {
    // Checked on the host before anything is read: the view's memory is never touched.
    const auto huge =
        consr::make_view<consr::device_space>(static_cast<const float*>(r.data()), (index_t{1} << 31) + 1);
    CHECK(consr::cuda::select_pairs(nullptr, bytes, huge, off.cview(), out) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out.chosen'") && Catch::Contains("64-bit"));
  }
  SECTION("decreasing group offsets are reported") {
    device_buffer<std::int32_t> bad(std::vector<std::int32_t>{0, 3, 1, 4});
    device_buffer<std::int32_t> c3(3), r3(3);
    out.chosen = c3.view();
    out.rejected = r3.view();
    device_error_info err;
    CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
      return consr::cuda::select_pairs(t, b, r.cview(), bad.cview(), out, nullptr, opt, nullptr, err.get());
    }));
    const consr::cuda::error_info e = err.read();
    CHECK(e.code == static_cast<int>(consr::status::invalid_argument));
    CHECK(consr::cuda::error_index(e) == 1);
  }
}
