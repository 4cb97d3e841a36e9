// jsonl.hpp (private to consr_world) — reads a JSON Lines file: one callback per non-blank line,
// errors name the file and the line.
#pragma once
#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace consr_world::detail {

/// "consr_world: <path>:<line>: <what>", the error every reader of a JSONL file throws.
inline std::runtime_error jsonl_error(const std::string& path, int line, const std::string& what) {
  return std::runtime_error("consr_world: " + path + ":" + std::to_string(line) + ": " + what);
}

/// Calls f(json, line number) for each non-blank line of `path`; throws for an unreadable file or a
/// line that is not valid JSON.
template <class F>
void for_each_jsonl(const std::string& path, F&& f) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("consr_world: cannot read " + path);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw jsonl_error(path, lineno, e.what());
    }
    f(j, lineno);
  }
}

}  // namespace consr_world::detail
