// Qwen2.5-VL and LLaVA-OneVision chat templates, and image placeholder expansion.
#include "consr_runtime/chat_template.hpp"

namespace consr_runtime {
namespace {

void check_counts(const char* fn, std::size_t placeholders, const std::vector<int64_t>& tokens_per_image) {
  if (placeholders != tokens_per_image.size())
    throw runtime_error(std::string("consr_runtime::") + fn + ": argument 'tokens_per_image': " +
                        std::to_string(tokens_per_image.size()) + " counts for " + std::to_string(placeholders) +
                        " image placeholders");
  for (std::size_t i = 0; i < tokens_per_image.size(); ++i)
    if (tokens_per_image[i] < 1)
      throw runtime_error(std::string("consr_runtime::") + fn + ": argument 'tokens_per_image': entry " +
                          std::to_string(i) + " is " + std::to_string(tokens_per_image[i]) + " (must be >= 1)");
}

}  // namespace

chat_format parse_chat_format(const std::string& name) {
  if (name == "qwen2_5_vl") return chat_format::qwen2_5_vl;
  if (name == "llava_onevision") return chat_format::llava_onevision;
  throw runtime_error("consr_runtime::parse_chat_format: argument 'name': '" + name +
                      "' is neither 'qwen2_5_vl' nor 'llava_onevision'");
}

const char* image_placeholder(chat_format format) noexcept {
  return format == chat_format::qwen2_5_vl ? "<|image_pad|>" : "<image>";
}

std::string render_chat(chat_format format, const std::vector<chat_message>& messages, const chat_options& options) {
  std::string out;
  if (format == chat_format::qwen2_5_vl) {
    int images = 0, videos = 0;  // numbered across the whole conversation, as the template's namespace
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const chat_message& m = messages[i];
      if (i == 0 && m.role != "system") out += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
      out += "<|im_start|>" + m.role + "\n";
      for (const content_item& c : m.content) {
        switch (c.kind) {
          case content_kind::image:
            ++images;
            if (options.add_vision_id) out += "Picture " + std::to_string(images) + ": ";
            out += "<|vision_start|><|image_pad|><|vision_end|>";
            break;
          case content_kind::video:
            ++videos;
            if (options.add_vision_id) out += "Video " + std::to_string(videos) + ": ";
            out += "<|vision_start|><|video_pad|><|vision_end|>";
            break;
          case content_kind::text: out += c.text; break;
        }
      }
      out += "<|im_end|>\n";
    }
  } else {
    for (const chat_message& m : messages) {
      out += "<|im_start|>" + m.role + "\n";
      // The template renders all images, then all videos, then all texts of a message.
      for (const content_item& c : m.content)
        if (c.kind == content_kind::image) out += "<image>\n";
      for (const content_item& c : m.content)
        if (c.kind == content_kind::video) out += "<video>\n";
      for (const content_item& c : m.content)
        if (c.kind == content_kind::text) out += c.text;
      out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string expand_image_placeholders(chat_format format, const std::string& prompt,
                                      const std::vector<int64_t>& tokens_per_image) {
  const std::string ph = image_placeholder(format);
  std::vector<std::size_t> at;
  for (std::size_t p = prompt.find(ph); p != std::string::npos; p = prompt.find(ph, p + ph.size())) at.push_back(p);
  check_counts("expand_image_placeholders", at.size(), tokens_per_image);
  std::string out;
  std::size_t last = 0;
  for (std::size_t i = 0; i < at.size(); ++i) {
    out.append(prompt, last, at[i] - last);
    for (int64_t k = 0; k < tokens_per_image[i]; ++k) out += ph;
    last = at[i] + ph.size();
  }
  out.append(prompt, last, std::string::npos);
  return out;
}

std::vector<int64_t> expand_image_tokens(const std::vector<int64_t>& ids, int64_t image_token_id,
                                         const std::vector<int64_t>& tokens_per_image) {
  std::size_t n = 0;
  for (int64_t id : ids) n += id == image_token_id;
  check_counts("expand_image_tokens", n, tokens_per_image);
  std::vector<int64_t> out;
  std::size_t image = 0;
  for (int64_t id : ids) {
    if (id == image_token_id) {
      out.insert(out.end(), static_cast<std::size_t>(tokens_per_image[image++]), image_token_id);
    } else {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace consr_runtime
