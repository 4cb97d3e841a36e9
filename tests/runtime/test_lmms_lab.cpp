// LLaVA-OneVision in the lmms-lab layout (LLaVA-NeXT's LlavaQwenForCausalLM, the checkpoint the
// paper trained): the tiny llava-hf fixture is converted here to that layout — LLaVA-NeXT's tensor
// names, a flat Qwen2 config.json with the mm_* keys, bf16 weights in two shards with an index, the
// SigLIP preprocessor_config.json — and must load to exactly the logits of the llava-hf model with
// its weights rounded to bf16. Also: the config of the real 7B checkpoint parses to
// SigLIP-so400m without its last layer, and bad configs / a missing tensor are named; the lmms-lab
// tokenizer (Qwen2's, no "<image>") gets "<image>" / "<video>" at the config's ids.
#include "runtime_test_support.hpp"

#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/model_io.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"

using namespace consr_runtime;
using runtime_test::temp_dir;
using runtime_test::thrown;
using json = nlohmann::json;

namespace {

const std::string llava_dir = runtime_test::models_dir + "/llava_onevision_tiny";

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// The model's in-memory (transformers 5) names → LLaVA-NeXT's names in an lmms-lab checkpoint.
std::string lmms_name(const std::string& name) {
  const std::vector<std::pair<std::string, std::string>> map{
      {"model.language_model.", "model."},
      {"model.vision_tower.vision_model.", "model.vision_tower.vision_tower.vision_model."},
      {"model.multi_modal_projector.linear_1.", "model.mm_projector.0."},
      {"model.multi_modal_projector.linear_2.", "model.mm_projector.2."},
      {"model.image_newline", "model.image_newline"},
      {"lm_head.", "lm_head."}};
  for (const auto& [from, to] : map)
    if (starts_with(name, from)) return to + name.substr(from.size());
  FAIL("no lmms-lab name for '" << name << "'");
  return "";
}

// transformers' convert_llava_onevision_weights_to_hf.py turns an lmms-lab name into the legacy
// llava-hf name by applying its KEYS_TO_MODIFY_MAPPING in order, each as Python's str.replace (all
// occurrences). Used to check that the names written here are the ones that script converts.
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}
std::string hf_conversion(std::string key) {
  const std::vector<std::pair<std::string, std::string>> steps{
      {"model.vision_tower.", ""},
      {"model.mm_projector", "multi_modal_projector"},
      {"model", "model.model"},
      {"vision_model.model", "vision_model"},
      {"lm_head", "language_model.lm_head"},
      {"model.model", "language_model.model"},
      {"multi_modal_projector.0", "multi_modal_projector.linear_1"},
      {"multi_modal_projector.2", "multi_modal_projector.linear_2"},
      {"language_model.model.image_newline", "image_newline"}};
  for (const auto& [from, to] : steps)
    if (key.find(from) != std::string::npos) key = replace_all(key, from, to);
  return key;
}

// An lmms-lab config.json for the tiny fixture: the flat Qwen2 text keys, the mm_* keys of
// LLaVA-NeXT's LlavaQwenConfig, and (since the tiny tower is not SigLIP-so400m) its vision_config.
json lmms_config(const json& hf) {
  const json& t = hf.at("text_config");
  json c = {{"architectures", {"LlavaQwenForCausalLM"}},
            {"model_type", "llava"},
            {"hidden_act", t.at("hidden_act")},
            {"hidden_size", t.at("hidden_size")},
            {"intermediate_size", t.at("intermediate_size")},
            {"num_hidden_layers", t.at("num_hidden_layers")},
            {"num_attention_heads", t.at("num_attention_heads")},
            {"num_key_value_heads", t.at("num_key_value_heads")},
            {"max_position_embeddings", t.at("max_position_embeddings")},
            {"rms_norm_eps", t.at("rms_norm_eps")},
            {"rope_theta", t.at("rope_parameters").at("rope_theta")},
            {"rope_scaling", nullptr},
            {"vocab_size", t.at("vocab_size")},
            {"bos_token_id", t.at("bos_token_id")},
            {"eos_token_id", t.at("eos_token_id")},
            {"tie_word_embeddings", false},
            {"use_sliding_window", false},
            {"torch_dtype", "bfloat16"},
            {"image_token_index", hf.at("image_token_index")},
            {"image_aspect_ratio", "anyres_max_9"},
            {"image_grid_pinpoints", "(1x1),...,(6x6)"},
            {"mm_hidden_size", hf.at("vision_config").at("hidden_size")},
            {"mm_patch_merge_type", "spatial_unpad"},
            {"mm_projector_type", "mlp2x_gelu"},
            {"mm_spatial_pool_mode", "bilinear"},
            {"mm_use_im_patch_token", false},
            {"mm_use_im_start_end", false},
            {"mm_vision_select_feature", "patch"},
            {"mm_vision_select_layer", -2},
            {"mm_vision_tower", "google/siglip-so400m-patch14-384"},
            {"vision_config", hf.at("vision_config")}};
  return c;
}

