// The pipeline's candidates checked against the world. See consr_experiment/ground_truth.hpp.
#include "consr_experiment/ground_truth.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <unordered_map>

#include "consr_world/checker.hpp"

namespace consr_experiment {
namespace {

double number(const nlohmann::json& v) {
  return v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN();
}
nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

std::vector<item_record> check_report(const nlohmann::json& report, const std::vector<consr_world::question>& questions,
                                      const std::vector<consr_world::scene>& scenes, std::vector<nlohmann::json>* rows) {
  const char* fn = "consr_experiment::check_report: argument 'report': ";
  if (!report.is_object() || !report.contains("items") || !report["items"].is_array())
    throw std::invalid_argument(std::string(fn) + "has no 'items' array (expected the pipeline's report.json)");
  std::unordered_map<std::string, const consr_world::question*> by_id;
  for (const auto& q : questions) by_id.emplace(q.id, &q);
  std::unordered_map<std::string, const consr_world::scene*> scene_by_id;
  for (const auto& s : scenes) scene_by_id.emplace(s.id(), &s);

  std::vector<item_record> items;
  for (const auto& it : report["items"]) {
    const std::string id = it.at("id").is_string() ? it["id"].get<std::string>() : it["id"].dump();
    const auto q = by_id.find(id);
    if (q == by_id.end()) throw std::invalid_argument(std::string(fn) + "item '" + id + "' is not a world question");
    const consr_world::scene* sc = nullptr;
    if (q->second->type == consr_world::question_type::description) {
      const auto s = scene_by_id.find(q->second->scene);
      if (s == scene_by_id.end())
        throw std::invalid_argument(std::string(fn) + "item '" + id + "': scene '" + q->second->scene + "' is missing");
      sc = s->second;
    }
    item_record rec;
    rec.id = id;
    rec.type = consr_world::name(q->second->type);
    for (const auto& c : it.at("candidates")) {
      candidate_record cr;
      cr.usable = c.at("usable").get<bool>();
      cr.P = number(c.at("P"));
      cr.S_corrupt = number(c.at("S_corrupt"));
      cr.S_semantic = number(c.at("S_semantic"));
      cr.r = number(c.at("r"));
      cr.length = number(c.at("scored_tokens"));
      const std::string text = c.at("text").get<std::string>();
      const consr_world::check_result verdict = consr_world::check(*q->second, text, sc);
      cr.correct = verdict.correct;
      rec.candidates.push_back(cr);
      if (rows) {
        nlohmann::json row = {{"id", id},
                              {"type", rec.type},
                              {"index", c.at("index")},
                              {"kind", c.at("kind")},
                              {"text", text},
                              {"usable", cr.usable},
                              {"correct", cr.correct},
                              {"parsed", verdict.parsed},
                              {"scored_tokens", c.at("scored_tokens")}};
        for (const char* k : {"P", "P_corrupt", "P_semantic", "S_semantic", "S_corrupt", "r"})
          row[k] = finite_or_null(number(c.at(k)));
        rows->push_back(std::move(row));
      }
    }
    items.push_back(std::move(rec));
  }
  return items;
}

}  // namespace consr_experiment
