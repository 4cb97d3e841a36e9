// Tests for consr/corruption.hpp: the noise schedules (spec §3 check values and
// independent long-double formulas), add_diffusion_noise (formula, statistics,
// thread / chunk / layout invariance, dtypes, errors), and the Table-7
// corruptions (patch mask, mixup, random resized crop).
#include <catch2/catch.hpp>

#include <consr/corruption.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#if defined(CONSR_TEST_REQUIRE_AVX512)  // host_test_corruption_avx512 (test_util.hpp skips it without AVX-512)
static_assert(CONSR_PHILOX_X86_SIMD, "host_test_corruption_avx512 must compile the vectorized Philox words");
#endif

using consr::index_t;
using consr::noise_schedule;
using consr::rng_key;

namespace {

// Runs `f`, which must throw consr::error naming `argument`.
template <class F>
void require_error_naming(F&& f, const std::string& argument) {
  try {
    f();
  } catch (const consr::error& e) {
    INFO("message: " << e.what());
    CHECK(e.argument() == argument);
    CHECK(std::string(e.what()).find("'" + argument + "'") != std::string::npos);
    return;
  }
  FAIL("expected consr::error naming '" << argument << "'");
}

std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// The schedules written out from their definitions, in long double.
std::vector<long double> reference_betas(noise_schedule s, int n) {
  std::vector<long double> beta(static_cast<std::size_t>(n));
  const long double pi = 3.141592653589793238462643383279502884L;
  for (int t = 0; t < n; ++t) {
    const long double frac = n > 1 ? static_cast<long double>(t) / (n - 1) : 0.0L;
    long double b = 0;
    if (s == noise_schedule::sigmoid) {
      b = 1.0L / (1.0L + std::exp(-(-6.0L + 12.0L * frac))) * (5e-3L - 1e-5L) + 1e-5L;
    } else if (s == noise_schedule::linear) {
      b = 1e-4L + (0.02L - 1e-4L) * frac;
    } else if (s == noise_schedule::scaled_linear) {
      const long double r = std::sqrt(1e-4L) + (std::sqrt(0.02L) - std::sqrt(1e-4L)) * frac;
      b = r * r;
    } else {
      auto f = [&](long double tau) {
        const long double c = std::cos((tau + 0.008L) / 1.008L * pi / 2);
        return c * c;
      };
      b = std::min(1.0L - f(static_cast<long double>(t + 1) / n) / f(static_cast<long double>(t) / n), 0.999L);
    }
    beta[static_cast<std::size_t>(t)] = b;
  }
  return beta;
}

// ᾱ_step of the 1000-step schedule `s`, in long double.
long double reference_alpha_bar(int step, noise_schedule s = noise_schedule::sigmoid) {
  const auto beta = reference_betas(s, 1000);
  long double ab = 1;
  for (int t = 0; t <= step; ++t) ab *= 1 - beta[static_cast<std::size_t>(t)];
  return ab;
}

// Reference x_t for element i with image value x.
double noised_reference(double x, rng_key key, std::uint64_t i, long double alpha_bar) {
  return static_cast<double>(std::sqrt(alpha_bar) * x +
                             std::sqrt(1 - alpha_bar) * static_cast<long double>(consr::normal_at(key, i)));
}

}  // namespace

// =================================================================================================
// Schedules
// =================================================================================================

TEST_CASE("default sigmoid schedule matches the spec's check values", "[corruption][schedule]") {
  const auto s = consr::diffusion_schedule::make();
  REQUIRE(s.num_steps() == 1000);
  REQUIRE(s.schedule() == noise_schedule::sigmoid);
  const std::array<std::tuple<int, double, double>, 4> table = {{{0, 0.999989, 0.004726},
                                                                 {500, 0.863017, 0.505175},
                                                                 {800, 0.467014, 0.884250},
                                                                 {999, 0.285042, 0.958515}}};
  for (const auto& [t, a, b] : table) {
    INFO("t = " << t);
    CHECK(std::fabs(s.sqrt_alpha_bar(t) - a) <= 1e-6);
    CHECK(std::fabs(s.sqrt_one_minus_alpha_bar(t) - b) <= 1e-6);
  }
}

TEST_CASE("every schedule equals its formula evaluated in long double", "[corruption][schedule]") {
  for (noise_schedule kind :
       {noise_schedule::sigmoid, noise_schedule::linear, noise_schedule::scaled_linear, noise_schedule::cosine}) {
    for (int n : {1, 2, 10, 1000}) {
      const auto s = consr::diffusion_schedule::make(kind, n);
      const auto beta = reference_betas(kind, n);
      long double ab = 1;
      for (int t = 0; t < n; ++t) {
        ab *= 1 - beta[static_cast<std::size_t>(t)];
        INFO(consr::to_string(kind) << " T = " << n << " t = " << t);
        // The reference's 1 − f(τ1)/f(τ0) cancels to β ≈ 4e-5 at small t: ~3e-15 relative in long double.
        const long double rel = kind == noise_schedule::cosine ? 1e-13L : 1e-15L;
        CHECK(std::fabs(s.beta(t) - beta[static_cast<std::size_t>(t)]) <= rel * beta[static_cast<std::size_t>(t)]);
        CHECK(std::fabs(s.alpha_bar(t) - ab) <= 1e-13L * ab + 1e-300L);
        CHECK(std::fabs(s.sqrt_alpha_bar(t) - std::sqrt(ab)) <= 1e-13L);
        // 1 − ᾱ keeps its relative precision even where ᾱ ≈ 1.
        CHECK(std::fabs(s.sqrt_one_minus_alpha_bar(t) - std::sqrt(1 - ab)) <= 1e-12L * std::sqrt(1 - ab));
      }
    }
  }
  // Spot values from the definitions.
  CHECK(consr::diffusion_schedule::make(noise_schedule::linear).beta(999) == Approx(0.02).epsilon(1e-14));
  CHECK(consr::diffusion_schedule::make(noise_schedule::scaled_linear).beta(0) == Approx(1e-4).epsilon(1e-13));
  CHECK(consr::diffusion_schedule::make(noise_schedule::cosine).beta(999) == 0.999);  // the cap
}

