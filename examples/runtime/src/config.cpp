// config.json parsing for Qwen2.5-VL and LLaVA-OneVision (see consr_runtime/config.hpp).
#include "consr_runtime/config.hpp"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "consr_runtime/error.hpp"

namespace consr_runtime {
namespace {

using json = nlohmann::json;

// A JSON object together with the dotted path it sits at and the file it came from, so that
// every error names "key 'text_config.hidden_size' in /path/config.json".
struct object_ref {
  const json& node;
  std::string path;  // "" at the top level, else "text_config." etc.
  const std::string& source;

  std::string key_name(const std::string& key) const { return path + key; }

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw runtime_error("consr_runtime::parse_model_config: key '" + key_name(key) + "' in " + source + ": " +
                        message);
  }

  // A key whose value is null counts as absent (HF writes "head_dim": null etc.).
  const json* find(const std::string& key) const {
    auto it = node.find(key);
    if (it == node.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(const std::string& key) const { return find(key) != nullptr; }

  std::int64_t integer_of(const std::string& key, const json& v) const {
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + v.dump());
    return v.get<std::int64_t>();
  }
  std::int64_t get_int(const std::string& key) const {
    const json* v = find(key);
    if (!v) fail(key, "missing (required)");
    return integer_of(key, *v);
  }
  std::int64_t get_int(const std::string& key, std::int64_t fallback) const {
    const json* v = find(key);
    return v ? integer_of(key, *v) : fallback;
  }
  std::int64_t get_positive(const std::string& key) const {
    std::int64_t x = get_int(key);
    if (x <= 0) fail(key, "must be positive, got " + std::to_string(x));
    return x;
  }
  std::int64_t get_positive(const std::string& key, std::int64_t fallback) const {
    std::int64_t x = get_int(key, fallback);
    if (x <= 0) fail(key, "must be positive, got " + std::to_string(x));
    return x;
  }
  double get_double(const std::string& key, double fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_number()) fail(key, "expected a number, got " + v->dump());
    return v->get<double>();
  }
  bool get_bool(const std::string& key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(key, "expected true or false, got " + v->dump());
    return v->get<bool>();
  }
  std::string get_string(const std::string& key, const std::string& fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_string()) fail(key, "expected a string, got " + v->dump());
    return v->get<std::string>();
  }
  std::vector<std::int64_t> get_int_list(const std::string& key, const json& v) const {
    if (!v.is_array()) fail(key, "expected a list of integers, got " + v.dump());
    std::vector<std::int64_t> out;
    for (const auto& e : v) out.push_back(integer_of(key, e));
    return out;
  }
  // An int or a list of ints (eos_token_id, vision_feature_layer).
  std::vector<std::int64_t> get_int_or_list(const std::string& key, std::vector<std::int64_t> fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (v->is_array()) return get_int_list(key, *v);
    return {integer_of(key, *v)};
  }
  object_ref child(const std::string& key) const {
    const json* v = find(key);
    if (!v) fail(key, "missing (required)");
    if (!v->is_object()) fail(key, "expected an object, got " + v->dump());
    return object_ref{*v, path + key + ".", source};
  }
};

void parse_rope(const object_ref& top, const object_ref& text, text_config& cfg, double default_theta,
                bool expect_mrope) {
  // transformers 5.x: rope_parameters {rope_theta, rope_type, mrope_section?}; older files:
  // rope_theta at the text level plus rope_scaling {type|rope_type, mrope_section}. The flat
  // Qwen2.5-VL layout has both at the top level (`text` is then `top`).
  cfg.rope_theta = text.get_double("rope_theta", default_theta);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const object_ref* owner = text.has(key) ? &text : (top.has(key) ? &top : nullptr);
    if (!owner) continue;
    object_ref rope = owner->child(key);
    cfg.rope_theta = rope.get_double("rope_theta", cfg.rope_theta);
    std::string type = rope.get_string("rope_type", rope.get_string("type", "default"));
    if (type != "default" && type != "mrope")
      rope.fail("rope_type", "unsupported RoPE type \"" + type + "\" (only default and mrope)");
    if (const json* s = rope.find("mrope_section")) cfg.mrope_section = rope.get_int_list("mrope_section", *s);
  }
  if (expect_mrope && cfg.mrope_section.empty()) cfg.mrope_section = {16, 24, 24};  // HF's fallback
  if (!expect_mrope && !cfg.mrope_section.empty())
    text.fail("rope_parameters", "mrope_section is only supported for qwen2_5_vl");
  if (!(cfg.rope_theta > 0)) text.fail("rope_theta", "must be positive");
}

