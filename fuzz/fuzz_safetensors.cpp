// libFuzzer harness: a safetensors file (consr_runtime::safetensors_file: header length, JSON header,
// dtypes, shapes, offsets, overlap, __metadata__), then reading every tensor it accepted.
#include <cstddef>
#include <cstdint>

#include "consr_runtime/error.hpp"
#include "consr_runtime/safetensors.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = consr_fuzz::write_scratch("model.safetensors", data, size);
  try {
    consr_runtime::safetensors_file f(path);
    for (const auto& e : f.entries()) {
      (void)f.raw_data(e.name);
      try {
        const auto t = f.load(e.name);
        (void)t.numel();
      } catch (const consr_runtime::runtime_error&) {  // dtypes LibTorch cannot hold, bad BOOL bytes
      }
    }
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
