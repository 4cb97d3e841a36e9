#!/usr/bin/env bash
# Builds the libFuzzer harnesses in fuzz/ (clang, -fsanitize=fuzzer,address,undefined, build dir
# build/fuzz) and runs each for SECONDS (default 60), seeded from tests/fixtures. Findings (crash-*,
# leak-*, timeout-*, oom-* files) land in build/fuzz/findings/<harness>/; the growing corpora in
# build/fuzz/corpus/<harness>/; the reproducers of fixed findings, committed in fuzz/regressions/<harness>/,
# are replayed first. Prints one line per harness (executions, corpus size, findings) and
# exits 1 if any harness found something. Not part of tools/test.sh (see docs/fuzzing.md).
# Usage: tools/fuzz.sh [SECONDS] [HARNESS...]
#   FUZZ_JOBS=N   run N harnesses at once (default 1)
#   FUZZ_NO_BUILD=1  skip the build step
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all=(image safetensors safetensors_index tokenizer_json tokenizer_encode chat_template config)
harnesses=("$@")
((${#harnesses[@]})) || harnesses=("${all[@]}")
build=build/fuzz
jobs=${FUZZ_JOBS:-1}

for tool in clang clang++; do
  command -v "$tool" >/dev/null || { echo "fuzz.sh: $tool not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
done
if [[ -z ${FUZZ_NO_BUILD:-} ]]; then
  CC=clang CXX=clang++ cmake -S fuzz -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j "${FUZZ_BUILD_JOBS:-2}" --target $(printf 'fuzz_%s ' "${harnesses[@]}")
fi

seeds() {  # the seed files of one harness
  local f=tests/fixtures
  case $1 in
    image) ls $f/images_pil/*.png $f/images_pil/*.jpg $f/models/images/*.png $f/models/images/*.jpg 2>/dev/null ;;
    safetensors) ls $f/safetensors/*.safetensors $f/safetensors/sharded/*.safetensors $f/images_pil/*.safetensors 2>/dev/null ;;
    safetensors_index) ls $f/models/*/model.safetensors.index.json $f/safetensors/sharded/*.json 2>/dev/null ;;
    tokenizer_json) ls $f/tokenizer/tokenizer*.json fuzz/seeds/tokenizer_json/*.json 2>/dev/null ;;
    tokenizer_encode) ls $f/tokenizer/chat_templates.json $f/tokenizer/reference_added_flags.json 2>/dev/null ;;
    chat_template) ;;
    config) ls $f/models/*/config.json $f/models/*/preprocessor_config.json 2>/dev/null ;;
  esac
}

run_one() {
  local name=$1 corpus=$build/corpus/$1 findings=$build/findings/$1 log=$build/logs/$1.log
  mkdir -p "$corpus" "$findings" "$build/logs"
  # First replay the committed reproducers of earlier findings (fuzz/regressions/<harness>/).
  if compgen -G "fuzz/regressions/$name/*" >/dev/null; then
    if ! "$build/fuzz_$name" fuzz/regressions/"$name"/* >"$build/logs/$name.regressions.log" 2>&1; then
      printf '%-18s REGRESSION: a committed reproducer fails again (log %s)\n' "$name" "$build/logs/$name.regressions.log"
      return
    fi
  fi
  touch "$build/logs/$name.start"  # findings are counted from here: older ones belong to earlier runs
  local s
  for s in $(seeds "$name"); do
    [[ -s $s ]] && cp -n "$s" "$corpus/seed_$(basename "$s")"
  done
  local dict=()
  case $name in safetensors*|tokenizer_json|config) dict=(-dict=fuzz/json.dict) ;; esac
  # Leak checking stays on; LibTorch's static state is reachable, not leaked.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$build/fuzz_$name" "$corpus" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -max_len=131072 -print_final_stats=1 -artifact_prefix="$findings/" >"$log" 2>&1 || true
  local execs units found
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  units=$(find "$corpus" -type f | wc -l)
  found=$(find "$findings" -type f -newer "$build/logs/$name.start" | wc -l)
  printf '%-18s executions %12s  corpus %6s  findings %s  (%s s, log %s)\n' "$name" "${execs:-0}" "$units" "$found" "$seconds" "$log"
}

summary=$build/summary.txt
: >"$summary"
running=0
for h in "${harnesses[@]}"; do
  run_one "$h" >>"$summary" &
  running=$((running + 1))
  if ((running >= jobs)); then wait -n; running=$((running - 1)); fi
done
wait
sort "$summary" -o "$summary"
cat "$summary"
if grep -q 'findings [1-9]\|REGRESSION' "$summary"; then exit 1; fi
