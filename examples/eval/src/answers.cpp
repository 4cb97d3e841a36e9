// Greedy answers in batches with shared vision features (see consr_eval/answers.hpp).
#include "consr_eval/answers.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <list>
#include <numeric>
#include <sstream>
#include <unordered_map>

#include <unistd.h>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include "consr_eval/error.hpp"
#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/tokenizer.hpp"

namespace consr_eval {
namespace fs = std::filesystem;
namespace cr = consr_runtime;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

std::string what_of(const std::exception& e) {
  if (auto c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// The processed image of one question, with its vision features (computed once per image).
struct encoded_image {
  cr::image_inputs inputs;  // features (+ image_grid_thw / image_sizes); no pixel_values
  std::int64_t tokens = 0;  // image placeholder tokens in the prompt
};

// Least-recently-used cache of encoded images keyed by path.
class feature_cache {
 public:
  explicit feature_cache(std::size_t capacity) : capacity_(std::max<std::size_t>(capacity, 1)) {}
  const encoded_image* find(const std::string& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }
  const encoded_image& insert(const std::string& key, encoded_image value) {
    order_.emplace_front(key, std::move(value));
    index_[key] = order_.begin();
    while (order_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
    return order_.front().second;
  }

 private:
  std::size_t capacity_;
  std::list<std::pair<std::string, encoded_image>> order_;
  std::unordered_map<std::string, std::list<std::pair<std::string, encoded_image>>::iterator> index_;
};

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  std::ostringstream o;
  if (s >= 3600) o << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
  else if (s >= 60) o << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
  else o << s << "s";
  return o.str();
}

// "answered 48/200 (24%)  3.10 items/s  ETA 49s" after every batch: rewritten in place on a
// terminal, else one line per tenth of the work.
class progress_line {
 public:
  progress_line(const progress_options& o, std::size_t total) : stream_(o.stream), total_(total), start_(clock_type::now()) {
    if (!stream_) return;
    in_place_ = o.mode == progress_options::style::in_place;
    if (o.mode == progress_options::style::automatic)
      in_place_ = (stream_ == &std::cerr || stream_ == &std::clog) && ::isatty(::fileno(stderr)) == 1;
  }
  void update(std::size_t done) {
    if (!stream_ || total_ == 0) return;
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : NAN;
    std::ostringstream line;
    line << "answered " << done << "/" << total_ << " (" << (100 * done / total_) << "%)  " << std::fixed
         << std::setprecision(2) << rate << " items/s  " << (done == total_ ? "took " + format_duration(elapsed)
                                                                             : "ETA " + format_duration(eta));
    if (in_place_) {
      std::string text = line.str();
      const std::size_t width = std::max(text.size(), last_width_);
      last_width_ = text.size();
      text.resize(width, ' ');
      *stream_ << '\r' << text << (done == total_ ? "\n" : "") << std::flush;
      return;
    }
    const std::size_t tenth = 10 * done / total_;
    if (done == total_ || tenth > last_tenth_) {
      last_tenth_ = tenth;
      *stream_ << line.str() << "\n" << std::flush;
    }
  }

 private:
  std::ostream* stream_;
  std::size_t total_;
  clock_type::time_point start_;
  bool in_place_ = false;
  std::size_t last_width_ = 0;
  std::size_t last_tenth_ = 0;
};

}  // namespace

const char* to_string(cr::finish_reason reason) noexcept {
  switch (reason) {
    case cr::finish_reason::stop_token: return "stop_token";
    case cr::finish_reason::length: return "length";
    case cr::finish_reason::context_full: return "context_full";
  }
  return "length";
}

std::int64_t generation_options::limit_for(const std::string& type) const {
  auto it = max_new_tokens_by_type.find(type);
  return it == max_new_tokens_by_type.end() ? max_new_tokens : it->second;
}

struct answer_generator::impl {
  std::string model_dir, adapter_dir;
  model_options options;
  std::shared_ptr<cr::vision_language_model> model;
  std::optional<cr::tokenizer> tok;
  cr::chat_format format = cr::chat_format::qwen2_5_vl;
  std::vector<std::int64_t> stop_ids;
  std::optional<cr::qwen2_vl_image_processor> qwen;
  std::optional<cr::llava_onevision_image_processor> llava;
  std::optional<cr::lora_config> adapter;
  generation_stats stats;

  // Loads and processes one image and runs the vision tower on it alone.
  encoded_image encode(const std::string& path) {
    const cr::rgb_image image = cr::load_image(path);
    encoded_image out;
    if (qwen) {
      auto packed = (*qwen)({image});
      out.inputs.pixel_values = packed.pixel_values;
      out.inputs.image_grid_thw = packed.image_grid_thw;
      out.tokens = packed.num_image_tokens.at(0);
    } else {
      auto packed = (*llava)({image});
      out.inputs.pixel_values = packed.pixel_values;
      out.inputs.image_sizes = packed.image_sizes;
      out.tokens = packed.num_image_tokens.at(0);
    }
    torch::NoGradGuard no_grad;
    out.inputs.features = model->image_features(out.inputs).detach();
    out.inputs.pixel_values = torch::Tensor();
    return out;
  }
};

answer_generator::answer_generator(const std::string& model_dir, const std::string& adapter_dir, const model_options& options)
    : impl_(std::make_unique<impl>()) {
  auto model_error = [&](const std::string& msg) {
    return error("consr_eval::answer_generator: argument 'model_dir': " + msg);
  };
  auto adapter_error = [&](const std::string& msg) {
    return error("consr_eval::answer_generator: argument 'adapter_dir': " + msg);
  };
  std::error_code ec;
  if (model_dir.empty()) throw model_error("empty (expected a Hugging Face model directory)");
  if (!fs::is_directory(model_dir, ec)) throw model_error("'" + model_dir + "' is not a directory");
  for (const char* f : {"config.json", "tokenizer.json"})
    if (!fs::is_regular_file(fs::path(model_dir) / f, ec))
      throw model_error("'" + model_dir + "' has no " + f + " (expected a Hugging Face model directory)");
  // the image-processor settings: legacy preprocessor_config.json or transformers 5.x processor_config.json
  if (!fs::is_regular_file(fs::path(model_dir) / "preprocessor_config.json", ec) &&
      !fs::is_regular_file(fs::path(model_dir) / "processor_config.json", ec))
    throw model_error("'" + model_dir +
                      "' has no preprocessor_config.json (nor a transformers 5.x processor_config.json)");
  if (!adapter_dir.empty()) {
    const fs::path a(adapter_dir);
    if (!fs::is_directory(a, ec)) throw adapter_error("'" + adapter_dir + "' is not a directory");
    if (!fs::is_regular_file(a / "adapter_config.json", ec))
      throw adapter_error("'" + adapter_dir + "' has no adapter_config.json (expected a PEFT LoRA adapter directory)");
    if (!fs::is_regular_file(a / "adapter_model.safetensors", ec)) {
      if (fs::is_regular_file(a / "adapter_model.bin", ec))
        throw adapter_error("'" + adapter_dir + "' holds adapter_model.bin (a pickle), which is not supported; save the "
                            "adapter with safe_serialization=True (the PEFT default) to get adapter_model.safetensors");
      throw adapter_error("'" + adapter_dir + "' has no adapter_model.safetensors");
    }
  }
  if (options.image_min_pixels < 0) throw error("consr_eval::answer_generator: argument 'options.image_min_pixels': must be >= 0");
  if (options.image_max_pixels < 0) throw error("consr_eval::answer_generator: argument 'options.image_max_pixels': must be >= 0");

  impl& m = *impl_;
  m.model_dir = model_dir;
  m.adapter_dir = adapter_dir;
  m.options = options;
  try {
    m.model = cr::load_model(model_dir, torch::TensorOptions().dtype(options.dtype).device(options.device));
    m.model->eval();
    m.tok = cr::tokenizer::from_directory(model_dir);
    m.format = cr::parse_chat_format(m.model->config().model_type);
    if (m.model->config().qwen2_5_vl) {
      cr::qwen2_vl_processor_config pc = cr::qwen2_vl_image_processor::from_file(model_dir).config();
      if (options.image_max_pixels > 0) pc.max_pixels = options.image_max_pixels;
      if (options.image_min_pixels > 0) pc.min_pixels = options.image_min_pixels;
      if (pc.min_pixels > pc.max_pixels)
        throw error("consr_eval::answer_generator: argument 'options.image_max_pixels': max_pixels " +
                    std::to_string(pc.max_pixels) + " is below min_pixels " + std::to_string(pc.min_pixels));
      m.qwen.emplace(pc);
    } else {
      m.llava.emplace(cr::llava_onevision_image_processor::from_directory(model_dir));
    }
  } catch (const error&) {
    throw;
  } catch (const std::exception& e) {
    throw model_error(what_of(e));
  }
  m.stop_ids = cr::chat_stop_token_ids(*m.tok);
  if (!adapter_dir.empty()) {
    try {
      m.adapter = cr::load_lora_adapter(*m.model, adapter_dir);
    } catch (const std::exception& e) {
      throw adapter_error(what_of(e));
    }
  }
}

answer_generator::~answer_generator() = default;
answer_generator::answer_generator(answer_generator&&) noexcept = default;
answer_generator& answer_generator::operator=(answer_generator&&) noexcept = default;

cr::vision_language_model& answer_generator::model() { return *impl_->model; }
const cr::tokenizer& answer_generator::tokenizer() const { return *impl_->tok; }
const std::string& answer_generator::model_dir() const { return impl_->model_dir; }
const std::string& answer_generator::adapter_dir() const { return impl_->adapter_dir; }
const std::optional<cr::lora_config>& answer_generator::adapter() const { return impl_->adapter; }
const generation_stats& answer_generator::last_stats() const { return impl_->stats; }

std::vector<std::int64_t> answer_generator::encode_prompt(const std::string& prompt, std::int64_t image_tokens) const {
  const std::string chat = cr::render_chat(
      impl_->format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(prompt)}}});
  // The placeholder is an added token, so the text around it tokenizes alone: expanding it after
  // encoding gives the ids of expanding the text first (the pipeline's order; tested), without
  // running the tokenizer over thousands of placeholders (LLaVA-OV: ~1.5 k per image).
  return cr::expand_image_tokens(impl_->tok->encode(chat), impl_->model->image_token_id(), {image_tokens});
}

