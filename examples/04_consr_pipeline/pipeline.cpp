// The ConSR pipeline's driver: runs the stages in order, skipping the up-to-date ones (see
// pipeline.hpp and docs/pipeline.md). The stages are in stage_*.cpp, the rules of the output
// directory in artefacts.cpp, what they share in context.cpp.
#include "pipeline.hpp"

#include <array>
#include <iomanip>
#include <ostream>

#include "stages.hpp"

namespace consr_pipeline {
namespace {

// The stages in order; stage s is registry()[s].
const std::array<const stage_definition*, 5>& registry() {
  static const std::array<const stage_definition*, 5> stages{&describe_stage(), &candidates_stage(), &score_stage(),
                                                             &write_stage(), &train_stage()};
  return stages;
}

}  // namespace

std::vector<stage_result> run_pipeline(const options& o, std::ostream& log) {
  run_context ctx(o, log);
  ctx.prepare();
  const artefact_store& store = ctx.store;
  log << "consr_pipeline: " << ctx.items.size() << " item(s), model " << ctx.model_dir << " (" << ctx.model_type
      << ", " << o.dtype << ", " << o.device << "), profile " << (o.defaults == profile::demo ? "demo" : "paper")
      << ", seed " << o.seed << ", output " << store.dir().string() << "\n";
  std::vector<stage_result> results;
  for (const stage_definition* def : registry()) {
    if (static_cast<int>(def->which) > static_cast<int>(o.target)) break;
    // Settings are computed when the stage's turn comes: they hash the upstream artefacts.
    const stage_run run{def->which, artefact_store::make_fingerprint(def->settings(ctx)), store};
    stage_result r;
    r.which = def->which;
    const bool forced = o.fresh || (o.force && def->which == o.target);
    if (!forced && store.up_to_date(def->artefact, run.fp.hash, def->also_required)) {
      r.summary = "up to date (" + std::string(def->artefact) + ")";
      log << "[" << to_string(def->which) << "] " << r.summary << "\n";
      results.push_back(r);
      continue;
    }
    if (forced) store.clear_partial(def->which);
    log << "[" << to_string(def->which) << "] running\n";
    const auto t0 = clock_type::now();
    r.summary = def->run(ctx, run);
    r.ran = true;
    r.seconds = seconds_since(t0);
    store.clear_partial(def->which);
    log << "[" << to_string(def->which) << "] done in " << fixed(r.seconds, 2) << " s: " << r.summary << "\n";
    results.push_back(r);
  }
  store.remove_partial_dir_if_empty();
  log << "\nsummary (" << store.dir().string() << ")\n";
  for (const auto& r : results)
    log << "  " << std::left << std::setw(11) << to_string(r.which) << std::right << std::setw(10)
        << (r.ran ? fixed(r.seconds, 2) + " s" : std::string("skipped")) << "  " << r.summary << "\n";
  return results;
}

}  // namespace consr_pipeline
