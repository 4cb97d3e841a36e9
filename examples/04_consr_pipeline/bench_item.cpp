// consr_bench_item: times one pipeline item's model work, stage by stage, on a Qwen2.5-VL checkpoint
// (issue 17 §2): the description (greedy), the 15 candidates (5 sampled, 5 revised, 5 from the
// noisy image) and the scoring of 15 candidates under the three conditions (x, I), (x, Ĩ), (x', I),
// with the shared-prefix path the pipeline uses and the per-row path it used before.
//
// The inputs are synthetic and deterministic (token ids, an image of random patches, a noisy copy,
// fixed candidate responses): they are written to <out>/inputs.safetensors so that
// tools/bench_runtime_vs_transformers.py runs the very same work in transformers and compares the
// outputs (greedy tokens, scoring log-probs). consr's outputs go to <out>/consr.safetensors, the
// timings to <out>/consr.json.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/safetensors.hpp"

namespace cr = consr_runtime;
using json = nlohmann::json;

namespace {

struct settings {
  std::string model, out;
  int threads = 0;
  std::int64_t image_size = 448;
  std::int64_t prompt_tokens = 40;
  std::int64_t description_tokens = 64;
  std::int64_t candidate_tokens = 32;
  std::int64_t samples = 5;
  std::int64_t score_batch = 15;
  std::uint64_t seed = 7;
  bool unshared = true;
  double tolerance = 1e-4;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// Deterministic ids in [lo, hi) and lengths: a counter-based draw, so the inputs depend on the seed only.
struct draws {
  std::uint64_t seed, stream = 0;
  std::int64_t uniform(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(cr::counter_uniform(seed, 1, stream++) * static_cast<double>(hi - lo));
  }
  std::vector<std::int64_t> ids(std::int64_t n, std::int64_t lo, std::int64_t hi) {
    std::vector<std::int64_t> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }
};

torch::Tensor as_tensor(const std::vector<std::int64_t>& v) { return torch::tensor(v, torch::kInt64); }

// Ragged rows as one flat tensor + lengths (what the Python side reads back).
void put_rows(std::vector<std::pair<std::string, torch::Tensor>>& out, const std::string& name,
              const std::vector<std::vector<std::int64_t>>& rows) {
  std::vector<std::int64_t> flat, lengths;
  for (const auto& r : rows) {
    flat.insert(flat.end(), r.begin(), r.end());
    lengths.push_back(static_cast<std::int64_t>(r.size()));
  }
  out.emplace_back(name, as_tensor(flat));
  out.emplace_back(name + "_lengths", as_tensor(lengths));
}

std::vector<float> flat_logprobs(const std::vector<cr::scored_response>& s) {
  std::vector<float> v;
  for (const auto& r : s) v.insert(v.end(), r.logprobs.begin(), r.logprobs.end());
  return v;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

int run(const settings& s) {
  if (s.threads > 0) torch::set_num_threads(s.threads);
  torch::NoGradGuard no_grad;
  std::filesystem::create_directories(s.out);
  double t0 = now();
  std::shared_ptr<cr::vision_language_model> model = cr::load_model(s.model);
  const double load_s = now() - t0;
  if (!model->config().qwen2_5_vl)
    throw cr::runtime_error("consr_bench_item: argument '--model': '" + s.model + "' is " + model->config().model_type +
                            "; the benchmark builds Qwen2.5-VL inputs (patch rows + grid)");
  const auto& vc = model->config().qwen2_5_vl->vision;
  const std::int64_t unit = vc.patch_size * vc.spatial_merge_size;
  if (s.image_size < unit || s.image_size % unit != 0)
    throw cr::runtime_error("consr_bench_item: argument '--image-size': must be a positive multiple of " +
                            std::to_string(unit) + " (patch × merge), got " + std::to_string(s.image_size));
  const auto& qc = *model->config().qwen2_5_vl;
  // Text ids below every special token the prompts use.
  const std::int64_t hi = std::min({model->text().vocab_size, model->image_token_id(), qc.vision_start_token_id});
  draws d{s.seed};
  const std::int64_t grid = s.image_size / vc.patch_size;
  const std::int64_t image_tokens = (grid / vc.spatial_merge_size) * (grid / vc.spatial_merge_size);
  std::vector<std::int64_t> image_run{qc.vision_start_token_id};
  image_run.insert(image_run.end(), static_cast<std::size_t>(image_tokens), model->image_token_id());
  image_run.push_back(qc.vision_end_token_id);
  const auto system = d.ids(20, 0, hi), question = d.ids(s.prompt_tokens, 0, hi), assistant = d.ids(5, 0, hi);
  auto prompt_of = [&](const std::vector<std::vector<std::int64_t>>& parts) {
    std::vector<std::int64_t> p = system;
    p.insert(p.end(), image_run.begin(), image_run.end());
    for (const auto& part : parts) p.insert(p.end(), part.begin(), part.end());
    p.insert(p.end(), assistant.begin(), assistant.end());
    return p;
  };
  const std::vector<std::int64_t> prompt = prompt_of({question});
  const std::vector<std::int64_t> enriched = prompt_of({d.ids(s.description_tokens, 0, hi), question});
  std::vector<std::vector<std::int64_t>> revise_prompts, candidates;
  for (std::int64_t k = 0; k < s.samples; ++k)
    revise_prompts.push_back(prompt_of({question, d.ids(s.candidate_tokens - k, 0, hi), d.ids(20, 0, hi)}));
  for (std::int64_t k = 0; k < 3 * s.samples; ++k) candidates.push_back(d.ids(d.uniform(s.candidate_tokens * 3 / 4, s.candidate_tokens + 1), 0, hi));
  torch::manual_seed(static_cast<std::uint64_t>(s.seed));
  const std::int64_t patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size * vc.patch_size;
  torch::Tensor pixels = torch::randn({grid * grid, patch_dim});
  torch::Tensor noisy = pixels * 0.6 + torch::randn({grid * grid, patch_dim}) * 0.8;
  torch::Tensor thw = torch::tensor({std::int64_t{1}, grid, grid}, torch::kInt64).view({1, 3});

  std::vector<std::pair<std::string, torch::Tensor>> inputs{
      {"prompt", as_tensor(prompt)}, {"enriched", as_tensor(enriched)}, {"pixel_values", pixels},
      {"noisy_pixel_values", noisy},  {"image_grid_thw", thw}};
  put_rows(inputs, "revise_prompts", revise_prompts);
  put_rows(inputs, "candidates", candidates);
  cr::save_safetensors(s.out + "/inputs.safetensors", inputs,
                       {{"description_tokens", std::to_string(s.description_tokens)},
                        {"candidate_tokens", std::to_string(s.candidate_tokens)},
                        {"samples", std::to_string(s.samples)},
                        {"score_batch", std::to_string(s.score_batch)}});

  auto with_pixels = [&](const std::vector<std::int64_t>& ids, const torch::Tensor& px) {
    cr::prompt_input p;
    p.input_ids = ids;
    p.images.pixel_values = px;
    p.images.image_grid_thw = thw;
    return p;
  };
  cr::sampling_options greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = s.description_tokens;  // no stop tokens: exactly this many
  cr::sampling_options sampled;
  sampled.temperature = 1.0;
  sampled.top_p = 1.0;
  sampled.max_new_tokens = s.candidate_tokens;
  sampled.seed = s.seed;
  json timings;

  // 1. The description: one stream, greedy.
  t0 = now();
  const cr::generation_result description = cr::generate(*model, {with_pixels(prompt, pixels)}, greedy).at(0);
  timings["description"] = now() - t0;

  // 2. The candidates: 5 sampled, 5 revisions (5 prompts), 5 from the noisy image.
  t0 = now();
  auto sampled_out = cr::generate_samples(*model, with_pixels(prompt, pixels), s.samples, sampled, 0);
  double t1 = now();
  std::vector<cr::prompt_input> revise;
  for (const auto& r : revise_prompts) revise.push_back(with_pixels(r, pixels));
  std::vector<std::uint64_t> keys;
  for (std::int64_t k = 0; k < s.samples; ++k) keys.push_back(static_cast<std::uint64_t>(100 + k));
  auto revised_out = cr::generate(*model, revise, sampled, keys);
  double t2 = now();
  auto noisy_out = cr::generate_samples(*model, with_pixels(prompt, noisy), s.samples, sampled, 200);
  timings["candidates"] = now() - t0;
  timings["candidates_sampled"] = t1 - t0;
  timings["candidates_revised"] = t2 - t1;
  timings["candidates_noisy"] = now() - t2;
  std::int64_t generated = 0;
  for (const auto* g : {&sampled_out, &revised_out, &noisy_out})
    for (const auto& r : *g) generated += static_cast<std::int64_t>(r.token_ids.size());

  // 3. Scoring: one vision forward per image (as the pipeline does), then 15 candidates under each
  // condition; shared prefix, then (for comparison) one prefill per candidate.
  const std::int64_t eot = -1;  // score the candidates as given (the Python side does the same)
  t0 = now();
  cr::image_inputs clean_f, noisy_f;
  clean_f.features = model->image_features(with_pixels(prompt, pixels).images);
  clean_f.image_grid_thw = thw;
  noisy_f.features = model->image_features(with_pixels(prompt, noisy).images);
  noisy_f.image_grid_thw = thw;
  const double vision_s = now() - t0;
  cr::prompt_input c_clean{prompt, clean_f}, c_noisy{prompt, noisy_f}, c_enriched{enriched, clean_f};
  t0 = now();
  std::vector<std::vector<float>> shared;
  for (const auto* p : {&c_clean, &c_noisy, &c_enriched})
    shared.push_back(flat_logprobs(cr::score_responses_shared(*model, *p, candidates, eot, s.score_batch)));
  timings["scoring_shared"] = now() - t0 + vision_s;
  std::vector<std::vector<float>> unshared;
  if (s.unshared) {
    t0 = now();
    for (const auto* p : {&c_clean, &c_noisy, &c_enriched})
      unshared.push_back(flat_logprobs(cr::score_responses(
          *model, std::vector<cr::prompt_input>(candidates.size(), *p), candidates, eot, s.score_batch)));
    timings["scoring_unshared"] = now() - t0 + vision_s;
  }
  timings["scoring_vision"] = vision_s;
  timings["item"] = timings["description"].get<double>() + timings["candidates"].get<double>() +
                    timings["scoring_shared"].get<double>();

  std::vector<std::pair<std::string, torch::Tensor>> outputs{{"description", as_tensor(description.token_ids)}};
  const char* names[] = {"logp_clean", "logp_noisy", "logp_enriched"};
  for (std::size_t c = 0; c < 3; ++c) outputs.emplace_back(names[c], torch::tensor(shared[c], torch::kFloat32));
  cr::save_safetensors(s.out + "/consr.safetensors", outputs);
  json report{{"torch", TORCH_VERSION},
              {"threads", torch::get_num_threads()},
              {"load_s", load_s},
              {"image_tokens", image_tokens},
              {"prompt_tokens", static_cast<std::int64_t>(prompt.size())},
              {"generated_candidate_tokens", generated},
              {"seconds", timings},
              {"peak_rss_mib", peak_rss_mib()}};
  if (s.unshared) {
    double m = 0;
    for (std::size_t c = 0; c < 3; ++c) m = std::max(m, max_diff(shared[c], unshared[c]));
    report["shared_vs_unshared_max_abs_logprob_diff"] = m;
  }
  std::ofstream(s.out + "/consr.json") << report.dump(2) << "\n";
  std::cout << report.dump(2) << "\n";
  if (s.unshared && !(report["shared_vs_unshared_max_abs_logprob_diff"].get<double>() <= s.tolerance)) {
    std::cerr << "consr_bench_item: shared-prefix and per-candidate scoring differ by more than --tolerance "
              << s.tolerance << "\n";
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  CLI::App app{"consr_bench_item: one pipeline item's model work, stage by stage, on a Qwen2.5-VL checkpoint"};
  app.add_option("--model", s.model, "Qwen2.5-VL checkpoint directory")->required()->check(CLI::ExistingDirectory);
  app.add_option("--out", s.out, "directory for inputs.safetensors, consr.safetensors, consr.json (created)")->required();
  app.add_option("--threads", s.threads, "intra-op threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--image-size", s.image_size, "square image side in pixels (a multiple of patch × merge)")->capture_default_str();
  app.add_option("--prompt-tokens", s.prompt_tokens, "question tokens after the image")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--description-tokens", s.description_tokens, "greedy description tokens")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--candidate-tokens", s.candidate_tokens, "tokens per generated candidate")->capture_default_str()->check(CLI::Range(4, 100000));
  app.add_option("--samples", s.samples, "candidates per kind (sampled, revised, noisy)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--score-batch", s.score_batch, "candidates per scoring forward")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", s.seed, "seed of the synthetic inputs and the sampling")->capture_default_str();
  app.add_option("--tolerance", s.tolerance, "largest |log-prob| difference allowed between the shared and per-candidate scoring")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_flag("!--no-unshared", s.unshared, "skip the per-candidate-prefill scoring pass");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(s);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
