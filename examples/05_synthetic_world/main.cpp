// consr_world — the synthetic visual world of issue 13 on the command line.
//
//   consr_world generate --out DIR [--seed S] [--train N] [--validation N] [--test N]
//                        [--types existence,colour,count,position,reading,description]
//                        [--existence-per-split K] [--max-questions-per-image M] [--threads T]
//   consr_world score --questions DIR/test.jsonl --answers answers.jsonl --out eval.json
//                     [--scenes DIR/test_scenes.jsonl] [--model NAME] [--adapter NAME]
//                     [--compare other_eval.json]
//
// See docs/world.md for the world, the files and the metrics.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "consr_world/dataset.hpp"
#include "consr_world/evaluate.hpp"

namespace cw = consr_world;

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int run_generate(const std::string& out, cw::generate_options& opt, const std::string& types) {
  if (!types.empty() && types != "all") {
    for (bool& e : opt.questions.enabled) e = false;
    for (const auto& t : split_list(types)) {
      cw::question_type qt;
      if (!cw::parse_question_type(t, qt)) {
        std::cerr << "consr_world: unknown question type '" << t << "'\n";
        return 2;
      }
      opt.questions.enabled[static_cast<int>(qt)] = true;
    }
  }
  const auto sum = cw::generate(out, opt);
  for (int s = 0; s < 3; ++s)
    if (sum.images[s] > 0)
      std::printf("%s: %d images, %d questions\n", cw::name(static_cast<cw::split>(s)), sum.images[s], sum.questions[s]);
  std::printf("wrote %s in %.2f s\n", out.c_str(), sum.seconds);
  return 0;
}

}  // namespace

int run_score(const std::string& questions, std::string scenes, const std::string& answers, const std::string& out,
              const std::string& compare, const std::string& model, const std::string& adapter) {
  if (scenes.empty()) {
    // DIR/<split>.jsonl -> DIR/<split>_scenes.jsonl
    scenes = questions;
    const auto dot = scenes.rfind(".jsonl");
    if (dot != std::string::npos) scenes.replace(dot, 6, "_scenes.jsonl");
    else scenes += "_scenes.jsonl";
  }
  const auto qs = cw::read_questions(questions);
  std::vector<cw::scene> sc;
  bool has_descriptions = false;
  for (const auto& q : qs) has_descriptions = has_descriptions || q.type == cw::question_type::description;
  if (has_descriptions) sc = cw::read_scenes(scenes);
  cw::evaluate_options opt;
  opt.model = model;
  opt.adapter = adapter;
  auto eval = cw::evaluate(qs, sc, cw::read_answers(answers), opt);
  if (!compare.empty()) {
    std::ifstream f(compare);
    if (!f) throw std::runtime_error("cannot read " + compare);
    eval = cw::compare(nlohmann::json::parse(f), nlohmann::json::parse(eval.dump()));
  }
  std::ofstream o(out);
  if (!o) throw std::runtime_error("cannot write " + out);
  o << eval.dump(2) << "\n";
  if (!o) throw std::runtime_error("write failed: " + out);
  cw::print_table(std::cout, nlohmann::json::parse(eval.dump()));
  if (eval["missing"].get<long long>() > 0 || eval["unmatched"].get<long long>() > 0)
    std::cout << "missing answers: " << eval["missing"] << ", answers without a question: " << eval["unmatched"] << "\n";
  std::cout << "wrote " << out << "\n";
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"consr_world: a deterministic synthetic visual world with ground truth"};
  app.require_subcommand(1);

  cw::generate_options gopt;
  std::string gout, types;
  auto* gen = app.add_subcommand("generate", "write images, questions, scenes, POPE files and world.json");
  gen->add_option("--out", gout, "output directory")->required();
  gen->add_option("--seed", gopt.seed, "world seed")->capture_default_str();
  gen->add_option("--train", gopt.counts[0], "training images")->capture_default_str();
  gen->add_option("--validation", gopt.counts[1], "validation images")->capture_default_str();
  gen->add_option("--test", gopt.counts[2], "test images")->capture_default_str();
  gen->add_option("--types", types, "question types, comma-separated (default all)");
  gen->add_option("--existence-per-split", gopt.questions.existence_per_split,
                  "yes/no pairs per POPE split and image")->capture_default_str();
  gen->add_option("--max-questions-per-image", gopt.questions.max_per_image, "cap per image (0: none)")
      ->capture_default_str();
  gen->add_option("--threads", gopt.threads, "worker threads (0: all cores)")->capture_default_str();

  std::string sq, ss, sa, so, sc, model, adapter;
  auto* score = app.add_subcommand("score", "score free-form answers against the ground truth");
  score->add_option("--questions", sq, "DIR/<split>.jsonl")->required();
  score->add_option("--scenes", ss, "DIR/<split>_scenes.jsonl (default: next to the questions)");
  score->add_option("--answers", sa, "answers JSONL {id, answer, tokens?}")->required();
  score->add_option("--out", so, "eval.json to write")->required();
  score->add_option("--compare", sc, "another eval.json: add the paired comparison");
  score->add_option("--model", model, "model name recorded in eval.json");
  score->add_option("--adapter", adapter, "adapter name recorded in eval.json");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*gen) return run_generate(gout, gopt, types);
    if (*score) return run_score(sq, ss, sa, so, sc, model, adapter);
  } catch (const std::exception& e) {
    std::cerr << "consr_world: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
