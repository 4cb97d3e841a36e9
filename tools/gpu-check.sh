#!/usr/bin/env bash
# The GPU check of consr's CUDA backend: on a machine with an NVIDIA GPU it configures a CUDA build
# for the GPU's own architecture, builds every CUDA test, every public .cuh on its own and every
# CUDA benchmark (nothing else), runs them, and writes ONE results file
#   gpu-results/<date>-<gpu>.txt
# with the machine (nvidia-smi, nvcc, cmake, LibTorch), the build log summary, the CTest results and
# the benchmark tables (with bytes/s and the share of the measured copy bandwidth). When $OUT names
# a directory (the device tool's output folder), the file is copied there too.
#
# Usage, from the repository root:   bash tools/gpu-check.sh [--jobs N] [--no-bench]
#        on a Debian machine with the packages installed:  bash tools/gpu-check.sh --stage-deps [DIR]
# Exit status: 0 all ran and passed; 1 a build, test or benchmark failed; 2 nvcc or cmake missing;
# 3 built, but no GPU to run on.
#
# Needs: the CUDA toolkit (nvcc), CMake >= 3.20, a C++17 compiler, Catch2 v2 (tests) and Google
# Benchmark (benchmarks). Missing ones are detected and named. Catch2 v2 / Google Benchmark: when
# not installed, the script looks for a prefix in $CONSR_DEPS_PREFIX or build/gpu-deps (what
# --stage-deps makes: the files of the Debian packages catch2, libbenchmark-dev and
# libbenchmark1debian installed on *this* machine, copied under DIR, default build/gpu-deps, which
# git ignores — carry it to a machine without network), then, as root with apt, tries
# `apt-get install -y catch2 libbenchmark-dev`, and otherwise says what is missing. LibTorch-CUDA
# baselines come from python3's torch (torch.utils.cmake_prefix_path); without it they are skipped
# and the results file says so.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

jobs=$(nproc 2>/dev/null || echo 4)
run_bench=1
stage_dir=""
while (($#)); do
  case "$1" in
    --jobs) jobs="$2"; shift 2 ;;
    --no-bench) run_bench=0; shift ;;
    --stage-deps) stage_dir="${2:-build/gpu-deps}"; [[ $# -ge 2 ]] && shift; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
done

# ---- --stage-deps: copy the installed Debian packages' files into a prefix --------------------
if [[ -n "$stage_dir" ]]; then
  mkdir -p "$stage_dir"
  for pkg in catch2 libbenchmark-dev libbenchmark1debian; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      echo "gpu-check: package $pkg is not installed here (apt-get install $pkg first)" >&2
      exit 1
    fi
    dpkg -L "$pkg" | while read -r f; do
      if [[ -f "$f" || -L "$f" ]]; then
        mkdir -p "$stage_dir/$(dirname "$f")"
        cp -a "$f" "$stage_dir/$f"
      fi
    done
  done
  echo "gpu-check: staged catch2, libbenchmark-dev and libbenchmark1debian under $stage_dir/usr"
  echo "gpu-check: carry '$stage_dir' to the GPU machine; the check finds it there (or set CONSR_DEPS_PREFIX)"
  exit 0
fi

# ---- results file -------------------------------------------------------------------------------
stamp=$(date -u +%Y%m%d-%H%M%S)
gpu_name=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1) || true)
gpu_tag=$(echo "${gpu_name:-no-gpu}" | tr -c 'A-Za-z0-9._-' '-' | sed 's/-\+/-/g; s/-$//')
mkdir -p gpu-results
results="$root/gpu-results/${stamp}-${gpu_tag}.txt"
build_dir="$root/build/gpu-check"
log_dir="$build_dir/logs"
mkdir -p "$log_dir"
: >"$results"
say() { echo "$*" | tee -a "$results"; }
section() { say ""; say "==== $* ===="; }
problems=()
missing=()
t0=$(date +%s)

section "consr GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "repository: $root"
say "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (working tree has changes)')"