std::vector<answer> answer_generator::generate(const std::vector<question>& questions, const generation_options& options,
                                               const progress_options& progress) {
  const char* fn = "consr_eval::answer_generator::generate: ";
  if (options.batch_size < 1) throw error(std::string(fn) + "argument 'options.batch_size': must be >= 1, got " + std::to_string(options.batch_size));
  if (options.max_new_tokens < 1)
    throw error(std::string(fn) + "argument 'options.max_new_tokens': must be >= 1, got " + std::to_string(options.max_new_tokens));
  for (const auto& [type, limit] : options.max_new_tokens_by_type)
    if (limit < 1)
      throw error(std::string(fn) + "argument 'options.max_new_tokens_by_type': type '" + type + "' has limit " +
                  std::to_string(limit) + " (must be >= 1)");
  if (options.feature_cache_images < 1) throw error(std::string(fn) + "argument 'options.feature_cache_images': must be >= 1");

  impl& m = *impl_;
  const auto t0 = clock_type::now();
  m.stats = generation_stats{};
  m.stats.questions = questions.size();
  std::vector<answer> answers(questions.size());
  if (questions.empty()) return answers;

  // Group by token limit (one generate() call has one limit), then by image (its questions share
  // the cached features and usually a batch), then by prompt length (less padding); the sort is
  // stable, so equal keys keep the file order.
  std::vector<std::size_t> order(questions.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<std::int64_t> limits(questions.size());
  for (std::size_t i = 0; i < questions.size(); ++i) limits[i] = options.limit_for(questions[i].type);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (limits[a] != limits[b]) return limits[a] < limits[b];
    if (questions[a].image != questions[b].image) return questions[a].image < questions[b].image;
    return questions[a].prompt.size() < questions[b].prompt.size();
  });

  feature_cache cache(options.feature_cache_images);
  progress_line line(progress, questions.size());
  cr::sampling_options sampling;
  sampling.temperature = 0.0;
  sampling.top_p = 1.0;
  sampling.stop_token_ids = m.stop_ids;
  std::size_t done = 0;
  for (std::size_t begin = 0; begin < order.size();) {
    // One batch: up to batch_size questions with the same limit.
    std::size_t end = begin;
    while (end < order.size() && end - begin < static_cast<std::size_t>(options.batch_size) &&
           limits[order[end]] == limits[order[begin]])
      ++end;
    std::vector<cr::prompt_input> prompts;
    prompts.reserve(end - begin);
    for (std::size_t k = begin; k < end; ++k) {
      const question& q = questions[order[k]];
      const encoded_image* enc = cache.find(q.image);
      if (!enc) {
        try {
          enc = &cache.insert(q.image, m.encode(q.image));
        } catch (const std::exception& e) {
          throw error(std::string(fn) + "argument 'questions': question '" + q.id + "': image '" + q.image + "': " + what_of(e));
        }
        ++m.stats.images_encoded;
      }
      cr::prompt_input p;
      p.images = enc->inputs;
      p.input_ids = encode_prompt(q.prompt, enc->tokens);
      prompts.push_back(std::move(p));
    }
    sampling.max_new_tokens = limits[order[begin]];
    std::vector<cr::generation_result> results;
    try {
      results = cr::generate(*m.model, prompts, sampling);
    } catch (const std::exception& e) {
      std::string ids;
      for (std::size_t k = begin; k < end; ++k) ids += (ids.empty() ? "'" : ", '") + questions[order[k]].id + "'";
      throw error(std::string(fn) + "argument 'questions': generating the answers of questions " + ids + ": " + what_of(e));
    }
    for (std::size_t k = begin; k < end; ++k) {
      const question& q = questions[order[k]];
      cr::generation_result& r = results[k - begin];
      answer& a = answers[order[k]];
      a.id = q.id;
      a.text = m.tok->decode(r.token_ids, /*skip_special=*/true);
      a.tokens = static_cast<std::int64_t>(r.token_ids.size());
      a.token_ids = std::move(r.token_ids);
      a.reason = r.reason;
      m.stats.generated_tokens += a.tokens;
    }
    ++m.stats.batches;
    done += end - begin;
    begin = end;
    line.update(done);
  }
  m.stats.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  return answers;
}

json answer_record(const question& q, const answer& a) {
  json id = q.id;
  const char* key = q.type == "pope" ? "question_id" : "id";
  if (q.record.is_object() && q.record.contains(key)) id = q.record[key];
  return json{{"id", id}, {"answer", a.text}, {"tokens", a.tokens}};
}

void write_answers_jsonl(const std::string& path, const std::vector<question>& questions, const std::vector<answer>& answers) {
  const std::string fn = "consr_eval::write_answers_jsonl: ";
  if (questions.size() != answers.size())
    throw error(fn + "argument 'answers': " + std::to_string(answers.size()) + " answers for " +
                std::to_string(questions.size()) + " questions");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw error(fn + "argument 'path': cannot write '" + tmp + "'");
    for (std::size_t i = 0; i < questions.size(); ++i) {
      if (answers[i].id != questions[i].id)
        throw error(fn + "argument 'answers': answer " + std::to_string(i) + " has id '" + answers[i].id +
                    "' but question " + std::to_string(i) + " has id '" + questions[i].id + "'");
      out << answer_record(questions[i], answers[i]).dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    }
    out.flush();
    if (!out) throw error(fn + "argument 'path': write error on '" + tmp + "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw error(fn + "argument 'path': cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

}  // namespace consr_eval
