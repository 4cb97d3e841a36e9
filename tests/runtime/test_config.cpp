// config.json parsing: both layouts of Qwen2.5-VL (flat hub file, nested transformers-5 file),
// LLaVA-OneVision (nested), RoPE in rope_scaling / rope_parameters, and bad input; image-processor
// settings in preprocessor_config.json or transformers 5.x's processor_config.json.
// processors.hpp pulls in LibTorch, whose glog CHECK(condition) would shadow Catch's CHECK: Catch must win.
#include "consr_runtime/processors.hpp"
#undef CHECK
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"

using consr_runtime::load_model_config;
using consr_runtime::model_config;
using consr_runtime::parse_model_config;
using consr_runtime::runtime_error;

namespace {

// As the Qwen2.5-VL-7B-Instruct hub file: text keys at the top level, legacy rope_scaling, in_chans.
const char* qwen_flat = R"({
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "bos_token_id": 151643, "eos_token_id": 151645,
  "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
  "image_token_id": 151655, "video_token_id": 151656,
  "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
  "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
  "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
    "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 152064
})";

// As transformers 5.24 writes it: nested text_config with rope_parameters, in_channels.
const char* qwen_nested = R"({
  "image_token_id": 151655, "model_type": "qwen2_5_vl",
  "text_config": {"bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 64,
    "intermediate_size": 128, "max_position_embeddings": 4096, "model_type": "qwen2_5_vl_text",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 1000000.0, "rope_type": "default", "type": "mrope"},
    "sliding_window": null, "vocab_size": 300, "tie_word_embeddings": true},
  "tie_word_embeddings": false, "transformers_version": "5.24.0", "video_token_id": 151656,
  "vision_config": {"depth": 2, "fullatt_block_indexes": [1], "hidden_act": "silu", "hidden_size": 32,
    "in_channels": 3, "intermediate_size": 48, "model_type": "qwen2_5_vl_vision", "num_heads": 2,
    "out_hidden_size": 64, "patch_size": 14,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
    "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112},
  "vision_end_token_id": 151653, "vision_start_token_id": 151652
})";

// LLaVA-OneVision (llava-hf layout): nested text_config without rope_parameters, few vision keys.
const char* llava_nested = R"({
  "architectures": ["LlavaOnevisionForConditionalGeneration"],
  "image_grid_pinpoints": [[384, 384], [384, 768], [768, 384]],
  "image_token_index": 151646, "video_token_index": 151647, "model_type": "llava_onevision",
  "projector_hidden_act": "gelu", "multimodal_projector_bias": true,
  "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 152128, "eos_token_id": [151645, 151643]},
  "tie_word_embeddings": false, "vision_aspect_ratio": "anyres_max_9",
  "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
    "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 26,
    "patch_size": 14, "vision_use_head": false},
  "vision_feature_layer": -1, "vision_feature_select_strategy": "full"
})";

std::string replace(std::string text, const std::string& from, const std::string& to) {
  auto pos = text.find(from);
  REQUIRE(pos != std::string::npos);
  return text.replace(pos, from.size(), to);
}

