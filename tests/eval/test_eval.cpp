// Tests of the evaluation library (examples/eval) and the `consr_eval` command (examples/07_evaluate)
// on the tiny fixtures of tests/fixtures/models: an adapter with B = 0 gives exactly the base
// model's answers (both models; the runtime's naming, transformers 5's naming and a PEFT-style
// directory); batched answers equal one-by-one answers; a non-zero adapter changes the model;
// questions files (world, POPE, --limit, --image-dir); bad input names the argument, through the
// library and through the command; the command end to end.
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_eval/answers.hpp"
#include "consr_eval/error.hpp"
#include "consr_eval/questions.hpp"
#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/lora.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/safetensors.hpp"
#if CONSR_EVAL_TEST_WORLD
#include "consr_world/dataset.hpp"
#endif

#include "../host/test_util.hpp"
#include "../test_files.hpp"

namespace {

namespace fs = std::filesystem;
namespace ce = consr_eval;
namespace cr = consr_runtime;
using json = nlohmann::json;

const fs::path fixtures = CONSR_FIXTURES_DIR;
const fs::path data = CONSR_EVAL_TEST_DATA;
const fs::path out_root = CONSR_EVAL_TEST_OUT;
const std::string qwen_dir = (fixtures / "models" / "qwen2_5_vl_tiny").string();
const std::string llava_dir = (fixtures / "models" / "llava_onevision_tiny").string();
const std::string world_file = (data / "world_small.jsonl").string();

using consr_test_files::slurp;
using consr_test_files::write_text;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = out_root / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The error message of `f`, which must throw consr_eval::error ("<no error>" when it does not).
template <class F>
std::string error_of(F&& f) {
  return consr_test::on_throw<ce::error>(f, [](const ce::error& e) { return std::string(e.what()); });
}

// A fresh LoRA adapter (B = 0: the base model) on every decoder linear, saved in `naming`.
// The LoRA settings of the test adapters.
cr::lora_config small_lora(std::int64_t rank = 4, double alpha = 8, std::uint64_t seed = 11) {
  cr::lora_config c;
  c.rank = rank;
  c.alpha = alpha;
  c.seed = seed;
  return c;
}
// A LoRA adapter `c` of `model_dir` saved in `dir` (in save_lora_adapter's default naming unless
// `naming` says otherwise): B = 0 (the base model's answers), or every B entry = b_value (a model
// that really changes).
void write_adapter(const std::string& model_dir, const fs::path& dir, std::optional<cr::lora_naming> naming,
                   double b_value = 0.0, const std::string& base_model_name_or_path = "",
                   const cr::lora_config& c = small_lora()) {
  auto model = cr::load_model(model_dir);
  cr::apply_lora(*model, c);
  if (b_value != 0.0) {
    torch::NoGradGuard no_grad;
    const auto params = cr::lora_parameters(*model);
    for (std::size_t i = 1; i < params.size(); i += 2) params[i].copy_(torch::full_like(params[i], b_value));
  }
  if (naming) cr::save_lora_adapter(*model, c, dir.string(), base_model_name_or_path, *naming);
  else cr::save_lora_adapter(*model, c, dir.string(), base_model_name_or_path);
}

void require_same_answers(const std::vector<ce::answer>& a, const std::vector<ce::answer>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("question " << a[i].id);
    CHECK(a[i].id == b[i].id);
    CHECK(a[i].token_ids == b[i].token_ids);
    CHECK(a[i].text == b[i].text);
    CHECK(a[i].tokens == b[i].tokens);
    CHECK(a[i].reason == b[i].reason);
  }
}

// Last-position logits of a text-only prompt: a cheap fingerprint of the model's weights.
torch::Tensor fingerprint(ce::answer_generator& gen) {
  torch::NoGradGuard no_grad;
  cr::model_inputs in;
  in.input_ids = torch::tensor(gen.tokenizer().encode("Is there a cat?"), torch::kInt64).unsqueeze(0);
  return gen.model().forward(in).select(1, -1).to(torch::kFloat32);
}

ce::generation_options short_options(std::int64_t batch) {
  ce::generation_options g;
  g.batch_size = batch;
  g.max_new_tokens = 6;
  g.max_new_tokens_by_type = {{"description", 10}};
  return g;
}

}  // namespace