TEST_CASE("schedule and step validation name the argument", "[corruption][schedule][errors]") {
  require_error_naming([] { consr::diffusion_schedule::make(noise_schedule::sigmoid, 0); }, "num_steps");
  require_error_naming([] { consr::diffusion_schedule::make(static_cast<noise_schedule>(17), 10); }, "schedule");
  const auto s = consr::diffusion_schedule::make(noise_schedule::linear, 10);
  require_error_naming([&] { (void)s.beta(10); }, "t");
  require_error_naming([&] { (void)s.alpha_bar(-1); }, "t");
  consr::diffusion_noise_options o;
  o.step = 1000;
  require_error_naming([&] { consr::diffusion_noise_coefficients(o); }, "step");
  o.step = -1;
  require_error_naming([&] { consr::diffusion_noise_coefficients(o); }, "step");
  o.step = 0;
  o.num_steps = 0;
  require_error_naming([&] { consr::diffusion_noise_coefficients(o); }, "num_steps");
  const auto c = consr::diffusion_noise_coefficients({500});
  const auto d = consr::diffusion_schedule::make();
  CHECK(c.sqrt_alpha_bar == d.sqrt_alpha_bar(500));
  CHECK(c.sqrt_one_minus_alpha_bar == d.sqrt_one_minus_alpha_bar(500));
}

// =================================================================================================
// Diffusion noise
// =================================================================================================

TEST_CASE("add_diffusion_noise computes sqrt(ab)·x + sqrt(1−ab)·normal_at(key, i)", "[corruption][noise]") {
  const index_t B = 2, C = 3, H = 17, W = 19;
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 1);
  const rng_key key{2024, 11};
  for (auto [kind, step] : {std::pair{noise_schedule::sigmoid, 800}, std::pair{noise_schedule::sigmoid, 0},
                            std::pair{noise_schedule::cosine, 500}, std::pair{noise_schedule::linear, 999}}) {
    std::vector<float> out(n);
    consr::diffusion_noise_options o;
    o.step = step;
    o.schedule = kind;
    consr::add_diffusion_noise<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W),
                                         key, o);
    const long double ab = reference_alpha_bar(step, kind);
    for (std::size_t i = 0; i < n; ++i) {
      const long double ref =
          std::sqrt(ab) * x[i] + std::sqrt(1 - ab) * static_cast<long double>(consr::normal_at(key, i));
      INFO(consr::to_string(kind) << " step " << step << " element " << i);
      // fp32 arithmetic: coefficients, two products and a sum, each within half an ulp.
      REQUIRE(std::fabs(out[i] - ref) <= 4e-7L * (std::fabs(std::sqrt(ab) * x[i]) + std::fabs(ref) + 1e-3L));
    }
  }
}

TEST_CASE("diffusion noise of a zero image has N(0, 1 − ab) statistics", "[corruption][noise][statistics]") {
  const std::size_t n = 1000000;
  std::vector<float> img(n, 0.0f);
  consr::add_diffusion_noise<float, 1>(consr::make_view(img.data(), static_cast<index_t>(n)), rng_key{5, 0});
  const double b = consr::diffusion_noise_coefficients().sqrt_one_minus_alpha_bar;
  double s1 = 0, s2 = 0;
  std::size_t within1 = 0, within2 = 0;
  for (float v : img) {
    const double z = v / b;
    s1 += z, s2 += z * z;
    within1 += std::fabs(z) < 1, within2 += std::fabs(z) < 2;
  }
  const double nn = static_cast<double>(n);
  CHECK(std::fabs(s1 / nn) < 5 / std::sqrt(nn));
  CHECK(std::fabs(s2 / nn - 1) < 5 * std::sqrt(2 / nn));
  CHECK(std::fabs(within1 / nn - 0.6826894921370859) < 5 * std::sqrt(0.6827 * 0.3173 / nn));
  CHECK(std::fabs(within2 / nn - 0.9544997361036416) < 5 * std::sqrt(0.9545 * 0.0455 / nn));
}