// The message of the runtime_error thrown by parse_model_config(text, "x/config.json").
std::string parse_error(const std::string& text) {
  try {
    parse_model_config(text, "x/config.json");
  } catch (const runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("config: Qwen2.5-VL flat hub layout", "[config]") {
  model_config c = parse_model_config(qwen_flat, "hub/config.json");
  REQUIRE(c.model_type == "qwen2_5_vl");
  REQUIRE(c.qwen2_5_vl.has_value());
  REQUIRE_FALSE(c.llava_onevision.has_value());
  const auto& t = c.text();
  CHECK(t.vocab_size == 152064);
  CHECK(t.hidden_size == 3584);
  CHECK(t.intermediate_size == 18944);
  CHECK(t.num_hidden_layers == 28);
  CHECK(t.num_attention_heads == 28);
  CHECK(t.num_key_value_heads == 4);
  CHECK(t.head_dim == 128);
  CHECK(t.rms_norm_eps == 1e-6);
  CHECK(t.rope_theta == 1e6);
  CHECK(t.mrope_section == std::vector<std::int64_t>{16, 24, 24});
  CHECK(t.max_position_embeddings == 128000);
  CHECK_FALSE(t.tie_word_embeddings);
  CHECK(t.bos_token_id == 151643);
  CHECK(t.eos_token_ids == std::vector<std::int64_t>{151645});
  const auto& v = c.qwen2_5_vl->vision;
  CHECK(v.depth == 32);
  CHECK(v.hidden_size == 1280);
  CHECK(v.intermediate_size == 3420);
  CHECK(v.num_heads == 16);
  CHECK(v.in_channels == 3);
  CHECK(v.out_hidden_size == 3584);
  CHECK(v.window_size == 112);
  CHECK(v.tokens_per_second == 2);
  CHECK(v.fullatt_block_indexes == std::vector<std::int64_t>{7, 15, 23, 31});
  CHECK(c.image_token_id() == 151655);
  CHECK(c.qwen2_5_vl->vision_start_token_id == 151652);
  CHECK(c.qwen2_5_vl->vision_end_token_id == 151653);
  CHECK(c.qwen2_5_vl->video_token_id == 151656);
  CHECK(c.source == "hub/config.json");
}

TEST_CASE("config: Qwen2.5-VL nested transformers-5 layout", "[config]") {
  model_config c = parse_model_config(qwen_nested);
  const auto& t = c.text();
  CHECK(t.model_type == "qwen2_5_vl_text");
  CHECK(t.vocab_size == 300);
  CHECK(t.hidden_size == 64);
  CHECK(t.head_dim == 16);
  CHECK(t.num_key_value_heads == 2);
  CHECK(t.mrope_section == std::vector<std::int64_t>{2, 3, 3});
  CHECK(t.rope_theta == 1e6);
  CHECK(t.max_position_embeddings == 4096);
  // transformers 5 ties when either the top-level or the pre-v5 text_config value says so.
  CHECK(t.tie_word_embeddings);
  CHECK(c.qwen2_5_vl->vision.fullatt_block_indexes == std::vector<std::int64_t>{1});
  CHECK(c.qwen2_5_vl->vision.tokens_per_second == 2);

  SECTION("newer rope_scaling spelling: rope_type default + mrope_section, rope_theta beside it") {
    std::string text = replace(qwen_flat, R"("rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]})",
                               R"("rope_scaling": {"rope_type": "default", "mrope_section": [16, 24, 24]})");
    model_config d = parse_model_config(text);
    CHECK(d.text().mrope_section == std::vector<std::int64_t>{16, 24, 24});
    CHECK(d.text().rope_theta == 1e6);
  }
  SECTION("explicit head_dim wins over hidden/heads") {
    std::string text = replace(qwen_nested, R"("num_hidden_layers": 2,)", R"("num_hidden_layers": 2, "head_dim": 32,)");
    text = replace(text, "[2, 3, 3]", "[4, 6, 6]");
    CHECK(parse_model_config(text).text().head_dim == 32);
  }
  SECTION("missing mrope_section falls back to HF's [16, 24, 24] (and must fit head_dim)") {
    std::string text = replace(qwen_flat, R"(, "mrope_section": [16, 24, 24])", "");
    CHECK(parse_model_config(text).text().mrope_section == std::vector<std::int64_t>{16, 24, 24});
  }
}