# ---- machine ------------------------------------------------------------------------------------
section "machine"
have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  if nvidia-smi -L >>"$results" 2>&1; then
    have_gpu=1
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
      --format=csv >>"$results" 2>&1 ||
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$results" 2>&1
  else
    say "nvidia-smi is installed but sees no GPU"
  fi
else
  say "nvidia-smi: not found"
fi
((have_gpu)) || { missing+=("an NVIDIA GPU (tests will report skipped, benchmarks will not run)"); }
say "cpu: $(nproc) cores, $(uname -srm)"

nvcc=""
for c in "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:-}/bin/nvcc" "${CUDA_PATH:-}/bin/nvcc" /usr/local/cuda/bin/nvcc \
  /usr/local/cuda-*/bin/nvcc; do
  if [[ -n "$c" && -x "$c" ]]; then nvcc="$c"; break; fi
done
if [[ -n "$nvcc" ]]; then
  say "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*'))"
else
  say "nvcc: NOT FOUND (install the CUDA toolkit or put nvcc on PATH)"
  missing+=("nvcc (CUDA toolkit)")
fi
if command -v cmake >/dev/null 2>&1; then
  cmake_version=$(cmake --version | head -n1 | grep -o '[0-9][0-9.]*')
  say "cmake: $cmake_version"
else
  cmake_version=""
  say "cmake: NOT FOUND"
  missing+=("cmake >= 3.20")
fi
generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
  say "generator: Ninja"
else
  say "generator: default (ninja not found)"
fi
say "host compiler: $( (c++ --version 2>/dev/null || g++ --version 2>/dev/null) | head -n1)"

# ---- Catch2 v2 and Google Benchmark -------------------------------------------------------------
deps_prefix="${CONSR_DEPS_PREFIX:-}"
if [[ -z "$deps_prefix" && -d "$root/build/gpu-deps/usr" ]]; then deps_prefix="$root/build/gpu-deps/usr"; fi
[[ -n "$deps_prefix" && -d "$deps_prefix/usr" ]] && deps_prefix="$deps_prefix/usr"

# find_package probe: prints FOUND/NOTFOUND for Catch2 2 and benchmark.
probe_deps() {
  local dir="$build_dir/probe"
  rm -rf "$dir" && mkdir -p "$dir"
  cat >"$dir/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(probe LANGUAGES CXX)
find_package(Catch2 2 QUIET)
find_package(benchmark QUIET)
message(STATUS "catch2=${Catch2_FOUND} benchmark=${benchmark_FOUND}")
EOF
  cmake -S "$dir" -B "$dir/b" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 ${deps_prefix:+-DCMAKE_PREFIX_PATH="$deps_prefix"} 2>/dev/null | grep -o 'catch2=[A-Za-z0-9]* benchmark=[A-Za-z0-9]*'
}
have_catch2=0
have_benchmark=0
if [[ -n "$cmake_version" ]]; then
  probe=$(probe_deps)
  [[ "$probe" == *"catch2=1"* ]] && have_catch2=1
  [[ "$probe" == *"benchmark=1"* ]] && have_benchmark=1
  if (( ! have_catch2 || ! have_benchmark )) && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    want=()
    ((have_catch2)) || want+=(catch2)
    ((have_benchmark)) || want+=(libbenchmark-dev)
    say "trying: apt-get install -y ${want[*]}"
    if (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}") \
      >"$log_dir/apt.log" 2>&1; then
      probe=$(probe_deps)
      [[ "$probe" == *"catch2=1"* ]] && have_catch2=1
      [[ "$probe" == *"benchmark=1"* ]] && have_benchmark=1
    else
      say "apt-get failed (no network or no such package; see $log_dir/apt.log)"
    fi
  fi
fi
say "deps prefix: ${deps_prefix:-none}"
if ((have_catch2)); then say "Catch2 v2: found"; else
  say "Catch2 v2: NOT FOUND — the CUDA tests cannot be built (Catch2 v3 does not do: the tests use catch2/catch.hpp)"
  missing+=("Catch2 v2 (Debian/Ubuntu package catch2 2.x; or run tools/gpu-check.sh --stage-deps on a Debian 12 machine and carry build/gpu-deps)")
