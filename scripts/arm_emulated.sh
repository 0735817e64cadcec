#!/usr/bin/env bash
# Run the edge install on an emulated Raspberry Pi 5 CPU (aarch64 Cortex-A76, user-mode qemu) on this x86 machine:
# an aarch64 Python 3.11.2 (Debian bookworm = Raspberry Pi OS), the PyPI aarch64 wheels of the edge extra
# (onnxruntime, numpy, tokenizers, ...; no torch), our wheel, our kernels cross-compiled for armv8.2-a, then
#   1. tests/test_kernels.py (kernels vs float64 and onnxruntime, the int4 bundle's kernel graph vs fp32),
#   2. `cogenesis run` on the demo bundle with the demo profile (greedy), compared with the same run on x86.
# Correctness only: emulated timings say nothing about a Pi. Needs root (apt), ~25 min (emulation is slow).
# Usage: scripts/arm_emulated.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
EMU="${ARM_EMU:-${COGENESIS_CACHE:-$HOME/.cache/cogenesis}/arm-emu}"
BUNDLE="$ROOT/artifacts/bundles/smollm2-int4"
PROFILE="$ROOT/examples/demo_profile.json"
PROMPT="Write a two-sentence note to my team about next week."
MARCH=armv8.2-a+fp16+dotprod  # Cortex-A76 (Pi 5); a Pi 4 (Cortex-A72) is armv8-a
ORT_VERSION=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')
ONNX_VERSION=$(.venv/bin/python -c 'import onnx; print(onnx.__version__)')
# the `edge` extra as pyproject.toml declares it (what a Pi installs), less onnxruntime (pinned above)
mapfile -t EDGE_DEPS < <(.venv/bin/python -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["edge"] if not d.startswith("onnxruntime")))')
mkdir -p "$EMU" && EMU="$(cd "$EMU" && pwd)"  # absolute: the script later runs from inside it
[ -f "$BUNDLE/manifest.json" ] || { echo "no int4 bundle at $BUNDLE: run \`make demo\` first" >&2; exit 1; }

command -v qemu-aarch64-static > /dev/null && command -v aarch64-linux-gnu-g++ > /dev/null ||
  apt-get install -y -q qemu-user-static g++-aarch64-linux-gnu

if [ ! -x "$EMU/root/usr/bin/python3.11" ]; then  # Debian's aarch64 Python, unpacked (nothing installed)
  added=0
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; added=1; }
  apt-get update -q > /dev/null
  mkdir -p "$EMU/debs" && (cd "$EMU/debs" && apt-get download -q python3.11-minimal:arm64 \
    libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 libexpat1:arm64 zlib1g:arm64 \
    libffi8:arm64 libssl3:arm64 libstdc++6:arm64 libgcc-s1:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
    libsqlite3-0:arm64 libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libuuid1:arm64 libcrypt1:arm64 \
    libnsl2:arm64 libtirpc3:arm64 libgomp1:arm64 libdb5.3:arm64)
  [ $added = 1 ] && { dpkg --remove-architecture arm64; apt-get update -q > /dev/null; }
  for d in "$EMU"/debs/*.deb; do dpkg -x "$d" "$EMU/root"; done
fi
# qemu-user shows the host's x86 /proc/cpuinfo, on which onnxruntime's cpuinfo crashes at import; qemu reads
# files under its -L prefix first, so give it what a Pi 5 reports.
mkdir -p "$EMU/root/proc"
for i in 0 1; do printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' $i; done > "$EMU/root/proc/cpuinfo"

# aarch64 wheels: the edge extra + pytest + onnx (the tests build small graphs); our own wheel, fresh each run.
STAMP=".done-$ORT_VERSION-$(printf "%s " "${EDGE_DEPS[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$EMU/site/$STAMP" ]; then
  .venv/bin/pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
    -d "$EMU/wheels" "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "${EDGE_DEPS[@]}" tqdm rich pytest
  rm -rf "$EMU/site" && mkdir -p "$EMU/site"
  for w in "$EMU"/wheels/*.whl; do python3 -m zipfile -e "$w" "$EMU/site"; done
  touch "$EMU/site/$STAMP"
fi
rm -rf "$EMU/ours" && .venv/bin/pip wheel -q . --no-deps --no-build-isolation -w "$EMU/ours" 2> /dev/null
rm -rf "$EMU/site/cogenesis" && python3 -m zipfile -e "$EMU"/ours/*.whl "$EMU/site"

export QEMU_LD_PREFIX="$EMU/root" QEMU_CPU=cortex-a76 PYTHONPATH="$EMU/site" CXX=aarch64-linux-gnu-g++ \
  COGENESIS_KERNELS_MARCH="$MARCH" COGENESIS_CACHE="$ROOT/.cache"
PY=("$(command -v qemu-aarch64-static)" "$EMU/root/usr/bin/python3.11")
cd "$EMU"  # not the repo root: its cogenesis/ folder would shadow the installed wheel
"${PY[@]}" -c 'import platform, onnxruntime, sys; print("emulated:", platform.machine(), sys.version.split()[0], "onnxruntime", onnxruntime.__version__); import cogenesis.runtime; assert "torch" not in sys.modules'
echo "== kernels (cross-compiled, -march=$MARCH)"
"${PY[@]}" -c 'from cogenesis.runtime import kernels; print(kernels.build())'
echo "== tests/test_kernels.py on aarch64"
"${PY[@]}" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_kernels.py" ${1:+-k "$1"}

echo "== cogenesis run: aarch64 vs x86 (greedy, 32 tokens, same bundle and profile)"
ARGS=(run --bundle "$BUNDLE" --context "$PROFILE" --prompt "$PROMPT" --max-tokens 32 --threads 2)
arm=$("${PY[@]}" -m cogenesis.cli "${ARGS[@]}")
x86=$(env -u QEMU_LD_PREFIX -u PYTHONPATH -u CXX -u COGENESIS_KERNELS_MARCH "$ROOT/.venv/bin/cogenesis" "${ARGS[@]}")
printf 'aarch64: %s\nx86_64:  %s\n' "$arm" "$x86"
[ "$arm" = "$x86" ] && echo "identical" || { echo "DIFFERENT"; exit 1; }