TEST_CASE("config: LLaVA-OneVision nested layout and defaults", "[config]") {
  model_config c = parse_model_config(llava_nested);
  REQUIRE(c.llava_onevision.has_value());
  const auto& l = *c.llava_onevision;
  CHECK(l.text.vocab_size == 152128);
  CHECK(l.text.model_type == "qwen2");
  CHECK(l.text.rope_theta == 1e6);
  CHECK(l.text.mrope_section.empty());
  CHECK(l.text.eos_token_ids == std::vector<std::int64_t>{151645, 151643});
  CHECK(l.text.head_dim == 128);
  CHECK(l.vision.hidden_size == 1152);
  CHECK(l.vision.num_hidden_layers == 26);
  CHECK(l.vision.image_size == 384);
  CHECK(l.vision.patch_size == 14);
  CHECK(l.vision.layer_norm_eps == 1e-6);            // SiglipVisionConfig default
  CHECK(l.vision.hidden_act == "gelu_pytorch_tanh");  // SiglipVisionConfig default
  CHECK(c.image_token_id() == 151646);
  CHECK(l.video_token_index == 151647);
  REQUIRE(l.image_grid_pinpoints.size() == 3);
  CHECK(l.image_grid_pinpoints[1] == std::array<std::int64_t, 2>{384, 768});
  CHECK(l.vision_feature_layer == std::vector<std::int64_t>{-1});
  CHECK(l.vision_feature_select_strategy == "full");
  CHECK(l.vision_aspect_ratio == "anyres_max_9");
  CHECK(l.projector_hidden_act == "gelu");
  CHECK(l.multimodal_projector_bias);

  SECTION("rope_parameters (transformers 5) and default pinpoints") {
    std::string text = replace(llava_nested, R"("rope_theta": 1000000.0,)",
                               R"("rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"},)");
    text = replace(text, R"("image_grid_pinpoints": [[384, 384], [384, 768], [768, 384]],)", "");
    model_config d = parse_model_config(text);
    CHECK(d.text().rope_theta == 5000.0);
    REQUIRE(d.llava_onevision->image_grid_pinpoints.size() == 36);
    CHECK(d.llava_onevision->image_grid_pinpoints.back() == std::array<std::int64_t, 2>{2304, 2304});
  }
  SECTION("vision_feature_layer as a list") {
    std::string text = replace(llava_nested, R"("vision_feature_layer": -1)", R"("vision_feature_layer": [-2, -1])");
    CHECK(parse_model_config(text).llava_onevision->vision_feature_layer == std::vector<std::int64_t>{-2, -1});
  }
}

TEST_CASE("config: bad input names the key and the file", "[config]") {
  SECTION("missing required text key (flat)") {
    std::string msg = parse_error(replace(qwen_flat, R"("hidden_size": 3584, )", ""));
    CHECK_THAT(msg, Catch::Contains("'hidden_size'") && Catch::Contains("x/config.json") && Catch::Contains("missing"));
  }
  SECTION("missing required key inside text_config") {
    std::string msg = parse_error(replace(llava_nested, R"("vocab_size": 152128,)", ""));
    CHECK_THAT(msg, Catch::Contains("'text_config.vocab_size'") && Catch::Contains("x/config.json"));
  }
  SECTION("missing vision key") {
    std::string msg = parse_error(replace(qwen_nested, R"("depth": 2, )", ""));
    CHECK_THAT(msg, Catch::Contains("'vision_config.depth'"));
  }
  SECTION("LLaVA without text_config") {
    std::string text = llava_nested;
    auto a = text.find("\"text_config\"");
    auto b = text.find("\"tie_word_embeddings\"");
    text.erase(a, b - a);
    CHECK_THAT(parse_error(text), Catch::Contains("'text_config'") && Catch::Contains("missing"));
  }
  SECTION("wrong types") {
    CHECK_THAT(parse_error(replace(qwen_flat, R"("num_hidden_layers": 28)", R"("num_hidden_layers": "28")")),
               Catch::Contains("'num_hidden_layers'") && Catch::Contains("integer"));
    CHECK_THAT(parse_error(replace(qwen_flat, R"("hidden_size": 3584)", R"("hidden_size": 3584.5)")),
               Catch::Contains("'hidden_size'"));
    CHECK_THAT(parse_error(replace(qwen_flat, R"("tie_word_embeddings": false)", R"("tie_word_embeddings": 0)")),
               Catch::Contains("'tie_word_embeddings'"));
  }
  SECTION("inconsistent dimensions") {
    CHECK_THAT(parse_error(replace(qwen_flat, R"("num_key_value_heads": 4)", R"("num_key_value_heads": 5)")),
               Catch::Contains("'num_key_value_heads'"));
    CHECK_THAT(parse_error(replace(qwen_flat, "[16, 24, 24]", "[16, 24, 23]")), Catch::Contains("mrope_section"));
    CHECK_THAT(parse_error(replace(qwen_nested, R"("out_hidden_size": 64)", R"("out_hidden_size": 63)")),
               Catch::Contains("'vision_config.out_hidden_size'"));
    CHECK_THAT(parse_error(replace(qwen_flat, R"("hidden_act": "silu", "hidden_size")", R"("hidden_act": "gelu", "hidden_size")")),
               Catch::Contains("'hidden_act'"));
  }
  SECTION("unsupported model type, not JSON, not an object") {
    CHECK_THAT(parse_error(replace(qwen_flat, R"("model_type": "qwen2_5_vl")", R"("model_type": "llama")")),
               Catch::Contains("'model_type'") && Catch::Contains("llama"));
    CHECK_THAT(parse_error("{\"model_type\": "), Catch::Contains("x/config.json") && Catch::Contains("not valid JSON"));
    CHECK_THAT(parse_error("[1, 2]"), Catch::Contains("not a JSON object"));
    CHECK_THAT(parse_error("{}"), Catch::Contains("'model_type'"));
  }
  SECTION("unsupported rope type") {
    CHECK_THAT(parse_error(replace(qwen_flat, R"("type": "mrope")", R"("type": "yarn")")), Catch::Contains("yarn"));
  }
}

