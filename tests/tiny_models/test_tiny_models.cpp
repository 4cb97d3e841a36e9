// What training models from scratch adds to the runtime (issue 13): the byte-level BPE trainer and
// its tokenizer.json, parameter initialisation, and saving a model as a Hugging Face checkpoint
// (config.json + model.safetensors with the hub's names) that load_model reads back exactly.
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/bpe_trainer.hpp"
#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/model_io.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "tiny_models.hpp"
#ifdef CONSR_TINY_HAVE_PIPELINE
#include "pipeline.hpp"
#endif

using namespace consr_runtime;
namespace fs = std::filesystem;

namespace {

const std::string models_dir = std::string(CONSR_FIXTURES_DIR) + "/models/";

std::string out_dir(const std::string& name) {
  const std::string d = std::string(CONSR_TINY_TEST_OUT) + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<added_token> specials(std::int64_t first_id) {
  std::vector<added_token> out;
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added_token t;
    t.id = first_id++;
    t.content = s;
    t.special = true;
    out.push_back(t);
  }
  return out;
}

model_inputs text_inputs(std::int64_t vocab) {
  model_inputs in;
  in.input_ids = torch::arange(0, 12, torch::kInt64).remainder(vocab).view({1, 12});
  return in;
}

}  // namespace

TEST_CASE("pretokenize splits like Qwen2's Split(Isolated) pre-tokenizer", "[tiny_models][bpe]") {
  CHECK(pretokenize("Is there a red circle?") == std::vector<std::string>{"Is", " there", " a", " red", " circle", "?"});
  CHECK(pretokenize("Count: 12 items.\n") == std::vector<std::string>{"Count", ":", " ", "1", "2", " items", ".\n"});
  CHECK(pretokenize("") == std::vector<std::string>{});
  CHECK_THROWS_AS(pretokenize("bad \xff byte"), runtime_error);
}

TEST_CASE("train_byte_level_bpe: the byte alphabet, most frequent pairs first, deterministic", "[tiny_models][bpe]") {
  const std::vector<std::string> corpus{"low lower lowest", "low low", "newer newest"};
  bpe_trainer_options opt;
  opt.vocab_size = 262;
  const bpe_model m = train_byte_level_bpe(corpus, opt);
  REQUIRE(m.tokens.size() == 262);
  CHECK(m.tokens[0] == "!");
  CHECK(m.tokens[93] == "~");
  CHECK(m.tokens[220] == "\xc4\xa0");  // 'Ġ' (U+0120) stands for the space byte, id 220 as in GPT-2 / Qwen2
  CHECK(bytes_to_byte_level(" a") == "\xc4\xa0" "a");
  // Words: "low" x2, " low", " lower", " lowest", "newer", " newest". Pair counts: (l,o) 5 and
  // (o,w) 5 tie: the smaller ids win, so 'l' 'o' first; then "lo"+"w" (5); then Ġ+"low" (3).
  REQUIRE(m.merges.size() >= 3);
  CHECK(m.merges[0] == std::make_pair(std::string("l"), std::string("o")));
  CHECK(m.merges[1] == std::make_pair(std::string("lo"), std::string("w")));
  CHECK(m.merges[2] == std::make_pair(std::string("\xc4\xa0"), std::string("low")));
  CHECK(m.tokens[256] == "lo");
  // The corpus order does not matter.
  const bpe_model again = train_byte_level_bpe({corpus[2], corpus[0], corpus[1]}, opt);
  CHECK(again.tokens == m.tokens);
  CHECK(again.merges == m.merges);
  // min_frequency stops early.
  opt.vocab_size = 1000;
  opt.min_frequency = 3;
  const bpe_model few = train_byte_level_bpe(corpus, opt);
  for (std::size_t i = 256; i < few.tokens.size(); ++i) CHECK(few.tokens[i].size() >= 2);
  CHECK(few.tokens.size() < 270);
  opt.vocab_size = 100;
  CHECK_THROWS_AS(train_byte_level_bpe(corpus, opt), runtime_error);
}