TEST_CASE("diffusion noise depends on (seed, offset) only, not on threads", "[corruption][noise][determinism]") {
  const index_t C = 3, H = 101, W = 103;  // 31209 elements: 16 tiles, the last one partial
  const std::size_t n = static_cast<std::size_t>(C * H * W);
  const auto x = random_floats(n, 2);
  auto run = [&](rng_key key) {
    std::vector<float> out(n);
    consr::add_diffusion_noise<float, 3>(consr::make_view(x.data(), C, H, W), consr::make_view(out.data(), C, H, W), key);
    return out;
  };
  const auto a = run({9, 1});
  CHECK(a == run({9, 1}));
  const auto other_seed = run({10, 1}), other_offset = run({9, 2});
  std::size_t diff_seed = 0, diff_offset = 0;
  for (std::size_t i = 0; i < n; ++i) diff_seed += a[i] != other_seed[i], diff_offset += a[i] != other_offset[i];
  CHECK(diff_seed == n);
  CHECK(diff_offset == n);
#if CONSR_HAS_OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run({9, 1});
  omp_set_num_threads(2);
  const auto two = run({9, 1});
  omp_set_num_threads(3);
  const auto three = run({9, 1});
  omp_set_num_threads(saved);
  CHECK(one == a);
  CHECK(two == a);
  CHECK(three == a);
#else
  WARN("built without OpenMP: the thread-count invariance is not exercised");
#endif
}

TEST_CASE("noising a tensor in chunks with element_offset equals noising it whole", "[corruption][noise][determinism]") {
  const index_t B = 5, C = 3, H = 31, W = 29;
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 3);
  const rng_key key{77, 4};
  std::vector<float> whole(n);
  consr::add_diffusion_noise<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(whole.data(), B, C, H, W),
                                       key);

  // Image by image, as rank-3 views with the offset of each image.
  std::vector<float> by_image(n);
  for (index_t b = 0; b < B; ++b) {
    const index_t per = C * H * W;
    consr::diffusion_noise_options o;
    o.element_offset = static_cast<std::uint64_t>(b * per);
    consr::add_diffusion_noise<float, 3>(consr::make_view(x.data() + b * per, C, H, W),
                                         consr::make_view(by_image.data() + b * per, C, H, W), key, o);
  }
  CHECK(by_image == whole);

  // Arbitrary flat ranges (boundaries inside Philox blocks and tiles), as rank-1 views.
  std::vector<float> by_range(n);
  const std::vector<std::size_t> cuts = {0, 1, 2, 7, 2047, 2049, 4100, 6001, 9998, n};
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    consr::diffusion_noise_options o;
    o.element_offset = cuts[k];
    const index_t len = static_cast<index_t>(cuts[k + 1] - cuts[k]);
    consr::add_diffusion_noise<float, 1>(consr::make_view(x.data() + cuts[k], len),
                                         consr::make_view(by_range.data() + cuts[k], len), key, o);
  }
  CHECK(by_range == whole);
}

TEST_CASE("column-major and strided views get the noise of their logical elements", "[corruption][noise][layout]") {
  const index_t C = 3, H = 40, W = 37;
  const std::size_t n = static_cast<std::size_t>(C * H * W);
  const auto x = random_floats(n, 4);
  const rng_key key{31337, 0};
  std::vector<float> expected(n);
  consr::add_diffusion_noise<float, 3>(consr::make_view(x.data(), C, H, W), consr::make_view(expected.data(), C, H, W),
                                       key);

  // The same logical tensor stored fully reversed-order (column-major: strides 1, C, C·H).
  std::vector<float> xc(n), outc(n, -99.0f);
  const std::array<index_t, 3> ext{C, H, W}, col_major{1, C, C * H};
  for (index_t c = 0; c < C; ++c)
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < W; ++w)
        xc[static_cast<std::size_t>(c + h * C + w * C * H)] = x[static_cast<std::size_t>((c * H + h) * W + w)];
  consr::add_diffusion_noise<float, 3>(consr::make_strided_view(xc.data(), ext, col_major),
                                       consr::make_strided_view(outc.data(), ext, col_major), key);
  // Input row-major, output a strided window (every other element of a wider buffer, negative H stride).
  std::vector<float> wide(static_cast<std::size_t>(C * H * W * 2), -99.0f);
  const std::array<index_t, 3> strided{H * W * 2, -W * 2, 2};
  float* origin = wide.data() + (H - 1) * W * 2;  // row h lives at (H − 1 − h)
  consr::add_diffusion_noise<float, 3>(consr::make_view(x.data(), C, H, W),
                                       consr::make_strided_view(origin, ext, strided), key);
  for (index_t c = 0; c < C; ++c)
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < W; ++w) {
        const float e = expected[static_cast<std::size_t>((c * H + h) * W + w)];
        REQUIRE(outc[static_cast<std::size_t>(c + h * C + w * C * H)] == e);
        REQUIRE(origin[c * H * W * 2 - h * W * 2 + w * 2] == e);
      }
  // The gaps of the strided output are untouched.
  for (std::size_t i = 1; i < wide.size(); i += 2) REQUIRE(wide[i] == -99.0f);
}