text_config parse_text(const object_ref& top, const object_ref& text, bool qwen_vl) {
  text_config cfg;
  cfg.model_type = text.get_string("model_type", qwen_vl ? "qwen2_5_vl_text" : "qwen2");
  cfg.vocab_size = text.get_positive("vocab_size");
  cfg.hidden_size = text.get_positive("hidden_size");
  cfg.intermediate_size = text.get_positive("intermediate_size");
  cfg.num_hidden_layers = text.get_positive("num_hidden_layers");
  cfg.num_attention_heads = text.get_positive("num_attention_heads");
  cfg.num_key_value_heads = text.get_positive("num_key_value_heads", cfg.num_attention_heads);
  if (cfg.num_attention_heads % cfg.num_key_value_heads != 0)
    text.fail("num_key_value_heads", std::to_string(cfg.num_key_value_heads) + " does not divide num_attention_heads " +
                                         std::to_string(cfg.num_attention_heads));
  if (text.has("head_dim")) {
    cfg.head_dim = text.get_positive("head_dim");
  } else {
    if (cfg.hidden_size % cfg.num_attention_heads != 0)
      text.fail("hidden_size", "not divisible by num_attention_heads and no head_dim given");
    cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;
  }
  if (cfg.head_dim % 2 != 0) text.fail("head_dim", "must be even for RoPE, got " + std::to_string(cfg.head_dim));
  cfg.rms_norm_eps = text.get_double("rms_norm_eps", qwen_vl ? 1e-5 : 1e-6);
  if (!(cfg.rms_norm_eps >= 0)) text.fail("rms_norm_eps", "must be non-negative");
  cfg.hidden_act = text.get_string("hidden_act", "silu");
  if (cfg.hidden_act != "silu") text.fail("hidden_act", "only \"silu\" is supported, got \"" + cfg.hidden_act + "\"");
  cfg.max_position_embeddings = text.get_positive("max_position_embeddings", 32768);
  cfg.tie_word_embeddings = top.get_bool("tie_word_embeddings", false) || text.get_bool("tie_word_embeddings", false);
  if (text.has("bos_token_id")) cfg.bos_token_id = text.get_int("bos_token_id");
  cfg.eos_token_ids = text.get_int_or_list("eos_token_id", {});
  parse_rope(top, text, cfg, qwen_vl ? 1e6 : 1e4, qwen_vl);
  if (!cfg.mrope_section.empty()) {
    std::int64_t sum = 0;
    for (auto s : cfg.mrope_section) {
      if (s < 0) text.fail("rope_parameters", "mrope_section has a negative entry");
      sum += s;
    }
    if (cfg.mrope_section.size() != 3 || sum != cfg.head_dim / 2)
      text.fail("rope_parameters", "mrope_section must have 3 entries summing to head_dim/2 = " +
                                       std::to_string(cfg.head_dim / 2));
  }
  return cfg;
}

qwen2_5_vl_config parse_qwen(const object_ref& top) {
  qwen2_5_vl_config cfg;
  // Flat layout (hub file): the text keys are at the top level.
  if (top.has("text_config")) {
    cfg.text = parse_text(top, top.child("text_config"), true);
  } else {
    cfg.text = parse_text(top, top, true);
  }
  object_ref v = top.child("vision_config");
  auto& vc = cfg.vision;
  vc.depth = v.get_positive("depth");
  vc.hidden_size = v.get_positive("hidden_size");
  vc.intermediate_size = v.get_positive("intermediate_size");
  vc.num_heads = v.get_positive("num_heads");
  vc.out_hidden_size = v.get_positive("out_hidden_size");
  vc.in_channels = v.get_positive("in_channels", v.get_positive("in_chans", 3));
  vc.patch_size = v.get_positive("patch_size", 14);
  vc.temporal_patch_size = v.get_positive("temporal_patch_size", 2);
  vc.spatial_merge_size = v.get_positive("spatial_merge_size", 2);
  vc.window_size = v.get_positive("window_size", 112);
  vc.tokens_per_second = v.get_int("tokens_per_second", 4);
  if (const json* f = v.find("fullatt_block_indexes")) vc.fullatt_block_indexes = v.get_int_list("fullatt_block_indexes", *f);
  for (auto i : vc.fullatt_block_indexes)
    if (i < 0) v.fail("fullatt_block_indexes", "negative block index " + std::to_string(i));
  vc.hidden_act = v.get_string("hidden_act", "silu");
  if (vc.hidden_size % vc.num_heads != 0) v.fail("hidden_size", "not divisible by num_heads");
  if (vc.out_hidden_size != cfg.text.hidden_size)
    v.fail("out_hidden_size", std::to_string(vc.out_hidden_size) + " differs from the text hidden_size " +
                                  std::to_string(cfg.text.hidden_size));
  cfg.image_token_id = top.get_int("image_token_id", 151655);
  cfg.video_token_id = top.get_int("video_token_id", 151656);
  cfg.vision_start_token_id = top.get_int("vision_start_token_id", 151652);
  cfg.vision_end_token_id = top.get_int("vision_end_token_id", 151653);
  return cfg;
}

