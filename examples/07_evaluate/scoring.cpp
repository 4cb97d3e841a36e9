// Example 07: scoring through the world library (see scoring.hpp).
#include "scoring.hpp"

#include <filesystem>
#include <set>
#include <stdexcept>
#include <unordered_map>

#if CONSR_EVAL_HAVE_WORLD
#include "consr_world/dataset.hpp"
#include "consr_world/evaluate.hpp"
#endif

namespace consr_evaluate {
using ojson = nlohmann::ordered_json;

#if CONSR_EVAL_HAVE_WORLD

bool have_scorer() { return true; }

namespace {

// The POPE split a file name names ("pope_val_adversarial.jsonl" → adversarial); "" if none.
std::string pope_split_of(const std::string& path) {
  const std::string stem = std::filesystem::path(path).stem().string();
  for (const char* s : {"adversarial", "popular", "random"})
    if (stem.find(s) != std::string::npos) return s;
  return "";
}

}  // namespace

ojson score(const consr_eval::question_set& set, const std::vector<consr_eval::answer>& answers, const std::string& model,
            const std::string& adapter) {
  if (answers.size() != set.questions.size())
    throw std::runtime_error("consr_evaluate::score: " + std::to_string(answers.size()) + " answers for " +
                             std::to_string(set.questions.size()) + " questions");
  std::vector<consr_world::answer_record> records;
  std::set<std::string> asked;
  for (const auto& a : answers) {
    records.push_back({a.id, a.text, static_cast<long long>(a.tokens)});
    asked.insert(a.id);
  }
  std::vector<consr_world::question> questions;
  std::vector<consr_world::scene> scenes;
  if (set.format == consr_eval::question_format::world) {
    // The world's own reader recovers the structured ground truth (target, number, cell).
    for (auto& q : consr_world::read_questions(set.path))
      if (asked.count(q.id)) questions.push_back(std::move(q));
    if (!set.scenes_path.empty()) scenes = consr_world::read_scenes(set.scenes_path);
  } else {
    const std::string split = pope_split_of(set.path);
    for (const auto& q : set.questions) {
      consr_world::question w;
      w.id = q.id;
      w.type = consr_world::question_type::existence;
      w.prompt = q.prompt;
      w.label = q.record.value("label", std::string());
      w.answer = w.label == "yes" ? "Yes." : "No.";
      w.pope = split;
      w.image = q.image;
      questions.push_back(std::move(w));
    }
  }
  consr_world::evaluate_options o;
  o.model = model;
  o.adapter = adapter;
  return consr_world::evaluate(questions, scenes, records, o);
}

ojson compare(const nlohmann::json& base, const ojson& current) {
  return consr_world::compare(base, nlohmann::json::parse(current.dump()));
}

void print_table(std::ostream& os, const ojson& eval) { consr_world::print_table(os, nlohmann::json::parse(eval.dump())); }

#else

bool have_scorer() { return false; }

ojson score(const consr_eval::question_set&, const std::vector<consr_eval::answer>&, const std::string& model,
            const std::string& adapter) {
  ojson j;
  j["model"] = model;
  j["adapter"] = adapter;
  return j;
}

ojson compare(const nlohmann::json&, const ojson& current) { return current; }

void print_table(std::ostream& os, const ojson& eval) {
  os << "no scorer compiled in (examples/world): answers only, " << eval.value("n", 0) << " questions\n";
}

#endif

}  // namespace consr_evaluate
