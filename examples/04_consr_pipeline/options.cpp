// Options of the ConSR pipeline: the paper's prompts and defaults, the demo profile, validation and
// the command line (CLI11; see pipeline.hpp).
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <consr/corruption.hpp>
#include <consr/dpo.hpp>
#include <consr/error.hpp>
#include <consr/reward.hpp>

#include "consr_runtime/paper_prompts.hpp"
#include "consr_runtime/parse_number.hpp"
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

// ---- the names string-valued options accept ---------------------------------------------------------
// The library's enums are checked with its parse_* and named with its to_string (corruption.hpp,
// reward.hpp, dpo.hpp); the pipeline's own choices (dtype, LoRA naming, profile) are listed here.

std::vector<std::string> dtype_names() { return {"float32", "bfloat16"}; }
std::vector<std::string> lora_naming_names() { return {"transformers5", "checkpoint"}; }
std::vector<std::string> profile_names() { return {"paper", "demo"}; }

// "a, b or c".
std::string one_of(const std::vector<std::string>& names) {
  std::string s;
  for (std::size_t k = 0; k < names.size(); ++k) s += (k == 0 ? "" : k + 1 == names.size() ? " or " : ", ") + names[k];
  return s;
}

// `value` must be accepted by the library's parse (which throws consr::error otherwise); the
// message lists to_string of `all`.
template <class Enum, class Parse>
void require_enum(const std::string& value, Parse parse, std::initializer_list<Enum> all, const std::string& arg) {
  try {
    (void)parse(value);
    return;
  } catch (const consr::error&) {
  }
  std::vector<std::string> names;
  for (const Enum e : all) names.emplace_back(consr::to_string(e));
  fail_arg(arg, "is '" + value + "' but must be " + one_of(names));
}

void require_one_of(const std::string& value, const std::vector<std::string>& names, const std::string& arg) {
  for (const auto& n : names)
    if (value == n) return;
  fail_arg(arg, "is '" + value + "' but must be " + one_of(names));
}

