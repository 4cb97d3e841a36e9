// libFuzzer harness: model.safetensors.index.json (consr_runtime::checkpoint) next to the two real
// shards of the tiny sharded Qwen2.5-VL fixture, so that valid indexes reach the shard checks.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/safetensors.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string fixture = consr_fuzz::fixtures_dir() + "/models/qwen2_5_vl_tiny_sharded/";
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const std::string link = consr_fuzz::scratch_dir() + "/" + shard;
    if (::symlink((fixture + shard).c_str(), link.c_str()) != 0) std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  consr_fuzz::write_scratch("model.safetensors.index.json", data, size);
  try {
    consr_runtime::checkpoint c(consr_fuzz::scratch_dir());
    (void)c.contains("lm_head.weight");
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
