// load_weights: hub names under legacy and newer prefixes, dtype conversion, in-place copies, and
// errors that name missing / extra / mis-shaped tensors.
#include "runtime_test_support.hpp"

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>


#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/weights.hpp"

namespace fs = std::filesystem;
using consr_runtime::checkpoint;
using consr_runtime::load_options;
using consr_runtime::runtime_error;
using consr_runtime::weight_binding;
using Catch::Matchers::Contains;

namespace {

struct temp_dir : runtime_test::temp_dir {
  temp_dir() : runtime_test::temp_dir("consr_w") {}
};

// A miniature of the VLM layout: language model (embedding, a layer list, a buffer), vision part, head.
struct tiny_layer : torch::nn::Module {
  torch::nn::Linear q_proj{nullptr};
  tiny_layer() {
    q_proj = register_module("q_proj", torch::nn::Linear(4, 3));
    register_parameter("norm", torch::ones({4}));
  }
};
struct tiny_lm : torch::nn::Module {
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  tiny_lm() {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(10, 4));
    layers = register_module("layers", torch::nn::ModuleList());
    layers->push_back(std::make_shared<tiny_layer>());
    layers->push_back(std::make_shared<tiny_layer>());
    register_buffer("scale", torch::full({3}, 2.0));
  }
};
struct tiny_vlm : torch::nn::Module {
  std::shared_ptr<tiny_lm> language_model;
  torch::nn::Linear visual{nullptr};
  torch::nn::Linear lm_head{nullptr};
  tiny_vlm() {
    language_model = register_module("language_model", std::make_shared<tiny_lm>());
    visual = register_module("visual", torch::nn::Linear(2, 5));
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(4, 10).bias(false)));
  }
};

const std::vector<weight_binding> bindings = {
    {"language_model.", {"model.language_model.", "language_model.model."}},
    {"visual.", {"model.visual.", "visual."}},
    {"lm_head.", {"lm_head.", "language_model.lm_head."}},
};

/// Checkpoint tensors for every module tensor, named with the given prefixes, distinct values.
std::map<std::string, torch::Tensor> hub_tensors(const std::string& lm, const std::string& vis, const std::string& head) {
  tiny_vlm shape_source;
  std::map<std::string, torch::Tensor> out;
  int k = 0;
  auto add = [&](const std::string& module_name, const torch::Tensor& t) {
    std::string name;
    if (module_name.rfind("language_model.", 0) == 0) name = lm + module_name.substr(15);
    else if (module_name.rfind("visual.", 0) == 0) name = vis + module_name.substr(7);
    else name = head + module_name.substr(8);
    // bf16-exact values, different for every tensor
    out[name] = (torch::arange(t.numel(), torch::kFloat32).reshape(t.sizes()) * 0.25 + 100 * (++k)).to(torch::kBFloat16);
  };
  for (const auto& p : shape_source.named_parameters()) add(p.key(), p.value());
  for (const auto& b : shape_source.named_buffers()) add(b.key(), b.value());
  return out;
}

std::string write_checkpoint(const temp_dir& dir, const std::map<std::string, torch::Tensor>& ts) {
  std::vector<std::pair<std::string, torch::Tensor>> v(ts.begin(), ts.end());
  consr_runtime::save_safetensors((dir.path / "model.safetensors").string(), v);
  return dir.path.string();
}

std::string load_error(torch::nn::Module& m, const checkpoint& ck, const std::vector<weight_binding>& b,
                       const load_options& o = {}) {
  try {
    consr_runtime::load_weights(m, ck, b, o);
  } catch (const runtime_error& e) {
    return e.what();
  }
  return "";
}

/// Snapshot of all parameter/buffer values, to check that a failed load changes nothing.
std::map<std::string, torch::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().detach().clone();
  return out;
}
bool same(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b) {
  for (const auto& [k, v] : a)
    if (!torch::equal(v, b.at(k))) return false;
  return a.size() == b.size();
}

