#!/usr/bin/env bash
# The CoGenesis Edge demo on the embedded default model (SmolLM2-135M-Instruct, int4 bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
BUNDLE=artifacts/bundles/smollm2-int4
PROFILE=examples/demo_profile.json
INSTRUCTION="${INSTRUCTION:-Write a short post for my followers about why I am taking a break from posting.}"

echo "== bundle"
$BIN/cogenesis info "$BUNDLE" | sed -n 1,5p
echo
echo "== 1. local only: the on-device model writes with the private profile (nothing leaves the device)"
$BIN/cogenesis run --bundle "$BUNDLE" --context "$PROFILE" --prompt "$INSTRUCTION" --stream -v --max-tokens 160 --threads 2 --repetition-penalty 1.2
