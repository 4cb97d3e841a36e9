// Qwen2-VL and LLaVA-OneVision image processors against transformers 5.24's slow processors
// (fixtures of tools/make_model_fixtures.py), plus hand-written smart_resize / best-resolution cases.
#include "runtime_test_support.hpp"

#include <stdlib.h>  // setenv, unsetenv

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"

using namespace runtime_test;

TEST_CASE("smart_resize: hand-written cases including .5 ties and both pixel bounds", "[processors]") {
  using consr_runtime::smart_resize;
  const std::int64_t mn = 56 * 56, mx = 28 * 28 * 16384;
  using P = std::pair<std::int64_t, std::int64_t>;
  CHECK(smart_resize(70, 45, 28, mn, mx) == P{56, 56});     // 70/28 = 2.5 -> 2 (half to even)
  CHECK(smart_resize(98, 42, 28, mn, mx) == P{112, 56});    // 3.5 -> 4, 1.5 -> 2
  CHECK(smart_resize(126, 154, 28, mn, mx) == P{112, 168}); // 4.5 -> 4, 5.5 -> 6
  CHECK(smart_resize(101, 159, 28, mn, mx) == P{112, 168}); // 3.61 -> 4, 5.68 -> 6
  CHECK(smart_resize(28, 28, 28, mn, mx) == P{56, 56});     // below min_pixels: ceil(28 * 2 / 28) = 2
  CHECK(smart_resize(30, 40, 28, mn, mx) == P{56, 84});     // beta = sqrt(3136/1200): ceil 1.73 -> 2, 2.31 -> 3
  CHECK(smart_resize(1000, 2000, 28, mn, 100000) == P{196, 420});  // beta = sqrt(20): floor 7.99 -> 7, 15.97 -> 15
  // Aspect exactly 200 is allowed; 10 x 2000 rounds to 0 x 1988 < min_pixels: beta = sqrt(3136 / 20000),
  // ceil(3.96 / 28) = 1, ceil(791.9 / 28) = 29.
  CHECK(smart_resize(10, 2000, 28, mn, mx) == P{28, 812});
  CHECK(smart_resize(560, 840, 28, mn, mx) == P{560, 840});  // already multiples of 28
  try {
    smart_resize(9, 100, 28, mn, mx);
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "'height'"));
    CHECK(message_contains(e, "too small"));
  }
  CHECK_THROWS_AS(smart_resize(100, 5, 28, mn, mx), consr_runtime::runtime_error);
  try {
    smart_resize(10, 2001, 28, mn, mx);
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "aspect ratio"));
  }
  CHECK_THROWS_AS(smart_resize(100, 100, 0, mn, mx), consr_runtime::runtime_error);
}

TEST_CASE("smart_resize and select_best_resolution equal transformers' functions", "[processors]") {
  const auto meta = read_json(models_dir + "/images/images.json");
  const auto& sr = meta["cases"]["smart_resize"];
  REQUIRE(sr.size() >= 10);
  for (const auto& c : sr) {
    INFO(c.dump());
    const auto r = consr_runtime::smart_resize(c["height"].get<std::int64_t>(), c["width"].get<std::int64_t>(), 28,
                                               c["min_pixels"].get<std::int64_t>(), c["max_pixels"].get<std::int64_t>());
    CHECK(r.first == c["resized_height"].get<std::int64_t>());
    CHECK(r.second == c["resized_width"].get<std::int64_t>());
  }
  std::vector<std::array<std::int64_t, 2>> pinpoints;
  for (const auto& p : meta["cases"]["select_best_resolution"]["pinpoints"]) pinpoints.push_back({p[0].get<std::int64_t>(), p[1].get<std::int64_t>()});
  REQUIRE(pinpoints.size() == 36);
  for (const auto& c : meta["cases"]["select_best_resolution"]["cases"]) {
    INFO(c.dump());
    const auto best = consr_runtime::select_best_resolution(c["height"].get<std::int64_t>(), c["width"].get<std::int64_t>(), pinpoints);
    CHECK(best[0] == c["best"][0].get<std::int64_t>());
    CHECK(best[1] == c["best"][1].get<std::int64_t>());
  }
}

