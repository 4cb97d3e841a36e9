// LoRA adapters in PEFT's format (see consr_runtime/lora.hpp).
#include "consr_runtime/lora.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/model_io.hpp"
#include "consr_runtime/safetensors.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& function, const std::string& argument, const std::string& message) {
  throw runtime_error("consr_runtime::" + function + ": argument '" + argument + "': " + message);
}

const std::string peft_prefix = "base_model.model.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// The language model's linear layers, in module order: (in-memory path, module).
std::vector<std::pair<std::string, std::shared_ptr<linear_impl>>> lm_linears(const vision_language_model& model) {
  std::vector<std::pair<std::string, std::shared_ptr<linear_impl>>> out;
  const std::string scope = vision_language_model::language_model_module_prefix();
  for (const auto& item : model.language_model->named_modules(scope.substr(0, scope.size() - 1))) {
    auto lin = std::dynamic_pointer_cast<linear_impl>(item.value());
    // Skip the adapter factors themselves (they are linear_impl too).
    if (!lin || ends_with(item.key(), ".lora_A") || ends_with(item.key(), ".lora_B")) continue;
    out.emplace_back(item.key(), lin);
  }
  return out;
}

bool matches_target(const std::string& name, const std::vector<std::string>& targets) {
  for (const auto& t : targets)
    if (name == t || ends_with(name, "." + t)) return true;
  return false;
}

// Python-regex escape for the few characters a module name can hold.
std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string("\\.^$|?*+()[]{}").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

double lora_config::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

std::vector<std::string> apply_lora(vision_language_model& model, const lora_config& config) {
  const char* fn = "apply_lora";
  if (config.rank < 1) fail(fn, "rank", "must be >= 1, got " + std::to_string(config.rank));
  if (!std::isfinite(config.alpha)) fail(fn, "alpha", "must be finite");
  if (config.dropout != 0.0) fail(fn, "dropout", "only 0 is supported");
  if (config.target_modules.empty()) fail(fn, "target_modules", "empty");
  remove_lora(model);
  std::vector<std::string> wrapped;
  std::uint64_t ordinal = 0;
  for (auto& [name, lin] : lm_linears(model)) {
    if (!matches_target(name, config.target_modules)) continue;
    auto options = lin->weight.options();
    const std::int64_t in = lin->in_features();
    // kaiming_uniform_(a=√5) on [r, in]: gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    torch::Tensor a = torch::empty({config.rank, in}, torch::kFloat64);
    double* data = a.data_ptr<double>();
    for (std::int64_t i = 0; i < a.numel(); ++i)
      data[i] = (2.0 * counter_uniform(config.seed, ordinal, static_cast<std::uint64_t>(i)) - 1.0) * bound;
    lin->attach_lora(a.to(options), torch::zeros({lin->out_features(), config.rank}, options), config.scaling());
    wrapped.push_back(name);
    ++ordinal;
  }
  if (wrapped.empty()) fail(fn, "target_modules", "match no linear layer of the language model");
  return wrapped;
}

void remove_lora(torch::nn::Module& model) {
  for (const auto& m : model.modules()) {
    auto lin = std::dynamic_pointer_cast<linear_impl>(m);
    if (lin && lin->has_lora()) lin->detach_lora();
  }
}

std::vector<torch::Tensor> lora_parameters(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& m : model.modules()) {
    auto lin = std::dynamic_pointer_cast<linear_impl>(m);
    if (lin && lin->has_lora()) {
      out.push_back(lin->lora_A->weight);
      out.push_back(lin->lora_B->weight);
    }
  }
  return out;
}

void mark_only_lora_trainable(torch::nn::Module& model) {
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    const bool is_lora = name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
    p.value().set_requires_grad(is_lora);
  }
}

