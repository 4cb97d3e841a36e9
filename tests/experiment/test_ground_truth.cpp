// check_report: a pipeline report's candidates checked against world questions.
#include <catch2/catch.hpp>

#include "consr_experiment/ground_truth.hpp"
#include "consr_world/questions.hpp"
#include "consr_world/world.hpp"

using nlohmann::json;

namespace {
json candidate(int index, const std::string& text, double r, bool usable = true) {
  return {{"index", index}, {"kind", "sampled"}, {"text", text},      {"usable", usable},
          {"scored_tokens", 3}, {"P", 0.5}, {"P_corrupt", 0.4}, {"P_semantic", 0.6},
          {"S_semantic", 0.1},  {"S_corrupt", 0.1}, {"r", usable ? json(r) : json(nullptr)}};
}
}  // namespace

TEST_CASE("check_report: candidates of a world question are checked by the world's checker") {
  const consr_world::scene s = consr_world::make_scene(5, consr_world::split::train, 3);
  const std::vector<consr_world::question> qs = consr_world::make_questions(s);
  REQUIRE(!qs.empty());
  const consr_world::question* yes_q = nullptr;
  const consr_world::question* desc_q = nullptr;
  for (const auto& q : qs) {
    if (q.type == consr_world::question_type::existence && q.label == "yes" && !yes_q) yes_q = &q;
    if (q.type == consr_world::question_type::description) desc_q = &q;
  }
  REQUIRE(yes_q);
  REQUIRE(desc_q);
  json report = {{"items", json::array()}};
  report["items"].push_back({{"id", yes_q->id},
                             {"candidates", json::array({candidate(0, "Yes, there is.", 0.3), candidate(1, "No.", 0.1),
                                                         candidate(2, "<|image_pad|>", 0.0, false)})}});
  report["items"].push_back({{"id", desc_q->id},
                             {"candidates", json::array({candidate(0, consr_world::describe(s), 0.2),
                                                         candidate(1, "There is a red star and a red star.", 0.4)})}});
  std::vector<json> rows;
  const auto items = consr_experiment::check_report(report, qs, {s}, &rows);
  REQUIRE(items.size() == 2);
  CHECK(items[0].type == "existence");
  CHECK(items[0].candidates[0].correct);
  CHECK(!items[0].candidates[1].correct);
  CHECK(!items[0].candidates[2].usable);
  CHECK(items[1].type == "description");
  CHECK(items[1].candidates[0].correct);  // the canonical description: no hallucination, full recall
  REQUIRE(rows.size() == 5);
  CHECK(rows[0]["parsed"] == "yes");
  CHECK(rows[2]["r"].is_null());
  CHECK(rows[3]["correct"] == true);

  // an item that is not a world question, and a description without its scene
  json bad = {{"items", json::array({{{"id", "nope"}, {"candidates", json::array()}}})}};
  CHECK_THROWS_WITH(consr_experiment::check_report(bad, qs, {s}, nullptr),
                    Catch::Contains("'report'") && Catch::Contains("nope"));
  json no_scene = {{"items", json::array({report["items"][1]})}};
  CHECK_THROWS_WITH(consr_experiment::check_report(no_scene, qs, {}, nullptr), Catch::Contains("scene"));
  CHECK_THROWS_WITH(consr_experiment::check_report(json::object(), qs, {s}, nullptr), Catch::Contains("'items'"));
}
