// libFuzzer harness: config.json (parse_model_config), the image-processor settings of both families
// (parse_qwen2_vl_processor_config, parse_llava_onevision_processor_config, and the nested
// processor_config.json layout via load_image_processor_settings), and the processors built from
// accepted settings (their validation, smart_resize and the anyres tile / token counts).
#include <cstddef>
#include <cstdint>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/processors.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text = consr_fuzz::as_string(data, size);
  try {
    const auto c = consr_runtime::parse_model_config(text, "config.json");
    (void)c.text().hidden_size;
    (void)c.image_token_id();
  } catch (const consr_runtime::runtime_error&) {
  }
  std::string settings = text;
  try {
    const auto s = consr_runtime::load_image_processor_settings(consr_fuzz::write_scratch("processor_config.json", data, size));
    settings = s.json_text;
  } catch (const consr_runtime::runtime_error&) {
  }
  try {
    const consr_runtime::qwen2_vl_image_processor p(consr_runtime::parse_qwen2_vl_processor_config(settings));
    for (std::int64_t side : {10, 28, 1000, 4000}) {
      try {
        (void)p.resized_size(side, side * 3 / 2 + 1);
      } catch (const consr_runtime::runtime_error&) {
      }
    }
  } catch (const consr_runtime::runtime_error&) {
  }
  try {
    const consr_runtime::llava_onevision_image_processor p(consr_runtime::parse_llava_onevision_processor_config(settings));
    for (std::int64_t side : {1, 384, 1000, 5000}) {
      try {
        (void)p.num_tiles(side, side * 2 + 3);
        (void)consr_runtime::llava_onevision_num_image_tokens(side, side * 2 + 3, p.config());
      } catch (const consr_runtime::runtime_error&) {
      }
    }
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
