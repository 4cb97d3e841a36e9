// Tests of the ConSR pipeline driver (examples/04_consr_pipeline) on the tiny fixtures of
// tests/fixtures/models: the artefacts and their documented fields, byte-identical reruns, the
// rewards and pairs of the report against an independent double-precision recomputation from the
// saved token log-probs, resuming (whole stages and single items), bad input through the library
// and the command line, bfloat16 training, and LLaVA-OneVision end to end; and, without running a
// model, the command line (CLI11), consr::derive_key's stream keys and the image-processor interface.
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/cuda.h>
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "../test_files.hpp"
#include "pipeline_test_options.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <consr/random.hpp>

#include "consr_runtime/config.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "context.hpp"
#include "pipeline.hpp"

namespace {

namespace fs = std::filesystem;
namespace cp = consr_pipeline;
using json = nlohmann::json;

const fs::path test_root = CONSR_PIPELINE_TEST_OUT;
const std::string fixtures = CONSR_FIXTURES_DIR;

using consr_test_files::slurp;

json load(const fs::path& p) { return json::parse(slurp(p)); }

using consr_test_files::write_text;

using consr_pipeline_test::tiny_options;

std::vector<cp::stage_result> run_fresh(const cp::options& o, std::string* log_text = nullptr) {
  fs::remove_all(o.output_dir);
  std::ostringstream log;
  auto r = cp::run_pipeline(o, log);
  if (log_text) *log_text = log.str();
  return r;
}

std::vector<cp::stage_result> run_again(const cp::options& o, std::string* log_text = nullptr) {
  std::ostringstream log;
  auto r = cp::run_pipeline(o, log);
  if (log_text) *log_text = log.str();
  return r;
}

// The default run (embedded input, tiny Qwen2.5-VL), made once and shared by the test cases.
const fs::path& default_run() {
  static const fs::path dir = [] {
    cp::options o = tiny_options("default");
    auto results = run_fresh(o);
    REQUIRE(results.size() == 5);
    for (const auto& r : results) CHECK(r.ran);
    return fs::path(o.output_dir);
  }();
  return dir;
}

const std::vector<std::string> artefacts{"descriptions.json",
                                         "candidates.json",
                                         "scores.json",
                                         "report.json",
                                         "llamafactory/consr_preference.json",
                                         "llamafactory/dataset_info.json",
                                         "llava_ov_dpo.json",
                                         "train_log.json",
                                         "adapter/adapter_model.safetensors",
                                         "adapter/adapter_config.json"};

double num(const json& j) { return j.is_number() ? j.get<double>() : std::numeric_limits<double>::quiet_NaN(); }

bool close(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= 1e-12 * std::max(1.0, std::max(std::fabs(a), std::fabs(b))) + 1e-15;
}

// Recomputes eqs. 1-6 from scores.json's token log-probs with plain double loops, selects best vs
// worst per item (ties to the lower index, non-finite skipped) and compares everything the report
// states. Returns the number of pairs.
std::size_t check_report_against_recomputation(const fs::path& dir, double lambda) {
  const json scores = load(dir / "scores.json");
  const json report = load(dir / "report.json");
  REQUIRE(scores["items"].size() == report["items"].size());
  std::vector<std::pair<std::size_t, std::size_t>> expected_pairs;  // per item (chosen, rejected)
  std::vector<double> expected_margins;
  std::size_t differing_corrupt = 0, differing_semantic = 0, scored = 0;
  for (std::size_t i = 0; i < scores["items"].size(); ++i) {
    const json& sc = scores["items"][i]["candidates"];
    const json& rc = report["items"][i]["candidates"];
    REQUIRE(sc.size() == rc.size());
    std::vector<double> rewards;
    for (std::size_t c = 0; c < sc.size(); ++c) {
      const json& lp = sc[c]["logp"];
      const json& lc = sc[c]["logp_corrupt"];
      const json& ls = sc[c]["logp_semantic"];
      REQUIRE(lp.size() == sc[c]["token_ids"].size());
      REQUIRE(lc.size() == lp.size());
      REQUIRE(ls.size() == lp.size());
      const std::size_t T = lp.size();
      CHECK(rc[c]["scored_tokens"].get<std::size_t>() == T);
      double P = std::nan(""), Pc = P, Ps = P, r = P, Ss = P, Sc = P;
      if (T > 0) {
        double s = 0, s_c = 0, s_s = 0;
        for (std::size_t t = 0; t < T; ++t) {
          s += lp[t].get<double>();
          s_c += lc[t].get<double>();
          s_s += ls[t].get<double>();
          differing_corrupt += lc[t].get<double>() != lp[t].get<double>();
          differing_semantic += ls[t].get<double>() != lp[t].get<double>();
        }
        ++scored;
        P = std::exp(s / static_cast<double>(T));
        Pc = std::exp(s_c / static_cast<double>(T));
        Ps = std::exp(s_s / static_cast<double>(T));
        Ss = Ps - P;
        Sc = P - Pc;
        r = lambda * Ss + (1 - lambda) * Sc;
        // The end-of-turn token is scored (spec §5): the response's tokens plus one.
        CHECK(T == rc[c]["response_tokens"].get<std::size_t>() + 1);
      } else {
        CHECK_FALSE(rc[c]["usable"].get<bool>());
      }
      INFO("item " << i << " candidate " << c);
      CHECK(close(num(rc[c]["P"]), P));
      CHECK(close(num(rc[c]["P_corrupt"]), Pc));
      CHECK(close(num(rc[c]["P_semantic"]), Ps));
      CHECK(close(num(rc[c]["S_semantic"]), Ss));
      CHECK(close(num(rc[c]["S_corrupt"]), Sc));
      CHECK(close(num(rc[c]["r"]), r));
      rewards.push_back(r);
    }
    std::size_t best = rewards.size(), worst = rewards.size();
    for (std::size_t c = 0; c < rewards.size(); ++c) {
      if (!std::isfinite(rewards[c])) continue;
      if (best == rewards.size() || rewards[c] > rewards[best]) best = c;
      if (worst == rewards.size() || rewards[c] < rewards[worst]) worst = c;
    }
    if (best < rewards.size() && rewards[best] > rewards[worst]) {
      expected_pairs.emplace_back(best, worst);
      expected_margins.push_back(rewards[best] - rewards[worst]);
    } else {
      expected_pairs.emplace_back(rewards.size(), rewards.size());
      expected_margins.push_back(0);
    }
  }
  // The corrupted image and the enriched prompt really change the scores.
  CHECK(differing_corrupt > scored);
  CHECK(differing_semantic > scored);

  const json& pairs = report["pairs"];
  std::size_t made = 0;
  for (const auto& p : expected_pairs) made += p.first != p.second ? 1 : 0;
  REQUIRE(pairs.size() == made);
  CHECK(report["selection_report"]["pairs"].get<std::size_t>() == made);
  for (const auto& pr : pairs) {
    const std::size_t i = pr["item"].get<std::size_t>();
    INFO("pair of item " << i);
    CHECK(pr["chosen"]["index"].get<std::size_t>() == expected_pairs[i].first);
    CHECK(pr["rejected"]["index"].get<std::size_t>() == expected_pairs[i].second);
    CHECK(close(pr["margin"].get<double>(), expected_margins[i]));
    // The token-level log-probs carried for the visual weights are the scored ones.
    const json& sc = scores["items"][i]["candidates"];
    for (const char* side : {"chosen", "rejected"}) {
      const std::size_t c = pr[side]["index"].get<std::size_t>();
      CHECK(pr[side]["token_ids"] == sc[c]["token_ids"]);
      CHECK(pr[side]["logp_clean"] == sc[c]["logp"]);
      CHECK(pr[side]["logp_corrupt"] == sc[c]["logp_corrupt"]);
      CHECK(pr[side]["text"] == report["items"][i]["candidates"][c]["text"]);
    }
  }
  return pairs.size();
}

// The adapter's tensors: rank, count, trained B, and the names: by default transformers 5's module
// tree (what peft.PeftModel.from_pretrained loads on transformers 5), base_model.model.<path>.
void check_adapter(const fs::path& dir, std::int64_t rank, std::size_t modules,
                   const std::string& prefix = "base_model.model.model.language_model.layers.") {
  const fs::path adapter = dir / "adapter";
  REQUIRE(fs::is_regular_file(adapter / "adapter_model.safetensors"));
  REQUIRE(fs::is_regular_file(adapter / "adapter_config.json"));
  const json config = load(adapter / "adapter_config.json");
  CHECK(config["peft_type"] == "LORA");
  CHECK(config["task_type"] == "CAUSAL_LM");
  CHECK(config["r"].get<std::int64_t>() == rank);
  consr_runtime::safetensors_file file((adapter / "adapter_model.safetensors").string());
  std::size_t a = 0, b = 0;
  double b_norm = 0;
  for (const auto& e : file.entries()) {
    INFO(e.name);
    CHECK(e.name.rfind(prefix, 0) == 0);
    const bool is_a = e.name.size() > 14 && e.name.substr(e.name.size() - 14) == ".lora_A.weight";
    const bool is_b = e.name.size() > 14 && e.name.substr(e.name.size() - 14) == ".lora_B.weight";
    CHECK((is_a || is_b));
    if (is_a) {
      ++a;
      CHECK(e.shape.at(0) == rank);
    }
    if (is_b) {
      ++b;
      CHECK(e.shape.at(1) == rank);
      b_norm += file.load(e.name).to(torch::kFloat64).abs().sum().item<double>();
    }
  }
  CHECK(a == modules);
  CHECK(b == modules);
  CHECK(b_norm > 0);  // B starts at zero: training moved the adapter
}

struct command_result {
  int status = -1;
  std::string out, err;
};

command_result run_command(const std::string& args, const fs::path& scratch) {
  fs::create_directories(scratch);
  const fs::path out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  const std::string cmd = std::string("'") + CONSR_PIPELINE_EXE + "' " + args + " > '" + out.string() + "' 2> '" +
                          err.string() + "'";
  const int raw = std::system(cmd.c_str());
  command_result r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace

TEST_CASE("pipeline: the default run writes every artefact with the documented fields", "[pipeline]") {
  const fs::path& dir = default_run();
  for (const auto& f : artefacts) {
    INFO(f);
    CHECK(fs::is_regular_file(dir / f));
  }
  CHECK_FALSE(fs::exists(dir / "partial"));  // checkpoints are removed once a stage completes

  const json report = load(dir / "report.json");
  REQUIRE(report["items"].size() == 3);
  for (const auto& it : report["items"]) {
    CHECK(fs::is_regular_file(it["image"].get<std::string>()));
    CHECK_FALSE(it["prompt"].get<std::string>().empty());
    CHECK(it["description"].is_string());
    REQUIRE(it["candidates"].size() == 15);
    std::map<std::string, int> kinds;
    for (const auto& c : it["candidates"]) {
      kinds[c["kind"].get<std::string>()]++;
      for (const char* k : {"index", "kind", "text", "response_tokens", "scored_tokens", "finish_reason", "usable", "P",
                            "P_corrupt", "P_semantic", "S_semantic", "S_corrupt", "r"}) {
        INFO(k);
        CHECK(c.contains(k));
      }
      if (c["kind"] == "revised") {
        CHECK(c["source"].get<int>() >= 0);
        CHECK(c["source"].get<int>() < 5);
      }
      CHECK(c["response_tokens"].get<int>() <= 12);
    }
    CHECK(kinds == std::map<std::string, int>{{"noisy", 5}, {"revised", 5}, {"sampled", 5}});
  }
  const json& pairs = report["pairs"];
  REQUIRE(pairs.size() > 0);
  for (const char* k : {"groups", "pairs", "groups_with_pairs", "groups_too_few_candidates", "groups_no_margin",
                        "nonfinite_candidates", "duplicate_candidates"})
    CHECK(report["selection_report"].contains(k));
  for (const auto& pr : pairs) {
    CHECK(pr["margin"].get<double>() > 0);
    CHECK(pr["chosen"]["reward"].get<double>() > pr["rejected"]["reward"].get<double>());
    for (const char* side : {"chosen", "rejected"}) {
      const json& s = pr[side];
      CHECK(s["logp_clean"].size() == s["token_ids"].size());
      CHECK(s["logp_corrupt"].size() == s["token_ids"].size());
    }
  }

  // Text vs scored tokens: every scored candidate is re-tokenized (the fixture's tokenizer, encode +
  // <|im_end|>) and compared with its scored ids; the counts, the candidates and the pairs say so.
  const consr_runtime::tokenizer tok = consr_runtime::tokenizer::from_directory(fixtures + "/models/qwen2_5_vl_tiny");
  const json scores = load(dir / "scores.json");
  const std::int64_t im_end = tok.token_id("<|im_end|>");
  std::size_t scored = 0, round_trip = 0;
  for (std::size_t i = 0; i < report["items"].size(); ++i)
    for (std::size_t c = 0; c < report["items"][i]["candidates"].size(); ++c) {
      const json& rc = report["items"][i]["candidates"][c];
      const json& ids = scores["items"][i]["candidates"][c]["token_ids"];
      REQUIRE(rc.contains("round_trip"));
      if (ids.empty()) {
        CHECK(rc["round_trip"].is_null());
        continue;
      }
      std::vector<std::int64_t> again = tok.encode(rc["text"].get<std::string>());
      again.push_back(im_end);
      const bool same = again == ids.get<std::vector<std::int64_t>>();
      CHECK(rc["round_trip"] == same);
      ++scored;
      round_trip += same ? 1 : 0;
    }
  const json& rt = report["round_trip"];
  CHECK(rt["candidates_scored"] == scored);
  CHECK(rt["candidates_round_trip"] == round_trip);
  CHECK(rt["candidates_not_round_trip"] == scored - round_trip);
  CHECK(rt["required"] == false);
  CHECK(rt["pairs_dropped"] == 0);
  std::size_t pairs_not = 0;
  for (const auto& pr : pairs) {
    const bool both = pr["chosen"]["round_trip"] == true && pr["rejected"]["round_trip"] == true;
    CHECK(pr["round_trip"] == both);
    pairs_not += both ? 0 : 1;
  }
  CHECK(rt["pairs_not_round_trip"] == pairs_not);

  // LLaMA-Factory sharegpt ranking format and its dataset_info.json entry.
  const json lf = load(dir / "llamafactory/consr_preference.json");
  REQUIRE(lf.is_array());
  REQUIRE(lf.size() == pairs.size());
  for (std::size_t k = 0; k < lf.size(); ++k) {
    const json& e = lf[k];
    REQUIRE(e["conversations"].size() == 1);
    CHECK(e["conversations"][0]["from"] == "human");
    const std::string value = e["conversations"][0]["value"];
    CHECK(value.rfind("<image>", 0) == 0);
    CHECK(value.find("<image>", 1) == std::string::npos);  // one placeholder per image
    REQUIRE(e["images"].size() == 1);
    CHECK(fs::is_regular_file(e["images"][0].get<std::string>()));
    CHECK(e["chosen"]["from"] == "gpt");
    CHECK(e["rejected"]["from"] == "gpt");
    CHECK(e["chosen"]["value"] == pairs[k]["chosen"]["text"]);
    CHECK(e["rejected"]["value"] == pairs[k]["rejected"]["text"]);
    // Beside the text: the round-trip mark, the scored ids and their log-probs under (x, I).
    CHECK(e["round_trip"] == pairs[k]["round_trip"]);
    CHECK(e["chosen_token_ids"] == pairs[k]["chosen"]["token_ids"]);
    CHECK(e["rejected_token_ids"] == pairs[k]["rejected"]["token_ids"]);
    CHECK(e["chosen_token_logps"] == pairs[k]["chosen"]["logp_clean"]);
    CHECK(e["rejected_token_logps"] == pairs[k]["rejected"]["logp_clean"]);
  }
  const json info = load(dir / "llamafactory/dataset_info.json");
  const json& entry = info["consr_preference"];
  CHECK(entry["file_name"] == "consr_preference.json");
  CHECK(entry["formatting"] == "sharegpt");
  CHECK(entry["ranking"] == true);
  CHECK(entry["columns"] == json{{"messages", "conversations"}, {"chosen", "chosen"}, {"rejected", "rejected"}, {"images", "images"}});

  // LLaVA-OV DPO records: id, prompt, answer (empty), image, chosen, rejected (what its loader
  // reads), and the round-trip mark, scored ids and log-probs beside them.
  const json llava = load(dir / "llava_ov_dpo.json");
  REQUIRE(llava.size() == pairs.size());
  std::set<std::string> ids;
  for (std::size_t k = 0; k < llava.size(); ++k) {
    const json& e = llava[k];
    std::set<std::string> keys;
    for (auto it = e.begin(); it != e.end(); ++it) keys.insert(it.key());
    CHECK(keys == std::set<std::string>{"id", "prompt", "answer", "image", "chosen", "rejected", "round_trip",
                                        "chosen_token_ids", "rejected_token_ids", "chosen_token_logps",
                                        "rejected_token_logps"});
    CHECK(e["round_trip"] == pairs[k]["round_trip"]);
    CHECK(e["chosen_token_ids"] == pairs[k]["chosen"]["token_ids"]);
    CHECK(e["rejected_token_logps"] == pairs[k]["rejected"]["logp_clean"]);
    CHECK(e["answer"] == "");
    CHECK(e["prompt"].get<std::string>().find("<image>") == std::string::npos);
    CHECK(e["chosen"] == pairs[k]["chosen"]["text"]);
    CHECK(ids.insert(e["id"].get<std::string>()).second);
  }

  // Training: finite per-step values, the initial loss is log 2 (policy = reference), and the
  // demo learning rate lowers the DPO loss on the training pairs.
  const json train = load(dir / "train_log.json");
  REQUIRE(train["steps"].size() == 2 * pairs.size());  // 2 epochs, batch 1
  for (const auto& s : train["steps"])
    for (const char* k : {"loss", "dpo_loss", "reward_margin", "accuracy", "margin_logit"}) {
      INFO(k);
      CHECK(std::isfinite(s[k].get<double>()));
    }
  CHECK(train["initial"]["dpo_loss"].get<double>() == Approx(std::log(2.0)).margin(1e-6));
  CHECK(train["steps"][0]["dpo_loss"].get<double>() == Approx(std::log(2.0)).margin(1e-6));
  CHECK(train["final"]["dpo_loss"].get<double>() < train["initial"]["dpo_loss"].get<double>());
  CHECK(train["final"]["reward_margin"].get<double>() > 0);
  // The adapter is named for transformers 5's module tree by default (check_adapter's prefix), all
  // 28 tensors of the 14 wrapped modules.
  CHECK(train["adapter"]["naming"] == "transformers5");
  CHECK(train["adapter"]["tensors"] == 2 * train["lora_modules"].get<std::size_t>());
  check_adapter(dir, 8, train["lora_modules"].get<std::size_t>());
}

TEST_CASE("pipeline: --lora-naming checkpoint writes the legacy layout, checked against the checkpoint", "[pipeline][naming]") {
  // The train stage alone on a copy of the default run (its fingerprint includes the naming).
  const fs::path dir = test_root / "naming_checkpoint";
  fs::remove_all(dir);
  fs::copy(default_run(), dir, fs::copy_options::recursive);
  cp::options o = tiny_options("naming_checkpoint");
  o.lora_naming = "checkpoint";
  std::string log;
  const auto r = run_again(o, &log);
  for (const auto& s : r) CHECK(s.ran == (s.which == cp::stage::train));
  CHECK(log.find("tensors named for the checkpoint's tensor names") != std::string::npos);
  const json train = load(dir / "train_log.json");
  CHECK(train["adapter"]["naming"] == "checkpoint");
  // The tiny Qwen2.5-VL fixture is saved as transformers 5.24's save_pretrained does: model.layers.*.
  check_adapter(dir, 8, train["lora_modules"].get<std::size_t>(), "base_model.model.model.layers.");
}

TEST_CASE("pipeline: the same seed gives byte-identical artefacts, another seed other samples", "[pipeline]") {
  const fs::path& a = default_run();
  cp::options o = tiny_options("same_seed");
  run_fresh(o);
  for (const auto& f : artefacts) {
    INFO(f);
    CHECK(slurp(a / f) == slurp(fs::path(o.output_dir) / f));
  }
  cp::options other = tiny_options("other_seed");
  other.seed = 7;
  other.target = cp::stage::candidates;
  run_fresh(other);
  const json c0 = load(a / "candidates.json"), c1 = load(fs::path(other.output_dir) / "candidates.json");
  CHECK(c0["items"][0]["candidates"][0]["token_ids"] != c1["items"][0]["candidates"][0]["token_ids"]);
}

TEST_CASE("pipeline: the report's rewards and pairs equal an independent recomputation", "[pipeline]") {
  CHECK(check_report_against_recomputation(default_run(), 0.8) > 0);

  // Another λ, and an unusable candidate (marked so in candidates.json, as the candidates stage
  // marks a response holding an image placeholder): it is scored as an empty segment, gets no
  // reward (null), is counted by the reward and selection reports and is never paired.
  cp::options o = tiny_options("lambda");
  o.lambda = 0.3;
  o.target = cp::stage::candidates;
  run_fresh(o);
  const fs::path dir = o.output_dir;
  json cand = load(dir / "candidates.json");
  cand["items"][0]["candidates"][3]["usable"] = false;
  cand["items"][0]["candidates"][3]["unusable_reason"] = "marked by the test";
  write_text(dir / "candidates.json", cand.dump(1));
  o.target = cp::stage::write;
  std::string log;
  const auto r = run_again(o, &log);
  CHECK_FALSE(r[1].ran);  // candidates: up to date (its fingerprint is of the options, not the file)
  CHECK(r[2].ran);        // score: its upstream changed
  CHECK(check_report_against_recomputation(dir, 0.3) > 0);
  const json report = load(dir / "report.json");
  const json& c3 = report["items"][0]["candidates"][3];
  CHECK_FALSE(c3["usable"].get<bool>());
  CHECK(c3["unusable_reason"] == "marked by the test");
  CHECK(c3["P"].is_null());
  CHECK(c3["r"].is_null());
  CHECK(c3["scored_tokens"].get<int>() == 0);
  CHECK(report["reward_report"]["empty_candidates"].get<int>() == 1);
  CHECK(report["reward_report"]["empty_indices"] == json::array({3}));
  CHECK(report["selection_report"]["nonfinite_candidates"].get<int>() == 1);
  for (const auto& pr : report["pairs"])
    if (pr["item"].get<int>() == 0) {
      CHECK(pr["chosen"]["index"].get<int>() != 3);
      CHECK(pr["rejected"]["index"].get<int>() != 3);
    }
}

TEST_CASE("pipeline: reruns resume — stages by fingerprint, items from checkpoints", "[pipeline]") {
  cp::options o = tiny_options("resume");
  run_fresh(o);
  const fs::path dir = o.output_dir;
  std::map<std::string, std::string> before;
  for (const auto& f : artefacts) before[f] = slurp(dir / f);

  // Nothing changed: every stage is skipped and nothing is rewritten.
  std::string log;
  auto r = run_again(o, &log);
  for (const auto& s : r) CHECK_FALSE(s.ran);
  for (const auto& f : artefacts) CHECK(slurp(dir / f) == before[f]);

  // A training option changes only the training.
  o.learning_rate = 2e-3;
  r = run_again(o);
  for (const auto& s : r) CHECK(s.ran == (s.which == cp::stage::train));
  CHECK(slurp(dir / "report.json") == before["report.json"]);
  CHECK(slurp(dir / "train_log.json") != before["train_log.json"]);
  o.learning_rate = 1e-3;

  // A recomputed stage that gives the same bytes does not invalidate the stages after it.
  fs::remove(dir / "candidates.json");
  r = run_again(o);
  for (const auto& s : r) CHECK(s.ran == (s.which == cp::stage::candidates || s.which == cp::stage::train));
  for (const auto& f : artefacts) CHECK(slurp(dir / f) == before[f]);

  // An interrupted stage resumes from its per-item checkpoints: plant item 1's checkpoint (marked),
  // drop the artefact, and the rerun takes the item from the checkpoint instead of generating it.
  json cand = load(dir / "candidates.json");
  json result = cand["items"][1];
  result["candidates"][0]["text"] = "RESUMED FROM CHECKPOINT";
  write_text(dir / "partial" / "candidates" / "1.json",
             json{{"settings_fnv1a", cand["settings_fnv1a"]}, {"result", result}}.dump());
  fs::remove(dir / "candidates.json");
  o.target = cp::stage::candidates;
  r = run_again(o, &log);
  CHECK(log.find("1 item(s) resumed") != std::string::npos);
  cand = load(dir / "candidates.json");
  CHECK(cand["items"][1]["candidates"][0]["text"] == "RESUMED FROM CHECKPOINT");
  CHECK(cand["items"][0] == load(default_run() / "candidates.json")["items"][0]);
  CHECK_FALSE(fs::exists(dir / "partial"));

  // --force recomputes the target even when it is up to date, --fresh every stage.
  o.force = true;
  r = run_again(o);
  CHECK(r.size() == 2);
  CHECK_FALSE(r.front().ran);
  CHECK(r.back().ran);
  CHECK(slurp(dir / "candidates.json") == before["candidates.json"]);
  o.force = false;
  o.fresh = true;
  o.target = cp::stage::train;
  r = run_again(o);
  CHECK(r.size() == 5);
  for (const auto& s : r) CHECK(s.ran);
  for (const auto& f : artefacts) CHECK(slurp(dir / f) == before[f]);
}

TEST_CASE("pipeline: bad input is an error naming the file or argument, with nothing written", "[pipeline]") {
  const fs::path scratch = test_root / "bad";
  fs::remove_all(scratch);
  const std::string image = fixtures + "/models/images/qwen_a_101x159.png";
  write_text(scratch / "missing_image.json", R"([{"id": "a", "image": "does_not_exist.png", "prompt": "q"}])");
  write_text(scratch / "bad.json", R"([{"id": "a", "image": "x.png", "prompt": )");
  write_text(scratch / "bad.jsonl", "{\"id\": \"a\", \"image\": \"" + image + "\", \"prompt\": \"q\"}\n{\"id\": \"b\",\n");
  write_text(scratch / "empty.json", "[]");
  write_text(scratch / "empty_prompt.json", R"([{"id": "a", "image": ")" + image + R"(", "prompt": "  "}])");
  write_text(scratch / "duplicate.json", R"([{"id": "a", "image": ")" + image + R"(", "prompt": "q"}, {"id": "a", "image": ")" +
                                             image + R"(", "prompt": "r"}])");
  write_text(scratch / "not_an_image.png", "this is not a PNG file");
  write_text(scratch / "undecodable.json", R"([{"id": "a", "image": "not_an_image.png", "prompt": "q"}])");
  fs::create_directories(scratch / "empty_model_dir");
  // Damaged models: no tokenizer.json; a model.safetensors cut short (its header promises more data).
  const fs::path qwen_fixture = fixtures + "/models/qwen2_5_vl_tiny";
  for (const char* name : {"no_tokenizer", "truncated"}) {
    fs::copy(qwen_fixture, scratch / name, fs::copy_options::recursive);
  }
  fs::remove(scratch / "no_tokenizer" / "tokenizer.json");
  fs::resize_file(scratch / "truncated" / "model.safetensors", fs::file_size(scratch / "truncated" / "model.safetensors") - 1000);

  struct bad_case {
    std::string args;
    std::vector<std::string> message;  // every part must appear in the error
  };
  const std::string in = " --input '" + scratch.string();
  const std::vector<bad_case> cases{
      {in + "/missing_image.json'", {"missing_image.json", "item 0", "does_not_exist.png", "does not exist"}},
      {in + "/bad.json'", {"bad.json", "not valid JSON"}},
      {in + "/bad.jsonl'", {"bad.jsonl", "line 2", "not valid JSON"}},
      {in + "/empty.json'", {"empty.json", "the item list is empty"}},
      {in + "/empty_prompt.json'", {"empty_prompt.json", "'prompt' is empty"}},
      {in + "/duplicate.json'", {"duplicate.json", "item 1", "duplicate id"}},
      {in + "/undecodable.json'", {"not_an_image.png", "cannot be used"}},
      {in + "/no_such_file.json'", {"--input", "no_such_file.json", "does not exist"}},
      {" --model '" + (scratch / "empty_model_dir").string() + "' --profile demo", {"--model", "empty_model_dir", "config.json"}},
      {" --lambda 1.5", {"--lambda", "[0, 1]"}},
      {" --num-revised 6", {"--num-revised"}},
      {" --max-new-tokens abc", {"--max-new-tokens", "not an integer"}},
      {" --frobnicate 1", {"--frobnicate", "unknown option"}},
      {" --profile paper", {"--model", "no model directory"}},
      {" --image-max-pixels 100", {"--image-max-pixels", "below min_pixels"}},
      {" --model '" + fixtures + "/models/llava_onevision_tiny' --profile demo --image-max-pixels 100000",
       {"--image-max-pixels", "Qwen2.5-VL only"}},
      {" --lora-naming peft", {"--lora-naming", "transformers5 or checkpoint"}},
      // Checked before --out is created: a damaged model, a device that does not exist, an image
      // whose vision attention would not fit, an unknown option at the end of the line.
      {" --model '" + (scratch / "no_tokenizer").string() + "' --profile demo", {"--model", "no_tokenizer", "tokenizer.json"}},
      {" --model '" + (scratch / "truncated").string() + "' --profile demo",
       {"--model", "truncated", "is damaged", "model.safetensors"}},
      {" --device cuda:99", {"--device", "'cuda:99'", "CUDA device"}},
      {" --memory-limit-gb 0.0000001", {"item 0", "qwen_a_101x159.png", "vision attention would need about", "--memory-limit-gb"}},
      {" --memory-limit-gb -1", {"--memory-limit-gb", ">= 0"}},
      {" --seed 3 --frobnicate", {"--frobnicate", "unknown option"}},
      {" describe write", {"stage", "given twice"}},
      {" finetune", {"stage", "'finetune'"}},
  };
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const fs::path out = scratch / ("out_" + std::to_string(k));
    INFO("args:" << cases[k].args);
    const command_result r = run_command(cases[k].args + " --out '" + out.string() + "'", scratch);
    INFO("stderr: " << r.err);
    CHECK(r.status == 1);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line, no LibTorch trace
    for (const auto& part : cases[k].message) CHECK(r.err.find(part) != std::string::npos);
    CHECK_FALSE(fs::exists(out));  // validated before anything is created
  }
  // Without a GPU, plain --device cuda is the same one line.
  if (!torch::cuda::is_available()) {
    const fs::path out = scratch / "out_cuda";
    const command_result r = run_command(" --device cuda --out '" + out.string() + "'", scratch);
    CHECK(r.status == 1);
    CHECK(r.err.find("argument '--device': 'cuda' asked, but this process sees no CUDA device") != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(fs::exists(out));
  }

  // The library throws the same errors.
  cp::options o = tiny_options("bad_lib");
  o.input = (scratch / "missing_image.json").string();
  CHECK_THROWS_WITH(cp::run_pipeline(o, std::cout), Catch::Contains("does_not_exist.png"));
  CHECK_FALSE(fs::exists(o.output_dir));
  o = tiny_options("bad_lib");
  o.model_dir = (scratch / "empty_model_dir").string();
  CHECK_THROWS_WITH(cp::run_pipeline(o, std::cout), Catch::Contains("config.json"));

  // A later stage alone needs its inputs: an empty out dir recomputes them rather than failing,
  // but a training run on a report without pairs is a named error.
  o = tiny_options("no_pairs");
  o.min_margin = 1.0;  // rewards are ~1e-5 on the random model: no pair passes
  o.target = cp::stage::train;
  fs::remove_all(o.output_dir);
  CHECK_THROWS_WITH(cp::run_pipeline(o, std::cout), Catch::Contains("no preference pairs"));
  CHECK(fs::is_regular_file(fs::path(o.output_dir) / "report.json"));
  CHECK_FALSE(fs::exists(fs::path(o.output_dir) / "train_log.json"));
  CHECK_FALSE(fs::exists(fs::path(o.output_dir) / "adapter"));
}

