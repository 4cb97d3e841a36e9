// Example 08: the main job as an experiment (tools/main.sh): world → ConSR pipeline on the shipped
// world model → reward quality against ground truth → evaluation before/after on the test split →
// report.md / report.json / summary.json / plots. See experiment.hpp and docs/experiments.md.
//
//   consr_experiment [--out DIR] [--model DIR] [--items N] [--test-images N] ... [-- pipeline options]
//
// Options after `--` go to the pipeline (consr_pipeline --help), e.g. `-- --lambda 0.5 --loss-type standard`.
#include <exception>
#include <iostream>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "experiment.hpp"

int main(int argc, char** argv) {
  consr_experiment::experiment_options o;
  CLI::App app{"The ConSR main job as an experiment on the synthetic world: does the contrastive self-reward pick "
               "the right answer, and does ConSR-DPO training reduce hallucination?",
               "consr_experiment"};
  app.add_option("--out", o.out, "output directory")->capture_default_str();
  app.add_option("--model", o.model_dir, "model directory (default: the shipped models/qwen2_5_vl_world)");
  app.add_option("--world", o.world_dir, "use (or create once) this world directory instead of <out>/world");
  app.add_option("--world-seed", o.world_seed, "seed of the synthetic world")->capture_default_str();
  app.add_option("--train-images", o.train_images, "train images of the world")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--validation-images", o.validation_images, "validation images")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--test-images", o.test_images, "test images (held out; evaluated only)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--items", o.pipeline_items, "train questions through the pipeline (file order)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--validation-items", o.validation_items, "validation questions scored for the validation loss (0: none)")->capture_default_str();
  app.add_option("--eval-questions", o.eval_questions, "test questions evaluated (0 = all)")->capture_default_str();
  app.add_option("--eval-split", o.eval_split, "split evaluated before/after: test, or validation to choose settings")
      ->capture_default_str()->check(CLI::IsMember({"test", "validation"}));
  app.add_option("--eval-batch-size", o.eval_batch_size, "rows per generation batch in the evaluation")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", o.seed, "the pipeline's seed")->capture_default_str();
  app.add_flag("!--no-plots", o.plots, "do not call tools/plot_report.py");
  app.add_option("--python", o.python, "the Python that has matplotlib")->capture_default_str();
  app.add_option("pipeline_args", o.pipeline_args, "options for the pipeline, after `--`");
  app.positionals_at_end();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    consr_experiment::run_experiment(o, std::cout);
    return 0;
  } catch (const c10::Error& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
