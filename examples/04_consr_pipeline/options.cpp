// Options of the ConSR pipeline: the paper's prompts and defaults, the demo profile, validation and
// the command line (see pipeline.hpp).
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "pipeline.hpp"

namespace consr_pipeline {
namespace {

[[noreturn]] void fail_arg(const std::string& arg, const std::string& message) {
  throw pipeline_error("consr_pipeline: argument '" + arg + "': " + message);
}

std::string number_string(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

void require(bool ok, const std::string& arg, const std::string& message) {
  if (!ok) fail_arg(arg, message);
}

}  // namespace

const char* to_string(stage s) noexcept {
  switch (s) {
    case stage::describe: return "describe";
    case stage::candidates: return "candidates";
    case stage::score: return "score";
    case stage::write: return "write";
    case stage::train: return "train";
  }
  return "unknown";
}

stage parse_stage(const std::string& name) {
  for (stage s : {stage::describe, stage::candidates, stage::score, stage::write, stage::train})
    if (name == to_string(s)) return s;
  if (name == "all") return stage::train;
  fail_arg("stage", "is '" + name + "' but must be one of all, describe, candidates, score, write, train");
}

prompt_templates paper_prompts() {
  prompt_templates p;
  // ConSR App. B.1, word for word (spec §9 asks for the "inlucde" typo to be kept).
  p.description =
      "Describe the given image in detail. Compress the description in one paragraph. Please inlucde all "
      "foreground and background contents such object types, colors, states, actions, number of objects, precise "
      "object locations, texts or OCR results, relationships and relative positions between objects, environment, "
      "background, time, weather, etc. In case of non-real-world scenes, like charts, graphs, tables, etc., please "
      "describe the table, mention all numbers (if any), mention the written text, and all other details.";
  // The paper prints the three slot labels on their own lines after the instruction; the filled-in
  // values follow each label (decision, docs/pipeline.md).
  p.revision =
      "You are given an image, its description, a question or an instruction about the image, and your original "
      "response. Carefully review all information, and revise your original response only if necessary to make it "
      "more accurate and clearly grounded in the image or description. Preserve the original phrasing and structure "
      "as much as possible. If the original response is already correct, leave it unchanged. Do not invent details "
      "not supported by the image. Provide the final revised response without any prefix directly.\n\n"
      "Description: {Description}\n\nQuestion: {Question}\n\nOriginal Response: {Original Response}";
  p.enriched = "For your reference, the input image can be described as follows: {Image Description} {Original Prompt}";
  return p;
}

options default_options(profile p) {
  options o;
  o.defaults = p;
  if (p == profile::demo) {
    // Sized for the tiny random fixtures: short generations, a small adapter, and a learning rate
    // large enough for the ConSR loss to move a random 64-wide model within a few steps (the
    // paper's 2e-7 would leave it visibly unchanged).
    o.model_dir = default_model_dir();
    o.description_max_new_tokens = 24;
    o.max_new_tokens = 24;
    o.lora_rank = 8;
    o.lora_alpha = 16.0;
    o.learning_rate = 1e-3;
    o.epochs = 3;
    o.batch_size = 1;
  }
  return o;
}

void validate_options(const options& o) {
  require(!o.model_dir.empty(), "--model", "no model directory given");
  require(!o.output_dir.empty(), "--out", "empty output directory");
  require(o.dtype == "float32" || o.dtype == "bfloat16", "--dtype", "is '" + o.dtype + "' but must be float32 or bfloat16");
  require(o.device == "cpu" || o.device.rfind("cuda", 0) == 0, "--device", "is '" + o.device + "' but must be cpu or cuda[:n]");
  require(o.image_max_pixels >= 0, "--image-max-pixels", "must be >= 0 (0 = preprocessor_config.json's), got " +
                                                          std::to_string(o.image_max_pixels));
  require(o.image_min_pixels >= 0, "--image-min-pixels", "must be >= 0 (0 = preprocessor_config.json's), got " +
                                                          std::to_string(o.image_min_pixels));
  require(o.lora_naming == "checkpoint" || o.lora_naming == "transformers5", "--lora-naming",
          "is '" + o.lora_naming + "' but must be checkpoint or transformers5");
  require(o.description_max_new_tokens >= 1, "--description-max-new-tokens",
          "must be >= 1, got " + std::to_string(o.description_max_new_tokens));
  require(std::isfinite(o.description_temperature) && o.description_temperature >= 0, "--description-temperature",
          "must be finite and >= 0, got " + number_string(o.description_temperature));
  require(o.num_sampled >= 0, "--num-sampled", "must be >= 0, got " + std::to_string(o.num_sampled));
  require(o.num_noisy >= 0, "--num-noisy", "must be >= 0, got " + std::to_string(o.num_noisy));
  require(o.num_revised >= 0 && o.num_revised <= o.num_sampled, "--num-revised",
          "is " + std::to_string(o.num_revised) + " but must be in [0, --num-sampled = " + std::to_string(o.num_sampled) +
              "] (each revision rewrites one sampled response)");
  require(o.num_sampled + o.num_revised + o.num_noisy >= 2, "--num-sampled",
          "sampled + revised + noisy candidates must be at least 2 to form a pair");
  require(std::isfinite(o.temperature) && o.temperature >= 0, "--temperature",
          "must be finite and >= 0, got " + number_string(o.temperature));
  require(std::isfinite(o.revision_temperature) && o.revision_temperature >= 0, "--revision-temperature",
          "must be finite and >= 0, got " + number_string(o.revision_temperature));
  require(o.top_p > 0 && o.top_p <= 1, "--top-p", "must be in (0, 1], got " + number_string(o.top_p));
  require(o.max_new_tokens >= 1, "--max-new-tokens", "must be >= 1, got " + std::to_string(o.max_new_tokens));
  require(o.noisy_sampling_step >= 0 && o.noisy_sampling_step < 1000, "--noisy-sampling-step",
          "must be a 0-based step in [0, 1000), got " + std::to_string(o.noisy_sampling_step));
  require(o.reward_noise_step >= 0 && o.reward_noise_step < 1000, "--reward-noise-step",
          "must be a 0-based step in [0, 1000), got " + std::to_string(o.reward_noise_step));
  require(o.noise_schedule == "sigmoid" || o.noise_schedule == "linear" || o.noise_schedule == "scaled_linear" ||
              o.noise_schedule == "cosine",
          "--noise-schedule", "is '" + o.noise_schedule + "' but must be sigmoid, linear, scaled_linear or cosine");
  require(std::isfinite(o.lambda) && o.lambda >= 0 && o.lambda <= 1, "--lambda",
          "must be in [0, 1] (eq. 6), got " + number_string(o.lambda));
  require(o.reward_space == "probability" || o.reward_space == "log", "--reward-space",
          "is '" + o.reward_space + "' but must be probability or log");
  require(o.score_batch_size >= 1, "--score-batch-size", "must be >= 1, got " + std::to_string(o.score_batch_size));
  require(o.pairs_per_group >= 1, "--pairs-per-group", "must be >= 1, got " + std::to_string(o.pairs_per_group));
  require(std::isfinite(o.min_margin) && o.min_margin >= 0, "--min-margin",
          "must be finite and >= 0, got " + number_string(o.min_margin));
  require(o.lora_rank >= 1, "--lora-rank", "must be >= 1, got " + std::to_string(o.lora_rank));
  require(std::isfinite(o.lora_alpha) && o.lora_alpha > 0, "--lora-alpha",
          "must be finite and > 0, got " + number_string(o.lora_alpha));
  require(!o.lora_targets.empty(), "--lora-targets", "empty list");
  for (const auto& t : o.lora_targets) require(!t.empty(), "--lora-targets", "has an empty module name");
  require(std::isfinite(o.learning_rate) && o.learning_rate > 0, "--lr",
          "must be finite and > 0, got " + number_string(o.learning_rate));
  require(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "--weight-decay",
          "must be finite and >= 0, got " + number_string(o.weight_decay));
  require(o.epochs >= 1, "--epochs", "must be >= 1, got " + std::to_string(o.epochs));
  require(o.max_steps >= 0, "--max-steps", "must be >= 0 (0 = no limit), got " + std::to_string(o.max_steps));
  require(o.batch_size >= 1, "--batch-size", "must be >= 1, got " + std::to_string(o.batch_size));
  require(o.loss_type == "consr" || o.loss_type == "standard", "--loss", "is '" + o.loss_type + "' but must be consr or standard");
  require(std::isfinite(o.beta) && o.beta > 0, "--beta", "must be finite and > 0, got " + number_string(o.beta));
  require(std::isfinite(o.visual_alpha), "--visual-alpha", "must be finite");
  require(std::isfinite(o.clip_lo) && std::isfinite(o.clip_hi) && o.clip_lo <= o.clip_hi, "--clip-lo",
          "clip interval [" + number_string(o.clip_lo) + ", " + number_string(o.clip_hi) + "] must be finite with lo <= hi");
  const auto needs = [](const std::string& text, const char* arg, std::initializer_list<const char*> slots) {
    for (const char* s : slots)
      require(text.find(s) != std::string::npos, arg, std::string("the template has no ") + s + " slot");
  };
  require(!o.prompts.description.empty(), "--description-prompt-file", "empty prompt");
  needs(o.prompts.revision, "--revision-prompt-file", {"{Description}", "{Question}", "{Original Response}"});
  needs(o.prompts.enriched, "--enriched-prompt-file", {"{Image Description}", "{Original Prompt}"});
}

namespace {

std::int64_t parse_int(const std::string& arg, const std::string& value) {
  try {
    std::size_t used = 0;
    long long x = std::stoll(value, &used);
    if (used == value.size()) return static_cast<std::int64_t>(x);
  } catch (const std::exception&) {
  }
  fail_arg(arg, "not an integer: '" + value + "'");
}

std::uint64_t parse_uint(const std::string& arg, const std::string& value) {
  try {
    std::size_t used = 0;
    if (!value.empty() && value[0] != '-') {
      unsigned long long x = std::stoull(value, &used);
      if (used == value.size()) return static_cast<std::uint64_t>(x);
    }
  } catch (const std::exception&) {
  }
  fail_arg(arg, "not a non-negative integer: '" + value + "'");
}

double parse_double(const std::string& arg, const std::string& value) {
  try {
    std::size_t used = 0;
    double x = std::stod(value, &used);
    if (used == value.size()) return x;
  } catch (const std::exception&) {
  }
  fail_arg(arg, "not a number: '" + value + "'");
}

std::string read_text_file(const std::string& arg, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_arg(arg, "cannot read '" + path + "'");
  std::ostringstream os;
  os << in.rdbuf();
  std::string text = os.str();
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();  // editors add one
  return text;
}

std::vector<std::string> split_list(const std::string& arg, const std::string& value) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : value) {
    if (c == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  for (const auto& s : out) require(!s.empty(), arg, "empty entry in '" + value + "'");
  return out;
}

}  // namespace

options parse_command_line(int argc, const char* const* argv, bool* help) {
  if (help) *help = false;
  std::vector<std::string> args(argv + 1, argv + argc);
  // Pass 1: the profile decides the defaults that the other options override.
  bool have_model = false;
  std::string profile_name;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      if (help) *help = true;
      return default_options(profile::demo);
    }
    if (args[i] == "--model") have_model = true;
    if (args[i] == "--profile" && i + 1 < args.size()) profile_name = args[i + 1];
  }
  profile p = have_model ? profile::paper : profile::demo;
  if (!profile_name.empty()) {
    if (profile_name == "paper") p = profile::paper;
    else if (profile_name == "demo") p = profile::demo;
    else fail_arg("--profile", "is '" + profile_name + "' but must be paper or demo");
  }
  options o = default_options(p);
  bool have_stage = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      if (have_stage) fail_arg("stage", "given twice ('" + a + "')");
      o.target = parse_stage(a);
      have_stage = true;
      continue;
    }
    // Flags without a value.
    if (a == "--force") { o.force = true; continue; }
    if (a == "--fresh") { o.fresh = true; continue; }
    if (a == "--skip-duplicates") { o.skip_duplicates = true; continue; }
    if (a == "--no-length-normalize") { o.length_normalize = false; continue; }
    if (a == "--no-visual-weights") { o.visual_weights = false; continue; }
    if (i + 1 >= args.size()) fail_arg(a, "missing value");
    const std::string v = args[++i];
    if (a == "--input") o.input = v;
    else if (a == "--model") o.model_dir = v;
    else if (a == "--out") o.output_dir = v;
    else if (a == "--profile") continue;  // pass 1
    else if (a == "--seed") o.seed = parse_uint(a, v);
    else if (a == "--dtype") o.dtype = v;
    else if (a == "--device") o.device = v;
    else if (a == "--image-max-pixels") o.image_max_pixels = parse_int(a, v);
    else if (a == "--image-min-pixels") o.image_min_pixels = parse_int(a, v);
    else if (a == "--lora-naming") o.lora_naming = v;
    else if (a == "--description-max-new-tokens") o.description_max_new_tokens = parse_int(a, v);
    else if (a == "--description-temperature") o.description_temperature = parse_double(a, v);
    else if (a == "--num-sampled") o.num_sampled = parse_int(a, v);
    else if (a == "--num-revised") o.num_revised = parse_int(a, v);
    else if (a == "--num-noisy") o.num_noisy = parse_int(a, v);
    else if (a == "--temperature") o.temperature = parse_double(a, v);
    else if (a == "--top-p") o.top_p = parse_double(a, v);
    else if (a == "--max-new-tokens") o.max_new_tokens = parse_int(a, v);
    else if (a == "--revision-temperature") o.revision_temperature = parse_double(a, v);
    else if (a == "--noisy-sampling-step") o.noisy_sampling_step = static_cast<int>(parse_int(a, v));
    else if (a == "--reward-noise-step") o.reward_noise_step = static_cast<int>(parse_int(a, v));
    else if (a == "--noise-schedule") o.noise_schedule = v;
    else if (a == "--lambda") o.lambda = parse_double(a, v);
    else if (a == "--reward-space") o.reward_space = v;
    else if (a == "--score-batch-size") o.score_batch_size = parse_int(a, v);
    else if (a == "--pairs-per-group") o.pairs_per_group = parse_int(a, v);
    else if (a == "--min-margin") o.min_margin = parse_double(a, v);
    else if (a == "--lora-rank") o.lora_rank = parse_int(a, v);
    else if (a == "--lora-alpha") o.lora_alpha = parse_double(a, v);
    else if (a == "--lora-targets") o.lora_targets = split_list(a, v);
    else if (a == "--lr") o.learning_rate = parse_double(a, v);
    else if (a == "--weight-decay") o.weight_decay = parse_double(a, v);
    else if (a == "--epochs") o.epochs = parse_int(a, v);
    else if (a == "--max-steps") o.max_steps = parse_int(a, v);
    else if (a == "--batch-size") o.batch_size = parse_int(a, v);
    else if (a == "--loss") o.loss_type = v;
    else if (a == "--beta") o.beta = parse_double(a, v);
    else if (a == "--visual-alpha") o.visual_alpha = parse_double(a, v);
    else if (a == "--clip-lo") o.clip_lo = parse_double(a, v);
    else if (a == "--clip-hi") o.clip_hi = parse_double(a, v);
    else if (a == "--description-prompt-file") o.prompts.description = read_text_file(a, v);
    else if (a == "--revision-prompt-file") o.prompts.revision = read_text_file(a, v);
    else if (a == "--enriched-prompt-file") o.prompts.enriched = read_text_file(a, v);
    else fail_arg(a, "unknown option (see --help)");
  }
  validate_options(o);
  return o;
}