TEST_CASE("pipeline: --memory-limit-gb counts the scores of one query chunk of the vision attention",
          "[pipeline][memory]") {
  // qwen_a_101x159.png on the tiny Qwen2.5-VL: 1 x 96 vision patches, 2 vision heads. The runtime's
  // default budget (2^26 scores) holds all 2 x 96² scores in one chunk: 147,456 bytes (scores and
  // their fp32 softmax), the old unchunked estimate; CONSR_ATTENTION_CHUNK_ELEMENTS=192 makes the
  // tower take 192 / (2 x 96) = 1 query at a time: 2 x 1 x 96 x 8 = 1,536 bytes.
  const fs::path scratch = test_root / "memory_limit";
  fs::remove_all(scratch);
  const std::string image = fixtures + "/models/images/qwen_a_101x159.png";
  write_text(scratch / "items.json", R"([{"id": "a", "image": ")" + image + R"(", "prompt": "q"}])");
  const char* saved = std::getenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
  const std::string saved_value = saved ? saved : "";
  // prepare() alone (the checks, then --out created and locked); "" when it passes, else the error.
  auto prepare = [&](double limit_gb, const char* budget) -> std::string {
    if (budget) ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", budget, 1);
    else ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
    cp::options o = tiny_options("memory_limit/out");
    o.input = (scratch / "items.json").string();
    o.memory_limit_gb = limit_gb;
    fs::remove_all(o.output_dir);
    std::ostringstream log;
    std::string error;
    try {
      cp::run_context context(o, log);
      context.prepare();
    } catch (const std::exception& e) {
      error = e.what();
    }
    CHECK(fs::exists(o.output_dir) == error.empty());  // refused before --out is created
    return error;
  };
  // 10,000 bytes: what the unchunked estimate refused fits in chunks of one query...
  CHECK(prepare(1e-5, "192").empty());
  // ... and is refused where the whole sequence is one chunk (the default budget), with the sizes.
  const std::string one_chunk = prepare(1e-5, nullptr);
  INFO(one_chunk);
  for (const char* part : {"item 0", "qwen_a_101x159.png", "(159x101)", "1 x 96 vision patches", "24 image tokens",
                           "about 0.0001 GB at once", "more than the 10000 bytes limit (--memory-limit-gb)",
                           "CONSR_ATTENTION_CHUNK_ELEMENTS", "lower --image-max-pixels"})
    CHECK(one_chunk.find(part) != std::string::npos);
  // 147,456 bytes fit a limit of 150,000 with the default budget; 1,000 bytes are below even one
  // query at a time (1,536 bytes).
  CHECK(prepare(1.5e-4, nullptr).empty());
  const std::string one_query = prepare(1e-6, "192");
  INFO(one_query);
  CHECK(one_query.find("about 1536 bytes at once") != std::string::npos);
  CHECK(one_query.find("more than the 1000 bytes limit (--memory-limit-gb)") != std::string::npos);
  // A budget that is not a positive integer is an error naming the variable, before --out exists.
  const std::string bad = prepare(1.0, "lots");
  CHECK(bad.find("CONSR_ATTENTION_CHUNK_ELEMENTS") != std::string::npos);
  CHECK(bad.find("'lots'") != std::string::npos);
  if (saved) ::setenv("CONSR_ATTENTION_CHUNK_ELEMENTS", saved_value.c_str(), 1);
  else ::unsetenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
}

