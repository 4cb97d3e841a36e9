#!/usr/bin/env bash
# Builds consr's LibTorch pieces against a pip-installed PyTorch 2.x (the torch users have) and runs
# their tests there: the adapter (consr::torch) and its Catch2 test, the torch.ops library and its
# Python test (with the venv's python), the CMake single-installation test, and the pipeline
# (consr_pipeline) with its README run. Not run in CI: PyPI's Linux wheel is a CUDA build whose
# nvidia-* dependencies come to ~5.6 GB installed (see docs/torch.md for a recorded run).
#
# Usage: tools/build-against-pip-torch.sh [--venv DIR] [--build DIR] [--torch SPEC] [--jobs N]
#                                         [--no-install] [--no-pipeline]
#   --venv DIR     the virtual environment (created when missing; default build/venv-torch)
#   --build DIR    the CMake build directory (default build/pip-torch)
#   --torch SPEC   the pip requirement for torch (default 'torch>=2,<3')
#   --jobs N       parallel build jobs (default 2)
#   --no-install   use the venv's torch as it is (no pip call)
#   --no-pipeline  build and test the adapter and the torch.ops library only
# Environment: PYTHON, the interpreter that creates the venv (default python3).
#
# Index: PyTorch's CPU wheel index (no nvidia-* dependencies) when it can be reached, otherwise
# PyPI's default wheel with its dependencies. `pip install --no-deps torch` is not enough: torch 2.15
# (cu132) does not import without them (libcufile.so.0: cannot open shared object file).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=build/venv-torch
build=build/pip-torch
spec='torch>=2,<3'
jobs=2
install=1
pipeline=1
while (($#)); do
  case "$1" in
    --venv) venv=${2:?--venv needs a directory}; shift 2 ;;
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --torch) spec=${2:?--torch needs a pip requirement}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --no-install) install=0; shift ;;
    --no-pipeline) pipeline=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-against-pip-torch.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "build-against-pip-torch.sh: --jobs '$jobs' is not a positive number" >&2; exit 2; }

start=$SECONDS
phase() { echo; echo "== $* ($((SECONDS - start)) s)"; }
py="$venv/bin/python"

phase "venv $venv"
if [[ ! -x $py ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$py" --version

if ((install)); then
  cpu_index=https://download.pytorch.org/whl/cpu
  if "$py" - "$cpu_index/torch/" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=10)
EOF
  then
    phase "pip install '$spec' from $cpu_index (CPU wheel)"
    "$py" -m pip install --index-url "$cpu_index" "$spec" numpy
  else
    phase "pip install '$spec' from PyPI ($cpu_index cannot be reached; the CUDA wheel and its nvidia-* packages)"
    "$py" -m pip install "$spec" numpy
  fi
fi

phase "the venv's torch"
"$py" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, C++11 ABI {torch.compiled_with_cxx11_abi()}, "
      f"cmake prefix {torch.utils.cmake_prefix_path}")
EOF
torch_dir=$("$py" -c 'import os, torch; print(os.path.join(torch.utils.cmake_prefix_path, "Torch"))')
torch_prefix=$(cd "$torch_dir/../../.." && pwd -P)

phase "configure $build (Torch_DIR=$torch_dir)"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
mkdir -p "$(dirname "$build")"
if ! cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCONSR_ENABLE_CUDA=OFF \
    -DCONSR_ENABLE_TORCH=ON -DTorch_DIR="$torch_dir" \
    -DCONSR_TORCH_PYTHON="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" >"$build.configure.log" 2>&1; then
  tail -n 40 "$build.configure.log"
  echo "build-against-pip-torch.sh: configuring $build failed (log: $build.configure.log)" >&2
  exit 1
fi
grep -E '^-- consr: (LibTorch|no Python)' "$build.configure.log" || true
# consr_torch.cmake names the installation it used; it must be the venv's.
grep -q "consr: LibTorch .* from $torch_prefix " "$build.configure.log" ||
  { echo "build-against-pip-torch.sh: CMake did not take LibTorch from $torch_prefix (see $build.configure.log)" >&2; exit 1; }

targets=(consr_torch_ops torch_test_adapter)
tests='cmake_torch_one_installation|torch_test_adapter|torch_test_ops_python'
if ((pipeline)); then
  targets+=(consr_pipeline consr_bench_item)  # consr_bench_item: tools/bench_runtime_vs_transformers.py --consr
  tests+='|example_04_consr_pipeline'
fi
phase "build ${targets[*]} (-j $jobs)"
build_start=$SECONDS
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
build_seconds=$((SECONDS - build_start))

phase "libconsr_torch_ops.so loads LibTorch from $torch_prefix only"
ops="$build/bindings/torch/libconsr_torch_ops.so"
ldd "$ops" | grep -E 'lib(torch|c10)[^ ]*\.so' | tee "$build.ldd.log"
if grep -E 'lib(torch|c10)' "$build.ldd.log" | grep -v -F "$torch_prefix/" | grep -q .; then
  echo "build-against-pip-torch.sh: $ops resolves a LibTorch library outside $torch_prefix" >&2
  exit 1
fi

phase "ctest -R '^($tests)\$'"
ctest --test-dir "$build" -R "^($tests)\$" --output-on-failure
count=$(ctest --test-dir "$build" -N -R "^($tests)\$" | sed -n 's/^Total Tests: //p')
expected=$(tr '|' '\n' <<<"$tests" | wc -l)
if [[ $count != "$expected" ]]; then
  echo "build-against-pip-torch.sh: $count of the $expected tests are registered (is CONSR_TORCH_PYTHON's torch the one built against?)" >&2
  exit 1
fi
phase "done: build ${build_seconds} s; all $count tests passed"
