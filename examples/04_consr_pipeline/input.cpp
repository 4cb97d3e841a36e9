// The pipeline's input: a JSON array, {"items": [...]} or JSONL of records — {id, image, prompt}, or
// the LLaVA / sharegpt / Hugging Face formats of input_formats.hpp — (or the embedded default), checked
// item by item (see docs/pipeline.md "Input").
#include <set>
#include <sstream>
#include <system_error>

#include "consr_runtime/image.hpp"
#include "context.hpp"
#include "input_formats.hpp"

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

// Where relative image paths point, where embedded images go, and which format to read.
struct input_settings {
  std::string source;
  fs::path image_dir;
  fs::path out_dir;
  std::optional<input_format> format;  // nullopt: detect from the first record
};

std::vector<item> parse_items(const std::string& text, const input_settings& in) {
  const std::string& source = in.source;
  const std::vector<json> records = parse_records(text, source);
  const input_format format = in.format ? *in.format : detect_input_format(records[0], "input '" + source + "': item 0");
  std::vector<item> items;
  std::vector<std::string> embedded(records.size());  // decoded images, written once everything has parsed
  std::set<std::string> ids;
  for (std::size_t i = 0; i < records.size(); ++i) {
    std::string where = "input '" + source + "': item " + std::to_string(i);
    if (!records[i].is_object()) fail(where + " is not an object (input format " + format_name(format) + ")");
    for (const char* key : {"id", "idx"})  // name the item by its id in the format's errors when it has one
      if (records[i].contains(key) && (records[i][key].is_string() || records[i][key].is_number_integer())) {
        where += " (id '" + (records[i][key].is_string() ? records[i][key].get<std::string>() : records[i][key].dump()) + "')";
        break;
      }
    input_record r = read_record(records[i], format, where);
    item it;
    it.id = r.id ? *r.id : "item-" + std::to_string(i);
    if (it.id.empty()) fail(where + ": 'id' is empty");
    const std::string named = "input '" + source + "': item " + std::to_string(i) + " (id '" + it.id + "')";
    if (!ids.insert(it.id).second) fail(named + ": duplicate id");
    it.prompt = trim(remove_all(r.prompt, placeholder_strings()));
    if (it.prompt.empty())
      fail(named + (format == input_format::consr ? std::string(": 'prompt' is empty")
                                                  : ": the question is empty (without its image placeholder)"));
    if (!r.image_bytes.empty()) {
      try {
        const auto* data = reinterpret_cast<const std::uint8_t*>(r.image_bytes.data());
        (void)consr_runtime::decode_image(data, r.image_bytes.size(), "field '" + r.image_field + "'");
      } catch (const std::exception& e) {
        fail(named + ": field '" + r.image_field + "' does not decode as a PNG or JPEG image: " + e.what());
      }
      it.image_hash = fnv1a_hex(r.image_bytes);  // the hash of the same file on disk
      embedded[i] = std::move(r.image_bytes);
      items.push_back(std::move(it));
      continue;
    }
    fs::path image = r.image_path;
    if (image.is_relative()) image = in.image_dir / image;
    image = fs::absolute(image).lexically_normal();
    std::error_code ec;
    if (!fs::is_regular_file(image, ec))
      fail(named + ": field '" + r.image_field + "': image '" + image.string() + "' does not exist or is not a file");
    it.image = image.string();
    it.image_hash = fnv1a_hex(read_file(image, "image"));
    items.push_back(std::move(it));
  }
  for (std::size_t i = 0; i < items.size(); ++i)
    if (!embedded[i].empty())
      items[i].image = materialize_image(embedded[i], in.out_dir,
                                         "input '" + source + "': item " + std::to_string(i) + " (id '" + items[i].id + "')")
                           .string();
  return items;
}

}  // namespace

std::vector<item> load_items(const options& o) {
  input_settings in;
  in.format = parse_input_format(o.input_format);
  in.out_dir = fs::absolute(o.output_dir).lexically_normal();
  std::error_code ec;
  if (!o.image_folder.empty()) {
    in.image_dir = fs::absolute(o.image_folder).lexically_normal();
    if (!fs::is_directory(in.image_dir, ec)) fail("argument '--image-folder': '" + o.image_folder + "' is not a directory");
  }
  if (o.input.empty()) {
    in.source = "<embedded default input>";
    if (in.image_dir.empty()) in.image_dir = default_image_dir();
    return parse_items(default_input_json(), in);
  }
  const fs::path path = fs::absolute(o.input).lexically_normal();
  if (!fs::is_regular_file(path, ec)) fail("argument '--input': '" + o.input + "' does not exist or is not a file");
  in.source = path.string();
  if (in.image_dir.empty()) in.image_dir = path.parent_path();
  return parse_items(read_file(path, "input"), in);
}

}  // namespace consr_pipeline