// A 0-based diffusion step of the schedule's num_steps (corruption.hpp).
void require_step(int step, const std::string& arg) {
  const int steps = consr::diffusion_noise_options{}.num_steps;
  require(step >= 0 && step < steps, arg,
          "must be a 0-based step in [0, " + std::to_string(steps) + "), got " + std::to_string(step));
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
  namespace pp = consr_runtime::paper_prompts;  // ConSR App. B.1, word for word
  prompt_templates p;
  p.description = pp::description;
  p.revision = pp::revision;
  p.enriched = pp::enriched;
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
  require_one_of(o.dtype, dtype_names(), "--dtype");
  require_one_of(o.input_format, {"auto", "consr", "llava", "sharegpt", "hf"}, "--input-format");
  require(o.device == "cpu" || o.device.rfind("cuda", 0) == 0, "--device", "is '" + o.device + "' but must be cpu or cuda[:n]");
  require(o.image_max_pixels >= 0, "--image-max-pixels", "must be >= 0 (0 = preprocessor_config.json's), got " +
                                                          std::to_string(o.image_max_pixels));
  require(o.image_min_pixels >= 0, "--image-min-pixels", "must be >= 0 (0 = preprocessor_config.json's), got " +
                                                          std::to_string(o.image_min_pixels));
  require(std::isfinite(o.memory_limit_gb) && o.memory_limit_gb >= 0, "--memory-limit-gb",
          "must be finite and >= 0 (0 = physical memory on cpu), got " + number_string(o.memory_limit_gb));
  require_one_of(o.lora_naming, lora_naming_names(), "--lora-naming");
  require(o.nproc >= 1 && o.nproc <= 1024, "--nproc", "must be in [1, 1024], got " + std::to_string(o.nproc));
  require(std::isfinite(o.dist_timeout) && o.dist_timeout > 0, "--dist-timeout",
          "must be finite and > 0 seconds, got " + number_string(o.dist_timeout));
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
  require_step(o.noisy_sampling_step, "--noisy-sampling-step");
  require_step(o.reward_noise_step, "--reward-noise-step");
  require_enum(o.noise_schedule, consr::parse_noise_schedule,
               {consr::noise_schedule::sigmoid, consr::noise_schedule::linear, consr::noise_schedule::scaled_linear,
                consr::noise_schedule::cosine},
               "--noise-schedule");
  require(std::isfinite(o.lambda) && o.lambda >= 0 && o.lambda <= 1, "--lambda",
          "must be in [0, 1] (eq. 6), got " + number_string(o.lambda));
  require_enum(o.reward_space, consr::parse_reward_space, {consr::reward_space::probability, consr::reward_space::log},
               "--reward-space");
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
  require(o.reward_corruption == "noise" || o.reward_corruption == "mask" || o.reward_corruption == "mixup" ||
              o.reward_corruption == "resized-crop",
          "--reward-corruption", "is '" + o.reward_corruption + "' but must be noise, mask, mixup or resized-crop");
  require(std::isfinite(o.mask_probability) && o.mask_probability >= 0 && o.mask_probability <= 1, "--mask-probability",
          "must be in [0, 1], got " + number_string(o.mask_probability));
  require(o.mask_patch_size >= 1, "--mask-patch-size", "must be >= 1, got " + std::to_string(o.mask_patch_size));
  require(std::isfinite(o.mixup_lambda) && o.mixup_lambda >= 0 && o.mixup_lambda <= 1, "--mixup-lambda",
          "must be in [0, 1], got " + number_string(o.mixup_lambda));
  require(o.pair_rule == "reward" || o.pair_rule == "povid", "--pair-rule",
          "is '" + o.pair_rule + "' but must be reward or povid");
  require(o.pair_rule != "povid" || (o.num_sampled >= 1 && o.num_noisy >= 1), "--pair-rule",
          "povid needs sampled and noisy candidates (--num-sampled, --num-noisy >= 1)");
  require(o.lr_schedule == "cosine" || o.lr_schedule == "constant", "--lr-schedule",
          "is '" + o.lr_schedule + "' but must be cosine or constant");
  require(std::isfinite(o.warmup_ratio) && o.warmup_ratio >= 0 && o.warmup_ratio < 1, "--warmup-ratio",
          "must be in [0, 1), got " + number_string(o.warmup_ratio));
  require(!o.gradient_checkpointing || o.target == stage::train, "--gradient-checkpointing",
          std::string("applies to the train stage only, but the target stage is '") + to_string(o.target) + "'");
  require(std::isfinite(o.max_grad_norm) && o.max_grad_norm >= 0, "--max-grad-norm",
          "must be finite and >= 0 (0 = no clipping), got " + number_string(o.max_grad_norm));
  require(o.early_stop_patience >= 0, "--early-stop-patience",
          "must be >= 0 (0 = off), got " + std::to_string(o.early_stop_patience));
  require(o.early_stop_patience == 0 || !o.validation_report.empty(), "--early-stop-patience",
          "needs --validation-report (the validation loss decides when to stop)");
  require_enum(o.loss_type, consr::parse_dpo_loss_type, {consr::dpo_loss_type::consr, consr::dpo_loss_type::standard},
               "--loss");
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
  // {Image Description} may be left out: Table 8 compares the model's description with a plain
  // grounding instruction ("Answer based only on what you see in the image. {Original Prompt}").
  needs(o.prompts.enriched, "--enriched-prompt-file", {"{Original Prompt}"});
}

