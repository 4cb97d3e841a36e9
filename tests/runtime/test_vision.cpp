// Vision towers of Qwen2.5-VL and LLaVA-OneVision against transformers 5.24 (fp32, eager), from the
// committed fixtures of tools/make_model_fixtures.py; weights loaded with load_weights.
#include "runtime_test_support.hpp"

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/weights.hpp"

using namespace runtime_test;

namespace {

std::vector<std::int64_t> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kLong).contiguous();
  return std::vector<std::int64_t>(c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel());
}

/// Every parameter of `copy` (loaded from the bf16 copy of a fixture) equals the same parameter of `main`
/// rounded to bf16.
void check_bf16_copy(const torch::nn::Module& main, const torch::nn::Module& copy) {
  const auto a = main.named_parameters(), b = copy.named_parameters();
  REQUIRE(a.size() == b.size());
  for (const auto& p : a) {
    INFO(p.key());
    CHECK(torch::equal(p.value().to(torch::kBFloat16).to(torch::kFloat), b[p.key()]));
  }
}

}  // namespace

TEST_CASE("Qwen2.5-VL vision module parameters carry the HF names", "[vision]") {
  const auto config = consr_runtime::load_model_config(models_dir + "/qwen2_5_vl_tiny");
  consr_runtime::qwen2_5_vl_vision_model vision(config.qwen2_5_vl->vision);
  std::vector<std::string> names;
  for (const auto& p : vision->named_parameters()) names.push_back(p.key());
  const std::vector<std::string> expected_some = {
      "patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
      "blocks.3.attn.proj.bias", "blocks.1.mlp.gate_proj.bias", "blocks.2.mlp.down_proj.weight",
      "merger.ln_q.weight", "merger.mlp.0.weight", "merger.mlp.2.bias"};
  for (const auto& n : expected_some) CHECK(std::find(names.begin(), names.end(), n) != names.end());
  // Every checkpoint tensor under visual.* is a module parameter and vice versa.
  consr_runtime::checkpoint ck(models_dir + "/qwen2_5_vl_tiny");
  std::size_t visual = 0;
  for (const auto& n : ck.names())
    if (n.rfind("visual.", 0) == 0) {
      ++visual;
      CHECK(std::find(names.begin(), names.end(), n.substr(7)) != names.end());
    }
  CHECK(visual == names.size());
}

TEST_CASE("Qwen2.5-VL window plan equals transformers' get_vision_window_index", "[vision]") {
  consr_runtime::safetensors_file ref(models_dir + "/qwen2_5_vl_tiny/reference.safetensors");
  const auto plan = consr_runtime::qwen2_5_vl_window_plan_for(ref.load("image_grid_thw"), 2, 112, 14);
  CHECK(plan.window_index == to_vector(ref.load("window_index")));
  CHECK(plan.cu_window_seqlens == to_vector(ref.load("cu_window_seqlens")));
  CHECK(plan.cu_seqlens == std::vector<std::int64_t>{0, 96, 112});
  // Hand-worked: an 8 x 8 merged grid (16 x 16 patches) is exactly 2 x 2 windows of 16 cells; the
  // padding adds a row and a column of empty windows that vanish.
  const auto p2 = consr_runtime::qwen2_5_vl_window_plan_for(torch::tensor({1, 16, 16}, torch::kLong).view({1, 3}), 2, 112, 14);
  CHECK(p2.cu_window_seqlens == std::vector<std::int64_t>{0, 64, 128, 192, 256});
  CHECK(p2.window_index.size() == 64);
  CHECK(p2.window_index[4] == 8);  // second row of the first window
  CHECK_THROWS_AS(consr_runtime::qwen2_5_vl_window_plan_for(torch::tensor({1, 3, 4}, torch::kLong).view({1, 3}), 2, 112, 14),
                  consr_runtime::runtime_error);
}

TEST_CASE("Qwen2.5-VL vision features match HF to 1e-4 (fp32)", "[vision]") {
  const std::string dir = models_dir + "/qwen2_5_vl_tiny";
  consr_runtime::safetensors_file ref(dir + "/reference.safetensors");
  auto vision = load_qwen_vision(dir, "visual.");
  torch::NoGradGuard no_grad;
  const auto pixel_values = ref.load("pixel_values");
  const auto grid = ref.load("image_grid_thw");
  const auto features = vision->forward(pixel_values, grid);
  const auto expected = ref.load("vision_features");
  REQUIRE(features.sizes() == expected.sizes());
  CHECK(max_abs(features, expected) <= 1e-4);

  // Images do not attend to each other: the first image alone gives its rows of the pair.
  const auto alone = vision->forward(pixel_values.narrow(0, 0, 96), grid.narrow(0, 0, 1));
  CHECK(max_abs(alone, features.narrow(0, 0, 24)) <= 1e-5);

  // End to end from the image files through the C++ processor.
  const auto meta = read_json(dir + "/reference.json");
  const auto proc = consr_runtime::qwen2_vl_image_processor::from_file(dir);
  std::vector<consr_runtime::rgb_image> images;
  for (const auto& name : meta["images"]) images.push_back(consr_runtime::load_image(models_dir + "/images/" + name.get<std::string>()));
  const auto packed = proc(images);
  CHECK(max_abs(vision->forward(packed.pixel_values, packed.image_grid_thw), expected) <= 1e-4);

  CHECK_THROWS_AS(vision->forward(pixel_values.narrow(0, 0, 100), grid), consr_runtime::runtime_error);
  CHECK_THROWS_AS(vision->forward(pixel_values.narrow(1, 0, 100), grid), consr_runtime::runtime_error);
}