TEST_CASE("in-place noise equals out-of-place; rank 0, empty and double views", "[corruption][noise]") {
  const auto x = random_floats(5000, 5);
  const rng_key key{1, 2};
  std::vector<float> out(5000), inplace = x;
  consr::add_diffusion_noise<float, 2>(consr::make_view(x.data(), 50, 100), consr::make_view(out.data(), 50, 100), key);
  consr::add_diffusion_noise(consr::make_view(inplace.data(), 50, 100), key);
  CHECK(inplace == out);

  float scalar = 0.25f;
  consr::add_diffusion_noise(consr::make_view(&scalar), key);
  CHECK(std::fabs(scalar - noised_reference(0.25, key, 0, reference_alpha_bar(800))) < 1e-6);

  std::vector<float> none;
  CHECK_NOTHROW(consr::add_diffusion_noise(consr::make_view(none.data(), 0, 7), key));

  std::vector<double> xd(x.begin(), x.end()), outd(xd.size());
  consr::diffusion_noise_options o;
  o.step = 500;
  consr::add_diffusion_noise<double, 1>(consr::make_view(xd.data(), 5000), consr::make_view(outd.data(), 5000), key, o);
  const long double ab500 = reference_alpha_bar(500);
  for (std::size_t i = 0; i < xd.size(); ++i) REQUIRE(std::fabs(outd[i] - noised_reference(xd[i], key, i, ab500)) < 1e-12);
}

TEST_CASE("bfloat16 and float16 images are noised in fp32 and rounded once", "[corruption][noise][dtype]") {
  const auto x = random_floats(4096, 6);
  const rng_key key{3, 3};
  std::vector<consr::bfloat16> xb(x.size()), ob(x.size());
  std::vector<consr::float16> xh(x.size()), oh(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xb[i] = consr::bfloat16(x[i]), xh[i] = consr::float16(x[i]);
  consr::add_diffusion_noise<consr::bfloat16, 2>(consr::make_view(xb.data(), 64, 64), consr::make_view(ob.data(), 64, 64),
                                                 key);
  consr::add_diffusion_noise<consr::float16, 2>(consr::make_view(xh.data(), 64, 64), consr::make_view(oh.data(), 64, 64),
                                                key);
  const long double ab = reference_alpha_bar(800);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double rb = noised_reference(static_cast<float>(xb[i]), key, i, ab);
    const double rh = noised_reference(static_cast<float>(xh[i]), key, i, ab);
    REQUIRE(std::fabs(static_cast<float>(ob[i]) - rb) <= std::fabs(rb) * 0x1p-8 + 1e-6);   // half a bf16 ulp
    REQUIRE(std::fabs(static_cast<float>(oh[i]) - rh) <= std::fabs(rh) * 0x1p-11 + 1e-6);  // half an fp16 ulp
  }
}

TEST_CASE("add_diffusion_noise rejects bad arguments, naming them", "[corruption][noise][errors]") {
  std::vector<float> buf = random_floats(100, 13), out(100);
  const auto img = consr::make_view(buf.data(), 10, 10);
  const rng_key key{1, 0};
  consr::diffusion_noise_options o;
  o.step = 1000;
  require_error_naming([&] { consr::add_diffusion_noise(img, key, o); }, "step");
  o.step = -3;
  require_error_naming([&] { consr::add_diffusion_noise(img, key, o); }, "step");
  o = {};
  o.num_steps = 0;
  require_error_naming([&] { consr::add_diffusion_noise(img, key, o); }, "num_steps");
  o = {};
  o.element_offset = ~std::uint64_t{0} - 50;
  require_error_naming([&] { consr::add_diffusion_noise(img, key, o); }, "element_offset");
  require_error_naming(
      [&] { consr::add_diffusion_noise<float, 2>(img, consr::make_view(out.data(), 10, 9), key); }, "out");
  // Shifted by one element: a partial overlap.
  require_error_naming(
      [&] { consr::add_diffusion_noise<float, 2>(consr::make_view(buf.data(), 9, 10), consr::make_view(buf.data() + 1, 9, 10), key); },
      "out");
  // A broadcast output (stride 0) would hold several logical elements in one place.
  require_error_naming(
      [&] {
        consr::add_diffusion_noise<float, 2>(img, consr::make_strided_view(out.data(), std::array<index_t, 2>{10, 10},
                                                                           std::array<index_t, 2>{0, 1}),
                                             key);
      },
      "out");
  // A broadcast *image* is fine.
  std::vector<float> bcast_out(100);
  consr::add_diffusion_noise<float, 2>(
      consr::make_strided_view(static_cast<const float*>(buf.data()), std::array<index_t, 2>{10, 10},
                               std::array<index_t, 2>{0, 1}),
      consr::make_view(bcast_out.data(), 10, 10), key);
  const double a = consr::diffusion_noise_coefficients().sqrt_alpha_bar;
  const double b = consr::diffusion_noise_coefficients().sqrt_one_minus_alpha_bar;
  for (std::size_t i = 0; i < 100; ++i)
    CHECK(bcast_out[i] == Approx(a * buf[i % 10] + b * consr::normal_at(key, i)).margin(1e-6));
  require_error_naming(
      [&] {
        consr::add_diffusion_noise<float, 2>(consr::make_view(static_cast<const float*>(nullptr), 2, 2),
                                             consr::make_view(out.data(), 2, 2), key);
      },
      "image");
}

