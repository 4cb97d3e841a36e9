// The run context shared by the stages (see context.hpp).
#include "context.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <system_error>

#include <unistd.h>

#include <consr/adapters/torch.hpp>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/config.hpp"
#include "consr_runtime/device.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/safetensors.hpp"

namespace consr_pipeline {

namespace fs = std::filesystem;
namespace lt = consr::libtorch;

void fail(const std::string& message) { throw pipeline_error("consr_pipeline: " + message); }

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string fixed(double x, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << x;
  return os.str();
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::string remove_all(std::string text, const std::vector<std::string>& needles) {
  for (const auto& n : needles) {
    if (n.empty()) continue;
    for (std::size_t pos = text.find(n); pos != std::string::npos; pos = text.find(n, pos)) text.erase(pos, n.size());
  }
  return text;
}

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

const std::vector<std::string>& feature_placeholder_strings() {
  static const std::vector<std::string> s{"<image>", "<video>", "<|image_pad|>", "<|video_pad|>"};
  return s;
}

const char* finish_name(cr::finish_reason r) {
  switch (r) {
    case cr::finish_reason::stop_token: return "stop_token";
    case cr::finish_reason::length: return "length";
    case cr::finish_reason::context_full: return "context_full";
  }
  return "unknown";
}

// ---- prepare ------------------------------------------------------------------------------------------

namespace {

// The model family's image processor, with --image-max-pixels / --image-min-pixels applied.
std::unique_ptr<cr::image_processor> make_processor(const options& o, const cr::model_config& config,
                                                    const std::string& model_dir) {
  std::unique_ptr<cr::image_processor> p = cr::make_image_processor(config, model_dir);
  if (o.image_max_pixels == 0 && o.image_min_pixels == 0) return p;
  const std::optional<cr::pixel_bounds> file_bounds = p->bounds();
  if (!file_bounds)
    fail("argument '--image-max-pixels': applies to Qwen2.5-VL only (the " + config.model_type +
         " processor has no pixel bounds)");
  cr::pixel_bounds b = *file_bounds;
  if (o.image_max_pixels > 0) b.max_pixels = o.image_max_pixels;
  if (o.image_min_pixels > 0) b.min_pixels = o.image_min_pixels;
  if (b.min_pixels > b.max_pixels)
    fail(std::string("argument '") + (o.image_max_pixels > 0 ? "--image-max-pixels" : "--image-min-pixels") +
         "': max_pixels " + std::to_string(b.max_pixels) + " is below min_pixels " + std::to_string(b.min_pixels));
  return cr::make_image_processor(config, model_dir, b);
}

}  // namespace

namespace {

// "68.7 GB", "0.0001 GB"; below 100 kB in bytes ("1536 bytes"), which 4 decimals of GB would show as 0.
std::string gigabytes(double bytes) {
  if (bytes < 1e5) return std::to_string(static_cast<long long>(std::llround(bytes))) + " bytes";
  return fixed(bytes / 1e9, bytes < 1e8 ? 4 : 1) + " GB";
}

// The memory the vision attention of one image may use (bytes) and where the limit comes from; 0 = none.
std::pair<double, std::string> attention_memory_limit(const options& o) {
  if (o.memory_limit_gb > 0) return {o.memory_limit_gb * 1e9, "--memory-limit-gb"};
  if (o.device != "cpu") return {0.0, ""};  // the GPU's memory is not known here
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return {0.0, ""};
  return {static_cast<double>(pages) * static_cast<double>(page), "the machine's physical memory; --memory-limit-gb"};
}

}  // namespace

void run_context::prepare() {
  validate_options(o);
  try {
    (void)cr::parse_device(device(), "--device");
  } catch (const cr::runtime_error& e) {
    fail(e.what());
  }
  // The model directory first: the processor it names validates the images. Everything a damaged
  // model would fail on later is read here, before --out is created: the config, the processor
  // settings, tokenizer.json and every safetensors header (and the index of a sharded checkpoint).
  model_dir = fs::absolute(o.model_dir).lexically_normal().string();
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) fail("argument '--model': '" + o.model_dir + "' is not a directory");
  if (!fs::is_regular_file(fs::path(model_dir) / "config.json", ec))
    fail("argument '--model': '" + o.model_dir + "' has no config.json (expected a Hugging Face model directory)");
  const cr::model_config config = cr::load_model_config(model_dir);
  model_type = config.model_type;
  if (!fs::is_regular_file(fs::path(model_dir) / "preprocessor_config.json", ec) &&
      !fs::is_regular_file(fs::path(model_dir) / "processor_config.json", ec))
    fail("argument '--model': '" + o.model_dir + "' has no preprocessor_config.json (nor a transformers 5.x processor_config.json)");
  processor = make_processor(o, config, model_dir);
  if (!fs::is_regular_file(fs::path(model_dir) / "tokenizer.json", ec))
    fail("argument '--model': '" + o.model_dir + "' has no tokenizer.json");
  try {
    tok_ = cr::tokenizer::from_directory(model_dir);
    (void)cr::checkpoint(model_dir);  // validates the headers and the offsets against the file sizes
  } catch (const cr::runtime_error& e) {
    fail("argument '--model': '" + o.model_dir + "' is damaged: " + e.what());
  }

  items = load_items(o);
  // Every image must decode and be accepted by the processor before anything is written (decoding
  // and the size rules only: the resize itself happens when a stage needs the pixels), and the
  // scores its vision attention holds at once must fit in memory: query chunks of the runtime's
  // budget (CONSR_ATTENTION_CHUNK_ELEMENTS, 2^26 scores by default), e.g. 0.54 GB for a 10000 x
  // 10000 image at the hub's max_pixels on the tiny fixture (unchunked it would be 67 GB).
  const auto [limit, limit_source] = attention_memory_limit(o);
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string which = "item " + std::to_string(i) + " (id '" + items[i].id + "'): image '" + items[i].image + "'";
    cr::vision_workload w;
    std::string size;
    try {
      const cr::rgb_image image = cr::load_image(items[i].image);
      processor->check_size(image.height(), image.width());
      w = processor->workload(image.height(), image.width());
      size = std::to_string(image.width()) + "x" + std::to_string(image.height());
    } catch (const std::exception& e) {
      fail(which + " cannot be used: " + e.what());
    }
    double need = 0;
    try {
      need = cr::vision_attention_bytes(config, w);
    } catch (const cr::runtime_error& e) {  // CONSR_ATTENTION_CHUNK_ELEMENTS that is not a positive integer
      fail(e.what());
    }
    if (limit > 0 && need > limit)
      fail(which + " (" + size + ") is processed to " + std::to_string(w.sequences) + " x " +
           std::to_string(w.sequence_length) + " vision patches (" + std::to_string(w.image_tokens) +
           " image tokens); the vision attention would need about " + gigabytes(need) +
           " at once (scores of one query chunk, CONSR_ATTENTION_CHUNK_ELEMENTS), more than the " + gigabytes(limit) +
           " limit (" + limit_source + ")" + (processor->bounds() ? "; lower --image-max-pixels" : ""));
  }
  // Model identity for the fingerprints: directory, config.json, and the weight files' sizes
  // (hashing a 16 GB checkpoint on every run would cost minutes).
  model_identity = json::object();
  model_identity["dir"] = model_dir;
  model_identity["model_type"] = model_type;
  model_identity["config_fnv1a"] = fnv1a_hex(read_file(fs::path(model_dir) / "config.json", "model config"));
  json weights = json::array();
  std::vector<fs::path> weight_files;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors"))
      weight_files.push_back(e.path());
  }
  std::sort(weight_files.begin(), weight_files.end());
  for (const auto& f : weight_files) weights.push_back(json::array({f.filename().string(), fs::file_size(f)}));
  model_identity["weights"] = weights;
  if (const std::optional<cr::pixel_bounds> b = processor->bounds()) {
    model_identity["image_min_pixels"] = b->min_pixels;
    model_identity["image_max_pixels"] = b->max_pixels;
  }
  model_identity["dtype"] = o.dtype;
  model_identity["device"] = o.device;

  // Rank 0 creates and locks the output directory; the other ranks find it there after the barrier
  // (every rank must see the same --out: one machine, or a shared file system).
  const fs::path out = fs::absolute(o.output_dir).lexically_normal();
  if (is_root()) {
    fs::create_directories(out, ec);
    if (!fs::is_directory(out, ec)) fail("argument '--out': cannot create directory '" + o.output_dir + "'");
    lock = output_lock(out);  // a second run on the same --out stops here, naming the holder
  }
  if (dist) dist->barrier("waiting for rank 0 to create and lock --out");
  if (!is_root() && !fs::is_regular_file(out / lock_file_name, ec))
    fail("argument '--out': rank " + std::to_string(dist->rank()) + " does not see '" + out.string() +
         "/" + lock_file_name + "' that rank 0 created: every rank must see the same --out (one machine or a shared "
         "file system)");
  store = artefact_store(out);
}