namespace {

std::int64_t parse_int(const std::string& arg, const std::string& value) {
  if (const auto x = consr_runtime::parse_int64(value)) return *x;
  fail_arg(arg, "not an integer: '" + value + "'");
}

std::uint64_t parse_uint(const std::string& arg, const std::string& value) {
  if (const auto x = consr_runtime::parse_uint64(value)) return *x;
  fail_arg(arg, "not a non-negative integer: '" + value + "'");
}

double parse_double(const std::string& arg, const std::string& value) {
  if (const auto x = consr_runtime::parse_double(value)) return *x;
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

// ---- the command line's options: name → field ----------------------------------------------------------

struct value_option {
  std::string name;
  std::function<void(options&, const std::string& value)> set;
};

value_option text(std::string name, std::string options::*field) {
  return {name, [field](options& o, const std::string& v) { o.*field = v; }};
}
value_option integer(std::string name, std::int64_t options::*field) {
  return {name, [name, field](options& o, const std::string& v) { o.*field = parse_int(name, v); }};
}
value_option step(std::string name, int options::*field) {
  return {name, [name, field](options& o, const std::string& v) { o.*field = static_cast<int>(parse_int(name, v)); }};
}
value_option real(std::string name, double options::*field) {
  return {name, [name, field](options& o, const std::string& v) { o.*field = parse_double(name, v); }};
}
value_option prompt_file(std::string name, std::string prompt_templates::*field) {
  return {name, [name, field](options& o, const std::string& v) { o.prompts.*field = read_text_file(name, v); }};
}

// Every option that takes a value, in the order of usage(); --profile is read before the others
// (it chooses the defaults they override).
const std::vector<value_option>& value_options() {
  static const std::vector<value_option> list{
      text("--input", &options::input),
      text("--input-format", &options::input_format),
      text("--image-folder", &options::image_folder),
      text("--model", &options::model_dir),
      text("--out", &options::output_dir),
      {"--profile", [](options&, const std::string&) {}},
      {"--seed", [](options& o, const std::string& v) { o.seed = parse_uint("--seed", v); }},
      text("--dtype", &options::dtype),
      text("--device", &options::device),
      integer("--image-max-pixels", &options::image_max_pixels),
      integer("--image-min-pixels", &options::image_min_pixels),
      real("--memory-limit-gb", &options::memory_limit_gb),
      integer("--nproc", &options::nproc),
      real("--dist-timeout", &options::dist_timeout),
      integer("--description-max-new-tokens", &options::description_max_new_tokens),
      real("--description-temperature", &options::description_temperature),
      integer("--num-sampled", &options::num_sampled),
      integer("--num-revised", &options::num_revised),
      integer("--num-noisy", &options::num_noisy),
      real("--temperature", &options::temperature),
      real("--top-p", &options::top_p),
      integer("--max-new-tokens", &options::max_new_tokens),
      real("--revision-temperature", &options::revision_temperature),
      step("--noisy-sampling-step", &options::noisy_sampling_step),
      text("--noise-schedule", &options::noise_schedule),
      prompt_file("--description-prompt-file", &prompt_templates::description),
      prompt_file("--revision-prompt-file", &prompt_templates::revision),
      prompt_file("--enriched-prompt-file", &prompt_templates::enriched),
      step("--reward-noise-step", &options::reward_noise_step),
      real("--lambda", &options::lambda),
      text("--reward-space", &options::reward_space),
      integer("--score-batch-size", &options::score_batch_size),
      integer("--pairs-per-group", &options::pairs_per_group),
      real("--min-margin", &options::min_margin),
      integer("--lora-rank", &options::lora_rank),
      real("--lora-alpha", &options::lora_alpha),
      {"--lora-targets", [](options& o, const std::string& v) { o.lora_targets = split_list("--lora-targets", v); }},
      real("--lr", &options::learning_rate),
      real("--weight-decay", &options::weight_decay),
      integer("--epochs", &options::epochs),
      integer("--max-steps", &options::max_steps),
      integer("--batch-size", &options::batch_size),
      text("--loss", &options::loss_type),
      real("--beta", &options::beta),
      real("--visual-alpha", &options::visual_alpha),
      real("--clip-lo", &options::clip_lo),
      real("--clip-hi", &options::clip_hi),
      text("--lora-naming", &options::lora_naming),
      text("--lr-schedule", &options::lr_schedule),
      text("--reward-corruption", &options::reward_corruption),
      real("--mask-probability", &options::mask_probability),
      integer("--mask-patch-size", &options::mask_patch_size),
      real("--mixup-lambda", &options::mixup_lambda),
      text("--pair-rule", &options::pair_rule),
      real("--warmup-ratio", &options::warmup_ratio),
      real("--max-grad-norm", &options::max_grad_norm),
      text("--validation-report", &options::validation_report),
      integer("--early-stop-patience", &options::early_stop_patience),
  };
  return list;
}

// The options without a value: each sets a bool field.
struct flag_option {
  const char* name;
  bool options::*field;
  bool value;
};
constexpr flag_option flag_options[] = {
    {"--force", &options::force, true},
    {"--fresh", &options::fresh, true},
    {"--skip-duplicates", &options::skip_duplicates, true},
    {"--require-round-trip", &options::require_round_trip, true},
    {"--no-length-normalize", &options::length_normalize, false},
    {"--no-visual-weights", &options::visual_weights, false},
    {"--scale-by-beta", &options::scale_by_beta, true},
    {"--gradient-checkpointing", &options::gradient_checkpointing, true},
};

}  // namespace

options parse_command_line(int argc, const char* const* argv, bool* help) {
  if (help) *help = false;
  CLI::App app("consr_pipeline");
  app.set_help_flag();  // usage() is the help text
  app.allow_extras();   // unknown options are reported below, by name
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // the last one wins
  bool want_help = false;
  app.add_flag("-h,--help", want_help);
  std::vector<std::string> stages;
  app.add_option("stage", stages);
  std::map<std::string, std::string> values;
  for (const auto& v : value_options()) app.add_option(v.name, values[v.name]);
  std::map<std::string, bool> flags;
  for (const auto& f : flag_options) app.add_flag(f.name, flags[f.name])->disable_flag_override();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ArgumentMismatch& e) {
    // An option takes the next argument whatever it is, so only the last one can lack its value.
    const std::string last = argc > 1 ? argv[argc - 1] : "";
    for (const auto& v : value_options())
      if (v.name == last) fail_arg(last, "missing value");
    for (int k = 1; k < argc; ++k)
      for (const auto& f : flag_options)
        if (std::string(argv[k]).rfind(std::string(f.name) + "=", 0) == 0) fail_arg(f.name, "takes no value");
    throw pipeline_error(std::string("consr_pipeline: ") + e.what());
  } catch (const CLI::ParseError& e) {
    throw pipeline_error(std::string("consr_pipeline: ") + e.what());
  }
  if (want_help) {
    if (help) *help = true;
    return default_options(profile::demo);
  }
  for (const std::string& extra : app.remaining()) {
    if (extra.rfind("-", 0) == 0) fail_arg(extra.substr(0, extra.find('=')), "unknown option (see --help)");
    fail_arg(extra, "unexpected argument (see --help)");
  }
  if (stages.size() > 1) fail_arg("stage", "given twice ('" + stages[1] + "')");

