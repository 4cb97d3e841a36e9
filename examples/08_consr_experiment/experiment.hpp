// examples/08_consr_experiment/experiment.hpp — the main job as an experiment (README, tools/main.sh):
// does the contrastive self-reward pick the right answer, and does ConSR training reduce
// hallucination? On the synthetic world (examples/world) with a model the project trained
// (models/, docs/tiny-models.md):
//
//   1. world       generate the world (train / validation / test images and questions, ground truth);
//   2. pipeline    the ConSR pipeline (examples/04) on the first `pipeline_items` train questions:
//                  descriptions, 15 candidates, three scorings, reward, pairs, LoRA training with the
//                  ConSR loss (validation pairs from `validation_items` validation questions);
//   3. reward      every candidate checked against ground truth: pair agreement and ranking AUC of r,
//                  of its components and of the baselines (consr_experiment/reward_quality.hpp);
//   4. evaluate    greedy answers of the base model and of base + adapter on the held-out test split
//                  (consr_eval), scored by the world's checker (consr_world/evaluate.hpp), compared
//                  per question (paired bootstrap interval, exact McNemar);
//   5. report      report.json, summary.json, report.md, candidates.jsonl, plots/ (tools/plot_report.py).
//
// Every choice (λ, learning rate, steps, noise step) is a default chosen on the validation split
// (docs/experiments.md); the test split is only evaluated.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace consr_experiment {

struct experiment_options {
  std::string out = "consr_experiment_out";
  std::string model_dir;  ///< "" = the shipped Qwen2.5-VL-like world model (default_model_dir())
  std::uint64_t world_seed = 1;
  /// An existing world directory to use instead of generating one under `out` (so that several runs
  /// share the same image paths, and the pipeline can reuse up-to-date stages copied between runs).
  std::string world_dir;
  int train_images = 40;
  int validation_images = 20;
  int test_images = 60;
  std::size_t pipeline_items = 120;   ///< train questions that go through the pipeline (file order)
  std::size_t validation_items = 40;  ///< validation questions scored for the validation loss (0: none)
  std::size_t eval_questions = 0;     ///< test questions evaluated (file order; 0 = all)
  /// The split evaluated before/after: "test" (the report's numbers) or "validation" (for choosing
  /// settings without looking at the test split).
  std::string eval_split = "test";
  std::int64_t eval_batch_size = 16;
  std::uint64_t seed = 0;             ///< the pipeline's seed
  /// Extra pipeline options (consr_pipeline's command line, e.g. --lambda 0.5 --loss-type standard);
  /// they override the experiment's defaults.
  std::vector<std::string> pipeline_args;
  bool plots = true;
  std::string python = "/usr/bin/python3";  ///< Debian's python3-matplotlib installs for this one
};

/// The shipped world model (models/qwen2_5_vl_world in the source tree).
std::string default_model_dir();
/// tools/plot_report.py in the source tree.
std::string plot_script();

/// Runs the experiment, printing progress and the summary table to `log`. Throws std::exception
/// subclasses naming the argument or file on bad input.
void run_experiment(const experiment_options& options, std::ostream& log);

}  // namespace consr_experiment
