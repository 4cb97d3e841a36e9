// The main job as an experiment. See experiment.hpp and docs/experiments.md.
#include "experiment.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_eval/answers.hpp"
#include "consr_eval/questions.hpp"
#include "consr_experiment/ground_truth.hpp"
#include "consr_experiment/reward_quality.hpp"
#include "consr_world/dataset.hpp"
#include "consr_world/evaluate.hpp"
#include "pipeline.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace consr_experiment {
namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("consr_experiment: cannot read '" + p.string() + "'");
  return json::parse(in);
}

void write_text(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error("consr_experiment: cannot write '" + p.string() + "'");
  }
  fs::rename(tmp, p);
}

/// The first `n` lines of a world questions file, copied to `dst` (same directory, so the relative
/// image paths stay valid). Returns how many were copied.
std::size_t head_lines(const fs::path& src, const fs::path& dst, std::size_t n) {
  std::ifstream in(src);
  if (!in) throw std::runtime_error("consr_experiment: cannot read '" + src.string() + "'");
  std::ostringstream out;
  std::string line;
  std::size_t k = 0;
  while ((n == 0 || k < n) && std::getline(in, line)) {
    if (line.empty()) continue;
    out << line << '\n';
    ++k;
  }
  write_text(dst, out.str());
  return k;
}

std::string fmt(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}
template <class J>
std::string pct(const J& v) { return v.is_number() ? fmt(100.0 * static_cast<double>(v), 1) + " %" : "n/a"; }
template <class J>
std::string ci_pct(const J& ci) {
  if (!ci.is_array() || ci.size() != 2 || !ci[0].is_number() || !ci[1].is_number()) return "";
  return "[" + fmt(100.0 * static_cast<double>(ci[0]), 1) + ", " + fmt(100.0 * static_cast<double>(ci[1]), 1) + "]";
}
template <class J>
double num(const J& v) { return v.is_number() ? static_cast<double>(v) : std::nan(""); }

/// Evaluates `model` (+ `adapter`) on `questions_file`: answers.jsonl and eval.json in `dir`.
ojson evaluate_model(const std::string& model, const std::string& adapter, const fs::path& questions_file,
                     const fs::path& scenes_file, std::size_t limit, std::int64_t batch, const fs::path& answers_out,
                     std::ostream& log) {
  consr_eval::question_load_options lo;
  lo.limit = limit;
  const consr_eval::question_set qs = consr_eval::load_questions(questions_file.string(), lo);
  consr_eval::answer_generator gen(model, adapter);
  consr_eval::generation_options g;
  g.batch_size = batch;
  consr_eval::progress_options p;
  p.stream = &log;
  p.mode = consr_eval::progress_options::style::lines;
  const std::vector<consr_eval::answer> answers = gen.generate(qs.questions, g, p);
  consr_eval::write_answers_jsonl(answers_out.string(), qs.questions, answers);

  // Score exactly the questions that were asked.
  std::vector<consr_world::question> all = consr_world::read_questions(questions_file.string());
  if (limit && all.size() > limit) all.resize(limit);
  const std::vector<consr_world::scene> scenes = consr_world::read_scenes(scenes_file.string());
  std::vector<consr_world::answer_record> recs;
  recs.reserve(answers.size());
  for (std::size_t i = 0; i < answers.size(); ++i) recs.push_back({answers[i].id, answers[i].text, answers[i].tokens});
  consr_world::evaluate_options eo;
  eo.model = model;
  eo.adapter = adapter;
  ojson ev = consr_world::evaluate(all, scenes, recs, eo);
  ev["items_per_second"] = gen.last_stats().items_per_second();
  return ev;
}

