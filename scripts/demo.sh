#!/usr/bin/env bash
# The CoGenesis Edge demo on the embedded default model (SmolLM2-135M-Instruct, int4 bundle).
source "$(dirname "$0")/demo_env.sh"

echo "== bundle"
$BIN/cogenesis info "$BUNDLE" | sed -n 1,5p
echo
echo "== 1. local only: the on-device model writes with the private profile (nothing leaves the device)"
$BIN/cogenesis run --bundle "$BUNDLE" --context "$PROFILE" --prompt "$INSTRUCTION" --stream -v --max-tokens 160 --threads 2 --repetition-penalty 1.2

echo
echo "== 2. sketch mode: the cloud sees only the (sanitized) instruction and returns an outline"
PORT="${COGENESIS_DEMO_PORT:-8765}"
KEY="demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
AUDIT="artifacts/demo-audit.jsonl"
rm -f "$AUDIT"
# The demo's "cloud" is the reference server on this machine, serving the same bundle (the largest model here).
$BIN/cogenesis cloud serve --model "$BUNDLE" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" --threads 1 \
  --log-level warning > artifacts/demo-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "cloud server failed to start:"; cat artifacts/demo-server.log; exit 1; }
  sleep 0.5
done
export COGENESIS_CLOUD_API_KEY="$KEY"
$BIN/cogenesis write --mode sketch --bundle "$BUNDLE" --context "$PROFILE" --prompt "$INSTRUCTION" \
  --cloud-url "http://127.0.0.1:$PORT" --audit-log "$AUDIT" --max-tokens 200 --repetition-penalty 1.2 --threads 1

if $BIN/cogenesis write --help | grep -q "logits-block"; then
  echo
  echo "== 3. logits-block mode: local drafts, the cloud scores them WITHOUT the private context, one round trip per block"
  $BIN/cogenesis write --mode logits-block --bundle "$BUNDLE" --context "$PROFILE" --prompt "$INSTRUCTION" \
    --cloud-url "http://127.0.0.1:$PORT" --audit-log "$AUDIT" --max-tokens 120 --threads 1
fi

echo
echo "== what left the device (audit log $AUDIT)"
$BIN/cogenesis audit "$AUDIT"
kill $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true
trap - EXIT