TEST_CASE("questions: world JSONL, POPE JSONL, limit and image directory", "[eval][questions]") {
  const ce::question_set w = ce::load_questions(world_file);
  CHECK(w.format == ce::question_format::world);
  REQUIRE(w.questions.size() == 6);
  CHECK(w.questions[0].id == "q1");
  CHECK(w.questions[0].type == "existence");
  CHECK(fs::path(w.questions[0].image).is_absolute());
  CHECK(fs::path(w.questions[0].image).filename() == "qwen_a_101x159.png");
  CHECK(fs::exists(w.questions[0].image));
  CHECK(w.questions[3].prompt == "Where is the blue square?");  // "<image>\n" removed
  CHECK(w.questions[4].type == "description");
  CHECK(w.questions[1].record["answer"] == "Blue.");
  CHECK(w.scenes_path.empty());  // no world_small_scenes.jsonl next to it

  ce::question_load_options lo;
  lo.limit = 2;
  CHECK(ce::load_questions(world_file, lo).questions.size() == 2);

  lo = {};
  lo.image_dir = (fixtures / "models" / "images").string();
  const ce::question_set p = ce::load_questions((data / "pope_small.jsonl").string(), lo);
  CHECK(p.format == ce::question_format::pope);
  REQUIRE(p.questions.size() == 3);
  CHECK(p.questions[0].id == "1");
  CHECK(p.questions[0].type == "pope");
  CHECK(p.questions[2].prompt == "Is there a person in the image?");

  // The answers file keeps the id's JSON type (POPE's integer question_id).
  ce::answer a;
  a.id = "1";
  a.text = "Yes";
  a.tokens = 1;
  CHECK(ce::answer_record(p.questions[0], a) == json{{"id", 1}, {"answer", "Yes"}, {"tokens", 1}});

  // The scenes file of a split is found next to it.
  const fs::path d = fresh_dir("scenes");
  write_text(d / "val.jsonl", "{\"id\": \"a\", \"image\": \"" + (fixtures / "models/images/photo_48x64.jpg").string() +
                                  "\", \"prompt\": \"Q?\", \"answer\": \"x\", \"type\": \"count\", \"scene\": \"s\"}\n");
  write_text(d / "val_scenes.jsonl", "{}\n");
  CHECK(ce::load_questions((d / "val.jsonl").string()).scenes_path == (d / "val_scenes.jsonl").string());
}

