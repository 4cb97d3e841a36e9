#!/usr/bin/env bash
# The project's main job (README): installs what it needs, builds, and runs the ConSR flow on the
# embedded default input. Extra arguments are passed to the program.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)" --target 01_consr_flow
exec build/default/examples/01_consr_flow/01_consr_flow "$@"