TEST_CASE("pipeline: bfloat16 training (fp32 master weights) moves the adapter", "[pipeline]") {
  cp::options o = tiny_options("bf16");
  o.dtype = "bfloat16";
  o.num_sampled = 3;
  o.num_revised = 1;
  o.num_noisy = 2;
  run_fresh(o);
  const json train = load(fs::path(o.output_dir) / "train_log.json");
  for (const auto& s : train["steps"]) CHECK(std::isfinite(s["dpo_loss"].get<double>()));
  CHECK(train["final"]["dpo_loss"].get<double>() < train["initial"]["dpo_loss"].get<double>());
  check_adapter(o.output_dir, 8, train["lora_modules"].get<std::size_t>());
}

TEST_CASE("pipeline: LLaVA-OneVision end to end", "[pipeline][llava]") {
  cp::options o = tiny_options("llava", 8);
  o.model_dir = fixtures + "/models/llava_onevision_tiny";
  const fs::path input = test_root / "llava_input.jsonl";
  write_text(input, "{\"id\": 17, \"image\": \"" + fixtures + "/models/images/photo_48x64.jpg\", \"prompt\": \"What is this?\"}\n");
  o.input = input.string();
  o.num_sampled = 2;
  o.num_revised = 2;
  o.num_noisy = 2;
  run_fresh(o);
  const fs::path dir = o.output_dir;
  for (const auto& f : artefacts) {
    INFO(f);
    CHECK(fs::is_regular_file(dir / f));
  }
  const json report = load(dir / "report.json");
  CHECK(report["model"]["model_type"] == "llava_onevision");
  CHECK(report["items"][0]["id"] == "17");
  CHECK(report["items"][0]["candidates"].size() == 6);
  REQUIRE(check_report_against_recomputation(dir, 0.8) == 1);
  const json llava = load(dir / "llava_ov_dpo.json");
  CHECK(llava[0]["id"] == "17");
  const json train = load(dir / "train_log.json");
  CHECK(train["steps"].size() == 2);
  CHECK(train["final"]["dpo_loss"].get<double>() < train["initial"]["dpo_loss"].get<double>());
  check_adapter(dir, 8, train["lora_modules"].get<std::size_t>());
}

