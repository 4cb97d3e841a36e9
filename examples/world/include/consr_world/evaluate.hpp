// consr_world/evaluate.hpp — scoring a model's answers into eval.json, and comparing two evals.
//
// eval.json (a contract):
//   {"model", "adapter", "n",
//    "per_type": {type: {"n", "correct", "accuracy", "ci95": [lo, hi]}},   (Wilson 95 %)
//    "overall": {"n", "correct", "accuracy", "ci95"},
//    "pope": {random|popular|adversarial: {"n", "accuracy", "precision", "recall", "f1", "yes_ratio",
//             "false_yes_rate"}},
//    "chair": {"chair_i", "chair_s", "recall", "n"},   (pooled mentions; n = descriptions)
//    "mean_length", "length_unit": "words"|"tokens",   (tokens when every answer carries "tokens")
//    "missing": questions without an answer (not scored), "unmatched": answers with no question,
//    "items": [{"id", "type", "answer", "correct", "parsed"}]}
// compare(a, b) returns b with "baseline": {"model", "adapter"} and
//   "paired": {"diff", "ci95", "p_value", "n", "a_only", "b_only", "per_type": {type: {same}}}
// over the items both scored (matched by id); diff = accuracy(b) - accuracy(a), a = the baseline.
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_world/questions.hpp"
#include "consr_world/world.hpp"

namespace consr_world {

struct answer_record {
  std::string id;
  std::string answer;
  std::optional<long long> tokens;
};

/// Reads an answers JSONL: {"id", "answer", "tokens"?} per line (other keys are ignored).
std::vector<answer_record> read_answers(const std::string& path);

struct evaluate_options {
  std::string model;
  std::string adapter;
};

nlohmann::ordered_json evaluate(const std::vector<question>& questions, const std::vector<scene>& scenes,
                                const std::vector<answer_record>& answers, const evaluate_options& options = {});

nlohmann::ordered_json compare(const nlohmann::json& eval_a, const nlohmann::json& eval_b);

/// A plain-text table: per type n / accuracy / 95 % interval (and the paired columns when the eval
/// has "paired"), POPE per split, CHAIR.
void print_table(std::ostream& os, const nlohmann::json& eval);

}  // namespace consr_world
