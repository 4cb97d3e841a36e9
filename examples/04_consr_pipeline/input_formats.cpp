// The input formats besides {id, image, prompt}: LLaVA conversations, sharegpt messages + images, and
// Hugging Face dataset exports with embedded base64 images (input_formats.hpp, docs/pipeline.md "Input").
#include "input_formats.hpp"

#include <unistd.h>

#include <array>
#include <fstream>
#include <system_error>
#include <vector>

namespace consr_pipeline {

namespace fs = std::filesystem;

namespace {

const std::array<const char*, 4> format_names{"consr", "llava", "sharegpt", "hf"};

bool has(const json& r, const char* key) { return r.contains(key) && !r[key].is_null(); }

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// The record's id: `keys` in order, a string or an integer.
std::optional<std::string> read_id(const json& r, std::initializer_list<const char*> keys, const std::string& where) {
  for (const char* key : keys) {
    if (!has(r, key)) continue;
    const json& v = r[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_integer()) return std::to_string(v.get<long long>());
    fail(where + ": field '" + key + "' (the id) must be a string or an integer, got " + v.dump());
  }
  return std::nullopt;
}

// One image value: a path string, or {"bytes": <base64> | null, "path": ...} as the datasets library
// exports its Image feature (the bytes win; without them the path is used).
void read_image_value(const json& v, const std::string& field, const std::string& where, input_record& out) {
  out.image_field = field;
  if (v.is_string()) {
    if (v.get<std::string>().empty()) fail(where + ": field '" + field + "' is an empty path");
    out.image_path = v.get<std::string>();
    return;
  }
  if (!v.is_object()) fail(where + ": field '" + field + "' must be an image path or {\"bytes\", \"path\"}, got " + v.dump());
  if (has(v, "bytes")) {
    if (!v["bytes"].is_string())
      fail(where + ": field '" + field + ".bytes' must be a base64 string, got a " + v["bytes"].type_name());
    out.image_field = field + ".bytes";
    out.image_bytes = decode_base64(v["bytes"].get<std::string>(), where + ": field '" + field + ".bytes'");
    if (out.image_bytes.empty()) fail(where + ": field '" + field + ".bytes' is empty");
    return;
  }
  if (has(v, "path") && v["path"].is_string() && !v["path"].get<std::string>().empty()) {
    out.image_field = field + ".path";
    out.image_path = v["path"].get<std::string>();
    return;
  }
  fail(where + ": field '" + field + "' has neither 'bytes' nor a 'path'");
}

// `image` (a value) or a list of exactly one (`images` in sharegpt / HF rows).
void read_single_image(const json& r, const char* key, const std::string& where, input_record& out) {
  if (!has(r, key)) fail(where + ": missing field '" + key + "' (the pipeline needs one image per record)");
  const json& v = r[key];
  if (!v.is_array()) return read_image_value(v, key, where, out);
  if (v.size() != 1)
    fail(where + ": field '" + key + "' holds " + std::to_string(v.size()) +
         " images; the pipeline takes exactly one image per record (split multi-image records, or drop text-only ones)");
  read_image_value(v[0], std::string(key) + "[0]", where, out);
}

struct turn {
  std::string role;  // user | assistant | system
  std::string text;
  std::size_t image_parts = 0;  // {"type": "image"} parts of a list content
};

// A conversation turn: {from, value} (LLaVA / LLaMA-Factory sharegpt) or {role, content} (OpenAI /
// TRL), the content a string or a list of {type: text, text} / {type: image} parts.
turn read_turn(const json& t, const std::string& field, const std::string& where) {
  if (!t.is_object()) fail(where + ": field '" + field + "' must be an object {from, value} or {role, content}");
  const char* role_key = has(t, "from") ? "from" : "role";
  const char* text_key = has(t, "from") ? "value" : "content";
  if (!has(t, role_key) || !t[role_key].is_string())
    fail(where + ": field '" + field + "' has no string 'from' or 'role'");
  turn out;
  const std::string role = t[role_key].get<std::string>();
  if (role == "human" || role == "user") out.role = "user";
  else if (role == "gpt" || role == "assistant") out.role = "assistant";
  else if (role == "system") out.role = "system";
  else
    fail(where + ": field '" + field + "." + role_key + "' is '" + role + "' (expected human/user, gpt/assistant or system)");
  if (!has(t, text_key)) fail(where + ": field '" + field + "' has no '" + text_key + "'");
  const json& c = t[text_key];
  if (c.is_string()) {
    out.text = c.get<std::string>();
  } else if (c.is_array()) {
    for (std::size_t k = 0; k < c.size(); ++k) {
      const std::string part = field + "." + text_key + "[" + std::to_string(k) + "]";
      const bool typed = c[k].is_object() && c[k].contains("type") && c[k]["type"].is_string();
      const std::string type = typed ? c[k]["type"].get<std::string>() : "";
      if (type == "image") {
        ++out.image_parts;
      } else if (type == "text" && c[k].contains("text") && c[k]["text"].is_string()) {
        out.text += c[k]["text"].get<std::string>();
      } else {
        fail(where + ": field '" + part + "' must be {\"type\": \"text\", \"text\": ...} or {\"type\": \"image\"}");
      }
    }
  } else {
    fail(where + ": field '" + field + "." + text_key + "' must be a string or a list of parts, got " + c.dump());
  }
  return out;
}

// The one user question of a conversation: exactly one user turn (assistant turns are ignored: the
// pipeline generates its own responses), no system turn, at most one image placeholder.
std::string user_question(const json& r, const char* key, const std::string& where) {
  if (!r[key].is_array()) fail(where + ": field '" + key + "' must be a list of turns");
  std::string question;
  std::size_t users = 0;
  for (std::size_t k = 0; k < r[key].size(); ++k) {
    const std::string field = std::string(key) + "[" + std::to_string(k) + "]";
    const turn t = read_turn(r[key][k], field, where);
    if (t.role == "system")
      fail(where + ": field '" + field +
           "' is a system turn, which the pipeline does not support (it prompts with the model's default system prompt)");
    if (t.role != "user") continue;
    if (++users > 1)
      fail(where + ": field '" + field +
           "' is a second human/user turn; the pipeline takes one question per record (split multi-turn conversations)");
    const std::size_t images = count_of(t.text, "<image>") + t.image_parts;
    if (images > 1)
      fail(where + ": field '" + field + "' holds " + std::to_string(images) +
           " image placeholders; the pipeline takes exactly one image per record");
    question = t.text;
  }
  if (users == 0) fail(where + ": field '" + key + "' has no human/user turn (the question)");
  return question;
}

std::string string_field(const json& r, std::initializer_list<const char*> keys, const std::string& where) {
  for (const char* key : keys) {
    if (!has(r, key)) continue;
    if (!r[key].is_string()) fail(where + ": field '" + key + "' must be a string, got " + r[key].dump());
    return r[key].get<std::string>();
  }
  std::string names;
  for (const char* key : keys) names += (names.empty() ? "'" : " or '") + std::string(key) + "'";
  fail(where + ": missing string field " + names);
}

}  // namespace

const char* format_name(input_format f) noexcept { return format_names[static_cast<std::size_t>(f)]; }

std::optional<input_format> parse_input_format(const std::string& name) {
  if (name == "auto") return std::nullopt;
  for (std::size_t i = 0; i < format_names.size(); ++i)
    if (name == format_names[i]) return static_cast<input_format>(i);
  fail("argument '--input-format': '" + name + "' is not one of auto, consr, llava, sharegpt, hf");
}

input_format detect_input_format(const json& r, const std::string& where) {
  if (!r.is_object()) fail(where + " is not an object, so the input format cannot be told (see --input-format)");
  if (has(r, "messages")) return input_format::sharegpt;
  if (has(r, "conversations")) return has(r, "images") ? input_format::sharegpt : input_format::llava;
  const json* image = nullptr;
  if (has(r, "image")) image = &r["image"];
  else if (has(r, "images") && r["images"].is_array() && !r["images"].empty()) image = &r["images"][0];
  if (image && image->is_object()) return input_format::hf;
  if (has(r, "prompt") && has(r, "image")) return input_format::consr;
  if (has(r, "question") && image) return input_format::hf;
  fail(where + ": cannot tell the input format from its fields (" + [&] {
    std::string keys;
    for (auto it = r.begin(); it != r.end(); ++it) keys += (keys.empty() ? "'" : ", '") + it.key() + "'";
    return keys.empty() ? std::string("none") : keys;
  }() + "); expected {id, image, prompt} (consr), {image, conversations} (llava), {messages, images} (sharegpt) or "
        "{image: {bytes, path}, question} (hf); or pass --input-format");
}

input_record read_record(const json& r, input_format format, const std::string& where) {
  if (!r.is_object()) fail(where + " is not an object (input format " + std::string(format_name(format)) + ")");
  input_record out;
  switch (format) {
    case input_format::consr:
      out.id = read_id(r, {"id"}, where);
      out.prompt = string_field(r, {"prompt"}, where);
      if (!has(r, "image") || !r["image"].is_string() || r["image"].get<std::string>().empty())
        fail(where + ": missing string field 'image'");
      read_image_value(r["image"], "image", where, out);
      break;
    case input_format::llava:
      out.id = read_id(r, {"id"}, where);
      if (!has(r, "conversations")) fail(where + ": missing field 'conversations' (input format llava)");
      read_single_image(r, "image", where, out);
      out.prompt = user_question(r, "conversations", where);
      break;
    case input_format::sharegpt: {
      out.id = read_id(r, {"id"}, where);
      const char* key = has(r, "messages") ? "messages" : "conversations";
      if (!has(r, key)) fail(where + ": missing field 'messages' (input format sharegpt)");
      read_single_image(r, "images", where, out);
      out.prompt = user_question(r, key, where);
      break;
    }
    case input_format::hf:
      out.id = read_id(r, {"id", "idx"}, where);
      read_single_image(r, has(r, "image") ? "image" : "images", where, out);
      out.prompt = string_field(r, {"question", "prompt"}, where);
      break;
  }
  return out;
}

std::string decode_base64(const std::string& text, const std::string& what) {
  auto value = [](unsigned char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  std::uint32_t acc = 0;
  int bits = 0;
  std::size_t symbols = 0, padding = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    const int v = value(c);
    if (v < 0 || padding > 0)
      fail(what + " is not valid base64: " +
           (v < 0 ? "character '" + std::string(1, static_cast<char>(c)) + "'" : std::string("data after '=' padding")) +
           " at offset " + std::to_string(i));
    ++symbols;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  const std::size_t total = symbols + padding;
  if (symbols % 4 == 1 || padding > 2 || (padding > 0 && total % 4 != 0))
    fail(what + " is not valid base64: " + std::to_string(symbols) + " symbols and " + std::to_string(padding) +
         " '=' do not make whole groups of 4");
  return out;
}

fs::path materialize_image(const std::string& bytes, const fs::path& out_dir, const std::string& what) {
  const bool png = bytes.size() >= 8 && bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
  const bool jpeg = bytes.size() >= 3 && bytes.compare(0, 3, "\xFF\xD8\xFF") == 0;
  if (!png && !jpeg) fail(what + ": the embedded image is neither PNG nor JPEG");
  const fs::path dir = fs::absolute(out_dir).lexically_normal() / "images";
  const fs::path path = dir / (fnv1a_hex(bytes) + (png ? ".png" : ".jpg"));
  std::error_code ec;
  if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) == bytes.size() && read_file(path, "image") == bytes) return path;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec)) fail(what + ": cannot create '" + dir.string() + "' for the embedded image (argument '--out')");
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) fail(what + ": cannot write '" + tmp.string() + "'");
  }
  fs::rename(tmp, path, ec);
  if (ec) fail(what + ": cannot rename '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
  return path;
}

}  // namespace consr_pipeline
