// Parameter initialisation and saving a model as a Hugging Face checkpoint (see consr_runtime/model_io.hpp).
#include "consr_runtime/model_io.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/safetensors.hpp"

namespace consr_runtime {
namespace {

using ojson = nlohmann::ordered_json;

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// N(0, std²) draws for `n` elements of the stream `stream` (Box–Muller on counter_uniform pairs).
std::vector<double> normal_draws(std::uint64_t seed, std::uint64_t stream, std::int64_t n, double std) {
  std::vector<double> out(static_cast<std::size_t>(n));
  const double two_pi = 6.283185307179586476925286766559;
  for (std::int64_t i = 0; i < n; ++i) {
    const double u1 = counter_uniform(seed, stream, 2 * static_cast<std::uint64_t>(i));
    const double u2 = counter_uniform(seed, stream, 2 * static_cast<std::uint64_t>(i) + 1);
    out[static_cast<std::size_t>(i)] = std * std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(two_pi * u2);
  }
  return out;
}

ojson int_list(const std::vector<std::int64_t>& v) {
  ojson a = ojson::array();
  for (auto x : v) a.push_back(x);
  return a;
}

ojson eos_json(const text_config& t) {
  if (t.eos_token_ids.empty()) return nullptr;
  if (t.eos_token_ids.size() == 1) return t.eos_token_ids[0];
  return int_list(t.eos_token_ids);
}

ojson text_config_json(const text_config& t, const std::string& model_type, std::int64_t max_window_layers) {
  ojson j;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = t.bos_token_id ? ojson(*t.bos_token_id) : ojson(nullptr);
  j["eos_token_id"] = eos_json(t);
  j["head_dim"] = t.head_dim;
  j["hidden_act"] = t.hidden_act;
  j["hidden_size"] = t.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = t.intermediate_size;
  ojson layer_types = ojson::array();
  for (std::int64_t i = 0; i < t.num_hidden_layers; ++i) layer_types.push_back("full_attention");
  j["layer_types"] = layer_types;
  j["max_position_embeddings"] = t.max_position_embeddings;
  j["max_window_layers"] = max_window_layers;
  j["model_type"] = model_type;
  j["num_attention_heads"] = t.num_attention_heads;
  j["num_hidden_layers"] = t.num_hidden_layers;
  j["num_key_value_heads"] = t.num_key_value_heads;
  j["pad_token_id"] = nullptr;
  j["rms_norm_eps"] = t.rms_norm_eps;
  ojson rope;
  if (!t.mrope_section.empty()) rope["mrope_section"] = int_list(t.mrope_section);
  rope["rope_theta"] = t.rope_theta;
  rope["rope_type"] = "default";
  j["rope_parameters"] = rope;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = t.tie_word_embeddings;
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = t.vocab_size;
  return j;
}

}  // namespace

void init_parameters(torch::nn::Module& module, std::uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor p = item.value();
    if (p.dim() == 1 && ends_with(name, "image_newline")) {
      const double s = 1.0 / std::sqrt(static_cast<double>(p.size(0)));
      auto v = normal_draws(seed, fnv1a(name), p.numel(), s);
      p.copy_(torch::tensor(v, torch::kFloat64).to(p.device(), p.scalar_type()));
    } else if (p.dim() == 1 && ends_with(name, "bias")) {
      p.zero_();
    } else if (p.dim() == 1) {
      p.fill_(1.0);
    } else {
      auto v = normal_draws(seed, fnv1a(name), p.numel(), std);
      p.copy_(torch::tensor(v, torch::kFloat64).reshape(p.sizes()).to(p.device(), p.scalar_type()));
    }
  }
}

