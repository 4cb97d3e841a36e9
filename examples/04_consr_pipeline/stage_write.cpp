// Stage 4, write: the LLaMA-Factory sharegpt ranking data + dataset_info.json, the LLaVA-OV DPO
// records, and the full report (every candidate's probabilities and reward, the pairs with their
// token log-probs) → report.json (written last) + 3 files.
#include "stages.hpp"

namespace consr_pipeline {
namespace {

json write_settings(const run_context& ctx) {
  json j = artefact_store::settings_base(stage::write);
  j["upstream"] = {{"descriptions", ctx.store.content_hash(files::descriptions)},
                   {"candidates", ctx.store.content_hash(files::candidates)},
                   {"scores", ctx.store.content_hash(files::scores)}};
  return j;
}

std::string write(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  const std::map<std::string, std::string> desc = ctx.descriptions();
  const json cand_doc = ctx.store.read(files::candidates);
  const json score_doc = ctx.store.read(files::scores);
  const json& cand_items = cand_doc.at("items");
  const json& score_items = score_doc.at("items");

  json report = run.header();
  report["model"] = ctx.model_identity;
  report["seed"] = o.seed;
  report["lambda"] = o.lambda;
  report["reward_space"] = o.reward_space;
  json items = json::array();
  for (std::size_t i = 0; i < ctx.items.size(); ++i) {
    const item& it = ctx.items[i];
    json e;
    e["id"] = it.id;
    e["image"] = it.image;
    e["prompt"] = it.prompt;
    e["description"] = desc.at(it.image);
    json cands = json::array();
    for (std::size_t c = 0; c < cand_items[i].at("candidates").size(); ++c) {
      const json& cj = cand_items[i]["candidates"][c];
      const json& sj = score_items[i]["candidates"][c];
      json x;
      x["index"] = c;
      x["kind"] = cj.at("kind");
      if (cj.contains("source")) x["source"] = cj["source"];
      x["text"] = cj.at("text");
      x["response_tokens"] = cj.at("token_ids").size();
      x["scored_tokens"] = sj.at("scored_tokens");
      x["finish_reason"] = cj.at("finish_reason");
      x["usable"] = cj.at("usable");
      if (cj.contains("unusable_reason")) x["unusable_reason"] = cj["unusable_reason"];
      for (const char* k : {"P", "P_corrupt", "P_semantic", "S_semantic", "S_corrupt", "r"}) x[k] = sj.at(k);
      cands.push_back(x);
    }
    e["candidates"] = cands;
    items.push_back(e);
  }
  report["items"] = items;

  json pairs = json::array(), llamafactory = json::array(), llava = json::array();
  std::map<std::size_t, int> rank_in_item;
  for (const auto& pr : score_doc.at("pairs")) {
    const std::size_t i = pr.at("item").get<std::size_t>();
    const std::size_t cw = pr.at("chosen").get<std::size_t>(), cl = pr.at("rejected").get<std::size_t>();
    const item& it = ctx.items.at(i);
    const json& cand = cand_items[i]["candidates"];
    const json& sc = score_items[i]["candidates"];
    const auto side = [&](std::size_t c) {
      return json{{"index", c},
                  {"kind", cand[c].at("kind")},
                  {"text", cand[c].at("text")},
                  {"reward", sc[c].at("r")},
                  {"token_ids", sc[c].at("token_ids")},
                  {"logp_clean", sc[c].at("logp")},
                  {"logp_corrupt", sc[c].at("logp_corrupt")}};
    };
    pairs.push_back({{"item", i}, {"id", it.id}, {"margin", pr.at("margin")}, {"chosen", side(cw)}, {"rejected", side(cl)}});
    const int rank = rank_in_item[i]++;
    const std::string pair_id = rank == 0 ? it.id : it.id + "_" + std::to_string(rank);
    // LLaMA-Factory sharegpt ranking format: one <image> placeholder per image in the human turn.
    llamafactory.push_back({{"conversations", json::array({{{"from", "human"}, {"value", "<image>" + it.prompt}}})},
                            {"chosen", {{"from", "gpt"}, {"value", cand[cw].at("text")}}},
                            {"rejected", {{"from", "gpt"}, {"value", cand[cl].at("text")}}},
                            {"images", json::array({it.image})}});
    // LLaVA-NeXT / LLaVA-OV DPO record (its loader prepends "<image>\n" to the prompt itself).
    llava.push_back({{"id", pair_id},
                     {"prompt", it.prompt},
                     {"answer", ""},
                     {"image", it.image},
                     {"chosen", cand[cw].at("text")},
                     {"rejected", cand[cl].at("text")}});
  }
  report["pairs"] = pairs;
  report["selection_report"] = score_doc.at("selection_report");
  report["reward_report"] = score_doc.at("reward_report");

  json info;
  info["consr_preference"] = {{"file_name", "consr_preference.json"},
                              {"formatting", "sharegpt"},
                              {"ranking", true},
                              {"columns", {{"messages", "conversations"},
                                           {"chosen", "chosen"},
                                           {"rejected", "rejected"},
                                           {"images", "images"}}}};
  ctx.store.write(files::llamafactory_data, llamafactory);
  ctx.store.write(files::llamafactory_info, info);
  ctx.store.write(files::llava, llava);
  ctx.store.write(files::report, report);  // last: marks the stage complete
  return std::to_string(pairs.size()) + " pair(s) -> " + files::llamafactory_data + " (+ dataset_info.json), " +
         files::llava + ", " + files::report;
}

}  // namespace

const stage_definition& write_stage() {
  static const stage_definition s{stage::write,
                                  files::report,
                                  {files::llamafactory_data, files::llamafactory_info, files::llava},
                                  write_settings,
                                  write};
  return s;
}

}  // namespace consr_pipeline