/// The pipeline's command line for one run: the experiment's defaults, then the user's overrides.
consr_pipeline::options pipeline_options(const experiment_options& o, const std::string& model, const fs::path& input,
                                         const fs::path& out, const std::string& target,
                                         const std::vector<std::string>& extra) {
  std::vector<std::string> args{"consr_pipeline",
                                target,
                                "--model",
                                model,
                                "--input",
                                input.string(),
                                "--out",
                                out.string(),
                                "--seed",
                                std::to_string(o.seed),
                                "--profile",
                                "demo",
                                // short answers; descriptions of the world need ~50 tokens
                                "--max-new-tokens",
                                "64",
                                "--description-max-new-tokens",
                                "64",
                                "--score-batch-size",
                                "16",
                                // chosen on the validation split (docs/experiments.md): 1e-3 (the demo
                                // profile's) and 3e-4 collapse the answers; 1e-4 with early stopping is
                                // the largest rate that did not lower validation accuracy
                                "--lr",
                                "1e-4",
                                "--epochs",
                                "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.insert(args.end(), o.pipeline_args.begin(), o.pipeline_args.end());
  // The validation run stops at `write`: its training options must not need a validation report.
  if (target != "train") args.insert(args.end(), {"--early-stop-patience", "0"});
  else if (std::find(extra.begin(), extra.end(), "--validation-report") != extra.end() &&
           std::find(o.pipeline_args.begin(), o.pipeline_args.end(), "--early-stop-patience") == o.pipeline_args.end())
    args.insert(args.end(), {"--early-stop-patience", "1"});
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  bool help = false;
  return consr_pipeline::parse_command_line(static_cast<int>(argv.size()), argv.data(), &help);
}

}  // namespace

std::string default_model_dir() { return CONSR_EXPERIMENT_SOURCE_DIR "/models/qwen2_5_vl_world"; }
std::string plot_script() { return CONSR_EXPERIMENT_SOURCE_DIR "/tools/plot_report.py"; }

