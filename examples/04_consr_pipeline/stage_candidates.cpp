// Stage 2, candidates: per item, --num-sampled responses sampled from the clean image, --num-revised
// revisions of them with the paper's revision prompt (App. B.1), and --num-noisy responses sampled
// from the image with diffusion noise (spec §1, §3, §8) → candidates.json.
#include "stages.hpp"

namespace consr_pipeline {
namespace {

json candidates_settings(const run_context& ctx) {
  const options& o = ctx.o;
  json j = artefact_store::settings_base(stage::candidates);
  j["upstream"] = {{"descriptions", ctx.store.content_hash(files::descriptions)}};
  j["model"] = ctx.model_identity;
  j["items"] = ctx.items_json();
  j["seed"] = o.seed;
  j["num_sampled"] = o.num_sampled;
  j["num_revised"] = o.num_revised;
  j["num_noisy"] = o.num_noisy;
  j["temperature"] = o.temperature;
  j["top_p"] = o.top_p;
  j["max_new_tokens"] = o.max_new_tokens;
  j["revision_temperature"] = o.revision_temperature;
  j["revision_prompt"] = o.prompts.revision;
  j["noisy_sampling_step"] = o.noisy_sampling_step;
  j["noise_schedule"] = o.noise_schedule;
  return j;
}

json candidate_json(run_context& ctx, const char* kind, std::int64_t source, const cr::generation_result& g) {
  model_context& m = ctx.model();
  json c;
  c["kind"] = kind;
  if (source >= 0) c["source"] = source;
  c["text"] = m.tok->decode(g.token_ids, /*skip_special=*/true);
  c["token_ids"] = g.token_ids;
  c["finish_reason"] = finish_name(g.reason);
  // A response holding an image / video placeholder cannot be scored (the model would expect image
  // features for it) nor trained on by LLaMA-Factory / LLaVA (placeholder count check): it is kept
  // in the report, marked unusable, and gets no reward.
  std::string why;
  for (auto id : g.token_ids)
    if (m.placeholder_ids.count(id)) why = "contains the image/video placeholder token " + std::to_string(id);
  if (why.empty())
    for (const auto& s : feature_placeholder_strings())
      if (c["text"].get<std::string>().find(s) != std::string::npos) why = "its text contains '" + s + "'";
  c["usable"] = why.empty();
  if (!why.empty()) c["unusable_reason"] = why;
  return c;
}

// The 15 (by default) candidates of item i.
json item_candidates(run_context& ctx, std::size_t i, const std::map<std::string, std::string>& desc) {
  const options& o = ctx.o;
  model_context& m = ctx.model();
  const item& it = ctx.items[i];
  const normalized_image image = ctx.normalize(it.image);
  std::int64_t tokens = 0;
  cr::prompt_input clean;
  clean.images = ctx.with_features(ctx.pack(image.pixels, image.hw, tokens));
  clean.input_ids = ctx.encode_prompt(it.prompt, tokens);
  json cands = json::array();
  std::vector<cr::generation_result> sampled;
  if (o.num_sampled > 0) {
    sampled = cr::generate_samples(*m.model, clean, o.num_sampled, ctx.sampling(o.max_new_tokens, o.temperature),
                                   sample_key(i, sample_kind::sampled, 0));
    for (const auto& g : sampled) cands.push_back(candidate_json(ctx, "sampled", -1, g));
  }
  if (o.num_revised > 0) {
    // The revision prompt (App. B.1) of each sampled response, with the model's own description.
    const std::string description = ctx.prompt_safe(desc.at(it.image));
    std::vector<cr::prompt_input> prompts;
    std::vector<std::uint64_t> keys;
    for (std::int64_t k = 0; k < o.num_revised; ++k) {
      const std::string original = ctx.prompt_safe(m.tok->decode(sampled.at(static_cast<std::size_t>(k)).token_ids, true));
      cr::prompt_input p;
      p.images = clean.images;
      p.input_ids = ctx.encode_prompt(fill_template(o.prompts.revision, {{"{Description}", description},
                                                                         {"{Question}", it.prompt},
                                                                         {"{Original Response}", original}}),
                                      tokens);
      prompts.push_back(std::move(p));
      keys.push_back(sample_key(i, sample_kind::revised, k));
    }
    auto revised = cr::generate(*m.model, prompts, ctx.sampling(o.max_new_tokens, o.revision_temperature), keys);
    for (std::size_t k = 0; k < revised.size(); ++k)
      cands.push_back(candidate_json(ctx, "revised", static_cast<std::int64_t>(k), revised[k]));
  }
  if (o.num_noisy > 0) {
    // Noise on the normalized image (spec §3), before the processor's pack (Qwen's temporal
    // duplication), keyed by (run seed, item index).
    const torch::Tensor noisy =
        ctx.add_noise(image.pixels, noise_key(o.seed, i, noise_use::noisy_sampling), o.noisy_sampling_step);
    std::int64_t noisy_tokens = 0;
    cr::prompt_input p;
    p.images = ctx.with_features(ctx.pack(noisy, image.hw, noisy_tokens));
    p.input_ids = clean.input_ids;
    auto gs = cr::generate_samples(*m.model, p, o.num_noisy, ctx.sampling(o.max_new_tokens, o.temperature),
                                   sample_key(i, sample_kind::noisy, 0));
    for (const auto& g : gs) cands.push_back(candidate_json(ctx, "noisy", -1, g));
  }
  json result;
  result["id"] = it.id;
  result["candidates"] = cands;
  return result;
}

std::string candidates(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  ctx.model();
  const std::map<std::string, std::string> desc = ctx.descriptions();
  std::size_t resumed = 0, total = 0, unusable = 0;
  const auto one = [&](std::size_t i) {
    const auto t0 = clock_type::now();
    json result = item_candidates(ctx, i, desc);
    ctx.log << "  item " << (i + 1) << "/" << ctx.items.size() << " '" << ctx.items[i].id
            << "': " << result["candidates"].size() << " candidates in " << fixed(seconds_since(t0), 2) << " s\n";
    return result;
  };
  const std::optional<std::vector<json>> all = run_items(ctx, run, ctx.items.size(), one, resumed);
  if (!all) return "rank " + std::to_string(ctx.dist->rank()) + "'s share done";
  json list = json::array();
  for (const json& result : *all) {
    for (const auto& c : result["candidates"]) {
      ++total;
      if (!c["usable"].get<bool>()) ++unusable;
    }
    list.push_back(result);
  }
  json out = run.header();
  out["items"] = list;
  ctx.store.write(files::candidates, out);
  return std::to_string(total) + " candidates (" + std::to_string(o.num_sampled) + " sampled + " +
         std::to_string(o.num_revised) + " revised + " + std::to_string(o.num_noisy) + " noisy per item), " +
         std::to_string(unusable) + " unusable" + (resumed ? ", " + std::to_string(resumed) + " item(s) resumed" : "");
}

}  // namespace

const stage_definition& candidates_stage() {
  static const stage_definition s{stage::candidates, files::candidates, {}, candidates_settings, candidates};
  return s;
}

}  // namespace consr_pipeline
