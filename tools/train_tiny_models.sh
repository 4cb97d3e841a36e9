#!/usr/bin/env bash
# Generates the synthetic world and trains the project's two tiny vision-language models from random
# initialisation (docs/tiny-models.md):
#
#   models/qwen2_5_vl_world/        Qwen2.5-VL architecture (consr_runtime::qwen2_5_vl_model)
#   models/llava_onevision_world/   LLaVA-OneVision architecture (consr_runtime::llava_onevision_model)
#
# Each is an ordinary Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json,
# tokenizer_config.json, chat_template.json, preprocessor_config.json, generation_config.json) plus
# training_log.json and runtime_reference.safetensors (for tools/check_tiny_models_with_transformers.py).
# The two models train at the same time, one LibTorch thread each (2 cores).
#
# Usage: tools/train_tiny_models.sh [BUILD_DIR]        (default build/default; configured with LibTorch)
# Environment: WORLD (default BUILD_DIR/tiny_models_world), WORLD_SEED (1), SEED (0), OUT (models),
#              QWEN_STEPS, LLAVA_STEPS (the step budgets, chosen on the validation split).
# The result is a pure function of the seeds and the thread count (1) for a given LibTorch build.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build/default}
WORLD=${WORLD:-$BUILD/tiny_models_world}
WORLD_SEED=${WORLD_SEED:-1}
SEED=${SEED:-0}
OUT=${OUT:-models}
QWEN_STEPS=${QWEN_STEPS:-800}
LLAVA_STEPS=${LLAVA_STEPS:-800}

cmake --build "$BUILD" --target consr_world_cli consr_train_tiny
WORLD_EXE="$BUILD/examples/05_synthetic_world/consr_world"
TRAIN_EXE="$BUILD/examples/06_tiny_models/consr_train_tiny"

# The world: 3000 training, 300 validation, 600 test images (the test split is neither trained on
# nor used to choose anything here).
"$WORLD_EXE" generate --out "$WORLD" --seed "$WORLD_SEED" --train 3000 --validation 300 --test 600

mkdir -p "$OUT"
common=(--world "$WORLD" --force --seed "$SEED" --threads 1 --batch-size 16 --lr 3e-3 --warmup 40
        --rope-theta 10 --type-temperature 1 --log-every 50 --final-eval-per-type 100)
start=$(date +%s)
"$TRAIN_EXE" "${common[@]}" --family qwen2_5_vl --out "$OUT/qwen2_5_vl_world" --steps "$QWEN_STEPS" \
  > "$OUT/qwen2_5_vl_world.log" 2>&1 &
qwen=$!
"$TRAIN_EXE" "${common[@]}" --family llava_onevision --patch-size 28 --out "$OUT/llava_onevision_world" \
  --steps "$LLAVA_STEPS" > "$OUT/llava_onevision_world.log" 2>&1 &
llava=$!
status=0
wait "$qwen" || status=1
wait "$llava" || status=1
end=$(date +%s)

for m in qwen2_5_vl_world llava_onevision_world; do
  echo "== $m"
  cat "$OUT/$m.log"
  rm -f "$OUT/$m.log"
done
echo "== both models in $((end - start)) s of wall time (training, saving, reload check, final validation)"
exit "$status"
