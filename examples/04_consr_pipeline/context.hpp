// examples/04_consr_pipeline/context.hpp — what the stages share: the input items, the model family's
// image processor, the model (loaded on first use), the artefact store, the random keys, and the
// prompt helpers. One run_context lives for one run_pipeline call.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <consr/random.hpp>
#include <torch/torch.h>

#include "artefacts.hpp"
#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/distributed.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "pipeline.hpp"

namespace consr_pipeline {

namespace cr = consr_runtime;
using clock_type = std::chrono::steady_clock;

/// Throws pipeline_error("consr_pipeline: " + message).
[[noreturn]] void fail(const std::string& message);

double seconds_since(clock_type::time_point t0);
/// `x` with `digits` fixed decimals.
std::string fixed(double x, int digits);
std::string trim(const std::string& s);
/// Removes every occurrence of each string in `needles`.
std::string remove_all(std::string text, const std::vector<std::string>& needles);
/// Replaces each "{Name}" slot of `tmpl` in one left-to-right pass (substituted text is not rescanned).
std::string fill_template(const std::string& tmpl, const std::vector<std::pair<std::string, std::string>>& slots);
/// The placeholders that stand for image / video features: a response holding one cannot be scored
/// (the model would expect features for it) nor trained on by LLaMA-Factory / LLaVA.
const std::vector<std::string>& feature_placeholder_strings();

// ---- input ------------------------------------------------------------------------------------------

struct item {
  std::string id;
  std::string image;       ///< absolute, normalized path
  std::string image_hash;  ///< FNV-1a of the file
  std::string prompt;      ///< placeholders removed, trimmed
};

/// The items of --input (or the embedded default), checked (input.cpp).
std::vector<item> load_items(const options& o);

// ---- random keys (spec §3 "Randomness"): all of them consr::derive_key of the run seed's streams --

/// Sampling streams (runtime `generate` draws from (seed, key, step)): key = derive_key(0, index,
/// {kind, 4}, {k, 2^24}) = ((index·4 + kind) << 24) | k, so a sample does not depend on its batch.
enum class sample_kind : std::uint64_t { description = 0, sampled = 1, revised = 2, noisy = 3 };
inline std::uint64_t sample_key(std::size_t index, sample_kind kind, std::int64_t k) {
  return consr::derive_key(0, index, {static_cast<std::uint64_t>(kind), 4},
                           {static_cast<std::uint64_t>(k), std::uint64_t{1} << 24});
}

/// Diffusion-noise streams: Philox with seed = run seed and offset derive_key(0, item, {use, 2}) =
/// 2·item + use, one stream per item and use (torch.ops.consr.add_diffusion_noise(x, seed, offset, step)).
enum class noise_use : std::uint64_t { noisy_sampling = 0, reward = 1 };
inline consr::rng_key noise_key(std::uint64_t seed, std::size_t item_index, noise_use use) {
  return {seed, consr::derive_key(0, item_index, {static_cast<std::uint64_t>(use), 2})};
}

/// The training pair order's stream of `epoch` (counter_uniform(seed, stream, i)): derive_key("train", epoch).
inline std::uint64_t shuffle_stream(std::int64_t epoch) {
  constexpr std::uint64_t train_tag = 0x747261696eull;  // "train" in ASCII
  return consr::derive_key(train_tag, static_cast<std::uint64_t>(epoch));
}

// ---- the model ----------------------------------------------------------------------------------------

struct model_context {
  std::shared_ptr<cr::vision_language_model> model;
  std::optional<cr::tokenizer> tok;
  cr::chat_format format = cr::chat_format::qwen2_5_vl;
  std::int64_t end_of_turn = -1;
  std::vector<std::int64_t> stop_ids;
  std::set<std::int64_t> placeholder_ids;      ///< image / video tokens a response must not contain
  std::vector<std::string> added_token_texts;  ///< stripped from generated text used inside a prompt
};

/// One image after the processor's first stage (the clean normalized tensor, where noise goes) and
/// the decoded image's (height, width).
struct normalized_image {
  torch::Tensor pixels;
  std::array<std::int64_t, 2> hw{0, 0};
};

/// The run: options, items, processor, model identity, the artefact store and the model.
class run_context {
 public:
  run_context(const options& o, std::ostream& log) : o(o), log(log) {}

  /// Checks the options, the device, the model directory (config, processor settings, tokenizer,
  /// safetensors headers and index) and the items (every image decodes, the processor accepts its
  /// size, and the scores its vision attention holds at once, query chunk by query chunk, fit
  /// --memory-limit-gb: cr::vision_attention_bytes), computes the model identity, then creates
  /// the output directory and locks it (output_lock).
  void prepare();

  const options& o;
  std::ostream& log;
  /// The ranks of a data-parallel run (a group of one without a launcher): rank 0 owns the output
  /// directory (creates, locks and writes the artefacts); every rank computes its share of the
  /// items and checkpoints it (docs/distributed.md).
  std::shared_ptr<cr::process_group> dist;
  std::string model_dir, model_type;
  std::unique_ptr<cr::image_processor> processor;
  std::vector<item> items;
  json model_identity;  ///< directory, config hash, weight file sizes, pixel bounds, dtype, device
  artefact_store store;
  output_lock lock;  ///< held for the whole run

  /// The model and tokenizer, loaded on first use.
  model_context& model();
  /// The device this rank computes on: --device, with a bare "cuda" made "cuda:<LOCAL_RANK>" when
  /// several ranks run.
  std::string device() const;
  bool is_root() const { return !dist || dist->is_root(); }
  /// The tokenizer alone (read and checked by prepare; the write stage re-tokenizes with it).
  const cr::tokenizer& tokenizer() const { return *tok_; }

  // ---- settings helpers ---------------------------------------------------------------------------
  json items_json() const;
  /// The distinct images, in item order.
  std::vector<std::string> unique_images() const;
  std::string image_hash(const std::string& path) const;
  /// image path → description text, from descriptions.json.
  std::map<std::string, std::string> descriptions() const;

  // ---- images and prompts --------------------------------------------------------------------------
  normalized_image normalize(const std::string& path) const;
  /// The processor's second stage; `image_tokens` receives the LLM image token count.
  cr::image_inputs pack(const torch::Tensor& normalized, const std::array<std::int64_t, 2>& hw,
                        std::int64_t& image_tokens) const;
  /// Diffusion noise on the normalized image (spec §3), step `step` of --noise-schedule.
  torch::Tensor add_noise(const torch::Tensor& normalized, consr::rng_key key, int step) const;
  /// Runs the vision tower once (no gradient) and returns the inputs with `features` in place of
  /// the pixels (Qwen keeps image_grid_thw for the mRoPE positions).
  cr::image_inputs with_features(cr::image_inputs in);
  /// The prompt ids of one user turn: the image, then `text`; the placeholder expanded to
  /// `image_tokens`; the assistant turn opened.
  std::vector<std::int64_t> encode_prompt(const std::string& text, std::int64_t image_tokens);
  /// Generated text that goes into another prompt: no added tokens (so no stray image placeholder).
  std::string prompt_safe(const std::string& generated);
  cr::sampling_options sampling(std::int64_t max_new_tokens, double temperature);

 private:
  model_context model_;
  std::optional<cr::tokenizer> tok_;
};

/// "stop_token" / "length" / "context_full".
const char* finish_name(cr::finish_reason r);

}  // namespace consr_pipeline
