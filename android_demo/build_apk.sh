#!/usr/bin/env bash
# Build the CoGenesis Edge Android demo APK offline, from Debian's Android tools and npm packages only.
#
#   android_demo/build_apk.sh                 # -> android_demo/build/cogenesis-demo.apk
#   android_demo/build_apk.sh --assets-only   # only android_demo/build/assets (what the tests serve)
#   android_demo/build_apk.sh --no-install    # never call apt-get / npm install (fail if something is missing)
#   android_demo/build_apk.sh --deps          # only install build + test dependencies (Debian: the tools
#                                             # below + chromium, enjarify, openssl; npm ci), then exit
#
# Steps: (1) Debian tools: aapt, apksigner, zipalign, android-framework-res (API 29 resources for -I),
# libsmali-java (the `smali` dex assembler), dexdump; keytool from the JDK. (2) npm ci in android_demo/web
# (onnxruntime-web, @huggingface/tokenizers, @huggingface/jinja), vendored into assets/www/vendor.
# (3) smali -> classes.dex. (4) aapt package (manifest, res, assets) + classes.dex. (5) zipalign.
# (6) apksigner with a debug key generated once into android_demo/build/debug.keystore.
# No Gradle, no Android SDK, no Google Maven: nothing here needs more than Debian + npm.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${COGENESIS_APK_BUILD:-$HERE/build}"
APK="$BUILD/cogenesis-demo.apk"
MIN_SDK=24          # Android 7.0: WebResourceRequest, WebView multiprocess-era WASM support
TARGET_SDK=29       # the API level of Debian's android-framework-res
VERSION_CODE=1
VERSION_NAME=0.1.0
FRAMEWORK_RES=/usr/share/android-framework-res/framework-res.apk
DEBIAN_PKGS=(aapt apksigner zipalign android-framework-res libsmali-java dexdump)
TEST_PKGS=(chromium enjarify openssl)   # tests/test_android_demo.py: Playwright's browser, dex->JVM check, TLS cert

ASSETS_ONLY=0
INSTALL=1
DEPS_ONLY=0
for a in "$@"; do
  case "$a" in
    --assets-only) ASSETS_ONLY=1 ;;
    --no-install) INSTALL=0 ;;
    --deps) DEPS_ONLY=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build_apk.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

log() { printf 'build_apk: %s\n' "$*" >&2; }
die() { printf 'build_apk: error: %s\n' "$*" >&2; exit 1; }

apt_install() {
  local SUDO=""
  if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null && SUDO="sudo" || die "need root or sudo to apt-get install $*"; fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; } \
    || die "apt-get install $* failed"
}

install_all_deps() {
  local missing=()
  for p in "${DEBIAN_PKGS[@]}" "${TEST_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; else log "Debian packages present"; fi
  need_npm_deps
}

need_debian_tools() {
  local missing=()
  command -v aapt >/dev/null || missing+=(aapt)
  command -v apksigner >/dev/null || missing+=(apksigner)
  command -v zipalign >/dev/null || missing+=(zipalign)
  [ -f "$FRAMEWORK_RES" ] || missing+=(android-framework-res)
  command -v smali >/dev/null || missing+=(libsmali-java)
  command -v dexdump >/dev/null || missing+=(dexdump)
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  [ "$INSTALL" = 1 ] || die "missing Debian packages: ${missing[*]} (apt-get install -y ${DEBIAN_PKGS[*]})"
  apt_install "${DEBIAN_PKGS[@]}"
}

need_npm_deps() {
  local nm="$HERE/web/node_modules"
  if [ -f "$nm/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm" ] && [ -f "$nm/@huggingface/tokenizers/dist/tokenizers.min.mjs" ] \
     && [ -f "$nm/@huggingface/jinja/dist/index.js" ]; then return 0; fi
  [ "$INSTALL" = 1 ] || die "npm dependencies missing: run (cd android_demo/web && npm ci)"
  command -v npm >/dev/null || die "npm not found (Node.js is needed to fetch onnxruntime-web)"
  log "npm ci in android_demo/web (onnxruntime-web, @huggingface/tokenizers, @huggingface/jinja)"
  (cd "$HERE/web" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null) || die "npm ci failed"
}

build_assets() {
  local out="$BUILD/assets"
  local nm="$HERE/web/node_modules"
  rm -rf "$out"
  mkdir -p "$out/www/vendor"
  cp -R "$HERE/www/." "$out/www/"
  # onnxruntime-web: the WASM-only ESM build + its SIMD/threaded WASM binary and loader.
  cp "$nm/onnxruntime-web/dist/ort.wasm.min.mjs" \
     "$nm/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs" \
     "$nm/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm" "$out/www/vendor/"
  cp "$nm/@huggingface/tokenizers/dist/tokenizers.min.mjs" "$out/www/vendor/tokenizers.min.mjs"
  cp "$nm/@huggingface/jinja/dist/index.js" "$out/www/vendor/jinja.mjs"
  node -e '
    const fs = require("fs"), p = process.argv[1];
    const v = n => JSON.parse(fs.readFileSync(p + "/node_modules/" + n + "/package.json")).version;
    fs.writeFileSync(process.argv[2], JSON.stringify({"onnxruntime-web": v("onnxruntime-web"),
      "@huggingface/tokenizers": v("@huggingface/tokenizers"), "@huggingface/jinja": v("@huggingface/jinja")}, null, 1) + "\n");
  ' "$HERE/web" "$out/www/vendor/versions.json"
  log "assets -> $out ($(du -sh "$out" | cut -f1))"
}

build_apk() {
  local work="$BUILD/apk"
  rm -rf "$work"; mkdir -p "$work/dex"
  log "smali -> classes.dex"
  smali assemble --api "$MIN_SDK" -o "$work/dex/classes.dex" "$HERE/app/smali"
  log "aapt package"
  aapt package -f \
    -M "$HERE/app/AndroidManifest.xml" -S "$HERE/app/res" -A "$BUILD/assets" -I "$FRAMEWORK_RES" \
    --min-sdk-version "$MIN_SDK" --target-sdk-version "$TARGET_SDK" \
    --version-code "$VERSION_CODE" --version-name "$VERSION_NAME" \
    -0 wasm -F "$work/unsigned.apk"
  (cd "$work/dex" && aapt add "$work/unsigned.apk" classes.dex >/dev/null)
  log "zipalign"
  zipalign -f -p 4 "$work/unsigned.apk" "$work/aligned.apk"
  local ks="$BUILD/debug.keystore"
  if [ ! -f "$ks" ]; then
    log "generating debug key $ks"
    keytool -genkeypair -keystore "$ks" -storepass android -keypass android -alias androiddebugkey \
      -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=Android Debug,O=Android,C=US" >/dev/null 2>&1 \
      || die "keytool failed (a JDK is needed)"
  fi
  log "apksigner sign"
  apksigner sign --ks "$ks" --ks-pass pass:android --key-pass pass:android --ks-key-alias androiddebugkey \
    --min-sdk-version "$MIN_SDK" --out "$APK" "$work/aligned.apk"
  rm -f "$APK.idsig"
  apksigner verify "$APK" >/dev/null || die "apksigner verify failed"
  log "ok: $APK ($(du -h "$APK" | cut -f1))"
}

if [ "$DEPS_ONLY" = 1 ]; then install_all_deps; exit 0; fi
mkdir -p "$BUILD"
need_npm_deps
build_assets
[ "$ASSETS_ONLY" = 1 ] && exit 0
need_debian_tools
build_apk
echo "$APK"