/// What the load-error cases share: a directory for the checkpoint, a fresh model, and its values
/// before any load (a failed load must leave them unchanged).
struct load_fixture {
  temp_dir dir;
  tiny_vlm m;
  const std::map<std::string, torch::Tensor> before = snapshot(m);
};

}  // namespace

TEST_CASE("load_weights: newer and legacy hub prefixes both load, converting bf16 to the module dtype") {
  const std::vector<std::array<std::string, 3>> layouts = {
      {"model.language_model.", "model.visual.", "lm_head."},  // transformers >= 4.52 saves
      {"language_model.model.", "visual.", "language_model.lm_head."},  // legacy hub layouts
  };
  for (const auto& layout : layouts) {
    INFO("layout " << layout[0]);
    temp_dir dir;
    const auto ts = hub_tensors(layout[0], layout[1], layout[2]);
    checkpoint ck(write_checkpoint(dir, ts));
    tiny_vlm m;
    const void* q_ptr_before = m.language_model->layers[1]->as<tiny_layer>()->q_proj->weight.data_ptr();
    consr_runtime::load_weights(m, ck, bindings);

    // Same storage (copied in place), still registered, still trainable, float32.
    auto* layer1 = m.language_model->layers[1]->as<tiny_layer>();
    CHECK(layer1->q_proj->weight.data_ptr() == q_ptr_before);
    CHECK(layer1->q_proj->weight.requires_grad());
    CHECK(layer1->q_proj->weight.scalar_type() == torch::kFloat32);
    CHECK_FALSE(layer1->q_proj->weight.grad_fn());
    for (const auto& p : m.named_parameters()) {
      const std::string& name = p.key();
      std::string ck_name = name.rfind("language_model.", 0) == 0 ? layout[0] + name.substr(15)
                            : name.rfind("visual.", 0) == 0        ? layout[1] + name.substr(7)
                                                                   : layout[2] + name.substr(8);
      INFO(name << " <- " << ck_name);
      CHECK(torch::equal(p.value(), ts.at(ck_name).to(torch::kFloat32)));
    }
    CHECK(torch::equal(m.language_model->named_buffers()["scale"], ts.at(layout[0] + "scale").to(torch::kFloat32)));
  }
}

TEST_CASE_METHOD(load_fixture,
                 "load_weights: the first present candidate prefix wins, the longest module prefix binds") {
  auto ts = hub_tensors("model.language_model.", "model.visual.", "lm_head.");
  // A second copy of the head under the legacy name: the first candidate ("lm_head.") is used, and
  // the other copy is an extra unless ignored.
  ts["language_model.lm_head.weight"] = torch::zeros({10, 4});
  checkpoint ck(write_checkpoint(dir, ts));
  CHECK_THAT(load_error(m, ck, bindings), Contains("extra") && Contains("'language_model.lm_head.weight'"));
  load_options o;
  o.ignore_extra = {"^language_model\\.lm_head\\."};
  consr_runtime::load_weights(m, ck, bindings, o);
  CHECK(torch::equal(m.lm_head->weight, ts.at("lm_head.weight").to(torch::kFloat32)));

  // A more specific binding overrides the general one for its subtree.
  auto specific = bindings;
  specific.push_back({"language_model.layers.1.", {"model.language_model.layers.0."}});
  tiny_vlm m2;
  // layers.1 of the checkpoint is now unused: an error unless ignored.
  CHECK_THAT(load_error(m2, ck, specific, o), Contains("3 extra") && Contains("'model.language_model.layers.1.norm'"));
  o.ignore_extra.push_back("^model\\.language_model\\.layers\\.1\\.");
  consr_runtime::load_weights(m2, ck, specific, o);
  auto* l1 = m2.language_model->layers[1]->as<tiny_layer>();
  CHECK(torch::equal(l1->q_proj->weight, ts.at("model.language_model.layers.0.q_proj.weight").to(torch::kFloat32)));
}