std::string usage(const std::string& program) {
  std::ostringstream os;
  os << "usage: " << program << " [stage] [options]\n"
     << "  stage: all (default) | describe | candidates | score | write | train — runs the stale stages up to it\n"
     << "what and where:\n"
     << "  --input FILE        JSON array or JSONL of {id, image, prompt} (default: the embedded fixture list)\n"
     << "  --model DIR         Qwen2.5-VL or LLaVA-OneVision checkpoint directory (default: the tiny Qwen fixture)\n"
     << "  --out DIR           output directory (default consr_pipeline_out)\n"
     << "  --profile P         paper | demo: the defaults (default: demo without --model, paper with it)\n"
     << "  --seed N            run seed (default 0)\n"
     << "  --force             recompute the target stage   --fresh  recompute every stage\n"
     << "  --dtype float32|bfloat16   --device cpu|cuda[:n]\n"
     << "  --image-max-pixels N  --image-min-pixels N   Qwen2.5-VL resize bounds (default: preprocessor_config.json)\n"
     << "describe / candidates:\n"
     << "  --description-max-new-tokens N (512; demo 24)  --description-temperature T (0 = greedy)\n"
     << "  --num-sampled N (5) --num-revised N (5) --num-noisy N (5)  --temperature T (1.2)  --top-p P (1)\n"
     << "  --max-new-tokens N (512; demo 24)  --revision-temperature T (0 = greedy)\n"
     << "  --noisy-sampling-step S (500)  --noise-schedule sigmoid|linear|scaled_linear|cosine\n"
     << "  --description-prompt-file F  --revision-prompt-file F  --enriched-prompt-file F  (override App. B.1)\n"
     << "score:\n"
     << "  --reward-noise-step S (800)  --lambda L (0.8)  --reward-space probability|log  --score-batch-size N (8)\n"
     << "  --pairs-per-group K (1)  --min-margin M (0)  --skip-duplicates\n"
     << "train:\n"
     << "  --lora-rank R (128; demo 8)  --lora-alpha A (256; demo 16)  --lora-targets q_proj,k_proj,...\n"
     << "  --lr LR (2e-7; demo 1e-3)  --weight-decay W (0)  --epochs E (1; demo 3)  --max-steps N (0 = all)\n"
     << "  --batch-size B (1)  --loss consr|standard  --beta B (0.1)  --no-length-normalize  --no-visual-weights\n"
     << "  --visual-alpha A (0.5)  --clip-lo L (0)  --clip-hi H (0.2)  --lora-naming checkpoint|transformers5\n";
  return os.str();
}

const char* default_input_json() noexcept {
  // Three items over the committed test images; paths relative to default_image_dir().
  return R"json([
  {"id": "fixture-a", "image": "qwen_a_101x159.png", "prompt": "What is shown in this image?"},
  {"id": "fixture-b", "image": "photo_48x64.jpg", "prompt": "Describe the colors and shapes you can see."},
  {"id": "fixture-c", "image": "qwen_b_gray_70x45.png", "prompt": "How many objects are in the picture, and where are they?"}
]
)json";
}

std::string default_image_dir() { return CONSR_PIPELINE_FIXTURES_DIR "/images"; }
std::string default_model_dir() { return CONSR_PIPELINE_FIXTURES_DIR "/qwen2_5_vl_tiny"; }

}  // namespace consr_pipeline
