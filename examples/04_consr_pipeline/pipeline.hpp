// examples/04_consr_pipeline/pipeline.hpp — the end-to-end ConSR pipeline (mission item 5) on the
// LibTorch model runtime (consr_runtime) and consr's LibTorch adapter (consr::libtorch):
//
//   1. describe    the model describes each image with the paper's description prompt (App. B.1);
//   2. candidates  sampled (T = 1.2), revised (revision prompt, App. B.1) and noisy (500 diffusion
//                  steps on the normalized image) responses per item (spec §1, §8);
//   3. score       teacher-forced token log-probs of every candidate under (x, I), (x, Ĩ) with 800
//                  noise steps, and (x', I) with the description-enriched prompt; the contrastive
//                  reward (spec §5, eqs. 1–6) and pair selection (spec §6) with consr;
//   4. write       LLaMA-Factory sharegpt ranking data + dataset_info.json, LLaVA-OV DPO json, and a
//                  full report (every candidate's probabilities and reward, the pairs, token log-probs);
//   5. train       LoRA on the language model with the ConSR loss (spec §7, eq. 14) through
//                  consr::libtorch::dpo_loss, AdamW, the adapter saved in PEFT's format.
//
// Every stage writes its artefact atomically into the output directory together with a fingerprint
// of everything it depends on (options, model, input files, upstream artefacts); a stage whose
// artefact is up to date is skipped, and the per-item work of stages 1–3 is checkpointed under
// `partial/`, so an interrupted run resumes where it stopped. The same seed gives byte-identical
// artefacts. docs/pipeline.md describes the stages, options and formats.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <stdexcept>
#include <string>
#include <vector>

namespace consr_pipeline {

/// Every failure detected by the pipeline itself (bad options, bad input, a missing artefact): the
/// message names the argument or file. Errors of the runtime (consr_runtime::runtime_error) and of
/// consr (consr::error, c10::Error) pass through unchanged.
class pipeline_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The stages, in order; running one runs the stale stages before it.
enum class stage { describe = 0, candidates = 1, score = 2, write = 3, train = 4 };

/// "describe", "candidates", "score", "write", "train".
const char* to_string(stage s) noexcept;

/// "describe" … "train" (and "all" = train). Throws pipeline_error naming argument 'stage' otherwise.
stage parse_stage(const std::string& name);

/// Which defaults the options start from: the paper's (spec §8; for real checkpoints) or the demo
/// defaults sized for the tiny test fixtures (short generations, rank-8 LoRA, a learning rate large
/// enough that training visibly moves a random model; see docs/pipeline.md).
enum class profile { paper, demo };

/// The three prompts of App. B.1. Placeholders are replaced in one left-to-right pass (text that is
/// substituted in is never scanned again).
struct prompt_templates {
  /// The description prompt, verbatim (the paper's "inlucde" typo included, spec §9).
  std::string description;
  /// The revision prompt, verbatim, followed by its slots: {Description}, {Question}, {Original Response}.
  std::string revision;
  /// The enriched prompt x': {Image Description} and {Original Prompt}.
  std::string enriched;
};

/// The paper's prompts (App. B.1).
prompt_templates paper_prompts();

/// All options. Build them with default_options(profile) and change fields, or parse a command line.
struct options {
  // ---- what and where --------------------------------------------------------------------------
  stage target = stage::train;  ///< the last stage to run
  std::string input;            ///< JSON array / JSONL of {id, image, prompt}; empty: the embedded default
  std::string input_format = "auto";  ///< auto | consr | llava | sharegpt | hf (docs/pipeline.md "Input")
  std::string image_folder;     ///< relative image paths resolve here (default: the input file's directory)
  std::string model_dir;        ///< a Hugging Face model directory (Qwen2.5-VL or LLaVA-OneVision)
  std::string output_dir = "consr_pipeline_out";
  bool force = false;           ///< recompute the target stage even when its artefact is up to date
  bool fresh = false;           ///< recompute every stage (ignore existing artefacts and checkpoints)
  std::uint64_t seed = 0;       ///< every random draw derives from it (sampling, noise, LoRA init, order)
  std::string dtype = "float32";  ///< float32 | bfloat16
  std::string device = "cpu";     ///< cpu | cuda[:n]
  profile defaults = profile::paper;
  prompt_templates prompts = paper_prompts();
  /// Qwen2.5-VL only: override preprocessor_config.json's pixel bounds (0 = the file's). The hub
  /// file allows 12.8 M pixels (16 k image tokens); LLaMA-Factory trains at image_max_pixels =
  /// 768·768 by default, so pass 589824 to score at the resolution it will train at.
  std::int64_t image_max_pixels = 0;
  std::int64_t image_min_pixels = 0;
  /// Memory the vision attention of one image may need at once, in GB (10^9 bytes): an image whose
  /// processed size would need more (cr::vision_attention_bytes: the scores of one query chunk of the
  /// runtime's budget, CONSR_ATTENTION_CHUNK_ELEMENTS or 2^26 scores) is refused before anything
  /// runs. 0 = the machine's physical memory on --device cpu, no limit on cuda.
  double memory_limit_gb = 0.0;