void parse_siglip(const object_ref& v, siglip_vision_config& vc) {
  vc.hidden_size = v.get_positive("hidden_size");
  vc.intermediate_size = v.get_positive("intermediate_size");
  vc.num_hidden_layers = v.get_positive("num_hidden_layers");
  vc.num_attention_heads = v.get_positive("num_attention_heads");
  vc.image_size = v.get_positive("image_size");
  vc.patch_size = v.get_positive("patch_size");
  vc.num_channels = v.get_positive("num_channels", 3);
  vc.layer_norm_eps = v.get_double("layer_norm_eps", 1e-6);
  vc.hidden_act = v.get_string("hidden_act", "gelu_pytorch_tanh");
  if (vc.hidden_size % vc.num_attention_heads != 0) v.fail("hidden_size", "not divisible by num_attention_heads");
  // image_size need not be a multiple of patch_size: SigLIP-so400m has 384/14 → 27 patches ("valid" conv).
  if (vc.image_size < vc.patch_size) v.fail("image_size", "smaller than patch_size");
}

// image_grid_pinpoints as a list of [height, width] (or, lmms_lab, LLaVA-NeXT's "(1x1),...,(6x6)"
// string: every grid from the first to the last, times the tile size); absent: HF's 36 pairs.
void parse_pinpoints(const object_ref& top, llava_onevision_config& cfg, bool lmms_lab) {
  const json* p = top.find("image_grid_pinpoints");
  if (p && lmms_lab && p->is_string()) {
    const std::string text = p->get<std::string>();
    std::vector<std::array<std::int64_t, 2>> grids;
    for (std::size_t at = text.find('('); at != std::string::npos; at = text.find('(', at + 1)) {
      long long a = 0, b = 0;
      char close = 0;
      if (std::sscanf(text.c_str() + at, "(%lldx%lld%c", &a, &b, &close) != 3 || close != ')' || a <= 0 || b <= 0)
        top.fail("image_grid_pinpoints", "\"" + text + "\" is not of the form \"(1x1),...,(6x6)\"");
      grids.push_back({a, b});
    }
    if (grids.empty()) top.fail("image_grid_pinpoints", "\"" + text + "\" is not of the form \"(1x1),...,(6x6)\"");
    const auto first = grids.front(), last = grids.back();
    for (std::int64_t i = first[0]; i <= last[0]; ++i)
      for (std::int64_t j = first[1]; j <= last[1]; ++j)
        cfg.image_grid_pinpoints.push_back({i * cfg.vision.image_size, j * cfg.vision.image_size});
    if (cfg.image_grid_pinpoints.empty()) top.fail("image_grid_pinpoints", "\"" + text + "\" gives no grid");
  } else if (p) {
    if (!p->is_array() || p->empty()) top.fail("image_grid_pinpoints", "expected a non-empty list of [height, width]");
    for (const auto& pair : *p) {
      auto hw = top.get_int_list("image_grid_pinpoints", pair);
      if (hw.size() != 2 || hw[0] <= 0 || hw[1] <= 0)
        top.fail("image_grid_pinpoints", "entry " + pair.dump() + " is not a positive [height, width]");
      cfg.image_grid_pinpoints.push_back({hw[0], hw[1]});
    }
  } else {
    const std::int64_t sides[] = {384, 768, 1152, 1536, 1920, 2304};
    for (auto a : sides)
      for (auto b : sides) cfg.image_grid_pinpoints.push_back({a, b});
  }
}

