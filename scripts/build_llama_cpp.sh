#!/usr/bin/env bash
# Build llama.cpp from source, natively for this CPU, once; cached under .cache/llama.cpp/<version>/bin.
#
#   scripts/build_llama_cpp.sh [TARGET ...]      (default: llama-bench llama-quantize llama-server)
#
# The source is the llama.cpp that the pinned llama-cpp-python sdist vendors (PyPI is the only source on an
# offline machine; the sdist pins one llama.cpp commit). -DGGML_NATIVE=ON: the kernels this CPU has (AVX2/FMA
# here, AVX-512 or NEON elsewhere), which is the fair speed anchor; a prebuilt binary is not.
# Prints the bin folder on stdout (the last line); progress goes to stderr.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PREFIX="$ROOT/.cache/llama.cpp/$VERSION"
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(llama-bench llama-quantize llama-server)

missing=()
for t in "${TARGETS[@]}"; do [ -x "$PREFIX/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$PREFIX/bin"; exit 0; fi

for tool in cmake ninja c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; install it (Debian: apt-get install cmake ninja-build g++)" >&2; exit 2; }
done
work="$PREFIX/src"
mkdir -p "$work"
if [ ! -f "$work/CMakeLists.txt" ]; then
  tmp="$(mktemp -d)"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "llama-cpp-python==$VERSION" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
  # the sdist ships a stray `.git` file in vendor/llama.cpp: with it, ninja re-runs cmake forever
  rm -f "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/.git"
  rm -rf "$work" && mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$work"
  rm -rf "$tmp"
fi
build="$PREFIX/build"
cmake -S "$work" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
ninja -C "$build" -j"$(nproc)" "${missing[@]}" >&2
mkdir -p "$PREFIX/bin"
for t in "${missing[@]}"; do cp "$build/bin/$t" "$PREFIX/bin/$t.tmp" && mv "$PREFIX/bin/$t.tmp" "$PREFIX/bin/$t"; done
echo "$PREFIX/bin"