std::string peft_tensor_name(const vision_language_model& model, const std::string& in_memory_path, bool lora_b,
                             lora_naming naming) {
  const std::string scope = vision_language_model::language_model_module_prefix();
  if (!starts_with(in_memory_path, scope))
    fail("peft_tensor_name", "in_memory_path", "'" + in_memory_path + "' is not under " + scope);
  const std::string prefix = naming == lora_naming::checkpoint ? model.language_model_hub_prefix() : scope;
  return peft_prefix + prefix + in_memory_path.substr(scope.size()) + (lora_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::vector<std::string> lora_module_tree(const vision_language_model& model, lora_naming naming) {
  if (naming == lora_naming::checkpoint && !model.directory().empty()) return checkpoint(model.directory()).names();
  return hub_parameter_names(model, hub_naming::transformers5);
}

std::vector<std::string> lora_names_outside_module_tree(const vision_language_model& model,
                                                        const std::vector<std::string>& tensor_names,
                                                        lora_naming naming) {
  const std::vector<std::string> tree_list = lora_module_tree(model, naming);
  const std::set<std::string> tree(tree_list.begin(), tree_list.end());
  std::vector<std::string> outside;
  for (const auto& name : tensor_names) {
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    const std::size_t suffix = std::string(".lora_A.weight").size();
    if (!starts_with(name, peft_prefix) || !(is_a || is_b) || name.size() < peft_prefix.size() + suffix ||
        !tree.count(name.substr(peft_prefix.size(), name.size() - peft_prefix.size() - suffix) + ".weight"))
      outside.push_back(name);
  }
  return outside;
}

std::vector<std::string> save_lora_adapter(const vision_language_model& model, const lora_config& config,
                                           const std::string& dir, const std::string& base_model_name_or_path,
                                           lora_naming naming) {
  const char* fn = "save_lora_adapter";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::set<std::string> suffixes;
  for (auto& [name, lin] : lm_linears(model)) {
    if (!lin->has_lora()) continue;
    tensors.emplace_back(peft_tensor_name(model, name, false, naming), lin->lora_A->weight.detach().to(torch::kCPU).contiguous());
    tensors.emplace_back(peft_tensor_name(model, name, true, naming), lin->lora_B->weight.detach().to(torch::kCPU).contiguous());
    suffixes.insert(name.substr(name.rfind('.') + 1));
  }
  if (tensors.empty()) fail(fn, "model", "has no LoRA adapter (call apply_lora or load_lora_adapter first)");
  // Every name must hang in the module tree the loader will look it up in: a mismatch would load as
  // a silent no-op (PEFT warns once and runs the base model).
  std::vector<std::string> names;
  for (const auto& t : tensors) names.push_back(t.first);
  std::sort(names.begin(), names.end());
  const std::vector<std::string> outside = lora_names_outside_module_tree(model, names, naming);
  if (!outside.empty())
    fail(fn, "naming", std::to_string(outside.size()) + " of " + std::to_string(names.size()) + " adapter tensors (e.g. '" +
                           outside.front() + "') name no linear layer of the " +
                           (naming == lora_naming::transformers5 ? "transformers 5 module tree"
                                                                 : "checkpoint '" + model.directory() + "'"));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw runtime_error("consr_runtime::save_lora_adapter: cannot create directory '" + dir + "': " + ec.message());
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});

  // target_modules as a regex (PEFT full-matches a string against module names): only the decoder
  // layers of the language model, in either naming, so that PEFT does not also wrap the vision
  // tower's q_proj / gate_proj / ... that a plain suffix list would match.
  std::string alternatives;
  for (const auto& s : suffixes) alternatives += (alternatives.empty() ? "" : "|") + regex_escape(s);
  nlohmann::json cfg;
  cfg["peft_type"] = "LORA";
  cfg["task_type"] = "CAUSAL_LM";
  cfg["r"] = config.rank;
  cfg["lora_alpha"] = config.alpha;
  cfg["lora_dropout"] = config.dropout;
  cfg["use_rslora"] = config.use_rslora;
  cfg["target_modules"] = "^(?:.*\\.)?(?:language_model|model)\\.layers\\.\\d+\\.(?:self_attn|mlp)\\.(?:" + alternatives + ")$";
  cfg["base_model_name_or_path"] = base_model_name_or_path.empty() ? model.directory() : base_model_name_or_path;
  cfg["bias"] = "none";
  cfg["fan_in_fan_out"] = false;
  cfg["inference_mode"] = true;
  cfg["init_lora_weights"] = true;
  cfg["modules_to_save"] = nullptr;
  cfg["rank_pattern"] = nlohmann::json::object();
  cfg["alpha_pattern"] = nlohmann::json::object();
  cfg["use_dora"] = false;
  const std::string path = dir + "/adapter_config.json";
  std::ofstream out(path);
  out << cfg.dump(2) << "\n";
  if (!out) throw runtime_error("consr_runtime::save_lora_adapter: cannot write '" + path + "'");
  return names;
}

