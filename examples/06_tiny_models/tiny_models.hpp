// tiny_models.hpp — training the two small vision-language models of the project from random
// initialisation (issue 13): a Qwen2.5-VL-like and a LLaVA-OneVision-like model, the runtime's real
// architectures (consr_runtime::qwen2_5_vl_model / llava_onevision_model) at small sizes, with a
// byte-level BPE tokenizer trained on the world's text, full-parameter SFT on (image, question) ->
// answer and image -> description, saved as ordinary Hugging Face checkpoint directories.
//
// Data contract (consr_world, examples/world/include/consr_world/dataset.hpp): DIR/<split>.jsonl, one
// question per line {"id", "image" (relative to DIR), "prompt", "answer", "type", ...}; the images are
// PNGs decoded with consr_runtime::load_image. Nothing else of the world is read.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

namespace consr_tiny {

/// One line of a <split>.jsonl.
struct example {
  std::string id;
  std::string image;   ///< absolute (or DIR-relative resolved) path of the PNG
  std::string prompt;
  std::string answer;
  std::string type;    ///< existence | colour | count | position | reading | description
  std::string label;   ///< existence only: "yes" / "no" (may be empty)
  std::string pope;    ///< existence only: "random" / "popular" / "adversarial" (may be empty)
  std::string scene;   ///< the image's scene id (may be empty)
  /// How the prompt was made: "" (the world's question), "paper_description" (App. B.1's description
  /// prompt), "enriched" (App. B.1's enriched prompt with the scene's reference description) or
  /// "revision" (App. B.1's revision prompt; the answer is the reference). See augment().
  std::string variant;
};

/// The paper's three prompt templates (ConSR App. B.1), byte for byte those of the pipeline
/// (examples/04_consr_pipeline paper_prompts(); a test checks they agree).
struct paper_prompt_texts {
  std::string description, revision, enriched;
};
paper_prompt_texts paper_prompts();

/// How many of the training questions are also shown in the paper's prompt formats, so that the model
/// can follow the pipeline's description, revision and enriched prompts (docs/tiny-models.md).
struct augment_options {
  double paper_description = 0;  ///< share of description questions repeated with App. B.1's prompt
  double enriched = 0;           ///< share of short-answer questions repeated with the enriched prompt
  double revision = 0;           ///< share of short-answer questions repeated as a revision
  std::uint64_t seed = 0;
};

/// The extra examples: each is a copy of a training question (same image, type and answer) whose
/// prompt is one of the paper's templates, filled with the scene's reference description (the
/// world's description answer of the same scene) and, for a revision, an original response that is
/// the reference (half of them) or a wrong answer of the same type taken from another question.
/// Which questions are copied is a pure function of the seed. Questions without a scene description
/// are not copied.
std::vector<example> augment(const std::vector<example>& train, const augment_options& options);

/// Reads DIR/<split>.jsonl (image paths resolved against DIR). Throws std::runtime_error naming the
/// file and line for unreadable files, invalid JSON or a missing/mistyped required field.
std::vector<example> read_split(const std::string& world_dir, const std::string& split);

/// Architecture sizes (the defaults are the committed models').
struct model_sizes {
  std::int64_t hidden = 128;
  std::int64_t layers = 2;
  std::int64_t heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t intermediate = 384;
  std::int64_t vision_hidden = 64;
  std::int64_t vision_layers = 2;
  std::int64_t vision_heads = 2;
  std::int64_t vision_intermediate = 128;
  std::int64_t image_size = 112;   ///< LLaVA-OV: SigLIP image_size = tile size = the only pinpoint
  std::int64_t patch_size = 14;    ///< both: vision patch size
  double rope_theta = 1e6;         ///< the decoder's RoPE base
};

struct train_options {
  std::string world;             ///< the world directory
  std::string family = "qwen2_5_vl";
  std::string out;               ///< the checkpoint directory to write
  bool force = false;            ///< replace an existing `out`
  model_sizes sizes;
  std::int64_t vocab_size = 512; ///< BPE vocabulary (bytes + merges); special tokens come on top
  std::int64_t steps = 600;
  std::int64_t batch_size = 16;
  double lr = 2e-3;
  double min_lr_ratio = 0.05;    ///< cosine decays to lr * min_lr_ratio
  std::int64_t warmup = 40;
  double weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.98;
  double clip = 1.0;             ///< gradient-norm clipping
  std::uint64_t seed = 0;
  int threads = 1;               ///< LibTorch intra-op threads (1 is fastest on a shared machine)
  std::int64_t train_limit = 0;  ///< use only the first N training questions (0: all)
  /// Type-balanced sampling: a question type is drawn with probability ∝ (its number of training
  /// questions)^type_temperature, then a question of that type (1: the data's own mix).
  double type_temperature = 1.0;
  std::int64_t log_every = 25;
  std::int64_t eval_every = 0;   ///< validation during training every N steps (0: only at the end)
  std::int64_t eval_per_type = 40;        ///< validation questions per type during training
  std::int64_t final_eval_per_type = 150; ///< validation questions per type at the end
  std::int64_t eval_batch_size = 32;
  bool write_reference = true;   ///< write runtime_reference.safetensors for the transformers check
  augment_options augment;       ///< the paper's prompt formats in the training mix (seed: `seed`)
};

/// Validation result: exact-match accuracy per type, and the hallucination measures.
struct evaluation {
  std::int64_t step = 0;
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> per_type;  ///< type -> (correct, total)
  /// Accuracy over the short-answer questions (all but descriptions) of the validation split: the
  /// per-type accuracies of the evaluated subset weighted by each type's share of the split's
  /// questions (existence is about 60 % of them).
  double accuracy = 0;
  /// The mean of the per-type accuracies (short-answer types).
  double macro_accuracy = 0;
  double existence_false_yes = 0;    ///< P("yes" | label no): object hallucination (POPE)
  std::map<std::string, double> false_yes_by_pope;  ///< the same per POPE split
  double description_precision = 0;  ///< generated description sentences that are true (sentence in the reference)
  double description_recall = 0;     ///< reference sentences the generated description contains
  std::int64_t descriptions = 0;
  double seconds = 0;
  std::vector<std::pair<std::string, std::string>> samples;  ///< a few (reference, generated) pairs
};

struct train_summary {
  double first_loss = 0, last_loss = 0;  ///< mean over the first / last `log_every` steps
  double train_seconds = 0;
  std::int64_t parameters = 0;
  std::int64_t checkpoint_bytes = 0;
  double reload_max_abs_diff = -1;       ///< logits of the saved and reloaded model
  evaluation final_eval;
  std::vector<evaluation> evals;
};

/// Trains one model and writes the checkpoint directory. Progress goes to `log`.
/// Throws std::runtime_error on bad options or data.
train_summary train(const train_options& options, std::ostream& log);

}  // namespace consr_tiny
