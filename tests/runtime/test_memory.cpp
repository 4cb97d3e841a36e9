// Memory bounds of the runtime (issue 17 §2): query-chunked attention in the vision towers and the
// text decoder (CONSR_ATTENTION_CHUNK_ELEMENTS forces tiny chunks: the results must not change), and
// gradient checkpointing per decoder layer (loss and gradients equal to the plain forward's).
// Hidden test cases ([.memory], not in the default run) measure the peak RSS of one training step at
// the Qwen2.5-VL-3B text widths with and without checkpointing, and of the vision tower on a large
// image; docs/performance.md ("issue 17 §2 memory") has the commands and the numbers.
#include "runtime_test_support.hpp"

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/qwen2.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/weights.hpp"

using namespace runtime_test;
using consr_runtime::text_config;

namespace {

// Sets CONSR_ATTENTION_CHUNK_ELEMENTS for the scope of the object and restores what was there.
struct chunk_env {
  std::optional<std::string> previous;
  explicit chunk_env(const std::string& value) {
    if (const char* p = std::getenv("CONSR_ATTENTION_CHUNK_ELEMENTS")) previous = p;
    ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", value.c_str(), 1);
  }
  ~chunk_env() {
    if (previous)
      ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", previous->c_str(), 1);
    else
      ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
  }
};

// The default budget applies whatever the calling environment says.
struct default_chunks : chunk_env {
  default_chunks() : chunk_env("67108864") {}
};

// Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mib() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace

// ---- query-chunked attention ---------------------------------------------------------------------

TEST_CASE("memory: Qwen2.5-VL vision in one-query chunks equals the unchunked tower and HF", "[memory][vision]") {
  const std::string dir = models_dir + "/qwen2_5_vl_tiny";
  consr_runtime::safetensors_file ref(dir + "/reference.safetensors");
  auto vision = load_qwen_vision(dir);
  torch::NoGradGuard no_grad;
  const auto pixel_values = ref.load("pixel_values");
  const auto grid = ref.load("image_grid_thw");
  torch::Tensor whole;
  {
    default_chunks env;
    whole = vision->forward(pixel_values, grid);
  }
  // Budget 1: one query row per chunk in every window and full-attention segment.
  chunk_env env("1");
  const auto chunked = vision->forward(pixel_values, grid);
  REQUIRE(chunked.sizes() == whole.sizes());
  CHECK(max_abs(chunked, whole) <= 1e-5);
  CHECK(max_abs(chunked, ref.load("vision_features")) <= 1e-4);

  // A random tower (not the fixture's weights) on a 16 x 16-patch image: 4 windows of 64 patches and
  // a 256-patch full-attention segment, with a budget that splits them into uneven chunks.
  randomize(*vision, 7, 0.2);
  const auto pixels = torch::randn({256, pixel_values.size(1)});
  const auto grid16 = torch::tensor({1, 16, 16}, torch::kLong).view({1, 3});
  torch::Tensor base;
  {
    default_chunks d;
    base = vision->forward(pixels, grid16);
  }
  chunk_env uneven("1500");  // 2 heads x 256 keys: 2 queries per chunk; 2 x 64: 11 per chunk
  const auto split = vision->forward(pixels, grid16);
  CHECK(max_abs(split, base) <= 1e-5);
  CHECK(base.abs().max().item<double>() > 1e-2);  // not a degenerate all-zero comparison
}

TEST_CASE("memory: LLaVA-OneVision SigLIP tower in one-query chunks equals the unchunked tower", "[memory][vision]") {
  const std::string dir = models_dir + "/llava_onevision_tiny";
  auto vision = load_llava_vision(dir);
  randomize(*vision, 11, 0.05);  // features of order 1, where 1e-5 is a few fp32 ulps of rounding
  torch::NoGradGuard no_grad;
  const auto size = vision->config().vision.image_size;
  torch::manual_seed(3);
  const auto tiles = torch::randn({2, 3, size, size});
  torch::Tensor whole;
  {
    default_chunks env;
    whole = vision->tile_features(tiles);
  }
  torch::Tensor chunked, uneven;
  {
    chunk_env env("1");
    chunked = vision->tile_features(tiles);
  }
  {
    chunk_env env("100000");  // 2 tiles x 2 heads x 729 keys: 34 queries per chunk, a partial last one
    uneven = vision->tile_features(tiles);
  }
  REQUIRE(chunked.sizes() == whole.sizes());
  INFO("max |features| " << whole.abs().max().item<double>());
  CHECK(max_abs(chunked, whole) <= 1e-5);
  CHECK(max_abs(uneven, whole) <= 1e-5);
  CHECK(whole.abs().max().item<double>() > 1e-2);
}

TEST_CASE("memory: the text decoder in one-query chunks equals one chunk; a bad budget is named", "[memory][qwen2]") {
  const text_config c = tiny_text_config(41, 32, 48, 2);
  consr_runtime::qwen2_causal_lm lm(c);
  randomize(*lm, 5);
  torch::NoGradGuard no_grad;
  const auto ids = torch::remainder(torch::arange(2 * 19) * 5 + 1, c.vocab_size).view({2, 19});
  auto mask = torch::ones({2, 19}, torch::kLong);
  mask[0].narrow(0, 0, 4).zero_();  // left padding in row 0
  const auto positions = consr_runtime::positions_from_mask(mask);
  torch::Tensor whole;
  {
    default_chunks env;
    whole = lm->forward(ids, positions, mask);
  }
  {
    chunk_env env("1");
    CHECK(max_abs(lm->forward(ids, positions, mask), whole) <= 1e-5);
  }
  for (const char* bad : {"0", "-3", "12abc", "lots"}) {
    chunk_env env(bad);
    CHECK_THROWS_WITH(lm->forward(ids, positions, mask), Catch::Contains("CONSR_ATTENTION_CHUNK_ELEMENTS"));
  }
}

// ---- gradient checkpointing ------------------------------------------------------------------------

namespace {

text_config checkpoint_config(bool mrope) {
  text_config c = tiny_text_config(53, 32, 56, 3);
  if (mrope) c.mrope_section = {1, 1, 2};
  return c;
}

// LoRA factors (both non-zero, so that A and B get gradients) on the attention and MLP projections of
// every layer; everything else frozen.
void attach_lora_everywhere(consr_runtime::qwen2_causal_lm& lm, std::uint64_t seed) {
  torch::manual_seed(static_cast<std::int64_t>(seed));
  for (auto& p : lm->parameters()) p.set_requires_grad(false);
  for (auto& m : lm->modules(/*include_self=*/false)) {
    auto* lin = dynamic_cast<consr_runtime::linear_impl*>(m.get());
    if (lin == nullptr || lin->out_features() == lm->model->config().vocab_size) continue;  // not lm_head
    lin->attach_lora(0.2 * torch::randn({3, lin->in_features()}), 0.2 * torch::randn({lin->out_features(), 3}), 2.0);
    lin->lora_A->weight.set_requires_grad(true);
    lin->lora_B->weight.set_requires_grad(true);
  }
}

struct step_result {
  double loss = 0;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  // of every parameter requiring grad
  torch::Tensor embeds_grad;
  std::set<std::string> node_names;  // the autograd graph's node names
};

void collect_names(const std::shared_ptr<torch::autograd::Node>& root, std::set<std::string>& names,
                   std::multiset<std::string>* counts) {
  std::vector<std::shared_ptr<torch::autograd::Node>> stack{root};
  std::set<const torch::autograd::Node*> seen;
  while (!stack.empty()) {
    auto node = stack.back();
    stack.pop_back();
    if (!node || !seen.insert(node.get()).second) continue;
    names.insert(node->name());
    if (counts) counts->insert(node->name());
    for (const auto& edge : node->next_edges()) stack.push_back(edge.function);
  }
}

// Teacher-forced log-prob sum of a left-padded batch (row 0 padded), its gradients, and the number
// of checkpointed layer nodes in its graph.
step_result training_step(consr_runtime::qwen2_causal_lm& lm, bool checkpointing, bool mrope, bool embeds_grad,
                          std::int64_t* checkpointed_nodes) {
  lm->model->set_gradient_checkpointing(checkpointing);
  for (auto& p : lm->parameters()) p.mutable_grad() = torch::Tensor();
  const std::int64_t b = 2, len = 13, vocab = lm->model->config().vocab_size;
  const auto ids = torch::remainder(torch::arange(b * len) * 7 + 2, vocab).view({b, len});
  auto mask = torch::ones({b, len}, torch::kLong);
  mask[0].narrow(0, 0, 3).zero_();
  auto positions = consr_runtime::positions_from_mask(mask);
  if (mrope) {
    // Distinct t/h/w rows so that the mRoPE sections matter.
    positions = torch::stack({positions, positions * 2 % 5, positions * 3 % 7});
  }
  torch::Tensor embeds = lm->model->embed_tokens->forward(ids).detach();
  if (embeds_grad) embeds.set_requires_grad(true);
  const auto hidden = lm->model->forward(embeds, positions, mask);
  const auto logits = consr_runtime::lm_logits(hidden, lm->lm_head, lm->model->embed_tokens);
  const auto logp = torch::log_softmax(logits.narrow(1, 0, len - 1), -1)
                        .gather(2, ids.narrow(1, 1, len - 1).unsqueeze(2))
                        .squeeze(2);
  const auto loss = (logp * mask.narrow(1, 1, len - 1).to(torch::kFloat)).sum();
  step_result r;
  std::multiset<std::string> counts;
  collect_names(loss.grad_fn(), r.node_names, &counts);
  *checkpointed_nodes = 0;
  for (const auto& n : r.node_names)
    if (n.find("checkpointed_layer") != std::string::npos) *checkpointed_nodes += static_cast<std::int64_t>(counts.count(n));
  loss.backward();
  r.loss = loss.item<double>();
  for (const auto& p : lm->named_parameters())
    if (p.value().requires_grad()) r.grads.emplace_back(p.key(), p.value().grad());
  if (embeds_grad) r.embeds_grad = embeds.grad();
  return r;
}

void require_equal_steps(const step_result& plain, const step_result& ckpt) {
  CHECK(std::abs(ckpt.loss - plain.loss) <= 1e-6 * std::abs(plain.loss));
  REQUIRE(ckpt.grads.size() == plain.grads.size());
  for (std::size_t i = 0; i < plain.grads.size(); ++i) {
    INFO(plain.grads[i].first);
    REQUIRE(plain.grads[i].second.defined());
    REQUIRE(ckpt.grads[i].second.defined());
    const double scale = plain.grads[i].second.abs().max().item<double>();
    CHECK(scale > 0);
    CHECK(max_abs(ckpt.grads[i].second, plain.grads[i].second) <= 1e-6 * scale);
  }
  if (plain.embeds_grad.defined()) {
    REQUIRE(ckpt.embeds_grad.defined());
    CHECK(max_abs(ckpt.embeds_grad, plain.embeds_grad) <= 1e-6 * plain.embeds_grad.abs().max().item<double>());
  }
}

}  // namespace

TEST_CASE("memory: gradient checkpointing gives the loss and LoRA gradients of the plain forward", "[memory][qwen2]") {
  for (bool mrope : {false, true}) {
    INFO("mrope " << mrope);
    consr_runtime::qwen2_causal_lm lm(checkpoint_config(mrope));
    randomize(*lm, 21);
    attach_lora_everywhere(lm, 22);
    std::int64_t plain_nodes = -1, ckpt_nodes = -1;
    const auto plain = training_step(lm, false, mrope, false, &plain_nodes);
    const auto ckpt = training_step(lm, true, mrope, false, &ckpt_nodes);
    CHECK(plain_nodes == 0);
    CHECK(ckpt_nodes == 3);  // one node per decoder layer: their activations are not in the graph
    // 3 layers x 7 projections x (A, B), all with gradients, equal.
    CHECK(plain.grads.size() == 42);
    require_equal_steps(plain, ckpt);
  }
}

TEST_CASE("memory: gradient checkpointing with every parameter trainable and a grad-requiring input",
          "[memory][qwen2]") {
  consr_runtime::qwen2_causal_lm lm(checkpoint_config(false));
  randomize(*lm, 31);
  lm->model->embed_tokens->weight.set_requires_grad(false);  // the input is given as embeddings
  std::int64_t plain_nodes = -1, ckpt_nodes = -1;
  const auto plain = training_step(lm, false, false, true, &plain_nodes);
  const auto ckpt = training_step(lm, true, false, true, &ckpt_nodes);
  CHECK(ckpt_nodes == 3);
  require_equal_steps(plain, ckpt);

  // Nothing trainable and an input without grad: no graph, no checkpoint node, no error.
  for (auto& p : lm->parameters()) p.set_requires_grad(false);
  lm->model->set_gradient_checkpointing(true);
  const auto ids = torch::arange(5).view({1, 5});
  const auto out = lm->model->forward(lm->model->embed_tokens->forward(ids), torch::arange(5).view({1, 5}));
  CHECK_FALSE(out.requires_grad());
}

TEST_CASE("memory: gradient checkpointing refuses a KV cache under autograd and ignores it without", "[memory][qwen2]") {
  consr_runtime::qwen2_causal_lm lm(checkpoint_config(false));
  randomize(*lm, 41);
  attach_lora_everywhere(lm, 42);
  lm->model->set_gradient_checkpointing(true);
  CHECK(lm->model->gradient_checkpointing());
  const auto ids = torch::arange(6).view({1, 6});
  const auto positions = torch::arange(6).view({1, 6});
  consr_runtime::kv_cache cache;
  CHECK_THROWS_WITH(lm->forward(ids, positions, {}, &cache), Catch::Contains("'cache'"));
  torch::NoGradGuard no_grad;
  consr_runtime::kv_cache fresh;
  const auto cached = lm->forward(ids, positions, {}, &fresh);
  lm->model->set_gradient_checkpointing(false);
  CHECK(max_abs(cached, lm->forward(ids, positions)) <= 1e-6);
}

// ---- measurements (hidden: run by name, see docs/performance.md) -------------------------------------

namespace {

// One training step of a random model at the Qwen2.5-VL-3B text widths (hidden 2048, intermediate
// 11008, 16 heads, 2 KV heads, tied embeddings, the real vocabulary) with CONSR_MEMORY_LAYERS layers
// (default 4) on a CONSR_MEMORY_TOKENS-token sequence (default 600), LoRA rank 16 on all seven
// projections: forward, log-probs of the last 128 tokens through the tied head, backward.
void measure_training_step(bool checkpointing) {
  const auto env_int = [](const char* name, std::int64_t fallback) {
    const char* v = std::getenv(name);
    return v ? std::stoll(v) : fallback;
  };
  text_config c;
  c.model_type = "qwen2_5_vl_text";
  c.vocab_size = 151936;
  c.hidden_size = 2048;
  c.intermediate_size = 11008;
  c.num_hidden_layers = env_int("CONSR_MEMORY_LAYERS", 4);
  c.num_attention_heads = 16;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.rope_theta = 1e6;
  c.tie_word_embeddings = true;
  c.mrope_section = {16, 24, 24};
  const std::int64_t len = env_int("CONSR_MEMORY_TOKENS", 600), scored = 128;
  REQUIRE(len > scored);  // CONSR_MEMORY_TOKENS must leave a prompt before the 128 scored tokens
  consr_runtime::qwen2_causal_lm lm(c);
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(1);
    for (auto& p : lm->parameters()) p.normal_(0.0, 0.02);
  }
  for (auto& p : lm->parameters()) p.set_requires_grad(false);
  for (auto& m : lm->modules(false)) {
    auto* lin = dynamic_cast<consr_runtime::linear_impl*>(m.get());
    if (lin == nullptr) continue;
    lin->attach_lora(0.01 * torch::randn({16, lin->in_features()}), 0.01 * torch::randn({lin->out_features(), 16}), 2.0);
    lin->lora_A->weight.set_requires_grad(true);
    lin->lora_B->weight.set_requires_grad(true);
  }
  lm->model->set_gradient_checkpointing(checkpointing);
  const double before = peak_rss_mib();
  const auto ids = torch::remainder(torch::arange(len) * 7919 + 11, c.vocab_size).view({1, len});
  const auto pos = torch::arange(len).view({1, len});
  const auto positions = torch::stack({pos, pos, pos});
  const auto start = std::chrono::steady_clock::now();
  const auto hidden = lm->model->forward(lm->model->embed_tokens->forward(ids), positions);
  const auto picked = hidden[0].narrow(0, len - scored - 1, scored);
  const auto logits = consr_runtime::lm_logits(picked, lm->lm_head, lm->model->embed_tokens);
  const auto loss = torch::log_softmax(logits, -1).gather(1, ids[0].narrow(0, len - scored, scored).unsqueeze(1)).sum();
  loss.backward();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "training step: layers " << c.num_hidden_layers << ", tokens " << len << ", checkpointing "
            << (checkpointing ? "on" : "off") << ": loss " << loss.item<double>() << ", peak RSS before the step "
            << before << " MiB, after " << peak_rss_mib() << " MiB (step adds " << peak_rss_mib() - before
            << " MiB), " << seconds << " s" << std::endl;
}

}  // namespace