std::string run_context::device() const {
  if (o.device == "cuda" && dist && dist->size() > 1) return "cuda:" + std::to_string(dist->env().local_rank);
  return o.device;
}

// ---- the model ------------------------------------------------------------------------------------------

model_context& run_context::model() {
  if (model_.model) return model_;
  const auto t0 = clock_type::now();
  const torch::Dtype dtype = o.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
  model_.model = cr::load_model(model_dir, torch::TensorOptions().dtype(dtype).device(torch::Device(device())));
  model_.model->eval();
  model_.tok = *tok_;
  model_.format = cr::parse_chat_format(model_.model->config().model_type);
  model_.end_of_turn = model_.tok->token_id("<|im_end|>");
  model_.stop_ids = cr::chat_stop_token_ids(*model_.tok);
  for (std::int64_t id : processor->feature_token_ids()) model_.placeholder_ids.insert(id);
  for (const auto& s : feature_placeholder_strings())
    if (auto id = model_.tok->find_token(s)) model_.placeholder_ids.insert(*id);
  for (const auto& t : model_.tok->added_tokens()) model_.added_token_texts.push_back(t.content);
  log << "  model loaded in " << fixed(seconds_since(t0), 2) << " s\n";
  return model_;
}

std::string run_context::prompt_safe(const std::string& generated) {
  return trim(remove_all(generated, model().added_token_texts));
}