fi
if ((have_benchmark)); then say "Google Benchmark: found"; else
  say "Google Benchmark: NOT FOUND — the CUDA benchmarks cannot be built"
  missing+=("Google Benchmark (package libbenchmark-dev, or --stage-deps as above)")
  run_bench=0
fi

torch_prefix=""
torch_note="python3 not found"
if command -v python3 >/dev/null 2>&1; then
  if torch_info=$(python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path)' 2>/dev/null); then
    read -r torch_version torch_cuda torch_prefix <<<"$torch_info"
    if [[ "$torch_cuda" == "None" ]]; then
      torch_note="torch $torch_version is a CPU build: LibTorch-CUDA baselines skipped"
      torch_prefix=""
    else
      torch_note="torch $torch_version (CUDA $torch_cuda) at $torch_prefix: LibTorch-CUDA baselines built"
    fi
  else
    torch_note="python3 has no torch: LibTorch-CUDA baselines skipped"
  fi
fi
say "LibTorch: $torch_note"

if [[ -z "$nvcc" || -z "$cmake_version" ]]; then
  section "cannot build"
  for m in "${missing[@]}"; do say "missing: $m"; done
  say "results: $results"
  [[ -n "${OUT:-}" && -d "${OUT:-}" ]] && cp "$results" "$OUT/"
  exit 2
fi