namespace {

// (in-memory prefix, checkpoint prefix) of each part of the model in `naming`.
std::vector<std::pair<std::string, std::string>> hub_prefix_map(const vision_language_model& model, hub_naming naming) {
  if (naming == hub_naming::transformers5) return {{"", ""}};
  if (model.config().qwen2_5_vl.has_value())
    return {{"model.language_model.", "model."}, {"model.visual.", "visual."}, {"lm_head.", "lm_head."}};
  return {{"model.vision_tower.vision_model.", "vision_tower."},
          {"model.multi_modal_projector.", "multi_modal_projector."},
          {"model.language_model.", "language_model.model."},
          {"model.image_newline", "image_newline"},
          {"lm_head.", "language_model.lm_head."}};
}

bool is_lora_factor(const std::string& name) {
  return name.find("lora_A.") != std::string::npos || name.find("lora_B.") != std::string::npos;
}

// The checkpoint name of the in-memory parameter `name` (the longest matching in-memory prefix).
std::string hub_name(const std::vector<std::pair<std::string, std::string>>& map, const std::string& name,
                     const char* fn) {
  const std::pair<std::string, std::string>* best = nullptr;
  for (const auto& m : map)
    if (name.compare(0, m.first.size(), m.first) == 0 && (!best || m.first.size() > best->first.size())) best = &m;
  if (!best)
    throw runtime_error(std::string("consr_runtime::") + fn + ": argument 'model': parameter '" + name +
                        "' has no checkpoint name");
  return best->second + name.substr(best->first.size());
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> hub_state_dict(const vision_language_model& model, hub_naming naming) {
  const auto map = hub_prefix_map(model, naming);
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (is_lora_factor(name))
      throw runtime_error("consr_runtime::hub_state_dict: argument 'model': parameter '" + name +
                          "' is a LoRA factor (merge or detach adapters before saving the model)");
    out[hub_name(map, name, "hub_state_dict")] = item.value();
  }
  return {out.begin(), out.end()};
}

std::vector<std::string> hub_parameter_names(const vision_language_model& model, hub_naming naming) {
  const auto map = hub_prefix_map(model, naming);
  std::set<std::string> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    if (!is_lora_factor(item.key())) out.insert(hub_name(map, item.key(), "hub_parameter_names"));
  return {out.begin(), out.end()};
}

ojson model_config_json(const model_config& config, const std::string& dtype) {
  ojson j;
  if (config.qwen2_5_vl) {
    const qwen2_5_vl_config& q = *config.qwen2_5_vl;
    const text_config& t = q.text;
    j["architectures"] = ojson::array({"Qwen2_5_VLForConditionalGeneration"});
    j["bos_token_id"] = t.bos_token_id ? ojson(*t.bos_token_id) : ojson(nullptr);
    j["dtype"] = dtype;
    j["eos_token_id"] = eos_json(t);
    j["image_token_id"] = q.image_token_id;
    j["model_type"] = "qwen2_5_vl";
    j["text_config"] = text_config_json(t, "qwen2_5_vl_text", t.num_hidden_layers);
    j["tie_word_embeddings"] = t.tie_word_embeddings;
    j["video_token_id"] = q.video_token_id;
    const qwen2_5_vl_vision_config& v = q.vision;
    ojson vj;
    vj["depth"] = v.depth;
    vj["fullatt_block_indexes"] = int_list(v.fullatt_block_indexes);
    vj["hidden_act"] = v.hidden_act;
    vj["hidden_size"] = v.hidden_size;
    vj["in_channels"] = v.in_channels;
    vj["initializer_range"] = 0.02;
    vj["intermediate_size"] = v.intermediate_size;
    vj["model_type"] = "qwen2_5_vl_vision";
    vj["num_heads"] = v.num_heads;
    vj["out_hidden_size"] = v.out_hidden_size;
    vj["patch_size"] = v.patch_size;
    vj["spatial_merge_size"] = v.spatial_merge_size;
    vj["temporal_patch_size"] = v.temporal_patch_size;
    vj["tokens_per_second"] = v.tokens_per_second;
    vj["window_size"] = v.window_size;
    j["vision_config"] = vj;
    j["vision_end_token_id"] = q.vision_end_token_id;
    j["vision_start_token_id"] = q.vision_start_token_id;
  } else if (config.llava_onevision) {
    const llava_onevision_config& l = *config.llava_onevision;
    const text_config& t = l.text;
    j["architectures"] = ojson::array({"LlavaOnevisionForConditionalGeneration"});
    j["dtype"] = dtype;
    ojson pins = ojson::array();
    for (const auto& p : l.image_grid_pinpoints) pins.push_back(ojson::array({p[0], p[1]}));
    j["image_grid_pinpoints"] = pins;
    j["image_token_index"] = l.image_token_index;
    j["model_type"] = "llava_onevision";
    j["multimodal_projector_bias"] = l.multimodal_projector_bias;
    j["projector_hidden_act"] = l.projector_hidden_act;
    j["text_config"] = text_config_json(t, "qwen2", 28);
    j["tie_word_embeddings"] = t.tie_word_embeddings;
    j["video_token_index"] = l.video_token_index;
    j["vision_aspect_ratio"] = l.vision_aspect_ratio;
    const siglip_vision_config& v = l.vision;
    ojson vj;
    vj["attention_dropout"] = 0.0;
    vj["hidden_act"] = v.hidden_act;
    vj["hidden_size"] = v.hidden_size;
    vj["image_size"] = v.image_size;
    vj["intermediate_size"] = v.intermediate_size;
    vj["layer_norm_eps"] = v.layer_norm_eps;
    vj["model_type"] = "siglip_vision_model";
    vj["num_attention_heads"] = v.num_attention_heads;
    vj["num_channels"] = v.num_channels;
    vj["num_hidden_layers"] = v.num_hidden_layers;
    vj["patch_size"] = v.patch_size;
    vj["vision_use_head"] = false;
    j["vision_config"] = vj;
    j["vision_feature_layer"] =
        l.vision_feature_layer.size() == 1 ? ojson(l.vision_feature_layer[0]) : int_list(l.vision_feature_layer);
    j["vision_feature_select_strategy"] = l.vision_feature_select_strategy;
  } else {
    throw runtime_error("consr_runtime::model_config_json: argument 'config': neither qwen2_5_vl nor llava_onevision is set");
  }
  return j;
}

void write_json_file(const std::string& path, const ojson& value) {
  std::ofstream f(path, std::ios::binary);
  if (!f) throw runtime_error("consr_runtime::write_json_file: cannot write '" + path + "'");
  f << value.dump(2) << "\n";
  if (!f) throw runtime_error("consr_runtime::write_json_file: writing '" + path + "' failed");
}

void save_model(const vision_language_model& model, const std::string& dir, hub_naming naming, torch::Dtype dtype) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw runtime_error("consr_runtime::save_model: cannot create '" + dir + "': " + ec.message());
  const std::string dtype_name = dtype == torch::kFloat32    ? "float32"
                                 : dtype == torch::kBFloat16 ? "bfloat16"
                                 : dtype == torch::kFloat16  ? "float16"
                                                             : throw runtime_error(
                                                                   "consr_runtime::save_model: argument 'dtype': "
                                                                   "only float32, bfloat16 and float16 are written");
  write_json_file(dir + "/config.json", model_config_json(model.config(), dtype_name));
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : hub_state_dict(model, naming))
      tensors.emplace_back(name, t.detach().to(torch::kCPU, dtype).contiguous());
  }
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

}  // namespace consr_runtime
