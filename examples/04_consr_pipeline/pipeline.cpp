// The ConSR pipeline's driver: runs the stages in order, skipping the up-to-date ones (see
// pipeline.hpp and docs/pipeline.md). The stages are in stage_*.cpp, the rules of the output
// directory in artefacts.cpp, what they share in context.cpp.
#include "pipeline.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <ostream>
#include <cstdlib>
#include <streambuf>
#include <thread>

#include "stages.hpp"

namespace consr_pipeline {
namespace {

// The stages in order; stage s is registry()[s].
const std::array<const stage_definition*, 5>& registry() {
  static const std::array<const stage_definition*, 5> stages{&describe_stage(), &candidates_stage(), &score_stage(),
                                                             &write_stage(), &train_stage()};
  return stages;
}

// Fault injection for the tests of the data-parallel path (docs/distributed.md): the environment
// variable CONSR_PIPELINE_FAULT="<rank>:<stage>:exit|hang" makes that rank exit with status 3
// (as a crash would) or stop making progress (as a hang would) when that stage starts.
void inject_fault(const run_context& ctx, stage s) {
  const char* spec = std::getenv("CONSR_PIPELINE_FAULT");
  if (spec == nullptr || *spec == '\0') return;
  const std::string f = spec;
  const std::string prefix = std::to_string(ctx.dist->rank()) + ":" + to_string(s) + ":";
  if (f.rfind(prefix, 0) != 0) return;
  const std::string what = f.substr(prefix.size());
  if (what == "exit") std::_Exit(3);
  if (what == "hang")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  fail("environment variable CONSR_PIPELINE_FAULT: '" + f + "' must end in ':exit' or ':hang'");
}

// Where the ranks other than 0 send their progress lines (their errors still reach stderr).
class null_buffer : public std::streambuf {
 protected:
  int overflow(int c) override { return traits_type::not_eof(c); }
};

}  // namespace

std::optional<std::vector<json>> run_items(run_context& ctx, const stage_run& run, std::size_t n,
                                           const std::function<json(std::size_t)>& work, std::size_t& resumed) {
  const std::size_t rank = static_cast<std::size_t>(ctx.dist->rank());
  const std::size_t ranks = static_cast<std::size_t>(ctx.dist->size());
  std::vector<std::optional<json>> mine(n);
  for (std::size_t i = rank; i < n; i += ranks) {
    if (auto done = run.load_partial(i)) {
      mine[i] = std::move(done);
      ++resumed;
      continue;
    }
    mine[i] = work(i);
    run.save_partial(i, *mine[i]);
  }
  ctx.dist->barrier(std::string("stage '") + to_string(run.which) + "': waiting for every rank's items");
  if (!ctx.dist->is_root()) return std::nullopt;
  std::vector<json> all(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (mine[i]) {
      all[i] = std::move(*mine[i]);
      continue;
    }
    std::optional<json> done = run.load_partial(i);
    if (!done)
      fail("stage '" + std::string(to_string(run.which)) + "': the checkpoint of item " + std::to_string(i) + " (rank " +
           std::to_string(i % ranks) + "'s) is missing under " + run.store.dir().string() +
           "/partial/: every rank must write to the same --out");
    all[i] = std::move(*done);
  }
  return all;
}

std::vector<stage_result> run_pipeline(const options& o, std::ostream& root_log) {
  // --nproc is the consr_pipeline program's launcher (main.cpp starts the ranks, each of which calls
  // run_pipeline); a caller of the library launches ranks itself (RANK, WORLD_SIZE, ... set).
  if (o.nproc > 1)
    fail("argument '--nproc': run_pipeline runs one rank; --nproc " + std::to_string(o.nproc) +
         " is handled by the consr_pipeline program (or start the ranks with torchrun / srun)");
  const cr::dist_env env = cr::read_dist_env();
  const auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(o.dist_timeout * 1000.0)));
  std::shared_ptr<cr::process_group> dist = cr::process_group::connect(env, timeout);
  null_buffer discard;
  std::ostream quiet(&discard);
  std::ostream& log = dist->is_root() ? root_log : quiet;
  run_context ctx(o, log);
  ctx.dist = dist;
  ctx.prepare();
  const artefact_store& store = ctx.store;
  log << "consr_pipeline: " << ctx.items.size() << " item(s), model " << ctx.model_dir << " (" << ctx.model_type
      << ", " << o.dtype << ", " << o.device << "), profile " << (o.defaults == profile::demo ? "demo" : "paper")
      << ", seed " << o.seed << ", output " << store.dir().string() << "\n";
  if (dist->size() > 1)
    log << "consr_pipeline: " << dist->size() << " ranks (" << env.source << ", c10d Gloo, rendezvous "
        << env.master_addr << ":" << env.master_port << "); items shared out by index, rank 0 writes the artefacts\n";
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
    const std::string name = to_string(def->which);
    if (forced && ctx.is_root()) store.clear_partial(def->which);
    dist->barrier("stage '" + name + "': start");
    inject_fault(ctx, def->which);
    log << "[" << name << "] running\n";
    const auto t0 = clock_type::now();
    r.summary = def->every_rank || ctx.is_root() ? def->run(ctx, run) : "rank 0 ran it";
    r.ran = true;
    r.seconds = seconds_since(t0);
    if (ctx.is_root()) store.clear_partial(def->which);
    // The next stage reads this one's artefact: nobody starts it before rank 0 has written it.
    dist->barrier("stage '" + name + "': waiting for rank 0 to write its artefact");
    log << "[" << to_string(def->which) << "] done in " << fixed(r.seconds, 2) << " s: " << r.summary << "\n";
    results.push_back(r);
  }
  if (ctx.is_root()) store.remove_partial_dir_if_empty();
  log << "\nsummary (" << store.dir().string() << ")\n";
  for (const auto& r : results)
    log << "  " << std::left << std::setw(11) << to_string(r.which) << std::right << std::setw(10)
        << (r.ran ? fixed(r.seconds, 2) + " s" : std::string("skipped")) << "  " << r.summary << "\n";
  return results;
}

}  // namespace consr_pipeline