TEST_CASE("config: a number JSON cannot hold is an error naming the file (fuzz finding)", "[config]") {
  // fuzz_config, build/fuzz/findings/config/crash-f6ad2c27...: nlohmann throws out_of_range (not
  // parse_error) for "1e400", which escaped parse_model_config and terminated the program.
  for (const std::string& text : {std::string(R"({"model_type": "qwen2_5_vl", "hidden_size": 1e400})"),
                                 std::string(R"({"image_grid_pinpoints": [[3841e400, 768]]})"),
                                 std::string(R"({"vocab_size": -1e999})")}) {
    INFO(text);
    try {
      parse_model_config(text, "/models/x/config.json");
      FAIL("expected an error");
    } catch (const runtime_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("/models/x/config.json") && Catch::Contains("not valid JSON"));
    }
  }
}

TEST_CASE("config: load from a directory or a file", "[config]") {
  char tmpl[] = "/tmp/consr_config_XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  std::string dir = tmpl;
  {
    std::ofstream out(dir + "/config.json");
    out << qwen_nested;
  }
  model_config a = load_model_config(dir);
  model_config b = load_model_config(dir + "/config.json");
  CHECK(a.source == dir + "/config.json");
  CHECK(a.text().hidden_size == 64);
  CHECK(b.text().hidden_size == 64);
  std::remove((dir + "/config.json").c_str());
  try {
    load_model_config(dir);
    FAIL("expected an error");
  } catch (const runtime_error& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains(dir + "/config.json"));
  }
  ::rmdir(dir.c_str());
}

// ---- image-processor settings: preprocessor_config.json (legacy) or processor_config.json (5.x) ----

namespace {

std::string read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  REQUIRE(out.good());
  out << text;
}

// What transformers 5.x `ProcessorMixin.save_pretrained` writes: one processor_config.json with each
// sub-processor's settings nested under its attribute name, and no preprocessor_config.json.
std::string processor_config_json(const std::string& image_processor_json) {
  auto j = nlohmann::json::object();
  j["image_processor"] = nlohmann::json::parse(image_processor_json);
  j["processor_class"] = "Qwen2_5_VLProcessor";
  j["video_processor"] = {{"video_processor_type", "Qwen2VLVideoProcessor"}, {"patch_size", 14}};
  return j.dump(2);
}

struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/consr_processor_config_XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    for (const char* f : {"/processor_config.json", "/preprocessor_config.json"}) std::remove((path + f).c_str());
    ::rmdir(path.c_str());
  }
};

}  // namespace