TEST_CASE("questions: bad files give one error naming the argument, the file and the line", "[eval][questions][errors]") {
  const fs::path d = fresh_dir("bad_questions");
  const std::string img = (fixtures / "models/images/photo_48x64.jpg").string();
  auto line = [&](const std::string& id, const std::string& extra = "") {
    return "{\"id\": \"" + id + "\", \"image\": \"" + img + "\", \"prompt\": \"Q?\", \"answer\": \"x\", \"type\": \"count\"" +
           extra + "}\n";
  };
  struct bad_case {
    std::string name, text, expect;
  };
  const std::vector<bad_case> cases{
      {"empty", "\n\n", "holds no questions"},
      {"not_json", line("a") + "{\"id\": \"b\", \n", "line 2: not valid JSON"},
      {"not_object", "[1, 2]\n", "line 1: not a JSON object"},
      {"unknown_format", "{\"foo\": 1}\n", "line 1: neither a world question"},
      {"duplicate", line("a") + line("a"), "line 2 (id 'a'): repeats an earlier id"},
      {"no_type", "{\"id\": \"a\", \"image\": \"" + img + "\", \"prompt\": \"Q?\"}\n", "missing string field 'type'"},
      {"empty_prompt", "{\"id\": \"a\", \"image\": \"" + img + "\", \"prompt\": \" <image> \", \"type\": \"count\"}\n",
       "'prompt' is empty"},
      {"missing_image", "{\"id\": \"a\", \"image\": \"nope.png\", \"prompt\": \"Q?\", \"type\": \"count\"}\n",
       "nope.png' does not exist"},
      {"bad_id", "{\"id\": 1.5, \"image\": \"" + img + "\", \"prompt\": \"Q?\", \"type\": \"count\"}\n", "missing 'id'"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    const fs::path f = d / (c.name + ".jsonl");
    write_text(f, c.text);
    const std::string msg = error_of([&] { ce::load_questions(f.string()); });
    CHECK(msg.find("consr_eval::load_questions: argument 'path'") == 0);
    CHECK(msg.find(c.expect) != std::string::npos);
  }
  const std::string missing = error_of([&] { ce::load_questions((d / "absent.jsonl").string()); });
  CHECK(missing.find("argument 'path'") != std::string::npos);
  CHECK(missing.find("absent.jsonl' does not exist") != std::string::npos);
  CHECK(error_of([&] { ce::load_questions(d.string()); }).find("is not a file") != std::string::npos);
  ce::question_load_options lo;
  lo.image_dir = (d / "no_dir").string();
  CHECK(error_of([&] { ce::load_questions(world_file, lo); }).find("argument 'options.image_dir'") != std::string::npos);
}

TEST_CASE("answers: a zero-B adapter gives exactly the base model's answers", "[eval][adapter]") {
  const ce::question_set set = ce::load_questions(world_file);
  for (const std::string& model_dir : {qwen_dir, llava_dir}) {
    INFO(model_dir);
    const std::string name = fs::path(model_dir).filename().string();
    ce::answer_generator base(model_dir);
    CHECK_FALSE(base.adapter().has_value());
    const auto base_answers = base.generate(set.questions, short_options(16));
    std::int64_t generated = 0;
    for (const auto& a : base_answers) generated += a.tokens;
    CHECK(generated > 0);
    CHECK(base.last_stats().images_encoded == 3);  // three distinct images, each encoded once
    const torch::Tensor base_logits = fingerprint(base);

    for (auto naming : {cr::lora_naming::checkpoint, cr::lora_naming::transformers5}) {
      const fs::path dir = fresh_dir("zero_b_" + name + (naming == cr::lora_naming::checkpoint ? "_checkpoint" : "_t5"));
      write_adapter(model_dir, dir, naming);
      ce::answer_generator adapted(model_dir, dir.string());
      REQUIRE(adapted.adapter().has_value());
      CHECK(adapted.adapter()->rank == 4);
      CHECK(adapted.adapter()->target_modules.size() == 7);
      CHECK(static_cast<std::int64_t>(cr::lora_parameters(adapted.model()).size()) == base.model().text().num_hidden_layers * 7 * 2);
      require_same_answers(adapted.generate(set.questions, short_options(16)), base_answers);
      CHECK(torch::equal(fingerprint(adapted), base_logits));
    }

    // A non-zero B really changes the model (the adapter is applied, not ignored).
    const fs::path dir = fresh_dir("nonzero_b_" + name);
    write_adapter(model_dir, dir, std::nullopt, 0.05, "", small_lora(4, 8, 0));
    ce::answer_generator changed(model_dir, dir.string());
    CHECK_FALSE(torch::allclose(fingerprint(changed), base_logits));
  }
}

TEST_CASE("answers: an adapter directory as PEFT writes it loads (list targets, bf16 tensors)", "[eval][adapter][peft]") {
  // PEFT's save_pretrained: adapter_model.safetensors with base_model.model.<transformers-5 module
  // path>.lora_{A,B}.weight (no adapter name), in the training dtype; adapter_config.json with
  // target_modules as a list and many keys the runtime does not need.
  const ce::question_set set = ce::load_questions(world_file);
  const fs::path src = fresh_dir("peft_src");
  write_adapter(qwen_dir, src, cr::lora_naming::transformers5);
  const fs::path dir = fresh_dir("peft_like");
  {
    cr::safetensors_file st((src / "adapter_model.safetensors").string());
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& e : st.entries()) tensors.emplace_back(e.name, st.load(e.name).to(torch::kBFloat16));
    cr::save_safetensors((dir / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
  }
  const json config = {
      {"alpha_pattern", json::object()}, {"auto_mapping", nullptr}, {"base_model_name_or_path", "Qwen/Qwen2.5-VL-7B-Instruct"},
      {"bias", "none"}, {"corda_config", nullptr}, {"eva_config", nullptr}, {"exclude_modules", nullptr},
      {"fan_in_fan_out", false}, {"inference_mode", true}, {"init_lora_weights", true}, {"layer_replication", nullptr},
      {"layers_pattern", nullptr}, {"layers_to_transform", nullptr}, {"loftq_config", json::object()}, {"lora_alpha", 8},
      {"lora_bias", false}, {"lora_dropout", 0.05}, {"megatron_config", nullptr}, {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr}, {"peft_type", "LORA"}, {"r", 4}, {"rank_pattern", json::object()}, {"revision", nullptr},
      {"target_modules", {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}},
      {"task_type", "CAUSAL_LM"}, {"trainable_token_indices", nullptr}, {"use_dora", false}, {"use_rslora", false}};
  write_text(dir / "adapter_config.json", config.dump(2));
  ce::answer_generator base(qwen_dir);
  ce::answer_generator adapted(qwen_dir, dir.string());
  REQUIRE(adapted.adapter().has_value());
  CHECK(adapted.adapter()->alpha == 8.0);
  require_same_answers(adapted.generate(set.questions, short_options(8)), base.generate(set.questions, short_options(8)));
}

TEST_CASE("answers: the prompt ids are the pipeline's (render, expand the placeholder, encode)", "[eval][prompt]") {
  for (const std::string& model_dir : {qwen_dir, llava_dir}) {
    INFO(model_dir);
    ce::answer_generator gen(model_dir);
    const cr::chat_format format = cr::parse_chat_format(gen.model().config().model_type);
    for (std::int64_t n : {1, 24, 1500}) {
      const std::string prompt = "Is there a red circle in the image?";
      const std::string chat = cr::render_chat(
          format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(prompt)}}});
      CHECK(gen.encode_prompt(prompt, n) == gen.tokenizer().encode(cr::expand_image_placeholders(format, chat, {n})));
    }
  }
}

