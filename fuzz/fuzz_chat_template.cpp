// libFuzzer harness: the chat templates (render_chat, both formats, all options) on arbitrary
// messages, and the processors' placeholder expansion on the rendered prompt and on token ids.
// render_chat is documented never to throw; the expansions throw only runtime_error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <fuzzer/FuzzedDataProvider.h>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const auto format = in.ConsumeBool() ? consr_runtime::chat_format::qwen2_5_vl : consr_runtime::chat_format::llava_onevision;
  consr_runtime::chat_options options;
  options.add_generation_prompt = in.ConsumeBool();
  options.add_vision_id = in.ConsumeBool();
  std::vector<consr_runtime::chat_message> messages(in.ConsumeIntegralInRange<std::size_t>(0, 6));
  for (auto& m : messages) {
    m.role = in.ConsumeRandomLengthString(16);
    const auto items = in.ConsumeIntegralInRange<std::size_t>(0, 5);
    for (std::size_t i = 0; i < items; ++i) {
      switch (in.ConsumeIntegralInRange<int>(0, 2)) {
        case 0: m.content.push_back(consr_runtime::content_item::image()); break;
        case 1: m.content.push_back(consr_runtime::content_item::video()); break;
        default: m.content.push_back(consr_runtime::content_item::make_text(in.ConsumeRandomLengthString(64))); break;
      }
    }
  }
  const std::string prompt = consr_runtime::render_chat(format, messages, options);  // must not throw
  std::vector<std::int64_t> counts(in.ConsumeIntegralInRange<std::size_t>(0, 8));
  for (auto& c : counts) c = in.ConsumeIntegralInRange<std::int64_t>(-1, 64);
  try {
    const auto expanded = consr_runtime::expand_image_placeholders(format, prompt, counts);
    if (expanded.size() < prompt.size()) std::abort();  // every placeholder is kept at least once
  } catch (const consr_runtime::runtime_error&) {
  }
  std::vector<std::int64_t> ids;
  while (in.remaining_bytes() > 0 && ids.size() < 64) ids.push_back(in.ConsumeIntegralInRange<std::int64_t>(0, 4));
  try {
    (void)consr_runtime::expand_image_tokens(ids, 3, counts);
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
