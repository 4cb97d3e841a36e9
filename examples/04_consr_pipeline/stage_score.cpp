// Stage 3, score: teacher-forced token log-probs of every candidate under (x, I), (x, Ĩ) and (x', I)
// (spec §5), then consr::contrastive_reward (eqs. 1–6) and consr::select_pairs (spec §6) → scores.json.
#include <consr/adapters/torch.hpp>
#include <consr/pairs.hpp>
#include <consr/reward.hpp>

#include "stages.hpp"

namespace consr_pipeline {
namespace {

json score_settings(const run_context& ctx) {
  const options& o = ctx.o;
  json j = artefact_store::settings_base(stage::score);
  j["upstream"] = {{"descriptions", ctx.store.content_hash(files::descriptions)},
                   {"candidates", ctx.store.content_hash(files::candidates)}};
  j["model"] = ctx.model_identity;
  j["seed"] = o.seed;
  j["enriched_prompt"] = o.prompts.enriched;
  j["reward_noise_step"] = o.reward_noise_step;
  j["noise_schedule"] = o.noise_schedule;
  j["lambda"] = o.lambda;
  j["reward_space"] = o.reward_space;
  j["score_batch_size"] = o.score_batch_size;
  // Scores of an older build (every candidate with its own prompt prefill) differ by rounding.
  j["prefix"] = "shared";
  j["pairs_per_group"] = o.pairs_per_group;
  j["min_margin"] = o.min_margin;
  j["skip_duplicates"] = o.skip_duplicates;
  // Only when not the defaults, so that the default run's fingerprint is unchanged.
  if (o.reward_corruption != "noise")
    j["reward_corruption"] = {{"kind", o.reward_corruption},
                              {"mask_probability", o.mask_probability},
                              {"mask_patch_size", o.mask_patch_size},
                              {"mixup_lambda", o.mixup_lambda}};
  if (o.pair_rule != "reward") j["pair_rule"] = o.pair_rule;
  return j;
}

// Ĩ of eq. 2 for item i: the --reward-corruption of the normalized image (Table 7), keyed like the
// reward noise (seed, 2·i + 1) so every corruption is reproducible.
torch::Tensor reward_corruption(run_context& ctx, std::size_t i, const normalized_image& image) {
  const options& o = ctx.o;
  const consr::rng_key key = noise_key(o.seed, i, noise_use::reward);
  if (o.reward_corruption == "noise") return ctx.add_noise(image.pixels, key, o.reward_noise_step);
  torch::NoGradGuard no_grad;
  if (o.reward_corruption == "mixup") {
    const std::size_t j = (i + 1) % ctx.items.size();
    const normalized_image other = ctx.normalize(ctx.items[j].image);
    if (!other.pixels.sizes().equals(image.pixels.sizes()))
      fail("argument '--reward-corruption': mixup of item " + std::to_string(i) + " needs item " + std::to_string(j) +
           "'s image at the same processed size");
    return consr::libtorch::mixup(image.pixels, other.pixels, o.mixup_lambda);
  }
  if (o.reward_corruption == "mask") {
    consr::patch_mask_options po;
    po.probability = o.mask_probability;
    po.patch_size = o.mask_patch_size;
    return consr::libtorch::random_patch_mask(image.pixels.contiguous(), key, po);
  }
  return consr::libtorch::random_resized_crop(image.pixels.contiguous(), key);
}

// The three token log-prob vectors of every candidate of item i (empty for an unusable one).
json score_item(run_context& ctx, std::size_t i, const json& cands, const std::map<std::string, std::string>& desc) {
  const options& o = ctx.o;
  model_context& m = ctx.model();
  const item& it = ctx.items[i];
  const normalized_image image = ctx.normalize(it.image);
  std::int64_t tokens = 0;
  // One vision forward per image: (x, I) and (x', I) share the clean features.
  const cr::image_inputs clean_images = ctx.with_features(ctx.pack(image.pixels, image.hw, tokens));
  std::int64_t corrupt_tokens = 0;
  const cr::image_inputs corrupt_images = ctx.with_features(
      ctx.pack(reward_corruption(ctx, i, image), image.hw, corrupt_tokens));
  cr::prompt_input clean, corrupt, semantic;
  clean.input_ids = ctx.encode_prompt(it.prompt, tokens);
  clean.images = clean_images;
  corrupt.input_ids = clean.input_ids;
  corrupt.images = corrupt_images;
  semantic.input_ids = ctx.encode_prompt(
      fill_template(o.prompts.enriched, {{"{Image Description}", ctx.prompt_safe(desc.at(it.image))},
                                         {"{Original Prompt}", it.prompt}}),
      tokens);
  semantic.images = clean_images;
  std::vector<std::vector<std::int64_t>> responses;
  std::vector<std::size_t> usable;
  for (std::size_t c = 0; c < cands.size(); ++c) {
    if (!cands[c].at("usable").get<bool>()) continue;
    usable.push_back(c);
    responses.push_back(cands[c].at("token_ids").get<std::vector<std::int64_t>>());
  }
  std::vector<cr::scored_response> s_clean, s_corrupt, s_semantic;
  if (!responses.empty()) {
    // The candidates share each condition's prompt + image: its prefix is prefilled once.
    const auto score = [&](const cr::prompt_input& prompt) {
      return cr::score_responses_shared(*m.model, prompt, responses, m.end_of_turn, o.score_batch_size);
    };
    s_clean = score(clean);
    s_corrupt = score(corrupt);
    s_semantic = score(semantic);
  }
  json scored = json::array();
  std::size_t u = 0;
  for (std::size_t c = 0; c < cands.size(); ++c) {
    json e;
    if (u < usable.size() && usable[u] == c) {
      if (s_clean[u].token_ids != s_corrupt[u].token_ids || s_clean[u].token_ids != s_semantic[u].token_ids)
        fail("internal: the three scoring passes scored different tokens");
      e["token_ids"] = s_clean[u].token_ids;
      e["logp"] = s_clean[u].logprobs;
      e["logp_corrupt"] = s_corrupt[u].logprobs;
      e["logp_semantic"] = s_semantic[u].logprobs;
      ++u;
    } else {
      e["token_ids"] = json::array();
      e["logp"] = json::array();
      e["logp_corrupt"] = json::array();
      e["logp_semantic"] = json::array();
    }
    scored.push_back(e);
  }
  json result;
  result["id"] = it.id;
  result["candidates"] = scored;
  return result;
}

json selection_json(const consr::selection_report& s) {
  return {{"groups", s.groups},
          {"pairs", s.pairs},
          {"groups_with_pairs", s.groups_with_pairs},
          {"groups_too_few_candidates", s.groups_too_few_candidates},
          {"groups_no_margin", s.groups_no_margin},
          {"nonfinite_candidates", s.nonfinite_candidates},
          {"duplicate_candidates", s.duplicate_candidates}};
}

std::string score(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  const std::vector<item>& items = ctx.items;
  const std::map<std::string, std::string> desc = ctx.descriptions();
  const json cand_doc = ctx.store.read(files::candidates);
  const json& cand_items = cand_doc.at("items");
  if (cand_items.size() != items.size()) fail("artefact 'candidates.json' does not match the input items");
  std::size_t resumed = 0;
  const auto one = [&](std::size_t i) {
    ctx.model();
    const auto t0 = clock_type::now();
    json result = score_item(ctx, i, cand_items[i].at("candidates"), desc);
    std::size_t scored = 0;
    for (const auto& c : cand_items[i].at("candidates")) scored += c.at("usable").get<bool>() ? 1 : 0;
    ctx.log << "  item " << (i + 1) << "/" << items.size() << " '" << items[i].id << "': " << scored
            << " candidates x 3 conditions in " << fixed(seconds_since(t0), 2) << " s\n";
    return result;
  };
  const std::optional<std::vector<json>> all = run_items(ctx, run, items.size(), one, resumed);
  if (!all) return "rank " + std::to_string(ctx.dist->rank()) + "'s share done";
  const std::vector<json>& per_item = *all;

  // Pack every candidate's token log-probs (an unusable one as an empty segment, so it gets NaN and
  // is listed by the reward report) and let consr compute eqs. 1-6 and select the pairs (spec §6).
  std::vector<float> logp, logp_corrupt, logp_semantic;
  std::vector<std::int64_t> offsets{0}, tokens, groups{0};
  for (const auto& r : per_item) {
    for (const auto& c : r.at("candidates")) {
      for (const auto& v : c.at("logp")) logp.push_back(v.get<float>());
      for (const auto& v : c.at("logp_corrupt")) logp_corrupt.push_back(v.get<float>());
      for (const auto& v : c.at("logp_semantic")) logp_semantic.push_back(v.get<float>());
      for (const auto& v : c.at("token_ids")) tokens.push_back(v.get<std::int64_t>());
      offsets.push_back(static_cast<std::int64_t>(logp.size()));
    }
    groups.push_back(static_cast<std::int64_t>(offsets.size()) - 1);
  }
  const std::size_t num_candidates = offsets.size() - 1;
  std::vector<double> p(num_candidates), pc(num_candidates), ps(num_candidates), ss(num_candidates),
      sc(num_candidates), r(num_candidates);
  consr::reward_outputs<double> outs;
  const consr::index_t C = static_cast<consr::index_t>(num_candidates);
  outs.p = consr::make_view(p.data(), C);
  outs.p_corrupt = consr::make_view(pc.data(), C);
  outs.p_semantic = consr::make_view(ps.data(), C);
  outs.s_semantic = consr::make_view(ss.data(), C);
  outs.s_corrupt = consr::make_view(sc.data(), C);
  outs.reward = consr::make_view(r.data(), C);
  consr::reward_options ropt;
  ropt.lambda = o.lambda;
  ropt.space = consr::parse_reward_space(o.reward_space);
  const consr::index_t N = static_cast<consr::index_t>(logp.size());
  const consr::reward_report rrep = consr::contrastive_reward(
      consr::make_view(static_cast<const float*>(logp.data()), N),
      consr::make_view(static_cast<const float*>(logp_corrupt.data()), N),
      consr::make_view(static_cast<const float*>(logp_semantic.data()), N),
      consr::make_view(static_cast<const std::int64_t*>(offsets.data()), C + 1), outs, ropt);
  consr::pair_options popt;
  popt.pairs_per_group = o.pairs_per_group;
  popt.min_margin = o.min_margin;
  popt.skip_duplicates = o.skip_duplicates;
  std::vector<consr::preference_pair> pairs;
  const consr::index_t G = static_cast<consr::index_t>(items.size());
  const consr::selection_report srep = consr::select_pairs(
      consr::make_view(static_cast<const double*>(r.data()), C),
      consr::make_view(static_cast<const std::int64_t*>(groups.data()), G + 1),
      consr::make_view(static_cast<const std::int64_t*>(tokens.data()), static_cast<consr::index_t>(tokens.size())),
      consr::make_view(static_cast<const std::int64_t*>(offsets.data()), C + 1), pairs, popt);
  if (o.pair_rule == "povid") {
    // The POVID-style baseline (Table 3): no reward, the first usable sampled response preferred over
    // the first usable noisy one (the reward report above still describes r).
    pairs.clear();
    for (std::size_t i = 0; i < cand_items.size(); ++i) {
      const json& cs = cand_items[i].at("candidates");
      const auto first_of = [&](const char* kind) -> std::int64_t {
        for (std::size_t c = 0; c < cs.size(); ++c)
          if (cs[c].at("kind") == kind && cs[c].at("usable").get<bool>()) return static_cast<std::int64_t>(c);
        return -1;
      };
      const std::int64_t cw = first_of("sampled"), cl = first_of("noisy");
      if (cw < 0 || cl < 0) continue;
      const std::int64_t base = groups[i];
      consr::preference_pair pr{static_cast<consr::index_t>(i), base + cw, base + cl, r[base + cw], r[base + cl],
                                r[base + cw] - r[base + cl]};
      pairs.push_back(pr);
    }
  }

  json items_out = json::array();
  std::size_t g = 0;
  for (std::size_t i = 0; i < per_item.size(); ++i) {
    json item_out;
    item_out["id"] = per_item[i].at("id");
    json cands = json::array();
    for (const auto& c : per_item[i].at("candidates")) {
      json e = c;
      e["scored_tokens"] = c.at("token_ids").size();
      e["P"] = p[g];
      e["P_corrupt"] = pc[g];
      e["P_semantic"] = ps[g];
      e["S_semantic"] = ss[g];
      e["S_corrupt"] = sc[g];
      e["r"] = r[g];
      cands.push_back(e);
      ++g;
    }
    item_out["candidates"] = cands;
    items_out.push_back(item_out);
  }
  json pairs_out = json::array();
  for (const auto& pr : pairs) {
    const std::int64_t first = groups[static_cast<std::size_t>(pr.group)];
    pairs_out.push_back({{"item", pr.group},
                         {"id", items[static_cast<std::size_t>(pr.group)].id},
                         {"chosen", pr.chosen - first},
                         {"rejected", pr.rejected - first},
                         {"chosen_reward", pr.chosen_reward},
                         {"rejected_reward", pr.rejected_reward},
                         {"margin", pr.margin}});
  }
  json out = run.header();
  out["items"] = items_out;
  out["reward_report"] = {{"candidates", rrep.candidates},
                          {"empty_candidates", rrep.empty_candidates},
                          {"empty_indices", rrep.empty_indices},
                          {"nonfinite_rewards", rrep.nonfinite_rewards}};
  out["selection_report"] = selection_json(srep);
  out["pairs"] = pairs_out;
  ctx.store.write(files::scores, out);

  ctx.log << "  selection: " << srep.pairs << " pair(s) from " << srep.groups << " item(s); with pairs "
          << srep.groups_with_pairs << ", too few candidates " << srep.groups_too_few_candidates << ", no margin "
          << srep.groups_no_margin << "; candidates skipped: non-finite reward " << srep.nonfinite_candidates
          << " (unusable " << rrep.empty_candidates << "), duplicates " << srep.duplicate_candidates << "\n";
  for (const auto& pr : pairs)
    ctx.log << "    '" << items[static_cast<std::size_t>(pr.group)].id << "': chosen #"
            << pr.chosen - groups[static_cast<std::size_t>(pr.group)] << " (r = " << pr.chosen_reward
            << ") vs rejected #" << pr.rejected - groups[static_cast<std::size_t>(pr.group)]
            << " (r = " << pr.rejected_reward << "), margin " << pr.margin << "\n";
  return std::to_string(num_candidates) + " candidates scored under 3 conditions, " + std::to_string(srep.pairs) +
         " pair(s)" + (resumed ? ", " + std::to_string(resumed) + " item(s) resumed" : "");
}

}  // namespace

const stage_definition& score_stage() {
  static const stage_definition s{stage::score, files::scores, {}, score_settings, score};
  return s;
}

}  // namespace consr_pipeline
