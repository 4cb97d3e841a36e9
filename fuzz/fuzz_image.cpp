// libFuzzer harness: PNG / JPEG decoding (consr_runtime::decode_image: libpng, libjpeg-turbo and the
// PIL conversion rules). Any input must either decode to a well-formed [H, W, 3] uint8 image or throw
// consr_runtime::runtime_error; anything else (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    // A small pixel limit keeps every run within libFuzzer's memory and time limits; the limit check
    // itself is part of what is fuzzed.
    const auto img = consr_runtime::decode_image(data, size, "fuzz", std::int64_t{1} << 20);
    if (img.pixels.dim() != 3 || img.pixels.size(2) != 3 || img.height() <= 0 || img.width() <= 0 ||
        img.height() * img.width() > (std::int64_t{1} << 20) || !img.pixels.is_contiguous())
      std::abort();
    // Touch every byte (uninitialised output would show under MSan; here it checks the extent).
    const std::uint8_t* p = img.pixels.data_ptr<std::uint8_t>();
    unsigned sum = 0;
    for (std::int64_t i = 0; i < img.pixels.numel(); ++i) sum += p[i];
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