TEST_CASE("answers: batched answers equal one-by-one answers", "[eval][batch]") {
  const ce::question_set set = ce::load_questions(world_file);
  for (const std::string& model_dir : {qwen_dir, llava_dir}) {
    INFO(model_dir);
    ce::answer_generator gen(model_dir);
    const auto batched = gen.generate(set.questions, short_options(16));
    CHECK(gen.last_stats().batches == 2);  // one batch per token limit
    const auto in_threes = gen.generate(set.questions, short_options(3));
    const auto single = gen.generate(set.questions, short_options(1));
    CHECK(gen.last_stats().batches == set.questions.size());
    require_same_answers(batched, single);
    require_same_answers(in_threes, single);
    // One question on its own, through a fresh generator (no feature cache), gives the same answer.
    ce::answer_generator fresh(model_dir);
    for (std::size_t i : {std::size_t{1}, std::size_t{4}}) {
      const auto alone = fresh.generate({set.questions[i]}, short_options(1));
      require_same_answers(alone, {single[i]});
    }
    // The limits: a description may run to 10 tokens, the rest to 6.
    for (std::size_t i = 0; i < single.size(); ++i) CHECK(single[i].tokens <= (set.questions[i].type == "description" ? 10 : 6));
  }
}

TEST_CASE("answers: bad model, adapter and options name the argument", "[eval][errors]") {
  const fs::path d = fresh_dir("bad_model");
  auto model_error = [&](const std::string& model_dir, const std::string& expect) {
    INFO(model_dir);
    const std::string msg = error_of([&] { ce::answer_generator g(model_dir); });
    CHECK(msg.find("argument 'model_dir'") != std::string::npos);
    CHECK(msg.find(expect) != std::string::npos);
  };
  model_error((d / "absent").string(), "absent' is not a directory");
  model_error(d.string(), "has no config.json");
  fs::create_directories(d / "broken");
  for (const char* f : {"config.json", "tokenizer.json", "preprocessor_config.json"})
    fs::copy_file(fs::path(qwen_dir) / f, d / "broken" / f);
  model_error((d / "broken").string(), "model.safetensors");  // the runtime's own error, kept

  auto adapter_error = [&](const fs::path& adapter, const std::string& expect) {
    INFO(adapter);
    const std::string msg = error_of([&] { ce::answer_generator g(qwen_dir, adapter.string()); });
    CHECK(msg.find("argument 'adapter_dir'") != std::string::npos);
    CHECK(msg.find(expect) != std::string::npos);
  };
  adapter_error(d / "no_adapter", "is not a directory");
  fs::create_directories(d / "empty_adapter");
  adapter_error(d / "empty_adapter", "has no adapter_config.json");
  const fs::path good = fresh_dir("bad_adapter_src");
  write_adapter(qwen_dir, good, cr::lora_naming::checkpoint);
  fs::create_directories(d / "pickle");
  fs::copy_file(good / "adapter_config.json", d / "pickle" / "adapter_config.json");
  write_text(d / "pickle" / "adapter_model.bin", "not a pickle");
  adapter_error(d / "pickle", "adapter_model.bin (a pickle), which is not supported");
  fs::create_directories(d / "corrupt");
  fs::copy_file(good / "adapter_config.json", d / "corrupt" / "adapter_config.json");
  write_text(d / "corrupt" / "adapter_model.safetensors", "garbage");
  adapter_error(d / "corrupt", "adapter_model.safetensors");
  // LoRA on a vision-tower linear (what PEFT writes for target_modules=[..., "gate_proj"] on
  // Qwen2.5-VL, whose vision MLPs share the name): not supported, the tensor is named.
  fs::create_directories(d / "vision");
  fs::copy_file(good / "adapter_config.json", d / "vision" / "adapter_config.json");
  {
    cr::safetensors_file st((good / "adapter_model.safetensors").string());
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& e : st.entries()) tensors.emplace_back(e.name, st.load(e.name));
    tensors.emplace_back("base_model.model.model.visual.blocks.0.mlp.gate_proj.lora_A.weight", torch::zeros({4, 32}));
    tensors.emplace_back("base_model.model.model.visual.blocks.0.mlp.gate_proj.lora_B.weight", torch::zeros({64, 4}));
    cr::save_safetensors((d / "vision" / "adapter_model.safetensors").string(), tensors);
  }
  adapter_error(d / "vision", "tensor 'base_model.model.model.visual.blocks.0.mlp.gate_proj.lora_");
  adapter_error(d / "vision", "names no linear layer of the language model");
  // A rank that disagrees with the tensors.
  fs::create_directories(d / "rank");
  fs::copy_file(good / "adapter_model.safetensors", d / "rank" / "adapter_model.safetensors");
  json cfg = json::parse(slurp(good / "adapter_config.json"));
  cfg["r"] = 5;
  write_text(d / "rank" / "adapter_config.json", cfg.dump());
  adapter_error(d / "rank", "lora_A must be [5,");

  ce::answer_generator gen(qwen_dir);
  const ce::question_set set = ce::load_questions(world_file);
  ce::generation_options g;
  g.batch_size = 0;
  CHECK(error_of([&] { gen.generate(set.questions, g); }).find("argument 'options.batch_size'") != std::string::npos);
  g = {};
  g.max_new_tokens_by_type["count"] = 0;
  CHECK(error_of([&] { gen.generate(set.questions, g); }).find("type 'count' has limit 0") != std::string::npos);
  // An image that exists but does not decode: the question and the image are named.
  const fs::path bad_image = d / "bad.png";
  write_text(bad_image, "not a png");
  ce::question q = set.questions[0];
  q.id = "broken";
  q.image = bad_image.string();
  const std::string msg = error_of([&] { gen.generate({q}, short_options(2)); });
  CHECK(msg.find("question 'broken'") != std::string::npos);
  CHECK(msg.find("bad.png") != std::string::npos);
}

