// The Eigen adapter: every algorithm gives results identical to the raw-memory
// (std::vector / pointer) path, for row- and column-major storage, Map and Ref;
// a layout an algorithm cannot take is rejected with a message naming the argument.
#include <catch2/catch.hpp>

#include <consr/adapters/eigen.hpp>
#include <consr/adapters/span.hpp>
#include <consr/consr.hpp>

#include <random>
#include <vector>

namespace {
using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using col_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

std::vector<float> random_values(std::size_t n, unsigned seed, float scale = 3.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
}  // namespace

TEST_CASE("Eigen: token log-probs from row-major Matrix, Map and Ref equal the raw path", "[adapter][eigen]") {
  const int N = 5, V = 37;
  auto raw = random_values(N * V, 1);
  std::vector<std::int64_t> labels = {0, 36, 5, -100, 17};
  std::vector<float> logp_raw(N), lse_raw(N);
  consr::token_logprobs(consr::make_view(raw.data(), N, V), consr::make_view(labels.data(), N),
                        consr::make_view(logp_raw.data(), N), consr::make_view(lse_raw.data(), N));

  row_major m = Eigen::Map<row_major>(raw.data(), N, V);
  Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1> lab = Eigen::Map<Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>>(labels.data(), N);
  Eigen::VectorXf logp(N), lse(N);
  consr::token_logprobs(consr::as_view<2>(std::as_const(m), "logits"), consr::as_view<1>(std::as_const(lab), "labels"),
                        consr::as_view<1>(logp, "token_logp"), consr::as_view<1>(lse, "lse"));
  for (int i = 0; i < N; ++i) {
    REQUIRE(logp(i) == logp_raw[i]);
    REQUIRE(lse(i) == lse_raw[i]);
  }
  // Map over the same memory and a Ref to a block of a wider matrix (row stride > V).
  Eigen::Map<const row_major> map(raw.data(), N, V);
  row_major wide = row_major::Zero(N, V + 3);
  wide.leftCols(V) = m;
  Eigen::Ref<const row_major, 0, Eigen::OuterStride<>> ref = wide.leftCols(V);
  for (auto view : {consr::as_view<2>(map, "logits"), consr::as_view<2>(ref, "logits")}) {
    Eigen::VectorXf out(N);
    consr::token_logprobs(view, consr::as_view<1>(std::as_const(lab), "labels"), consr::as_view<1>(out, "token_logp"));
    for (int i = 0; i < N; ++i) REQUIRE(out(i) == logp_raw[i]);
  }
}

TEST_CASE("Eigen: column-major logits are rejected naming the argument", "[adapter][eigen][errors]") {
  col_major m = col_major::Random(4, 9);
  std::vector<std::int64_t> labels = {0, 1, 2, 3};
  std::vector<float> logp(4);
  REQUIRE_THROWS_WITH(consr::token_logprobs(consr::as_view<2>(std::as_const(m), "logits"),
                                            consr::make_view(static_cast<const std::int64_t*>(labels.data()), 4),
                                            consr::make_view(logp.data(), 4)),
                      Catch::Contains("'logits'") && Catch::Contains("contiguous"));
}

TEST_CASE("Eigen: noise is the same per logical element for row- and column-major images", "[adapter][eigen]") {
  const int H = 13, W = 21;
  auto raw = random_values(H * W, 2, 1.0f);
  row_major rm = Eigen::Map<row_major>(raw.data(), H, W);
  col_major cm = rm;
  row_major rm_out(H, W);
  col_major cm_out(H, W);
  const consr::rng_key key{42, 7};
  consr::add_diffusion_noise<float, 2>(consr::as_view<2>(std::as_const(rm)), consr::as_view<2>(rm_out), key);
  consr::add_diffusion_noise<float, 2>(consr::as_view<2>(std::as_const(cm)), consr::as_view<2>(cm_out), key);
  std::vector<float> raw_out(H * W);
  consr::add_diffusion_noise<float, 2>(consr::make_view<consr::host_space>(static_cast<const float*>(raw.data()), H, W),
                                       consr::make_view(raw_out.data(), H, W), key);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      REQUIRE(rm_out(y, x) == raw_out[y * W + x]);
      REQUIRE(cm_out(y, x) == raw_out[y * W + x]);
    }
}

TEST_CASE("Eigen: rewards, pairs and DPO from Eigen vectors equal the raw path", "[adapter][eigen]") {
  // 2 prompts x 3 candidates, 2 tokens each.
  std::vector<double> lp = {-1.0, -0.5, -2.0, -0.1, -0.3, -0.3, -0.7, -0.2, -1.5, -1.0, -0.05, -0.4};
  std::vector<double> lc = {-1.5, -0.9, -2.1, -0.8, -0.3, -0.5, -0.9, -0.2, -1.9, -1.1, -0.6, -0.4};
  std::vector<double> ls = {-0.8, -0.4, -2.2, -0.1, -0.1, -0.2, -0.7, -0.1, -1.2, -0.9, -0.05, -0.2};
  std::vector<std::int64_t> off = {0, 2, 4, 6, 8, 10, 12};
  Eigen::VectorXd elp = Eigen::Map<Eigen::VectorXd>(lp.data(), 12), elc = Eigen::Map<Eigen::VectorXd>(lc.data(), 12),
                  els = Eigen::Map<Eigen::VectorXd>(ls.data(), 12);
  Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1> eoff = Eigen::Map<Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>>(off.data(), 7);
  Eigen::VectorXd r_eigen(6);
  std::vector<double> r_raw(6);
  consr::reward_outputs<double> oe{};
  oe.reward = consr::as_view<1>(r_eigen);
  consr::contrastive_reward(consr::as_view<1>(std::as_const(elp)), consr::as_view<1>(std::as_const(elc)),
                            consr::as_view<1>(std::as_const(els)), consr::as_view<1>(std::as_const(eoff)), oe);
  consr::reward_outputs<double> orw{};
  orw.reward = consr::make_view(r_raw.data(), 6);
  consr::contrastive_reward(consr::make_view(lp.data(), 12), consr::make_view(lc.data(), 12),
                            consr::make_view(ls.data(), 12), consr::make_view(off.data(), 7), orw);
  for (int i = 0; i < 6; ++i) REQUIRE(r_eigen(i) == r_raw[i]);

  Eigen::Matrix<std::int32_t, 3, 1> groups(0, 3, 6);
  std::vector<consr::preference_pair> pe, pr;
  consr::select_pairs(consr::as_view<1>(std::as_const(r_eigen)), consr::as_view(std::as_const(groups)), pe);
  std::vector<std::int32_t> graw = {0, 3, 6};
  consr::select_pairs(consr::make_view(r_raw.data(), 6), consr::make_view(graw.data(), 3), pr);
  REQUIRE(pe.size() == pr.size());
  for (std::size_t i = 0; i < pe.size(); ++i) {
    REQUIRE(pe[i].chosen == pr[i].chosen);
    REQUIRE(pe[i].rejected == pr[i].rejected);
  }
}