TEST_CASE("memory: measure one training step at 3B widths (plain)", "[.memory]") { measure_training_step(false); }
TEST_CASE("memory: measure one training step at 3B widths (checkpointed)", "[.memory]") { measure_training_step(true); }

TEST_CASE("memory: measure the Qwen2.5-VL vision tower on a large image", "[.memory]") {
  // A narrow random tower (hidden 64, 16 heads as the real one, one full-attention block) on a
  // CONSR_MEMORY_GRID² -patch image (default 128: a 1792 x 1792 image; 256 is the 65536 patches of
  // Qwen2.5-VL's default max_pixels). The scores' size does not depend on the width.
  // CONSR_MEMORY_VISION_HIDDEN sets the width (1280 is the real one: head_dim 80).
  const char* g = std::getenv("CONSR_MEMORY_GRID");
  const std::int64_t grid = g ? std::stoll(g) : 128;
  const char* w = std::getenv("CONSR_MEMORY_VISION_HIDDEN");
  consr_runtime::qwen2_5_vl_vision_config c;
  c.depth = 1;
  c.hidden_size = w ? std::stoll(w) : 64;
  c.intermediate_size = 2 * c.hidden_size;
  c.num_heads = 16;
  c.out_hidden_size = 64;
  c.fullatt_block_indexes = {0};
  consr_runtime::qwen2_5_vl_vision_model vision(c);
  randomize(*vision, 3, 0.05);
  torch::NoGradGuard no_grad;
  const std::int64_t patches = grid * grid;
  const auto pixels = torch::randn({patches, c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size});
  const double before = peak_rss_mib();
  const auto start = std::chrono::steady_clock::now();
  const auto features = vision->forward(pixels, torch::tensor({std::int64_t{1}, grid, grid}).view({1, 3}));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double eager_gib = static_cast<double>(c.num_heads) * static_cast<double>(patches) * static_cast<double>(patches) *
                           4.0 / (1024.0 * 1024.0 * 1024.0);
  std::cout << "vision tower: " << patches << " patches, 16 heads: eager fp32 scores of the full-attention block "
            << eager_gib << " GiB; peak RSS before " << before << " MiB, after " << peak_rss_mib() << " MiB, "
            << seconds << " s; features " << features.sizes() << std::endl;
  CHECK(features.size(0) == patches / 4);
}
