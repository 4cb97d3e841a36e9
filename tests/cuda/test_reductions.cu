// consr/cuda/reductions.cuh against its host twin consr/reductions.hpp on the
// same inputs: random segments (with empty ones), edge sizes (no segment, all
// empty, one element, a large N), strided views, and error reporting.
//
// Tolerances: both sides accumulate in double; the device sums in CUB's tree
// order, the host sequentially, so the double results differ by at most
// ~len·2^-53·Σ|x|; after rounding to the output type R they may differ by one
// ulp of R. The check is |dev − host| <= eps_R·|host| + 4·len·2^-53·Σ|x| (/len
// for means); counts are exact.
#include "cuda_test_util.cuh"

#include <consr/cuda/reductions.cuh>
#include <consr/reductions.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using consr::index_t;
using consr_test::device_buffer;
using consr_test::device_error_info;
using consr_test::epsilon_of;
using consr_test::random_offsets;
using consr_test::random_token_labels;
using consr_test::random_values;
using consr_test::run_two_phase;

namespace {

/// Checks device results against host results of type R, segment by segment.
template <class R, class V, class O>
void check_close(const std::vector<R>& dev, const std::vector<R>& host, const std::vector<V>& values,
                 const std::vector<O>& off, bool is_mean, const char* what) {
  REQUIRE(dev.size() == host.size());
  for (std::size_t s = 0; s + 1 < off.size(); ++s) {
    const double h = consr::to_accum<double>(host[s]);
    const double d = consr::to_accum<double>(dev[s]);
    INFO(what << ": segment " << s << " of " << off.size() - 1 << ", length " << off[s + 1] - off[s]);
    if (std::isnan(h)) {
      CHECK(std::isnan(d));
      continue;
    }
    double abs_sum = 0.0;
    for (O i = off[s]; i < off[s + 1]; ++i) abs_sum += std::fabs(consr::to_accum<double>(values[i]));
    const double len = static_cast<double>(off[s + 1] - off[s]);
    double tol = epsilon_of<R>() * std::fabs(h) + 4.0 * len * 0x1p-53 * abs_sum / (is_mean && len > 0 ? len : 1.0);
    CHECK(std::fabs(d - h) <= tol);
  }
}

/// All five reductions on one random problem, device against host.
template <class V, class O, class R>
void check_all_reductions(std::mt19937_64& rng, index_t segments, index_t max_len, double empty_prob) {
  const std::vector<O> off = random_offsets<O>(rng, segments, max_len, empty_prob);
  const index_t n = static_cast<index_t>(off.back());
  const std::vector<V> values = random_values<V>(rng, n);
  const std::vector<V> weights = random_values<V>(rng, n);
  const std::vector<std::int64_t> labels = random_token_labels(rng, n, 0.3);
  const auto hv = [](auto& v) { return consr::make_view(v.data(), static_cast<index_t>(v.size())); };

  device_buffer<V> d_values(values), d_weights(weights);
  device_buffer<O> d_off(off);
  device_buffer<std::int64_t> d_labels(labels);
  device_buffer<R> d_out(static_cast<std::size_t>(segments));
  device_buffer<std::int64_t> d_count(static_cast<std::size_t>(segments));
  device_error_info err;
  std::vector<R> host(static_cast<std::size_t>(segments));
  INFO("segments " << segments << ", packed " << n);

  // Every output starts as NaN bytes (0xFF) before each launch, so a segment the device skips
  // (an empty one, say) cannot pass on the zeros of fresh or reused device memory.
  consr::segmented_sum(hv(values), hv(off), hv(host));
  d_out.fill_bytes(0xFF);
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::segmented_sum(t, b, d_values.cview(), d_off.cview(), d_out.view(), nullptr, err.get());
  }));
  check_close(d_out.download(), host, values, off, false, "sum");

  consr::segmented_mean(hv(values), hv(off), hv(host));
  d_out.fill_bytes(0xFF);
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::segmented_mean(t, b, d_values.cview(), d_off.cview(), d_out.view(), nullptr, err.get());
  }));
  check_close(d_out.download(), host, values, off, true, "mean");

  // The weighted sum's tolerance scales with Σ|w·x|.
  std::vector<double> products(values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    products[i] = consr::to_accum<double>(values[i]) * consr::to_accum<double>(weights[i]);
  consr::segmented_weighted_sum(hv(values), hv(weights), hv(off), hv(host));
  d_out.fill_bytes(0xFF);
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::segmented_weighted_sum(t, b, d_values.cview(), d_weights.cview(), d_off.cview(), d_out.view(),
                                               nullptr, err.get());
  }));
  check_close(d_out.download(), host, products, off, false, "weighted sum");

  std::vector<std::int64_t> host_count(static_cast<std::size_t>(segments));
  consr::segmented_count(hv(labels), hv(off), hv(host_count));
  d_count.fill_bytes(0xFF);
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::segmented_count(t, b, d_labels.cview(), d_off.cview(), d_count.view(), -100, nullptr,
                                        err.get());
  }));
  CHECK(d_count.download() == host_count);

  consr::segmented_masked_mean(hv(values), hv(labels), hv(off), hv(host));
  d_out.fill_bytes(0xFF);
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
    return consr::cuda::segmented_masked_mean(t, b, d_values.cview(), d_labels.cview(), d_off.cview(), d_out.view(),
                                              -100, nullptr, err.get());
  }));
  check_close(d_out.download(), host, values, off, true, "masked mean");

  const consr::cuda::error_info e = err.read();
  CHECK(e.code == 0);
  CHECK(consr::cuda::error_index(e) == -1);
}

}  // namespace

