// Stage 4, write: the LLaMA-Factory sharegpt ranking data + dataset_info.json, the LLaVA-OV DPO
// records, and the full report (every candidate's probabilities and reward, the pairs with their
// token log-probs) → report.json (written last) + 3 files. Every scored candidate's text is
// re-tokenized and compared with the ids that were scored (trainers that read text train on the
// re-tokenized ids); the pairs are marked, and dropped with --require-round-trip.
#include "stages.hpp"

namespace consr_pipeline {
namespace {

json write_settings(const run_context& ctx) {
  json j = artefact_store::settings_base(stage::write);
  j["upstream"] = {{"descriptions", ctx.store.content_hash(files::descriptions)},
                   {"candidates", ctx.store.content_hash(files::candidates)},
                   {"scores", ctx.store.content_hash(files::scores)}};
  // The round-trip check's inputs (the tokenizer) and the output format of this stage's files.
  j["write_format"] = 2;
  j["tokenizer_fnv1a"] = fnv1a_hex(read_file(ctx.tokenizer().path(), "tokenizer"));
  if (ctx.o.require_round_trip) j["require_round_trip"] = true;
  return j;
}

// Whether `text` re-tokenizes to the scored ids: encode(text) followed by the end-of-turn token the
// scoring appended (trainers put the template's <|im_end|> after the response text). nullopt for a
// candidate that was not scored (unusable).
std::optional<bool> round_trips(const cr::tokenizer& tok, std::int64_t end_of_turn, const std::string& text,
                                const json& scored_ids) {
  std::vector<std::int64_t> scored = scored_ids.get<std::vector<std::int64_t>>();
  if (scored.empty()) return std::nullopt;
  std::vector<std::int64_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const cr::runtime_error&) {
    return false;  // not valid UTF-8: no trainer reads it back as these ids
  }
  if (scored.back() == end_of_turn && (ids.empty() || ids.back() != end_of_turn)) ids.push_back(end_of_turn);
  return ids == scored;
}

std::string write(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  const std::map<std::string, std::string> desc = ctx.descriptions();
  const json cand_doc = ctx.store.read(files::candidates);
  const json score_doc = ctx.store.read(files::scores);
  const json& cand_items = cand_doc.at("items");
  const json& score_items = score_doc.at("items");

  const cr::tokenizer& tok = ctx.tokenizer();
  const std::int64_t end_of_turn = tok.token_id("<|im_end|>");
  // round_trip[i][c]: whether candidate c of item i re-tokenizes to its scored ids (null: not scored).
  std::vector<std::vector<json>> round_trip(ctx.items.size());
  std::size_t checked = 0, kept = 0;
  for (std::size_t i = 0; i < ctx.items.size(); ++i)
    for (std::size_t c = 0; c < cand_items[i].at("candidates").size(); ++c) {
      const std::optional<bool> ok = round_trips(tok, end_of_turn, cand_items[i]["candidates"][c].at("text"),
                                                 score_items[i]["candidates"][c].at("token_ids"));
      round_trip[i].push_back(ok ? json(*ok) : json(nullptr));
      checked += ok ? 1 : 0;
      kept += ok && *ok ? 1 : 0;
    }

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
      x["round_trip"] = round_trip[i][c];
      cands.push_back(x);
    }
    e["candidates"] = cands;
    items.push_back(e);
  }
  report["items"] = items;

  json pairs = json::array(), dropped = json::array(), llamafactory = json::array(), llava = json::array();
  std::map<std::size_t, int> rank_in_item;
  std::size_t pairs_not_round_trip = 0;
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
                  {"logp_corrupt", sc[c].at("logp_corrupt")},
                  {"round_trip", round_trip[i][c]}};
    };
    const bool both = round_trip[i][cw] == json(true) && round_trip[i][cl] == json(true);
    json entry{{"item", i}, {"id", it.id}, {"margin", pr.at("margin")}, {"chosen", side(cw)}, {"rejected", side(cl)},
               {"round_trip", both}};
    if (!both) ++pairs_not_round_trip;
    if (!both && o.require_round_trip) {
      dropped.push_back(entry);
      continue;
    }
    pairs.push_back(entry);
    const int rank = rank_in_item[i]++;
    const std::string pair_id = rank == 0 ? it.id : it.id + "_" + std::to_string(rank);
    // Beside the text, for trainers that can use them: the scored ids (response + <|im_end|>) and
    // their token log-probs under (x, I) with the base model, and whether the text re-tokenizes to
    // those ids (a trainer that reads the text trains on the re-tokenized ids). Extra keys: the
    // loaders below read only their own columns.
    const auto extras = [&](json& rec) {
      rec["round_trip"] = both;
      rec["chosen_token_ids"] = sc[cw].at("token_ids");
      rec["rejected_token_ids"] = sc[cl].at("token_ids");
      rec["chosen_token_logps"] = sc[cw].at("logp");
      rec["rejected_token_logps"] = sc[cl].at("logp");
    };
    // LLaMA-Factory sharegpt ranking format: one <image> placeholder per image in the human turn.
    json lf{{"conversations", json::array({{{"from", "human"}, {"value", "<image>" + it.prompt}}})},
            {"chosen", {{"from", "gpt"}, {"value", cand[cw].at("text")}}},
            {"rejected", {{"from", "gpt"}, {"value", cand[cl].at("text")}}},
            {"images", json::array({it.image})}};
    extras(lf);
    llamafactory.push_back(lf);
    // LLaVA-NeXT / LLaVA-OV DPO record (its loader prepends "<image>\n" to the prompt itself).
    json lv{{"id", pair_id},
            {"prompt", it.prompt},
            {"answer", ""},
            {"image", it.image},
            {"chosen", cand[cw].at("text")},
            {"rejected", cand[cl].at("text")}};
    extras(lv);
    llava.push_back(lv);
  }
  report["pairs"] = pairs;
  report["round_trip"] = {{"check", "tokenizer.encode(text) + <|im_end|> == the scored token ids"},
                          {"candidates_scored", checked},
                          {"candidates_round_trip", kept},
                          {"candidates_not_round_trip", checked - kept},
                          {"pairs_not_round_trip", pairs_not_round_trip},
                          {"required", o.require_round_trip},
                          {"pairs_dropped", dropped.size()}};
  if (!dropped.empty()) report["dropped_pairs"] = dropped;
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
  const std::string round_trip_line =
      std::to_string(kept) + "/" + std::to_string(checked) + " scored candidates re-tokenize to their scored ids; " +
      std::to_string(pairs_not_round_trip) + " pair(s) do not" +
      (o.require_round_trip ? " (dropped: --require-round-trip)" : " (marked round_trip: false; --require-round-trip drops them)");
  ctx.log << "  round trip: " << round_trip_line << "\n";
  return std::to_string(pairs.size()) + " pair(s) -> " + files::llamafactory_data + " (+ dataset_info.json), " +
         files::llava + ", " + files::report + "; round trip " + std::to_string(kept) + "/" + std::to_string(checked) +
         " candidates, " + std::to_string(pairs_not_round_trip) + " pair(s) not" +
         (o.require_round_trip ? " (dropped)" : "");
}

}  // namespace

const stage_definition& write_stage() {
  static const stage_definition s{stage::write,
                                  files::report,
                                  {files::llamafactory_data, files::llamafactory_info, files::llava},
                                  write_settings,
                                  write,
                                  /*every_rank=*/false};
  return s;
}

}  // namespace consr_pipeline
