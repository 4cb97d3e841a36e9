// The pipeline's input: a JSON array, {"items": [...]} or JSONL of {id, image, prompt} (or the
// embedded default), checked item by item (see docs/pipeline.md "Input").
#include <set>
#include <sstream>
#include <system_error>

#include "context.hpp"

namespace consr_pipeline {

namespace fs = std::filesystem;

namespace {

// Image / video placeholders of both chat formats: a prompt may hold none of them (the pipeline puts
// the one image placeholder in itself), as LLaVA's DPO loader strips "<image>" from its prompts.
const std::vector<std::string>& placeholder_strings() {
  static const std::vector<std::string> s{"<image>", "<video>", "<|image_pad|>", "<|video_pad|>",
                                          "<|vision_start|>", "<|vision_end|>"};
  return s;
}

// The records of a JSON array, {"items": [...]}, a single object or JSONL.
std::vector<json> parse_records(const std::string& text, const std::string& source) {
  std::vector<json> records;
  const std::string t = trim(text);
  if (t.empty()) fail("input '" + source + "': empty file (expected a JSON array or JSONL of {id, image, prompt})");
  if (t[0] != '[' && t[0] != '{') fail("input '" + source + "': not JSON (expected a JSON array or JSONL of {id, image, prompt})");
  json doc;
  bool parsed = true;
  std::string why;
  try {
    doc = json::parse(t);
  } catch (const json::exception& e) {
    parsed = false;
    why = e.what();
  }
  if (parsed && doc.is_array()) {
    for (auto& r : doc) records.push_back(r);
  } else if (parsed && doc.is_object() && doc.contains("items") && doc["items"].is_array()) {
    for (auto& r : doc["items"]) records.push_back(r);
  } else if (parsed && doc.is_object()) {
    records.push_back(doc);  // JSONL with a single line
  } else if (t[0] == '[') {
    fail("input '" + source + "': not valid JSON: " + why);
  } else {
    parsed = false;
  }
  if (!parsed) {
    // JSONL: one object per non-empty line.
    records.clear();
    std::istringstream lines(text);
    std::string line;
    for (std::size_t n = 1; std::getline(lines, line); ++n) {
      if (trim(line).empty()) continue;
      try {
        records.push_back(json::parse(line));
      } catch (const json::exception& e) {
        fail("input '" + source + "': line " + std::to_string(n) + " is not valid JSON: " + e.what());
      }
    }
  }
  if (records.empty()) fail("input '" + source + "': the item list is empty");
  return records;
}

std::vector<item> parse_items(const std::string& text, const std::string& source, const fs::path& base_dir) {
  const std::vector<json> records = parse_records(text, source);
  std::vector<item> items;
  std::set<std::string> ids;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const json& r = records[i];
    const std::string where = "input '" + source + "': item " + std::to_string(i);
    if (!r.is_object()) fail(where + " is not an object {id, image, prompt}");
    item it;
    if (!r.contains("id") || r["id"].is_null()) {
      it.id = "item-" + std::to_string(i);
    } else if (r["id"].is_string()) {
      it.id = r["id"].get<std::string>();
    } else if (r["id"].is_number_integer()) {
      it.id = std::to_string(r["id"].get<long long>());
    } else {
      fail(where + ": 'id' must be a string or an integer");
    }
    if (it.id.empty()) fail(where + ": 'id' is empty");
    const std::string named = where + " (id '" + it.id + "')";
    if (!ids.insert(it.id).second) fail(named + ": duplicate id");
    if (!r.contains("prompt") || !r["prompt"].is_string()) fail(named + ": missing string field 'prompt'");
    it.prompt = trim(remove_all(r["prompt"].get<std::string>(), placeholder_strings()));
    if (it.prompt.empty()) fail(named + ": 'prompt' is empty");
    if (!r.contains("image") || !r["image"].is_string() || r["image"].get<std::string>().empty())
      fail(named + ": missing string field 'image'");
    fs::path image = r["image"].get<std::string>();
    if (image.is_relative()) image = base_dir / image;
    image = fs::absolute(image).lexically_normal();
    std::error_code ec;
    if (!fs::is_regular_file(image, ec)) fail(named + ": image '" + image.string() + "' does not exist or is not a file");
    it.image = image.string();
    it.image_hash = fnv1a_hex(read_file(image, "image"));
    items.push_back(std::move(it));
  }
  return items;
}

}  // namespace

std::vector<item> load_items(const options& o) {
  if (o.input.empty()) return parse_items(default_input_json(), "<embedded default input>", default_image_dir());
  const fs::path path = fs::absolute(o.input).lexically_normal();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail("argument '--input': '" + o.input + "' does not exist or is not a file");
  return parse_items(read_file(path, "input"), path.string(), path.parent_path());
}

}  // namespace consr_pipeline
