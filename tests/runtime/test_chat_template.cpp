// Chat templates against transformers' apply_chat_template(tokenize=False) with the official Jinja
// templates, and placeholder expansion against the HF processors' input_ids
// (tests/fixtures/tokenizer/chat_template_reference.json, made by tools/make_tokenizer_fixture.py).
#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/tokenizer.hpp"

using namespace consr_runtime;
using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

const std::string dir = std::string(CONSR_FIXTURES_DIR) + "/tokenizer";

json reference() {
  std::ifstream in(dir + "/chat_template_reference.json");
  REQUIRE(in.good());
  return json::parse(in);
}

std::vector<chat_message> messages_of(const json& j) {
  std::vector<chat_message> out;
  for (const auto& m : j) {
    chat_message msg;
    msg.role = m["role"].get<std::string>();
    if (m["content"].is_string()) {
      msg.content.push_back(content_item::make_text(m["content"].get<std::string>()));
    } else {
      for (const auto& c : m["content"]) {
        const std::string type = c["type"].get<std::string>();
        if (type == "text") msg.content.push_back(content_item::make_text(c["text"].get<std::string>()));
        else if (type == "image") msg.content.push_back(content_item::image());
        else if (type == "video") msg.content.push_back(content_item::video());
        else FAIL("unknown content type " << type);
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

TEST_CASE("chat templates: renderings equal HF apply_chat_template with the official templates") {
  const json ref = reference();
  const tokenizer tok = tokenizer::from_directory(dir);
  std::size_t qwen = 0, llava = 0;
  for (const auto& c : ref["render"]) {
    const chat_format format = parse_chat_format(c["format"].get<std::string>());
    (format == chat_format::qwen2_5_vl ? qwen : llava)++;
    chat_options options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    options.add_vision_id = c["add_vision_id"].get<bool>();
    INFO(c["format"].get<std::string>() << " / " << c["name"].get<std::string>() << " gen=" << options.add_generation_prompt
                                        << " vision_id=" << options.add_vision_id);
    const std::string text = render_chat(format, messages_of(c["messages"]), options);
    CHECK(json(text).dump() == json(c["text"].get<std::string>()).dump());
    CHECK(tok.encode(text) == c["ids"].get<std::vector<int64_t>>());
  }
  CHECK(qwen >= 40);
  CHECK(llava >= 20);
}

TEST_CASE("chat templates: image placeholder expansion equals the HF processors' input_ids") {
  const json ref = reference();
  const tokenizer tok = tokenizer::from_directory(dir);
  REQUIRE(ref["expand"].size() == 4);
  for (const auto& c : ref["expand"]) {
    const chat_format format = parse_chat_format(c["format"].get<std::string>());
    INFO(c["format"].get<std::string>() << " / " << c["name"].get<std::string>());
    const auto counts = c["tokens_per_image"].get<std::vector<int64_t>>();
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    const std::string prompt = c["prompt"].get<std::string>();
    const std::string expanded = expand_image_placeholders(format, prompt, counts);
    CHECK(expanded == c["expanded_text"].get<std::string>());
    CHECK(tok.encode(expanded) == ids);
    CHECK(expand_image_tokens(tok.encode(prompt), tok.token_id(image_placeholder(format)), counts) == ids);
    CHECK(tok.decode(ids) == expanded);
  }
}

TEST_CASE("chat templates: order, numbering and defaults by hand") {
  const std::vector<chat_message> msgs = {
      {"user", {content_item::make_text("A"), content_item::image(), content_item::make_text("B"), content_item::image()}},
      {"assistant", {content_item::make_text("ok")}},
      {"user", {content_item::image()}}};
  chat_options o;
  o.add_vision_id = true;
  CHECK(render_chat(chat_format::qwen2_5_vl, msgs, o) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAPicture 1: "
        "<|vision_start|><|image_pad|><|vision_end|>BPicture 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nPicture 3: <|vision_start|><|image_pad|><|vision_end|>"
        "<|im_end|>\n<|im_start|>assistant\n");
  CHECK(render_chat(chat_format::llava_onevision, msgs, o) ==
        "<|im_start|>user\n<image>\n<image>\nAB<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        "<|im_start|>user\n<image>\n<|im_end|>\n<|im_start|>assistant\n");
  CHECK(render_chat(chat_format::qwen2_5_vl, {}, {}) == "<|im_start|>assistant\n");
  // Only the first message decides about the default system prompt.
  const std::vector<chat_message> late_system = {{"user", {content_item::make_text("u")}},
                                                 {"system", {content_item::make_text("s")}}};
  CHECK(render_chat(chat_format::qwen2_5_vl, late_system, {false, false}) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
        "<|im_start|>system\ns<|im_end|>\n");
}

TEST_CASE("chat templates: bad expansion counts and format names are errors naming the argument") {
  CHECK_THROWS_WITH(expand_image_placeholders(chat_format::llava_onevision, "<image>\n<image>\n", {3}),
                    Contains("'tokens_per_image'") && Contains("1 counts for 2"));
  CHECK_THROWS_WITH(expand_image_placeholders(chat_format::qwen2_5_vl, "<|image_pad|>", {0}),
                    Contains("'tokens_per_image'") && Contains("entry 0"));
  CHECK_THROWS_WITH(expand_image_tokens({1, 7, 2}, 7, {}), Contains("0 counts for 1"));
  CHECK_THROWS_WITH(expand_image_tokens({7}, 7, {-2}), Contains("entry 0 is -2"));
  CHECK(expand_image_tokens({1, 7, 2, 7}, 7, {2, 1}) == std::vector<int64_t>({1, 7, 7, 2, 7}));
  CHECK(expand_image_placeholders(chat_format::qwen2_5_vl, "no images", {}) == "no images");
  CHECK_THROWS_WITH(parse_chat_format("llava"), Contains("'name'") && Contains("'llava'"));
}
