// tests/pipeline/pipeline_test_options.hpp — the short pipeline run the pipeline's tests start from
// (tests/pipeline/test_pipeline.cpp, test_gradient_checkpointing.cpp): one definition of "the demo
// profile, shortened".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "pipeline.hpp"

namespace consr_pipeline_test {

/// The demo profile, shortened: `tokens`-token generations (descriptions and candidates), two epochs,
/// written to CONSR_PIPELINE_TEST_OUT/`name`.
inline consr_pipeline::options tiny_options(const std::string& name, std::int64_t tokens = 12) {
  consr_pipeline::options o = consr_pipeline::default_options(consr_pipeline::profile::demo);
  o.output_dir = (std::filesystem::path(CONSR_PIPELINE_TEST_OUT) / name).string();
  o.max_new_tokens = tokens;
  o.description_max_new_tokens = tokens;
  o.epochs = 2;
  return o;
}

}  // namespace consr_pipeline_test