# ---- configure ----------------------------------------------------------------------------------
section "configure"
arch_args=()
if printf '%s\n3.24\n' "$cmake_version" | sort -V -C; then
  # cmake older than 3.24: no "native"; ask nvidia-smi for the compute capability.
  cap=$( (nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .') || true)
  arch_args=(-DCMAKE_CUDA_ARCHITECTURES="${cap:-90}")
else
  if ((have_gpu)); then arch_args=(-DCMAKE_CUDA_ARCHITECTURES=native); else arch_args=(-DCMAKE_CUDA_ARCHITECTURES=90); fi
fi
prefixes="${torch_prefix}"
[[ -n "$deps_prefix" ]] && prefixes="${prefixes:+$prefixes;}$deps_prefix"
cfg=(cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc"
  "${arch_args[@]}" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DCONSR_ENABLE_CUDA=ON -DCONSR_ENABLE_TORCH=OFF -DCONSR_BUILD_TESTS=ON -DCONSR_BUILD_EXAMPLES=OFF
  -DCONSR_INSTALL=OFF -DCONSR_BUILD_BENCHMARKS=$( ((run_bench)) && echo ON || echo OFF)
  -DCONSR_CUDA_BENCH_TORCH=$([[ -n "$torch_prefix" ]] && echo AUTO || echo OFF))
[[ -n "$prefixes" ]] && cfg+=(-DCMAKE_PREFIX_PATH="$prefixes")
# Pin torch's c10 to the same install (a distribution libtorch elsewhere must not be picked up).
if [[ -n "$torch_prefix" && -f "$torch_prefix/../../lib/libc10.so" ]]; then
  cfg+=(-Dc10_LIBRARY="$(cd "$torch_prefix/../../lib" && pwd)/libc10.so")
fi
say "${cfg[*]}"
configured=0
if ((have_catch2)); then
  if "${cfg[@]}" >"$log_dir/configure.log" 2>&1; then
    configured=1
  elif [[ -n "$torch_prefix" ]]; then
    say "configure with the LibTorch baselines failed (tail below); retrying without them"
    tail -n 15 "$log_dir/configure.log" >>"$results"
    cfg=("${cfg[@]/-DCONSR_CUDA_BENCH_TORCH=AUTO/-DCONSR_CUDA_BENCH_TORCH=OFF}")
    rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles"
    "${cfg[@]}" >"$log_dir/configure.log" 2>&1 && configured=1
    torch_note="$torch_note — BUT configuring with it failed: baselines skipped"
  fi
  grep -E "^-- consr:|CUDA_ARCHITECTURES|Error" "$log_dir/configure.log" | tee -a "$results"
  ((configured)) || { say "CONFIGURE FAILED:"; tail -n 30 "$log_dir/configure.log" >>"$results"; problems+=("configure"); }
else
  problems+=("Catch2 v2 missing: nothing built")
fi

# ---- build --------------------------------------------------------------------------------------
if ((configured)); then
  section "build (-j$jobs): CUDA tests, every .cuh on its own$( ((run_bench)) && echo ', CUDA benchmarks')"
  targets=(consr_cuda_tests consr_cuda_header_check)
  ((run_bench)) && targets+=(consr_cuda_benchmarks)
  tb=$(date +%s)
  if cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}" >"$log_dir/build.log" 2>&1; then
    say "build OK in $(($(date +%s) - tb)) s (targets: ${targets[*]})"
  else
    say "BUILD FAILED after $(($(date +%s) - tb)) s; the errors:"
    grep -E "error|Error|FAILED" "$log_dir/build.log" | head -n 60 >>"$results"
    problems+=("build")
    # Build what does build, so that the tests that compile still run.
    keep_going=(-k)
    ((${#generator[@]})) && keep_going=(-k 0)
    cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}" -- "${keep_going[@]}" >>"$log_dir/build.log" 2>&1 || true
  fi
fi

# ---- tests --------------------------------------------------------------------------------------
if ((configured)); then
  section "CUDA tests (ctest -L cuda)"
  if (cd "$build_dir" && ctest -L cuda --output-on-failure --timeout 600) >"$log_dir/ctest.log" 2>&1; then
    ctest_ok=1
  else
    ctest_ok=0
    problems+=("tests")
  fi
  skipped=$(grep -c "(Skipped)" "$log_dir/ctest.log" || true)
  if ((ctest_ok && skipped == 0)); then
    say "ctest: every CUDA test ran and passed"
  elif ((ctest_ok)); then
    say "ctest: no failure, but $skipped CUDA test(s) SKIPPED (no usable CUDA device)"
    ((have_gpu)) && problems+=("$skipped tests skipped on a GPU machine")
  else
    say "ctest: FAILURES (details below)"
  fi
  cat "$log_dir/ctest.log" >>"$results"
  grep -E "tests passed|tests failed|Skipped|Not Run" "$log_dir/ctest.log" | tail -n 8
fi

# ---- benchmarks ---------------------------------------------------------------------------------
if ((configured && run_bench && have_gpu)); then
  section "CUDA benchmarks"
  say "LibTorch: $torch_note"
  shopt -s nullglob
  benches=("$build_dir"/bench/cuda/consr_cuda_bench_*)
  ((${#benches[@]})) || { say "no benchmark binary was built"; problems+=("benchmarks missing"); }
  for b in "${benches[@]}"; do
    [[ -x "$b" && ! -d "$b" ]] || continue
    say ""
    say "---- $(basename "$b")"
    if ! "$b" --benchmark_counters_tabular=true >"$log_dir/$(basename "$b").txt" 2>&1; then
      problems+=("benchmark $(basename "$b")")
      say "(exited with an error)"
    fi
    cat "$log_dir/$(basename "$b").txt" >>"$results"
  done
elif ((configured && run_bench)); then
  section "CUDA benchmarks"
  say "not run: no GPU"
fi

# ---- summary ------------------------------------------------------------------------------------
section "summary"
say "wall time: $(($(date +%s) - t0)) s"
for m in "${missing[@]}"; do say "missing: $m"; done
if ((${#problems[@]})); then
  say "PROBLEMS: ${problems[*]}"
  status=1
elif ((!have_gpu)); then
  say "BUILT ONLY: no GPU here, so the CUDA tests were skipped and the benchmarks not run"
  status=3
else
  say "OK: every CUDA test ran and passed$( ((run_bench)) && echo ', every CUDA benchmark ran')"
  status=0
fi
say "results: $results"
[[ -n "${OUT:-}" && -d "${OUT:-}" ]] && cp "$results" "$OUT/"
exit $status