TEST_CASE("Qwen2.5-VL vision loads the bf16 sharded copy in the model.visual.* layout", "[vision]") {
  auto main = load_qwen_vision(models_dir + "/qwen2_5_vl_tiny", "visual.");
  auto sharded = load_qwen_vision(models_dir + "/qwen2_5_vl_tiny_sharded", "model.visual.");
  check_bf16_copy(*main, *sharded);
}

TEST_CASE("LLaVA-OneVision vision module parameters carry the HF names", "[vision]") {
  const auto config = consr_runtime::load_model_config(models_dir + "/llava_onevision_tiny");
  consr_runtime::llava_onevision_vision vision(*config.llava_onevision);
  std::vector<std::string> names;
  for (const auto& p : vision->named_parameters()) names.push_back(p.key());
  for (const std::string n : {"vision_tower.vision_model.embeddings.patch_embedding.weight",
                              "vision_tower.vision_model.embeddings.position_embedding.weight",
                              "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.bias",
                              "vision_tower.vision_model.encoder.layers.2.mlp.fc2.weight",
                              "vision_tower.vision_model.post_layernorm.weight", "multi_modal_projector.linear_1.weight",
                              "multi_modal_projector.linear_2.bias", "image_newline"})
    CHECK(std::find(names.begin(), names.end(), n) != names.end());
  // The hub legacy checkpoint holds exactly these names (plus the language model).
  consr_runtime::checkpoint ck(models_dir + "/llava_onevision_tiny_sharded");
  std::size_t vision_tensors = 0;
  for (const auto& n : ck.names())
    if (n.rfind("language_model.", 0) != 0) {
      ++vision_tensors;
      CHECK(std::find(names.begin(), names.end(), n) != names.end());
    }
  CHECK(vision_tensors == names.size());
}

TEST_CASE("LLaVA-OneVision vision features match HF to 1e-4 (fp32)", "[vision]") {
  const std::string dir = models_dir + "/llava_onevision_tiny";
  consr_runtime::safetensors_file ref(dir + "/reference.safetensors");
  const auto meta = read_json(dir + "/reference.json");
  // transformers 5.24 saves the SigLIP tower as vision_tower.* (without vision_model.).
  auto vision = load_llava_vision(dir, "vision_tower.");
  const auto proc = consr_runtime::llava_onevision_image_processor::from_directory(dir);
  torch::NoGradGuard no_grad;

  const auto image = consr_runtime::load_image(models_dir + "/images/" + meta["images"][0].get<std::string>());
  const auto packed = proc({image});
  CHECK(torch::equal(packed.image_sizes, ref.load("image_sizes")));

  // SigLIP output before post_layernorm, base tile.
  const auto hidden = vision->siglip_hidden(packed.pixel_values.narrow(0, 0, 1), 3);
  using torch::indexing::None;
  using torch::indexing::Slice;
  CHECK(max_abs(hidden[0].index({Slice(0, None, 7)}), ref.load("siglip_hidden_base_sample")) <= 1e-4);

  const auto features = vision->forward(packed.pixel_values, packed.image_sizes);
  const auto expected = ref.load("vision_features");
  REQUIRE(features.sizes() == expected.sizes());
  CHECK(features.size(0) == packed.num_image_tokens.at(0));
  CHECK(max_abs(features, expected) <= 1e-4);

  // 12 tiles, unpadding and the anyres_max_9 bilinear downsample.
  const auto large = consr_runtime::load_image(models_dir + "/images/" + meta["images"][1].get<std::string>());
  const auto lp = proc({large});
  const auto lf = vision->forward(lp.pixel_values, lp.image_sizes);
  CHECK(lf.size(0) == ref.load("large.num_image_tokens")[0].item<std::int64_t>());
  CHECK(lf.size(0) == lp.num_image_tokens.at(0));
  CHECK(max_abs(lf.index({Slice(0, None, 32)}), ref.load("large.vision_features_sample")) <= 1e-4);
  CHECK(max_abs(lf.to(torch::kDouble).sum(0), ref.load("large.vision_features_sum")) <= 1e-2);

  // Both images in one call: the packed features concatenate.
  const auto both = vision->forward(torch::cat({packed.pixel_values, lp.pixel_values}, 0),
                                    torch::cat({packed.image_sizes, lp.image_sizes}, 0));
  CHECK(both.size(0) == features.size(0) + lf.size(0));
  CHECK(max_abs(both.narrow(0, 0, features.size(0)), expected) <= 1e-4);

  CHECK_THROWS_AS(vision->forward(packed.pixel_values.narrow(0, 0, 2), packed.image_sizes), consr_runtime::runtime_error);
  CHECK_THROWS_AS(vision->forward(packed.pixel_values, torch::zeros({1, 3}, torch::kLong)), consr_runtime::runtime_error);
}

TEST_CASE("LLaVA-OneVision vision loads the bf16 hub-legacy sharded copy", "[vision]") {
  auto main = load_llava_vision(models_dir + "/llava_onevision_tiny", "vision_tower.");
  auto legacy = load_llava_vision(models_dir + "/llava_onevision_tiny_sharded", "vision_tower.vision_model.");
  check_bf16_copy(*main, *legacy);
}
