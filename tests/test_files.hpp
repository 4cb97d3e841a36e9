// tests/test_files.hpp — reading and writing whole files in the Catch2 tests that drive programs
// and pipelines through files (tests/eval, tests/pipeline): one copy instead of one per test file.
// Include it after Catch2 (LibTorch users: after the LibTorch-first preamble).
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace consr_test_files {

/// The bytes of file `p`; REQUIREs that it opens.
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

/// Writes `text` to `p` (replacing it), creating its parent directories.
inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

}  // namespace consr_test_files