TEST_CASE("select_best_resolution: ties go to the least waste, then to the first candidate", "[processors]") {
  using consr_runtime::select_best_resolution;
  using A = std::array<std::int64_t, 2>;
  // Equal effective resolution and equal waste: the first candidate wins.
  CHECK(select_best_resolution(384, 384, {{384, 768}, {768, 384}}) == A{384, 768});
  CHECK(select_best_resolution(384, 384, {{768, 384}, {384, 768}}) == A{768, 384});
  // Both hold the whole image: the smaller (less waste) wins, whatever the order.
  CHECK(select_best_resolution(100, 100, {{768, 768}, {384, 384}}) == A{384, 384});
  CHECK(select_best_resolution(100, 100, {{384, 384}, {768, 768}}) == A{384, 384});
  // A wide image: more effective pixels beat less waste.
  CHECK(select_best_resolution(300, 1000, {{384, 384}, {384, 1152}, {768, 768}}) == A{384, 1152});
  CHECK_THROWS_AS(select_best_resolution(0, 10, {{384, 384}}), consr_runtime::runtime_error);
  CHECK_THROWS_AS(select_best_resolution(10, 10, {}), consr_runtime::runtime_error);
}

TEST_CASE("Qwen2-VL processor reproduces HF pixel_values and image_grid_thw", "[processors]") {
  const auto& [dir, ref, meta] = model_reference(models_dir + "/qwen2_5_vl_tiny");
  const auto proc = consr_runtime::qwen2_vl_image_processor::from_file(dir);
  CHECK(proc.config().min_pixels == 3136);
  CHECK(proc.config().max_pixels == 28 * 28 * 16384);
  std::vector<consr_runtime::rgb_image> images;
  for (const auto& name : meta["images"]) images.push_back(consr_runtime::load_image(models_dir + "/images/" + name.get<std::string>()));
  REQUIRE(images.size() == 2);

  const auto n0 = proc.normalize(images[0]);
  CHECK(n0.sizes() == torch::IntArrayRef({3, 112, 168}));
  const auto packed = proc(images);
  const auto expected = ref.load("pixel_values");
  REQUIRE(packed.pixel_values.sizes() == expected.sizes());
  CHECK(max_abs(packed.pixel_values, expected) <= 1e-6);
  CHECK(torch::equal(packed.pixel_values, expected));  // PIL-exact resize + numpy-exact normalization
  CHECK(torch::equal(packed.image_grid_thw, ref.load("image_grid_thw")));
  REQUIRE(packed.num_image_tokens.size() == 2);
  CHECK(packed.num_image_tokens[0] == meta["num_image_tokens"].get<std::int64_t>());
  CHECK(packed.num_image_tokens[1] == 4);

  // The hub spelling of the processor config (min_pixels / max_pixels keys) gives the same processor.
  const auto hub = consr_runtime::qwen2_vl_image_processor::from_file(models_dir + "/qwen2_5_vl_tiny_sharded/preprocessor_config.json");
  CHECK(hub.config().min_pixels == proc.config().min_pixels);
  CHECK(hub.config().max_pixels == proc.config().max_pixels);
  CHECK(torch::equal(hub(images).pixel_values, expected));
}