// Writes the converted checkpoint: bf16, two shards (vision tower + projector, then the decoder),
// model.safetensors.index.json, config.json, the SigLIP preprocessor_config.json lmms-lab ships.
// `drop`: a tensor left out (for the error test).
void write_lmms_checkpoint(const std::string& dir, const vision_language_model& hf, const json& config,
                          const std::string& drop = "") {
  std::vector<std::pair<std::string, torch::Tensor>> shard[2];
  json weight_map = json::object();
  std::int64_t total = 0;
  const std::string files[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  for (const auto& [name, tensor] : hub_state_dict(hf, hub_naming::transformers5)) {
    const std::string n = lmms_name(name);
    if (n == drop) continue;
    const int s = starts_with(n, "model.layers.") || starts_with(n, "model.embed_tokens") || starts_with(n, "model.norm") ||
                          starts_with(n, "lm_head.")
                      ? 1
                      : 0;
    shard[s].emplace_back(n, tensor.detach().to(torch::kBFloat16));
    weight_map[n] = files[s];
    total += tensor.numel() * 2;
  }
  REQUIRE(!shard[0].empty());
  REQUIRE(!shard[1].empty());
  for (int s = 0; s < 2; ++s) save_safetensors(dir + "/" + files[s], shard[s], {{"format", "pt"}});
  write_json_file(dir + "/model.safetensors.index.json",
                  nlohmann::ordered_json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  write_json_file(dir + "/config.json", nlohmann::ordered_json(config));
  write_json_file(dir + "/preprocessor_config.json",
                  nlohmann::ordered_json{{"do_normalize", true},
                                         {"do_rescale", true},
                                         {"do_resize", true},
                                         {"image_mean", {0.5, 0.5, 0.5}},
                                         {"image_processor_type", "SiglipImageProcessor"},
                                         {"image_std", {0.5, 0.5, 0.5}},
                                         {"processor_class", "SiglipProcessor"},
                                         {"resample", 3},
                                         {"rescale_factor", 0.00392156862745098},
                                         {"size", {{"height", 384}, {"width", 384}}}});
}

json hf_config() { return runtime_test::read_json(llava_dir + "/config.json"); }

}  // namespace

TEST_CASE("lmms-lab: the converted names are the ones transformers' conversion script maps", "[lmms_lab]") {
  auto hf = llava_onevision_model::load(llava_dir);
  std::set<std::string> legacy;
  for (const auto& [name, t] : hub_state_dict(*hf, hub_naming::transformers5)) {
    (void)t;
    legacy.insert(hf_conversion(lmms_name(name)));
  }
  // The legacy llava-hf names the conversion writes (runtime facts §3e).
  CHECK(legacy.count("language_model.model.embed_tokens.weight") == 1);
  CHECK(legacy.count("language_model.model.layers.0.self_attn.q_proj.weight") == 1);
  CHECK(legacy.count("language_model.lm_head.weight") == 1);
  CHECK(legacy.count("vision_tower.vision_model.embeddings.patch_embedding.weight") == 1);
  CHECK(legacy.count("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight") == 1);
  CHECK(legacy.count("multi_modal_projector.linear_1.weight") == 1);
  CHECK(legacy.count("multi_modal_projector.linear_2.bias") == 1);
  CHECK(legacy.count("image_newline") == 1);
  for (const auto& n : legacy)
    CHECK((starts_with(n, "language_model.") || starts_with(n, "vision_tower.vision_model.") ||
           starts_with(n, "multi_modal_projector.linear_") || n == "image_newline"));
}

TEST_CASE("lmms-lab: a sharded bf16 lmms-lab checkpoint gives the logits of the bf16-rounded llava-hf model",
          "[lmms_lab]") {
  temp_dir dir("consr_lmms_lab");
  auto hf = llava_onevision_model::load(llava_dir);
  write_lmms_checkpoint(dir.path.string(), *hf, lmms_config(hf_config()));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : hf->parameters()) p.copy_(p.to(torch::kBFloat16).to(torch::kFloat32));
  }
  const model_config cfg = load_model_config(dir.path.string());
  REQUIRE(cfg.llava_onevision);
  CHECK(cfg.model_type == "llava_onevision");
  CHECK(cfg.llava_onevision->checkpoint_layout == "lmms-lab");
  CHECK(cfg.text().model_type == "qwen2");
  const bool same_pinpoints = cfg.llava_onevision->image_grid_pinpoints == hf->config().llava_onevision->image_grid_pinpoints;
  CHECK(same_pinpoints);

  auto lmms = load_model(dir.path.string());
  REQUIRE(dynamic_cast<llava_onevision_model*>(lmms.get()) != nullptr);
  CHECK(lmms->language_model_hub_prefix() == "model.");
  // Every parameter holds the bf16 value of the llava-hf one, under the same in-memory name.
  auto ref = hf->named_parameters();
  std::size_t n = 0;
  for (const auto& p : lmms->named_parameters()) {
    INFO(p.key());
    REQUIRE(ref.contains(p.key()));
    CHECK(p.value().equal(ref[p.key()]));
    ++n;
  }
  CHECK(n == ref.size());

  // The same prompt and image through each directory's processor (the lmms-lab one reads the SigLIP
  // preprocessor_config.json and the "(1x1),...,(6x6)" pinpoints).
  const json meta = runtime_test::read_json(llava_dir + "/reference.json");
  const rgb_image image = load_image(llava_dir + "/" + meta["prompt_images"][0].get<std::string>());
  const auto packed_hf = llava_onevision_image_processor::from_directory(llava_dir)({image});
  const auto packed = llava_onevision_image_processor::from_directory(dir.path.string())({image});
  CHECK(packed.pixel_values.equal(packed_hf.pixel_values));
  CHECK(packed.num_image_tokens == packed_hf.num_image_tokens);
  safetensors_file reference(llava_dir + "/reference.safetensors");
  model_inputs in;
  in.input_ids = reference.load("prompt_input_ids");
  in.images.pixel_values = packed.pixel_values;
  in.images.image_sizes = packed.image_sizes;
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = lmms->forward(in), expected = hf->forward(in);
  CHECK(expected.abs().max().item<double>() > 0.05);
  CHECK(logits.equal(expected));

  // Loaded in bf16, the weights are the stored ones and the logits those of the llava-hf checkpoint in bf16.
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  auto lmms16 = load_model(dir.path.string(), bf16);
  auto hf16 = load_model(llava_dir, bf16);
  CHECK(lmms16->forward(in).equal(hf16->forward(in)));
}