llava_onevision_config parse_llava(const object_ref& top) {
  llava_onevision_config cfg;
  cfg.text = parse_text(top, top.child("text_config"), false);
  object_ref v = top.child("vision_config");
  auto& vc = cfg.vision;
  parse_siglip(v, vc);
  cfg.image_token_index = top.get_int("image_token_index", top.get_int("image_token_id", 151646));
  cfg.video_token_index = top.get_int("video_token_index", top.get_int("video_token_id", 151647));
  parse_pinpoints(top, cfg, false);
  cfg.vision_feature_layer = top.get_int_or_list("vision_feature_layer", {-1});
  if (cfg.vision_feature_layer.empty()) top.fail("vision_feature_layer", "empty list");
  for (auto l : cfg.vision_feature_layer)
    if (l < -(vc.num_hidden_layers + 1) || l > vc.num_hidden_layers)
      top.fail("vision_feature_layer", "layer " + std::to_string(l) + " outside the " +
                                           std::to_string(vc.num_hidden_layers + 1) + " hidden states");
  cfg.vision_feature_select_strategy = top.get_string("vision_feature_select_strategy", "full");
  if (cfg.vision_feature_select_strategy != "full" && cfg.vision_feature_select_strategy != "default")
    top.fail("vision_feature_select_strategy", "expected \"full\" or \"default\"");
  cfg.vision_aspect_ratio = top.get_string("vision_aspect_ratio", "anyres_max_9");
  cfg.projector_hidden_act = top.get_string("projector_hidden_act", "gelu");
  cfg.multimodal_projector_bias = top.get_bool("multimodal_projector_bias", true);
  return cfg;
}

// The lmms-lab layout (LLaVA-NeXT's LlavaQwenConfig): a flat Qwen2 config plus the mm_* keys of
// LLaVA-NeXT's builder. Every key that would change the computation is checked against what the
// runtime implements (LLaVA-OV: SigLIP, mlp2x_gelu, anyres_max with spatial_unpad).
llava_onevision_config parse_lmms_llava(const object_ref& top) {
  llava_onevision_config cfg;
  cfg.checkpoint_layout = "lmms-lab";
  cfg.text = parse_text(top, top, false);
  cfg.text.model_type = "qwen2";  // the flat file's model_type is the wrapper's ("llava" / "llava_qwen")
  auto& vc = cfg.vision;
  const std::string tower = top.get_string("mm_vision_tower", "");
  if (top.has("vision_config")) {
    parse_siglip(top.child("vision_config"), vc);
  } else if (tower.find("siglip-so400m-patch14-384") != std::string::npos) {
    // SigLIP-so400m-patch14-384 (LLaVA-NeXT's SigLipVisionConfig defaults) without its last layer:
    // LLaVA-NeXT's SigLipVisionTower deletes encoder.layers[-1] and takes hidden_states[-1].
    vc.hidden_size = 1152;
    vc.intermediate_size = 4304;
    vc.num_hidden_layers = 26;
    vc.num_attention_heads = 16;
    vc.image_size = 384;
    vc.patch_size = 14;
  } else if (tower.empty()) {
    top.fail("mm_vision_tower", "missing (required for an lmms-lab LLaVA checkpoint)");
  } else {
    top.fail("mm_vision_tower", "\"" + tower + "\" is not supported (only SigLIP-so400m-patch14-384, the tower of "
                                "LLaVA-OneVision; or give its dims in a vision_config object)");
  }
  if (top.has("mm_hidden_size") && top.get_int("mm_hidden_size") != vc.hidden_size)
    top.fail("mm_hidden_size", std::to_string(top.get_int("mm_hidden_size")) + " differs from the vision tower's width " +
                                   std::to_string(vc.hidden_size));
  const std::string projector = top.get_string("mm_projector_type", "linear");
  if (projector != "mlp2x_gelu")
    top.fail("mm_projector_type", "\"" + projector + "\" is not supported (only \"mlp2x_gelu\", LLaVA-OneVision's)");
  const std::string merge = top.get_string("mm_patch_merge_type", "flat");
  if (merge != "spatial_unpad")
    top.fail("mm_patch_merge_type", "\"" + merge + "\" is not supported (only \"spatial_unpad\", LLaVA-OneVision's)");
  cfg.vision_aspect_ratio = top.get_string("image_aspect_ratio", "square");
  if (cfg.vision_aspect_ratio.rfind("anyres_max_", 0) != 0)
    top.fail("image_aspect_ratio", "\"" + cfg.vision_aspect_ratio +
                                       "\" is not supported (only \"anyres_max_<n>\", LLaVA-OneVision's)");
  if (top.get_bool("mm_use_im_start_end", false))
    top.fail("mm_use_im_start_end", "true is not supported (LLaVA-OneVision uses no image start/end tokens)");
  parse_pinpoints(top, cfg, true);
  // LLaVA-NeXT marks the image with IMAGE_TOKEN_INDEX (-200) in code; the runtime uses the id that
  // transformers' conversion gives "<image>" (151646, after Qwen2's 151646 tokens) unless the file says.
  cfg.image_token_index = top.get_int("image_token_index", 151646);
  cfg.video_token_index = top.get_int("video_token_index", cfg.image_token_index + 1);
  cfg.vision_feature_layer = {-1};
  cfg.vision_feature_select_strategy = "full";
  cfg.projector_hidden_act = "gelu";
  cfg.multimodal_projector_bias = true;
  return cfg;
}

}  // namespace

