// consr_runtime/safetensors.hpp — memory-mapped, validated safetensors files, Hugging Face model
// directories (single file or sharded through model.safetensors.index.json), and a writer.
//
// File layout (runtime facts §6): 8 bytes little-endian u64 N, N bytes of UTF-8 JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end)}, ..., "__metadata__": {str: str}}, then
// the data buffer; offsets are relative to byte 8 + N, data is little-endian and row-major.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "consr_runtime/error.hpp"

namespace consr_runtime {

/// One tensor of a safetensors header. `begin`/`end` are byte offsets into the data buffer
/// (end exclusive); `dtype` is the file's spelling ("BF16", "F32", ...).
struct tensor_entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

/// Bytes per element of a safetensors dtype name; 0 when the name is not a supported dtype
/// (BOOL U8 I8 F8_E5M2 F8_E4M3 F8_E8M0 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 C64).
std::size_t safetensors_dtype_size(const std::string& dtype) noexcept;

/// A safetensors file, memory-mapped read-only. The constructor validates the whole header and
/// throws `runtime_error` naming the file (and the tensor where there is one) unless: the file has
/// at least 8 bytes; the header length N is at most 100 MB and at most file size - 8; the header is
/// a JSON object without duplicate keys; every tensor has a known dtype, a shape of non-negative
/// integers and data_offsets [begin, end] with begin <= end <= data size and end - begin ==
/// numel x dtype size (no overflow); tensors do not overlap; `__metadata__`, if present, maps strings
/// to strings. Gaps between tensors are tolerated (nothing reads them).
/// Copies share the mapping; the mapping lives as long as any copy.
class safetensors_file {
 public:
  explicit safetensors_file(const std::string& path);

  /// Tensors sorted by name.
  const std::vector<tensor_entry>& entries() const noexcept { return entries_; }
  bool contains(const std::string& name) const noexcept { return index_.count(name) != 0; }
  /// The entry of `name`; throws runtime_error naming the tensor and the file if absent.
  const tensor_entry& entry(const std::string& name) const;
  /// An owning, contiguous CPU tensor of the stored dtype (a copy of the mapped bytes).
  /// Throws for a missing name, for a dtype LibTorch cannot hold (U16, U32, U64, F8_*), and for a
  /// BOOL tensor whose bytes are not 0/1.
  torch::Tensor load(const std::string& name) const;
  /// The raw bytes of `name` inside the mapping (valid while this object or a copy lives).
  const std::uint8_t* raw_data(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  const std::string& path() const noexcept { return path_; }

 private:
  struct mapping;
  std::shared_ptr<const mapping> map_;
  std::string path_;
  std::vector<tensor_entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
  const std::uint8_t* data_ = nullptr;  // start of the data buffer inside the mapping
};

/// A model directory as the Hugging Face hub publishes it: `model.safetensors`, or
/// `model.safetensors.index.json` whose `weight_map` names each tensor's shard (a file name in the
/// same directory). `model_dir` may also be the path of a single .safetensors file.
/// Throws runtime_error naming the directory / file when neither exists, when the index is not a
/// JSON object with a string->string `weight_map`, when a shard is missing or corrupt, when a
/// tensor listed in the index is not in its shard, or when a shard holds a tensor the index does
/// not list for it.
class checkpoint {
 public:
  explicit checkpoint(const std::string& model_dir);

  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const noexcept { return where_.count(name) != 0; }
  /// Throws runtime_error naming the tensor and the directory if absent.
  std::vector<int64_t> shape(const std::string& name) const;
  const std::string& dtype(const std::string& name) const;
  torch::Tensor load(const std::string& name) const;
  /// The shard file holding `name` (throws if absent).
  const safetensors_file& file_of(const std::string& name) const;
  const std::string& directory() const noexcept { return dir_; }

 private:
  std::string dir_;
  std::vector<safetensors_file> shards_;
  std::unordered_map<std::string, std::size_t> where_;  // tensor name -> index into shards_
};

/// Writes `tensors` (any device / layout; copied to contiguous CPU) as a safetensors file the
/// Python `safetensors` package reads: header keys sorted, header padded with spaces to a multiple of
/// 8 bytes, data ordered by dtype size (largest first) then name, as the reference writer does.
/// Supported dtypes: bool, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64,
/// complex64. Writes `path + ".tmp"` and renames it over `path`.
/// Throws runtime_error naming the file and tensor for an empty or duplicate name, a name equal to
/// "__metadata__", an undefined tensor or an unsupported dtype, and naming the file on I/O failure.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace consr_runtime