// Not run by default: writes the adapters the example-03 ctests load (ctest fixture
// consr_eval_adapters): a trained-like one (non-zero B, as the pipeline's train stage writes it:
// save_lora_adapter with the model's directory as base) and a zero-B one, for the tiny Qwen2.5-VL.
TEST_CASE("write the adapters of the example-03 ctests", "[.make_adapters]") {
  for (bool trained : {true, false}) {
    const fs::path dir = fresh_dir(trained ? "example03_adapter" : "example03_zero_adapter");
    write_adapter(qwen_dir, dir, std::nullopt, trained ? 0.05 : 0.0, qwen_dir, small_lora(8, 16, 3));
    CHECK(fs::exists(dir / "adapter_model.safetensors"));
  }
}

#ifdef CONSR_EVAL_EXE
namespace {

struct run_result {
  int status = -1;
  std::string output;
};

run_result run_eval(const std::string& args) {
  const fs::path log = out_root / "cli_log.txt";
  const std::string cmd = std::string("'") + CONSR_EVAL_EXE + "' " + args + " > '" + log.string() + "' 2>&1";
  const int raw = std::system(cmd.c_str());
  run_result r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.output = slurp(log);
  return r;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

}  // namespace

TEST_CASE("consr_eval: bad input exits 1 with one error naming the argument", "[eval][cli][errors]") {
  const fs::path d = fresh_dir("cli_bad");
  write_text(d / "malformed.jsonl",
             "{\"id\": \"a\", \"image\": \"x.png\", \"prompt\": \"Q?\", \"type\": \"count\"}\n{\"id\": \"b\",\n");
  write_text(d / "bad_compare.json", "{ not json");
  fs::create_directories(d / "not_a_model");
  const std::string ok_q = " --questions " + q(world_file);
  const std::string ok_m = " --model " + q(qwen_dir);
  const std::string ok_o = " --out " + q(d / "eval.json");
  struct bad_case {
    std::string args, flag, expect;
  };
  const std::vector<bad_case> cases{
      {ok_q + ok_o, "--model", "required"},
      {ok_m + ok_o, "--questions", "required"},
      {ok_m + ok_q, "--out", "required"},
      {" --model " + q(d / "absent") + ok_q + ok_o, "--model", "is not a directory"},
      {" --model " + q(d / "not_a_model") + ok_q + ok_o, "--model", "has no config.json"},
      {ok_m + " --adapter " + q(d / "absent") + ok_q + ok_o, "--adapter", "is not a directory"},
      {ok_m + " --adapter " + q(d / "not_a_model") + ok_q + ok_o, "--adapter", "has no adapter_config.json"},
      {ok_m + " --questions " + q(d / "absent.jsonl") + ok_o, "--questions", "absent.jsonl' does not exist"},
      {ok_m + " --questions " + q(d / "malformed.jsonl") + ok_o, "--questions", "x.png' does not exist"},
      {ok_m + ok_q + ok_o + " --image-dir " + q(d / "absent"), "--image-dir", "is not a directory"},
      {ok_m + ok_q + ok_o + " --batch-size 0", "--batch-size", "must be >= 1"},
      {ok_m + ok_q + ok_o + " --dtype float8", "--dtype", "expected float32 or bfloat16"},
      {ok_m + ok_q + ok_o + " --type-max-new-tokens count", "--type-max-new-tokens", "expected TYPE=N"},
      {ok_m + ok_q + ok_o + " --compare " + q(d / "absent.json"), "--compare", "does not exist"},
      {ok_m + ok_q + ok_o + " --compare " + q(d / "bad_compare.json"), "--compare", "is not valid JSON"},
      {ok_m + ok_q + " --out " + q(d), "--out", "is a directory"},
  };
  for (const auto& c : cases) {
    INFO(c.args);
    const run_result r = run_eval(c.args);
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("error: consr_eval: argument '" + c.flag + "': ") != std::string::npos);
    CHECK(r.output.find(c.expect) != std::string::npos);
    CHECK(r.output.find("terminate") == std::string::npos);
  }
  // The second line of the malformed file is reported with its line number once the first is fixed.
  write_text(d / "malformed2.jsonl", "{\"id\": \"a\", \"image\": \"" + (fixtures / "models/images/photo_48x64.jpg").string() +
                                         "\", \"prompt\": \"Q?\", \"type\": \"count\"}\n{\"id\": \"b\",\n");
  const run_result r = run_eval(ok_m + " --questions " + q(d / "malformed2.jsonl") + ok_o);
  CHECK(r.status == 1);
  CHECK(r.output.find("argument '--questions': '" + (d / "malformed2.jsonl").string() + "' line 2: not valid JSON") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(d / "eval.json"));
}

