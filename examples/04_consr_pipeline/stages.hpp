// examples/04_consr_pipeline/stages.hpp — the stage interface and the stages (one file each:
// stage_describe.cpp, stage_candidates.cpp, stage_score.cpp, stage_write.cpp, stage_train.cpp).
//
// A stage declares its artefact (written last; its settings_fnv1a marks the stage complete), the
// other files it must have produced, its settings (everything its output depends on; upstream
// artefacts by content hash) and its work. pipeline.cpp runs them in order and skips the up-to-date
// ones; a new stage (e.g. `evaluate`) is a new enumerator, a new file and one line in the registry.
#pragma once

#include <functional>
#include <optional>
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

/// The per-item loop of stages 1-3 over `n` items (or images), data parallel: this rank computes
/// `work(i)` for its share (i % ranks == rank), skipping the items whose checkpoint is valid, and
/// checkpoints each result under partial/; then every rank waits for the others and rank 0 reads the
/// n results back in order. Returns them on rank 0 and nothing on the other ranks (whose stage ends
/// there). A result does not depend on the rank that computed it: the random keys are per item.
/// `resumed` counts this rank's items that came from a checkpoint.
std::optional<std::vector<json>> run_items(run_context& ctx, const stage_run& run, std::size_t n,
                                           const std::function<json(std::size_t)>& work, std::size_t& resumed);

struct stage_definition {
  stage which;
  const char* artefact;                    ///< main artefact (carries settings_fnv1a)
  std::vector<std::string> also_required;  ///< other outputs that must exist for "up to date"
  /// Everything the stage's output depends on (starts with artefact_store::settings_base).
  json (*settings)(const run_context& ctx);
  /// The work; returns the one-line summary.
  std::string (*run)(run_context& ctx, const stage_run& r);
  /// Whether every rank runs it (its items shared out with run_items, or data-parallel training);
  /// false: rank 0 alone (the others wait).
  bool every_rank = true;
};

const stage_definition& describe_stage();
const stage_definition& candidates_stage();
const stage_definition& score_stage();
const stage_definition& write_stage();
const stage_definition& train_stage();

}  // namespace consr_pipeline
