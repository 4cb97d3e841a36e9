// Example 07: `consr_eval`, the evaluation command. Loads a model directory (Qwen2.5-VL or
// LLaVA-OneVision), optionally a LoRA adapter in PEFT's format (the pipeline's `adapter/`, or
// PEFT's own), answers a questions file greedily in batches and scores the answers; see
// docs/evaluation.md.
//
//   consr_eval --model DIR [--adapter DIR] --questions FILE.jsonl [--limit N] --out eval.json
//              [--answers answers.jsonl] [--compare base_eval.json] [--batch-size 16]
//              [--max-new-tokens 16] [--description-max-new-tokens 64] [--dtype float32|bfloat16]
//              [--device cpu|cuda[:n]] ...   (--help lists every option)
//
// Exit status 0 on success, 1 on any error (printed as "error: consr_eval: argument '--x': ...").
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_eval/answers.hpp"
#include "consr_runtime/device.hpp"
#include "consr_runtime/distributed.hpp"
#include "consr_runtime/error.hpp"
#include "consr_eval/error.hpp"
#include "consr_eval/questions.hpp"
#include "scoring.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

struct cli_options {
  std::string model, adapter, questions, image_dir, out, answers, compare;
  std::size_t limit = 0;
  std::int64_t batch_size = 16;
  std::int64_t max_new_tokens = 16;
  std::int64_t description_max_new_tokens = 64;
  std::vector<std::string> type_max_new_tokens;  // TYPE=N
  std::string dtype = "float32";
  std::string device = "cpu";
  std::int64_t image_max_pixels = 0, image_min_pixels = 0;
  std::size_t feature_cache_images = 64;
  bool quiet = false;
  int nproc = 1;               // consr's local launcher (main)
  double dist_timeout = 1800;  // seconds a rank waits for the others
};

class cli_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& flag, const std::string& message) {
  throw cli_error("consr_eval: argument '" + flag + "': " + message);
}

// A library error names its parameter ("consr_eval::f: argument 'model_dir': ..."): report it
// under the command-line flag the parameter came from.
[[noreturn]] void rethrow_for_flags(const std::exception& e, const std::map<std::string, std::string>& flags,
                                    const std::string& default_flag) {
  std::string msg = e.what();
  if (auto c = dynamic_cast<const c10::Error*>(&e)) msg = c->what_without_backtrace();
  const std::string key = "argument '";
  const auto at = msg.find(key);
  if (at != std::string::npos) {
    const auto close = msg.find("': ", at + key.size());
    if (close != std::string::npos) {
      const std::string param = msg.substr(at + key.size(), close - at - key.size());
      auto it = flags.find(param);
      if (it != flags.end()) fail(it->second, msg.substr(close + 3));
    }
  }
  fail(default_flag, msg);
}

json read_json_file(const std::string& path, const std::string& flag) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(flag, "'" + path + "' does not exist or is not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(flag, "cannot open '" + path + "'");
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    fail(flag, "'" + path + "' is not valid JSON: " + e.what());
  }
}

// The output file's directory is created now, so that a bad path fails before the model runs.
void prepare_output(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  const fs::path p = fs::absolute(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) fail(flag, "'" + path + "' is a directory (expected a file path)");
  fs::create_directories(p.parent_path(), ec);
  if (ec) fail(flag, "cannot create the directory of '" + path + "': " + ec.message());
  const std::string probe = p.string() + ".tmp";
  {
    std::ofstream out(probe, std::ios::binary | std::ios::trunc);
    if (!out) fail(flag, "cannot write '" + probe + "'");
  }
  fs::remove(probe, ec);
}

void write_json(const std::string& path, const ojson& j, const std::string& flag) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << j.dump(2, ' ', false, ojson::error_handler_t::replace) << "\n";
    if (!out) fail(flag, "cannot write '" + tmp + "'");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail(flag, "cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

std::string absolute(const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); }