TEST_CASE("consr_eval: end to end, answers equal the library's", "[eval][cli]") {
  const fs::path d = fresh_dir("cli_run");
  const fs::path adapter = d / "adapter";
  write_adapter(qwen_dir, adapter, cr::lora_naming::checkpoint);
  const run_result r = run_eval("--model " + q(qwen_dir) + " --adapter " + q(adapter) + " --questions " + q(world_file) +
                                " --limit 4 --batch-size 2 --max-new-tokens 6 --description-max-new-tokens 10 --out " +
                                q(d / "out" / "eval.json") + " --answers " + q(d / "out" / "answers.jsonl"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("answered 4/4 (100%)") != std::string::npos);  // progress lines (not a terminal)
  const json eval = json::parse(slurp(d / "out" / "eval.json"));
  CHECK(eval["model"] == fs::absolute(qwen_dir).lexically_normal().string());
  CHECK(eval["adapter"] == adapter.string());
  CHECK(eval["questions"]["count"] == 4);
  CHECK(eval["generation"]["batch_size"] == 2);
  CHECK(eval["speed"]["items_per_second"].get<double>() > 0);

  ce::question_load_options lo;
  lo.limit = 4;
  const ce::question_set set = ce::load_questions(world_file, lo);
  ce::answer_generator gen(qwen_dir);
  const auto expected = gen.generate(set.questions, short_options(4));
  std::istringstream lines(slurp(d / "out" / "answers.jsonl"));
  std::string line;
  std::size_t n = 0;
  while (std::getline(lines, line)) {
    REQUIRE(n < expected.size());
    const json a = json::parse(line);
    CHECK(a == json{{"id", expected[n].id}, {"answer", expected[n].text}, {"tokens", expected[n].tokens}});
    ++n;
  }
  CHECK(n == 4);
}

#ifdef CONSR_EXAMPLE_03_EXE
TEST_CASE("example 03: --adapter loads the pipeline's adapter format; B = 0 reproduces the base", "[eval][example03]") {
  const fs::path d = fresh_dir("example03");
  const fs::path zero = d / "zero", trained = d / "trained";
  write_adapter(qwen_dir, zero, cr::lora_naming::checkpoint);
  write_adapter(qwen_dir, trained, std::nullopt, 0.05, qwen_dir, small_lora(4, 8, 0));
  auto describe = [&](const std::string& extra) {
    const fs::path log = d / "log.txt";
    const std::string cmd = std::string("'") + CONSR_EXAMPLE_03_EXE + "' '" + qwen_dir + "' '" +
                            (fixtures / "models/images/qwen_a_101x159.png").string() + "' --max-new-tokens 12" + extra +
                            " > '" + log.string() + "' 2>&1";
    const int raw = std::system(cmd.c_str());
    const std::string out = slurp(log);
    INFO(out);
    CHECK((WIFEXITED(raw) ? WEXITSTATUS(raw) : -1) == (extra.find("absent") == std::string::npos ? 0 : 1));
    const auto at = out.find("description: ");
    return at == std::string::npos ? out : out.substr(at, out.find('\n', at) - at);
  };
  const std::string base = describe("");
  CHECK(base.rfind("description: ", 0) == 0);
  CHECK(describe(" --adapter '" + zero.string() + "'") == base);
  CHECK(describe(" --adapter '" + trained.string() + "'") != base);
  CHECK(describe(" --adapter '" + (d / "absent").string() + "'").find("argument '--adapter'") != std::string::npos);
}
#endif

#if CONSR_EVAL_TEST_WORLD
TEST_CASE("consr_eval: a generated world scored, and a zero-B adapter compared with the base", "[eval][cli][world]") {
  const fs::path d = fresh_dir("cli_world");
  consr_world::generate_options wo;
  wo.seed = 5;
  wo.counts[0] = wo.counts[1] = 0;  // the test split only: 2 images
  wo.counts[2] = 2;
  wo.threads = 1;
  consr_world::generate((d / "world").string(), wo);
  const fs::path questions = d / "world" / "test.jsonl";
  const std::string common = " --questions " + q(questions) + " --max-new-tokens 6 --description-max-new-tokens 12";
  const run_result base = run_eval("--model " + q(qwen_dir) + common + " --out " + q(d / "base.json"));
  INFO(base.output);
  REQUIRE(base.status == 0);
  CHECK(base.output.find("overall") != std::string::npos);  // the world's table
  const json b = json::parse(slurp(d / "base.json"));
  const std::size_t n = b["questions"]["count"].get<std::size_t>();
  CHECK(n > 4);
  CHECK(b["n"] == n);
  CHECK(b["missing"] == 0);
  CHECK(b["model"] == fs::absolute(qwen_dir).lexically_normal().string());
  CHECK(b["adapter"] == "");
  CHECK(b["items"].size() == n);
  CHECK(b["per_type"].contains("description"));
  CHECK(b["length_unit"] == "tokens");

  const fs::path adapter = d / "adapter";
  write_adapter(qwen_dir, adapter, cr::lora_naming::checkpoint);
  const run_result cmp = run_eval("--model " + q(qwen_dir) + " --adapter " + q(adapter) + common + " --batch-size 5 --out " +
                                  q(d / "adapter.json") + " --compare " + q(d / "base.json"));
  INFO(cmp.output);
  REQUIRE(cmp.status == 0);
  const json c = json::parse(slurp(d / "adapter.json"));
  CHECK(c["adapter"] == adapter.string());
  CHECK(c["baseline"]["adapter"] == "");
  CHECK(c["paired"]["diff"] == 0.0);
  CHECK(c["paired"]["n"] == n);
  REQUIRE(c["items"].size() == n);
  for (std::size_t i = 0; i < n; ++i) CHECK(c["items"][i]["answer"] == b["items"][i]["answer"]);
}
#endif
#endif
