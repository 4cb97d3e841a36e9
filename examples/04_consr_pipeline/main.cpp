// Example 04: the end-to-end ConSR pipeline (describe → candidates → score → write → train) on a
// Qwen2.5-VL or LLaVA-OneVision checkpoint directory; see pipeline.hpp and docs/pipeline.md.
//
//   consr_pipeline [all|describe|candidates|score|write|train] [--input items.json] [--model DIR]
//                  [--out DIR] [--seed N] [--profile paper|demo] ...   (--help lists every option)
//
// Without arguments it runs the embedded default input (three test images) on the tiny Qwen2.5-VL
// fixture with the demo profile. Exit status 0 on success, 1 on any error (printed as "error: ...").
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include <c10/util/Exception.h>

#include "consr_runtime/distributed.hpp"
#include "pipeline.hpp"

namespace {

// "rank R: " in a data-parallel run (every rank prints its own error), "" otherwise.
std::string rank_prefix() {
  const char* rank = std::getenv("RANK");
  const char* world = std::getenv("WORLD_SIZE");
  if (!rank || !world || std::string(world) == "1") return "";
  return std::string("rank ") + rank + ": ";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    bool help = false;
    const consr_pipeline::options o = consr_pipeline::parse_command_line(argc, argv, &help);
    if (help) {
      std::cout << consr_pipeline::usage(argv[0]);
      return 0;
    }
    if (o.nproc > 1) {
      // consr's own launcher: o.nproc local ranks of this same command (as torchrun would start them).
      if (consr_runtime::read_dist_env().world_size > 1)
        throw consr_pipeline::pipeline_error(
            "consr_pipeline: argument '--nproc': not under a launcher that already set RANK / WORLD_SIZE (torchrun, "
            "srun); leave --nproc at 1 there");
      std::cout.flush();
      return consr_runtime::launch_local(static_cast<int>(o.nproc), consr_runtime::command_line_without_nproc(argc, argv), std::cerr) == 0 ? 0 : 1;
    }
    consr_pipeline::run_pipeline(o, std::cout);
    return 0;
  } catch (const c10::Error& e) {
    std::cout.flush();
    std::cerr << "error: " << rank_prefix() << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << rank_prefix() << e.what() << "\n";
  }
  return 1;
}
