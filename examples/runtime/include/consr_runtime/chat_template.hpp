// consr_runtime/chat_template.hpp — the chat templates of Qwen2.5-VL and LLaVA-OneVision (runtime
// facts §4), written out in C++ (no Jinja), and the processors' expansion of image placeholders.
//
// The output equals transformers' apply_chat_template(messages, tokenize=False, ...) with each model's
// official template (Qwen2.5-VL's hub chat_template; LLaVA-OV's from convert_llava_onevision_weights_to_hf.py):
//   Qwen2.5-VL: "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" first unless the first
//     message is a system message; each message "<|im_start|>{role}\n" + items in order (text verbatim,
//     image "<|vision_start|><|image_pad|><|vision_end|>", video with <|video_pad|>, optionally preceded
//     by "Picture N: " / "Video N: ") + "<|im_end|>\n".
//   LLaVA-OV: no default system message; each message "<|im_start|>{role}\n" + "<image>\n" per image,
//     then "<video>\n" per video, then the texts, + "<|im_end|>\n" (images first whatever the order).
//   Both: the generation prompt is "<|im_start|>assistant\n".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "consr_runtime/error.hpp"

namespace consr_runtime {

enum class chat_format { qwen2_5_vl, llava_onevision };

/// "qwen2_5_vl" or "llava_onevision" (config.json's model_type) -> format; throws runtime_error
/// naming argument 'name' otherwise.
chat_format parse_chat_format(const std::string& name);

enum class content_kind { text, image, video };

/// One item of a message's content: a text, or a placeholder for the next image / video.
struct content_item {
  content_kind kind = content_kind::text;
  std::string text;  // used when kind == text
  static content_item make_text(std::string t) { return {content_kind::text, std::move(t)}; }
  static content_item image() { return {content_kind::image, {}}; }
  static content_item video() { return {content_kind::video, {}}; }
};

struct chat_message {
  std::string role;  // "system", "user", "assistant" (rendered verbatim)
  std::vector<content_item> content;
};

struct chat_options {
  bool add_generation_prompt = true;  ///< end with "<|im_start|>assistant\n"
  bool add_vision_id = false;         ///< Qwen2.5-VL only: "Picture N: " before the N-th image
};

/// The prompt text of `messages` in `format`. Never throws for any input.
std::string render_chat(chat_format format, const std::vector<chat_message>& messages, const chat_options& options = {});

/// The placeholder the template emits per image: "<|image_pad|>" (Qwen2.5-VL) or "<image>" (LLaVA-OV).
const char* image_placeholder(chat_format format) noexcept;

/// The processors' expansion: the i-th occurrence of image_placeholder(format) in `prompt` is
/// replaced by tokens_per_image[i] copies of it (Qwen2.5-VL: t*h*w/4 from image_grid_thw; LLaVA-OV:
/// the packed feature count). Throws runtime_error naming argument 'tokens_per_image' when its size
/// differs from the number of placeholders or an entry is < 1.
std::string expand_image_placeholders(chat_format format, const std::string& prompt,
                                      const std::vector<int64_t>& tokens_per_image);

/// The same on token ids: the i-th occurrence of `image_token_id` in `ids` becomes
/// tokens_per_image[i] copies. Throws like expand_image_placeholders.
std::vector<int64_t> expand_image_tokens(const std::vector<int64_t>& ids, int64_t image_token_id,
                                         const std::vector<int64_t>& tokens_per_image);

}  // namespace consr_runtime