int run(const cli_options& o) {
  using clock_type = std::chrono::steady_clock;
  // Everything that can be checked cheaply is checked before the model is loaded.
  if (o.model.empty()) fail("--model", "required (a Hugging Face model directory)");
  if (o.questions.empty()) fail("--questions", "required (a world or POPE questions JSONL file)");
  if (o.out.empty()) fail("--out", "required (the eval.json to write)");
  if (o.batch_size < 1) fail("--batch-size", "must be >= 1, got " + std::to_string(o.batch_size));
  if (o.max_new_tokens < 1) fail("--max-new-tokens", "must be >= 1, got " + std::to_string(o.max_new_tokens));
  if (o.description_max_new_tokens < 1)
    fail("--description-max-new-tokens", "must be >= 1, got " + std::to_string(o.description_max_new_tokens));
  if (o.feature_cache_images < 1) fail("--feature-cache", "must be >= 1");
  consr_eval::generation_options g;
  g.batch_size = o.batch_size;
  g.max_new_tokens = o.max_new_tokens;
  g.feature_cache_images = o.feature_cache_images;
  g.max_new_tokens_by_type = {{"description", o.description_max_new_tokens}};
  for (const auto& spec : o.type_max_new_tokens) {
    const auto eq = spec.find('=');
    std::int64_t n = 0;
    std::size_t used = 0;
    try {
      if (eq != std::string::npos) n = std::stoll(spec.substr(eq + 1), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (eq == std::string::npos || eq == 0 || used == 0 || eq + 1 + used != spec.size() || n < 1)
      fail("--type-max-new-tokens", "expected TYPE=N with N >= 1, got '" + spec + "'");
    g.max_new_tokens_by_type[spec.substr(0, eq)] = n;
  }
  consr_eval::model_options mo;
  if (o.dtype == "float32") mo.dtype = torch::kFloat32;
  else if (o.dtype == "bfloat16") mo.dtype = torch::kBFloat16;
  else fail("--dtype", "expected float32 or bfloat16, got '" + o.dtype + "'");
  try {
    // Checked up front: a missing GPU is one line here, not LibTorch's trace at the first tensor.
    mo.device = consr_runtime::parse_device(o.device, "--device");
  } catch (const consr_runtime::runtime_error& e) {
    const std::string what = e.what(), prefix = "argument '--device': ";
    fail("--device", what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what);
  }
  if (o.image_max_pixels < 0) fail("--image-max-pixels", "must be >= 0");
  if (o.image_min_pixels < 0) fail("--image-min-pixels", "must be >= 0");
  mo.image_max_pixels = o.image_max_pixels;
  mo.image_min_pixels = o.image_min_pixels;

  const std::map<std::string, std::string> flags{
      {"path", "--questions"},        {"options.image_dir", "--image-dir"},       {"model_dir", "--model"},
      {"adapter_dir", "--adapter"},   {"options.image_max_pixels", "--image-max-pixels"},
      {"options.image_min_pixels", "--image-min-pixels"}, {"options.batch_size", "--batch-size"},
      {"options.max_new_tokens", "--max-new-tokens"}, {"questions", "--questions"}};

  consr_eval::question_set set;
  try {
    consr_eval::question_load_options lo;
    lo.limit = o.limit;
    lo.image_dir = o.image_dir;
    set = consr_eval::load_questions(o.questions, lo);
  } catch (const consr_eval::error& e) {
    rethrow_for_flags(e, flags, "--questions");
  }
  json base;
  if (!o.compare.empty()) {
    base = read_json_file(o.compare, "--compare");
    if (consr_evaluate::have_scorer() && !(base.is_object() && base.contains("items") && base["items"].is_array()))
      fail("--compare", "'" + o.compare + "' has no 'items' array (expected an eval.json written by consr_eval)");
  }
  // Data parallel (docs/distributed.md): the questions of image k go to rank k mod ranks (so an
  // image's questions still share a batch and its features are computed once); rank 0 gathers the
  // answers in question order, scores them and writes the files.
  if (!(o.dist_timeout > 0)) fail("--dist-timeout", "must be > 0 seconds");
  const consr_runtime::dist_env env = consr_runtime::read_dist_env();
  const std::shared_ptr<consr_runtime::process_group> dist = consr_runtime::process_group::connect(
      env, std::chrono::milliseconds(static_cast<std::int64_t>(o.dist_timeout * 1000.0)));
  if (dist->size() > 1 && o.device == "cuda") mo.device = consr_runtime::parse_device("cuda:" + std::to_string(env.local_rank), "--device");
  if (dist->is_root()) {
    prepare_output(o.out, "--out");
    prepare_output(o.answers, "--answers");
  }
  std::vector<std::size_t> mine;  // indices into set.questions
  {
    std::map<std::string, std::size_t> image_index;
    for (std::size_t i = 0; i < set.questions.size(); ++i) {
      const std::size_t k = image_index.emplace(set.questions[i].image, image_index.size()).first->second;
      if (k % static_cast<std::size_t>(dist->size()) == static_cast<std::size_t>(dist->rank())) mine.push_back(i);
    }
  }
  std::vector<consr_eval::question> my_questions;
  for (std::size_t i : mine) my_questions.push_back(set.questions[i]);

  std::ostringstream discard;
  std::ostream& log = dist->is_root() ? std::cerr : discard;
  const auto t0 = clock_type::now();
  std::optional<consr_eval::answer_generator> gen;
  try {
    gen.emplace(o.model, o.adapter, mo);
  } catch (const std::exception& e) {
    rethrow_for_flags(e, flags, "--model");
  }
  const double load_s = std::chrono::duration<double>(clock_type::now() - t0).count();
  const auto& cfg = gen->model().config();
  log << "model: " << absolute(o.model) << " (" << cfg.model_type << ", " << o.dtype << ", " << o.device << ")";
  if (gen->adapter())
    log << "; adapter: " << absolute(o.adapter) << " (rank " << gen->adapter()->rank << ", alpha " << gen->adapter()->alpha << ")";
  log << "; loaded in " << load_s << " s\n"
      << "questions: " << set.path << " (" << consr_eval::to_string(set.format) << ", " << set.questions.size() << ")\n";

  if (dist->size() > 1)
    log << "ranks: " << dist->size() << " (" << env.source << ", c10d Gloo); questions shared out by image\n";
  consr_eval::progress_options p;
  if (!o.quiet && dist->is_root()) p.stream = &std::cerr;
  std::vector<consr_eval::answer> answers;
  try {
    answers = gen->generate(my_questions, g, p);
  } catch (const std::exception& e) {
    rethrow_for_flags(e, flags, "--questions");
  }
  consr_eval::generation_stats st = gen->last_stats();
  if (dist->size() > 1) {
    // Every rank's answers (and timing) as one JSON string each, gathered on every rank.
    json mine_json = {{"seconds", st.seconds}, {"batches", st.batches}, {"images_encoded", st.images_encoded},
                      {"generated_tokens", st.generated_tokens}, {"answers", json::array()}};
    for (std::size_t k = 0; k < answers.size(); ++k)
      mine_json["answers"].push_back({{"index", mine[k]}, {"id", answers[k].id}, {"text", answers[k].text},
                                      {"token_ids", answers[k].token_ids}, {"tokens", answers[k].tokens},
                                      {"reason", static_cast<int>(answers[k].reason)}});
    const std::vector<std::string> all = dist->all_gather(mine_json.dump(), "consr_eval: gathering the answers");
    if (!dist->is_root()) return 0;
    answers.assign(set.questions.size(), consr_eval::answer{});
    std::vector<bool> seen(set.questions.size(), false);
    st = consr_eval::generation_stats{};
    st.questions = set.questions.size();
    for (const std::string& text : all) {
      const json r = json::parse(text);
      st.seconds = std::max(st.seconds, r.at("seconds").get<double>());  // the slowest rank's wall time
      st.batches += r.at("batches").get<std::size_t>();
      st.images_encoded += r.at("images_encoded").get<std::size_t>();
      st.generated_tokens += r.at("generated_tokens").get<std::int64_t>();
      for (const auto& a : r.at("answers")) {
        const std::size_t i = a.at("index").get<std::size_t>();
        consr_eval::answer& x = answers.at(i);
        x.id = a.at("id").get<std::string>();
        x.text = a.at("text").get<std::string>();
        x.token_ids = a.at("token_ids").get<std::vector<std::int64_t>>();
        x.tokens = a.at("tokens").get<std::int64_t>();
        x.reason = static_cast<consr_runtime::finish_reason>(a.at("reason").get<int>());
        seen[i] = true;
      }
    }
    for (std::size_t i = 0; i < seen.size(); ++i)
      if (!seen[i]) fail("--questions", "internal: question " + std::to_string(i) + " was answered by no rank");
  }
  if (!o.answers.empty()) consr_eval::write_answers_jsonl(absolute(o.answers), set.questions, answers);

  // The metrics (the world library: the one call), then the run's description.
  ojson eval;
  try {
    eval = consr_evaluate::score(set, answers, absolute(o.model), absolute(o.adapter));
  } catch (const std::exception& e) {
    fail("--questions", std::string("scoring failed: ") + e.what());
  }
  if (gen->adapter())
    eval["adapter_config"] = {{"rank", gen->adapter()->rank}, {"alpha", gen->adapter()->alpha},
                              {"use_rslora", gen->adapter()->use_rslora}, {"target_modules", gen->adapter()->target_modules}};
  eval["questions"] = {{"path", set.path}, {"format", consr_eval::to_string(set.format)},
                       {"scenes", set.scenes_path.empty() ? ojson(nullptr) : ojson(set.scenes_path)},
                       {"count", set.questions.size()}, {"limit", o.limit}};
  ojson by_type = ojson::object();
  for (const auto& [type, n] : g.max_new_tokens_by_type) by_type[type] = n;
  eval["generation"] = {{"decoding", "greedy"}, {"ranks", dist->size()}, {"batch_size", g.batch_size}, {"max_new_tokens", g.max_new_tokens},
                        {"max_new_tokens_by_type", by_type}, {"dtype", o.dtype}, {"device", o.device},
                        {"image_max_pixels", o.image_max_pixels}, {"image_min_pixels", o.image_min_pixels}};
  std::int64_t cut = 0;
  for (const auto& a : answers) cut += a.reason != consr_runtime::finish_reason::stop_token ? 1 : 0;
  eval["speed"] = {{"load_seconds", load_s},          {"generate_seconds", st.seconds},
                   {"items_per_second", st.items_per_second()}, {"batches", st.batches},
                   {"images_encoded", st.images_encoded}, {"generated_tokens", st.generated_tokens},
                   {"answers_cut_by_limit", cut}};
  eval["answers_file"] = o.answers.empty() ? ojson(nullptr) : ojson(absolute(o.answers));
  if (!consr_evaluate::have_scorer()) {
    eval["n"] = answers.size();
    ojson list = ojson::array();
    for (std::size_t i = 0; i < answers.size(); ++i) list.push_back(ojson::parse(consr_eval::answer_record(set.questions[i], answers[i]).dump()));
    eval["answers"] = std::move(list);
  }
  if (!o.compare.empty()) {
    try {
      eval = consr_evaluate::compare(base, eval);
    } catch (const std::exception& e) {
      fail("--compare", "'" + o.compare + "': cannot compare: " + e.what());
    }
  }
  write_json(absolute(o.out), eval, "--out");

  consr_evaluate::print_table(std::cout, eval);
  std::cout << "answered " << answers.size() << " questions in " << st.seconds << " s (" << st.items_per_second()
            << " items/s, " << st.images_encoded << " images encoded, " << st.generated_tokens << " tokens); wrote "
            << absolute(o.out);
  if (!o.answers.empty()) std::cout << " and " << absolute(o.answers);
  std::cout << "\n";
  return 0;
}

}  // namespace

// glibc returns every freed block above 128 KiB..32 MiB to the kernel, so each prefill's activations
// (LLaVA-OV: ~1.5 k image tokens per row) are page-faulted in again: 55 % of the process's time was
// spent in the kernel on the tiny fixture. Keeping freed memory for reuse and growing the heap in
// 512 MiB steps (address space; pages are touched only when used) cuts the system time by 2/3.
void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 512 << 20);
#endif
}

