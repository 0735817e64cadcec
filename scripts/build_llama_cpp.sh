#!/usr/bin/env bash
# Build llama.cpp from source, natively for this CPU, once; cached under .cache/llama.cpp/<version>/bin.
#
#   scripts/build_llama_cpp.sh [TARGET ...]      (default: llama-bench llama-quantize llama-server)
#   LLAMA_CPP_MARCH=x86-64-v3 scripts/build_llama_cpp.sh llama-bench
#
# LLAMA_CPP_MARCH: "native" (default: -DGGML_NATIVE=ON) or "x86-64-v3" (-DGGML_NATIVE=OFF, whose defaults are
# SSE4.2 + AVX + AVX2 + BMI2 + FMA + F16C and no AVX-512: the AVX2 code paths, to compare with our kernels built
# for the same level on an AVX-512 machine). Each is cached in its own folder; the source is shared.
#
# The source is the llama.cpp that the pinned llama-cpp-python sdist vendors (PyPI is the only source on an
# offline machine; the sdist pins one llama.cpp commit). -DGGML_NATIVE=ON: the kernels this CPU has (AVX2/FMA
# here, AVX-512 or NEON elsewhere), which is the fair speed anchor; a prebuilt binary is not.
# Prints the bin folder on stdout (the last line); progress goes to stderr.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MARCH="${LLAMA_CPP_MARCH:-native}"
case "$MARCH" in
  native) PREFIX="$ROOT/.cache/llama.cpp/$VERSION"; ISA=(-DGGML_NATIVE=ON) ;;
  x86-64-v3) PREFIX="$ROOT/.cache/llama.cpp/$VERSION-x86-64-v3"; ISA=(-DGGML_NATIVE=OFF -DGGML_AVX512=OFF) ;;
  *) echo "error: LLAMA_CPP_MARCH must be native or x86-64-v3, not '$MARCH'" >&2; exit 2 ;;
esac
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(llama-bench llama-quantize llama-server)

missing=()
for t in "${TARGETS[@]}"; do [ -x "$PREFIX/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$PREFIX/bin"; exit 0; fi

for tool in cmake ninja c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; install it (Debian: apt-get install cmake ninja-build g++)" >&2; exit 2; }
done
work="$ROOT/.cache/llama.cpp/$VERSION/src"
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
cmake -S "$work" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${ISA[@]}" -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
ninja -C "$build" -j"$(nproc)" "${missing[@]}" >&2
mkdir -p "$PREFIX/bin"
for t in "${missing[@]}"; do cp "$build/bin/$t" "$PREFIX/bin/$t.tmp" && mv "$PREFIX/bin/$t.tmp" "$PREFIX/bin/$t"; done
echo "$PREFIX/bin"
