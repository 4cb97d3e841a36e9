// LoRA on the language model: zero delta at init, the forward against a hand-written reference,
// initialisation, trainable parameters and gradients, PEFT names in both namings (the default is
// transformers 5's module tree, what PeftModel.from_pretrained loads) checked against the module
// tree they must match, and the adapter_model.safetensors / adapter_config.json round trip.
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/lora.hpp"
#include "consr_runtime/model_io.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/safetensors.hpp"

using namespace consr_runtime;
namespace fs = std::filesystem;

namespace {

const std::string models_dir = std::string(CONSR_FIXTURES_DIR) + "/models/";

model_inputs text_inputs(const std::string& dir) {
  safetensors_file ref(dir + "/reference.safetensors");
  model_inputs in;
  in.input_ids = ref.load("text_input_ids").view({1, -1});
  return in;
}

std::string temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("consr_lora_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

// Sets every lora_B to a deterministic non-zero pattern so the adapter has an effect.
void perturb_lora_b(vision_language_model& model, double scale) {
  torch::NoGradGuard no_grad;
  std::int64_t k = 0;
  for (auto& p : model.named_parameters()) {
    if (p.key().find(".lora_B.") == std::string::npos) continue;
    torch::Tensor v = torch::arange(p.value().numel(), torch::kFloat64).view(p.value().sizes());
    p.value().copy_(torch::sin(v * 0.37 + static_cast<double>(k++)) * scale);
  }
}

}  // namespace

TEST_CASE("lora: a fresh adapter leaves the logits unchanged; only LM linears are wrapped", "[lora]") {
  auto model = load_model(models_dir + "llava_onevision_tiny");
  torch::NoGradGuard no_grad;
  model_inputs in = text_inputs(models_dir + "llava_onevision_tiny");
  torch::Tensor before = model->forward(in);
  lora_config cfg;
  cfg.rank = 4;
  cfg.alpha = 8;
  auto wrapped = apply_lora(*model, cfg);
  // 2 layers × 7 targets; SigLIP's q_proj/k_proj/v_proj are not touched.
  CHECK(wrapped.size() == 14);
  CHECK(wrapped.front() == "model.language_model.layers.0.self_attn.q_proj");
  for (const auto& w : wrapped) CHECK(w.rfind("model.language_model.layers.", 0) == 0);
  CHECK(lora_parameters(*model).size() == 28);
  CHECK(model->forward(in).equal(before));  // B = 0: bit-identical

  std::set<std::string> names;
  for (auto& p : model->named_parameters()) names.insert(p.key());
  CHECK(names.count("model.language_model.layers.1.mlp.down_proj.lora_A.weight") == 1);
  CHECK(names.count("model.language_model.layers.1.mlp.down_proj.lora_B.weight") == 1);

  cfg.target_modules = {"q_proj", "v_proj"};
  CHECK(apply_lora(*model, cfg).size() == 4);  // replaces the previous adapter
  CHECK(lora_parameters(*model).size() == 8);
  remove_lora(*model);
  CHECK(lora_parameters(*model).empty());
}

TEST_CASE("lora: the forward adds scaling · B(A(x)) (reference in double)", "[lora]") {
  linear lin(8, 5, true);
  torch::manual_seed(0);
  torch::Tensor w = torch::randn({5, 8}), b = torch::randn({5}), a = torch::randn({3, 8}), bb = torch::randn({5, 3});
  {
    torch::NoGradGuard no_grad;
    lin->weight.copy_(w);
    lin->bias.copy_(b);
  }
  for (bool rslora : {false, true}) {
    lora_config cfg;
    cfg.rank = 3;
    cfg.alpha = 6;
    cfg.use_rslora = rslora;
    const double scaling = rslora ? 6.0 / std::sqrt(3.0) : 2.0;
    CHECK(cfg.scaling() == Approx(scaling));
    lin->attach_lora(a, bb, cfg.scaling());
    torch::Tensor x = torch::randn({2, 4, 8});
    torch::Tensor y = lin->forward(x).to(torch::kFloat64);
    torch::Tensor xd = x.to(torch::kFloat64);
    torch::Tensor expected = torch::matmul(xd, w.to(torch::kFloat64).t()) + b.to(torch::kFloat64) +
                             scaling * torch::matmul(torch::matmul(xd, a.to(torch::kFloat64).t()), bb.to(torch::kFloat64).t());
    CHECK(torch::allclose(y, expected, 1e-5, 1e-5));
  }
  CHECK_THROWS_WITH(lin->attach_lora(torch::zeros({3, 7}), bb, 1.0), Catch::Contains("'lora_a'"));
  CHECK_THROWS_WITH(lin->attach_lora(a, torch::zeros({5, 2}), 1.0), Catch::Contains("'lora_b'"));
}

TEST_CASE("lora: A is kaiming-uniform(a=√5) from the seed, B is zero", "[lora]") {
  auto model = load_model(models_dir + "qwen2_5_vl_tiny");
  lora_config cfg;
  cfg.rank = 16;
  cfg.seed = 7;
  cfg.target_modules = {"gate_proj", "down_proj"};
  apply_lora(*model, cfg);
  auto params = model->named_parameters();
  torch::Tensor a = params["model.language_model.layers.0.mlp.gate_proj.lora_A.weight"].detach().to(torch::kFloat64);
  torch::Tensor b = params["model.language_model.layers.0.mlp.gate_proj.lora_B.weight"].detach();
  torch::Tensor a_down = params["model.language_model.layers.0.mlp.down_proj.lora_A.weight"].detach().to(torch::kFloat64);
  CHECK(b.eq(0).all().item<bool>());
  const double bound = 1.0 / std::sqrt(64.0), bound_down = 1.0 / std::sqrt(128.0);  // fan_in = in_features
  CHECK(a.abs().max().item<double>() <= bound);
  CHECK(a.abs().max().item<double>() > 0.9 * bound);
  CHECK(a_down.abs().max().item<double>() <= bound_down);
  CHECK(std::abs(a.mean().item<double>()) < 0.1 * bound);
  CHECK(a.pow(2).mean().item<double>() == Approx(bound * bound / 3).epsilon(0.15));  // U(−c, c): c²/3
  CHECK_FALSE(a.narrow(1, 0, 64).equal(a_down.narrow(1, 0, 64)));  // each module draws its own values
  // Same seed → same A; another seed → another A.
  auto again = load_model(models_dir + "qwen2_5_vl_tiny");
  apply_lora(*again, cfg);
  CHECK(again->named_parameters()["model.language_model.layers.0.mlp.gate_proj.lora_A.weight"].to(torch::kFloat64).equal(a));
  cfg.seed = 8;
  apply_lora(*again, cfg);
  CHECK_FALSE(again->named_parameters()["model.language_model.layers.0.mlp.gate_proj.lora_A.weight"].to(torch::kFloat64).equal(a));
}

TEST_CASE("lora: only the adapter is trainable and receives gradients", "[lora]") {
  auto model = load_model(models_dir + "qwen2_5_vl_tiny");
  lora_config cfg;
  cfg.rank = 2;
  apply_lora(*model, cfg);
  mark_only_lora_trainable(*model);
  std::int64_t trainable = 0;
  for (auto& p : model->named_parameters()) {
    bool is_lora = p.key().find(".lora_") != std::string::npos;
    CHECK(p.value().requires_grad() == is_lora);
    trainable += p.value().requires_grad();
  }
  CHECK(trainable == 28);
  prompt_input prompt;
  safetensors_file ref(models_dir + "qwen2_5_vl_tiny/reference.safetensors");
  torch::Tensor ids = ref.load("text_input_ids");
  prompt.input_ids.assign(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
  torch::Tensor resp = ref.load("response_ids");
  std::vector<std::int64_t> response(resp.data_ptr<std::int64_t>(), resp.data_ptr<std::int64_t>() + resp.numel());
  auto batch = teacher_forced_logprobs(*model, {prompt}, {response}, response.back());
  batch.logprobs.sum().backward();
  auto params = model->named_parameters();
  torch::Tensor grad_b = params["model.language_model.layers.1.self_attn.v_proj.lora_B.weight"].grad();
  REQUIRE(grad_b.defined());
  CHECK(grad_b.abs().max().item<double>() > 0);
  CHECK_FALSE(params["model.language_model.layers.1.self_attn.v_proj.weight"].grad().defined());
}

TEST_CASE("lora: PEFT names in the checkpoint's hub naming (legacy layout); save → load round trip", "[lora]") {
  struct naming {
    std::string model;
    std::string expected_prefix;
  };
  for (const naming& n : {naming{"qwen2_5_vl_tiny", "base_model.model.model.layers."},
                          naming{"qwen2_5_vl_tiny_sharded", "base_model.model.model.language_model.layers."},
                          naming{"llava_onevision_tiny", "base_model.model.language_model.model.layers."}}) {
    INFO(n.model);
    auto model = load_model(models_dir + n.model);
    lora_config cfg;
    cfg.rank = 4;
    cfg.alpha = 32;
    cfg.target_modules = {"q_proj", "o_proj", "up_proj"};
    auto wrapped = apply_lora(*model, cfg);
    CHECK(peft_tensor_name(*model, wrapped[0], false, lora_naming::checkpoint) ==
          n.expected_prefix + "0.self_attn.q_proj.lora_A.weight");
    CHECK(peft_tensor_name(*model, wrapped[0], true, lora_naming::checkpoint) ==
          n.expected_prefix + "0.self_attn.q_proj.lora_B.weight");
    CHECK(peft_tensor_name(*model, wrapped[0], true, lora_naming::transformers5) ==
          "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight");
    perturb_lora_b(*model, 0.05);
    torch::NoGradGuard no_grad;
    model_inputs in = text_inputs(models_dir + (n.model == "qwen2_5_vl_tiny_sharded" ? "qwen2_5_vl_tiny" : n.model));
    torch::Tensor with_adapter = model->forward(in);
    remove_lora(*model);
    torch::Tensor base = model->forward(in);
    CHECK((with_adapter - base).abs().max().item<double>() > 1e-3);  // the manual update matters
    apply_lora(*model, cfg);
    perturb_lora_b(*model, 0.05);

    std::string dir = temp_dir(n.model);
    save_lora_adapter(*model, cfg, dir, "", lora_naming::checkpoint);
    safetensors_file file(dir + "/adapter_model.safetensors");
    CHECK(file.entries().size() == 2 * wrapped.size());
    for (const auto& e : file.entries()) CHECK(e.name.rfind(n.expected_prefix, 0) == 0);
    CHECK(file.contains(n.expected_prefix + "1.mlp.up_proj.lora_B.weight"));
    CHECK(file.entry(n.expected_prefix + "1.mlp.up_proj.lora_B.weight").shape == std::vector<std::int64_t>{128, 4});
    nlohmann::json meta;
    std::ifstream(dir + "/adapter_config.json") >> meta;
    CHECK(meta["peft_type"] == "LORA");
    CHECK(meta["task_type"] == "CAUSAL_LM");
    CHECK(meta["r"] == 4);
    CHECK(meta["lora_alpha"] == 32.0);
    CHECK(meta["base_model_name_or_path"] == models_dir + n.model);
    CHECK(meta["target_modules"].get<std::string>().find("o_proj|q_proj|up_proj") != std::string::npos);

    // A fresh model (any naming of the same weights) gets the same logits after loading.
    auto fresh = load_model(models_dir + n.model);
    lora_config loaded = load_lora_adapter(*fresh, dir);
    CHECK(loaded.rank == 4);
    CHECK(loaded.alpha == 32.0);
    CHECK(loaded.target_modules == std::vector<std::string>{"o_proj", "q_proj", "up_proj"});
    CHECK(fresh->forward(in).equal(model->forward(in)));
    // The transformers-5 naming loads back too.
    fs::remove_all(dir);
    save_lora_adapter(*model, cfg, dir, "", lora_naming::transformers5);
    CHECK(safetensors_file(dir + "/adapter_model.safetensors")
              .contains("base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.weight"));
    auto fresh5 = load_model(models_dir + n.model);
    load_lora_adapter(*fresh5, dir);
    CHECK(fresh5->forward(in).equal(model->forward(in)));
    fs::remove_all(dir);
  }
}

TEST_CASE("lora: the default names are transformers 5's module tree (what PEFT loads), checked against it",
          "[lora][naming]") {
  // transformers 5's in-memory parameter names, independently of the runtime: the Qwen2.5-VL sharded
  // fixture is saved in that layout, and tools/make_model_fixtures.py checked that transformers
  // 5.24 loads it to the same logits.
  const checkpoint t5_qwen(models_dir + "qwen2_5_vl_tiny_sharded");
  for (const std::string name : {"qwen2_5_vl_tiny", "qwen2_5_vl_tiny_sharded", "llava_onevision_tiny",
                                 "llava_onevision_tiny_sharded"}) {
    INFO(name);
    auto model = load_model(models_dir + name);
    const std::vector<std::string> wrapped = apply_lora(*model, lora_config{});  // the 7 default targets
    REQUIRE(wrapped.size() == 14);                                                // 2 decoder layers
    const std::string dir = temp_dir("default_" + name);
    const std::vector<std::string> written = save_lora_adapter(*model, lora_config{}, dir);  // default naming
    safetensors_file file(dir + "/adapter_model.safetensors");
    REQUIRE(file.entries().size() == 28);
    CHECK(written.size() == 28);
    const std::vector<std::string> tree = hub_parameter_names(*model, hub_naming::transformers5);
    const std::set<std::string> tree_set(tree.begin(), tree.end());
    std::vector<std::string> names;
    for (const auto& e : file.entries()) {
      INFO(e.name);
      names.push_back(e.name);
      CHECK(e.name.rfind("base_model.model.model.language_model.layers.", 0) == 0);
      const std::string module = e.name.substr(std::string("base_model.model.").size(),
                                               e.name.size() - std::string("base_model.model.").size() -
                                                   std::string(".lora_A.weight").size());
      CHECK(tree_set.count(module + ".weight") == 1);
      if (name.rfind("qwen", 0) == 0) CHECK(t5_qwen.contains(module + ".weight"));
    }
    CHECK(names == written);
    CHECK(lora_names_outside_module_tree(*model, names, lora_naming::transformers5).empty());
    // transformers 5's tree as PEFT wraps it: model.language_model.*, model.visual.* /
    // model.vision_tower.vision_model.*, lm_head.*.
    CHECK(tree_set.count("model.language_model.layers.1.mlp.down_proj.weight") == 1);
    CHECK(tree_set.count("lm_head.weight") == (model->text().tie_word_embeddings ? 0 : 1));
    CHECK(tree_set.count(name.rfind("qwen", 0) == 0 ? "model.visual.patch_embed.proj.weight"
                                                    : "model.vision_tower.vision_model.embeddings.patch_embedding.weight") == 1);
    if (name.rfind("qwen", 0) == 0) {
      const auto t5_names = t5_qwen.names();
      CHECK(tree == std::vector<std::string>(t5_names.begin(), t5_names.end()));
    }

    // The legacy (checkpoint) names match the checkpoint they came from; for the Qwen2.5-VL hub
    // layout (model.layers.*) none of them is in transformers 5's tree: the silent no-op load.
    fs::remove_all(dir);
    const std::vector<std::string> legacy = save_lora_adapter(*model, lora_config{}, dir, "", lora_naming::checkpoint);
    CHECK(lora_names_outside_module_tree(*model, legacy, lora_naming::checkpoint).empty());
    const std::size_t outside_t5 = lora_names_outside_module_tree(*model, legacy, lora_naming::transformers5).size();
    if (name == "qwen2_5_vl_tiny") {
      CHECK(legacy.front().rfind("base_model.model.model.layers.", 0) == 0);
      CHECK(outside_t5 == 28);
    }
    // Not a LoRA factor at all, or a vision-tower module.
    CHECK(lora_names_outside_module_tree(*model, {"base_model.model.model.language_model.layers.0.self_attn.q_proj.weight",
                                                  "model.language_model.layers.0.self_attn.q_proj.lora_A.weight"},
                                         lora_naming::transformers5)
              .size() == 2);
    fs::remove_all(dir);
  }
}

TEST_CASE("lora: bad configs and adapter files are rejected", "[lora]") {
  auto model = load_model(models_dir + "qwen2_5_vl_tiny");
  lora_config cfg;
  cfg.rank = 0;
  CHECK_THROWS_WITH(apply_lora(*model, cfg), Catch::Contains("'rank'"));
  cfg = lora_config{};
  cfg.dropout = 0.1;
  CHECK_THROWS_WITH(apply_lora(*model, cfg), Catch::Contains("'dropout'"));
  cfg = lora_config{};
  cfg.target_modules = {"qkv"};  // a vision-tower name: nothing in the language model
  CHECK_THROWS_WITH(apply_lora(*model, cfg), Catch::Contains("'target_modules'"));
  CHECK_THROWS_WITH(save_lora_adapter(*model, lora_config{}, temp_dir("none")), Catch::Contains("no LoRA adapter"));

  cfg = lora_config{};
  cfg.rank = 2;
  cfg.target_modules = {"k_proj"};
  apply_lora(*model, cfg);
  std::string dir = temp_dir("bad");
  save_lora_adapter(*model, cfg, dir);
  auto rewrite_config = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json meta;
    std::ifstream(dir + "/adapter_config.json") >> meta;
    meta[key] = value;
    std::ofstream(dir + "/adapter_config.json") << meta.dump();
  };
  rewrite_config("peft_type", "IA3");
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Catch::Contains("'peft_type'") && Catch::Contains("adapter_config.json"));
  rewrite_config("peft_type", "LORA");
  rewrite_config("r", 3);  // the tensors have rank 2
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Catch::Contains("lora_A must be [3"));
  rewrite_config("r", 2);
  save_safetensors(dir + "/adapter_model.safetensors",
                   {{"base_model.model.model.layers.0.self_attn.qkv.lora_A.weight", torch::zeros({2, 64})}});
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Catch::Contains("names no linear layer"));
  save_safetensors(dir + "/adapter_model.safetensors",
                   {{"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", torch::zeros({2, 64})}});
  CHECK_THROWS_WITH(load_lora_adapter(*model, dir), Catch::Contains("only one of lora_A / lora_B"));
  CHECK_THROWS_AS(load_lora_adapter(*model, dir + "/missing"), runtime_error);
  fs::remove_all(dir);
}

