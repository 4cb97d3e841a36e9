#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, then
#  1. builds and runs every test with the default preset (host library, examples, packaging,
#     LibTorch adapter and runtime, Python torch.ops test; CUDA tests compile and report
#     "skipped: no CUDA device" where there is no GPU),
#  2. builds and runs the host suite under AddressSanitizer + UndefinedBehaviorSanitizer.
# Usage: tools/test.sh [--no-asan]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
jobs=$(nproc)
asan=1
for a in "$@"; do
  case "$a" in
    --no-asan) asan=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

echo "== default preset: configure, build, test"
cmake --preset default
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs"

if ((asan)); then
  echo "== asan preset (ASan + UBSan): configure, build, test"
  cmake --preset asan
  cmake --build --preset asan -j "$jobs"
  ctest --preset asan -j "$jobs"
fi
echo "== all tests passed"
