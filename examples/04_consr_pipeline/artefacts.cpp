// The pipeline's artefact store (see artefacts.hpp).
#include "artefacts.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

namespace consr_pipeline {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& message) { throw pipeline_error("consr_pipeline: " + message); }

// JSON with two-space indentation, except that arrays of scalars (token ids, log-probs) stay on one
// line: readable, and a fraction of the size of one number per line.
void pretty(const json& j, std::string& out, int indent) {
  const std::string pad(static_cast<std::size_t>(indent) * 2, ' ');
  const std::string inner(static_cast<std::size_t>(indent + 1) * 2, ' ');
  if (j.is_object()) {
    if (j.empty()) {
      out += "{}";
      return;
    }
    out += "{\n";
    std::size_t k = 0;
    for (auto it = j.begin(); it != j.end(); ++it, ++k) {
      out += inner + dump_compact(json(it.key())) + ": ";
      pretty(it.value(), out, indent + 1);
      out += k + 1 < j.size() ? ",\n" : "\n";
    }
    out += pad + "}";
  } else if (j.is_array()) {
    const bool flat = std::all_of(j.begin(), j.end(), [](const json& e) { return e.is_primitive(); });
    if (flat) {
      out += dump_compact(j);
      return;
    }
    out += "[\n";
    for (std::size_t k = 0; k < j.size(); ++k) {
      out += inner;
      pretty(j[k], out, indent + 1);
      out += k + 1 < j.size() ? ",\n" : "\n";
    }
    out += pad + "]";
  } else {
    out += dump_compact(j);
  }
}

}  // namespace

std::string fnv1a_hex(const std::string& bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string read_file(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + what + " '" + path.string() + "'");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail("error reading " + what + " '" + path.string() + "'");
  return os.str();
}

json parse_json_file(const fs::path& path, const std::string& what) {
  const std::string text = read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(what + " '" + path.string() + "' is not valid JSON: " + e.what());
  }
}

std::string dump_compact(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string to_text(const json& j) {
  std::string out;
  pretty(j, out, 0);
  out += "\n";
  return out;
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write '" + tmp.string() + "'");
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) fail("error writing '" + tmp.string() + "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("cannot rename '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
}

// ---- the output directory's lock ---------------------------------------------------------------------

output_lock::output_lock(const fs::path& dir) {
  const fs::path file = dir / lock_file_name;
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("argument '--out': cannot open the lock file '" + file.string() + "': " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err != EWOULDBLOCK)
      fail("argument '--out': cannot lock '" + file.string() + "': " + std::strerror(err));
    std::string holder = "holder unknown";
    try {
      const json h = json::parse(read_file(file, "lock file"));
      holder = "pid " + dump_compact(h.at("pid")) + " on host " + h.at("host").get<std::string>() + ", started " +
               h.at("started").get<std::string>();
    } catch (const std::exception&) {
    }
    fail("argument '--out': '" + dir.string() + "' is in use by another consr_pipeline run (" + holder +
         "); wait for it to end or choose another --out");
  }
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char started[32];
  std::strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &utc);
  json info;
  info["pid"] = static_cast<std::int64_t>(::getpid());
  info["host"] = std::string(host);
  info["started"] = std::string(started);
  const std::string line = dump_compact(info) + "\n";
  // Best effort: the lock itself is what protects the directory; the text only names the holder.
  if (::ftruncate(fd, 0) == 0) {
    const ssize_t written = ::pwrite(fd, line.data(), line.size(), 0);
    (void)written;
  }
  fd_ = fd;
}

output_lock::~output_lock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

output_lock::output_lock(output_lock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

output_lock& output_lock::operator=(output_lock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

// ---- fingerprints and headers ---------------------------------------------------------------------

json artefact_store::settings_base(stage s) {
  json j;
  j["stage"] = to_string(s);
  j["format_version"] = artefact_format_version;
  return j;
}

fingerprint artefact_store::make_fingerprint(json settings) {
  fingerprint f;
  f.hash = fnv1a_hex(settings.dump());
  f.settings = std::move(settings);
  return f;
}

std::string artefact_store::content_hash(const std::string& name) const {
  return fnv1a_hex(read_file(path(name), "artefact"));
}

bool artefact_store::up_to_date(const std::string& artefact, const std::string& hash,
                                const std::vector<std::string>& also_required) const {
  std::error_code ec;
  if (!fs::is_regular_file(path(artefact), ec)) return false;
  json j;
  try {
    j = json::parse(read_file(path(artefact), "artefact"));
  } catch (const std::exception&) {
    return false;
  }
  if (!j.is_object() || !j.contains("settings_fnv1a") || j["settings_fnv1a"] != hash) return false;
  for (const auto& f : also_required)
    if (!fs::is_regular_file(path(f), ec)) return false;
  return true;
}

json artefact_store::header(stage s, const fingerprint& f) {
  json j;
  j["stage"] = to_string(s);
  j["settings_fnv1a"] = f.hash;
  j["settings"] = f.settings;
  return j;
}

// ---- directory artefacts ----------------------------------------------------------------------------

fs::path artefact_store::begin_directory(const std::string& name) const {
  const fs::path tmp = path(name + ".tmp");
  fs::remove_all(tmp);
  return tmp;
}

void artefact_store::commit_directory(const std::string& name) const {
  fs::remove_all(path(name));
  fs::rename(path(name + ".tmp"), path(name));
}

// ---- per-item checkpoints ---------------------------------------------------------------------------

fs::path artefact_store::partial_path(stage s, std::size_t index) const {
  return dir_ / "partial" / to_string(s) / (std::to_string(index) + ".json");
}

std::optional<json> artefact_store::load_partial(stage s, std::size_t index, const std::string& hash) const {
  const fs::path p = partial_path(s, index);
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return std::nullopt;
  try {
    json j = json::parse(read_file(p, "checkpoint"));
    if (j.value("settings_fnv1a", std::string()) == hash && j.contains("result")) return j["result"];
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

void artefact_store::save_partial(stage s, std::size_t index, const std::string& hash, const json& result) const {
  json j;
  j["settings_fnv1a"] = hash;
  j["result"] = result;
  write_file_atomic(partial_path(s, index), dump_compact(j));
}

void artefact_store::clear_partial(stage s) const { fs::remove_all(dir_ / "partial" / to_string(s)); }

void artefact_store::remove_partial_dir_if_empty() const {
  std::error_code ec;
  if (fs::is_empty(dir_ / "partial", ec)) fs::remove(dir_ / "partial", ec);
}

}  // namespace consr_pipeline
