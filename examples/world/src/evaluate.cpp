// Scoring answers into eval.json and comparing two evals (see evaluate.hpp).
#include "consr_world/evaluate.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <unordered_map>

#include "consr_world/checker.hpp"
#include "consr_world/metrics.hpp"
#include "jsonl.hpp"

namespace consr_world {

using ojson = nlohmann::ordered_json;

std::vector<answer_record> read_answers(const std::string& path) {
  std::vector<answer_record> out;
  detail::for_each_jsonl(path, [&](const nlohmann::json& j, int lineno) {
    answer_record a;
    if (!j.contains("id") || !j["id"].is_string()) throw detail::jsonl_error(path, lineno, "no string \"id\"");
    a.id = j["id"].get<std::string>();
    if (j.contains("answer") && j["answer"].is_string()) a.answer = j["answer"].get<std::string>();
    if (j.contains("tokens") && j["tokens"].is_number_integer()) a.tokens = j["tokens"].get<long long>();
    out.push_back(std::move(a));
  });
  return out;
}

namespace {

ojson score_json(long long correct, long long n) {
  ojson j;
  j["n"] = n;
  j["correct"] = correct;
  j["accuracy"] = n > 0 ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  const auto ci = wilson(correct, n);
  j["ci95"] = {ci.lo, ci.hi};
  return j;
}

long long word_count(const std::string& s) {
  long long n = 0;
  bool in = false;
  for (char ch : s) {
    const bool space = ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r';
    n += !space && !in;
    in = !space;
  }
  return n;
}

ojson paired_json(const paired_result& p) {
  ojson j;
  j["diff"] = p.diff;
  j["ci95"] = {p.ci95.lo, p.ci95.hi};
  j["p_value"] = p.p_value;
  j["n"] = p.n;
  j["a_only"] = p.a_only;
  j["b_only"] = p.b_only;
  return j;
}

}  // namespace

nlohmann::ordered_json evaluate(const std::vector<question>& questions, const std::vector<scene>& scenes,
                                const std::vector<answer_record>& answers, const evaluate_options& options) {
  std::unordered_map<std::string, const scene*> scene_by_id;
  for (const auto& s : scenes) scene_by_id[s.id()] = &s;
  std::unordered_map<std::string, const answer_record*> answer_by_id;
  for (const auto& a : answers) answer_by_id[a.id] = &a;

  long long per_n[num_question_types] = {}, per_ok[num_question_types] = {};
  std::map<std::string, std::pair<std::vector<bool>, std::vector<bool>>> pope_data;  // split -> labels, said yes
  long long mentions = 0, hallucinated = 0, with_hallucination = 0, descriptions = 0, recalled = 0, scene_types = 0;
  long long length_sum = 0, token_sum = 0, scored = 0, missing = 0, matched = 0;
  bool all_tokens = true;
  ojson items = ojson::array();

  for (const auto& q : questions) {
    const auto it = answer_by_id.find(q.id);
    if (it == answer_by_id.end()) {
      ++missing;
      continue;
    }
    ++matched;
    const answer_record& a = *it->second;
    const scene* s = nullptr;
    if (q.type == question_type::description) {
      const auto si = scene_by_id.find(q.scene);
      if (si == scene_by_id.end()) throw std::runtime_error("consr_world::evaluate: no scene " + q.scene + " for " + q.id);
      s = si->second;
      const auto d = check_description(a.answer, *s);
      mentions += static_cast<long long>(d.mentions.size());
      hallucinated += d.hallucinated;
      with_hallucination += d.hallucinated > 0;
      recalled += d.recalled;
      scene_types += d.scene_types;
      ++descriptions;
    }
    const auto r = check(q, a.answer, s);
    const int t = static_cast<int>(q.type);
    ++per_n[t];
    per_ok[t] += r.correct;
    ++scored;
    length_sum += word_count(a.answer);
    if (a.tokens) token_sum += *a.tokens;
    else all_tokens = false;
    if (q.type == question_type::existence) {
      auto& pd = pope_data[q.pope.empty() ? "random" : q.pope];
      pd.first.push_back(q.label == "yes");
      pd.second.push_back(r.parsed == "yes");
    }
    ojson item;
    item["id"] = q.id;
    item["type"] = name(q.type);
    item["answer"] = a.answer;
    item["correct"] = r.correct;
    item["parsed"] = r.parsed;
    items.push_back(std::move(item));
  }

  ojson j;
  j["model"] = options.model;
  j["adapter"] = options.adapter;
  j["n"] = scored;
  long long total_ok = 0;
  ojson per = ojson::object();
  for (int t = 0; t < num_question_types; ++t) {
    if (per_n[t] == 0) continue;
    per[name(static_cast<question_type>(t))] = score_json(per_ok[t], per_n[t]);
    total_ok += per_ok[t];
  }
  j["per_type"] = per;
  j["overall"] = score_json(total_ok, scored);
  ojson pj = ojson::object();
  for (const char* sp : {"random", "popular", "adversarial"}) {
    const auto it = pope_data.find(sp);
    if (it == pope_data.end()) continue;
    const auto m = pope(it->second.first, it->second.second);
    pj[sp] = {{"n", m.n},           {"accuracy", m.accuracy}, {"precision", m.precision},
              {"recall", m.recall}, {"f1", m.f1},             {"yes_ratio", m.yes_ratio},
              {"false_yes_rate", m.false_yes_rate}};
  }
  j["pope"] = pj;
  j["chair"] = {{"chair_i", mentions > 0 ? static_cast<double>(hallucinated) / static_cast<double>(mentions) : 0.0},
                {"chair_s", descriptions > 0 ? static_cast<double>(with_hallucination) / static_cast<double>(descriptions) : 0.0},
                {"recall", scene_types > 0 ? static_cast<double>(recalled) / static_cast<double>(scene_types) : 0.0},
                {"n", descriptions}};
  const bool tokens = all_tokens && scored > 0;
  j["mean_length"] = scored > 0 ? static_cast<double>(tokens ? token_sum : length_sum) / static_cast<double>(scored) : 0.0;
  j["length_unit"] = tokens ? "tokens" : "words";
  j["missing"] = missing;
  j["unmatched"] = static_cast<long long>(answers.size()) - matched;
  j["items"] = std::move(items);
  return j;
}

nlohmann::ordered_json compare(const nlohmann::json& a, const nlohmann::json& b) {
  std::unordered_map<std::string, bool> a_ok;
  for (const auto& it : a.at("items")) a_ok[it.at("id").get<std::string>()] = it.at("correct").get<bool>();
  std::vector<bool> all_a, all_b;
  std::map<std::string, std::pair<std::vector<bool>, std::vector<bool>>> by_type;
  std::vector<std::string> type_order;
  for (const auto& it : b.at("items")) {
    const auto f = a_ok.find(it.at("id").get<std::string>());
    if (f == a_ok.end()) continue;
    const bool cb = it.at("correct").get<bool>();
    all_a.push_back(f->second);
    all_b.push_back(cb);
    const std::string type = it.at("type").get<std::string>();
    if (!by_type.count(type)) type_order.push_back(type);
    by_type[type].first.push_back(f->second);
    by_type[type].second.push_back(cb);
  }
  ojson out = ojson::parse(b.dump());
  out["baseline"] = {{"model", a.value("model", "")}, {"adapter", a.value("adapter", "")}};
  ojson p = paired_json(paired(all_a, all_b));
  ojson per = ojson::object();
  for (int t = 0; t < num_question_types; ++t) {
    const std::string type = name(static_cast<question_type>(t));
    const auto f = by_type.find(type);
    if (f != by_type.end()) per[type] = paired_json(paired(f->second.first, f->second.second));
  }
  for (const auto& type : type_order)
    if (!per.contains(type)) per[type] = paired_json(paired(by_type[type].first, by_type[type].second));
  p["per_type"] = per;
  out["paired"] = p;
  return out;
}

void print_table(std::ostream& os, const nlohmann::json& e) {
  char buf[256];
  const bool has_paired = e.contains("paired");
  const auto label = [](const nlohmann::json& j) {
    std::string s = j.value("model", "");
    const std::string ad = j.value("adapter", "");
    if (!ad.empty()) s += (s.empty() ? "" : " + ") + ad;
    return s.empty() ? std::string("(unnamed)") : s;
  };
  os << "model: " << label(e);
  if (has_paired && e.contains("baseline")) os << "   baseline: " << label(e["baseline"]);
  os << "\n";
  std::snprintf(buf, sizeof buf, "%-12s %6s %8s  %-17s", "type", "n", "accuracy", "95% CI");
  os << buf;
  if (has_paired) {
    std::snprintf(buf, sizeof buf, " %8s  %-17s %9s %6s %6s", "diff", "95% CI", "p", "a_only", "b_only");
    os << buf;
  }
  os << "\n";
  const auto row = [&](const std::string& name, const nlohmann::json& s, const nlohmann::json* p) {
    std::snprintf(buf, sizeof buf, "%-12s %6lld %8.4f  [%.4f, %.4f]", name.c_str(), s.at("n").get<long long>(),
                  s.at("accuracy").get<double>(), s.at("ci95")[0].get<double>(), s.at("ci95")[1].get<double>());
    os << buf;
    if (p) {
      std::snprintf(buf, sizeof buf, " %+8.4f  [%+.4f, %+.4f] %9.3g %6lld %6lld", p->at("diff").get<double>(),
                    p->at("ci95")[0].get<double>(), p->at("ci95")[1].get<double>(), p->at("p_value").get<double>(),
                    p->at("a_only").get<long long>(), p->at("b_only").get<long long>());
      os << buf;
    }
    os << "\n";
  };
  for (const auto& [type, s] : e.at("per_type").items()) {
    const nlohmann::json* p = nullptr;
    if (has_paired && e["paired"].contains("per_type") && e["paired"]["per_type"].contains(type))
      p = &e["paired"]["per_type"][type];
    row(type, s, p);
  }
  row("overall", e.at("overall"), has_paired ? &e["paired"] : nullptr);
  if (e.contains("pope") && !e["pope"].empty()) {
    std::snprintf(buf, sizeof buf, "\n%-12s %6s %8s %9s %8s %8s %9s %9s\n", "POPE", "n", "accuracy", "precision",
                  "recall", "f1", "yes_ratio", "false_yes");
    os << buf;
    for (const auto& [sp, m] : e["pope"].items()) {
      std::snprintf(buf, sizeof buf, "%-12s %6lld %8.4f %9.4f %8.4f %8.4f %9.4f %9.4f\n", sp.c_str(),
                    m.at("n").get<long long>(), m.at("accuracy").get<double>(), m.at("precision").get<double>(),
                    m.at("recall").get<double>(), m.at("f1").get<double>(), m.at("yes_ratio").get<double>(),
                    m.at("false_yes_rate").get<double>());
      os << buf;
    }
  }
  if (e.contains("chair") && e["chair"].value("n", 0) > 0) {
    const auto& c = e["chair"];
    std::snprintf(buf, sizeof buf, "\nCHAIR (n=%lld): CHAIR_i %.4f  CHAIR_s %.4f  recall %.4f\n", c.at("n").get<long long>(),
                  c.at("chair_i").get<double>(), c.at("chair_s").get<double>(), c.at("recall").get<double>());
    os << buf;
  }
  if (e.contains("mean_length")) {
    std::snprintf(buf, sizeof buf, "mean length: %.2f %s\n", e["mean_length"].get<double>(),
                  e.value("length_unit", "words").c_str());
    os << buf;
  }
}

}  // namespace consr_world
