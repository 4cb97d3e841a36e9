#!/usr/bin/env bash
# Installs the Debian packages consr's build, tests, examples and pipeline need (Debian 12).
# libgloo-dev: the headers of LibTorch's c10d Gloo process group (data-parallel pipeline runs).
# libopenblas-dev: Debian's LibTorch calls libblas.so.3; without OpenBLAS that is the reference
# BLAS (~1.5 GFLOP/s), which would make every LibTorch baseline and model test needlessly slow.
# Skips apt entirely when everything is already installed. Needs root (or sudo).
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git
  catch2 libbenchmark-dev libeigen3-dev libxtensor-dev libxsimd-dev xtl-dev
  libtorch-dev libopenblas-dev python3 python3-torch python3-numpy
  nlohmann-json3-dev libstb-dev libpcre2-dev libutf8proc-dev libcli11-dev python3-matplotlib libjpeg62-turbo-dev libpng-dev
  libgloo-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
