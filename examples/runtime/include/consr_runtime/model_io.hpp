// consr_runtime/model_io.hpp — what training a model from scratch needs beyond loading one:
// initialising the parameters, and saving a model as a Hugging Face checkpoint directory
// (config.json + model.safetensors with the hub's tensor names) that `load_model` and transformers
// read back.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/types.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/models.hpp"

namespace consr_runtime {

/// Initialises every parameter of `module` as transformers' `_init_weights` does for these models:
/// matrices and embeddings (rank ≥ 2) ~ N(0, std²); 1-D `...weight` (the RMSNorm / LayerNorm
/// scales) = 1; 1-D `...bias` = 0; a 1-D tensor named `image_newline` ~ N(0, 1/hidden).
/// The draws are a pure function of (seed, parameter name, element index) (counter_uniform +
/// Box–Muller in double), so they do not depend on the thread count, the registration order or the
/// dtype/device. Runs under NoGradGuard.
void init_parameters(torch::nn::Module& module, std::uint64_t seed, double std = 0.02);

/// Tensor names of a saved checkpoint.
enum class hub_naming {
  /// What transformers 5.24's save_pretrained writes (and the fixtures under tests/fixtures/models):
  /// Qwen2.5-VL  model.*, visual.*, lm_head.weight;
  /// LLaVA-OV    language_model.model.*, language_model.lm_head.weight, vision_tower.* (SigLIP without
  ///             its vision_model. level), multi_modal_projector.*, image_newline.
  save_pretrained,
  /// The in-memory names of transformers 5 (model.language_model.*, model.visual.*,
  /// model.vision_tower.vision_model.*, model.multi_modal_projector.*, model.image_newline, lm_head.*).
  transformers5,
};

/// The model's parameters under their checkpoint names (sorted by name; the tensors are the
/// parameters themselves, not copies). With tie_word_embeddings no LM head is listed.
/// Throws runtime_error naming a parameter that has no checkpoint name (e.g. a LoRA factor).
std::vector<std::pair<std::string, torch::Tensor>> hub_state_dict(const vision_language_model& model,
                                                                  hub_naming naming = hub_naming::save_pretrained);

/// The names of the base model's parameters in `naming` (sorted; LoRA factors are skipped, so a model
/// with adapters attached lists the names of the module tree the adapters hang in). With
/// hub_naming::transformers5 these are the parameter names of transformers 5's in-memory module tree
/// (what PEFT wraps and names adapters after: base_model.model.<module path>.lora_A.weight).
std::vector<std::string> hub_parameter_names(const vision_language_model& model,
                                             hub_naming naming = hub_naming::save_pretrained);

/// The config.json of `config` in transformers 5's layout (the fixtures' files): `text_config`
/// nested, `rope_parameters`, `vision_config`, the token ids, `dtype`. `dtype` is written as given
/// ("float32", "bfloat16").
nlohmann::ordered_json model_config_json(const model_config& config, const std::string& dtype = "float32");

/// Writes `<dir>/config.json` (model_config_json) and `<dir>/model.safetensors` (hub_state_dict,
/// converted to `dtype`; metadata {"format": "pt"}). Creates `dir` if needed. Throws runtime_error
/// naming the file on I/O failure, or as hub_state_dict.
void save_model(const vision_language_model& model, const std::string& dir,
                hub_naming naming = hub_naming::save_pretrained, torch::Dtype dtype = torch::kFloat32);

/// Writes `value` as JSON (2-space indentation, trailing newline) to `path`; throws runtime_error
/// naming the file on failure.
void write_json_file(const std::string& path, const nlohmann::ordered_json& value);

}  // namespace consr_runtime