TEST_CASE("cuda segmented reductions match the host twin on random segments", "[cuda][reductions]") {
  std::mt19937_64 rng(20240611);
  for (int rep = 0; rep < 3; ++rep) {
    check_all_reductions<float, std::int32_t, float>(rng, 257, 300, 0.2);
    check_all_reductions<double, std::int64_t, double>(rng, 101, 2000, 0.2);
    check_all_reductions<consr::bfloat16, std::int64_t, float>(rng, 64, 500, 0.3);
  }
  // Half-precision output from float input.
  check_all_reductions<float, std::int32_t, consr::float16>(rng, 50, 100, 0.1);
}

TEST_CASE("cuda segmented reductions: edge sizes", "[cuda][reductions]") {
  std::mt19937_64 rng(7);
  SECTION("no segment") { check_all_reductions<float, std::int32_t, float>(rng, 0, 10, 0.0); }
  SECTION("every segment empty") { check_all_reductions<float, std::int32_t, float>(rng, 40, 0, 1.0); }
  SECTION("one segment of one element") { check_all_reductions<float, std::int64_t, float>(rng, 1, 1, 0.0); }
  SECTION("one long segment") { check_all_reductions<float, std::int64_t, double>(rng, 1, 1 << 21, 0.0); }
  SECTION("large N in many segments") { check_all_reductions<float, std::int32_t, float>(rng, 20000, 400, 0.1); }
}

TEST_CASE("cuda segmented reductions take strided views", "[cuda][reductions]") {
  // values and offsets every other element, out every third.
  const std::vector<std::int32_t> off_dense = {0, 3, 3, 7, 8};
  std::vector<std::int32_t> off_strided;
  for (auto o : off_dense) {
    off_strided.push_back(o);
    off_strided.push_back(-12345);  // never read
  }
  std::vector<float> values_strided;
  std::vector<float> values_dense;
  for (int i = 0; i < 8; ++i) {
    values_dense.push_back(0.5f * static_cast<float>(i) - 1.0f);
    values_strided.push_back(values_dense.back());
    values_strided.push_back(std::numeric_limits<float>::quiet_NaN());  // never read
  }
  std::vector<double> expected(4);
  consr::segmented_sum(consr::make_view(values_dense.data(), 8), consr::make_view(off_dense.data(), 5),
                       consr::make_view(expected.data(), 4));
  device_buffer<float> d_values(values_strided);
  device_buffer<std::int32_t> d_off(off_strided);
  device_buffer<double> d_out(12);
  d_out.fill_bytes(0);
  const auto vv = consr::make_strided_view<consr::device_space>(d_values.data(), std::array<index_t, 1>{8},
                                                                std::array<index_t, 1>{2});
  const auto ov = consr::make_strided_view<consr::device_space>(d_off.data(), std::array<index_t, 1>{5},
                                                                std::array<index_t, 1>{2});
  const auto out = consr::make_strided_view<consr::device_space>(d_out.data(), std::array<index_t, 1>{4},
                                                                 std::array<index_t, 1>{3});
  CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) { return consr::cuda::segmented_sum(t, b, vv, ov, out); }));
  const std::vector<double> got = d_out.download();
  for (int s = 0; s < 4; ++s) {
    CHECK(got[3 * s] == expected[s]);  // short sums of exact halves: exact on both sides
    CHECK(got[3 * s + 1] == 0.0);
    CHECK(got[3 * s + 2] == 0.0);
  }
}

