// safetensors reader (mmap + header validation), model-directory checkpoints, and writer.
#include "consr_runtime/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "consr_runtime reads safetensors (little-endian data) by memcpy: a little-endian host is required"
#endif

namespace consr_runtime {
namespace {

constexpr std::uint64_t max_header_bytes = 100'000'000;  // the reference implementation's bound

std::string squote(const std::string& s) { return "'" + s + "'"; }

[[noreturn]] void fail_file(const char* fn, const std::string& path, const std::string& msg) {
  throw runtime_error(std::string("consr_runtime::") + fn + ": " + squote(path) + ": " + msg);
}
[[noreturn]] void fail_tensor(const char* fn, const std::string& path, const std::string& tensor,
                              const std::string& msg) {
  fail_file(fn, path, "tensor " + squote(tensor) + ": " + msg);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Parses JSON, rejecting duplicate keys in any object: nlohmann's default parser silently keeps the
/// last one, and a safetensors header with two entries of one name is ambiguous (the spec forbids it).
nlohmann::json parse_json_no_duplicates(const std::string& text, const char* fn, const std::string& path,
                                        const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using ev = nlohmann::json::parse_event_t;
    if (event == ev::object_start) {
      keys.emplace_back();
    } else if (event == ev::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == ev::key && !keys.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(key).second) fail_file(fn, path, what + " has the key " + squote(key) + " twice");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, callback);
  } catch (const nlohmann::json::exception& e) {
    fail_file(fn, path, what + " is not valid JSON (" + e.what() + ")");
  }
}

bool read_non_negative(const nlohmann::json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(v.get<std::int64_t>());
    return true;
  }
  return false;
}

c10::optional<torch::ScalarType> torch_dtype(const std::string& dtype) {
  if (dtype == "BOOL") return torch::kBool;
  if (dtype == "U8") return torch::kUInt8;
  if (dtype == "I8") return torch::kInt8;
  if (dtype == "I16") return torch::kInt16;
  if (dtype == "I32") return torch::kInt32;
  if (dtype == "I64") return torch::kInt64;
  if (dtype == "F16") return torch::kFloat16;
  if (dtype == "BF16") return torch::kBFloat16;
  if (dtype == "F32") return torch::kFloat32;
  if (dtype == "F64") return torch::kFloat64;
  if (dtype == "C64") return torch::kComplexFloat;
  return c10::nullopt;  // U16/U32/U64/F8_*: not representable in LibTorch 1.13
}

const char* safetensors_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kBool: return "BOOL";
    case torch::kUInt8: return "U8";
    case torch::kInt8: return "I8";
    case torch::kInt16: return "I16";
    case torch::kInt32: return "I32";
    case torch::kInt64: return "I64";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    case torch::kComplexFloat: return "C64";
    default: return nullptr;
  }
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace

std::size_t safetensors_dtype_size(const std::string& dtype) noexcept {
  static const std::map<std::string, std::size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},     {"C64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

// ---- safetensors_file ----------------------------------------------------------------------------

/// The read-only mapping of a whole file (unmapped when the last owner goes).
struct safetensors_file::mapping {
  const std::uint8_t* base = nullptr;
  std::uint64_t size = 0;
  mapping(const mapping&) = delete;
  mapping& operator=(const mapping&) = delete;
  explicit mapping(const std::string& path) {
    const char* fn = "safetensors_file";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail_file(fn, path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      fail_file(fn, path, "not a regular file");
    }
    size = static_cast<std::uint64_t>(st.st_size);
    if (size < 8) {
      ::close(fd);
      fail_file(fn, path, "file has " + std::to_string(size) + " bytes, fewer than the 8-byte header length");
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    ::close(fd);  // the mapping stays valid after close
    if (p == MAP_FAILED) fail_file(fn, path, std::string("mmap failed: ") + std::strerror(saved));
    base = static_cast<const std::uint8_t*>(p);
  }
  ~mapping() {
    if (base) ::munmap(const_cast<std::uint8_t*>(base), static_cast<std::size_t>(size));
  }
};

safetensors_file::safetensors_file(const std::string& path) : path_(path) {
  const char* fn = "safetensors_file";
  auto map = std::make_shared<const mapping>(path);
  const std::uint64_t file_size = map->size;
  std::uint64_t n = 0;
  std::memcpy(&n, map->base, 8);  // little-endian u64 (host checked above)
  if (n > max_header_bytes)
    fail_file(fn, path, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > file_size - 8)
    fail_file(fn, path, "header length " + std::to_string(n) + " runs past the end of the file (" +
                            std::to_string(file_size) + " bytes)");
  const std::string header(reinterpret_cast<const char*>(map->base + 8), static_cast<std::size_t>(n));
  const std::size_t first = header.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || header[first] != '{') fail_file(fn, path, "header is not a JSON object");
  const nlohmann::json j = parse_json_no_duplicates(header, fn, path, "header");
  if (!j.is_object()) fail_file(fn, path, "header is not a JSON object");
  const std::uint64_t data_size = file_size - 8 - n;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail_file(fn, path, "__metadata__ is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail_file(fn, path, "__metadata__ value of " + squote(m.key()) + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail_tensor(fn, path, name, "header entry is not a JSON object");
    tensor_entry e;
    e.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail_tensor(fn, path, name, "missing string 'dtype'");
    e.dtype = dt->get<std::string>();
    const std::size_t elem = safetensors_dtype_size(e.dtype);
    if (elem == 0) fail_tensor(fn, path, name, "unknown dtype " + squote(e.dtype));
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail_tensor(fn, path, name, "missing array 'shape'");
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : *sh) {
      std::uint64_t dim = 0;
      if (!read_non_negative(d, dim) || dim > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()))
        fail_tensor(fn, path, name, "shape " + sh->dump() + " is not a list of non-negative integers");
      e.shape.push_back(static_cast<int64_t>(dim));
      if (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim) overflow = true;
      numel *= dim;
    }
    if (numel == 0) overflow = false;  // any zero dimension makes the product 0
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !read_non_negative((*off)[0], e.begin) ||
        !read_non_negative((*off)[1], e.end))
      fail_tensor(fn, path, name, "'data_offsets' is not a pair of non-negative integers");
    if (e.begin > e.end || e.end > data_size)
      fail_tensor(fn, path, name,
                  "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                      ") are outside the data buffer of " + std::to_string(data_size) + " bytes");
    if (overflow || numel > std::numeric_limits<std::uint64_t>::max() / elem)
      fail_tensor(fn, path, name, "shape " + shape_string(e.shape) + " overflows the byte count");
    if (e.end - e.begin != numel * elem)
      fail_tensor(fn, path, name,
                  "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ") hold " +
                      std::to_string(e.end - e.begin) + " bytes but dtype " + e.dtype + " x shape " +
                      shape_string(e.shape) + " needs " + std::to_string(numel * elem));
    entries_.push_back(std::move(e));
  }

  // No two tensors may share bytes: sort by offsets and compare neighbours.
  std::vector<const tensor_entry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const tensor_entry* a, const tensor_entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const tensor_entry& a = *by_offset[i - 1];
    const tensor_entry& b = *by_offset[i];
    if (b.begin < a.end)
      fail_tensor(fn, path, b.name,
                  "data_offsets [" + std::to_string(b.begin) + ", " + std::to_string(b.end) + ") overlap tensor " +
                      squote(a.name) + " at [" + std::to_string(a.begin) + ", " + std::to_string(a.end) + ")");
  }

  std::sort(entries_.begin(), entries_.end(),
            [](const tensor_entry& a, const tensor_entry& b) { return a.name < b.name; });
  for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
  data_ = map->base + 8 + n;
  map_ = std::move(map);
}

const tensor_entry& safetensors_file::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail_tensor("safetensors_file", path_, name, "not in the file");
  return entries_[it->second];
}

const std::uint8_t* safetensors_file::raw_data(const std::string& name) const { return data_ + entry(name).begin; }

torch::Tensor safetensors_file::load(const std::string& name) const {
  const tensor_entry& e = entry(name);
  auto dtype = torch_dtype(e.dtype);
  if (!dtype) fail_tensor("safetensors_file::load", path_, name, "dtype " + e.dtype + " has no LibTorch equivalent");
  torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(*dtype).device(torch::kCPU));
  const std::uint64_t bytes = e.end - e.begin;
  const std::uint8_t* src = data_ + e.begin;
  if (*dtype == torch::kBool) {
    for (std::uint64_t i = 0; i < bytes; ++i)
      if (src[i] > 1)
        fail_tensor("safetensors_file::load", path_, name,
                    "BOOL byte " + std::to_string(i) + " has value " + std::to_string(src[i]) + " (not 0 or 1)");
  }
  if (bytes) std::memcpy(t.data_ptr(), src, static_cast<std::size_t>(bytes));
  return t;
}

// ---- checkpoint ----------------------------------------------------------------------------------

