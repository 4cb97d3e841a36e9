// consr_experiment/ground_truth.hpp — the pipeline's candidates checked against the synthetic world's
// ground truth (examples/world): which of the 15 candidates of an item answer its question right.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_experiment/reward_quality.hpp"
#include "consr_world/questions.hpp"
#include "consr_world/world.hpp"

namespace consr_experiment {

/// Checks every candidate of a pipeline `report.json` (its `items[]`, each with `id` and
/// `candidates[]` holding `text`, `usable`, `scored_tokens`, `P`, `S_corrupt`, `S_semantic`, `r`, ...)
/// against the world question with the same id (descriptions need their scene).
/// Returns one item_record per report item (type = the question type) and appends to `rows` one JSON
/// object per candidate — the per-candidate data every number of the reward-quality report is
/// recomputable from: {id, type, index, kind, text, usable, correct, parsed, scored_tokens, P,
/// P_corrupt, P_semantic, S_semantic, S_corrupt, r} (non-finite values as null).
/// Throws std::invalid_argument naming 'report' for an item without a question or a question whose
/// scene is missing, or for a malformed report.
std::vector<item_record> check_report(const nlohmann::json& report, const std::vector<consr_world::question>& questions,
                                      const std::vector<consr_world::scene>& scenes, std::vector<nlohmann::json>* rows);

}  // namespace consr_experiment
