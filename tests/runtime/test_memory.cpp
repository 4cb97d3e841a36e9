// Memory bounds of the runtime (issue 17 §2): query-chunked attention in the vision towers and the
// text decoder (CONSR_ATTENTION_CHUNK_ELEMENTS forces tiny chunks: the results must not change).
#include "runtime_test_support.hpp"

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/qwen2.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/weights.hpp"

using namespace runtime_test;
using consr_runtime::text_config;

namespace {

// Sets CONSR_ATTENTION_CHUNK_ELEMENTS for the scope of the object and restores what was there.
struct chunk_env {
  std::optional<std::string> previous;
  explicit chunk_env(const std::string& value) {
    if (const char* p = std::getenv("CONSR_ATTENTION_CHUNK_ELEMENTS")) previous = p;
    ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", value.c_str(), 1);
  }
  ~chunk_env() {
    if (previous)
      ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", previous->c_str(), 1);
    else
      ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
  }
};

// The default budget applies whatever the calling environment says.
struct default_chunks : chunk_env {
  default_chunks() : chunk_env("67108864") {}
};

void randomize(torch::nn::Module& m, std::uint64_t seed, double scale = 0.3) {
  torch::manual_seed(static_cast<std::int64_t>(seed));
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
    if (p.key().find("norm") != std::string::npos || p.key().find("ln_q") != std::string::npos)
      p.value().copy_(1.0 + 0.2 * torch::randn(p.value().sizes()));
    else
      p.value().copy_(scale * torch::randn(p.value().sizes()));
  }
}

consr_runtime::qwen2_5_vl_vision_model load_qwen_vision(const std::string& dir) {
  const auto config = consr_runtime::load_model_config(dir);
  REQUIRE(config.qwen2_5_vl);
  consr_runtime::qwen2_5_vl_vision_model vision(config.qwen2_5_vl->vision);
  consr_runtime::checkpoint ck(dir);
  consr_runtime::load_options options;
  options.ignore_extra = {"^model\\.(language_model\\.)?(embed_tokens|layers|norm)", "^lm_head\\."};
  consr_runtime::load_weights(*vision, ck, {{"", {"visual."}}}, options);
  vision->eval();
  return vision;
}

consr_runtime::llava_onevision_vision load_llava_vision(const std::string& dir) {
  const auto config = consr_runtime::load_model_config(dir);
  REQUIRE(config.llava_onevision);
  consr_runtime::llava_onevision_vision vision(*config.llava_onevision);
  consr_runtime::checkpoint ck(dir);
  consr_runtime::load_options options;
  options.ignore_extra = {"^language_model\\."};
  consr_runtime::load_weights(*vision, ck,
                              {{"vision_tower.vision_model.", {"vision_tower."}},
                               {"multi_modal_projector.", {"multi_modal_projector."}},
                               {"image_newline", {"image_newline"}}},
                              options);
  vision->eval();
  return vision;
}

}  // namespace

// ---- query-chunked attention ---------------------------------------------------------------------

TEST_CASE("memory: Qwen2.5-VL vision in one-query chunks equals the unchunked tower and HF", "[memory][vision]") {
  const std::string dir = models_dir + "/qwen2_5_vl_tiny";
  consr_runtime::safetensors_file ref(dir + "/reference.safetensors");
  auto vision = load_qwen_vision(dir);
  torch::NoGradGuard no_grad;
  const auto pixel_values = ref.load("pixel_values");
  const auto grid = ref.load("image_grid_thw");
  torch::Tensor whole;
  {
    default_chunks env;
    whole = vision->forward(pixel_values, grid);
  }
  // Budget 1: one query row per chunk in every window and full-attention segment.
  chunk_env env("1");
  const auto chunked = vision->forward(pixel_values, grid);
  REQUIRE(chunked.sizes() == whole.sizes());
  CHECK(max_abs(chunked, whole) <= 1e-5);
  CHECK(max_abs(chunked, ref.load("vision_features")) <= 1e-4);

  // A random tower (not the fixture's weights) on a 16 x 16-patch image: 4 windows of 64 patches and
  // a 256-patch full-attention segment, with a budget that splits them into uneven chunks.
  randomize(*vision, 7, 0.2);
  const auto pixels = torch::randn({256, pixel_values.size(1)});
  const auto grid16 = torch::tensor({1, 16, 16}, torch::kLong).view({1, 3});
  torch::Tensor base;
  {
    default_chunks d;
    base = vision->forward(pixels, grid16);
  }
  chunk_env uneven("1500");  // 2 heads x 256 keys: 2 queries per chunk; 2 x 64: 11 per chunk
  const auto split = vision->forward(pixels, grid16);
  CHECK(max_abs(split, base) <= 1e-5);
  CHECK(base.abs().max().item<double>() > 1e-2);  // not a degenerate all-zero comparison
}

TEST_CASE("memory: LLaVA-OneVision SigLIP tower in one-query chunks equals the unchunked tower", "[memory][vision]") {
  const std::string dir = models_dir + "/llava_onevision_tiny";
  auto vision = load_llava_vision(dir);
  randomize(*vision, 11, 0.05);  // features of order 1, where 1e-5 is a few fp32 ulps of rounding
  torch::NoGradGuard no_grad;
  const auto size = vision->config().vision.image_size;
  torch::manual_seed(3);
  const auto tiles = torch::randn({2, 3, size, size});
  torch::Tensor whole;
  {
    default_chunks env;
    whole = vision->tile_features(tiles);
  }
  torch::Tensor chunked, uneven;
  {
    chunk_env env("1");
    chunked = vision->tile_features(tiles);
  }
  {
    chunk_env env("100000");  // 2 tiles x 2 heads x 729 keys: 34 queries per chunk, a partial last one
    uneven = vision->tile_features(tiles);
  }
  REQUIRE(chunked.sizes() == whole.sizes());
  INFO("max |features| " << whole.abs().max().item<double>());
  CHECK(max_abs(chunked, whole) <= 1e-5);
  CHECK(max_abs(uneven, whole) <= 1e-5);
  CHECK(whole.abs().max().item<double>() > 1e-2);
}

TEST_CASE("memory: the text decoder in one-query chunks equals one chunk; a bad budget is named", "[memory][qwen2]") {
  text_config c;
  c.model_type = "qwen2";
  c.vocab_size = 41;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 100.0;
  consr_runtime::qwen2_causal_lm lm(c);
  randomize(*lm, 5);
  torch::NoGradGuard no_grad;
  const auto ids = torch::remainder(torch::arange(2 * 19) * 5 + 1, c.vocab_size).view({2, 19});
  auto mask = torch::ones({2, 19}, torch::kLong);
  mask[0].narrow(0, 0, 4).zero_();  // left padding in row 0
  const auto positions = consr_runtime::positions_from_mask(mask);
  torch::Tensor whole;
  {
    default_chunks env;
    whole = lm->forward(ids, positions, mask);
  }
  {
    chunk_env env("1");
    CHECK(max_abs(lm->forward(ids, positions, mask), whole) <= 1e-5);
  }
  for (const char* bad : {"0", "-3", "12abc", "lots"}) {
    chunk_env env(bad);
    CHECK_THROWS_WITH(lm->forward(ids, positions, mask), Catch::Contains("CONSR_ATTENTION_CHUNK_ELEMENTS"));
  }
}
