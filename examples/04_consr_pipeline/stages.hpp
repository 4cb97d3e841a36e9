// examples/04_consr_pipeline/stages.hpp — the stage interface and the stages (one file each:
// stage_describe.cpp, stage_candidates.cpp, stage_score.cpp, stage_write.cpp, stage_train.cpp).
//
// A stage declares its artefact (written last; its settings_fnv1a marks the stage complete), the
// other files it must have produced, its settings (everything its output depends on; upstream
// artefacts by content hash) and its work. pipeline.cpp runs them in order and skips the up-to-date
// ones; a new stage (e.g. `evaluate`) is a new enumerator, a new file and one line in the registry.
#pragma once

#include <string>
#include <vector>

#include "artefacts.hpp"
#include "context.hpp"
#include "pipeline.hpp"

namespace consr_pipeline {

/// One run of a stage: its fingerprint, and the store operations under it.
struct stage_run {
  stage which;
  fingerprint fp;
  const artefact_store& store;

  std::optional<json> load_partial(std::size_t index) const { return store.load_partial(which, index, fp.hash); }
  void save_partial(std::size_t index, const json& result) const { store.save_partial(which, index, fp.hash, result); }
  /// {"stage", "settings_fnv1a", "settings"}.
  json header() const { return artefact_store::header(which, fp); }
};

struct stage_definition {
  stage which;
  const char* artefact;                    ///< main artefact (carries settings_fnv1a)
  std::vector<std::string> also_required;  ///< other outputs that must exist for "up to date"
  /// Everything the stage's output depends on (starts with artefact_store::settings_base).
  json (*settings)(const run_context& ctx);
  /// The work; returns the one-line summary.
  std::string (*run)(run_context& ctx, const stage_run& r);
};

const stage_definition& describe_stage();
const stage_definition& candidates_stage();
const stage_definition& score_stage();
const stage_definition& write_stage();
const stage_definition& train_stage();

}  // namespace consr_pipeline