cr::sampling_options run_context::sampling(std::int64_t max_new_tokens, double temperature) {
  cr::sampling_options s;
  s.max_new_tokens = max_new_tokens;
  s.temperature = temperature;
  s.top_p = o.top_p;
  s.seed = o.seed;
  s.stop_token_ids = model().stop_ids;
  return s;
}

// ---- settings helpers -------------------------------------------------------------------------------------

json run_context::items_json() const {
  json a = json::array();
  for (const auto& it : items)
    a.push_back({{"id", it.id}, {"image", it.image}, {"image_fnv1a", it.image_hash}, {"prompt", it.prompt}});
  return a;
}

std::vector<std::string> run_context::unique_images() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& it : items)
    if (seen.insert(it.image).second) out.push_back(it.image);
  return out;
}

std::string run_context::image_hash(const std::string& path) const {
  for (const auto& it : items)
    if (it.image == path) return it.image_hash;
  return "";
}

std::map<std::string, std::string> run_context::descriptions() const {
  const json d = store.read(files::descriptions);
  std::map<std::string, std::string> out;
  for (const auto& e : d.at("descriptions")) out[e.at("image").get<std::string>()] = e.at("text").get<std::string>();
  return out;
}

// ---- images and prompts -------------------------------------------------------------------------------------

normalized_image run_context::normalize(const std::string& path) const {
  const cr::rgb_image image = cr::load_image(path);
  normalized_image n;
  n.hw = {image.height(), image.width()};
  n.pixels = processor->normalize(image);
  return n;
}

cr::image_inputs run_context::pack(const torch::Tensor& normalized, const std::array<std::int64_t, 2>& hw,
                                   std::int64_t& image_tokens) const {
  cr::packed_image p = processor->pack(normalized, hw[0], hw[1]);
  cr::image_inputs in;
  in.pixel_values = p.pixel_values;
  in.image_grid_thw = p.image_grid_thw;
  in.image_sizes = p.image_sizes;
  image_tokens = p.num_image_tokens;
  return in;
}

torch::Tensor run_context::add_noise(const torch::Tensor& normalized, consr::rng_key key, int step) const {
  torch::NoGradGuard no_grad;
  consr::diffusion_noise_options noise;
  noise.step = step;
  noise.schedule = consr::parse_noise_schedule(o.noise_schedule);  // validated by validate_options
  return lt::add_diffusion_noise(normalized, key, noise);
}

cr::image_inputs run_context::with_features(cr::image_inputs in) {
  torch::NoGradGuard no_grad;
  in.features = model().model->image_features(in).detach();
  in.pixel_values = torch::Tensor();
  return in;
}

std::vector<std::int64_t> run_context::encode_prompt(const std::string& text, std::int64_t image_tokens) {
  model_context& m = model();
  const std::string chat = cr::render_chat(
      m.format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(text)}}});
  return m.tok->encode(cr::expand_image_placeholders(m.format, chat, {image_tokens}));
}

}  // namespace consr_pipeline
