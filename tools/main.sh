#!/usr/bin/env bash
# The project's main job (README): installs what it needs, builds, and runs the end-to-end ConSR
# pipeline (examples/04_consr_pipeline, docs/pipeline.md) on its embedded default input: three test
# images on the tiny Qwen2.5-VL fixture — descriptions, 15 candidates per item, the contrastive reward
# and pair selection, LLaMA-Factory / LLaVA-OV preference files and a report, LoRA training with the
# ConSR loss — with every artefact in build/default/consr_pipeline_out. Without LibTorch it runs the
# host-only ConSR flow on synthetic numbers (examples/01_consr_flow) instead.
# Extra arguments go to the program (e.g. --model DIR --input items.jsonl for a real run).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset default >/dev/null
# The pipeline target exists where CMake found LibTorch (the output is captured first: grep -q
# closing the pipe early would fail the pipeline under pipefail).
targets=$(cmake --build --preset default --target help)
if grep -q '^consr_pipeline:' <<<"$targets"; then
  cmake --build --preset default -j "$(nproc)" --target consr_pipeline
  exec build/default/examples/04_consr_pipeline/consr_pipeline --out build/default/consr_pipeline_out --fresh "$@"
fi
echo "main.sh: LibTorch not found: running the host-only ConSR flow (examples/01_consr_flow) instead of the pipeline"
cmake --build --preset default -j "$(nproc)" --target 01_consr_flow
exec build/default/examples/01_consr_flow/01_consr_flow "$@"
