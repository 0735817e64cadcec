#!/usr/bin/env bash
# Installs a prebuilt llama.cpp (node-llama-cpp + its CPU binary package, no build, ~15 s) for the llama.cpp row
# of bench/edge_decode.py, into .cache/llamacpp-node (or $NODE_LLAMA_CPP_DIR). Needs node >= 20 and npm.
# --ignore-scripts: node-llama-cpp's postinstall would try to download or build llama.cpp when the prebuilt binary
# does not fit; we want the prebuilt one or nothing (the benchmark then skips the row).
set -euo pipefail
VERSION=3.22.1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${NODE_LLAMA_CPP_DIR:-$ROOT/.cache/llamacpp-node}"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) BIN=linux-x64 ;;
  Linux-aarch64) BIN=linux-arm64 ;;
  *) echo "llamacpp_setup: no prebuilt CPU binary wired up for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
command -v node >/dev/null && command -v npm >/dev/null || { echo "llamacpp_setup: needs node >= 20 and npm" >&2; exit 1; }
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "llamacpp_setup: node >= 20 needed" >&2; exit 1; }
if [ -f "$DIR/node_modules/@node-llama-cpp/$BIN/package.json" ] && \
   grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/node-llama-cpp/package.json" 2>/dev/null; then
  exit 0
fi
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"private": true}' > "$DIR/package.json"
npm install --prefix "$DIR" --no-audit --no-fund --ignore-scripts --omit=optional --loglevel=error \
  "node-llama-cpp@$VERSION" "@node-llama-cpp/$BIN@$VERSION"
echo "llama.cpp (node-llama-cpp $VERSION, @node-llama-cpp/$BIN) installed in $DIR"