checkpoint::checkpoint(const std::string& model_dir) : dir_(model_dir) {
  const char* fn = "checkpoint";
  if (is_regular_file(model_dir)) {
    shards_.emplace_back(model_dir);
  } else {
    const std::string index_path = join_path(model_dir, "model.safetensors.index.json");
    const std::string single_path = join_path(model_dir, "model.safetensors");
    if (is_regular_file(index_path)) {
      std::ifstream in(index_path, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      if (!in && !in.eof()) fail_file(fn, index_path, "cannot read");
      const nlohmann::json j = parse_json_no_duplicates(ss.str(), fn, index_path, "index");
      if (!j.is_object()) fail_file(fn, index_path, "index is not a JSON object");
      auto wm = j.find("weight_map");
      if (wm == j.end() || !wm->is_object()) fail_file(fn, index_path, "has no 'weight_map' object");
      std::map<std::string, std::size_t> shard_of_file;
      std::map<std::string, std::string> listed;  // tensor -> shard file name
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string())
          fail_file(fn, index_path, "weight_map entry of tensor " + squote(it.key()) + " is not a string");
        const std::string shard = it.value().get<std::string>();
        // Shards are file names in the model directory: no absolute paths, no climbing out.
        if (shard.empty() || shard.front() == '/' || shard.find("..") != std::string::npos)
          fail_file(fn, index_path, "tensor " + squote(it.key()) + ": shard name " + squote(shard) +
                                        " is not a file name inside the model directory");
        listed[it.key()] = shard;
        if (!shard_of_file.count(shard)) {
          const std::string shard_path = join_path(model_dir, shard);
          if (!is_regular_file(shard_path))
            fail_file(fn, index_path,
                      "shard " + squote(shard) + " (listed for tensor " + squote(it.key()) + ") does not exist");
          shard_of_file[shard] = shards_.size();
          shards_.emplace_back(shard_path);
        }
      }
      for (const auto& [tensor, shard] : listed) {
        const std::size_t s = shard_of_file.at(shard);
        if (!shards_[s].contains(tensor))
          fail_file(fn, index_path, "tensor " + squote(tensor) + " is listed in shard " + squote(shard) +
                                        " but that file does not hold it");
        where_.emplace(tensor, s);
      }
      for (const auto& [shard, s] : shard_of_file) {
        for (const auto& e : shards_[s].entries()) {
          auto it = listed.find(e.name);
          if (it == listed.end() || it->second != shard)
            fail_file(fn, index_path, "shard " + squote(shard) + " holds tensor " + squote(e.name) +
                                          " which the index does not list for it");
        }
      }
      return;
    }
    if (!is_regular_file(single_path))
      fail_file(fn, model_dir, "holds neither model.safetensors nor model.safetensors.index.json");
    shards_.emplace_back(single_path);
  }
  for (const auto& e : shards_.front().entries()) where_.emplace(e.name, 0);
}

std::vector<std::string> checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

const safetensors_file& checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail_file("checkpoint", dir_, "tensor " + squote(name) + " is not in the checkpoint");
  return shards_[it->second];
}

std::vector<int64_t> checkpoint::shape(const std::string& name) const { return file_of(name).entry(name).shape; }
const std::string& checkpoint::dtype(const std::string& name) const { return file_of(name).entry(name).dtype; }
torch::Tensor checkpoint::load(const std::string& name) const { return file_of(name).load(name); }

// ---- writer --------------------------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const char* fn = "save_safetensors";
  struct item {
    const std::string* name;
    torch::Tensor data;  // contiguous CPU
    const char* dtype;
    std::size_t elem;
  };
  std::vector<item> items;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail_file(fn, path, "a tensor has an empty name");
    if (name == "__metadata__") fail_tensor(fn, path, name, "the name is reserved for the metadata");
    if (!seen.insert(name).second) fail_tensor(fn, path, name, "the name appears twice");
    if (!t.defined()) fail_tensor(fn, path, name, "undefined tensor");
    const char* dt = safetensors_dtype(t.scalar_type());
    if (!dt) fail_tensor(fn, path, name, std::string("unsupported dtype ") + c10::toString(t.scalar_type()));
    items.push_back({&name, t.detach().to(torch::kCPU).contiguous(), dt, safetensors_dtype_size(dt)});
  }
  // Data order of the reference writer: larger elements first (keeps every tensor aligned), then name.
  std::sort(items.begin(), items.end(), [](const item& a, const item& b) {
    return a.elem != b.elem ? a.elem > b.elem : *a.name < *b.name;
  });
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& it : items) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(it.data.numel()) * it.elem;
    header[*it.name] = {{"dtype", it.dtype}, {"shape", it.data.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();  // nlohmann objects iterate keys in sorted order
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t n = text.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_file(fn, path, "cannot open " + squote(tmp) + " for writing");
    char len[8];
    std::memcpy(len, &n, 8);
    out.write(len, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& it : items) {
      const auto bytes = static_cast<std::streamsize>(it.data.numel() * static_cast<int64_t>(it.elem));
      if (bytes) out.write(static_cast<const char*>(it.data.data_ptr()), bytes);
    }
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail_file(fn, path, "write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    std::remove(tmp.c_str());
    fail_file(fn, path, std::string("cannot rename the temporary file: ") + std::strerror(saved));
  }
}

}  // namespace consr_runtime
