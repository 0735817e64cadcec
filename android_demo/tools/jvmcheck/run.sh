#!/usr/bin/env bash
# Translate the APK's classes.dex to JVM bytecode (enjarify), link it against Android API stubs and run
# Harness: the JVM verifier checks every method of the hand-written smali, and Harness exercises it.
# Usage: android_demo/tools/jvmcheck/run.sh <classes.dex> <assets dir>     (needs: enjarify, javac, java)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEX="$1"; ASSETS="$2"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/stubs" "$WORK/harness" "$WORK/files/bundle"
# Debian's /usr/bin/enjarify wrapper finds its module via readlink of itself, which fails when it is not a
# symlink; run the module directly with Debian's python3.
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
PYTHONPATH=/usr/lib/python3/dist-packages "$PY" -O -m enjarify.main -f -o "$WORK/app.jar" "$DEX" >/dev/null
javac -nowarn -d "$WORK/stubs" $(find "$HERE/stubs" -name '*.java')
javac -nowarn -cp "$WORK/stubs:$WORK/app.jar" -d "$WORK/harness" "$HERE/Harness.java"
echo '{"name": "jvmcheck"}' > "$WORK/files/bundle/manifest.json"
head -c 4096 /dev/urandom > "$WORK/files/bundle/model.onnx"
java -Xverify:all -cp "$WORK/stubs:$WORK/app.jar:$WORK/harness" Harness "$ASSETS" "$WORK/files"