TEST_CASE("Qwen2-VL stage boundary: a corruption between normalize and pack reaches both frames", "[processors]") {
  const auto proc = consr_runtime::qwen2_vl_image_processor::from_file(models_dir + "/qwen2_5_vl_tiny");
  const auto image = consr_runtime::load_image(models_dir + "/images/qwen_a_101x159.png");
  auto normalized = proc.normalize(image);
  torch::manual_seed(3);
  const auto noisy = normalized + torch::randn(normalized.sizes());
  const auto packed = proc.pack(noisy);
  // Row features are (C, T, 14, 14): the two temporal copies must be identical, noise included.
  const auto v = packed.pixel_values.view({-1, 3, 2, 14, 14});
  CHECK(torch::equal(v.select(2, 0), v.select(2, 1)));
  CHECK(!torch::equal(packed.pixel_values, proc.pack(normalized).pixel_values));
  // Undo the flattening by hand: row r of merge group (bh, bw, mh, mw) is patch (2 bh + mh, 2 bw + mw).
  const std::int64_t gw = 168 / 14;
  for (std::int64_t r : {0, 1, 2, 3, 5, 17, 95}) {
    const std::int64_t group = r / 4, within = r % 4;
    const std::int64_t ph = (group / (gw / 2)) * 2 + within / 2, pw = (group % (gw / 2)) * 2 + within % 2;
    const auto patch = noisy.narrow(1, ph * 14, 14).narrow(2, pw * 14, 14);  // [3, 14, 14]
    CHECK(torch::equal(v[r].select(1, 0), patch));
  }
}

TEST_CASE("Qwen2-VL processor rejects bad arguments with named errors", "[processors]") {
  const auto proc = consr_runtime::qwen2_vl_image_processor::from_file(models_dir + "/qwen2_5_vl_tiny");
  try {
    proc.pack(torch::zeros({3, 30, 56}));
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "'normalized[0]'"));
  }
  CHECK_THROWS_AS(proc.pack(torch::zeros({4, 56, 56})), consr_runtime::runtime_error);
  CHECK_THROWS_AS(proc.pack(torch::zeros({3, 56, 56}, torch::kDouble)), consr_runtime::runtime_error);
  CHECK_THROWS_AS(proc.pack(std::vector<torch::Tensor>{}), consr_runtime::runtime_error);
  const auto tiny = consr_runtime::make_rgb_image(torch::zeros({8, 40, 3}, torch::kUInt8));
  CHECK_THROWS_AS(proc.normalize(tiny), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::parse_qwen2_vl_processor_config("{\"min_pixels\": \"a\"}", "pp.json"),
                  consr_runtime::runtime_error);
  try {
    consr_runtime::parse_qwen2_vl_processor_config("{\"image_std\": [0.5, 0, 0.5]}", "pp.json");
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "pp.json"));
    CHECK(message_contains(e, "image_std"));
  }
  CHECK_THROWS_AS(consr_runtime::parse_qwen2_vl_processor_config("[1, 2]", "pp.json"), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::qwen2_vl_image_processor::from_file(models_dir + "/nowhere"), consr_runtime::runtime_error);
}

TEST_CASE("processor config keys of the wrong type or range are named with the file; null keeps the default",
          "[processors]") {
  const std::string prefix = "consr_runtime::parse_qwen2_vl_processor_config: 'pp.json': key ";
  const std::vector<std::pair<std::string, std::string>> rows = {
      {R"({"do_resize": "yes"})", "'do_resize' must be a boolean"},
      {R"({"rescale_factor": "x"})", "'rescale_factor' must be a number"},
      {R"({"patch_size": 1.5})", "'patch_size' must be an integer"},
      {R"({"patch_size": 0})", "'patch_size' = 0 must be >= 1"},
  };
  for (const auto& [text, message] : rows) {
    INFO(text);
    CHECK_THROWS_WITH(consr_runtime::parse_qwen2_vl_processor_config(text, "pp.json"), prefix + message);
  }
  const consr_runtime::qwen2_vl_processor_config defaults;
  const auto nulls = consr_runtime::parse_qwen2_vl_processor_config(
      R"({"do_resize": null, "rescale_factor": null, "patch_size": null})", "pp.json");
  CHECK(nulls.do_resize == defaults.do_resize);
  CHECK(nulls.rescale_factor == defaults.rescale_factor);
  CHECK(nulls.patch_size == defaults.patch_size);
}