// =================================================================================================
// Random patch mask
// =================================================================================================

TEST_CASE("random_patch_mask masks whole patches with probability p", "[corruption][patch_mask]") {
  const index_t B = 6, C = 3, H = 50, W = 45;  // patch 7: 8 x 7 patches, the last row and column cut
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 7, 1.0f, 2.0f);  // never equal to the fill value
  std::vector<float> out(n);
  consr::patch_mask_options o;
  o.patch_size = 7;
  o.probability = 0.3;
  o.fill_value = -7.0;
  const rng_key key{123, 9};
  const auto xv = consr::make_view(x.data(), B, C, H, W);
  const auto ov = consr::make_view(out.data(), B, C, H, W);
  consr::random_patch_mask<float, 4>(xv, ov, key, o);
  const index_t rows = 8, cols = 7;
  std::size_t masked_patches = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t pr = 0; pr < rows; ++pr)
      for (index_t pc = 0; pc < cols; ++pc) {
        const bool m = consr::patch_is_masked(key, static_cast<std::uint64_t>(b),
                                              static_cast<std::uint64_t>(pr * cols + pc), 0.3);
        masked_patches += m;
        for (index_t c = 0; c < C; ++c)
          for (index_t y = pr * 7; y < std::min<index_t>(pr * 7 + 7, H); ++y)
            for (index_t w = pc * 7; w < std::min<index_t>(pc * 7 + 7, W); ++w)
              REQUIRE(ov(b, c, y, w) == (m ? -7.0f : xv(b, c, y, w)));
      }
  const double total = static_cast<double>(B * rows * cols);
  CHECK(std::fabs(masked_patches / total - 0.3) < 5 * std::sqrt(0.3 * 0.7 / total));

  // Over many patches, the masked fraction is p.
  const index_t BB = 16, S = 64;
  std::vector<float> big(static_cast<std::size_t>(BB * S * S), 1.0f), big_out(big.size());
  consr::patch_mask_options ob;
  ob.patch_size = 2;
  ob.probability = 0.3;
  consr::random_patch_mask<float, 4>(consr::make_view(big.data(), BB, 1, S, S), consr::make_view(big_out.data(), BB, 1, S, S),
                                     {5, 5}, ob);
  const double frac = static_cast<double>(std::count(big_out.begin(), big_out.end(), 0.0f)) / big_out.size();
  const double patches = static_cast<double>(BB * (S / 2) * (S / 2));
  CHECK(std::fabs(frac - 0.3) < 5 * std::sqrt(0.3 * 0.7 / patches));
}

TEST_CASE("random_patch_mask is reproducible per key and per image", "[corruption][patch_mask][determinism]") {
  const index_t B = 4, C = 2, H = 28, W = 28;
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 8, 1.0f, 2.0f);
  auto run = [&](rng_key key) {
    std::vector<float> out(n);
    consr::random_patch_mask<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W),
                                       key, {4});
    return out;
  };
  const auto a = run({1, 0});
  CHECK(a == run({1, 0}));
  CHECK(a != run({2, 0}));
  CHECK(a != run({1, 1}));
  // Image by image with image_offset = b reproduces the batch; in place equals out of place.
  std::vector<float> per_image = x;
  for (index_t b = 0; b < B; ++b) {
    consr::patch_mask_options o{4};
    o.image_offset = static_cast<std::uint64_t>(b);
    consr::random_patch_mask(consr::make_view(per_image.data() + b * C * H * W, C, H, W), rng_key{1, 0}, o);
  }
  CHECK(per_image == a);
  // p = 0 copies, p = 1 fills everything.
  std::vector<float> out(n);
  consr::patch_mask_options none{4, 0.0, 5.0};
  consr::random_patch_mask<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W),
                                     {1, 0}, none);
  CHECK(out == x);
  consr::patch_mask_options all{4, 1.0, 5.0};
  consr::random_patch_mask<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W),
                                     {1, 0}, all);
  CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 5.0f; }));
  // A patch larger than the image (up to INT64_MAX, whose ceiling division used to overflow) is
  // one patch: the whole image is masked or kept, as patch (0, 0) decides.
  consr::patch_mask_options huge{std::numeric_limits<index_t>::max(), 0.5, 5.0};
  consr::random_patch_mask<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W),
                                     {1, 0}, huge);
  for (index_t b = 0; b < B; ++b) {
    const bool m = consr::patch_is_masked({1, 0}, static_cast<std::uint64_t>(b), 0, 0.5);
    const std::size_t first = static_cast<std::size_t>(b * C * H * W), count = static_cast<std::size_t>(C * H * W);
    for (std::size_t i = first; i < first + count; ++i) REQUIRE(out[i] == (m ? 5.0f : x[i]));
  }
}

