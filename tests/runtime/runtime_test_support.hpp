// tests/runtime/runtime_test_support.hpp — what the runtime's tests share: LibTorch before Catch, the
// fixture directories, JSON fixtures, the models' reference outputs, tensor differences, exception
// messages and temporary directories (the last two from tests/test_files.hpp), small qwen2 configs with
// random weights, and the vision towers loaded from a model fixture.
#pragma once

// LibTorch first: its glog headers define CHECK(condition), which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "../test_files.hpp"

#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "consr_runtime/config.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/weights.hpp"

namespace runtime_test {

/// tests/fixtures and its model fixtures (tools/make_*_fixture*.py).
inline const std::string fixtures_dir = CONSR_FIXTURES_DIR;
inline const std::string models_dir = fixtures_dir + "/models";

/// A JSON fixture; REQUIREs that it opens.
inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

/// A model fixture's reference outputs from transformers (tools/make_model_fixtures.py):
/// <dir>/reference.safetensors as `ref` (f["name"] loads a tensor) and <dir>/reference.json as `meta`.
struct model_reference {
  std::string dir;
  consr_runtime::safetensors_file ref;
  nlohmann::json meta;
  explicit model_reference(const std::string& d)
      : dir(d), ref(d + "/reference.safetensors"), meta(read_json(d + "/reference.json")) {}
  torch::Tensor operator[](const std::string& name) const { return ref.load(name); }
};

/// max |a − b| in double.
inline double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

inline bool message_contains(const std::exception& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}

/// Temporary directories and exception messages, shared with tests/eval and tests/pipeline.
using consr_test_files::temp_dir;
using consr_test_files::thrown;

/// A small qwen2 text decoder: 4 query heads and 2 key/value heads of 8 (head_dim != hidden / heads on
/// purpose, as an explicit config head_dim), a small θ so that the positions change the result visibly.
inline consr_runtime::text_config tiny_text_config(std::int64_t vocab_size, std::int64_t hidden_size,
                                                   std::int64_t intermediate_size, std::int64_t layers) {
  consr_runtime::text_config c;
  c.model_type = "qwen2";
  c.vocab_size = vocab_size;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 100.0;
  return c;
}

/// Seeded random weights: norms (and the vision merger's ln_q) near 1, everything else scale · N(0, 1).
inline void randomize(torch::nn::Module& m, std::uint64_t seed, double scale = 0.3) {
  torch::manual_seed(static_cast<std::int64_t>(seed));
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
    if (p.key().find("norm") != std::string::npos || p.key().find("ln_q") != std::string::npos)
      p.value().copy_(1.0 + 0.2 * torch::randn(p.value().sizes()));
    else
      p.value().copy_(scale * torch::randn(p.value().sizes()));
  }
}

/// The Qwen2.5-VL vision tower of the model fixture in `dir`, its tensors under `prefix`, in eval mode.
inline consr_runtime::qwen2_5_vl_vision_model load_qwen_vision(const std::string& dir,
                                                               const std::string& prefix = "visual.") {
  const auto config = consr_runtime::load_model_config(dir);
  REQUIRE(config.qwen2_5_vl);
  consr_runtime::qwen2_5_vl_vision_model vision(config.qwen2_5_vl->vision);
  consr_runtime::checkpoint ck(dir);
  consr_runtime::load_options options;
  options.ignore_extra = {"^model\\.(language_model\\.)?(embed_tokens|layers|norm)", "^lm_head\\."};
  consr_runtime::load_weights(*vision, ck, {{"", {prefix}}}, options);
  vision->eval();
  return vision;
}

/// The LLaVA-OneVision vision tower + projector of the model fixture in `dir`, the tower's tensors under
/// `tower_prefix`, in eval mode.
inline consr_runtime::llava_onevision_vision load_llava_vision(const std::string& dir,
                                                               const std::string& tower_prefix = "vision_tower.") {
  const auto config = consr_runtime::load_model_config(dir);
  REQUIRE(config.llava_onevision);
  consr_runtime::llava_onevision_vision vision(*config.llava_onevision);
  consr_runtime::checkpoint ck(dir);
  consr_runtime::load_options options;
  options.ignore_extra = {"^language_model\\."};
  consr_runtime::load_weights(*vision, ck,
                              {{"vision_tower.vision_model.", {tower_prefix}},
                               {"multi_modal_projector.", {"multi_modal_projector."}},
                               {"image_newline", {"image_newline"}}},
                              options);
  vision->eval();
  return vision;
}

}  // namespace runtime_test