TEST_CASE("LLaVA-OneVision processor reproduces HF tiles, image_sizes and token counts", "[processors]") {
  const auto& [dir, ref, meta] = model_reference(models_dir + "/llava_onevision_tiny");
  const auto proc = consr_runtime::llava_onevision_image_processor::from_directory(dir);
  CHECK(proc.config().tile_size == 384);
  CHECK(proc.config().image_grid_pinpoints.size() == 36);
  CHECK(proc.config().image_mean[0] == 0.5);

  const auto image = consr_runtime::load_image(models_dir + "/images/" + meta["images"][0].get<std::string>());
  const auto normalized = proc.normalize(image);
  const auto shape = ref.load("pixel_values_shape");
  REQUIRE(normalized.dim() == 4);
  for (int d = 0; d < 4; ++d) CHECK(normalized.size(d) == shape[d].item<std::int64_t>());
  CHECK(max_abs(normalized.to(torch::kDouble).sum(3), ref.load("pixel_values_row_sums")) <= 1e-9);
  CHECK(max_abs(normalized.to(torch::kDouble).sum(2), ref.load("pixel_values_col_sums")) <= 1e-9);
  using torch::indexing::Slice;
  CHECK(torch::equal(normalized.index({Slice(), Slice(), Slice(0, torch::indexing::None, 11), Slice(0, torch::indexing::None, 7)}),
                     ref.load("pixel_values_sample")));
  const auto packed = proc.pack({normalized}, {{image.height(), image.width()}});
  CHECK(torch::equal(packed.image_sizes, ref.load("image_sizes")));
  CHECK(packed.num_image_tokens.at(0) == meta["num_image_tokens"].get<std::int64_t>());

  // The 12-tile image with the anyres_max_9 downsample.
  const auto large = consr_runtime::load_image(models_dir + "/images/" + meta["images"][1].get<std::string>());
  const auto nl = proc.normalize(large);
  const auto lshape = ref.load("large.pixel_values_shape");
  CHECK(nl.size(0) == lshape[0].item<std::int64_t>());
  CHECK(max_abs(nl.to(torch::kDouble).sum(3), ref.load("large.pixel_values_row_sums")) <= 1e-9);
  CHECK(consr_runtime::llava_onevision_num_image_tokens(large.height(), large.width(), proc.config()) ==
        ref.load("large.num_image_tokens")[0].item<std::int64_t>());

  for (const auto& c : meta["processor_token_counts"]) {
    INFO(c.dump());
    CHECK(consr_runtime::llava_onevision_num_image_tokens(c["height"].get<std::int64_t>(), c["width"].get<std::int64_t>(),
                                                          proc.config()) == c["num_image_tokens"].get<std::int64_t>());
  }
  // The legacy sharded copy has the same processor.
  const auto legacy = consr_runtime::llava_onevision_image_processor::from_directory(models_dir + "/llava_onevision_tiny_sharded");
  const bool same_pinpoints = legacy.config().image_grid_pinpoints == proc.config().image_grid_pinpoints;
  CHECK(same_pinpoints);
}

