// The ConSR pipeline's stages (see pipeline.hpp and docs/pipeline.md).
#include "pipeline.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <consr/adapters/torch.hpp>
#include <consr/pairs.hpp>
#include <consr/reward.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/lora.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/tokenizer.hpp"

namespace consr_pipeline {
namespace {

namespace fs = std::filesystem;
namespace cr = consr_runtime;
namespace lt = consr::libtorch;
using json = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

constexpr int artefact_format_version = 1;

[[noreturn]] void fail(const std::string& message) { throw pipeline_error("consr_pipeline: " + message); }

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string fixed(double x, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << x;
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// Files: hashing, atomic writes, JSON
// ------------------------------------------------------------------------------------------------

// FNV-1a 64 of a byte string, as 16 hex digits. Fingerprints detect changed inputs; they are not a
// security measure.
std::string fnv1a_hex(const std::string& bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string read_file(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + what + " '" + path.string() + "'");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail("error reading " + what + " '" + path.string() + "'");
  return os.str();
}

// Writes `content` to `path` through a temporary file in the same directory and a rename, so that a
// reader (or a resumed run) never sees a half-written artefact.
void write_file_atomic(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write '" + tmp.string() + "'");
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) fail("error writing '" + tmp.string() + "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("cannot rename '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
}

std::string dump_scalar(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// JSON with two-space indentation, except that arrays of scalars (token ids, log-probs) stay on one
// line: readable, and a fraction of the size of one number per line.
void pretty(const json& j, std::string& out, int indent) {
  const std::string pad(static_cast<std::size_t>(indent) * 2, ' ');
  const std::string inner(static_cast<std::size_t>(indent + 1) * 2, ' ');
  if (j.is_object()) {
    if (j.empty()) {
      out += "{}";
      return;
    }
    out += "{\n";
    std::size_t k = 0;
    for (auto it = j.begin(); it != j.end(); ++it, ++k) {
      out += inner + dump_scalar(json(it.key())) + ": ";
      pretty(it.value(), out, indent + 1);
      out += k + 1 < j.size() ? ",\n" : "\n";
    }
    out += pad + "}";
  } else if (j.is_array()) {
    const bool flat = std::all_of(j.begin(), j.end(), [](const json& e) { return e.is_primitive(); });
    if (flat) {
      out += dump_scalar(j);
      return;
    }
    out += "[\n";
    for (std::size_t k = 0; k < j.size(); ++k) {
      out += inner;
      pretty(j[k], out, indent + 1);
      out += k + 1 < j.size() ? ",\n" : "\n";
    }
    out += pad + "]";
  } else {
    out += dump_scalar(j);
  }
}

std::string to_text(const json& j) {
  std::string out;
  pretty(j, out, 0);
  out += "\n";
  return out;
}

json parse_json_file(const fs::path& path, const std::string& what) {
  const std::string text = read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(what + " '" + path.string() + "' is not valid JSON: " + e.what());
  }
}


// ------------------------------------------------------------------------------------------------
// Input items
// ------------------------------------------------------------------------------------------------

struct item {
  std::string id;
  std::string image;       // absolute, normalized path
  std::string image_hash;  // FNV-1a of the file
  std::string prompt;
};

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// Removes every occurrence of each string in `needles`.
std::string remove_all(std::string text, const std::vector<std::string>& needles) {
  for (const auto& n : needles) {
    if (n.empty()) continue;
    for (std::size_t pos = text.find(n); pos != std::string::npos; pos = text.find(n, pos)) text.erase(pos, n.size());
  }
  return text;
}

// Image / video placeholders of both chat formats: a prompt may hold none of them (the pipeline puts
// the one image placeholder in itself), as LLaVA's DPO loader strips "<image>" from its prompts.
const std::vector<std::string>& placeholder_strings() {
  static const std::vector<std::string> s{"<image>", "<video>", "<|image_pad|>", "<|video_pad|>",
                                          "<|vision_start|>", "<|vision_end|>"};
  return s;
}

// The placeholders that stand for image / video features: a response holding one cannot be scored
// (the model would expect features for it) nor trained on by LLaMA-Factory / LLaVA (they count
// them against the images).
const std::vector<std::string>& feature_placeholder_strings() {
  static const std::vector<std::string> s{"<image>", "<video>", "<|image_pad|>", "<|video_pad|>"};
  return s;
}

std::vector<item> parse_items(const std::string& text, const std::string& source, const fs::path& base_dir) {
  std::vector<json> records;
  const std::string t = trim(text);
  if (t.empty()) fail("input '" + source + "': empty file (expected a JSON array or JSONL of {id, image, prompt})");
  if (t[0] == '[' || t[0] == '{') {
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
  } else {
    fail("input '" + source + "': not JSON (expected a JSON array or JSONL of {id, image, prompt})");
  }
  if (records.empty()) fail("input '" + source + "': the item list is empty");

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

std::vector<item> load_items(const options& o) {
  if (o.input.empty()) return parse_items(default_input_json(), "<embedded default input>", default_image_dir());
  const fs::path path = fs::absolute(o.input).lexically_normal();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail("argument '--input': '" + o.input + "' does not exist or is not a file");
  return parse_items(read_file(path, "input"), path.string(), path.parent_path());
}

// ------------------------------------------------------------------------------------------------
// Images and the model
// ------------------------------------------------------------------------------------------------

// The model's image processor, in its two stages (normalize → corruption → pack).
struct processor_context {
  bool qwen = true;
  std::optional<cr::qwen2_vl_image_processor> qwen_processor;
  std::optional<cr::llava_onevision_image_processor> llava_processor;

  // The clean image after rescale + mean/std normalization ([3, H', W'] or [1 + tiles, 3, S, S]) and
  // the decoded image's (height, width).
  std::pair<torch::Tensor, std::array<std::int64_t, 2>> normalize(const std::string& path) const {
    cr::rgb_image image = cr::load_image(path);
    const std::array<std::int64_t, 2> hw{image.height(), image.width()};
    return {qwen ? qwen_processor->normalize(image) : llava_processor->normalize(image), hw};
  }

  cr::image_inputs pack(const torch::Tensor& normalized, const std::array<std::int64_t, 2>& hw,
                        std::int64_t& image_tokens) const {
    cr::image_inputs in;
    if (qwen) {
      cr::qwen2_vl_packed p = qwen_processor->pack(normalized);
      in.pixel_values = p.pixel_values;
      in.image_grid_thw = p.image_grid_thw;
      image_tokens = p.num_image_tokens.at(0);
    } else {
      cr::llava_onevision_packed p = llava_processor->pack({normalized}, {hw});
      in.pixel_values = p.pixel_values;
      in.image_sizes = p.image_sizes;
      image_tokens = p.num_image_tokens.at(0);
    }
    return in;
  }
};

struct model_context {
  std::shared_ptr<cr::vision_language_model> model;
  std::optional<cr::tokenizer> tok;
  cr::chat_format format = cr::chat_format::qwen2_5_vl;
  std::int64_t end_of_turn = -1;
  std::vector<std::int64_t> stop_ids;
  std::set<std::int64_t> placeholder_ids;      // image / video tokens a response must not contain
  std::vector<std::string> added_token_texts;  // stripped from generated text used inside a prompt
};

// The prompt ids of one user turn: the image, then `text`; the image placeholder expanded to the
// processor's token count; the assistant turn opened.
std::vector<std::int64_t> encode_prompt(const model_context& m, const std::string& text, std::int64_t image_tokens) {
  const std::string chat = cr::render_chat(
      m.format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(text)}}});
  return m.tok->encode(cr::expand_image_placeholders(m.format, chat, {image_tokens}));
}

// Runs the vision tower once (no gradient) and returns the inputs with `features` in place of the
// pixels (Qwen keeps image_grid_thw for the mRoPE positions).
cr::image_inputs with_features(model_context& m, cr::image_inputs in) {
  torch::NoGradGuard no_grad;
  in.features = m.model->image_features(in).detach();
  in.pixel_values = torch::Tensor();
  return in;
}

torch::Tensor add_noise(const torch::Tensor& normalized, std::uint64_t seed, std::uint64_t offset, int step,
                        const std::string& schedule) {
  torch::NoGradGuard no_grad;
  consr::diffusion_noise_options noise;
  noise.step = step;
  noise.schedule = lt::parse_noise_schedule(schedule);
  return lt::add_diffusion_noise(normalized, consr::rng_key{seed, offset}, noise);
}

// Noise keys (spec §3 randomness): Philox (seed = run seed, offset below), one stream per item and use.
std::uint64_t noisy_sampling_offset(std::size_t item_index) { return 2 * static_cast<std::uint64_t>(item_index); }
std::uint64_t reward_noise_offset(std::size_t item_index) { return 2 * static_cast<std::uint64_t>(item_index) + 1; }

// Sampling keys: every generated row draws from (run seed, key, step) (generation.hpp), so a row's
// tokens do not depend on its batch. kind: 0 description (index = image), 1 sampled, 2 revised, 3 noisy.
std::uint64_t sample_key(std::size_t index, int kind, std::int64_t k) {
  return ((static_cast<std::uint64_t>(index) * 4 + static_cast<std::uint64_t>(kind)) << 24) | static_cast<std::uint64_t>(k);
}

const char* finish_name(cr::finish_reason r) {
  switch (r) {
    case cr::finish_reason::stop_token: return "stop_token";
    case cr::finish_reason::length: return "length";
    case cr::finish_reason::context_full: return "context_full";
  }
  return "unknown";
}

// Replaces each "{Name}" slot of `tmpl` in one left-to-right pass (substituted text is not rescanned).
std::string fill_template(const std::string& tmpl, const std::vector<std::pair<std::string, std::string>>& slots) {
  std::string out;
  std::size_t pos = 0;
  while (pos < tmpl.size()) {
    bool replaced = false;
    for (const auto& [name, value] : slots) {
      if (tmpl.compare(pos, name.size(), name) == 0) {
        out += value;
        pos += name.size();
        replaced = true;
        break;
      }
    }
    if (!replaced) out += tmpl[pos++];
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// The run: options, items, artefacts
// ------------------------------------------------------------------------------------------------

struct stage_files {
  static constexpr const char* descriptions = "descriptions.json";
  static constexpr const char* candidates = "candidates.json";
  static constexpr const char* scores = "scores.json";
  static constexpr const char* report = "report.json";
  static constexpr const char* llamafactory_data = "llamafactory/consr_preference.json";
  static constexpr const char* llamafactory_info = "llamafactory/dataset_info.json";
  static constexpr const char* llava = "llava_ov_dpo.json";
  static constexpr const char* train_log = "train_log.json";
  static constexpr const char* adapter = "adapter";
};

class run_state {
 public:
  run_state(const options& o, std::ostream& log) : o_(o), log_(log) {}

  void prepare() {
    validate_options(o_);
    // The model directory first: the processor it names validates the images.
    model_dir_ = fs::absolute(o_.model_dir).lexically_normal().string();
    std::error_code ec;
    if (!fs::is_directory(model_dir_, ec)) fail("argument '--model': '" + o_.model_dir + "' is not a directory");
    if (!fs::is_regular_file(fs::path(model_dir_) / "config.json", ec))
      fail("argument '--model': '" + o_.model_dir + "' has no config.json (expected a Hugging Face model directory)");
    cr::model_config config = cr::load_model_config(model_dir_);
    model_type_ = config.model_type;
    processors_.qwen = config.qwen2_5_vl.has_value();
    if (!fs::is_regular_file(fs::path(model_dir_) / "preprocessor_config.json", ec))
      fail("argument '--model': '" + o_.model_dir + "' has no preprocessor_config.json");
    if (processors_.qwen) {
      cr::qwen2_vl_processor_config pc = cr::qwen2_vl_image_processor::from_file(model_dir_).config();
      if (o_.image_max_pixels > 0) pc.max_pixels = o_.image_max_pixels;
      if (o_.image_min_pixels > 0) pc.min_pixels = o_.image_min_pixels;
      if (pc.min_pixels > pc.max_pixels)
        fail(std::string("argument '") + (o_.image_max_pixels > 0 ? "--image-max-pixels" : "--image-min-pixels") +
             "': max_pixels " + std::to_string(pc.max_pixels) + " is below min_pixels " + std::to_string(pc.min_pixels));
      processors_.qwen_processor.emplace(pc);
    } else {
      if (o_.image_max_pixels > 0 || o_.image_min_pixels > 0)
        fail("argument '--image-max-pixels': applies to Qwen2.5-VL only (LLaVA-OneVision tiles at a fixed size)");
      processors_.llava_processor = cr::llava_onevision_image_processor::from_directory(model_dir_);
    }

    items_ = load_items(o_);
    // Every image must decode and be accepted by the processor before anything is written (decoding
    // and the size rules only: the resize itself happens when a stage needs the pixels).
    for (std::size_t i = 0; i < items_.size(); ++i) {
      try {
        const cr::rgb_image image = cr::load_image(items_[i].image);
        if (processors_.qwen) (void)processors_.qwen_processor->resized_size(image.height(), image.width());
      } catch (const std::exception& e) {
        fail("item " + std::to_string(i) + " (id '" + items_[i].id + "'): image '" + items_[i].image +
             "' cannot be used: " + e.what());
      }
    }
    // Model identity for the fingerprints: directory, config.json, and the weight files' sizes
    // (hashing a 16 GB checkpoint on every run would cost minutes).
    model_identity_ = json::object();
    model_identity_["dir"] = model_dir_;
    model_identity_["model_type"] = model_type_;
    model_identity_["config_fnv1a"] = fnv1a_hex(read_file(fs::path(model_dir_) / "config.json", "model config"));
    json weights = json::array();
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(model_dir_)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file() && (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors")) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) weights.push_back(json::array({f.filename().string(), fs::file_size(f)}));
    model_identity_["weights"] = weights;
    if (processors_.qwen) {
      model_identity_["image_min_pixels"] = processors_.qwen_processor->config().min_pixels;
      model_identity_["image_max_pixels"] = processors_.qwen_processor->config().max_pixels;
    }
    model_identity_["dtype"] = o_.dtype;
    model_identity_["device"] = o_.device;

    out_ = fs::absolute(o_.output_dir).lexically_normal();
    fs::create_directories(out_);
    if (!fs::is_directory(out_, ec)) fail("argument '--out': cannot create directory '" + o_.output_dir + "'");
  }

  std::vector<stage_result> run() {
    prepare();
    log_ << "consr_pipeline: " << items_.size() << " item(s), model " << model_dir_ << " (" << model_type_ << ", "
         << o_.dtype << ", " << o_.device << "), profile " << (o_.defaults == profile::demo ? "demo" : "paper")
         << ", seed " << o_.seed << ", output " << out_.string() << "\n";
    std::vector<stage_result> results;
    for (int s = 0; s <= static_cast<int>(o_.target); ++s) {
      const stage which = static_cast<stage>(s);
      const json settings = settings_of(which);
      const std::string hash = fnv1a_hex(settings.dump());
      stage_result r;
      r.which = which;
      const bool forced = o_.fresh || (o_.force && which == o_.target);
      if (!forced && up_to_date(which, hash)) {
        r.summary = "up to date (" + std::string(artefact_of(which)) + ")";
        log_ << "[" << to_string(which) << "] " << r.summary << "\n";
        results.push_back(r);
        continue;
      }
      if (forced) fs::remove_all(out_ / "partial" / to_string(which));
      log_ << "[" << to_string(which) << "] running\n";
      const auto t0 = clock_type::now();
      switch (which) {
        case stage::describe: r.summary = describe(settings, hash); break;
        case stage::candidates: r.summary = candidates(settings, hash); break;
        case stage::score: r.summary = score(settings, hash); break;
        case stage::write: r.summary = write(settings, hash); break;
        case stage::train: r.summary = train(settings, hash); break;
      }
      r.ran = true;
      r.seconds = seconds_since(t0);
      fs::remove_all(out_ / "partial" / to_string(which));
      log_ << "[" << to_string(which) << "] done in " << fixed(r.seconds, 2) << " s: " << r.summary << "\n";
      results.push_back(r);
    }
    std::error_code ec;
    if (fs::is_empty(out_ / "partial", ec)) fs::remove(out_ / "partial", ec);
    log_ << "\nsummary (" << out_.string() << ")\n";
    for (const auto& r : results)
      log_ << "  " << std::left << std::setw(11) << to_string(r.which) << std::right << std::setw(10)
           << (r.ran ? fixed(r.seconds, 2) + " s" : std::string("skipped")) << "  " << r.summary << "\n";
    return results;
  }

 private:
  static const char* artefact_of(stage s) {
    switch (s) {
      case stage::describe: return stage_files::descriptions;
      case stage::candidates: return stage_files::candidates;
      case stage::score: return stage_files::scores;
      case stage::write: return stage_files::report;
      case stage::train: return stage_files::train_log;
    }
    return "";
  }

  bool up_to_date(stage s, const std::string& hash) const {
    const fs::path path = out_ / artefact_of(s);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return false;
    json j;
    try {
      j = json::parse(read_file(path, "artefact"));
    } catch (const std::exception&) {
      return false;
    }
    if (!j.is_object() || !j.contains("settings_fnv1a") || j["settings_fnv1a"] != hash) return false;
    if (s == stage::write)
      for (const char* f : {stage_files::llamafactory_data, stage_files::llamafactory_info, stage_files::llava})
        if (!fs::is_regular_file(out_ / f, ec)) return false;
    if (s == stage::train)
      for (const char* f : {"adapter_model.safetensors", "adapter_config.json"})
        if (!fs::is_regular_file(out_ / stage_files::adapter / f, ec)) return false;
    return true;
  }

  std::string artefact_hash(const char* name) const { return fnv1a_hex(read_file(out_ / name, "artefact")); }

  json items_json() const {
    json a = json::array();
    for (const auto& it : items_)
      a.push_back({{"id", it.id}, {"image", it.image}, {"image_fnv1a", it.image_hash}, {"prompt", it.prompt}});
    return a;
  }

  // Everything a stage's output depends on. Upstream artefacts enter through their content hash,
  // so a recomputed upstream that produced the same bytes does not invalidate the stage.
  json settings_of(stage s) const {
    json j;
    j["stage"] = to_string(s);
    j["format_version"] = artefact_format_version;
    switch (s) {
      case stage::describe: {
        j["model"] = model_identity_;
        j["seed"] = o_.seed;
        j["prompt"] = o_.prompts.description;
        j["max_new_tokens"] = o_.description_max_new_tokens;
        j["temperature"] = o_.description_temperature;
        j["top_p"] = o_.top_p;
        json images = json::array();
        for (const auto& path : unique_images()) images.push_back({path, image_hash(path)});
        j["images"] = images;
        break;
      }
      case stage::candidates:
        j["upstream"] = {{"descriptions", artefact_hash(stage_files::descriptions)}};
        j["model"] = model_identity_;
        j["items"] = items_json();
        j["seed"] = o_.seed;
        j["num_sampled"] = o_.num_sampled;
        j["num_revised"] = o_.num_revised;
        j["num_noisy"] = o_.num_noisy;
        j["temperature"] = o_.temperature;
        j["top_p"] = o_.top_p;
        j["max_new_tokens"] = o_.max_new_tokens;
        j["revision_temperature"] = o_.revision_temperature;
        j["revision_prompt"] = o_.prompts.revision;
        j["noisy_sampling_step"] = o_.noisy_sampling_step;
        j["noise_schedule"] = o_.noise_schedule;
        break;
      case stage::score:
        j["upstream"] = {{"descriptions", artefact_hash(stage_files::descriptions)},
                         {"candidates", artefact_hash(stage_files::candidates)}};
        j["model"] = model_identity_;
        j["seed"] = o_.seed;
        j["enriched_prompt"] = o_.prompts.enriched;
        j["reward_noise_step"] = o_.reward_noise_step;
        j["noise_schedule"] = o_.noise_schedule;
        j["lambda"] = o_.lambda;
        j["reward_space"] = o_.reward_space;
        j["score_batch_size"] = o_.score_batch_size;
        j["pairs_per_group"] = o_.pairs_per_group;
        j["min_margin"] = o_.min_margin;
        j["skip_duplicates"] = o_.skip_duplicates;
        break;
      case stage::write:
        j["upstream"] = {{"descriptions", artefact_hash(stage_files::descriptions)},
                         {"candidates", artefact_hash(stage_files::candidates)},
                         {"scores", artefact_hash(stage_files::scores)}};
        break;
      case stage::train:
        j["upstream"] = {{"report", artefact_hash(stage_files::report)}};
        j["model"] = model_identity_;
        j["seed"] = o_.seed;
        j["lora"] = {{"rank", o_.lora_rank},
                     {"alpha", o_.lora_alpha},
                     {"targets", o_.lora_targets},
                     {"naming", o_.lora_naming}};
        j["learning_rate"] = o_.learning_rate;
        j["weight_decay"] = o_.weight_decay;
        j["epochs"] = o_.epochs;
        j["max_steps"] = o_.max_steps;
        j["batch_size"] = o_.batch_size;
        j["loss"] = {{"type", o_.loss_type},       {"beta", o_.beta},       {"length_normalize", o_.length_normalize},
                     {"visual_weights", o_.visual_weights}, {"visual_alpha", o_.visual_alpha},
                     {"clip_lo", o_.clip_lo},       {"clip_hi", o_.clip_hi}};
        break;
    }
    return j;
  }

  json artefact_header(stage s, const json& settings, const std::string& hash) const {
    json j;
    j["stage"] = to_string(s);
    j["settings_fnv1a"] = hash;
    j["settings"] = settings;
    return j;
  }

  std::vector<std::string> unique_images() const {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& it : items_)
      if (seen.insert(it.image).second) out.push_back(it.image);
    return out;
  }

  std::string image_hash(const std::string& path) const {
    for (const auto& it : items_)
      if (it.image == path) return it.image_hash;
    return "";
  }

  // ---- per-item checkpoints (resume inside a stage) ------------------------------------------------

  fs::path partial_path(stage s, std::size_t index) const {
    return out_ / "partial" / to_string(s) / (std::to_string(index) + ".json");
  }

  std::optional<json> load_partial(stage s, std::size_t index, const std::string& hash) const {
    const fs::path p = partial_path(s, index);
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return std::nullopt;
    try {
      json j = json::parse(read_file(p, "checkpoint"));
      if (j.value("settings_fnv1a", std::string()) == hash && j.contains("result")) return j["result"];
    } catch (const std::exception&) {
    }
    return std::nullopt;
  }

  void save_partial(stage s, std::size_t index, const std::string& hash, const json& result) const {
    json j;
    j["settings_fnv1a"] = hash;
    j["result"] = result;
    write_file_atomic(partial_path(s, index), dump_scalar(j));
  }

  // ---- the model (loaded on first use) -------------------------------------------------------------

  model_context& model() {
    if (model_.model) return model_;
    const auto t0 = clock_type::now();
    const torch::Dtype dtype = o_.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
    model_.model = cr::load_model(model_dir_, torch::TensorOptions().dtype(dtype).device(torch::Device(o_.device)));
    model_.model->eval();
    model_.tok = cr::tokenizer::from_directory(model_dir_);
    model_.format = cr::parse_chat_format(model_.model->config().model_type);
    model_.end_of_turn = model_.tok->token_id("<|im_end|>");
    model_.stop_ids = cr::chat_stop_token_ids(*model_.tok);
    model_.placeholder_ids.insert(model_.model->image_token_id());
    const cr::model_config& c = model_.model->config();
    model_.placeholder_ids.insert(c.qwen2_5_vl ? c.qwen2_5_vl->video_token_id : c.llava_onevision->video_token_index);
    for (const auto& s : feature_placeholder_strings())
      if (auto id = model_.tok->find_token(s)) model_.placeholder_ids.insert(*id);
    for (const auto& t : model_.tok->added_tokens()) model_.added_token_texts.push_back(t.content);
    log_ << "  model loaded in " << fixed(seconds_since(t0), 2) << " s\n";
    return model_;
  }

  // Generated text that goes into another prompt: no added tokens (so no stray image placeholder).
  std::string prompt_safe(const std::string& generated) {
    return trim(remove_all(generated, model().added_token_texts));
  }

  cr::sampling_options sampling(std::int64_t max_new_tokens, double temperature) {
    cr::sampling_options s;
    s.max_new_tokens = max_new_tokens;
    s.temperature = temperature;
    s.top_p = o_.top_p;
    s.seed = o_.seed;
    s.stop_token_ids = model().stop_ids;
    return s;
  }

  // ---- 1. describe ---------------------------------------------------------------------------------

  std::string describe(const json& settings, const std::string& hash) {
    model_context& m = model();
    const std::vector<std::string> images = unique_images();
    json list = json::array();
    std::size_t resumed = 0;
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (auto done = load_partial(stage::describe, i, hash)) {
        list.push_back(*done);
        ++resumed;
        continue;
      }
      const auto t0 = clock_type::now();
      auto [normalized, hw] = processors_.normalize(images[i]);
      std::int64_t tokens = 0;
      cr::prompt_input prompt;
      prompt.images = with_features(m, processors_.pack(normalized, hw, tokens));
      prompt.input_ids = encode_prompt(m, o_.prompts.description, tokens);
      cr::generation_result g = cr::generate(*m.model, {prompt},
                                             sampling(o_.description_max_new_tokens, o_.description_temperature),
                                             {sample_key(i, 0, 0)})
                                    .at(0);
      json d;
      d["image"] = images[i];
      d["text"] = trim(m.tok->decode(g.token_ids, /*skip_special=*/true));
      d["token_ids"] = g.token_ids;
      d["finish_reason"] = finish_name(g.reason);
      save_partial(stage::describe, i, hash, d);
      log_ << "  image " << (i + 1) << "/" << images.size() << ": " << g.token_ids.size() << " tokens in "
           << fixed(seconds_since(t0), 2) << " s\n";
      list.push_back(d);
    }
    json out = artefact_header(stage::describe, settings, hash);
    out["descriptions"] = list;
    write_file_atomic(out_ / stage_files::descriptions, to_text(out));
    return std::to_string(images.size()) + " description(s)" +
           (resumed ? " (" + std::to_string(resumed) + " resumed)" : std::string());
  }

  std::map<std::string, std::string> descriptions() const {
    const json d = parse_json_file(out_ / stage_files::descriptions, "artefact");
    std::map<std::string, std::string> out;
    for (const auto& e : d.at("descriptions")) out[e.at("image").get<std::string>()] = e.at("text").get<std::string>();
    return out;
  }

  // ---- 2. candidates -------------------------------------------------------------------------------

  json candidate_json(const char* kind, std::int64_t source, const cr::generation_result& g) {
    model_context& m = model();
    json c;
    c["kind"] = kind;
    if (source >= 0) c["source"] = source;
    c["text"] = m.tok->decode(g.token_ids, /*skip_special=*/true);
    c["token_ids"] = g.token_ids;
    c["finish_reason"] = finish_name(g.reason);
    // A response holding an image / video placeholder cannot be scored (the model would expect image
    // features for it) nor trained on by LLaMA-Factory / LLaVA (placeholder count check): it is kept
    // in the report, marked unusable, and gets no reward.
    std::string why;
    for (auto id : g.token_ids)
      if (m.placeholder_ids.count(id)) why = "contains the image/video placeholder token " + std::to_string(id);
    if (why.empty())
      for (const auto& s : feature_placeholder_strings())
        if (c["text"].get<std::string>().find(s) != std::string::npos) why = "its text contains '" + s + "'";
    c["usable"] = why.empty();
    if (!why.empty()) c["unusable_reason"] = why;
    return c;
  }

  std::string candidates(const json& settings, const std::string& hash) {
    model_context& m = model();
    const std::map<std::string, std::string> desc = descriptions();
    json list = json::array();
    std::size_t resumed = 0, total = 0, unusable = 0;
    for (std::size_t i = 0; i < items_.size(); ++i) {
      const item& it = items_[i];
      json result;
      if (auto done = load_partial(stage::candidates, i, hash)) {
        result = *done;
        ++resumed;
      } else {
        const auto t0 = clock_type::now();
        auto [normalized, hw] = processors_.normalize(it.image);
        std::int64_t tokens = 0;
        cr::prompt_input clean;
        clean.images = with_features(m, processors_.pack(normalized, hw, tokens));
        clean.input_ids = encode_prompt(m, it.prompt, tokens);
        json cands = json::array();
        std::vector<cr::generation_result> sampled;
        if (o_.num_sampled > 0) {
          sampled = cr::generate_samples(*m.model, clean, o_.num_sampled, sampling(o_.max_new_tokens, o_.temperature),
                                         sample_key(i, 1, 0));
          for (const auto& g : sampled) cands.push_back(candidate_json("sampled", -1, g));
        }
        if (o_.num_revised > 0) {
          // The revision prompt (App. B.1) of each sampled response, with the model's own description.
          const std::string description = prompt_safe(desc.at(it.image));
          std::vector<cr::prompt_input> prompts;
          std::vector<std::uint64_t> keys;
          for (std::int64_t k = 0; k < o_.num_revised; ++k) {
            const std::string original = prompt_safe(m.tok->decode(sampled.at(static_cast<std::size_t>(k)).token_ids, true));
            cr::prompt_input p;
            p.images = clean.images;
            p.input_ids = encode_prompt(m, fill_template(o_.prompts.revision, {{"{Description}", description},
                                                                               {"{Question}", it.prompt},
                                                                               {"{Original Response}", original}}),
                                        tokens);
            prompts.push_back(std::move(p));
            keys.push_back(sample_key(i, 2, k));
          }
          auto revised = cr::generate(*m.model, prompts, sampling(o_.max_new_tokens, o_.revision_temperature), keys);
          for (std::size_t k = 0; k < revised.size(); ++k)
            cands.push_back(candidate_json("revised", static_cast<std::int64_t>(k), revised[k]));
        }
        if (o_.num_noisy > 0) {
          // Noise on the normalized image (spec §3), before the processor's pack (Qwen's temporal
          // duplication), keyed by (run seed, item index).
          torch::Tensor noisy = add_noise(normalized, o_.seed, noisy_sampling_offset(i), o_.noisy_sampling_step,
                                          o_.noise_schedule);
          std::int64_t noisy_tokens = 0;
          cr::prompt_input p;
          p.images = with_features(m, processors_.pack(noisy, hw, noisy_tokens));
          p.input_ids = clean.input_ids;
          auto gs = cr::generate_samples(*m.model, p, o_.num_noisy, sampling(o_.max_new_tokens, o_.temperature),
                                         sample_key(i, 3, 0));
          for (const auto& g : gs) cands.push_back(candidate_json("noisy", -1, g));
        }
        result["id"] = it.id;
        result["candidates"] = cands;
        save_partial(stage::candidates, i, hash, result);
        log_ << "  item " << (i + 1) << "/" << items_.size() << " '" << it.id << "': " << cands.size()
             << " candidates in " << fixed(seconds_since(t0), 2) << " s\n";
      }
      for (const auto& c : result["candidates"]) {
        ++total;
        if (!c["usable"].get<bool>()) ++unusable;
      }
      list.push_back(result);
    }
    json out = artefact_header(stage::candidates, settings, hash);
    out["items"] = list;
    write_file_atomic(out_ / stage_files::candidates, to_text(out));
    return std::to_string(total) + " candidates (" + std::to_string(o_.num_sampled) + " sampled + " +
           std::to_string(o_.num_revised) + " revised + " + std::to_string(o_.num_noisy) + " noisy per item), " +
           std::to_string(unusable) + " unusable" + (resumed ? ", " + std::to_string(resumed) + " item(s) resumed" : "");
  }

  // ---- 3. score ------------------------------------------------------------------------------------

  std::string score(const json& settings, const std::string& hash) {
    const std::map<std::string, std::string> desc = descriptions();
    const json cand_doc = parse_json_file(out_ / stage_files::candidates, "artefact");
    const json& cand_items = cand_doc.at("items");
    if (cand_items.size() != items_.size()) fail("artefact 'candidates.json' does not match the input items");
    std::vector<json> per_item(items_.size());
    std::size_t resumed = 0;
    for (std::size_t i = 0; i < items_.size(); ++i) {
      if (auto done = load_partial(stage::score, i, hash)) {
        per_item[i] = *done;
        ++resumed;
        continue;
      }
      model_context& m = model();
      const auto t0 = clock_type::now();
      const item& it = items_[i];
      const json& cands = cand_items[i].at("candidates");
      auto [normalized, hw] = processors_.normalize(it.image);
      std::int64_t tokens = 0;
      // One vision forward per image: (x, I) and (x', I) share the clean features.
      const cr::image_inputs clean_images = with_features(m, processors_.pack(normalized, hw, tokens));
      std::int64_t corrupt_tokens = 0;
      const cr::image_inputs corrupt_images = with_features(
          m, processors_.pack(add_noise(normalized, o_.seed, reward_noise_offset(i), o_.reward_noise_step, o_.noise_schedule),
                              hw, corrupt_tokens));
      cr::prompt_input clean, corrupt, semantic;
      clean.input_ids = encode_prompt(m, it.prompt, tokens);
      clean.images = clean_images;
      corrupt.input_ids = clean.input_ids;
      corrupt.images = corrupt_images;
      semantic.input_ids = encode_prompt(
          m, fill_template(o_.prompts.enriched, {{"{Image Description}", prompt_safe(desc.at(it.image))},
                                                 {"{Original Prompt}", it.prompt}}),
          tokens);
      semantic.images = clean_images;
      std::vector<std::vector<std::int64_t>> responses;
      std::vector<std::size_t> usable;
      for (std::size_t c = 0; c < cands.size(); ++c) {
        if (!cands[c].at("usable").get<bool>()) continue;
        usable.push_back(c);
        responses.push_back(cands[c].at("token_ids").get<std::vector<std::int64_t>>());
      }
      std::vector<cr::scored_response> s_clean, s_corrupt, s_semantic;
      if (!responses.empty()) {
        const std::size_t n = responses.size();
        s_clean = cr::score_responses(*m.model, std::vector<cr::prompt_input>(n, clean), responses, m.end_of_turn,
                                      o_.score_batch_size);
        s_corrupt = cr::score_responses(*m.model, std::vector<cr::prompt_input>(n, corrupt), responses, m.end_of_turn,
                                        o_.score_batch_size);
        s_semantic = cr::score_responses(*m.model, std::vector<cr::prompt_input>(n, semantic), responses,
                                         m.end_of_turn, o_.score_batch_size);
      }
      json scored = json::array();
      std::size_t u = 0;
      for (std::size_t c = 0; c < cands.size(); ++c) {
        json e;
        if (u < usable.size() && usable[u] == c) {
          if (s_clean[u].token_ids != s_corrupt[u].token_ids || s_clean[u].token_ids != s_semantic[u].token_ids)
            fail("internal: the three scoring passes scored different tokens");
          e["token_ids"] = s_clean[u].token_ids;
          e["logp"] = s_clean[u].logprobs;
          e["logp_corrupt"] = s_corrupt[u].logprobs;
          e["logp_semantic"] = s_semantic[u].logprobs;
          ++u;
        } else {
          e["token_ids"] = json::array();
          e["logp"] = json::array();
          e["logp_corrupt"] = json::array();
          e["logp_semantic"] = json::array();
        }
        scored.push_back(e);
      }
      json result;
      result["id"] = it.id;
      result["candidates"] = scored;
      save_partial(stage::score, i, hash, result);
      log_ << "  item " << (i + 1) << "/" << items_.size() << " '" << it.id << "': " << responses.size()
           << " candidates x 3 conditions in " << fixed(seconds_since(t0), 2) << " s\n";
      per_item[i] = result;
    }

    // Pack every candidate's token log-probs (an unusable one as an empty segment, so it gets NaN and
    // is listed by the reward report) and let consr compute eqs. 1-6 and select the pairs (spec §6).
    std::vector<float> logp, logp_corrupt, logp_semantic;
    std::vector<std::int64_t> offsets{0}, tokens, groups{0};
    for (const auto& r : per_item) {
      for (const auto& c : r.at("candidates")) {
        for (const auto& v : c.at("logp")) logp.push_back(v.get<float>());
        for (const auto& v : c.at("logp_corrupt")) logp_corrupt.push_back(v.get<float>());
        for (const auto& v : c.at("logp_semantic")) logp_semantic.push_back(v.get<float>());
        for (const auto& v : c.at("token_ids")) tokens.push_back(v.get<std::int64_t>());
        offsets.push_back(static_cast<std::int64_t>(logp.size()));
      }
      groups.push_back(static_cast<std::int64_t>(offsets.size()) - 1);
    }
    const std::size_t num_candidates = offsets.size() - 1;
    std::vector<double> p(num_candidates), pc(num_candidates), ps(num_candidates), ss(num_candidates),
        sc(num_candidates), r(num_candidates);
    consr::reward_outputs<double> outs;
    const consr::index_t C = static_cast<consr::index_t>(num_candidates);
    outs.p = consr::make_view(p.data(), C);
    outs.p_corrupt = consr::make_view(pc.data(), C);
    outs.p_semantic = consr::make_view(ps.data(), C);
    outs.s_semantic = consr::make_view(ss.data(), C);
    outs.s_corrupt = consr::make_view(sc.data(), C);
    outs.reward = consr::make_view(r.data(), C);
    consr::reward_options ropt;
    ropt.lambda = o_.lambda;
    ropt.space = o_.reward_space == "log" ? consr::reward_space::log : consr::reward_space::probability;
    const consr::index_t N = static_cast<consr::index_t>(logp.size());
    const consr::reward_report rrep = consr::contrastive_reward(
        consr::make_view(static_cast<const float*>(logp.data()), N),
        consr::make_view(static_cast<const float*>(logp_corrupt.data()), N),
        consr::make_view(static_cast<const float*>(logp_semantic.data()), N),
        consr::make_view(static_cast<const std::int64_t*>(offsets.data()), C + 1), outs, ropt);
    consr::pair_options popt;
    popt.pairs_per_group = o_.pairs_per_group;
    popt.min_margin = o_.min_margin;
    popt.skip_duplicates = o_.skip_duplicates;
    std::vector<consr::preference_pair> pairs;
    const consr::index_t G = static_cast<consr::index_t>(items_.size());
    const consr::selection_report srep = consr::select_pairs(
        consr::make_view(static_cast<const double*>(r.data()), C),
        consr::make_view(static_cast<const std::int64_t*>(groups.data()), G + 1),
        consr::make_view(static_cast<const std::int64_t*>(tokens.data()), static_cast<consr::index_t>(tokens.size())),
        consr::make_view(static_cast<const std::int64_t*>(offsets.data()), C + 1), pairs, popt);

    json items_out = json::array();
    std::size_t g = 0;
    for (std::size_t i = 0; i < per_item.size(); ++i) {
      json item_out;
      item_out["id"] = per_item[i].at("id");
      json cands = json::array();
      for (const auto& c : per_item[i].at("candidates")) {
        json e = c;
        e["scored_tokens"] = c.at("token_ids").size();
        e["P"] = p[g];
        e["P_corrupt"] = pc[g];
        e["P_semantic"] = ps[g];
        e["S_semantic"] = ss[g];
        e["S_corrupt"] = sc[g];
        e["r"] = r[g];
        cands.push_back(e);
        ++g;
      }
      item_out["candidates"] = cands;
      items_out.push_back(item_out);
    }
    json pairs_out = json::array();
    for (const auto& pr : pairs) {
      const std::int64_t first = groups[static_cast<std::size_t>(pr.group)];
      pairs_out.push_back({{"item", pr.group},
                           {"id", items_[static_cast<std::size_t>(pr.group)].id},
                           {"chosen", pr.chosen - first},
                           {"rejected", pr.rejected - first},
                           {"chosen_reward", pr.chosen_reward},
                           {"rejected_reward", pr.rejected_reward},
                           {"margin", pr.margin}});
    }
    json out = artefact_header(stage::score, settings, hash);
    out["items"] = items_out;
    out["reward_report"] = {{"candidates", rrep.candidates},
                            {"empty_candidates", rrep.empty_candidates},
                            {"empty_indices", rrep.empty_indices},
                            {"nonfinite_rewards", rrep.nonfinite_rewards}};
    out["selection_report"] = selection_json(srep);
    out["pairs"] = pairs_out;
    write_file_atomic(out_ / stage_files::scores, to_text(out));

    log_ << "  selection: " << srep.pairs << " pair(s) from " << srep.groups << " item(s); with pairs "
         << srep.groups_with_pairs << ", too few candidates " << srep.groups_too_few_candidates << ", no margin "
         << srep.groups_no_margin << "; candidates skipped: non-finite reward " << srep.nonfinite_candidates
         << " (unusable " << rrep.empty_candidates << "), duplicates " << srep.duplicate_candidates << "\n";
    for (const auto& pr : pairs)
      log_ << "    '" << items_[static_cast<std::size_t>(pr.group)].id << "': chosen #"
           << pr.chosen - groups[static_cast<std::size_t>(pr.group)] << " (r = " << pr.chosen_reward << ") vs rejected #"
           << pr.rejected - groups[static_cast<std::size_t>(pr.group)] << " (r = " << pr.rejected_reward
           << "), margin " << pr.margin << "\n";
    return std::to_string(num_candidates) + " candidates scored under 3 conditions, " + std::to_string(srep.pairs) +
           " pair(s)" + (resumed ? ", " + std::to_string(resumed) + " item(s) resumed" : "");
  }

  static json selection_json(const consr::selection_report& s) {
    return {{"groups", s.groups},
            {"pairs", s.pairs},
            {"groups_with_pairs", s.groups_with_pairs},
            {"groups_too_few_candidates", s.groups_too_few_candidates},
            {"groups_no_margin", s.groups_no_margin},
            {"nonfinite_candidates", s.nonfinite_candidates},
            {"duplicate_candidates", s.duplicate_candidates}};
  }

  // ---- 4. write ------------------------------------------------------------------------------------

  std::string write(const json& settings, const std::string& hash) {
    const std::map<std::string, std::string> desc = descriptions();
    const json cand_doc = parse_json_file(out_ / stage_files::candidates, "artefact");
    const json score_doc = parse_json_file(out_ / stage_files::scores, "artefact");
    const json& cand_items = cand_doc.at("items");
    const json& score_items = score_doc.at("items");

    json report = artefact_header(stage::write, settings, hash);
    report["model"] = model_identity_;
    report["seed"] = o_.seed;
    report["lambda"] = o_.lambda;
    report["reward_space"] = o_.reward_space;
    json items = json::array();
    for (std::size_t i = 0; i < items_.size(); ++i) {
      const item& it = items_[i];
      json e;
      e["id"] = it.id;
      e["image"] = it.image;
      e["prompt"] = it.prompt;
      e["description"] = desc.at(it.image);
      json cands = json::array();
      for (std::size_t c = 0; c < cand_items[i].at("candidates").size(); ++c) {
        const json& cj = cand_items[i]["candidates"][c];
        const json& sj = score_items[i]["candidates"][c];
        json x;
        x["index"] = c;
        x["kind"] = cj.at("kind");
        if (cj.contains("source")) x["source"] = cj["source"];
        x["text"] = cj.at("text");
        x["response_tokens"] = cj.at("token_ids").size();
        x["scored_tokens"] = sj.at("scored_tokens");
        x["finish_reason"] = cj.at("finish_reason");
        x["usable"] = cj.at("usable");
        if (cj.contains("unusable_reason")) x["unusable_reason"] = cj["unusable_reason"];
        for (const char* k : {"P", "P_corrupt", "P_semantic", "S_semantic", "S_corrupt", "r"}) x[k] = sj.at(k);
        cands.push_back(x);
      }
      e["candidates"] = cands;
      items.push_back(e);
    }
    report["items"] = items;

    json pairs = json::array(), llamafactory = json::array(), llava = json::array();
    std::map<std::size_t, int> rank_in_item;
    for (const auto& pr : score_doc.at("pairs")) {
      const std::size_t i = pr.at("item").get<std::size_t>();
      const std::size_t cw = pr.at("chosen").get<std::size_t>(), cl = pr.at("rejected").get<std::size_t>();
      const item& it = items_.at(i);
      const json& cand = cand_items[i]["candidates"];
      const json& sc = score_items[i]["candidates"];
      const auto side = [&](std::size_t c) {
        return json{{"index", c},
                    {"kind", cand[c].at("kind")},
                    {"text", cand[c].at("text")},
                    {"reward", sc[c].at("r")},
                    {"token_ids", sc[c].at("token_ids")},
                    {"logp_clean", sc[c].at("logp")},
                    {"logp_corrupt", sc[c].at("logp_corrupt")}};
      };
      pairs.push_back({{"item", i}, {"id", it.id}, {"margin", pr.at("margin")}, {"chosen", side(cw)}, {"rejected", side(cl)}});
      const int rank = rank_in_item[i]++;
      const std::string pair_id = rank == 0 ? it.id : it.id + "_" + std::to_string(rank);
      // LLaMA-Factory sharegpt ranking format: one <image> placeholder per image in the human turn.
      llamafactory.push_back({{"conversations", json::array({{{"from", "human"}, {"value", "<image>" + it.prompt}}})},
                              {"chosen", {{"from", "gpt"}, {"value", cand[cw].at("text")}}},
                              {"rejected", {{"from", "gpt"}, {"value", cand[cl].at("text")}}},
                              {"images", json::array({it.image})}});
      // LLaVA-NeXT / LLaVA-OV DPO record (its loader prepends "<image>\n" to the prompt itself).
      llava.push_back({{"id", pair_id},
                       {"prompt", it.prompt},
                       {"answer", ""},
                       {"image", it.image},
                       {"chosen", cand[cw].at("text")},
                       {"rejected", cand[cl].at("text")}});
    }
    report["pairs"] = pairs;
    report["selection_report"] = score_doc.at("selection_report");
    report["reward_report"] = score_doc.at("reward_report");

    json info;
    info["consr_preference"] = {{"file_name", "consr_preference.json"},
                                {"formatting", "sharegpt"},
                                {"ranking", true},
                                {"columns", {{"messages", "conversations"},
                                             {"chosen", "chosen"},
                                             {"rejected", "rejected"},
                                             {"images", "images"}}}};
    write_file_atomic(out_ / stage_files::llamafactory_data, to_text(llamafactory));
    write_file_atomic(out_ / stage_files::llamafactory_info, to_text(info));
    write_file_atomic(out_ / stage_files::llava, to_text(llava));
    write_file_atomic(out_ / stage_files::report, to_text(report));  // last: marks the stage complete
    return std::to_string(pairs.size()) + " pair(s) -> " + stage_files::llamafactory_data + " (+ dataset_info.json), " +
           stage_files::llava + ", " + stage_files::report;
  }

  // ---- 5. train ------------------------------------------------------------------------------------

  struct train_pair {
    std::size_t item = 0;
    std::vector<std::int64_t> chosen, rejected;  // scored tokens (end-of-turn included)
    torch::Tensor chosen_weights, rejected_weights;  // visual weights (eqs. 12-13), float [T]
    torch::Tensor chosen_reference, rejected_reference;  // policy at LoRA init, float [T]
  };

  // Token log-probs of `responses` after the prompt, with autograd when enabled: one left-padded
  // forward, hidden states of the response positions only through lm_head, then consr's
  // token_logprobs (spec §4; fused backward). On a CUDA device without consr's CUDA kernels linked
  // in, ATen's log_softmax + gather.
  std::vector<torch::Tensor> response_logprobs(model_context& m, const cr::prompt_input& prompt,
                                               const std::vector<std::vector<std::int64_t>>& responses) {
    std::vector<cr::prompt_input> rows;
    for (const auto& r : responses) {
      cr::prompt_input p = prompt;
      p.input_ids.insert(p.input_ids.end(), r.begin(), r.end());
      rows.push_back(std::move(p));
    }
    cr::model_inputs in = cr::collate(rows, 0);
    const std::int64_t len = in.input_ids.size(1);
    std::vector<std::int64_t> index, targets;
    for (std::size_t b = 0; b < responses.size(); ++b) {
      const std::int64_t t = static_cast<std::int64_t>(responses[b].size());
      for (std::int64_t k = 0; k < t; ++k) {
        index.push_back(static_cast<std::int64_t>(b) * len + (len - t) + k - 1);  // position t−1 predicts t
        targets.push_back(responses[b][static_cast<std::size_t>(k)]);
      }
    }
    const torch::Device device = m.model->device();
    torch::Tensor hidden = m.model->forward_hidden(in);
    torch::Tensor picked = hidden.reshape({-1, hidden.size(2)}).index_select(0, torch::tensor(index).to(device));
    torch::Tensor logits = m.model->logits(picked);
    torch::Tensor labels = torch::tensor(targets).to(device);
    torch::Tensor logp;
    if (logits.is_cuda() && lt::cuda_backend_registry().token_logprobs == nullptr) {
      logp = torch::log_softmax(logits.to(torch::kFloat32), -1).gather(1, labels.unsqueeze(1)).squeeze(1);
    } else {
      logp = lt::token_logprobs(logits, labels);
    }
    logp = logp.to(torch::kCPU);  // the DPO loss runs on the host (per-token vectors only)
    std::vector<torch::Tensor> out;
    std::int64_t start = 0;
    for (const auto& r : responses) {
      out.push_back(logp.narrow(0, start, static_cast<std::int64_t>(r.size())));
      start += static_cast<std::int64_t>(r.size());
    }
    return out;
  }

  cr::prompt_input train_prompt(model_context& m, std::size_t item_index) {
    const item& it = items_.at(item_index);
    auto [normalized, hw] = processors_.normalize(it.image);
    std::int64_t tokens = 0;
    cr::prompt_input p;
    p.images = with_features(m, processors_.pack(normalized, hw, tokens));  // the vision tower is frozen
    p.input_ids = encode_prompt(m, it.prompt, tokens);
    return p;
  }

  consr::dpo_options dpo_opts() const {
    consr::dpo_options d;
    d.loss = lt::parse_dpo_loss_type(o_.loss_type);
    d.beta = o_.beta;
    d.length_normalize = o_.length_normalize;
    d.visual_weights = o_.visual_weights;
    return d;
  }

  // The ConSR / DPO loss of one pair (padded [1, T] sides) and its 8 metrics.
  lt::dpo_result pair_loss(const train_pair& p, const torch::Tensor& chosen_logp, const torch::Tensor& rejected_logp) {
    lt::dpo_side c, r;
    c.policy_logp = chosen_logp.unsqueeze(0);
    c.reference_logp = p.chosen_reference.unsqueeze(0);
    c.weights = p.chosen_weights.unsqueeze(0);
    r.policy_logp = rejected_logp.unsqueeze(0);
    r.reference_logp = p.rejected_reference.unsqueeze(0);
    r.weights = p.rejected_weights.unsqueeze(0);
    return lt::dpo_loss(c, r, dpo_opts());
  }

  static json metric_means(const std::vector<std::array<double, lt::dpo_metric_count>>& rows) {
    json j;
    for (int k = 0; k < lt::dpo_metric_count; ++k) {
      double s = 0;
      for (const auto& row : rows) s += row[static_cast<std::size_t>(k)];
      j[lt::to_string(static_cast<lt::dpo_metric>(k))] = rows.empty() ? std::nan("") : s / static_cast<double>(rows.size());
    }
    return j;
  }

  static std::array<double, lt::dpo_metric_count> metric_row(const lt::dpo_result& res) {
    std::array<double, lt::dpo_metric_count> row{};
    torch::Tensor m = res.metrics.to(torch::kCPU, torch::kFloat64).contiguous();
    for (int k = 0; k < lt::dpo_metric_count; ++k) row[static_cast<std::size_t>(k)] = m[0][k].item<double>();
    return row;
  }

  std::vector<std::array<double, lt::dpo_metric_count>> evaluate(model_context& m, std::vector<train_pair>& pairs) {
    torch::NoGradGuard no_grad;
    std::vector<std::array<double, lt::dpo_metric_count>> rows;
    for (auto& p : pairs) {
      const cr::prompt_input prompt = train_prompt(m, p.item);
      auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
      rows.push_back(metric_row(pair_loss(p, lp[0], lp[1])));
    }
    return rows;
  }

  std::string train(const json& settings, const std::string& hash) {
    const json report = parse_json_file(out_ / stage_files::report, "artefact");
    const json& report_pairs = report.at("pairs");
    if (report_pairs.empty())
      fail("stage 'train': report.json has no preference pairs to train on (see its selection_report)");
    model_context& m = model();

    // Visual weights (eqs. 12-13) from the clean vs corrupt token log-probs of stage 3, no gradient.
    consr::visual_weight_options wopt;
    wopt.alpha = o_.visual_alpha;
    wopt.clip_lo = o_.clip_lo;
    wopt.clip_hi = o_.clip_hi;
    std::vector<train_pair> pairs;
    for (const auto& pr : report_pairs) {
      train_pair p;
      p.item = pr.at("item").get<std::size_t>();
      const auto side = [&](const json& s, std::vector<std::int64_t>& ids, torch::Tensor& weights, consr::weight_side ws) {
        ids = s.at("token_ids").get<std::vector<std::int64_t>>();
        const torch::Tensor clean = torch::tensor(s.at("logp_clean").get<std::vector<float>>());
        const torch::Tensor corrupt = torch::tensor(s.at("logp_corrupt").get<std::vector<float>>());
        weights = lt::visual_weights(clean, corrupt, ws, wopt);
      };
      side(pr.at("chosen"), p.chosen, p.chosen_weights, consr::weight_side::chosen);
      side(pr.at("rejected"), p.rejected, p.rejected_weights, consr::weight_side::rejected);
      pairs.push_back(std::move(p));
    }

    cr::lora_config lora;
    lora.rank = o_.lora_rank;
    lora.alpha = o_.lora_alpha;
    lora.target_modules = o_.lora_targets;
    lora.seed = o_.seed;
    const std::vector<std::string> wrapped = cr::apply_lora(*m.model, lora);
    cr::mark_only_lora_trainable(*m.model);

    // Reference = the policy at LoRA init (B = 0: the base model), precomputed without gradient.
    {
      torch::NoGradGuard no_grad;
      for (auto& p : pairs) {
        const cr::prompt_input prompt = train_prompt(m, p.item);
        auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
        p.chosen_reference = lp[0].clone();
        p.rejected_reference = lp[1].clone();
      }
    }
    std::vector<std::array<double, lt::dpo_metric_count>> initial;
    for (auto& p : pairs) initial.push_back(metric_row(pair_loss(p, p.chosen_reference, p.rejected_reference)));

    // AdamW on fp32 master copies of the LoRA factors: with bf16 parameters an update of lr·O(1) =
    // 2e-7 would round away against weights of magnitude > 1e-4.
    std::vector<torch::Tensor> params = cr::lora_parameters(*m.model);
    std::vector<torch::Tensor> masters;
    const bool use_masters = m.model->dtype() != torch::kFloat32;
    for (auto& p : params) {
      if (use_masters) masters.push_back(p.detach().to(torch::kFloat32).clone().set_requires_grad(true));
    }
    torch::optim::AdamW optimizer(use_masters ? masters : params,
                                  torch::optim::AdamWOptions(o_.learning_rate).weight_decay(o_.weight_decay));

    const std::int64_t num_pairs = static_cast<std::int64_t>(pairs.size());
    const std::int64_t steps_per_epoch = (num_pairs + o_.batch_size - 1) / o_.batch_size;
    std::int64_t total_steps = steps_per_epoch * o_.epochs;
    if (o_.max_steps > 0) total_steps = std::min(total_steps, o_.max_steps);
    log_ << "  LoRA rank " << o_.lora_rank << ", alpha " << o_.lora_alpha << " on " << wrapped.size()
         << " linear layers; " << num_pairs << " pair(s), batch " << o_.batch_size << ", " << total_steps
         << " step(s), AdamW lr " << o_.learning_rate << ", loss " << o_.loss_type << " (beta " << o_.beta << ")\n";

    json steps = json::array();
    std::int64_t step = 0;
    for (std::int64_t epoch = 0; epoch < o_.epochs && step < total_steps; ++epoch) {
      // A seeded shuffle per epoch (Fisher-Yates on the counter-based uniform).
      std::vector<std::size_t> order(pairs.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      for (std::size_t i = order.size(); i > 1; --i) {
        const double u = cr::counter_uniform(o_.seed, 0x747261696eull + static_cast<std::uint64_t>(epoch), i);
        std::swap(order[i - 1], order[std::min(i - 1, static_cast<std::size_t>(u * static_cast<double>(i)))]);
      }
      for (std::int64_t start = 0; start < num_pairs && step < total_steps; start += o_.batch_size, ++step) {
        const std::int64_t end = std::min(num_pairs, start + o_.batch_size);
        optimizer.zero_grad();
        for (auto& p : params)
          if (p.grad().defined()) p.mutable_grad().zero_();
        std::vector<std::array<double, lt::dpo_metric_count>> rows;
        json batch = json::array();
        for (std::int64_t k = start; k < end; ++k) {
          train_pair& p = pairs[order[static_cast<std::size_t>(k)]];
          const cr::prompt_input prompt = train_prompt(m, p.item);
          auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
          lt::dpo_result res = pair_loss(p, lp[0], lp[1]);
          // Mean over the batch, accumulated one pair at a time (one pair's activations in memory).
          (res.loss / static_cast<double>(end - start)).backward();
          rows.push_back(metric_row(res));
          batch.push_back(order[static_cast<std::size_t>(k)]);
        }
        if (use_masters) {
          for (std::size_t k = 0; k < params.size(); ++k)
            masters[k].mutable_grad() = params[k].grad().defined() ? params[k].grad().to(torch::kFloat32)
                                                                   : torch::zeros_like(masters[k]);
        }
        optimizer.step();
        if (use_masters) {
          torch::NoGradGuard no_grad;
          for (std::size_t k = 0; k < params.size(); ++k) params[k].copy_(masters[k]);
        }
        json s = metric_means(rows);
        json entry;
        entry["step"] = step + 1;
        entry["epoch"] = epoch + 1;
        entry["pairs"] = batch;
        for (auto it = s.begin(); it != s.end(); ++it) entry[it.key()] = it.value();
        steps.push_back(entry);
        log_ << "  step " << (step + 1) << "/" << total_steps << " (epoch " << (epoch + 1) << "): dpo_loss "
             << fixed(s["dpo_loss"].get<double>(), 6) << ", objective " << fixed(s["loss"].get<double>(), 6)
             << ", reward margin " << std::scientific << std::setprecision(3) << s["reward_margin"].get<double>()
             << std::defaultfloat << ", accuracy " << fixed(s["accuracy"].get<double>(), 2) << "\n";
      }
    }
    for (const auto& s : steps)
      for (const char* k : {"loss", "dpo_loss", "reward_margin"})
        if (!std::isfinite(s[k].get<double>())) fail("stage 'train': step " + std::to_string(s["step"].get<int>()) + ": " + k + " is not finite");

    const auto final_rows = evaluate(m, pairs);
    json fin = metric_means(final_rows);
    json per_pair = json::array();
    for (const auto& row : final_rows) {
      json e;
      for (int k = 0; k < lt::dpo_metric_count; ++k) e[lt::to_string(static_cast<lt::dpo_metric>(k))] = row[static_cast<std::size_t>(k)];
      per_pair.push_back(e);
    }
    fin["per_pair"] = per_pair;

    // The adapter in PEFT's format, moved into place as a whole directory.
    const fs::path adapter = out_ / stage_files::adapter;
    const fs::path tmp = out_ / (std::string(stage_files::adapter) + ".tmp");
    fs::remove_all(tmp);
    cr::save_lora_adapter(*m.model, lora, tmp.string(), model_dir_,
                          o_.lora_naming == "transformers5" ? cr::lora_naming::transformers5 : cr::lora_naming::checkpoint);
    fs::remove_all(adapter);
    fs::rename(tmp, adapter);

    json log = artefact_header(stage::train, settings, hash);
    log["pairs"] = num_pairs;
    log["lora_modules"] = wrapped.size();
    log["initial"] = metric_means(initial);
    log["steps"] = steps;
    log["final"] = fin;
    log["adapter"] = {{"dir", stage_files::adapter}, {"files", {"adapter_model.safetensors", "adapter_config.json"}}};
    write_file_atomic(out_ / stage_files::train_log, to_text(log));
    log_ << "  after training (all pairs): dpo_loss " << fixed(fin["dpo_loss"].get<double>(), 6) << " (initial "
         << fixed(log["initial"]["dpo_loss"].get<double>(), 6) << "), reward margin " << std::scientific
         << std::setprecision(3) << fin["reward_margin"].get<double>() << std::defaultfloat << ", accuracy "
         << fixed(fin["accuracy"].get<double>(), 2) << "\n";
    return std::to_string(steps.size()) + " step(s) on " + std::to_string(num_pairs) + " pair(s); final dpo_loss " +
           fixed(fin["dpo_loss"].get<double>(), 6) + ", reward margin " + fixed(fin["reward_margin"].get<double>(), 6) +
           "; adapter -> " + stage_files::adapter + "/";
  }

  const options& o_;
  std::ostream& log_;
  std::string model_dir_, model_type_;
  processor_context processors_;
  std::vector<item> items_;
  json model_identity_;
  fs::path out_;
  model_context model_;
};

}  // namespace

std::vector<stage_result> run_pipeline(const options& o, std::ostream& log) {
  run_state state(o, log);
  return state.run();
}

}  // namespace consr_pipeline