TEST_CASE("random_patch_mask rejects bad options, naming them", "[corruption][patch_mask][errors]") {
  std::vector<float> x(3 * 8 * 8), out(x.size());
  const auto xv = consr::make_view(x.data(), 3, 8, 8);
  const auto ov = consr::make_view(out.data(), 3, 8, 8);
  require_error_naming([&] { consr::random_patch_mask<float, 3>(xv, ov, {1}, {0}); }, "patch_size");
  require_error_naming([&] { consr::random_patch_mask<float, 3>(xv, ov, {1}, {4, 1.5}); }, "probability");
  require_error_naming([&] { consr::random_patch_mask<float, 3>(xv, ov, {1}, {4, std::nan("")}); }, "probability");
  consr::patch_mask_options far{4};
  far.image_offset = std::uint64_t{1} << 32;
  require_error_naming([&] { consr::random_patch_mask<float, 3>(xv, ov, {1}, far); }, "image_offset");
  require_error_naming([&] { consr::random_patch_mask<float, 3>(xv, consr::make_view(out.data(), 3, 8, 7), {1}); }, "out");
}

// =================================================================================================
// Mixup
// =================================================================================================

TEST_CASE("mixup computes λ·x + (1 − λ)·x2", "[corruption][mixup]") {
  const index_t B = 2, C = 3, H = 9, W = 11;
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 9), x2 = random_floats(n, 10);
  std::vector<float> out(n);
  for (double lambda : {0.0, 0.25, 0.7, 1.0}) {
    consr::mixup<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(x2.data(), B, C, H, W),
                           consr::make_view(out.data(), B, C, H, W), lambda);
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = lambda * x[i] + (1 - lambda) * x2[i];
      INFO("lambda " << lambda << " element " << i);
      REQUIRE(std::fabs(out[i] - ref) <= 3e-7 * (std::fabs(x[i]) + std::fabs(x2[i])));
      if (lambda == 1.0) REQUIRE(out[i] == x[i]);
      if (lambda == 0.0) REQUIRE(out[i] == x2[i]);
    }
  }
  // In place into the first image; a transposed second image.
  std::vector<double> a = {1, 2, 3, 4, 5, 6}, b = {10, 40, 20, 50, 30, 60};  // b is the column-major [2, 3] of 10..60
  consr::mixup<double, 2>(consr::make_view(a.data(), 2, 3),
                          consr::make_strided_view(static_cast<const double*>(b.data()), std::array<index_t, 2>{2, 3},
                                                   std::array<index_t, 2>{1, 2}),
                          consr::make_view(a.data(), 2, 3), 0.5);
  CHECK(a == std::vector<double>{5.5, 11, 16.5, 22, 27.5, 33});
  std::vector<consr::bfloat16> h = {consr::bfloat16(1.0f), consr::bfloat16(2.0f)}, h2 = {consr::bfloat16(3.0f), consr::bfloat16(-2.0f)},
                               ho(2);
  consr::mixup<consr::bfloat16, 1>(consr::make_view(h.data(), 2), consr::make_view(h2.data(), 2), consr::make_view(ho.data(), 2),
                                   0.75);
  CHECK(static_cast<float>(ho[0]) == 1.5f);
  CHECK(static_cast<float>(ho[1]) == 1.0f);
}

TEST_CASE("mixup rejects bad arguments, naming them", "[corruption][mixup][errors]") {
  std::vector<float> x(12), y(12), out(12);
  const auto xv = consr::make_view(x.data(), 3, 4);
  require_error_naming([&] { consr::mixup<float, 2>(xv, consr::make_view(y.data(), 4, 3), consr::make_view(out.data(), 3, 4), 0.5); },
                       "other");
  require_error_naming([&] { consr::mixup<float, 2>(xv, consr::make_view(y.data(), 3, 4), consr::make_view(out.data(), 3, 3), 0.5); },
                       "out");
  require_error_naming([&] { consr::mixup<float, 2>(xv, consr::make_view(y.data(), 3, 4), consr::make_view(out.data(), 3, 4), 1.5); },
                       "lambda");
  require_error_naming([&] { consr::mixup<float, 2>(xv, consr::make_view(y.data(), 3, 4), consr::make_view(out.data(), 3, 4), -0.1); },
                       "lambda");
}

// =================================================================================================
// Random resized crop
// =================================================================================================

TEST_CASE("draw_resized_crop_box draws boxes inside the image with the requested scale and ratio",
          "[corruption][crop]") {
  const index_t H = 224, W = 160;
  const consr::resized_crop_options o;  // scale [0.08, 1], ratio [3/4, 4/3]
  std::set<std::tuple<index_t, index_t, index_t, index_t>> distinct;
  index_t min_top = H, min_left = W, max_bottom = 0, max_right = 0;
  for (std::uint64_t img = 0; img < 2000; ++img) {
    const consr::crop_box b = consr::draw_resized_crop_box(H, W, {42, 1}, img, o);
    INFO("image " << img << ": top " << b.top << " left " << b.left << " h " << b.height << " w " << b.width);
    REQUIRE(b.height >= 1);
    REQUIRE(b.width >= 1);
    REQUIRE(b.top >= 0);
    REQUIRE(b.left >= 0);
    REQUIRE(b.top + b.height <= H);
    REQUIRE(b.left + b.width <= W);
    // w = round(sqrt(A·r)), h = round(sqrt(A/r)) for some area A in [0.08, 1]·H·W and r in [3/4, 4/3].
    const double area = static_cast<double>(H * W);
    const double w = static_cast<double>(b.width), h = static_cast<double>(b.height);
    REQUIRE((w + 0.5) * (h + 0.5) >= 0.08 * area);
    REQUIRE((w - 0.5) * (h - 0.5) <= 1.0 * area);
    REQUIRE((w + 0.5) / (h - 0.5) >= 3.0 / 4);
    REQUIRE((w - 0.5) / (h + 0.5) <= 4.0 / 3);
    const consr::crop_box again = consr::draw_resized_crop_box(H, W, {42, 1}, img, o);
    REQUIRE(std::tie(again.top, again.left, again.height, again.width) == std::tie(b.top, b.left, b.height, b.width));
    distinct.insert({b.top, b.left, b.height, b.width});
    min_top = std::min(min_top, b.top), min_left = std::min(min_left, b.left);
    max_bottom = std::max(max_bottom, b.top + b.height), max_right = std::max(max_right, b.left + b.width);
  }
  CHECK(distinct.size() > 1900);  // per-image streams differ
  CHECK(min_top == 0);            // positions cover the image
  CHECK(min_left == 0);
  CHECK(max_bottom == H);
  CHECK(max_right == W);
}