TEST_CASE_METHOD(load_fixture,
                 "load_weights: a missing tensor is an error naming it and the names tried; the module is unchanged") {
  auto ts = hub_tensors("model.language_model.", "model.visual.", "lm_head.");
  ts.erase("model.language_model.layers.1.q_proj.bias");
  checkpoint ck(write_checkpoint(dir, ts));
  const std::string msg = load_error(m, ck, bindings);
  CHECK_THAT(msg, Contains("1 missing") && Contains("'language_model.layers.1.q_proj.bias'") &&
                      Contains("'model.language_model.layers.1.q_proj.bias'") &&
                      Contains("'language_model.model.layers.1.q_proj.bias'") && Contains(dir.path.string()));
  CHECK(same(before, snapshot(m)));

  // ignore_missing leaves that tensor as it was and loads the rest.
  load_options o;
  o.ignore_missing = {"layers\\.1\\.q_proj\\.bias$"};
  consr_runtime::load_weights(m, ck, bindings, o);
  auto* l1 = m.language_model->layers[1]->as<tiny_layer>();
  CHECK(torch::equal(l1->q_proj->bias, before.at("language_model.layers.1.q_proj.bias")));
  CHECK(torch::equal(l1->q_proj->weight, ts.at("model.language_model.layers.1.q_proj.weight").to(torch::kFloat32)));
}

TEST_CASE_METHOD(load_fixture,
                 "load_weights: an extra checkpoint tensor is an error naming it unless ignore_extra matches") {
  auto ts = hub_tensors("model.language_model.", "model.visual.", "lm_head.");
  ts["model.visual.unused_head.weight"] = torch::ones({2});
  ts["model.language_model.rotary_emb.inv_freq"] = torch::ones({2});
  checkpoint ck(write_checkpoint(dir, ts));
  const std::string msg = load_error(m, ck, bindings);
  CHECK_THAT(msg, Contains("2 extra") && Contains("'model.visual.unused_head.weight'") &&
                      Contains("'model.language_model.rotary_emb.inv_freq'"));
  CHECK(same(before, snapshot(m)));
  load_options o;
  o.ignore_extra = {"unused_head", "rotary_emb\\.inv_freq$"};
  consr_runtime::load_weights(m, ck, bindings, o);
  CHECK(torch::equal(m.visual->weight, ts.at("model.visual.weight").to(torch::kFloat32)));
  o.ignore_extra = {"unused_head"};
  CHECK_THAT(load_error(m, ck, bindings, o), Contains("1 extra") && Contains("inv_freq") && !Contains("unused_head"));
}

TEST_CASE_METHOD(load_fixture, "load_weights: a mis-shaped tensor is an error naming it with both shapes") {
  auto ts = hub_tensors("language_model.model.", "visual.", "language_model.lm_head.");
  ts["visual.weight"] = torch::zeros({5, 3});
  checkpoint ck(write_checkpoint(dir, ts));
  const std::string msg = load_error(m, ck, bindings);
  CHECK_THAT(msg, Contains("1 mis-shaped") && Contains("'visual.weight'") && Contains("[5, 3]") && Contains("[5, 2]"));
  CHECK_THAT(msg, !Contains("extra"));  // a mis-shaped tensor is not also reported as unused
  CHECK(same(before, snapshot(m)));
}

TEST_CASE_METHOD(load_fixture, "load_weights: tensors no binding covers, and invalid regexes, are errors") {
  checkpoint ck(write_checkpoint(dir, hub_tensors("model.language_model.", "model.visual.", "lm_head.")));
  std::vector<weight_binding> partial(bindings.begin(), bindings.begin() + 2);  // no lm_head binding
  CHECK_THAT(load_error(m, ck, partial), Contains("no binding") && Contains("'lm_head.weight'") &&
                                             Contains("extra") && Contains("'lm_head.weight'"));
  load_options bad;
  bad.ignore_extra = {"(unclosed"};
  CHECK_THAT(load_error(m, ck, bindings, bad), Contains("ignore_extra") && Contains("(unclosed"));
  // A catch-all binding with an empty module prefix.
  std::vector<weight_binding> all = {{"", {"x."}}};
  CHECK_THAT(load_error(m, ck, all), Contains("'x.lm_head.weight'"));
}
