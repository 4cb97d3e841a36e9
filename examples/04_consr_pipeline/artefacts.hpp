// examples/04_consr_pipeline/artefacts.hpp — the pipeline's artefact store: every file a stage
// writes goes through here, and so does everything that decides whether a stage must run again.
//
//   * fingerprints: a stage's `settings` (every option and input it depends on, upstream artefacts
//     by content hash) and their FNV-1a 64 hash `settings_fnv1a`;
//   * headers: every artefact starts with {stage, settings_fnv1a, settings};
//   * atomic writes: a file is written to `<name>.tmp` and renamed, a directory built as
//     `<name>.tmp/` and renamed, so an interrupted run never leaves a truncated artefact;
//   * up-to-date checks: a stage is skipped when its artefact carries the same settings_fnv1a and
//     its other outputs exist;
//   * partial checkpoints: per-item results under partial/<stage>/<index>.json, tagged with the
//     fingerprint, so an interrupted stage resumes at the next item.
//
// JSON is written with two-space indentation except that arrays of scalars stay on one line, and
// floats with the shortest representation that reads back to the same double (NaN as null).
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline.hpp"

namespace consr_pipeline {

using json = nlohmann::ordered_json;

/// Artefact names, relative to the output directory.
namespace files {
inline constexpr const char* descriptions = "descriptions.json";
inline constexpr const char* candidates = "candidates.json";
inline constexpr const char* scores = "scores.json";
inline constexpr const char* report = "report.json";
inline constexpr const char* llamafactory_data = "llamafactory/consr_preference.json";
inline constexpr const char* llamafactory_info = "llamafactory/dataset_info.json";
inline constexpr const char* llava = "llava_ov_dpo.json";
inline constexpr const char* train_log = "train_log.json";
inline constexpr const char* adapter = "adapter";
}  // namespace files

/// Bumped when an artefact's format changes, so that old artefacts are recomputed.
inline constexpr int artefact_format_version = 1;

/// FNV-1a 64 of a byte string as 16 hex digits. Fingerprints detect changed inputs; they are not a
/// security measure.
std::string fnv1a_hex(const std::string& bytes);

/// The whole file; throws pipeline_error "cannot read <what> '<path>'".
std::string read_file(const std::filesystem::path& path, const std::string& what);

/// Parses a JSON file; throws pipeline_error naming `what` and the path when it is not valid JSON.
json parse_json_file(const std::filesystem::path& path, const std::string& what);

/// The artefact text of `j` (pretty, scalar arrays on one line, trailing newline).
std::string to_text(const json& j);

/// `j` on one line (NaN as null, invalid UTF-8 replaced).
std::string dump_compact(const json& j);

/// Writes `content` through `<path>.tmp` and a rename (parent directories created).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

/// What a stage's output depends on and its hash.
struct fingerprint {
  json settings;
  std::string hash;  ///< fnv1a_hex(settings.dump())
};

/// The lock file of an output directory (kept after a run: removing it would race with a run that
/// has just opened it).
inline constexpr const char* lock_file_name = ".consr_pipeline.lock";

/// An exclusive lock on an output directory: flock(LOCK_EX | LOCK_NB) on `<dir>/.consr_pipeline.lock`,
/// held while the object lives. The kernel releases it when the process ends in any way (kill -9
/// included), so a stale lock file never blocks a later run. The holder writes one JSON line into
/// the file: {"pid", "host", "started"} (UTC, ISO 8601). Not reliable on network file systems
/// whose flock is local to one client (older NFS).
class output_lock {
 public:
  output_lock() = default;
  /// Takes the lock; throws pipeline_error "argument '--out': '<dir>' is in use by another run
  /// (pid P on host H, started T) ..." when another open file description holds it, or naming the
  /// file when it cannot be opened.
  explicit output_lock(const std::filesystem::path& dir);
  ~output_lock();
  output_lock(output_lock&& other) noexcept;
  output_lock& operator=(output_lock&& other) noexcept;
  output_lock(const output_lock&) = delete;
  output_lock& operator=(const output_lock&) = delete;
  bool held() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

/// The output directory and the rules of its artefacts.
class artefact_store {
 public:
  explicit artefact_store(std::filesystem::path dir = {}) : dir_(std::move(dir)) {}

  const std::filesystem::path& dir() const noexcept { return dir_; }
  std::filesystem::path path(const std::string& name) const { return dir_ / name; }

  /// The start of every stage's settings: {"stage", "format_version"}; the stage adds the rest.
  static json settings_base(stage s);
  /// The fingerprint of complete settings.
  static fingerprint make_fingerprint(json settings);

  /// The content hash of an upstream artefact (so a recomputed upstream with the same bytes does
  /// not invalidate its downstream stages).
  std::string content_hash(const std::string& name) const;

  /// True when `artefact` exists, parses, carries `hash` as settings_fnv1a, and every file of
  /// `also_required` exists.
  bool up_to_date(const std::string& artefact, const std::string& hash,
                  const std::vector<std::string>& also_required) const;

  /// {"stage", "settings_fnv1a", "settings"}: the header every artefact starts with.
  static json header(stage s, const fingerprint& f);

  /// An artefact, parsed.
  json read(const std::string& name) const { return parse_json_file(path(name), "artefact"); }
  /// Writes an artefact atomically (to_text).
  void write(const std::string& name, const json& doc) const { write_file_atomic(path(name), to_text(doc)); }

  /// A fresh temporary directory `<name>.tmp/` to build a directory artefact in, and its commit:
  /// the old `<name>/` is removed and the temporary renamed to it.
  std::filesystem::path begin_directory(const std::string& name) const;
  void commit_directory(const std::string& name) const;

  /// Per-item checkpoints of a stage under partial/<stage>/<index>.json, valid only for `hash`.
  std::optional<json> load_partial(stage s, std::size_t index, const std::string& hash) const;
  void save_partial(stage s, std::size_t index, const std::string& hash, const json& result) const;
  /// Removes a stage's checkpoints (after it completes, or before it is forced).
  void clear_partial(stage s) const;
  /// Removes partial/ when no checkpoint is left in it.
  void remove_partial_dir_if_empty() const;

 private:
  std::filesystem::path partial_path(stage s, std::size_t index) const;

  std::filesystem::path dir_;
};

}  // namespace consr_pipeline
