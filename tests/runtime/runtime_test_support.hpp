// tests/runtime/runtime_test_support.hpp — what the runtime's tests share: LibTorch before Catch, the
// fixture directories, JSON fixtures, the models' reference outputs, tensor differences, exception
// messages and temporary directories.
#pragma once

// LibTorch first: its glog headers define CHECK(condition), which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <stdlib.h>  // mkdtemp

#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "consr_runtime/safetensors.hpp"

namespace runtime_test {

/// tests/fixtures and its model fixtures (tools/make_*_fixture*.py).
inline const std::string fixtures_dir = CONSR_FIXTURES_DIR;
inline const std::string models_dir = fixtures_dir + "/models";

/// A JSON fixture; REQUIREs that it opens.
inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

/// A model fixture's reference outputs from transformers (tools/make_model_fixtures.py):
/// <dir>/reference.safetensors as `ref` (f["name"] loads a tensor) and <dir>/reference.json as `meta`.
struct model_reference {
  std::string dir;
  consr_runtime::safetensors_file ref;
  nlohmann::json meta;
  explicit model_reference(const std::string& d)
      : dir(d), ref(d + "/reference.safetensors"), meta(read_json(d + "/reference.json")) {}
  torch::Tensor operator[](const std::string& name) const { return ref.load(name); }
};

/// max |a − b| in double.
inline double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

inline bool message_contains(const std::exception& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
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

}  // namespace runtime_test