lora_config load_lora_adapter(vision_language_model& model, const std::string& dir) {
  const std::string config_path = dir + "/adapter_config.json";
  std::ifstream in(config_path);
  if (!in) throw runtime_error("consr_runtime::load_lora_adapter: cannot open '" + config_path + "'");
  nlohmann::json cfg;
  try {
    in >> cfg;
  } catch (const std::exception& e) {
    throw runtime_error("consr_runtime::load_lora_adapter: '" + config_path + "' is not valid JSON: " + e.what());
  }
  auto bad = [&](const std::string& key, const std::string& msg) -> runtime_error {
    return runtime_error("consr_runtime::load_lora_adapter: '" + config_path + "': key '" + key + "': " + msg);
  };
  if (!cfg.is_object()) throw bad("(root)", "not a JSON object");
  if (cfg.value("peft_type", std::string()) != "LORA") throw bad("peft_type", "expected \"LORA\"");
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<std::int64_t>() < 1)
    throw bad("r", "missing or not a positive integer");
  if (!cfg.contains("lora_alpha") || !cfg["lora_alpha"].is_number()) throw bad("lora_alpha", "missing or not a number");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (cfg.contains(k) && !cfg[k].is_null() && !cfg[k].empty()) throw bad(k, "per-module ranks/alphas are not supported");
  if (cfg.contains("use_dora") && cfg["use_dora"].is_boolean() && cfg["use_dora"].get<bool>()) throw bad("use_dora", "DoRA is not supported");
  lora_config out;
  out.rank = cfg["r"].get<std::int64_t>();
  out.alpha = cfg["lora_alpha"].get<double>();
  out.use_rslora = cfg.contains("use_rslora") && cfg["use_rslora"].is_boolean() && cfg["use_rslora"].get<bool>();
  out.dropout = 0.0;  // inference: dropout never applies

  const std::string file = dir + "/adapter_model.safetensors";
  safetensors_file st(file);
  auto linears = lm_linears(model);
  std::map<std::string, std::shared_ptr<linear_impl>> by_rest;  // path after the LM prefix → module
  const std::string scope = vision_language_model::language_model_module_prefix();
  for (auto& [name, lin] : linears) by_rest[name.substr(scope.size())] = lin;
  // Either hub naming of the language model is accepted (longest prefix first).
  const std::vector<std::string> lm_prefixes{"model.language_model.", "language_model.model.", "model."};
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> factors;
  for (const auto& e : st.entries()) {
    const std::string& name = e.name;
    auto tensor_error = [&](const std::string& msg) {
      return runtime_error("consr_runtime::load_lora_adapter: '" + file + "': tensor '" + name + "': " + msg);
    };
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    if (!starts_with(name, peft_prefix) || !(is_a || is_b))
      throw tensor_error("not a PEFT LoRA factor (base_model.model.<module>.lora_A/lora_B.weight)");
    std::string path = name.substr(peft_prefix.size(), name.size() - peft_prefix.size() - std::string(".lora_A.weight").size());
    std::string rest;
    for (const auto& p : lm_prefixes)
      if (starts_with(path, p) && by_rest.count(path.substr(p.size()))) {
        rest = path.substr(p.size());
        break;
      }
    if (rest.empty()) throw tensor_error("names no linear layer of the language model");
    auto& slot = factors[rest];
    (is_a ? slot.first : slot.second) = st.load(name);
  }
  if (factors.empty()) throw runtime_error("consr_runtime::load_lora_adapter: '" + file + "' holds no LoRA tensors");
  remove_lora(model);
  std::set<std::string> suffixes;
  // Validate everything before attaching anything.
  for (auto& [rest, ab] : factors) {
    auto lin = by_rest.at(rest);
    const std::string where = "consr_runtime::load_lora_adapter: '" + file + "': module '" + rest + "': ";
    if (!ab.first.defined() || !ab.second.defined()) throw runtime_error(where + "has only one of lora_A / lora_B");
    if (ab.first.dim() != 2 || ab.first.size(0) != out.rank || ab.first.size(1) != lin->in_features())
      throw runtime_error(where + "lora_A must be [" + std::to_string(out.rank) + ", " + std::to_string(lin->in_features()) + "]");
    if (ab.second.dim() != 2 || ab.second.size(0) != lin->out_features() || ab.second.size(1) != out.rank)
      throw runtime_error(where + "lora_B must be [" + std::to_string(lin->out_features()) + ", " + std::to_string(out.rank) + "]");
  }
  for (auto& [rest, ab] : factors) {
    auto lin = by_rest.at(rest);
    lin->attach_lora(ab.first.to(lin->weight.options()), ab.second.to(lin->weight.options()), out.scaling());
    suffixes.insert(rest.substr(rest.rfind('.') + 1));
  }
  out.target_modules.assign(suffixes.begin(), suffixes.end());
  return out;
}

}  // namespace consr_runtime