  // The profile decides the defaults that the other options override.
  profile p = app.count("--model") > 0 ? profile::paper : profile::demo;
  if (app.count("--profile") > 0) {
    require_one_of(values["--profile"], profile_names(), "--profile");
    p = values["--profile"] == "paper" ? profile::paper : profile::demo;
  }
  options o = default_options(p);
  if (!stages.empty()) o.target = parse_stage(stages[0]);
  for (const auto& v : value_options())
    if (app.count(v.name) > 0) v.set(o, values[v.name]);
  for (const auto& f : flag_options)
    if (flags[f.name]) o.*(f.field) = f.value;
  validate_options(o);
  return o;
}

std::string usage(const std::string& program) {
  std::ostringstream os;
  os << "usage: " << program << " [stage] [options]\n"
     << "  stage: all (default) | describe | candidates | score | write | train — runs the stale stages up to it\n"
     << "what and where:\n"
     << "  --input FILE        JSON array or JSONL of {id, image, prompt} (default: the embedded fixture list),\n"
     << "                      or LLaVA / sharegpt / Hugging Face export records (docs/pipeline.md \"Input\")\n"
     << "  --input-format F    auto (default: from the first record) | consr | llava | sharegpt | hf\n"
     << "  --image-folder DIR  relative image paths resolve here (default: the input file's directory)\n"
     << "  --model DIR         Qwen2.5-VL or LLaVA-OneVision checkpoint directory (default: the tiny Qwen fixture)\n"
     << "  --out DIR           output directory (default consr_pipeline_out)\n"
     << "  --profile P         paper | demo: the defaults (default: demo without --model, paper with it)\n"
     << "  --seed N            run seed (default 0)\n"
     << "  --force             recompute the target stage   --fresh  recompute every stage\n"
     << "  --dtype float32|bfloat16   --device cpu|cuda[:n]\n"
     << "  --image-max-pixels N  --image-min-pixels N   Qwen2.5-VL resize bounds (default: preprocessor_config.json)\n"
     << "  --memory-limit-gb G   refuse an image whose vision attention needs more at once (default 0: physical memory on cpu)\n"
     << "data parallel (docs/distributed.md):\n"
     << "  --nproc N           start N local ranks (consr's launcher; or run under torchrun / srun, which set RANK...)\n"
     << "  --dist-timeout S    seconds a rank waits for the others in a collective (1800)\n"
     << "describe / candidates:\n"
     << "  --description-max-new-tokens N (512; demo 24)  --description-temperature T (0 = greedy)\n"
     << "  --num-sampled N (5) --num-revised N (5) --num-noisy N (5)  --temperature T (1.2)  --top-p P (1)\n"
     << "  --max-new-tokens N (512; demo 24)  --revision-temperature T (0 = greedy)\n"
     << "  --noisy-sampling-step S (500)  --noise-schedule sigmoid|linear|scaled_linear|cosine\n"
     << "  --description-prompt-file F  --revision-prompt-file F  --enriched-prompt-file F  (override App. B.1)\n"
     << "score:\n"
     << "  --reward-noise-step S (800)  --lambda L (0.8)  --reward-space probability|log  --score-batch-size N (8)\n"
     << "  --pairs-per-group K (1)  --min-margin M (0)  --skip-duplicates  --pair-rule reward|povid (reward)\n"
     << "  --reward-corruption noise|mask|mixup|resized-crop (noise; Table 7)  --mask-probability P (0.5)\n"
     << "  --mask-patch-size S (14)  --mixup-lambda L (0.5, with the next item's image)\n"
     << "write:\n"
     << "  --require-round-trip  drop the pairs whose text does not re-tokenize to the scored ids\n"
     << "train:\n"
     << "  --lora-rank R (128; demo 8)  --lora-alpha A (256; demo 16)  --lora-targets q_proj,k_proj,...\n"
     << "  --lr LR (2e-7; demo 1e-3)  --weight-decay W (0)  --epochs E (1; demo 3)  --max-steps N (0 = all)\n"
     << "  --batch-size B (1 per rank)  --loss consr|standard  --beta B (0.1)  --no-length-normalize  --no-visual-weights\n"
     << "  --visual-alpha A (0.5)  --clip-lo L (0)  --clip-hi H (0.2)  --scale-by-beta\n"
     << "  --lora-naming transformers5|checkpoint (transformers5: what PEFT loads on transformers 5; checkpoint: legacy)\n"
     << "  --lr-schedule cosine|constant (cosine)  --warmup-ratio R (0.1)  --max-grad-norm G (1; 0 = off)\n"
     << "  --gradient-checkpointing  recompute each decoder layer in backward: less memory, same gradients\n"
     << "  --validation-report FILE (another run's report.json: validation loss per epoch)  --early-stop-patience N (0 = off)\n";
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