  // ---- data parallel (docs/distributed.md) ---------------------------------------------------------
  /// Ranks to start on this machine with consr's own launcher (main.cpp; 1 = this process only).
  /// Under torchrun / srun the launcher's environment decides and --nproc must stay 1.
  std::int64_t nproc = 1;
  /// Seconds a collective (rendezvous, barrier, all-reduce) waits for the other ranks before this
  /// rank gives up with an error (torch.distributed's default: 30 min).
  double dist_timeout = 1800.0;

  // ---- 1. describe -------------------------------------------------------------------------------
  std::int64_t description_max_new_tokens = 512;
  double description_temperature = 0.0;  ///< 0 = greedy (the paper does not say; decision, docs)

  // ---- 2. candidates (spec §1, §8) ---------------------------------------------------------------
  std::int64_t num_sampled = 5;
  std::int64_t num_revised = 5;  ///< revises the first num_revised sampled responses (≤ num_sampled)
  std::int64_t num_noisy = 5;
  double temperature = 1.2;      ///< sampled and noisy candidates
  double top_p = 1.0;
  std::int64_t max_new_tokens = 512;
  double revision_temperature = 0.0;  ///< 0 = greedy (the paper does not say; decision, docs)
  int noisy_sampling_step = 500;      ///< 0-based diffusion step of the noisy candidates' image
  std::string noise_schedule = "sigmoid";

  // ---- 3. score (spec §5, §6) ---------------------------------------------------------------------
  int reward_noise_step = 800;        ///< Ĩ of eq. 2
  double lambda = 0.8;                ///< eq. 6
  std::string reward_space = "probability";  ///< probability (paper) | log
  std::int64_t score_batch_size = 8;  ///< rows per teacher-forced forward
  std::int64_t pairs_per_group = 1;
  double min_margin = 0.0;
  bool skip_duplicates = false;
  /// Drop the pairs whose chosen or rejected text does not re-tokenize to the scored token ids
  /// (the write stage checks every candidate and marks the pairs either way).
  bool require_round_trip = false;
  /// Ĩ of eq. 2 (Table 7): noise (diffusion noise, reward_noise_step) | mask (random patch mask) |
  /// mixup (with the next item's image) | resized-crop (random resized crop, resized back).
  std::string reward_corruption = "noise";
  double mask_probability = 0.5;     ///< mask: chance that a patch is masked (to the normalized mean, 0)
  std::int64_t mask_patch_size = 14; ///< mask: patch side in pixels
  double mixup_lambda = 0.5;         ///< mixup: weight of the item's own image
  /// How pairs are formed: "reward" (spec §6: best vs worst r) or "povid" (the POVID-style baseline
  /// of Table 3: the first usable sampled response preferred over the first usable noisy one).
  std::string pair_rule = "reward";