TEST_CASE("LLaVA-OneVision: several images in one prompt are not tiled (transformers' multi-image rule)",
          "[processors][multi_image]") {
  // transformers 5.24 (LlavaOnevisionImageProcessor._preprocess, LlavaOnevisionProcessor.
  // _expand_image_tokens): with batch_num_images > 1 an image is padded to a square with the colour
  // int(image_mean * 255), resized to 384² and not tiled, and gets num_image_tokens (27² = 729) + 1
  // image_newline tokens, whatever its size; a prompt with one image keeps anyres.
  const std::string dir = models_dir + "/llava_onevision_tiny";
  const auto meta = read_json(dir + "/reference.json");
  const auto proc = consr_runtime::llava_onevision_image_processor::from_directory(dir);
  const auto a = consr_runtime::load_image(models_dir + "/images/" + meta["images"][0].get<std::string>());  // 233 x 410
  const auto b = consr_runtime::load_image(models_dir + "/images/" + meta["images"][1].get<std::string>());  // 900 x 1203

  const auto one = proc({a});
  CHECK(one.pixel_values.size(0) == proc.num_tiles(a.height(), a.width()));
  CHECK(one.num_image_tokens == std::vector<std::int64_t>{meta["num_image_tokens"].get<std::int64_t>()});
  CHECK(torch::equal(one.batch_num_images, torch::tensor(std::vector<std::int64_t>{1})));

  const auto two = proc({a, b});
  REQUIRE(two.pixel_values.sizes() == torch::IntArrayRef({2, 3, 384, 384}));  // one tensor per image (anyres: 3 + 13)
  CHECK(two.num_image_tokens == std::vector<std::int64_t>{730, 730});
  CHECK(torch::equal(two.batch_num_images, torch::tensor(std::vector<std::int64_t>{2})));
  CHECK(torch::equal(two.image_sizes, torch::tensor(std::vector<std::int64_t>{233, 410, 900, 1203}).view({2, 2})));
  for (auto [h, w] : {std::pair<std::int64_t, std::int64_t>{233, 410}, {10, 4000}, {3000, 1000}})
    CHECK(consr_runtime::llava_onevision_num_image_tokens(h, w, proc.config(), /*anyres=*/false) == 730);

  // The square padding: 233 x 410 becomes 410 x 410 with 88 background rows on top (127 for mean
  // 0.5), which stay pure background after the bicubic resize to 384.
  const float background = (static_cast<float>(127 * (1.0 / 255.0)) - 0.5f) / 0.5f;
  const auto top = two.pixel_values[0].narrow(1, 0, 64);
  CHECK(torch::all(top.eq(background)).item<bool>());
  CHECK_FALSE(torch::all(two.pixel_values[0].narrow(1, 150, 64).eq(background)).item<bool>());
  // A square image needs no padding: its tile is anyres's base tile, bit for bit.
  const consr_runtime::rgb_image square = consr_runtime::make_rgb_image(a.pixels.narrow(1, 0, 233).contiguous(), "square");
  CHECK(torch::equal(proc.normalize(square, false)[0], proc.normalize(square)[0]));

  // The prompt: each <image> expands to its image's count, 2 x 730 image tokens in all.
  const auto tok = consr_runtime::tokenizer::from_directory(dir);
  const std::string text = consr_runtime::render_chat(
      consr_runtime::chat_format::llava_onevision,
      {consr_runtime::chat_message{"user",
                                   {consr_runtime::content_item::image(), consr_runtime::content_item::image(),
                                    consr_runtime::content_item::make_text("What differs?")}}});
  const auto ids = tok.encode(consr_runtime::expand_image_placeholders(consr_runtime::chat_format::llava_onevision, text,
                                                                       two.num_image_tokens));
  const std::int64_t image_id = tok.token_id("<image>");
  CHECK(std::count(ids.begin(), ids.end(), image_id) == 1460);

  // pack: one tile is an image of a multi-image prompt; another count than 1 or 1 + grid is an error.
  CHECK(proc.pack({two.pixel_values.narrow(0, 0, 1)}, {{233, 410}}).num_image_tokens.at(0) == 730);
  CHECK_THROWS_WITH(proc.pack({torch::zeros({2, 3, 384, 384})}, {{233, 410}}), Catch::Contains("one of several images"));
}

