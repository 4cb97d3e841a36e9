// Tests for consr/reductions.hpp: segmented sum, mean, weighted sum, count and
// masked mean against plain double loops written here.
#include <catch2/catch.hpp>

#include <consr/reductions.hpp>

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

using consr_test::random_offsets;
using consr_test::random_token_labels;
using consr_test::random_values;

template <class O>
void expect_offsets_error(const std::vector<O>& off, index_t n, const std::string& fragment) {
  std::vector<double> values(static_cast<std::size_t>(n), 1.0);
  std::vector<double> out(off.empty() ? 0 : off.size() - 1);
  try {
    consr::segmented_sum(consr::make_view(values.data(), n), consr::make_view(off.data(), off.size()),
                         consr::make_view(out.data(), out.size()));
    FAIL("no error was thrown");
  } catch (const consr::error& e) {
    CHECK(e.argument() == "offsets");
    CHECK(e.function() == "consr::segmented_sum");
    CHECK_THAT(e.what(), Catch::Contains(fragment));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("segmented reductions match plain loops on random segments", "[reductions]", std::int32_t,
                   std::int64_t) {
  using O = TestType;
  std::mt19937_64 rng(20240611);
  for (index_t segments : {index_t(0), index_t(1), index_t(2), index_t(7), index_t(64), index_t(300)}) {
    for (index_t max_len : {index_t(0), index_t(1), index_t(13), index_t(200)}) {
      const auto off = random_offsets<O>(rng, segments, max_len);
      const index_t n = off.back();
      const auto values = random_values(rng, n);
      const auto weights = random_values(rng, n);
      const auto labels = random_token_labels(rng, n, 0.3);
      std::vector<double> sum(segments), mean(segments), wsum(segments), mmean(segments);
      std::vector<std::int64_t> count(segments);
      auto vv = consr::make_view(values.data(), n);
      auto ov = consr::make_view(off.data(), segments + 1);
      consr::segmented_sum(vv, ov, consr::make_view(sum.data(), segments));
      consr::segmented_mean(vv, ov, consr::make_view(mean.data(), segments));
      consr::segmented_weighted_sum(vv, consr::make_view(weights.data(), n), ov, consr::make_view(wsum.data(), segments));
      consr::segmented_count(consr::make_view(labels.data(), n), ov, consr::make_view(count.data(), segments));
      consr::segmented_masked_mean(vv, consr::make_view(labels.data(), n), ov, consr::make_view(mmean.data(), segments),
                                   -100);
      for (index_t s = 0; s < segments; ++s) {
        double rs = 0, rw = 0, rm = 0;
        std::int64_t rc = 0;
        for (index_t i = off[s]; i < off[s + 1]; ++i) {
          rs += values[i];
          rw += weights[i] * values[i];
          if (labels[i] != -100) {
            rm += values[i];
            ++rc;
          }
        }
        const index_t len = off[s + 1] - off[s];
        CHECK(sum[s] == Approx(rs).margin(1e-12));
        CHECK(wsum[s] == Approx(rw).margin(1e-12));
        CHECK(count[s] == rc);
        if (len == 0) {
          CHECK(sum[s] == 0.0);
          CHECK(wsum[s] == 0.0);
          CHECK(std::isnan(mean[s]));
        } else {
          CHECK(mean[s] == Approx(rs / double(len)).margin(1e-12));
        }
        if (rc == 0) {
          CHECK(std::isnan(mmean[s]));
        } else {
          CHECK(mmean[s] == Approx(rm / double(rc)).margin(1e-12));
        }
      }
    }
  }
}

TEST_CASE("segmented reductions: float in, float out, and strided views", "[reductions]") {
  // Values in float, read through a stride-2 view; sums written to float.
  std::vector<float> storage = {1.5f, 99.f, 2.25f, 99.f, -4.f, 99.f, 8.f, 99.f};
  const auto values = consr::make_strided_view(static_cast<const float*>(storage.data()), std::array<index_t, 1>{4},
                                               std::array<index_t, 1>{2});
  const std::vector<std::int32_t> off = {0, 3, 3, 4};
  std::vector<float> sum(3), mean(3);
  consr::segmented_sum(values, consr::make_view(off.data(), 4), consr::make_view(sum.data(), 3));
  consr::segmented_mean(values, consr::make_view(off.data(), 4), consr::make_view(mean.data(), 3));
  CHECK(sum[0] == -0.25f);
  CHECK(sum[1] == 0.0f);
  CHECK(sum[2] == 8.0f);
  CHECK(mean[0] == Approx(-0.25 / 3.0));
  CHECK(std::isnan(mean[1]));
  CHECK(mean[2] == 8.0f);
}

TEST_CASE("segmented reductions: bfloat16 and float16 values accumulate in double", "[reductions]") {
  // Every value is exact in its storage type; the sums (258, 2049) are not
  // reachable by accumulating in the 16-bit type itself (2049 is not a binary16
  // value: the spacing at 2048 is 2).
  std::vector<consr::bfloat16> bf = {consr::bfloat16(256.f), consr::bfloat16(0.5f), consr::bfloat16(0.5f),
                                     consr::bfloat16(0.5f), consr::bfloat16(0.5f)};
  std::vector<consr::float16> hf = {consr::float16(2048.f), consr::float16(0.5f), consr::float16(0.5f)};
  const std::vector<std::int64_t> off_bf = {0, 5};
  const std::vector<std::int64_t> off_hf = {0, 3};
  std::vector<double> out(1);
  consr::segmented_sum(consr::make_view(bf.data(), 5), consr::make_view(off_bf.data(), 2),
                       consr::make_view(out.data(), 1));
  CHECK(out[0] == 258.0);
  consr::segmented_sum(consr::make_view(hf.data(), 3), consr::make_view(off_hf.data(), 2),
                       consr::make_view(out.data(), 1));
  CHECK(out[0] == 2049.0);
  // Output in bf16: rounded once from the double sum (258 is a bf16 value).
  std::vector<consr::bfloat16> bout(1);
  consr::segmented_sum(consr::make_view(bf.data(), 5), consr::make_view(off_bf.data(), 2),
                       consr::make_view(bout.data(), 1));
  CHECK(float(bout[0]) == 258.0f);
}

TEST_CASE("segmented reductions: no segments is a no-op; one element", "[reductions]") {
  const std::vector<std::int64_t> off0 = {0};
  std::vector<double> out;
  const double* none = nullptr;
  REQUIRE_NOTHROW(consr::segmented_sum(consr::make_view(none, 0), consr::make_view(off0.data(), 1),
                                       consr::make_view(out.data(), 0)));
  REQUIRE_NOTHROW(consr::segmented_mean(consr::make_view(none, 0), consr::make_view(off0.data(), 1),
                                        consr::make_view(out.data(), 0)));
  const std::vector<double> one = {-2.5};
  const std::vector<std::int32_t> off1 = {0, 1};
  std::vector<double> o1(1);
  consr::segmented_mean(consr::make_view(one.data(), 1), consr::make_view(off1.data(), 2),
                        consr::make_view(o1.data(), 1));
  CHECK(o1[0] == -2.5);
}

TEST_CASE("segmented reductions: NaN at an ignored position does not propagate", "[reductions]") {
  const std::vector<double> values = {1.0, std::numeric_limits<double>::quiet_NaN(), 3.0};
  const std::vector<std::int32_t> labels = {5, -100, 7};
  const std::vector<std::int64_t> off = {0, 3};
  std::vector<double> out(1);
  consr::segmented_masked_mean(consr::make_view(values.data(), 3), consr::make_view(labels.data(), 3),
                               consr::make_view(off.data(), 2), consr::make_view(out.data(), 1));
  CHECK(out[0] == 2.0);
  // A custom ignore_index.
  consr::segmented_masked_mean(consr::make_view(values.data(), 3), consr::make_view(labels.data(), 3),
                               consr::make_view(off.data(), 2), consr::make_view(out.data(), 1), 7);
  CHECK(std::isnan(out[0]));  // the NaN at position 1 is now scored
  std::vector<std::int32_t> cnt(1);
  consr::segmented_count(consr::make_view(labels.data(), 3), consr::make_view(off.data(), 2),
                         consr::make_view(cnt.data(), 1), 7);
  CHECK(cnt[0] == 2);
}

TEST_CASE("segmented reductions: results do not depend on the parallel split", "[reductions]") {
  // Above the parallel threshold: compare against the same computation segment by segment.
  std::mt19937_64 rng(7);
  const auto off = random_offsets<std::int64_t>(rng, 4000, 40);
  const index_t n = off.back();
  REQUIRE(n >= consr::detail::segment_parallel_threshold);
  const auto values = random_values(rng, n);
  std::vector<double> all(4000);
  consr::segmented_sum(consr::make_view(values.data(), n), consr::make_view(off.data(), off.size()),
                       consr::make_view(all.data(), 4000));
  for (index_t s = 0; s < 4000; s += 97) {
    double one = 0;
    const std::vector<std::int64_t> o = {0, off[s + 1] - off[s]};
    consr::segmented_sum(consr::make_view(values.data() + off[s], o[1]), consr::make_view(o.data(), 2),
                         consr::make_view(&one, 1));
    CHECK(all[s] == one);  // bitwise: same order of accumulation
  }
}

TEST_CASE("segmented reductions: invalid offsets name 'offsets' and the segment", "[reductions]") {
  expect_offsets_error<std::int64_t>({}, 0, "is empty");
  expect_offsets_error<std::int64_t>({1, 3}, 3, "offsets[0] is 1");
  expect_offsets_error<std::int32_t>({0, 4, 2, 5}, 5, "segment 1 has offsets[1] = 4 > offsets[2] = 2");
  expect_offsets_error<std::int32_t>({0, 2, 4}, 5, "offsets[2] (the end of the last segment) is 4");
  expect_offsets_error<std::int64_t>({0, 2, 6}, 5, "but 'values' has 5 elements");
  expect_offsets_error<std::int64_t>({0}, 2, "offsets[0] (the end of the last segment) is 0");
}

TEST_CASE("segmented reductions: other size errors name their argument", "[reductions]") {
  const std::vector<double> values = {1, 2, 3};
  const std::vector<std::int64_t> off = {0, 1, 3};
  const std::vector<std::int64_t> labels = {1, 2};
  std::vector<double> out(3);
  auto vv = consr::make_view(values.data(), 3);
  auto ov = consr::make_view(off.data(), 3);
  auto arg_of = [](auto&& f) { return consr_test::error_argument(f); };
  CHECK(arg_of([&] { consr::segmented_sum(vv, ov, consr::make_view(out.data(), 3)); }) == "out");
  CHECK(arg_of([&] { consr::segmented_weighted_sum(vv, consr::make_view(values.data(), 2), ov,
                                                   consr::make_view(out.data(), 2)); }) == "weights");
  CHECK(arg_of([&] { consr::segmented_masked_mean(vv, consr::make_view(labels.data(), 2), ov,
                                                  consr::make_view(out.data(), 2)); }) == "labels");
  std::vector<std::int64_t> cnt(2);
  CHECK(arg_of([&] { consr::segmented_count(consr::make_view(labels.data(), 2), ov,
                                            consr::make_view(cnt.data(), 2)); }) == "offsets");
  const double* null_values = nullptr;
  CHECK(arg_of([&] { consr::segmented_sum(consr::make_view(null_values, 3), ov,
                                          consr::make_view(out.data(), 2)); }) == "values");
  // A broadcast output (stride 0: both segments would write one element, a race under OpenMP).
  const auto broadcast = consr::make_strided_view(out.data(), std::array<index_t, 1>{2}, std::array<index_t, 1>{0});
  CHECK(arg_of([&] { consr::segmented_sum(vv, ov, broadcast); }) == "out");
  CHECK(arg_of([&] { consr::segmented_mean(vv, ov, broadcast); }) == "out");
  const std::vector<std::int64_t> labels3 = {1, 2, 3};
  const auto cnt_broadcast = consr::make_strided_view(cnt.data(), std::array<index_t, 1>{2}, std::array<index_t, 1>{0});
  CHECK(arg_of([&] { consr::segmented_count(consr::make_view(labels3.data(), 3), ov, cnt_broadcast); }) == "out");
  CHECK(out == std::vector<double>(3, 0.0));  // nothing written
}

TEST_CASE("segmented reductions: same bits for 1, 2 and 3 threads", "[reductions][threads]") {
#if CONSR_HAS_OPENMP
  std::mt19937_64 rng(11);
  const index_t segments = 900;
  const auto off = random_offsets<std::int32_t>(rng, segments, 150);
  const index_t n = off.back();
  REQUIRE(n >= consr::detail::segment_parallel_threshold);
  const auto values = random_values(rng, n);
  const auto weights = random_values(rng, n);
  const auto labels = random_token_labels(rng, n, 0.3);
  const auto vv = consr::make_view(values.data(), n);
  const auto ov = consr::make_view(off.data(), segments + 1);
  std::vector<double> sum[3], wsum[3], mmean[3];
  consr_test::for_thread_counts(3, [&](int k) {
    sum[k].assign(segments, 0.0);
    wsum[k].assign(segments, 0.0);
    mmean[k].assign(segments, 0.0);
    consr::segmented_sum(vv, ov, consr::make_view(sum[k].data(), segments));
    consr::segmented_weighted_sum(vv, consr::make_view(weights.data(), n), ov,
                                  consr::make_view(wsum[k].data(), segments));
    consr::segmented_masked_mean(vv, consr::make_view(labels.data(), n), ov,
                                 consr::make_view(mmean[k].data(), segments), -100);
  });
  for (int k = 1; k < 3; ++k) {
    for (index_t s = 0; s < segments; ++s) {
      CHECK(consr_test::same_bits(sum[0][s], sum[k][s]));
      CHECK(consr_test::same_bits(wsum[0][s], wsum[k][s]));
      CHECK(consr_test::same_bits(mmean[0][s], mmean[k][s]));
    }
  }
#else
  WARN("built without OpenMP: nothing to compare");
#endif
}