TEST_CASE("lora: export an adapter and its logits for the PEFT check (only when asked)", "[lora][export]") {
  // tools/check_lora_with_peft.py loads this adapter with PyPI peft on the HF model and compares
  // the logits; run with CONSR_LORA_EXPORT_DIR=<dir>. Not part of CI.
  const char* out = std::getenv("CONSR_LORA_EXPORT_DIR");
  if (!out) return;
  for (const std::string name : {"qwen2_5_vl_tiny", "llava_onevision_tiny"}) {
    auto model = load_model(models_dir + name);
    lora_config cfg;
    cfg.rank = 4;
    cfg.alpha = 8;
    apply_lora(*model, cfg);
    perturb_lora_b(*model, 0.05);
    torch::NoGradGuard no_grad;
    model_inputs in = text_inputs(models_dir + name);
    torch::Tensor logits = model->forward(in)[0].contiguous();
    for (lora_naming naming : {lora_naming::checkpoint, lora_naming::transformers5}) {
      std::string dir = std::string(out) + "/" + name + (naming == lora_naming::checkpoint ? "/checkpoint" : "/transformers5");
      save_lora_adapter(*model, cfg, dir, "", naming);
      save_safetensors(dir + "/expected_logits.safetensors", {{"input_ids", in.input_ids}, {"logits", logits}});
    }
    // What a caller (the pipeline's train stage) writes without choosing a naming.
    const std::string dir = std::string(out) + "/" + name + "/default";
    save_lora_adapter(*model, cfg, dir);
    save_safetensors(dir + "/expected_logits.safetensors", {{"input_ids", in.input_ids}, {"logits", logits}});
  }
}
