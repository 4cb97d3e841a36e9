// Example 04: the end-to-end ConSR pipeline (describe → candidates → score → write → train) on a
// Qwen2.5-VL or LLaVA-OneVision checkpoint directory; see pipeline.hpp and docs/pipeline.md.
//
//   consr_pipeline [all|describe|candidates|score|write|train] [--input items.json] [--model DIR]
//                  [--out DIR] [--seed N] [--profile paper|demo] ...   (--help lists every option)
//
// Without arguments it runs the embedded default input (three test images) on the tiny Qwen2.5-VL
// fixture with the demo profile. Exit status 0 on success, 1 on any error (printed as "error: ...").
#include <exception>
#include <iostream>

#include <c10/util/Exception.h>

#include "pipeline.hpp"

int main(int argc, char** argv) {
  try {
    bool help = false;
    const consr_pipeline::options o = consr_pipeline::parse_command_line(argc, argv, &help);
    if (help) {
      std::cout << consr_pipeline::usage(argv[0]);
      return 0;
    }
    consr_pipeline::run_pipeline(o, std::cout);
    return 0;
  } catch (const c10::Error& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