void run_experiment(const experiment_options& o, std::ostream& log) {
  const auto t_all = clock_type::now();
  const std::string model = o.model_dir.empty() ? default_model_dir() : o.model_dir;
  if (!fs::is_directory(model) || !fs::exists(fs::path(model) / "config.json"))
    throw std::invalid_argument("consr_experiment: argument '--model': '" + model +
                                "' is not a model directory with a config.json");
  if (o.eval_split != "test" && o.eval_split != "validation")
    throw std::invalid_argument("consr_experiment: argument '--eval-split': must be test or validation, got '" +
                                o.eval_split + "'");
  if (o.pipeline_items == 0) throw std::invalid_argument("consr_experiment: argument '--items': must be >= 1");
  if (o.train_images < 1 || o.test_images < 1 || o.validation_images < 0)
    throw std::invalid_argument("consr_experiment: arguments '--train-images' / '--test-images' must be >= 1");
  const fs::path out = fs::absolute(o.out);
  fs::create_directories(out);
  ojson timings = ojson::object();

  // 1. the world -----------------------------------------------------------------------------------
  log << "== 1/5 world: " << o.train_images << " train / " << o.validation_images << " validation / "
      << o.test_images << " test images (seed " << o.world_seed << ")\n";
  auto t0 = clock_type::now();
  const fs::path world = o.world_dir.empty() ? out / "world" : fs::absolute(o.world_dir);
  consr_world::generate_options wo;
  wo.seed = o.world_seed;
  wo.counts[0] = o.train_images;
  wo.counts[1] = o.validation_images;
  wo.counts[2] = o.test_images;
  consr_world::generate_summary ws;
  if (!o.world_dir.empty() && fs::exists(world / "world.json")) {
    // reuse: the counts come from the directory's own world.json
    log << "   reusing the world in " << world.string() << "\n";
    const char* names[3] = {"train", "validation", "test"};
    for (int k = 0; k < 3; ++k) {
      ws.questions[k] = 0;
      std::ifstream in(world / (std::string(names[k]) + ".jsonl"));
      std::string line;
      while (std::getline(in, line)) ws.questions[k] += !line.empty();
    }
  } else {
    ws = consr_world::generate(world.string(), wo);
  }
  const std::size_t n_train = head_lines(world / "train.jsonl", world / "experiment_train.jsonl", o.pipeline_items);
  const std::size_t n_val = o.validation_items && o.validation_images > 0
                                ? head_lines(world / "validation.jsonl", world / "experiment_validation.jsonl",
                                             o.validation_items)
                                : 0;
  timings["world"] = seconds_since(t0);
  log << "   " << ws.questions[0] << " / " << ws.questions[1] << " / " << ws.questions[2] << " questions; "
      << n_train << " train questions go through the pipeline, " << n_val << " validation questions give the "
      << "validation pairs\n";

  // 2. the pipeline --------------------------------------------------------------------------------
  t0 = clock_type::now();
  std::vector<std::string> train_extra;
  if (n_val) {
    log << "== 2/5 pipeline on the validation questions (pairs for the validation loss)\n";
    const consr_pipeline::options vo =
        pipeline_options(o, model, world / "experiment_validation.jsonl", out / "pipeline_validation", "write", {});
    consr_pipeline::run_pipeline(vo, log);
    train_extra = {"--validation-report", (out / "pipeline_validation" / "report.json").string()};
  }
  log << "== 2/5 pipeline on the train questions: describe, 15 candidates, score, pairs, ConSR-DPO\n";
  const consr_pipeline::options po =
      pipeline_options(o, model, world / "experiment_train.jsonl", out / "pipeline", "train", train_extra);
  consr_pipeline::run_pipeline(po, log);
  timings["pipeline"] = seconds_since(t0);

  // 3. reward quality ------------------------------------------------------------------------------
  t0 = clock_type::now();
  log << "== 3/5 reward quality against ground truth\n";
  const json report = read_json(out / "pipeline" / "report.json");
  const std::vector<consr_world::question> train_q = consr_world::read_questions((world / "train.jsonl").string());
  const std::vector<consr_world::scene> train_s = consr_world::read_scenes((world / "train_scenes.jsonl").string());
  std::vector<json> rows;
  const std::vector<item_record> items = check_report(report, train_q, train_s, &rows);
  {
    std::ostringstream s;
    for (const auto& r : rows) s << r.dump() << '\n';
    write_text(out / "candidates.jsonl", s.str());
  }
  const json quality = consr_experiment::report(items, o.seed);
  // the pipeline's own pairs, with their ground truth
  std::map<std::string, const item_record*> item_by_id;
  for (const auto& it : items) item_by_id[it.id] = &it;
  json pairs = json::array();
  for (const auto& p : report.at("pairs")) {
    const item_record& it = *item_by_id.at(p.at("id").get<std::string>());
    const auto cw = p.at("chosen").at("index").get<std::size_t>(), cl = p.at("rejected").at("index").get<std::size_t>();
    pairs.push_back({{"id", it.id},
                     {"type", it.type},
                     {"margin", p.at("margin")},
                     {"chosen", cw},
                     {"rejected", cl},
                     {"chosen_kind", p.at("chosen").at("kind")},
                     {"rejected_kind", p.at("rejected").at("kind")},
                     {"chosen_correct", it.candidates.at(cw).correct},
                     {"rejected_correct", it.candidates.at(cl).correct}});
  }
  timings["reward_quality"] = seconds_since(t0);

  // 4. evaluation before / after -------------------------------------------------------------------
  t0 = clock_type::now();
  log << "== 4/5 evaluation on the " << o.eval_split << " split: base model\n";
  const std::string adapter = (out / "pipeline" / "adapter").string();
  const fs::path eval_q = world / (o.eval_split + ".jsonl"), eval_s = world / (o.eval_split + "_scenes.jsonl");
  ojson before = evaluate_model(model, "", eval_q, eval_s, o.eval_questions, o.eval_batch_size,
                                out / "answers_before.jsonl", log);
  log << "== 4/5 evaluation on the " << o.eval_split << " split: base + ConSR-DPO adapter\n";
  ojson after = evaluate_model(model, adapter, eval_q, eval_s, o.eval_questions, o.eval_batch_size,
                               out / "answers_after.jsonl", log);
  const ojson after_vs_before = consr_world::compare(before, after);
  write_text(out / "eval_before.json", before.dump(1) + "\n");
  write_text(out / "eval_after.json", after_vs_before.dump(1) + "\n");
  timings["evaluate"] = seconds_since(t0);

  // 5. report -------------------------------------------------------------------------------------
  t0 = clock_type::now();
  const json train_log = read_json(out / "pipeline" / "train_log.json");
  json training = {{"steps", train_log.value("steps", json::array())},
                   {"validation", train_log.value("validation", json::array())},
                   {"initial", train_log.value("initial", json::object())},
                   {"final", train_log.value("final", json::object())}};
  training["final"].erase("per_pair");
  json baselines = json::object();
  for (signal s : all_signals()) {
    if (s == signal::reward) continue;
    const json& q = quality["overall"][to_string(s)];
    baselines[to_string(s)] = {{"pair_agreement", q["pair_agreement"]}, {"auc", q["auc"]}};
  }
  const ojson& paired = after_vs_before["paired"];
  ojson summary;
  summary["pair_agreement"] = quality["overall"]["reward"]["pair_agreement"];
  summary["pair_agreement_ci95"] = quality["overall"]["reward"]["pair_agreement_ci95"];
  summary["reward_auc"] = quality["overall"]["reward"]["auc"];
  summary["baselines"] = baselines;
  summary["pairs"] = report.at("pairs").size();
  summary["before"] = before;
  summary["after"] = after_vs_before;
  summary["accuracy_diff"] = paired["diff"];
  summary["accuracy_diff_ci95"] = paired["ci95"];
  summary["accuracy_diff_p_value"] = paired["p_value"];
  timings["report"] = seconds_since(t0);
  timings["total"] = seconds_since(t_all);
  summary["timings"] = timings;

  ojson full;
  full["config"] = {{"model", model},
                    {"eval_split", o.eval_split},
                    {"world_seed", o.world_seed},
                    {"images", {o.train_images, o.validation_images, o.test_images}},
                    {"pipeline_items", n_train},
                    {"validation_items", n_val},
                    {"seed", o.seed},
                    {"pipeline_args", o.pipeline_args},
                    {"lambda", report.value("lambda", json())}};
  full["timings"] = timings;
  full["reward_quality"] = quality;
  full["pairs"] = pairs;
  full["training"] = training;
  full["before"] = before;
  full["after"] = after_vs_before;
  // per-question items live in eval_*.json; keep report.json readable
  full["before"].erase("items");
  full["after"].erase("items");
  summary["before"].erase("items");
  summary["after"].erase("items");
  write_text(out / "report.json", full.dump(1) + "\n");
  write_text(out / "summary.json", summary.dump(1) + "\n");

  // report.md and the table on stdout share one text
  std::ostringstream md;
  md << "# ConSR experiment on the synthetic world\n\n"
     << "Model `" << model << "`; world seed " << o.world_seed << "; " << n_train << " train questions through the "
     << "pipeline (" << report.at("pairs").size() << " pairs), " << before.value("n", 0) << " " << o.eval_split
     << " questions.\n\n"
     << "## 1. Does the contrastive reward pick the right answer? (train questions, every candidate checked)\n\n"
     << "Pair agreement: among items with at least one correct and one wrong candidate, the share of the pairs "
     << "selected by the signal whose chosen answer is correct and rejected answer wrong (paper App. D: 81 % vs "
     << "human preference). AUC: within-item, over (correct, wrong) candidate pairs, ties ½.\n\n"
     << "| signal | pair agreement | 95 % CI | pairs | AUC | AUC pairs |\n|---|---|---|---|---|---|\n";
  for (signal s : all_signals()) {
    const json& q = quality["overall"][to_string(s)];
    md << "| " << (s == signal::reward ? "**r (ConSR, eq. 6)**" : std::string(to_string(s))) << " | "
       << pct(q["pair_agreement"]) << " | " << ci_pct(q["pair_agreement_ci95"]) << " | " << q["pairs"].get<std::size_t>()
       << " | " << fmt(num(q["auc"])) << " | " << q["auc_pairs"].get<std::size_t>() << " |\n";
  }
  const json& rq = quality["overall"]["reward"];
  md << "\nItems: " << rq["items"].get<std::size_t>() << " (" << rq["items_mixed"].get<std::size_t>()
     << " with both correct and wrong candidates, " << rq["items_all_correct"].get<std::size_t>()
     << " all correct, " << rq["items_all_wrong"].get<std::size_t>() << " all wrong).\n\n"
     << "Per question type (r): \n\n| type | mixed items | pair agreement | AUC |\n|---|---|---|---|\n";
  for (const auto& [type, t] : quality["per_type"].items())
    md << "| " << type << " | " << t["reward"]["items_mixed"].get<std::size_t>() << " | "
       << pct(t["reward"]["pair_agreement"]) << " | " << fmt(num(t["reward"]["auc"])) << " |\n";

  md << "\n## 2. Does ConSR-DPO training help? (held-out " << o.eval_split << " split, base vs base + adapter)\n\n"
     << "| type | n | base | ConSR-DPO | diff (95 % CI, paired bootstrap) | McNemar p |\n|---|---|---|---|---|---|\n";
  for (const auto& [type, b] : before["per_type"].items()) {
    const ojson& a = after_vs_before["per_type"][type];
    const ojson pt = paired.contains("per_type") && paired["per_type"].contains(type) ? paired["per_type"][type] : ojson();
    md << "| " << type << " | " << b["n"] << " | " << pct(b["accuracy"]) << " | " << pct(a["accuracy"]) << " | "
       << (pt.is_object() ? fmt(100.0 * num(pt["diff"]), 1) + " pt " + ci_pct(pt["ci95"]) : "") << " | "
       << (pt.is_object() ? fmt(num(pt["p_value"]), 3) : "") << " |\n";
  }
  md << "| **overall** | " << before["overall"]["n"] << " | " << pct(before["overall"]["accuracy"]) << " | "
     << pct(after_vs_before["overall"]["accuracy"]) << " | " << fmt(100.0 * num(paired["diff"]), 1) << " pt "
     << ci_pct(paired["ci95"]) << " | " << fmt(num(paired["p_value"]), 3) << " |\n\n";
  md << "POPE (existence questions; yes = positive class):\n\n"
     << "| split | F1 base | F1 after | yes-ratio base | yes-ratio after | false-yes base | false-yes after |\n"
     << "|---|---|---|---|---|---|---|\n";
  for (const auto& [split, b] : before["pope"].items()) {
    const ojson& a = after_vs_before["pope"][split];
    md << "| " << split << " | " << fmt(num(b["f1"])) << " | " << fmt(num(a["f1"])) << " | " << fmt(num(b["yes_ratio"]))
       << " | " << fmt(num(a["yes_ratio"])) << " | " << fmt(num(b["false_yes_rate"])) << " | "
       << fmt(num(a["false_yes_rate"])) << " |\n";
  }
  md << "\nCHAIR (descriptions): CHAIR_i " << fmt(num(before["chair"]["chair_i"])) << " → "
     << fmt(num(after_vs_before["chair"]["chair_i"])) << ", CHAIR_s " << fmt(num(before["chair"]["chair_s"])) << " → "
     << fmt(num(after_vs_before["chair"]["chair_s"])) << ", recall " << fmt(num(before["chair"]["recall"])) << " → "
     << fmt(num(after_vs_before["chair"]["recall"])) << "; mean answer length " << fmt(num(before["mean_length"]), 2)
     << " → " << fmt(num(after_vs_before["mean_length"]), 2) << " " << before.value("length_unit", "") << ".\n\n";
  md << "## Timings (s)\n\n";
  for (const auto& [k, v] : timings.items()) md << "- " << k << ": " << fmt(v.get<double>(), 1) << "\n";
  md << "\nFiles: `summary.json` (headline numbers), `report.json` (everything above), `candidates.jsonl` (every "
        "candidate with its scores and verdict: the reward-quality numbers are recomputable from it), "
        "`eval_before.json` / `eval_after.json` (per question), `pipeline/` (the pipeline's artefacts and the "
        "adapter), `plots/`.\n";
  write_text(out / "report.md", md.str());

  // plots
  if (o.plots) {
    const std::string cmd = o.python + " '" + plot_script() + "' '" + out.string() + "' > '" +
                            (out / "plots.log").string() + "' 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc == 0)
      log << "== plots written to " << (out / "plots").string() << "\n";
    else
      log << "== plots skipped: " << o.python << " tools/plot_report.py failed (see " << (out / "plots.log").string()
          << "; Debian's python3-matplotlib is needed)\n";
  }
  log << "\n" << md.str();
  log << "\nwrote " << out.string() << "/{report.md,report.json,summary.json,candidates.jsonl,eval_*.json}\n";
}

}  // namespace consr_experiment
