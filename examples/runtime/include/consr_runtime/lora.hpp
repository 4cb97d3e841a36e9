// consr_runtime/lora.hpp — LoRA adapters on the language model's linear layers (facts §7), saved
// and loaded in PEFT's format so that Python tools can load the result:
//   <dir>/adapter_model.safetensors: base_model.model.<module path>.lora_A.weight  [r, in]
//                                    base_model.model.<module path>.lora_B.weight  [out, r]
//   <dir>/adapter_config.json:       peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, ...
// By default the <module path> is transformers 5's in-memory path (e.g.
// `model.language_model.layers.3.self_attn.q_proj` for both models), which is what
// `peft.PeftModel.from_pretrained` loads on a current transformers; lora_naming::checkpoint writes
// the path in the naming of the checkpoint the model was loaded from instead (e.g.
// `model.layers.3...` for the Qwen2.5-VL hub files, `language_model.model.layers.3...` for LLaVA-OV).
// The saved names are checked against the module tree of the naming (lora_module_tree).
//
// Forward of a wrapped layer: y = W x + b + scaling · B(A(x)), scaling = α/r (α/√r with rsLoRA),
// dropout 0. Init: A ~ kaiming_uniform(a = √5), i.e. U(−1/√in, 1/√in), from the counter-based
// generator (seed, module ordinal, element index); B = 0, so a fresh adapter changes nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "consr_runtime/models.hpp"

namespace consr_runtime {

struct lora_config {
  std::int64_t rank = 8;     ///< r ≥ 1
  double alpha = 16.0;       ///< lora_alpha
  bool use_rslora = false;   ///< scaling α/√r instead of α/r
  double dropout = 0.0;      ///< only 0 is supported (the pipeline's setting)
  /// Module-name suffixes to wrap (PEFT's list semantics: the name equals the target or ends with
  /// "." + target), matched among the language model's decoder layers only.
  std::vector<std::string> target_modules{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::uint64_t seed = 0;    ///< initialisation of A
  /// Scaling applied to B(A(x)).
  double scaling() const;
};

/// Attaches a fresh adapter to every `linear` of model.language_model whose name matches
/// `config.target_modules` (replacing existing adapters). Returns the in-memory module paths
/// (e.g. "model.language_model.layers.0.self_attn.q_proj"), in module order. Throws runtime_error
/// naming the option for rank < 1, dropout != 0, a non-finite alpha, or targets matching nothing.
std::vector<std::string> apply_lora(vision_language_model& model, const lora_config& config);

/// Removes every adapter from the model.
void remove_lora(torch::nn::Module& model);

/// The LoRA parameters (all lora_A / lora_B weights) of `model`, in module order.
std::vector<torch::Tensor> lora_parameters(torch::nn::Module& model);

/// Sets requires_grad = false on every parameter that is not a LoRA parameter and true on the
/// LoRA parameters (the training setting: only the adapter learns).
void mark_only_lora_trainable(torch::nn::Module& model);

/// Which module paths the saved tensor names use.
enum class lora_naming {
  /// The naming of the checkpoint the model was loaded from (legacy layout). Verified with
  /// tools/check_lora_with_peft.py (transformers 5.24, peft 0.21.2): transformers' own
  /// `model.load_adapter(dir)` maps hub names to its modules and loads these for both models;
  /// `peft.PeftModel.from_pretrained` loads LLaVA-OV's legacy names but finds none of Qwen2.5-VL's
  /// `model.layers.*` (it does not remap them to model.language_model.*): it warns once and runs
  /// the base model.
  checkpoint,
  /// transformers >= 4.52's in-memory module paths, model.language_model.layers.* for both models:
  /// what `peft.PeftModel.from_pretrained` loads on transformers 5 (every tensor), and what
  /// `model.load_adapter` loads too. The default.
  transformers5,
};

/// The module tree the adapter's names must match in `naming`: transformers5 → the base model's
/// parameter names as transformers 5 names its modules in memory (hub_parameter_names(model,
/// hub_naming::transformers5); PEFT wraps that tree and looks up base_model.model.<module
/// path>.lora_A.weight in it); checkpoint → the tensor names of the checkpoint the model was loaded
/// from (model.directory(); the transformers 5 tree when the model was not loaded from disk).
std::vector<std::string> lora_module_tree(const vision_language_model& model, lora_naming naming);

/// The names among `tensor_names` (PEFT adapter tensor names) that do not name a LoRA factor of a
/// linear layer in lora_module_tree(model, naming): not of the form base_model.model.<module
/// path>.lora_{A,B}.weight, or <module path>.weight is not in the tree. Empty when all match.
std::vector<std::string> lora_names_outside_module_tree(const vision_language_model& model,
                                                        const std::vector<std::string>& tensor_names,
                                                        lora_naming naming);

/// PEFT name of a wrapped module's factor: "base_model.model." + module path + ".lora_A.weight"
/// (".lora_B.weight" when `lora_b`), the path in `naming`. `in_memory_path` must lie under
/// vision_language_model::language_model_module_prefix().
std::string peft_tensor_name(const vision_language_model& model, const std::string& in_memory_path, bool lora_b,
                             lora_naming naming = lora_naming::transformers5);

/// Writes `<dir>/adapter_model.safetensors` and `<dir>/adapter_config.json` (the directory is
/// created if missing). `base_model_name_or_path` defaults to the model's directory. Before writing,
/// checks every tensor name against lora_module_tree(model, naming). Throws runtime_error if the
/// model has no adapter, naming the first tensor outside the module tree, or naming the file on I/O
/// failure. Returns the tensor names written (sorted).
std::vector<std::string> save_lora_adapter(const vision_language_model& model, const lora_config& config,
                                           const std::string& dir, const std::string& base_model_name_or_path = "",
                                           lora_naming naming = lora_naming::transformers5);

/// Reads a PEFT LoRA adapter directory and attaches it (tensors converted to the model's dtype),
/// replacing existing adapters. Accepts the module paths of either hub naming of the language
/// model. Returns its config (target_modules = the suffixes found). Throws runtime_error naming the
/// file / tensor for a non-LORA peft_type, rank or alpha patterns, a tensor that names no linear
/// of the language model, a missing A or B half, or mis-shaped factors.
lora_config load_lora_adapter(vision_language_model& model, const std::string& dir);

}  // namespace consr_runtime
