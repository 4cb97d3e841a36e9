// Tests of the streaming-store paths (consr/detail/streaming_store.hpp): the copy itself at every
// alignment, and the kernels that switch to it for outputs of at least
// detail::streaming_store_min_bytes — token_logprobs_backward and add_diffusion_noise — against the
// same kernels on pieces small enough to take the plain-store path (bitwise equal: the arithmetic
// is the same, only the way the bytes reach memory differs).
#include <catch2/catch.hpp>

#include <consr/corruption.hpp>
#include <consr/detail/streaming_store.hpp>
#include <consr/logprobs.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using consr::index_t;

TEST_CASE("copy_streaming copies exactly the bytes asked for, at every alignment", "[streaming]") {
  std::mt19937 gen(3);
  std::vector<unsigned char> src(4096 + 128);
  for (auto& b : src) b = static_cast<unsigned char>(gen());
  const std::size_t sizes[] = {0, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 255, 1000, 4096};
  int checked = 0;
  for (const std::size_t bytes : sizes) {
    for (std::size_t dst_shift = 0; dst_shift < 64; ++dst_shift) {
      for (const std::size_t src_shift : {std::size_t{0}, std::size_t{3}, std::size_t{64}}) {
        alignas(64) unsigned char dst[4096 + 256];
        std::memset(dst, 0xA5, sizeof dst);
        consr::detail::copy_streaming(dst + 64 + dst_shift, src.data() + src_shift, bytes);
        consr::detail::streaming_store_fence();
        bool ok = std::memcmp(dst + 64 + dst_shift, src.data() + src_shift, bytes) == 0;
        for (std::size_t i = 0; i < 64 + dst_shift; ++i) ok = ok && dst[i] == 0xA5;  // nothing before
        for (std::size_t i = 64 + dst_shift + bytes; i < sizeof dst; ++i) ok = ok && dst[i] == 0xA5;  // or after
        INFO("bytes " << bytes << " dst shift " << dst_shift << " src shift " << src_shift);
        REQUIRE(ok);
        ++checked;
      }
    }
  }
  CHECK(checked == 19 * 64 * 3);
}

TEST_CASE("use_streaming_stores switches at streaming_store_min_bytes", "[streaming]") {
  const double min_bytes = static_cast<double>(consr::detail::streaming_store_min_bytes);
  CHECK_FALSE(consr::detail::use_streaming_stores(min_bytes - 1));
  CHECK(consr::detail::use_streaming_stores(min_bytes) == (CONSR_HAS_STREAMING_STORES == 1));
}

