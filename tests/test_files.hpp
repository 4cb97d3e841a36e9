// tests/test_files.hpp — what the Catch2 tests that work through files and error messages share
// (tests/eval, tests/pipeline, tests/runtime): reading and writing whole files, a temporary directory,
// the message of an exception. One copy instead of one per test file.
// Include it after Catch2 (LibTorch users: after the LibTorch-first preamble).
#pragma once

#include <stdlib.h>  // mkdtemp

#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <system_error>

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

/// A fresh directory under the system's temporary directory (mkdtemp), removed with its content when
/// the object goes.
struct temp_dir {
  std::filesystem::path path;
  explicit temp_dir(const std::string& prefix = "consr_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  /// The path of `name` inside.
  std::string file(const std::string& name) const { return (path / name).string(); }
  /// Writes `text` to `name` inside and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = file(name);
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

/// The message of what `f` throws (a std::exception), or "(nothing thrown)" when it returns.
inline std::string thrown(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

}  // namespace consr_test_files