TEST_CASE("draw_resized_crop_box falls back to torchvision's centre crop", "[corruption][crop]") {
  consr::resized_crop_options o;
  o.scale_min = 0.9;  // a 10 x 1000 strip cannot hold 90% of its area at ratio ≤ 4/3
  const consr::crop_box b = consr::draw_resized_crop_box(10, 1000, {1, 0}, 0, o);
  CHECK(b.height == 10);
  CHECK(b.width == 13);  // round(10 · 4/3)
  CHECK(b.top == 0);
  CHECK(b.left == (1000 - 13) / 2);
  const consr::crop_box tall = consr::draw_resized_crop_box(1000, 10, {1, 0}, 0, o);
  CHECK(tall.width == 10);
  CHECK(tall.height == 13);  // round(10 / (3/4))
  CHECK(tall.top == (1000 - 13) / 2);
  CHECK(tall.left == 0);
}

TEST_CASE("crop_and_resize_bilinear matches PyTorch's bilinear interpolate", "[corruption][crop]") {
  // Fixture from PyTorch (torch.nn.functional.interpolate, float64), generated by:
  //   img = torch.tensor([[float((7*y*y + 3*x*y + 5*x) % 11) for x in range(6)] for y in range(5)], dtype=torch.float64)
  //   def run(top, left, h, w, oh, ow):
  //       crop = img[top:top+h, left:left+w][None, None]
  //       return F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)[0, 0]
  //   up = run(1, 2, 3, 3, 5, 7); down = run(0, 0, 5, 6, 3, 4)   # printed rounded to 12 decimals
  std::vector<double> img(30);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 6; ++x) img[static_cast<std::size_t>(y * 6 + x)] = (7 * y * y + 3 * x * y + 5 * x) % 11;
  const std::vector<double> up = {1.0, 2.142857142857, 5.571428571429, 9.0, 7.714285714286, 6.428571428571, 6.0,
                                  3.0, 3.685714285714, 5.742857142857, 7.8, 7.028571428571, 6.257142857143, 6.0,
                                  6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0,
                                  4.2, 4.457142857143, 5.228571428571, 6.0, 6.771428571429, 7.542857142857, 7.8,
                                  3.0, 3.428571428571, 4.714285714286, 6.0, 7.285714285714, 8.571428571429, 9.0};
  const std::vector<double> down = {2.916666666667, 6.416666666667, 6.25, 4.25, 6.0, 6.0,
                                    6.0, 6.0, 4.333333333333, 3.583333333333, 7.416666666667, 6.666666666667};
  std::vector<double> out_up(35), out_down(12);
  consr::crop_and_resize_bilinear<double, 3>(consr::make_view(img.data(), 1, 5, 6), consr::crop_box{1, 2, 3, 3},
                                             consr::make_view(out_up.data(), 1, 5, 7));
  consr::crop_and_resize_bilinear<double, 3>(consr::make_view(img.data(), 1, 5, 6), consr::crop_box{0, 0, 5, 6},
                                             consr::make_view(out_down.data(), 1, 3, 4));
  for (std::size_t i = 0; i < up.size(); ++i) CHECK(out_up[i] == Approx(up[i]).margin(1e-11));
  for (std::size_t i = 0; i < down.size(); ++i) CHECK(out_down[i] == Approx(down[i]).margin(1e-11));
}

