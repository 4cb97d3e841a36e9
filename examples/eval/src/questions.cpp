// Questions files: the world's JSONL and POPE's (see consr_eval/questions.hpp).
#include "consr_eval/questions.hpp"

#include <filesystem>
#include <fstream>
#include <set>

#include "consr_eval/error.hpp"

namespace consr_eval {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& argument, const std::string& message) {
  throw error("consr_eval::load_questions: argument '" + argument + "': " + message);
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// An id field: a non-empty string or an integer, as text.
bool id_text(const json& v, std::string& out) {
  if (v.is_string() && !v.get<std::string>().empty()) {
    out = v.get<std::string>();
    return true;
  }
  if (v.is_number_integer()) {
    out = v.dump();
    return true;
  }
  return false;
}

}  // namespace

const char* to_string(question_format format) noexcept { return format == question_format::pope ? "pope" : "world"; }

std::string strip_image_placeholders(const std::string& prompt) {
  // Both chat formats' image / video placeholders (the pipeline's list): the chat template places
  // the one image itself, as LLaVA's and POPE's loaders strip "<image>" from their prompts.
  static const char* needles[] = {"<image>", "<video>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"};
  std::string text = prompt;
  for (const char* n : needles) {
    const std::string needle = n;
    for (std::size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos)) text.erase(pos, needle.size());
  }
  return trim(text);
}

question_set load_questions(const std::string& path, const question_load_options& options) {
  std::error_code ec;
  if (path.empty()) fail("path", "empty (expected a questions JSONL file)");
  if (!fs::exists(path, ec)) fail("path", "'" + path + "' does not exist");
  if (!fs::is_regular_file(path, ec)) fail("path", "'" + path + "' is not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("path", "cannot open '" + path + "'");

  question_set set;
  set.path = fs::absolute(path).lexically_normal().string();
  const fs::path file_dir = fs::path(set.path).parent_path();
  fs::path image_dir = file_dir;
  if (!options.image_dir.empty()) {
    if (!fs::is_directory(options.image_dir, ec)) fail("options.image_dir", "'" + options.image_dir + "' is not a directory");
    image_dir = fs::absolute(options.image_dir).lexically_normal();
  }

  std::set<std::string> seen;
  std::string line;
  std::size_t line_no = 0;
  bool format_known = false;
  while (std::getline(in, line)) {
    ++line_no;
    if (options.limit > 0 && set.questions.size() >= options.limit) break;
    if (trim(line).empty()) continue;
    const std::string where = "'" + set.path + "' line " + std::to_string(line_no);
    json r;
    try {
      r = json::parse(line);
    } catch (const std::exception& e) {
      fail("path", where + ": not valid JSON: " + e.what());
    }
    if (!r.is_object()) fail("path", where + ": not a JSON object");
    if (!format_known) {
      if (r.contains("question_id") && r.contains("text")) set.format = question_format::pope;
      else if (r.contains("id") && r.contains("prompt")) set.format = question_format::world;
      else
        fail("path", where + ": neither a world question {\"id\", \"image\", \"prompt\", ...} nor a POPE question "
                             "{\"question_id\", \"image\", \"text\", \"label\"}");
      format_known = true;
    }
    const bool pope = set.format == question_format::pope;
    const char* id_key = pope ? "question_id" : "id";
    const char* text_key = pope ? "text" : "prompt";
    question q;
    if (!r.contains(id_key) || !id_text(r[id_key], q.id))
      fail("path", where + ": missing '" + id_key + "' (a non-empty string or an integer; the file is " +
                       to_string(set.format) + " format, from its first question)");
    const std::string named = where + " (id '" + q.id + "')";
    if (!seen.insert(q.id).second) fail("path", named + ": repeats an earlier id");
    if (!r.contains(text_key) || !r[text_key].is_string()) fail("path", named + ": missing string field '" + text_key + "'");
    q.prompt = strip_image_placeholders(r[text_key].get<std::string>());
    if (q.prompt.empty()) fail("path", named + ": '" + text_key + "' is empty");
    if (!r.contains("image") || !r["image"].is_string() || r["image"].get<std::string>().empty())
      fail("path", named + ": missing string field 'image'");
    fs::path image = fs::u8path(r["image"].get<std::string>());
    if (image.is_relative()) image = image_dir / image;
    image = fs::absolute(image).lexically_normal();
    if (!fs::is_regular_file(image, ec)) fail("path", named + ": image '" + image.string() + "' does not exist or is not a file");
    q.image = image.string();
    if (pope) {
      q.type = "pope";
    } else {
      if (!r.contains("type") || !r["type"].is_string() || r["type"].get<std::string>().empty())
        fail("path", named + ": missing string field 'type'");
      q.type = r["type"].get<std::string>();
    }
    q.record = std::move(r);
    set.questions.push_back(std::move(q));
  }
  if (in.bad()) fail("path", "read error on '" + set.path + "'");
  if (set.questions.empty()) fail("path", "'" + set.path + "' holds no questions");

  if (set.format == question_format::world) {
    const fs::path p(set.path);
    const fs::path scenes = p.parent_path() / (p.stem().string() + "_scenes.jsonl");
    if (fs::is_regular_file(scenes, ec)) set.scenes_path = scenes.string();
  }
  return set;
}

}  // namespace consr_eval