TEST_CASE("lmms-lab: a missing tensor is named as LLaVA-NeXT names it", "[lmms_lab]") {
  temp_dir dir("consr_lmms_lab");
  auto hf = llava_onevision_model::load(llava_dir);
  write_lmms_checkpoint(dir.path.string(), *hf, lmms_config(hf_config()), "model.mm_projector.2.bias");
  const std::string e = thrown([&] { (void)load_model(dir.path.string()); });
  CHECK_THAT(e, Catch::Contains("missing tensors") && Catch::Contains("'model.mm_projector.2.bias'") &&
                    Catch::Contains("model.multi_modal_projector.linear_2.bias"));
}

TEST_CASE("lmms-lab: the 7B checkpoint's config.json is SigLIP-so400m without its last layer", "[lmms_lab]") {
  // The keys of lmms-lab/llava-onevision-qwen2-7b-ov's config.json that the runtime reads (the
  // pinpoints shortened to 4 of its 36 pairs).
  json c = {{"architectures", {"LlavaQwenForCausalLM"}},
            {"model_type", "llava"},
            {"hidden_size", 3584},
            {"intermediate_size", 18944},
            {"num_hidden_layers", 28},
            {"num_attention_heads", 28},
            {"num_key_value_heads", 4},
            {"max_position_embeddings", 32768},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 1000000.0},
            {"rope_scaling", nullptr},
            {"vocab_size", 152064},
            {"tie_word_embeddings", false},
            {"image_aspect_ratio", "anyres_max_9"},
            {"image_grid_pinpoints", {{384, 384}, {384, 768}, {768, 384}, {2304, 2304}}},
            {"mm_hidden_size", 1152},
            {"mm_patch_merge_type", "spatial_unpad"},
            {"mm_projector_type", "mlp2x_gelu"},
            {"mm_vision_select_layer", -2},
            {"mm_vision_tower", "google/siglip-so400m-patch14-384"}};
  const model_config cfg = parse_model_config(c.dump(), "lmms/config.json");
  REQUIRE(cfg.llava_onevision);
  const auto& l = *cfg.llava_onevision;
  CHECK(cfg.model_type == "llava_onevision");
  CHECK(l.checkpoint_layout == "lmms-lab");
  CHECK(l.vision.hidden_size == 1152);
  CHECK(l.vision.intermediate_size == 4304);
  CHECK(l.vision.num_hidden_layers == 26);
  CHECK(l.vision.num_attention_heads == 16);
  CHECK(l.vision.image_size == 384);
  CHECK(l.vision.patch_size == 14);
  CHECK(l.vision_feature_layer.size() == 1);
  CHECK(l.vision_feature_layer.at(0) == -1);
  CHECK(l.vision_feature_select_strategy == "full");
  CHECK(l.image_token_index == 151646);
  CHECK(l.text.hidden_size == 3584);
  CHECK(l.text.num_key_value_heads == 4);
  CHECK(l.text.rope_theta == 1e6);
  CHECK(l.image_grid_pinpoints.size() == 4);
  CHECK(l.image_grid_pinpoints.back()[0] == 2304);
  CHECK(l.image_grid_pinpoints.back()[1] == 2304);

  SECTION("the (AxB) range string expands as LLaVA-NeXT does, times the tile size") {
    c["image_grid_pinpoints"] = "(1x1),...,(2x3)";
    const auto p = parse_model_config(c.dump(), "x").llava_onevision->image_grid_pinpoints;
    const std::vector<std::array<std::int64_t, 2>> expected{{384, 384}, {384, 768}, {384, 1152},
                                                            {768, 384}, {768, 768}, {768, 1152}};
    const bool same = p == expected;
    CHECK(same);
  }
  SECTION("what the runtime does not implement is an error naming the key") {
    const std::vector<std::tuple<std::string, json, std::string>> bad{
        {"mm_projector_type", "linear", "key 'mm_projector_type'"},
        {"mm_patch_merge_type", "flat", "key 'mm_patch_merge_type'"},
        {"image_aspect_ratio", "pad", "key 'image_aspect_ratio'"},
        {"mm_vision_tower", "openai/clip-vit-large-patch14-336", "key 'mm_vision_tower'"},
        {"mm_hidden_size", 1024, "key 'mm_hidden_size'"},
        {"mm_use_im_start_end", true, "key 'mm_use_im_start_end'"},
        {"image_grid_pinpoints", "1x1,6x6", "key 'image_grid_pinpoints'"}};
    for (const auto& [key, value, expect] : bad) {
      json b = c;
      b[key] = value;
      INFO(key);
      CHECK_THAT(thrown([&] { (void)parse_model_config(b.dump(), "lmms/config.json"); }),
                 Catch::Contains(expect) && Catch::Contains("lmms/config.json"));
    }
    json b = c;
    b.erase("mm_vision_tower");
    CHECK_THAT(thrown([&] { (void)parse_model_config(b.dump(), "lmms/config.json"); }),
               Catch::Contains("key 'mm_vision_tower'") && Catch::Contains("missing"));
  }
}

