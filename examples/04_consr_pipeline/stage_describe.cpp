// Stage 1, describe: the model describes each distinct image with the paper's description prompt
// (App. B.1; spec §9) → descriptions.json.
#include "stages.hpp"

namespace consr_pipeline {
namespace {

json describe_settings(const run_context& ctx) {
  const options& o = ctx.o;
  json j = artefact_store::settings_base(stage::describe);
  j["model"] = ctx.model_identity;
  j["seed"] = o.seed;
  j["prompt"] = o.prompts.description;
  j["max_new_tokens"] = o.description_max_new_tokens;
  j["temperature"] = o.description_temperature;
  j["top_p"] = o.top_p;
  json images = json::array();
  for (const auto& path : ctx.unique_images()) images.push_back({path, ctx.image_hash(path)});
  j["images"] = images;
  return j;
}

std::string describe(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  model_context& m = ctx.model();
  const std::vector<std::string> images = ctx.unique_images();
  std::size_t resumed = 0;
  const auto one = [&](std::size_t i) {
    const auto t0 = clock_type::now();
    const normalized_image image = ctx.normalize(images[i]);
    std::int64_t tokens = 0;
    cr::prompt_input prompt;
    prompt.images = ctx.with_features(ctx.pack(image.pixels, image.hw, tokens));
    prompt.input_ids = ctx.encode_prompt(o.prompts.description, tokens);
    const cr::generation_result g =
        cr::generate(*m.model, {prompt}, ctx.sampling(o.description_max_new_tokens, o.description_temperature),
                     {sample_key(i, sample_kind::description, 0)})
            .at(0);
    json d;
    d["image"] = images[i];
    d["text"] = trim(m.tok->decode(g.token_ids, /*skip_special=*/true));
    d["token_ids"] = g.token_ids;
    d["finish_reason"] = finish_name(g.reason);
    ctx.log << "  image " << (i + 1) << "/" << images.size() << ": " << g.token_ids.size() << " tokens in "
            << fixed(seconds_since(t0), 2) << " s\n";
    return d;
  };
  const std::optional<std::vector<json>> all = run_items(ctx, run, images.size(), one, resumed);
  if (!all) return "rank " + std::to_string(ctx.dist->rank()) + "'s share done";
  json list = json::array();
  for (const json& d : *all) list.push_back(d);
  json out = run.header();
  out["descriptions"] = list;
  ctx.store.write(files::descriptions, out);
  return std::to_string(images.size()) + " description(s)" +
         (resumed ? " (" + std::to_string(resumed) + " resumed)" : std::string());
}

}  // namespace

const stage_definition& describe_stage() {
  static const stage_definition s{stage::describe, files::descriptions, {}, describe_settings, describe};
  return s;
}

}  // namespace consr_pipeline