TEST_CASE("bilinear resize: linear ramps are exact, identity box is the identity", "[corruption][crop]") {
  const index_t C = 2, H = 30, W = 40;
  std::vector<double> ramp(static_cast<std::size_t>(C * H * W));
  auto f = [](index_t c, double y, double x) { return 2.5 * y - 1.25 * x + 3.0 * static_cast<double>(c) + 0.5; };
  for (index_t c = 0; c < C; ++c)
    for (index_t y = 0; y < H; ++y)
      for (index_t x = 0; x < W; ++x) ramp[static_cast<std::size_t>((c * H + y) * W + x)] = f(c, static_cast<double>(y), static_cast<double>(x));
  const consr::crop_box box{3, 5, 20, 30};
  const index_t OH = 45, OW = 50;
  std::vector<double> out(static_cast<std::size_t>(C * OH * OW));
  consr::crop_and_resize_bilinear<double, 3>(consr::make_view(ramp.data(), C, H, W), box,
                                             consr::make_view(out.data(), C, OH, OW));
  for (index_t c = 0; c < C; ++c)
    for (index_t oy = 0; oy < OH; ++oy)
      for (index_t ox = 0; ox < OW; ++ox) {
        // Half-pixel centres, clamped to the crop (PyTorch's align_corners = false).
        const double sy = std::clamp((oy + 0.5) * 20.0 / OH - 0.5, 0.0, 19.0);
        const double sx = std::clamp((ox + 0.5) * 30.0 / OW - 0.5, 0.0, 29.0);
        REQUIRE(out[static_cast<std::size_t>((c * OH + oy) * OW + ox)] == Approx(f(c, 3 + sy, 5 + sx)).margin(1e-12));
      }
  // The whole image at its own size is the identity, exactly, in float too.
  const auto xf = random_floats(static_cast<std::size_t>(C * H * W), 11);
  std::vector<float> same(xf.size());
  consr::crop_and_resize_bilinear<float, 3>(consr::make_view(xf.data(), C, H, W), consr::crop_box{0, 0, H, W},
                                            consr::make_view(same.data(), C, H, W));
  CHECK(same == xf);
}

TEST_CASE("random_resized_crop crops each image with its own box", "[corruption][crop]") {
  const index_t B = 4, C = 3, H = 24, W = 32;
  const std::size_t n = static_cast<std::size_t>(B * C * H * W);
  const auto x = random_floats(n, 12);
  std::vector<float> out(n);
  const rng_key key{8, 8};
  consr::random_resized_crop<float, 4>(consr::make_view(x.data(), B, C, H, W), consr::make_view(out.data(), B, C, H, W), key);
  for (index_t b = 0; b < B; ++b) {
    const auto box = consr::draw_resized_crop_box(H, W, key, static_cast<std::uint64_t>(b));
    std::vector<float> expected(static_cast<std::size_t>(C * H * W));
    consr::crop_and_resize_bilinear<float, 3>(consr::make_view(x.data() + b * C * H * W, C, H, W), box,
                                              consr::make_view(expected.data(), C, H, W));
    CHECK(std::equal(expected.begin(), expected.end(), out.begin() + b * C * H * W));
    // Image by image with image_offset = b gives the same.
    std::vector<float> single(static_cast<std::size_t>(C * H * W));
    consr::resized_crop_options o;
    o.image_offset = static_cast<std::uint64_t>(b);
    consr::random_resized_crop<float, 3>(consr::make_view(x.data() + b * C * H * W, C, H, W),
                                         consr::make_view(single.data(), C, H, W), key, o);
    CHECK(single == expected);
  }
  // Constant channels stay constant.
  std::vector<consr::float16> flat(n), flat_out(n);
  for (std::size_t i = 0; i < n; ++i) flat[i] = consr::float16(static_cast<float>(i / (H * W) % C) - 0.75f);
  consr::random_resized_crop<consr::float16, 4>(consr::make_view(flat.data(), B, C, H, W),
                                                consr::make_view(flat_out.data(), B, C, H, W), key);
  for (std::size_t i = 0; i < n; ++i) REQUIRE(static_cast<float>(flat_out[i]) == static_cast<float>(flat[i]));
}

TEST_CASE("random resized crop rejects bad arguments, naming them", "[corruption][crop][errors]") {
  std::vector<float> x(3 * 8 * 8), out(x.size());
  const auto xv = consr::make_view(x.data(), 3, 8, 8);
  const auto ov = consr::make_view(out.data(), 3, 8, 8);
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, consr::make_view(x.data(), 3, 8, 8), {1}); }, "out");
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, consr::make_view(out.data(), 3, 8, 7), {1}); }, "out");
  consr::resized_crop_options o;
  o.scale_min = 0;
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, ov, {1}, o); }, "scale_min");
  o = {};
  o.scale_max = 0.01;
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, ov, {1}, o); }, "scale_max");
  o = {};
  o.ratio_min = -1;
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, ov, {1}, o); }, "ratio_min");
  o = {};
  o.ratio_max = 0.5;
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, ov, {1}, o); }, "ratio_max");
  o = {};
  o.image_offset = ~std::uint64_t{0};
  require_error_naming([&] { consr::random_resized_crop<float, 3>(xv, ov, {1}, o); }, "image_offset");
  require_error_naming([&] { consr::draw_resized_crop_box(0, 5, {1}, 0); }, "height");
  require_error_naming([&] { consr::draw_resized_crop_box(5, 0, {1}, 0); }, "width");
  require_error_naming([&] { consr::crop_and_resize_bilinear<float, 3>(xv, consr::crop_box{4, 0, 5, 8}, ov); }, "box");
  require_error_naming([&] { consr::crop_and_resize_bilinear<float, 3>(xv, consr::crop_box{0, 0, 0, 8}, ov); }, "box");
  require_error_naming([&] { consr::crop_and_resize_bilinear<float, 3>(xv, consr::crop_box{0, -1, 8, 8}, ov); }, "box");
}