TEST_CASE("cuda segmented reductions reject bad shapes on the host, launching nothing", "[cuda][reductions]") {
  const std::vector<std::int64_t> off = {0, 2, 5};
  device_buffer<float> d_values(std::vector<float>(5, 1.0f));
  device_buffer<std::int64_t> d_off(off);
  device_buffer<float> d_out(3);
  d_out.fill_bytes(0x7F);
  const std::vector<float> sentinel = d_out.download();
  std::size_t bytes = 0;

  SECTION("out has the wrong size") {
    const auto out = consr::make_view<consr::device_space>(d_out.data(), 3);
    for (void* temp : {static_cast<void*>(nullptr), static_cast<void*>(d_out.data())}) {
      bytes = 1 << 20;
      CHECK(consr::cuda::segmented_sum(temp, bytes, d_values.cview(), d_off.cview(), out) ==
            consr::status::invalid_argument);
      CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("consr::cuda::segmented_sum") &&
                                                        Catch::Contains("'out'") && Catch::Contains("must be 2"));
    }
  }
  SECTION("offsets is empty") {
    const auto no_off = consr::make_view<consr::device_space>(d_off.data(), 0);
    CHECK(consr::cuda::segmented_mean(nullptr, bytes, d_values.cview(), no_off, d_out.view()) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'offsets'"));
  }
  SECTION("weights of another length") {
    const auto out = consr::make_view<consr::device_space>(d_out.data(), 2);
    const auto w = consr::make_view<consr::device_space>(d_values.data(), 4);
    CHECK(consr::cuda::segmented_weighted_sum(nullptr, bytes, d_values.cview(), w, d_off.cview(), out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'weights'"));
  }
  SECTION("a broadcast output (stride 0: the segments would race on one element)") {
    const auto out = consr::make_strided_view<consr::device_space>(d_out.data(), std::array<index_t, 1>{2},
                                                                   std::array<index_t, 1>{0});
    CHECK(consr::cuda::segmented_sum(nullptr, bytes, d_values.cview(), d_off.cview(), out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out'") && Catch::Contains("stride 0"));
  }
  SECTION("a negative extent") {
    const auto out = consr::make_view<consr::device_space>(d_out.data(), 2);
    device_buffer<std::int64_t> d_labels(std::vector<std::int64_t>(5, 1));
    const auto bad = consr::make_strided_view<consr::device_space>(d_values.data(), std::array<index_t, 1>{-1},
                                                                   std::array<index_t, 1>{1});
    CHECK(consr::cuda::segmented_masked_mean(nullptr, bytes, bad, d_labels.cview(), d_off.cview(), out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'values'") && Catch::Contains("negative"));
  }
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  const std::vector<float> after = d_out.download();
  for (std::size_t i = 0; i < after.size(); ++i) CHECK(consr_test::same_bits(after[i], sentinel[i]));
}

TEST_CASE("cuda segmented reductions report bad offsets in error_info, reading nothing out of bounds",
          "[cuda][reductions]") {
  struct bad_case {
    std::vector<std::int32_t> offsets;
    index_t packed;
    long long first_bad_segment;
  };
  const std::vector<bad_case> cases = {
      {{0, 4, 2, 6, 8}, 8, 1},           // decreasing at segment 1
      {{1, 4, 6, 8}, 8, 0},              // does not start at 0
      {{0, 4, 6, 7}, 8, 2},              // ends before the packed size
      {{0, 4, 6, 1000000}, 8, 2},        // ends far beyond it (clamped, never read)
      {{0, -5, 6, 8}, 8, 0},             // negative
      {{3}, 0, 0},                       // no segment, but offsets[0] != 0
      {{0, 2, 2, 9, 3, 8}, 8, 2},        // two bad segments: the first is reported
  };
  for (const bad_case& c : cases) {
    INFO("offsets of size " << c.offsets.size() << ", first bad segment " << c.first_bad_segment);
    device_buffer<float> d_values(std::vector<float>(static_cast<std::size_t>(c.packed), 1.0f));
    device_buffer<std::int32_t> d_off(c.offsets);
    device_buffer<float> d_out(c.offsets.size() - 1);
    device_error_info err;
    CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
      return consr::cuda::segmented_mean(t, b, d_values.cview(), d_off.cview(), d_out.view(), nullptr, err.get());
    }));
    const consr::cuda::error_info e = err.read();
    CHECK(e.code == static_cast<int>(consr::status::invalid_argument));
    CHECK(consr::cuda::error_index(e) == c.first_bad_segment);
  }
}
