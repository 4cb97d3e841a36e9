// consr_eval/answers.hpp — greedy answers of a vision-language model (optionally with a LoRA
// adapter in PEFT's format) to a list of questions, in batches.
//
//   consr_eval::answer_generator gen("/models/Qwen2.5-VL-7B-Instruct", "run1/adapter",
//                                    {torch::kBFloat16, torch::kCUDA});
//   consr_eval::generation_options g;                 // batch 16, 16 new tokens, descriptions 64
//   consr_eval::progress_options p;  p.stream = &std::cerr;
//   std::vector<consr_eval::answer> answers = gen.generate(load_questions("world/val.jsonl").questions, g, p);
//
// Every prompt is the pipeline's user turn (examples/04_consr_pipeline): the model's chat template
// (consr_runtime::render_chat; Qwen2.5-VL adds its default system prompt) with one user message holding
// the image, then the question text; the assistant turn opened. Decoding is greedy (temperature 0),
// stopping at <|im_end|> / <|endoftext|> or at the question type's max_new_tokens.
//
// Speed: questions are grouped by their token limit and, within a group, ordered by image, so that
// the questions about one image share a batch; each distinct image is loaded, processed and run
// through the vision tower once (the features are cached, `feature_cache_images` images, and passed
// to the model as image_inputs::features). A batch is one left-padded prefill plus one decoding
// step per new token for the rows still running. Answers come back in the questions' order and do
// not depend on the batch size (greedy decoding of a row is batch-independent up to floating-point
// ties; the features of an image are computed alone, so they are bit-identical in any batch).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "consr_eval/questions.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/lora.hpp"
#include "consr_runtime/models.hpp"

namespace consr_eval {

/// How the model is loaded.
struct model_options {
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  /// Qwen2.5-VL resize bounds (0 = the directory's preprocessor_config.json), as the pipeline's
  /// --image-max-pixels / --image-min-pixels. Ignored for LLaVA-OneVision.
  std::int64_t image_max_pixels = 0;
  std::int64_t image_min_pixels = 0;
};

/// How answers are generated.
struct generation_options {
  std::int64_t batch_size = 16;      ///< rows per generate() call, ≥ 1
  std::int64_t max_new_tokens = 16;  ///< limit of every question type not in max_new_tokens_by_type, ≥ 1
  /// Per-type limits (question::type → limit ≥ 1); descriptions need more than yes/no answers.
  std::map<std::string, std::int64_t> max_new_tokens_by_type{{"description", 64}};
  std::size_t feature_cache_images = 64;  ///< distinct images whose vision features are kept, ≥ 1

  /// The limit of a question of type `type`.
  std::int64_t limit_for(const std::string& type) const;
};

/// Where and how progress is reported: "answered 48/200 (24%)  3.1 items/s  ETA 49 s".
struct progress_options {
  std::ostream* stream = nullptr;  ///< nullptr: silent (the library prints nothing unless asked)
  enum class style {
    automatic,  ///< in_place when `stream` is std::cerr / std::clog and stderr is a terminal, else lines
    in_place,   ///< one line rewritten with '\r' after every batch, ended by '\n'
    lines,      ///< a new line at each tenth of the work and at the end (logs, CI)
  } mode = style::automatic;
};

/// One answer.
struct answer {
  std::string id;                        ///< the question's id
  std::string text;                      ///< decoded answer, special tokens skipped
  std::vector<std::int64_t> token_ids;   ///< generated tokens, the stop token excluded
  std::int64_t tokens = 0;               ///< token_ids.size()
  consr_runtime::finish_reason reason = consr_runtime::finish_reason::length;
};

/// "stop_token" / "length" / "context_full".
const char* to_string(consr_runtime::finish_reason reason) noexcept;

/// Timing of the last generate() call.
struct generation_stats {
  std::size_t questions = 0;
  std::size_t batches = 0;
  std::size_t images_encoded = 0;   ///< vision forwards (distinct images, cache misses)
  std::int64_t generated_tokens = 0;
  double seconds = 0.0;             ///< wall time of generate(), image loading included
  double items_per_second() const { return seconds > 0 ? static_cast<double>(questions) / seconds : 0.0; }
};

/// A loaded model (+ adapter), its tokenizer, chat format and image processor.
class answer_generator {
 public:
  /// Loads `model_dir` (consr_runtime::load_model) and, unless `adapter_dir` is empty, attaches the
  /// PEFT LoRA adapter there (consr_runtime::load_lora_adapter: the pipeline's `adapter/` or one saved
  /// by PEFT's save_pretrained with safetensors). Throws consr_eval::error naming argument
  /// 'model_dir' (not a directory, no config.json / tokenizer.json / preprocessor_config.json, or the
  /// runtime's load error) or 'adapter_dir' (not a directory, no adapter_config.json, no
  /// adapter_model.safetensors — a pickled adapter_model.bin is named as unsupported — or the
  /// runtime's load error, e.g. a module outside the language model).
  answer_generator(const std::string& model_dir, const std::string& adapter_dir = "", const model_options& options = {});
  ~answer_generator();
  answer_generator(answer_generator&&) noexcept;
  answer_generator& operator=(answer_generator&&) noexcept;

  /// Greedy answers to `questions`, in their order. Throws consr_eval::error naming the option
  /// ('options.batch_size', ...) or the question (id and image) whose image cannot be read or
  /// processed; the model's own errors (e.g. a prompt longer than the context) name the question.
  std::vector<answer> generate(const std::vector<question>& questions, const generation_options& options = {},
                               const progress_options& progress = {});

  /// The prompt token ids of one question: the rendered user turn with the image placeholder
  /// expanded to `image_tokens` (equal to the pipeline's encode(expand_image_placeholders(...)),
  /// expanded after encoding, which is much faster for LLaVA-OV's thousands of image tokens).
  std::vector<std::int64_t> encode_prompt(const std::string& prompt, std::int64_t image_tokens) const;

  consr_runtime::vision_language_model& model();
  const consr_runtime::tokenizer& tokenizer() const;
  const std::string& model_dir() const;
  const std::string& adapter_dir() const;  ///< "" without adapter
  /// The adapter's config as read (rank, alpha, target suffixes); empty without adapter.
  const std::optional<consr_runtime::lora_config>& adapter() const;
  const generation_stats& last_stats() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// The answers file line of one question: {"id", "answer", "tokens"}, `id` as the questions file
/// wrote it (string or integer; POPE's `question_id`).
nlohmann::json answer_record(const question& q, const answer& a);

/// Writes one answer_record per line (questions[i] ↔ answers[i]) to `path`, through `path`.tmp and
/// a rename. Throws consr_eval::error naming argument 'path' on I/O failure and 'answers' on a count
/// or id mismatch.
void write_answers_jsonl(const std::string& path, const std::vector<question>& questions, const std::vector<answer>& answers);

}  // namespace consr_eval