TEST_CASE("image-processor settings load from transformers 5.x processor_config.json as from preprocessor_config.json",
          "[config]") {
  using consr_runtime::load_image_processor_settings;
  const std::string models = std::string(CONSR_FIXTURES_DIR) + "/models";

  SECTION("Qwen2.5-VL: the nested layout gives the same processor config as the legacy file") {
    const std::string legacy = read_file_text(models + "/qwen2_5_vl_tiny/preprocessor_config.json");
    temp_dir d;
    write_file_text(d.path + "/processor_config.json", processor_config_json(legacy));
    const auto s = load_image_processor_settings(d.path);
    CHECK_THAT(s.source, Catch::Contains("processor_config.json") && Catch::Contains("image_processor"));
    const auto got = consr_runtime::parse_qwen2_vl_processor_config(s.json_text, s.source);
    const auto want = consr_runtime::parse_qwen2_vl_processor_config(legacy);
    CHECK(got.min_pixels == want.min_pixels);
    CHECK(got.max_pixels == want.max_pixels);
    CHECK(got.patch_size == want.patch_size);
    CHECK(got.merge_size == want.merge_size);
    CHECK(got.temporal_patch_size == want.temporal_patch_size);
    CHECK(got.image_mean == want.image_mean);
    CHECK(got.image_std == want.image_std);
    CHECK(got.rescale_factor == want.rescale_factor);
    CHECK(got.resample == want.resample);
    // A processor_config.json passed as a file works too.
    const auto f = load_image_processor_settings(d.path + "/processor_config.json");
    CHECK(consr_runtime::parse_qwen2_vl_processor_config(f.json_text, f.source).max_pixels == want.max_pixels);
  }

  SECTION("LLaVA-OneVision: the nested layout gives the same processor config as the legacy file") {
    const std::string legacy = read_file_text(models + "/llava_onevision_tiny/preprocessor_config.json");
    temp_dir d;
    write_file_text(d.path + "/processor_config.json", processor_config_json(legacy));
    const auto s = load_image_processor_settings(d.path);
    const auto got = consr_runtime::parse_llava_onevision_processor_config(s.json_text, s.source);
    const auto want = consr_runtime::parse_llava_onevision_processor_config(legacy);
    CHECK(got.tile_size == want.tile_size);
    CHECK((got.image_grid_pinpoints == want.image_grid_pinpoints));  // not decomposed: glog's operator<< for vectors cannot print arrays
    CHECK(got.image_mean == want.image_mean);
    CHECK(got.image_std == want.image_std);
    CHECK(got.resample == want.resample);
  }

  SECTION("the legacy layout still loads, from a directory or the file") {
    const std::string dir = models + "/qwen2_5_vl_tiny";
    const auto s = load_image_processor_settings(dir);
    CHECK(s.source == dir + "/preprocessor_config.json");
    CHECK(s.json_text == read_file_text(dir + "/preprocessor_config.json"));
    CHECK(load_image_processor_settings(dir + "/preprocessor_config.json").json_text == s.json_text);
  }

  SECTION("priority as in transformers: the nested object first, then preprocessor_config.json") {
    const std::string legacy = read_file_text(models + "/qwen2_5_vl_tiny/preprocessor_config.json");
    auto changed = nlohmann::json::parse(legacy);
    changed["max_pixels"] = 123456;
    changed.erase("size");
    temp_dir d;
    write_file_text(d.path + "/preprocessor_config.json", legacy);
    write_file_text(d.path + "/processor_config.json", processor_config_json(changed.dump()));
    auto s = load_image_processor_settings(d.path);
    CHECK(consr_runtime::parse_qwen2_vl_processor_config(s.json_text, s.source).max_pixels == 123456);
    // A processor_config.json without an image_processor object (older transformers write one with only
    // processor_class) falls back to preprocessor_config.json.
    write_file_text(d.path + "/processor_config.json", R"({"processor_class": "Qwen2_5_VLProcessor"})");
    s = load_image_processor_settings(d.path);
    CHECK(s.source == d.path + "/preprocessor_config.json");
  }

  SECTION("errors name the files") {
    temp_dir d;
    try {
      load_image_processor_settings(d.path);
      FAIL("expected an error");
    } catch (const runtime_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("preprocessor_config.json") && Catch::Contains("processor_config.json"));
    }
    write_file_text(d.path + "/processor_config.json", R"({"image_processor": [1, 2]})");
    CHECK_THROWS_WITH(load_image_processor_settings(d.path), Catch::Contains("image_processor") && Catch::Contains(d.path));
    write_file_text(d.path + "/processor_config.json", R"({"image_processor": )");
    CHECK_THROWS_WITH(load_image_processor_settings(d.path), Catch::Contains("not valid JSON"));
  }
}
