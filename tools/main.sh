#!/usr/bin/env bash
# The project's main job (README): installs what it needs, builds, and runs the ConSR method as an
# experiment on the synthetic world (examples/08_consr_experiment, docs/experiments.md):
#   world (train / validation / test images with ground truth) → the ConSR pipeline on the shipped
#   tiny Qwen2.5-VL-like world model (descriptions, 15 candidates, contrastive reward, pairs, LoRA
#   training with the ConSR loss) → how often the reward picks the right answer (against ground truth,
#   with its baselines) → greedy evaluation of the base model and of base + adapter on the held-out
#   test split → report.md, report.json, summary.json, candidates.jsonl and plots/.
# Everything lands in build/default/consr_experiment_out. Without LibTorch it runs the host-only ConSR
# flow on synthetic numbers (examples/01_consr_flow) instead.
# Extra arguments go to the program (consr_experiment --help), e.g. `--model DIR` for another
# checkpoint or `-- --lambda 0.5` for pipeline options.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset default >/dev/null
# The experiment target exists where CMake found LibTorch (the output is captured first: grep -q
# closing the pipe early would fail the pipeline under pipefail).
targets=$(cmake --build --preset default --target help)
if grep -q '^consr_experiment_cli:' <<<"$targets"; then
  cmake --build --preset default -j "$(nproc)" --target consr_experiment_cli
  exec build/default/examples/08_consr_experiment/consr_experiment --out build/default/consr_experiment_out "$@"
fi
echo "main.sh: LibTorch not found: running the host-only ConSR flow (examples/01_consr_flow) instead of the experiment"
cmake --build --preset default -j "$(nproc)" --target 01_consr_flow
exec build/default/examples/01_consr_flow/01_consr_flow "$@"