TEST_CASE("A trained tokenizer.json loads in consr_runtime::tokenizer and round-trips", "[tiny_models][bpe]") {
  const std::vector<std::string> corpus{"There are three objects. A large red circle at the top left.",
                                        "Is there a blue square in the image?", "Yes.", "No.",
                                        "What colour is the star?", "Red.", "How many circles are there?", "3."};
  bpe_trainer_options opt;
  opt.vocab_size = 320;
  const bpe_model m = train_byte_level_bpe(corpus, opt);
  const std::string dir = out_dir("tokenizer");
  const auto added = specials(static_cast<std::int64_t>(m.tokens.size()));
  save_tokenizer_json(dir + "/tokenizer.json", m, added);
  const tokenizer tok = tokenizer::from_directory(dir);
  CHECK(tok.vocab_size() == static_cast<std::int64_t>(m.tokens.size()) + 3);
  CHECK(tok.token_id("<|im_end|>") == static_cast<std::int64_t>(m.tokens.size()) + 2);
  for (const auto& text : corpus) CHECK(tok.decode(tok.encode(text)) == text);
  // Words seen often become single tokens; unseen text still encodes (byte fallback by construction).
  CHECK(tok.encode(" circle").size() == 1);
  const std::string unseen = "Zebra \xc3\xa9t\xc3\xa9 \xe2\x9c\x93<|im_end|>";
  const auto ids = tok.encode(unseen);
  CHECK(ids.back() == tok.token_id("<|im_end|>"));
  CHECK(tok.decode(ids) == unseen);
  // The file has the fixtures' layout.
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/tokenizer.json"));
  const nlohmann::json fixture = nlohmann::json::parse(std::ifstream(models_dir + "qwen2_5_vl_tiny/tokenizer.json"));
  CHECK(j["pre_tokenizer"] == fixture["pre_tokenizer"]);
  CHECK(j["normalizer"] == fixture["normalizer"]);
  CHECK(j["decoder"] == fixture["decoder"]);
  CHECK(j["post_processor"] == fixture["post_processor"]);
  for (const char* key : {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                          "byte_fallback", "ignore_merges"})
    CHECK(j["model"][key] == fixture["model"][key]);
  // Added tokens may not collide with the vocabulary.
  auto bad = added;
  bad[0].id = 5;
  CHECK_THROWS_AS(byte_level_bpe_tokenizer_json(m, bad), runtime_error);
}

TEST_CASE("init_parameters: N(0, std) matrices, unit norms, zero biases, independent of order", "[tiny_models][model_io]") {
  const model_config config = load_model_config(models_dir + "qwen2_5_vl_tiny");
  qwen2_5_vl_model a(config), b(config);
  init_parameters(a, 7, 0.02);
  init_parameters(b, 7, 0.02);
  for (const auto& p : a.named_parameters()) CHECK(torch::equal(p.value(), b.named_parameters()[p.key()]));
  const torch::Tensor w = a.named_parameters()["model.language_model.embed_tokens.weight"];
  CHECK(std::abs(w.mean().item<double>()) < 2e-3);
  CHECK(std::abs(w.std().item<double>() - 0.02) < 1e-3);
  CHECK(torch::all(a.named_parameters()["model.language_model.norm.weight"].eq(1)).item<bool>());
  CHECK(torch::all(a.named_parameters()["model.language_model.layers.0.self_attn.q_proj.bias"].eq(0)).item<bool>());
  qwen2_5_vl_model c(config);
  init_parameters(c, 8, 0.02);
  CHECK_FALSE(torch::equal(c.named_parameters()["model.language_model.embed_tokens.weight"], w));
}

TEST_CASE("hub_state_dict names are exactly the fixtures' (transformers 5.24 save_pretrained)", "[tiny_models][model_io]") {
  for (const char* name : {"qwen2_5_vl_tiny", "llava_onevision_tiny"}) {
    INFO(name);
    auto model = load_model(models_dir + name);
    std::set<std::string> ours;
    for (const auto& [n, t] : hub_state_dict(*model)) {
      ours.insert(n);
    }
    const checkpoint ck(models_dir + name);
    const auto theirs = ck.names();
    CHECK(ours == std::set<std::string>(theirs.begin(), theirs.end()));
    for (const auto& [n, t] : hub_state_dict(*model)) CHECK(torch::equal(t, ck.load(n)));
  }
}

TEST_CASE("save_model writes a checkpoint load_model reads back to identical logits", "[tiny_models][model_io]") {
  for (const char* name : {"qwen2_5_vl_tiny", "llava_onevision_tiny"}) {
    for (hub_naming naming : {hub_naming::save_pretrained, hub_naming::transformers5}) {
      INFO(name << " naming " << static_cast<int>(naming));
      const model_config config = load_model_config(models_dir + name);
      std::shared_ptr<vision_language_model> model;
      if (config.qwen2_5_vl) model = std::make_shared<qwen2_5_vl_model>(config);
      else model = std::make_shared<llava_onevision_model>(config);
      init_parameters(*model, 3);
      const std::string dir = out_dir(std::string("save_") + name + std::to_string(static_cast<int>(naming)));
      save_model(*model, dir, naming);
      auto back = load_model(dir);
      torch::NoGradGuard no_grad;
      const model_inputs in = text_inputs(config.text().vocab_size);
      CHECK(torch::equal(model->forward(in), back->forward(in)));
      // config.json parses to the same configuration.
      const model_config again = load_model_config(dir);
      CHECK(again.model_type == config.model_type);
      CHECK(again.text().hidden_size == config.text().hidden_size);
      CHECK(again.text().mrope_section == config.text().mrope_section);
      CHECK(again.text().eos_token_ids == config.text().eos_token_ids);
      CHECK(again.image_token_id() == config.image_token_id());
      CHECK(model_config_json(again) == model_config_json(config));
    }
  }
}