TEST_CASE("vision workload and chunked attention memory of one image", "[processors][memory]") {
  const auto qcfg = consr_runtime::load_model_config(models_dir + "/qwen2_5_vl_tiny");
  const auto qwen = consr_runtime::make_image_processor(qcfg, models_dir + "/qwen2_5_vl_tiny");
  REQUIRE(qcfg.qwen2_5_vl->vision.num_heads == 2);
  constexpr std::int64_t default_budget = std::int64_t{1} << 26;
  // 10000 x 10000 at the hub's max_pixels 12,845,056: 3556 x 3556 pixels, 254² = 64,516 patches in one
  // full-attention sequence, 16,129 image tokens.
  const auto w = qwen->workload(10000, 10000);
  CHECK(w.sequences == 1);
  CHECK(w.sequence_length == 64516);
  CHECK(w.image_tokens == 16129);
  // Unchunked (a budget of all 2 x 64,516² scores): 66.6 GB, the 33.3 GB fp32 score tensor the issue
  // saw allocated and its softmax beside it; the old estimate, which refused this image on a machine
  // of less memory.
  CHECK(consr_runtime::vision_attention_bytes(qcfg, w, 2 * 64516LL * 64516LL) == 2.0 * 64516.0 * 64516.0 * 8.0);
  // With the default budget of 2^26 scores: 2^26 / (2 heads x 64,516 keys) = 520 queries per chunk
  // (2 x 520 x 64,516 = 67,096,640 <= 67,108,864 < 2 x 521 x 64,516), 0.54 GB.
  CHECK(consr_runtime::vision_attention_bytes(qcfg, w, default_budget) == 2.0 * 520.0 * 64516.0 * 8.0);
  // A budget below one query row of all heads still computes one query at a time.
  CHECK(consr_runtime::vision_attention_bytes(qcfg, w, 1000) == 2.0 * 1.0 * 64516.0 * 8.0);
  const auto small = qwen->workload(101, 159);  // 112 x 168: 8 x 12 patches
  CHECK(small.sequence_length == 96);
  CHECK(small.image_tokens == 24);
  CHECK_THROWS_AS(qwen->workload(5, 5), consr_runtime::runtime_error);
  // One chunk (the budget holds all 2 x 96² scores), or 192 / (2 x 96) = 1 query, or 1919 / 192 = 9.
  CHECK(consr_runtime::vision_attention_bytes(qcfg, small, default_budget) == 2.0 * 96.0 * 96.0 * 8.0);
  CHECK(consr_runtime::vision_attention_bytes(qcfg, small, 192) == 2.0 * 1.0 * 96.0 * 8.0);
  CHECK(consr_runtime::vision_attention_bytes(qcfg, small, 1919) == 2.0 * 9.0 * 96.0 * 8.0);

  // Without a budget argument: the runtime's, from CONSR_ATTENTION_CHUNK_ELEMENTS or 2^26.
  {
    const char* saved = std::getenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
    const std::string saved_value = saved ? saved : "";
    ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
    CHECK(consr_runtime::vision_attention_bytes(qcfg, w) == 2.0 * 520.0 * 64516.0 * 8.0);
    ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", "192", 1);
    CHECK(consr_runtime::vision_attention_bytes(qcfg, small) == 2.0 * 1.0 * 96.0 * 8.0);
    ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", "lots", 1);
    CHECK_THROWS_WITH(consr_runtime::vision_attention_bytes(qcfg, small), Catch::Contains("CONSR_ATTENTION_CHUNK_ELEMENTS"));
    if (saved) ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", saved_value.c_str(), 1);
    else ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
  }

  const auto lcfg = consr_runtime::load_model_config(models_dir + "/llava_onevision_tiny");
  const auto llava = consr_runtime::make_image_processor(lcfg, models_dir + "/llava_onevision_tiny");
  const auto lw = llava->workload(233, 410);
  CHECK(lw.sequences == 3);  // base + 1 x 2 grid
  CHECK(lw.sequence_length == 729);
  CHECK(lw.image_tokens == 2052);
  // The 3 tiles attend in one batch: rows = heads x 3. The default budget holds them in one chunk;
  // a budget of 10 query rows of all tiles and heads holds 10.
  const double lheads = static_cast<double>(lcfg.llava_onevision->vision.num_attention_heads);
  CHECK(consr_runtime::vision_attention_bytes(lcfg, lw, default_budget) == lheads * 3.0 * 729.0 * 729.0 * 8.0);
  const std::int64_t ten_rows = static_cast<std::int64_t>(lheads) * 3 * 729 * 10;
  CHECK(consr_runtime::vision_attention_bytes(lcfg, lw, ten_rows) == lheads * 3.0 * 10.0 * 729.0 * 8.0);
  CHECK(consr_runtime::vision_attention_bytes(lcfg, lw, ten_rows - 1) == lheads * 3.0 * 9.0 * 729.0 * 8.0);
}