const text_config& model_config::text() const {
  if (qwen2_5_vl) return qwen2_5_vl->text;
  if (llava_onevision) return llava_onevision->text;
  throw runtime_error("consr_runtime::model_config::text: empty config (model_type '" + model_type + "')");
}

std::int64_t model_config::image_token_id() const {
  if (qwen2_5_vl) return qwen2_5_vl->image_token_id;
  if (llava_onevision) return llava_onevision->image_token_index;
  throw runtime_error("consr_runtime::model_config::image_token_id: empty config (model_type '" + model_type + "')");
}

model_config parse_model_config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    throw runtime_error("consr_runtime::parse_model_config: " + source + " is not valid JSON: " + e.what());
  }
  if (!root.is_object()) throw runtime_error("consr_runtime::parse_model_config: " + source + " is not a JSON object");
  object_ref top{root, "", source};
  model_config out;
  out.source = source;
  out.model_type = top.get_string("model_type", "");
  if (out.model_type.empty()) top.fail("model_type", "missing (required)");
  if (out.model_type == "qwen2_5_vl") {
    out.qwen2_5_vl = parse_qwen(top);
  } else if (out.model_type == "llava_onevision") {
    out.llava_onevision = parse_llava(top);
  } else if (out.model_type == "llava" || out.model_type == "llava_qwen") {
    out.llava_onevision = parse_lmms_llava(top);
    out.model_type = "llava_onevision";
  } else {
    top.fail("model_type", "unsupported model type \"" + out.model_type +
                               "\" (expected qwen2_5_vl, llava_onevision, or lmms-lab's llava / llava_qwen)");
  }
  return out;
}

model_config load_model_config(const std::string& path) {
  std::string file = path;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) file = path + "/config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw runtime_error("consr_runtime::load_model_config: cannot open " + file);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_model_config(text.str(), file);
}

namespace {

bool read_whole_file(const std::string& file, std::string& text) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw runtime_error("consr_runtime::load_image_processor_settings: error reading " + file);
  text = buffer.str();
  return true;
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The `image_processor` object of a processor_config.json-style text, if it has one. Invalid JSON is
// an error when `strict`, else "not nested" (the caller's parser then names the file).
bool nested_image_processor(const std::string& text, const std::string& file, bool strict, std::string& nested) {
  const json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    if (!strict) return false;
    throw runtime_error("consr_runtime::load_image_processor_settings: " + file + " is not valid JSON");
  }
  if (!root.is_object()) return false;
  auto it = root.find("image_processor");
  if (it == root.end() || it->is_null()) return false;
  if (!it->is_object())
    throw runtime_error("consr_runtime::load_image_processor_settings: key 'image_processor' in " + file +
                        ": expected an object, got " + it->dump());
  nested = it->dump();
  return true;
}

}  // namespace

image_processor_settings load_image_processor_settings(const std::string& path) {
  const std::string where = "consr_runtime::load_image_processor_settings: ";
  struct stat st {};
  std::string text;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    const std::string processor_file = path + "/processor_config.json";
    const std::string legacy_file = path + "/preprocessor_config.json";
    if (is_regular_file(processor_file)) {
      if (!read_whole_file(processor_file, text)) throw runtime_error(where + "cannot open " + processor_file);
      std::string nested;
      if (nested_image_processor(text, processor_file, /*strict=*/true, nested))
        return {std::move(nested), processor_file + " (key 'image_processor')"};
    }
    if (!read_whole_file(legacy_file, text))
      throw runtime_error(where + "'" + path + "' has neither " + legacy_file +
                          " nor a processor_config.json with an 'image_processor' object");
    return {std::move(text), legacy_file};
  }
  if (!read_whole_file(path, text)) throw runtime_error(where + "cannot open " + path);
  // A flat preprocessor_config.json has no `image_processor` key; a malformed file is left to the
  // caller's parser, which names the file and the key.
  std::string nested;
  if (nested_image_processor(text, path, /*strict=*/false, nested)) return {std::move(nested), path + " (key 'image_processor')"};
  return {std::move(text), path};
}

}  // namespace consr_runtime