  // ---- 5. train (spec §7, App. B.2) ------------------------------------------------------------------
  std::int64_t lora_rank = 128;
  double lora_alpha = 256.0;  ///< LLaMA-Factory's default 2·rank (the paper does not say)
  std::vector<std::string> lora_targets{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  double learning_rate = 2e-7;
  double weight_decay = 0.0;
  std::int64_t epochs = 1;
  std::int64_t max_steps = 0;   ///< 0: no limit (epochs decide)
  /// Pairs per optimizer step and rank (paper: 1 LLaVA-OV, 2 Qwen2.5-VL); the global batch is
  /// ranks × batch_size, so 2 ranks × 1 train as 1 rank × 2.
  std::int64_t batch_size = 1;
  std::string loss_type = "consr";  ///< consr (eq. 14) | standard (eq. 7)
  double beta = 0.1;
  bool length_normalize = true;
  bool visual_weights = true;
  double visual_alpha = 0.5;  ///< α of eq. 13
  double clip_lo = 0.0;
  double clip_hi = 0.2;
  /// Scale the eq. 14 surrogate (and its gradient) by β (spec §7 decision; default: eq. 14 as written).
  bool scale_by_beta = false;
  /// Learning-rate schedule over the optimizer steps, as transformers' schedulers (LLaMA-Factory's
  /// defaults): a linear warmup over ceil(warmup_ratio · steps) steps from 0, then "cosine" decay to 0
  /// or "constant".
  std::string lr_schedule = "cosine";
  double warmup_ratio = 0.1;
  /// Clip the global L2 norm of the LoRA gradients before each step (0 = off; transformers' default 1).
  double max_grad_norm = 1.0;
  /// Recompute each decoder layer in backward instead of keeping its activations (the same loss and
  /// gradients, less memory, one more forward per step); train stage only, not in the fingerprint.
  bool gradient_checkpointing = false;
  /// A report.json of another run (e.g. the pipeline on validation items, up to `write`) whose pairs
  /// give a validation DPO loss after every epoch ("" = none). Must come from the same model.
  std::string validation_report;
  /// Stop after this many epochs without a lower validation loss and keep the adapter of the best
  /// epoch (0 = off; needs validation_report).
  std::int64_t early_stop_patience = 0;
  /// Module paths in the saved adapter: "transformers5" (default: model.language_model.layers.*,
  /// transformers >= 4.52's module tree, what peft.PeftModel.from_pretrained loads on transformers 5)
  /// or "checkpoint" (the legacy layout: the checkpoint's own naming, e.g. model.layers.* for the
  /// Qwen2.5-VL hub files, which PeftModel.from_pretrained on transformers 5 silently does not load
  /// for Qwen2.5-VL); the written names are checked against the naming's module tree (lora.hpp).
  std::string lora_naming = "transformers5";
};

/// Every option at its default for `p`; model_dir is the tiny Qwen2.5-VL fixture for profile::demo
/// and empty (must be given) for profile::paper.
options default_options(profile p);

/// Checks every option; throws pipeline_error naming the option (its command-line spelling) and the
/// bad value. Does not touch the file system.
void validate_options(const options& o);

/// Parses a command line (see usage()). The profile is `--profile`, else demo when no --model is
/// given and paper otherwise; explicit options override the profile's defaults. Sets `help` and
/// returns defaults when --help / -h is given. Throws pipeline_error naming the argument.
options parse_command_line(int argc, const char* const* argv, bool* help = nullptr);

/// The command-line help.
std::string usage(const std::string& program);

/// What one stage did.
struct stage_result {
  stage which = stage::describe;
  bool ran = false;      ///< false: its artefact was up to date
  double seconds = 0.0;  ///< wall time of the stage (0 when skipped)
  std::string summary;   ///< one line
};

/// Runs the stages up to o.target, skipping the up-to-date ones, and prints progress and a
/// per-stage summary to `log`. Before anything is created or loaded it validates the options, the
/// device (--device cuda without a GPU is one line), the model directory (config.json, the
/// processor settings, tokenizer.json, and every safetensors header and the index: a damaged model
/// is reported before --out is created) and the input list (JSON / JSONL, non-empty, every item with
/// a non-empty prompt and a decodable image the processor accepts, whose vision attention, one query
/// chunk at a time, fits --memory-limit-gb). It then takes an exclusive lock on the output directory (flock on
/// `<out>/.consr_pipeline.lock`, released when the run ends or its process dies): a second run on the
/// same --out fails with one line naming the holder. Throws pipeline_error (or the runtime's /
/// consr's exceptions) naming the argument or file; artefacts are written atomically (write to a
/// temporary name, then rename), so a failed run leaves no partial artefact.
std::vector<stage_result> run_pipeline(const options& o, std::ostream& log);

/// The embedded default input (JSON), its image paths relative to default_image_dir().
const char* default_input_json() noexcept;
/// The directory of the test images the embedded input refers to.
std::string default_image_dir();
/// The tiny Qwen2.5-VL fixture directory.
std::string default_model_dir();

}  // namespace consr_pipeline
