// consr_world::evaluate / compare: the eval.json contract on a small hand-checked case.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "consr_world/dataset.hpp"
#include "consr_world/evaluate.hpp"

namespace cw = consr_world;

namespace {

std::vector<cw::question> questions_of(const std::vector<cw::scene>& scenes) {
  std::vector<cw::question> out;
  for (const auto& s : scenes)
    for (const auto& q : cw::make_questions(s)) out.push_back(q);
  return out;
}

}  // namespace

TEST_CASE("evaluate: the ground truth scores 100 %, a yes-sayer shows its bias", "[world][evaluate]") {
  std::vector<cw::scene> scenes;
  for (std::uint32_t i = 0; i < 30; ++i) scenes.push_back(cw::make_scene(4, cw::split::test, i));
  const auto qs = questions_of(scenes);

  std::vector<cw::answer_record> truth;
  for (const auto& q : qs) truth.push_back({q.id, q.answer, std::nullopt});
  cw::evaluate_options o;
  o.model = "truth";
  const auto e = cw::evaluate(qs, scenes, truth, o);
  CHECK(e["model"] == "truth");
  CHECK(e["n"] == qs.size());
  CHECK(e["overall"]["accuracy"] == 1.0);
  CHECK(e["overall"]["correct"] == qs.size());
  CHECK(e["per_type"]["existence"]["n"] == 30 * 6);
  CHECK(e["pope"]["adversarial"]["n"] == 60);
  CHECK(e["pope"]["random"]["yes_ratio"] == 0.5);
  CHECK(e["pope"]["popular"]["f1"] == 1.0);
  CHECK(e["chair"]["n"] == 30);
  CHECK(e["chair"]["chair_i"] == 0.0);
  CHECK(e["chair"]["chair_s"] == 0.0);
  CHECK(e["chair"]["recall"] == 1.0);
  CHECK(e["length_unit"] == "words");
  CHECK(e["missing"] == 0);
  CHECK(e["items"].size() == qs.size());
  CHECK(e["items"][0].contains("id"));
  CHECK(e["items"][0].contains("correct"));
  const auto ci = e["overall"]["ci95"];
  CHECK(ci[1] == 1.0);
  CHECK(ci[0].get<double>() > 0.98);

  // "Yes." to everything, tokens given for every answer; descriptions unanswered (missing).
  std::vector<cw::answer_record> yes;
  for (const auto& q : qs)
    if (q.type != cw::question_type::description) yes.push_back({q.id, "Yes, there is.", 3});
  yes.push_back({"no-such-question", "Yes", 1});
  o.model = "yes";
  const auto y = cw::evaluate(qs, scenes, yes, o);
  CHECK(y["missing"] == 30);
  CHECK(y["unmatched"] == 1);
  CHECK(y["length_unit"] == "tokens");
  CHECK(y["mean_length"] == 3.0);
  CHECK(y["pope"]["adversarial"]["yes_ratio"] == 1.0);
  CHECK(y["pope"]["adversarial"]["accuracy"] == 0.5);
  CHECK(y["pope"]["adversarial"]["recall"] == 1.0);
  CHECK(y["pope"]["adversarial"]["false_yes_rate"] == 1.0);
  CHECK(y["per_type"]["existence"]["accuracy"] == 0.5);
  CHECK_FALSE(y["per_type"].contains("description"));
  CHECK(y["chair"]["n"] == 0);

  // compare: truth (baseline a) vs yes (b): b is right only on the "yes" existence questions
  const auto c = cw::compare(nlohmann::json::parse(e.dump()), nlohmann::json::parse(y.dump()));
  const auto& p = c["paired"];
  CHECK(c["baseline"]["model"] == "truth");
  CHECK(p["n"] == y["n"]);
  CHECK(p["b_only"] == 0);
  CHECK(p["a_only"] == y["n"].get<long long>() - y["overall"]["correct"].get<long long>());
  CHECK(p["diff"].get<double>() < 0);
  CHECK(p["p_value"].get<double>() < 1e-6);
  CHECK(p["ci95"][1].get<double>() < 0);
  CHECK(p["per_type"]["existence"]["a_only"] == 90);
  CHECK(p["per_type"]["existence"]["diff"] == -0.5);

  std::ostringstream table;
  cw::print_table(table, nlohmann::json::parse(c.dump()));
  CHECK(table.str().find("overall") != std::string::npos);
  CHECK(table.str().find("adversarial") != std::string::npos);
}

TEST_CASE("read_answers and read_questions round trip", "[world][evaluate]") {
  namespace fs = std::filesystem;
  const fs::path dir = CONSR_WORLD_TEST_OUT;
  fs::create_directories(dir);
  {
    std::ofstream f(dir / "answers.jsonl");
    f << R"({"id": "test-000000-0", "answer": "No.", "tokens": 2})" << "\n\n"
      << R"({"id": "test-000000-1", "answer": "Yes", "extra": 1})" << "\n";
  }
  const auto a = cw::read_answers((dir / "answers.jsonl").string());
  REQUIRE(a.size() == 2u);
  CHECK(a[0].tokens == 2);
  CHECK_FALSE(a[1].tokens.has_value());
  CHECK(a[1].answer == "Yes");
  {
    std::ofstream f(dir / "bad.jsonl");
    f << R"({"answer": "No."})" << "\n";
  }
  CHECK_THROWS(cw::read_answers((dir / "bad.jsonl").string()));
  CHECK_THROWS(cw::read_answers((dir / "missing.jsonl").string()));

  // questions written as JSON and read back carry the ground truth the checker needs
  const auto s = cw::make_scene(4, cw::split::test, 0);
  {
    std::ofstream f(dir / "q.jsonl");
    for (const auto& q : cw::make_questions(s)) f << cw::to_json(q).dump() << "\n";
  }
  const auto back = cw::read_questions((dir / "q.jsonl").string());
  const auto orig = cw::make_questions(s);
  REQUIRE(back.size() == orig.size());
  std::vector<cw::answer_record> truth;
  for (const auto& q : back) truth.push_back({q.id, q.answer, std::nullopt});
  const auto e = cw::evaluate(back, {cw::scene_from_json(nlohmann::json::parse(cw::to_json(s).dump()))}, truth);
  CHECK(e["overall"]["accuracy"] == 1.0);
}