TEST_CASE("read_split reads the world's question files and names bad lines", "[tiny_models]") {
  const std::string dir = out_dir("world");
  {
    std::ofstream f(dir + "/train.jsonl");
    f << R"({"id": "train-000000-0", "image": "images/train/000000.png", "prompt": "Is there a red circle?", )"
      << R"("answer": "No.", "type": "existence", "label": "no", "pope_split": "adversarial", "scene": "train-000000"})"
      << "\n\n";
  }
  const auto ex = consr_tiny::read_split(dir, "train");
  REQUIRE(ex.size() == 1);
  CHECK(ex[0].image == (fs::path(dir) / "images/train/000000.png").string());
  CHECK(ex[0].label == "no");
  CHECK(ex[0].pope == "adversarial");
  {
    std::ofstream f(dir + "/validation.jsonl");
    f << R"({"id": "x", "image": "a.png", "prompt": "p", "type": "count"})" << "\n";
  }
  CHECK_THROWS_WITH(consr_tiny::read_split(dir, "validation"), Catch::Contains("validation.jsonl:1") && Catch::Contains("answer"));
  CHECK_THROWS_WITH(consr_tiny::read_split(dir, "test"), Catch::Contains("test.jsonl"));
}

#ifdef CONSR_TINY_HAVE_PIPELINE
TEST_CASE("The tiny models are trained on the pipeline's prompts, byte for byte", "[tiny_models][augment]") {
  const auto mine = consr_tiny::paper_prompts();
  const auto pipeline = consr_pipeline::paper_prompts();
  CHECK(mine.description == pipeline.description);
  CHECK(mine.revision == pipeline.revision);
  CHECK(mine.enriched == pipeline.enriched);
}
#endif

TEST_CASE("augment copies questions into the paper's prompt formats with the scene's description", "[tiny_models][augment]") {
  auto q = [](std::string scene, std::string type, std::string prompt, std::string answer) {
    consr_tiny::example e;
    e.id = scene + "-" + type;
    e.image = scene + ".png";
    e.scene = scene;
    e.type = type;
    e.prompt = prompt;
    e.answer = answer;
    return e;
  };
  std::vector<consr_tiny::example> train{
      q("s0", "description", "Describe the image in detail.", "There is one object. A small red circle in the center."),
      q("s0", "colour", "What colour is the circle?", "Red."),
      q("s1", "colour", "What colour is the star?", "Blue."),  // s1 has no description: never copied
      q("s0", "count", "How many objects are there?", "1."),
      q("s2", "description", "Describe the image in detail.", "There are no objects."),
      q("s2", "count", "How many objects are there?", "0."),
  };
  consr_tiny::augment_options none;
  CHECK(consr_tiny::augment(train, none).empty());

  consr_tiny::augment_options all;
  all.paper_description = all.enriched = all.revision = 1;
  all.seed = 7;
  const auto extra = consr_tiny::augment(train, all);
  const auto t = consr_tiny::paper_prompts();
  std::map<std::string, int> n;
  for (const auto& e : extra) {
    ++n[e.variant];
    CHECK(e.scene != "s1");
    const auto& desc = e.scene == "s0" ? train[0].answer : train[4].answer;
    if (e.variant == "paper_description") {
      CHECK(e.type == "description");
      CHECK(e.prompt == t.description);
      CHECK(e.answer == desc);
    } else if (e.variant == "enriched") {
      CHECK(e.prompt == "For your reference, the input image can be described as follows: " + desc + " " +
                            (e.type == "colour" ? "What colour is the circle?" : "How many objects are there?"));
    } else {
      REQUIRE(e.variant == "revision");
      CHECK(e.prompt.find("Description: " + desc + "\n\nQuestion: ") != std::string::npos);
      // The answer stays the reference; the original response is the reference or another answer of its type.
      const std::string original = e.prompt.substr(e.prompt.find("Original Response: ") + 19);
      if (e.type == "count") CHECK((original == "0." || original == "1."));
      if (e.type == "colour") CHECK((original == "Red." || original == "Blue."));
    }
    CHECK(e.answer == (e.type == "colour" ? "Red." : e.type == "count" ? (e.scene == "s0" ? "1." : "0.") : desc));
  }
  CHECK(n["paper_description"] == 2);
  CHECK(n["enriched"] == 3);
  CHECK(n["revision"] == 3);
  // A pure function of the seed; a share selects about that share.
  CHECK(consr_tiny::augment(train, all).size() == extra.size());
  std::vector<consr_tiny::example> many;
  for (int i = 0; i < 1000; ++i) {
    many.push_back(q("s" + std::to_string(i), "description", "Describe.", "Nothing."));
    many.push_back(q("s" + std::to_string(i), "count", "How many?", std::to_string(i % 4) + "."));
  }
  consr_tiny::augment_options some;
  some.enriched = 0.3;
  const auto part = consr_tiny::augment(many, some);
  CHECK(part.size() > 240);
  CHECK(part.size() < 360);
  some.enriched = 1.5;
  CHECK_THROWS_WITH(consr_tiny::augment(many, some), Catch::Contains("[0, 1]"));
}