TEST_CASE("lmms-lab: the Qwen2 tokenizer of the directory gets <image> and <video> at the config's ids", "[lmms_lab]") {
  temp_dir dir("consr_lmms_lab");
  json config = lmms_config(hf_config());
  write_json_file(dir.file("config.json"), nlohmann::ordered_json(config));
  // The fixture's tokenizer.json without its <image> / <video> added tokens, as lmms-lab ships Qwen2's.
  json tok = runtime_test::read_json(llava_dir + "/tokenizer.json");
  json kept = json::array();
  for (const auto& t : tok["added_tokens"])
    if (t["content"] != "<image>" && t["content"] != "<video>") kept.push_back(t);
  REQUIRE(kept.size() + 2 == tok["added_tokens"].size());
  tok["added_tokens"] = kept;
  dir.write("tokenizer.json", tok.dump());
  CHECK(!tokenizer::from_file(dir.file("tokenizer.json")).find_token("<image>"));

  const tokenizer hf = tokenizer::from_directory(llava_dir), lmms = tokenizer::from_directory(dir.path.string());
  CHECK(lmms.token_id("<image>") == 1608);  // the config's image_token_index
  CHECK(lmms.token_id("<video>") == 1609);
  CHECK(lmms.is_special(1608));
  const std::string prompt = "<|im_start|>user\n<image><image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n";
  CHECK(lmms.encode(prompt) == hf.encode(prompt));
  CHECK(lmms.decode(lmms.encode(prompt), true) == hf.decode(hf.encode(prompt), true));

  // An id the tokenizer already uses is an error naming the file and the id.
  config["image_token_index"] = 1602;
  write_json_file(dir.file("config.json"), nlohmann::ordered_json(config));
  CHECK_THAT(thrown([&] { (void)tokenizer::from_directory(dir.path.string()); }),
             Catch::Contains("tokenizer.json") && Catch::Contains("'<image>' at id 1602"));
}
