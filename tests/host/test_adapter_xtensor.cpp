// The xtensor adapter: xtensor, xarray (run-time rank) and xt::adapt give
// results identical to the raw-memory path; wrong rank and column-major logits
// are rejected naming the argument.
#include <catch2/catch.hpp>

#include <consr/adapters/xtensor.hpp>
#include <consr/consr.hpp>

#include <random>
#include <vector>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

namespace {
std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
}  // namespace

TEST_CASE("xtensor: token log-probs from xtensor, xarray and adapt equal the raw path", "[adapter][xtensor]") {
  const std::size_t N = 6, V = 50;
  auto raw = random_values(N * V, 3);
  std::vector<std::int64_t> labels = {1, 49, -100, 0, 25, 3};
  std::vector<float> logp_raw(N);
  consr::token_logprobs(consr::make_view(raw.data(), N, V), consr::make_view(labels.data(), N),
                        consr::make_view(logp_raw.data(), N));

  xt::xtensor<float, 2> t = xt::adapt(raw, std::array<std::size_t, 2>{N, V});
  xt::xarray<float> a = t;
  auto ad = xt::adapt(raw.data(), N * V, xt::no_ownership(), std::array<std::size_t, 2>{N, V});
  xt::xtensor<std::int64_t, 1> lab = xt::adapt(labels, std::array<std::size_t, 1>{N});
  xt::xtensor<float, 1> out = xt::zeros<float>({N});
  consr::token_logprobs(consr::as_view<2>(std::as_const(t), "logits"), consr::as_view<1>(std::as_const(lab), "labels"),
                        consr::as_view<1>(out, "token_logp"));
  for (std::size_t i = 0; i < N; ++i) REQUIRE(out(i) == logp_raw[i]);
  out.fill(0.0f);
  consr::token_logprobs(consr::as_view<2>(std::as_const(a), "logits"), consr::as_view<1>(std::as_const(lab), "labels"),
                        consr::as_view<1>(out, "token_logp"));
  for (std::size_t i = 0; i < N; ++i) REQUIRE(out(i) == logp_raw[i]);
  out.fill(0.0f);
  consr::token_logprobs(consr::as_view<2>(ad, "logits"), consr::as_view<1>(std::as_const(lab), "labels"),
                        consr::as_view<1>(out, "token_logp"));
  for (std::size_t i = 0; i < N; ++i) REQUIRE(out(i) == logp_raw[i]);
}

TEST_CASE("xtensor: wrong rank of an xarray and column-major logits are rejected", "[adapter][xtensor][errors]") {
  xt::xarray<float> a = xt::zeros<float>({2, 3, 4});
  REQUIRE_THROWS_WITH(consr::as_view<2>(a, "logits"), Catch::Contains("'logits'") && Catch::Contains("rank 3"));
  xt::xtensor<float, 2, xt::layout_type::column_major> cm = xt::zeros<float>({3, 4});
  std::vector<std::int64_t> labels = {0, 1, 2};
  std::vector<float> logp(3);
  REQUIRE_THROWS_WITH(consr::token_logprobs(consr::as_view<2>(std::as_const(cm), "logits"),
                                            consr::make_view(static_cast<const std::int64_t*>(labels.data()), 3),
                                            consr::make_view(logp.data(), 3)),
                      Catch::Contains("'logits'"));
}

TEST_CASE("xtensor: noise on a 4-D batch equals the raw path; column-major agrees per element", "[adapter][xtensor]") {
  const std::size_t B = 2, C = 3, H = 5, W = 7;
  auto raw = random_values(B * C * H * W, 4);
  std::vector<float> raw_out(raw.size());
  const consr::rng_key key{9, 1};
  consr::add_diffusion_noise<float, 4>(consr::make_view<consr::host_space>(static_cast<const float*>(raw.data()), B, C, H, W),
                                       consr::make_view(raw_out.data(), B, C, H, W), key);
  xt::xtensor<float, 4> t = xt::adapt(raw, std::array<std::size_t, 4>{B, C, H, W});
  xt::xtensor<float, 4, xt::layout_type::column_major> cm = t;
  xt::xtensor<float, 4> t_out = xt::zeros<float>({B, C, H, W});
  xt::xtensor<float, 4, xt::layout_type::column_major> cm_out = xt::zeros<float>({B, C, H, W});
  consr::add_diffusion_noise<float, 4>(consr::as_view(std::as_const(t)), consr::as_view(t_out), key);
  consr::add_diffusion_noise<float, 4>(consr::as_view(std::as_const(cm)), consr::as_view(cm_out), key);
  std::size_t i = 0;
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t y = 0; y < H; ++y)
        for (std::size_t x = 0; x < W; ++x, ++i) {
          REQUIRE(t_out(b, c, y, x) == raw_out[i]);
          REQUIRE(cm_out(b, c, y, x) == raw_out[i]);
        }
}