int main(int argc, char** argv) {
  keep_freed_memory();
  cli_options o;
  CLI::App app{"consr_eval: greedy answers of a vision-language model (+ LoRA adapter) to a questions file, scored"};
  app.add_option("--model", o.model, "Hugging Face model directory (Qwen2.5-VL or LLaVA-OneVision)");
  app.add_option("--adapter", o.adapter, "PEFT LoRA adapter directory (the pipeline's adapter/ or PEFT's save_pretrained)");
  app.add_option("--questions", o.questions, "questions JSONL: the world's DIR/<split>.jsonl or a POPE file");
  app.add_option("--image-dir", o.image_dir, "directory relative image paths are resolved against (default: the questions file's)");
  app.add_option("--limit", o.limit, "answer only the first N questions (0 = all)");
  app.add_option("--out", o.out, "eval.json to write (metrics, model, adapter, settings, speed)");
  app.add_option("--answers", o.answers, "also write the answers as JSONL {id, answer, tokens}");
  app.add_option("--compare", o.compare, "an earlier eval.json (e.g. the base model's) to compare with");
  app.add_option("--batch-size", o.batch_size, "questions per generate() batch")->capture_default_str();
  app.add_option("--max-new-tokens", o.max_new_tokens, "token limit of short answers (every type but description)")
      ->capture_default_str();
  app.add_option("--description-max-new-tokens", o.description_max_new_tokens, "token limit of description questions")
      ->capture_default_str();
  app.add_option("--type-max-new-tokens", o.type_max_new_tokens, "TYPE=N: token limit of one question type (repeatable)");
  app.add_option("--dtype", o.dtype, "float32 or bfloat16")->capture_default_str();
  app.add_option("--device", o.device, "cpu or cuda[:n]")->capture_default_str();
  app.add_option("--image-max-pixels", o.image_max_pixels, "Qwen2.5-VL max_pixels (0 = the model's)")->capture_default_str();
  app.add_option("--image-min-pixels", o.image_min_pixels, "Qwen2.5-VL min_pixels (0 = the model's)")->capture_default_str();
  app.add_option("--feature-cache", o.feature_cache_images, "images whose vision features are kept")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress line on stderr");
  app.add_option("--nproc", o.nproc, "start N local ranks (consr's launcher; or run under torchrun / srun)")
      ->capture_default_str();
  app.add_option("--dist-timeout", o.dist_timeout, "seconds a rank waits for the others in a collective")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: consr_eval: " << e.what() << " (see --help)\n";
    return 1;
  }
  try {
    if (o.nproc < 1 || o.nproc > 1024) fail("--nproc", "must be in [1, 1024], got " + std::to_string(o.nproc));
    if (o.nproc > 1) {
      if (consr_runtime::read_dist_env().world_size > 1)
        fail("--nproc", "not under a launcher that already set RANK / WORLD_SIZE (torchrun, srun); leave it at 1 there");
      return consr_runtime::launch_local(o.nproc, consr_runtime::command_line_without_nproc(argc, argv), std::cerr) == 0
                 ? 0
                 : 1;
    }
    return run(o);
  } catch (const c10::Error& e) {
    std::cout.flush();
    std::cerr << "error: consr_eval: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << (dynamic_cast<const cli_error*>(&e) ? "" : "consr_eval: ") << e.what() << "\n";
  }
  return 1;
}