TEST_CASE("a backward large enough to stream equals the same backward row by row", "[streaming][logprobs]") {
  constexpr index_t vocab = 152064;
  constexpr index_t rows = 20;  // 20 × 152064 × 4 B = 12.2 MB of gradient: above the threshold
  REQUIRE(static_cast<double>(rows * vocab) * sizeof(float) >=
          static_cast<double>(consr::detail::streaming_store_min_bytes));
  REQUIRE(static_cast<double>(vocab) * sizeof(float) < static_cast<double>(consr::detail::streaming_store_min_bytes));
  std::mt19937 gen(11);
  std::normal_distribution<float> logit(0.0f, 4.0f);
  std::vector<float> logits(static_cast<std::size_t>(rows * vocab));
  for (auto& v : logits) v = logit(gen);
  std::vector<std::int64_t> labels(rows);
  for (index_t i = 0; i < rows; ++i) labels[static_cast<std::size_t>(i)] = (i * 7919 + 13) % vocab;
  labels[5] = -100;  // an ignored row in the middle
  std::vector<float> logp(rows), lse(rows), grad_logp(rows);
  for (index_t i = 0; i < rows; ++i) grad_logp[static_cast<std::size_t>(i)] = 0.25f * static_cast<float>(i % 7) - 0.8f;
  for (const double tau : {1.0, 0.7}) {
    consr::logprob_options o;
    o.temperature = tau;
    consr::token_logprobs(consr::make_view(logits.data(), rows, vocab), consr::make_view(labels.data(), rows),
                          consr::make_view(logp.data(), rows), consr::make_view(lse.data(), rows), o);
    std::vector<float> whole(logits.size(), -1.0f), by_row(logits.size(), -2.0f);
    consr::token_logprobs_backward(consr::make_view(logits.data(), rows, vocab), consr::make_view(labels.data(), rows),
                                   consr::make_view(lse.data(), rows), consr::make_view(grad_logp.data(), rows),
                                   consr::make_view(whole.data(), rows, vocab), o);
    for (index_t i = 0; i < rows; ++i) {
      const std::size_t off = static_cast<std::size_t>(i * vocab);
      consr::token_logprobs_backward(consr::make_view(logits.data() + off, 1, vocab), consr::make_view(&labels[i], 1),
                                     consr::make_view(&lse[i], 1), consr::make_view(&grad_logp[i], 1),
                                     consr::make_view(by_row.data() + off, 1, vocab), o);
    }
    INFO("temperature " << tau);
    CHECK(std::memcmp(whole.data(), by_row.data(), whole.size() * sizeof(float)) == 0);
    // In place: the gradient overwrites a copy of the logits.
    std::vector<float> in_place = logits;
    consr::token_logprobs_backward(consr::make_view(in_place.data(), rows, vocab), consr::make_view(labels.data(), rows),
                                   consr::make_view(lse.data(), rows), consr::make_view(grad_logp.data(), rows),
                                   consr::make_view(in_place.data(), rows, vocab), o);
    CHECK(std::memcmp(in_place.data(), whole.data(), whole.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("noise large enough to stream equals the same noise in small pieces", "[streaming][corruption]") {
  constexpr index_t n = (index_t{3} << 20) + 5;  // 12.6 MB of fp32, an odd length, above the threshold
  REQUIRE(static_cast<double>(n) * sizeof(float) >= static_cast<double>(consr::detail::streaming_store_min_bytes));
  std::vector<float> image(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) image[static_cast<std::size_t>(i)] = static_cast<float>(i % 1000) * 0.002f - 1.0f;
  const consr::rng_key key{77, 3};
  consr::diffusion_noise_options o;
  o.element_offset = 1;  // not a multiple of 4: the tiles start inside a Philox block
  std::vector<float> whole(image.size(), 0.0f);
  consr::add_diffusion_noise<float, 1>(consr::make_view(image.data(), n), consr::make_view(whole.data(), n), key, o);
  std::vector<float> pieces(image.size(), 1.0f);
  const index_t piece = 500003;  // 2 MB: below the threshold
  REQUIRE(static_cast<double>(piece) * sizeof(float) < static_cast<double>(consr::detail::streaming_store_min_bytes));
  for (index_t begin = 0; begin < n; begin += piece) {
    const index_t len = std::min(piece, n - begin);
    consr::diffusion_noise_options po = o;
    po.element_offset = o.element_offset + static_cast<std::uint64_t>(begin);
    consr::add_diffusion_noise<float, 1>(consr::make_view(image.data() + begin, len),
                                         consr::make_view(pieces.data() + begin, len), key, po);
  }
  CHECK(std::memcmp(whole.data(), pieces.data(), whole.size() * sizeof(float)) == 0);
  // A few elements against the definition, and the in-place form.
  const auto coef = consr::diffusion_noise_coefficients(o);
  for (const index_t i : {index_t{0}, index_t{1}, index_t{4097}, n - 1}) {
    const float expected = static_cast<float>(coef.sqrt_alpha_bar) * image[static_cast<std::size_t>(i)] +
                           static_cast<float>(coef.sqrt_one_minus_alpha_bar) *
                               consr::normal_at(key, o.element_offset + static_cast<std::uint64_t>(i));
    CHECK(whole[static_cast<std::size_t>(i)] == Approx(expected).margin(1e-6));
  }
  consr::add_diffusion_noise<float, 1>(consr::make_view(image.data(), n), key, o);
  CHECK(std::memcmp(image.data(), whole.data(), whole.size() * sizeof(float)) == 0);
}
