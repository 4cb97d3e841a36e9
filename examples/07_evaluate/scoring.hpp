// Example 07: the one place where consr_eval hands its answers to the world library's scorer
// (examples/world: consr_world::evaluate / compare / print_table). Built without it
// (CONSR_EVAL_HAVE_WORLD 0), `score` returns only model and adapter and the program writes the
// answers and the run's description.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_eval/answers.hpp"
#include "consr_eval/questions.hpp"

namespace consr_evaluate {

/// Whether the scorer is compiled in.
bool have_scorer();

/// eval.json's metrics for `answers` (answers[i] answers set.questions[i]) with "model" and
/// "adapter": the world's contract (per_type, overall, pope, chair, items, ...). World files are
/// scored against their own questions (re-read with the world's reader, restricted to the ones
/// answered) and their scenes file; a POPE file's rows are existence questions whose POPE split is
/// taken from the file name (pope_<split>_<random|popular|adversarial>.jsonl, else "random").
/// Throws std::runtime_error (the scorer's, e.g. a description whose scene is missing).
nlohmann::ordered_json score(const consr_eval::question_set& set, const std::vector<consr_eval::answer>& answers,
                             const std::string& model, const std::string& adapter);

/// `current` with "baseline" and the paired comparison against `base` (an earlier eval.json);
/// `current` unchanged without the scorer.
nlohmann::ordered_json compare(const nlohmann::json& base, const nlohmann::ordered_json& current);

/// The table of an eval.json (with the paired columns when compared) on `os`.
void print_table(std::ostream& os, const nlohmann::ordered_json& eval);

}  // namespace consr_evaluate