TEST_CASE("LLaVA-OneVision processor rejects bad arguments with named errors", "[processors]") {
  const auto proc = consr_runtime::llava_onevision_image_processor::from_directory(models_dir + "/llava_onevision_tiny");
  try {
    proc.pack({torch::zeros({2, 3, 384, 384})}, {{233, 410}});  // needs 3 tiles
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "'normalized[0]'"));
  }
  CHECK_THROWS_AS(proc.pack({torch::zeros({3, 3, 384, 384})}, {}), consr_runtime::runtime_error);
  CHECK_THROWS_AS(proc.pack({torch::zeros({3, 3, 380, 384})}, {{233, 410}}), consr_runtime::runtime_error);
  CHECK_THROWS_AS(proc.pack({torch::zeros({3, 3, 384, 384})}, {{0, 410}}), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::parse_llava_onevision_processor_config("{\"size\": {\"height\": 384, \"width\": 300}}"),
                  consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::parse_llava_onevision_processor_config("{\"image_grid_pinpoints\": [[384]]}"),
                  consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::llava_onevision_image_processor::from_directory(models_dir + "/qwen2_5_vl_tiny"),
                  consr_runtime::runtime_error);
}

TEST_CASE("processors load transformers 5.x processor_config.json (settings nested under image_processor)",
          "[processors]") {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / "consr_test_processor_config_layout";
  for (const char* model : {"qwen2_5_vl_tiny", "llava_onevision_tiny"}) {
    const fs::path src = fs::path(models_dir) / model, dst = root / model;
    fs::remove_all(dst);
    fs::create_directories(dst);
    fs::copy_file(src / "config.json", dst / "config.json");
    std::ifstream in(src / "preprocessor_config.json");
    const nlohmann::json settings = nlohmann::json::parse(in);
    std::ofstream(dst / "processor_config.json") << nlohmann::json{{"image_processor", settings}}.dump(1);
    REQUIRE_FALSE(fs::exists(dst / "preprocessor_config.json"));
  }
  // Before the fix these threw "cannot read .../preprocessor_config.json".
  const auto q_new = consr_runtime::qwen2_vl_image_processor::from_file((root / "qwen2_5_vl_tiny").string());
  const auto q_old = consr_runtime::qwen2_vl_image_processor::from_file(models_dir + "/qwen2_5_vl_tiny");
  CHECK(q_new.config().min_pixels == q_old.config().min_pixels);
  CHECK(q_new.config().max_pixels == q_old.config().max_pixels);
  CHECK((q_new.config().image_mean == q_old.config().image_mean));
  const auto l_new =
      consr_runtime::llava_onevision_image_processor::from_directory((root / "llava_onevision_tiny").string());
  const auto l_old = consr_runtime::llava_onevision_image_processor::from_directory(models_dir + "/llava_onevision_tiny");
  CHECK((l_new.config().image_grid_pinpoints == l_old.config().image_grid_pinpoints));
  CHECK((l_new.config().image_mean == l_old.config().image_mean));
  // Neither file: one error naming both.
  fs::remove(root / "qwen2_5_vl_tiny" / "processor_config.json");
  CHECK_THROWS_WITH(consr_runtime::qwen2_vl_image_processor::from_file((root / "qwen2_5_vl_tiny").string()),
                    Catch::Contains("preprocessor_config.json") && Catch::Contains("processor_config.json"));
  fs::remove_all(root);
}