namespace {

// Takes the output directory's lock the way a run does (flock on <dir>/.consr_pipeline.lock) and
// writes a holder line; returns the descriptor (closing it releases the lock).
int hold_lock(const fs::path& dir, const std::string& holder_json) {
  fs::create_directories(dir);
  const int fd = ::open((dir / ".consr_pipeline.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  REQUIRE(::ftruncate(fd, 0) == 0);
  REQUIRE(::pwrite(fd, holder_json.data(), holder_json.size(), 0) == static_cast<ssize_t>(holder_json.size()));
  return fd;
}

}  // namespace

TEST_CASE("pipeline: a second run on the same --out is refused, naming the holder; a dead holder does not block",
          "[pipeline][lock]") {
  const fs::path dir = test_root / "locked";
  fs::remove_all(dir);
  const std::string args = "describe --description-max-new-tokens 4 --out '" + dir.string() + "'";
  const std::string pid = std::to_string(::getpid());

  // Held (as by a running pipeline): the command fails with one line naming the holder, and the
  // library throws the same; nothing is written.
  int fd = hold_lock(dir, "{\"pid\":" + pid + ",\"host\":\"test-host\",\"started\":\"2030-01-02T03:04:05Z\"}\n");
  command_result r = run_command(args, test_root / "locked_cmd");
  CHECK(r.status == 1);
  INFO(r.err);
  CHECK(r.err.find("argument '--out'") != std::string::npos);
  CHECK(r.err.find("in use by another consr_pipeline run (pid " + pid + " on host test-host, started 2030-01-02T03:04:05Z)") !=
        std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  cp::options o = tiny_options("locked");
  o.target = cp::stage::describe;
  o.description_max_new_tokens = 4;
  CHECK_THROWS_WITH(run_again(o), Catch::Contains("in use by another consr_pipeline run (pid " + pid));
  CHECK_FALSE(fs::exists(dir / "descriptions.json"));
  ::close(fd);

  // Released: the run proceeds and names itself in the lock file.
  run_again(o);
  CHECK(fs::is_regular_file(dir / "descriptions.json"));
  const json holder = load(dir / ".consr_pipeline.lock");
  CHECK(holder["pid"].get<long>() == ::getpid());
  CHECK(holder["host"].is_string());
  CHECK(holder["started"].get<std::string>().size() == 20);

  // A holder killed with SIGKILL leaves its lock file (naming it) but not its lock.
  const std::string lock_path = (dir / ".consr_pipeline.lock").string();
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {  // only system calls and a stack buffer after fork
    char line[96];
    const int n = std::snprintf(line, sizeof line, "{\"pid\":%ld,\"host\":\"h\",\"started\":\"s\"}\n",
                                static_cast<long>(::getpid()));
    const int cfd = ::open(lock_path.c_str(), O_RDWR);
    if (n <= 0 || cfd < 0 || ::flock(cfd, LOCK_EX) != 0 || ::ftruncate(cfd, 0) != 0 ||
        ::pwrite(cfd, line, static_cast<std::size_t>(n), 0) != n)
      ::_exit(1);
    for (;;) ::pause();
  }
  const std::string child_pid = "pid " + std::to_string(child) + " ";
  bool held = false;
  for (int k = 0; k < 500 && !held; ++k) {  // until the child has written its line (<= 5 s)
    held = slurp(dir / ".consr_pipeline.lock").find("\"pid\":" + std::to_string(child)) != std::string::npos;
    if (!held) ::usleep(10000);
  }
  REQUIRE(held);
  r = run_command(args, test_root / "locked_cmd");
  CHECK(r.status == 1);
  CHECK(r.err.find(child_pid) != std::string::npos);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  r = run_command(args + " --force", test_root / "locked_cmd");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(slurp(dir / ".consr_pipeline.lock").find(child_pid) == std::string::npos);
}

TEST_CASE("pipeline: text vs scored tokens — marked pairs, --require-round-trip drops the others", "[pipeline][round_trip]") {
  // Item 0's candidates get canonical texts (their ids = encode(text)), so they round-trip; the
  // random model's own samples mostly do not. Rerun from score on a copy of the default run.
  const fs::path dir = test_root / "round_trip";
  fs::remove_all(dir);
  fs::copy(default_run(), dir, fs::copy_options::recursive);
  const consr_runtime::tokenizer tok = consr_runtime::tokenizer::from_directory(fixtures + "/models/qwen2_5_vl_tiny");
  json cand = load(dir / "candidates.json");
  for (std::size_t c = 0; c < cand["items"][0]["candidates"].size(); ++c) {
    const std::string text = "A canonical answer number " + std::to_string(c) + ".";
    cand["items"][0]["candidates"][c]["text"] = text;
    cand["items"][0]["candidates"][c]["token_ids"] = tok.encode(text);
  }
  write_text(dir / "candidates.json", cand.dump(1));
  cp::options o = tiny_options("round_trip");
  o.target = cp::stage::write;
  std::string log;
  run_again(o, &log);
  json report = load(dir / "report.json");
  for (const auto& c : report["items"][0]["candidates"]) CHECK(c["round_trip"] == true);
  const std::size_t pairs_before = report["pairs"].size();
  std::size_t marked_false = 0;
  for (const auto& pr : report["pairs"]) {
    if (pr["item"] == 0) CHECK(pr["round_trip"] == true);
    marked_false += pr["round_trip"] == false ? 1 : 0;
  }
  CHECK(report["round_trip"]["pairs_not_round_trip"] == marked_false);
  CHECK(log.find("round trip: " + std::to_string(report["round_trip"]["candidates_round_trip"].get<int>()) + "/") !=
        std::string::npos);

  // --require-round-trip: only the write stage reruns; the pairs that do not round-trip leave the
  // preference files and the training pairs, and are listed under dropped_pairs.
  o.require_round_trip = true;
  const auto r = run_again(o, &log);
  for (const auto& s : r) CHECK(s.ran == (s.which == cp::stage::write));
  report = load(dir / "report.json");
  CHECK(report["pairs"].size() == pairs_before - marked_false);
  REQUIRE(report["pairs"].size() >= 1);
  for (const auto& pr : report["pairs"]) CHECK(pr["round_trip"] == true);
  CHECK(report["round_trip"]["required"] == true);
  CHECK(report["round_trip"]["pairs_dropped"] == marked_false);
  CHECK(report["dropped_pairs"].size() == marked_false);
  for (const auto& pr : report["dropped_pairs"]) CHECK(pr["round_trip"] == false);
  CHECK(load(dir / "llamafactory/consr_preference.json").size() == report["pairs"].size());
  CHECK(load(dir / "llava_ov_dpo.json").size() == report["pairs"].size());
  for (const auto& e : load(dir / "llava_ov_dpo.json")) CHECK(e["round_trip"] == true);
  CHECK(log.find("(dropped: --require-round-trip)") != std::string::npos);
}

// ---- command line, keys and the image-processor interface (no model run) ---------------------------

namespace {

namespace cr = consr_runtime;

cp::options parse(std::vector<std::string> args, bool* help = nullptr) {
  args.insert(args.begin(), "consr_pipeline");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return cp::parse_command_line(static_cast<int>(argv.size()), argv.data(), help);
}

}  // namespace

TEST_CASE("pipeline: the command line — profiles, overrides, flags and named errors", "[pipeline][options]") {
  // The profile: demo without --model, paper with it; explicit options override either.
  const cp::options demo = parse({});
  CHECK(demo.defaults == cp::profile::demo);
  CHECK(demo.target == cp::stage::train);
  CHECK(demo.lora_rank == 8);
  CHECK(demo.learning_rate == 1e-3);
  const cp::options paper = parse({"--model", "/m", "--lora-rank", "16"});
  CHECK(paper.defaults == cp::profile::paper);
  CHECK(paper.model_dir == "/m");
  CHECK(paper.lora_rank == 16);
  CHECK(paper.learning_rate == 2e-7);
  CHECK(parse({"--profile", "demo", "--model", "/m"}).lora_rank == 8);

  const cp::options o = parse({"score", "--seed=7", "--min-margin", "-0.0", "--visual-alpha", "-1.5", "--force",
                               "--no-visual-weights", "--lora-targets", "q_proj,v_proj", "--noise-schedule", "cosine",
                               "--epochs", "2", "--epochs", "4"});
  CHECK(o.target == cp::stage::score);
  CHECK(o.seed == 7);
  CHECK(o.visual_alpha == -1.5);  // negative numbers are values
  CHECK(o.force);
  CHECK_FALSE(o.fresh);
  CHECK_FALSE(o.visual_weights);
  CHECK(o.length_normalize);
  CHECK(o.lora_targets == std::vector<std::string>{"q_proj", "v_proj"});
  CHECK(o.noise_schedule == "cosine");
  CHECK(o.epochs == 4);  // the last one wins
  // The adapter naming defaults to what PEFT loads on transformers 5; the legacy layout is an option.
  CHECK(demo.lora_naming == "transformers5");
  CHECK(paper.lora_naming == "transformers5");
  CHECK(parse({"--lora-naming", "checkpoint"}).lora_naming == "checkpoint");
  CHECK(parse({"--require-round-trip"}).require_round_trip);
  CHECK_FALSE(demo.require_round_trip);
  CHECK(parse({"--memory-limit-gb", "2.5"}).memory_limit_gb == 2.5);
  CHECK(demo.memory_limit_gb == 0);

  bool help = false;
  parse({"--frobnicate", "--help"}, &help);
  CHECK(help);
  parse({"describe"}, &help);
  CHECK_FALSE(help);

  using Catch::Contains;
  CHECK_THROWS_WITH(parse({"--frobnicate", "1"}), Contains("argument '--frobnicate': unknown option"));
  CHECK_THROWS_WITH(parse({"--frobnicate=1"}), Contains("argument '--frobnicate': unknown option"));
  CHECK_THROWS_WITH(parse({"--seed"}), Contains("argument '--seed': missing value"));
  CHECK_THROWS_WITH(parse({"--fresh=2"}), Contains("argument '--fresh': takes no value"));
  CHECK_THROWS_WITH(parse({"--seed", "-1"}), Contains("argument '--seed': not a non-negative integer: '-1'"));
  CHECK_THROWS_WITH(parse({"--top-p", "x"}), Contains("argument '--top-p': not a number: 'x'"));
  CHECK_THROWS_WITH(parse({"--epochs", "1.5"}), Contains("argument '--epochs': not an integer: '1.5'"));
  CHECK_THROWS_WITH(parse({"--profile", "fast"}), Contains("argument '--profile': is 'fast' but must be paper or demo"));
  CHECK_THROWS_WITH(parse({"--noise-schedule", "cubic"}),
                    Contains("is 'cubic' but must be sigmoid, linear, scaled_linear or cosine"));
  CHECK_THROWS_WITH(parse({"--reward-noise-step", "1000"}), Contains("must be a 0-based step in [0, 1000), got 1000"));
  CHECK_THROWS_WITH(parse({"--reward-space", "logit"}), Contains("must be probability or log"));
  CHECK_THROWS_WITH(parse({"--loss", "ipo"}), Contains("must be consr or standard"));
  CHECK_THROWS_WITH(parse({"--dtype", "float16"}), Contains("must be float32 or bfloat16"));
  CHECK_THROWS_WITH(parse({"--lora-targets", "q_proj,"}), Contains("empty entry"));
  CHECK_THROWS_WITH(parse({"--revision-prompt-file", "/no/such/file"}), Contains("cannot read '/no/such/file'"));
  CHECK_THROWS_WITH(parse({"describe", "write"}), Contains("argument 'stage': given twice ('write')"));
  CHECK_THROWS_WITH(parse({"finetune"}), Contains("is 'finetune' but must be one of all, describe"));
}

TEST_CASE("pipeline: consr::derive_key gives the documented stream keys", "[pipeline][keys]") {
  // The pipeline's keys (docs/pipeline.md): artefacts of a seed must not change with the refactor.
  for (std::uint64_t i : {0ull, 1ull, 2ull, 1000ull, 123456789ull}) {
    for (std::uint64_t use : {0ull, 1ull}) CHECK(consr::derive_key(0, i, {use, 2}) == 2 * i + use);
    for (std::uint64_t kind = 0; kind < 4; ++kind)
      for (std::uint64_t k : {0ull, 1ull, 4ull, (1ull << 24) - 1})
        CHECK(consr::derive_key(0, i, {kind, 4}, {k, 1ull << 24}) == (((i * 4 + kind) << 24) | k));
    CHECK(consr::derive_key(0x747261696eull, i) == 0x747261696eull + i);
  }
  static_assert(consr::derive_key(5, 1, {2, 3}, {3, 4}, {1, 2}) == 5 + ((1 * 3 + 2) * 4 + 3) * 2 + 1);
}

TEST_CASE("pipeline: the image-processor interface equals each family's processor", "[pipeline][processors]") {
  const std::string qwen_dir = fixtures + "/models/qwen2_5_vl_tiny";
  const std::string llava_dir = fixtures + "/models/llava_onevision_tiny";
  const cr::rgb_image image = cr::load_image(fixtures + "/models/images/photo_48x64.jpg");

  const cr::model_config qc = cr::load_model_config(qwen_dir);
  const auto q = cr::make_image_processor(qc, qwen_dir);
  const cr::qwen2_vl_image_processor qref = cr::qwen2_vl_image_processor::from_file(qwen_dir);
  CHECK(q->model_type() == "qwen2_5_vl");
  REQUIRE(q->bounds().has_value());
  CHECK(q->bounds()->max_pixels == qref.config().max_pixels);
  CHECK(q->feature_token_ids() == std::vector<std::int64_t>{qc.qwen2_5_vl->image_token_id, qc.qwen2_5_vl->video_token_id});
  const torch::Tensor qn = q->normalize(image);
  CHECK(torch::equal(qn, qref.normalize(image)));
  const cr::packed_image qp = q->pack(qn, image.height(), image.width());
  const cr::qwen2_vl_packed qr = qref.pack(qn);
  CHECK(torch::equal(qp.pixel_values, qr.pixel_values));
  CHECK(torch::equal(qp.image_grid_thw, qr.image_grid_thw));
  CHECK_FALSE(qp.image_sizes.defined());
  CHECK(qp.num_image_tokens == qr.num_image_tokens.at(0));
  const cr::pixel_bounds b{qref.config().min_pixels, qref.config().min_pixels * 2};
  CHECK(cr::make_image_processor(qc, qwen_dir, b)->bounds()->max_pixels == b.max_pixels);
  CHECK_THROWS(q->check_size(5, 5));  // below smart_resize's minimum side

  const cr::model_config lc = cr::load_model_config(llava_dir);
  const auto l = cr::make_image_processor(lc, llava_dir);
  const cr::llava_onevision_image_processor lref = cr::llava_onevision_image_processor::from_directory(llava_dir);
  CHECK(l->model_type() == "llava_onevision");
  CHECK_FALSE(l->bounds().has_value());
  CHECK(l->feature_token_ids() ==
        std::vector<std::int64_t>{lc.llava_onevision->image_token_index, lc.llava_onevision->video_token_index});
  const torch::Tensor ln = l->normalize(image);
  CHECK(torch::equal(ln, lref.normalize(image)));
  const cr::packed_image lp = l->pack(ln, image.height(), image.width());
  const cr::llava_onevision_packed lr = lref.pack({ln}, {{image.height(), image.width()}});
  CHECK(torch::equal(lp.pixel_values, lr.pixel_values));
  CHECK(torch::equal(lp.image_sizes, lr.image_sizes));
  CHECK_FALSE(lp.image_grid_thw.defined());
  CHECK(lp.num_image_tokens == lr.num_image_tokens.at(0));
  CHECK_THROWS_WITH(cr::make_image_processor(lc, llava_dir, b), Catch::Contains("no pixel bounds"));
}

TEST_CASE("pipeline: learning-rate schedule, gradient clipping, validation loss and early stopping",
          "[pipeline][train]") {
  // The options and their named errors.
  const cp::options d = parse({});
  CHECK(d.lr_schedule == "cosine");
  CHECK(d.warmup_ratio == 0.1);
  CHECK(d.max_grad_norm == 1.0);
  CHECK_FALSE(d.scale_by_beta);
  CHECK(parse({"--scale-by-beta", "--lr-schedule", "constant"}).scale_by_beta);
  CHECK_THROWS_WITH(parse({"--lr-schedule", "linear"}), Catch::Contains("'--lr-schedule'"));
  CHECK_THROWS_WITH(parse({"--warmup-ratio", "1"}), Catch::Contains("'--warmup-ratio'"));
  CHECK_THROWS_WITH(parse({"--max-grad-norm", "-1"}), Catch::Contains("'--max-grad-norm'"));
  CHECK_THROWS_WITH(parse({"--early-stop-patience", "2"}), Catch::Contains("needs --validation-report"));

  // The default run is the validation set of a second run with another seed: a validation loss per
  // epoch (epoch 0 = before training, equal to ln 2 since policy = reference), the HF warmup + cosine
  // learning rates, and gradient norms at most max_grad_norm after clipping (reported before).
  const fs::path val_report = default_run() / "report.json";
  cp::options o = tiny_options("validation");
  o.seed = 3;
  o.epochs = 3;
  o.validation_report = val_report.string();
  o.early_stop_patience = 1;
  std::string log;
  run_fresh(o, &log);
  const json train = load(fs::path(o.output_dir) / "train_log.json");
  REQUIRE(train.contains("validation"));
  const json& val = train["validation"];
  REQUIRE(val.size() >= 2);
  CHECK(val[0]["epoch"] == 0);
  CHECK(val[0]["dpo_loss"].get<double>() == Approx(std::log(2.0)).epsilon(1e-6));  // fp32 metrics
  CHECK(train["validation_pairs"].get<std::size_t>() == load(val_report)["pairs"].size());
  const std::size_t total = train["steps"].size();
  REQUIRE(total >= 2);
  CHECK(train["steps"][0]["lr"].get<double>() == 0.0);  // transformers' warmup starts at 0
  const auto planned = train["pairs"].get<std::size_t>() * static_cast<std::size_t>(o.epochs);  // batch 1
  const auto warmup = static_cast<std::size_t>(std::ceil(0.1 * static_cast<double>(planned)));
  double prev = std::numeric_limits<double>::infinity();
  for (std::size_t k = 1; k < total; ++k) {  // linear warmup, then the cosine decays
    const double lr = train["steps"][k]["lr"].get<double>();
    CHECK(lr <= o.learning_rate);
    if (k < warmup) CHECK(lr == Approx(o.learning_rate * static_cast<double>(k) / static_cast<double>(warmup)));
    if (k > warmup) CHECK(lr <= prev);
    prev = lr;
    CHECK(std::isfinite(train["steps"][k]["grad_norm"].get<double>()));
  }
  // Early stopping keeps the best epoch's adapter: its validation loss is the minimum seen.
  double best = std::numeric_limits<double>::infinity();
  for (const auto& v : val) best = std::min(best, v["dpo_loss"].get<double>());
  CHECK(val[train["best_epoch"].get<std::size_t>()]["dpo_loss"].get<double>() == best);

  // A validation report from another model is refused by name.
  json other = load(val_report);
  other["model"] = "another model";
  const fs::path other_path = test_root / "validation_other_model.json";
  write_text(other_path, other.dump());
  cp::options bad = tiny_options("validation_bad");
  bad.validation_report = other_path.string();
  CHECK_THROWS_WITH(run_fresh(bad), Catch::Contains("'--validation-report'") && Catch::Contains("another model"));
}

TEST_CASE("pipeline: reward corruptions of Table 7 and the POVID-style pair rule", "[pipeline][ablation]") {
  CHECK_THROWS_WITH(parse({"--reward-corruption", "blur"}), Catch::Contains("'--reward-corruption'"));
  CHECK_THROWS_WITH(parse({"--mask-probability", "1.5"}), Catch::Contains("'--mask-probability'"));
  CHECK_THROWS_WITH(parse({"--pair-rule", "povid", "--num-noisy", "0"}), Catch::Contains("'--pair-rule'"));
  // Another corruption changes P_corrupt (and so r), reproducibly; the clean and semantic scores stay.
  cp::options o = tiny_options("mask");
  o.target = cp::stage::score;
  o.reward_corruption = "mask";
  run_fresh(o);
  const json masked = load(fs::path(o.output_dir) / "scores.json");
  const json noised = load(default_run() / "scores.json");
  REQUIRE(masked["items"].size() == noised["items"].size());
  bool differs = false;
  for (std::size_t i = 0; i < masked["items"].size(); ++i)
    for (std::size_t c = 0; c < masked["items"][i]["candidates"].size(); ++c) {
      const json& a = masked["items"][i]["candidates"][c];
      const json& b = noised["items"][i]["candidates"][c];
      CHECK(a["logp"] == b["logp"]);
      CHECK(a["logp_semantic"] == b["logp_semantic"]);
      differs = differs || a["logp_corrupt"] != b["logp_corrupt"];
    }
  CHECK(differs);
  // POVID: chosen = the first sampled candidate, rejected = the first noisy one, in every item.
  cp::options p = tiny_options("povid");
  p.target = cp::stage::score;
  p.pair_rule = "povid";
  run_fresh(p);
  const json scores = load(fs::path(p.output_dir) / "scores.json");
  const json cands = load(fs::path(p.output_dir) / "candidates.json");
  REQUIRE(scores["pairs"].size() == cands["items"].size());
  for (const auto& pr : scores["pairs"]) {
    const json& cs = cands["items"][pr["item"].get<std::size_t>()]["candidates"];
    CHECK(cs[pr["chosen"].get<std::size_t>()]["kind"] == "sampled");
    CHECK(cs[pr["rejected"].get<std::size_t>()]["kind"] == "noisy");
  }
}

TEST_CASE("pipeline: an enriched template without {Image Description} is a fixed instruction (Table 8)",
          "[pipeline][options]") {
  const fs::path dir = fs::temp_directory_path() / "consr_pipeline_table8";
  fs::create_directories(dir);
  const std::string instruction = (dir / "instruction.txt").string(), broken = (dir / "broken.txt").string();
  std::ofstream(instruction) << "Answer based only on what you see in the image. {Original Prompt}";
  std::ofstream(broken) << "For your reference: {Image Description}";
  const cp::options o = parse({"--enriched-prompt-file", instruction});
  CHECK(o.prompts.enriched == "Answer based only on what you see in the image. {Original Prompt}");
  CHECK_NOTHROW(cp::validate_options(o));
  CHECK_THROWS_WITH(cp::validate_options(parse({"--enriched-prompt-file", broken})),
                    Catch::Contains("--enriched-prompt-file") && Catch::Contains("{Original Prompt}"));
  fs::remove_all(dir);
}
