#!/usr/bin/env python3
"""Serve the demo the way the APK's WebView sees it, for desktop tests and for the phone over LAN.

The app's WebView loads ``https://appassets.androidplatform.net/assets/www/index.html``; the smali
``AssetServer`` answers every request on that host itself:

* ``/assets/<path>``  -> the APK's ``assets/<path>``
* ``/bundle/<path>``  -> ``<external files dir>/bundle/<path>`` (a model bundle pushed with adb)

and adds the same headers to every response (COOP/COEP so that WASM threads may be used, CORP, no-store
for the bundle). This script does exactly that from the build folder and a bundle folder, so a desktop
Chromium sees the same paths and headers. It is also how a laptop hands a bundle to the phone over the LAN:
``python android_demo/tools/devserver.py --bundle artifacts/bundles/<name> --host 0.0.0.0`` and put
``http://<laptop-ip>:8765/bundle/`` into the app's "bundle URL" (CORS and Private-Network-Access headers
are sent for that case).

Standard library only.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
DEFAULT_ASSETS = HERE.parent / "build" / "assets"

# Keep in sync with AssetServer.smali's mimeFor().
MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".jinja": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
}

# Keep in sync with AssetServer.smali's headers().
COMMON_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "no-store",
}


def mime_for(path: str) -> str:
    return MIME.get(posixpath.splitext(path)[1].lower(), "application/octet-stream")


def safe_join(root: Path, rel: str) -> Path | None:
    rel = posixpath.normpath("/" + rel).lstrip("/")
    if rel.startswith("..") or rel == ".":
        return None
    p = (root / rel).resolve()
    try:
        p.relative_to(root.resolve())
    except ValueError:
        return None
    return p


class Handler(BaseHTTPRequestHandler):
    server_version = "CoGenesisAssetServer/1"
    assets_root: Path = DEFAULT_ASSETS
    bundle_root: Path | None = None
    quiet = False

    def log_message(self, fmt, *args):  # noqa: D401
        if not self.quiet:
            sys.stderr.write("devserver: " + (fmt % args) + "\n")

    def _headers(self, extra: dict[str, str] | None = None):
        for k, v in COMMON_HEADERS.items():
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)

    def do_OPTIONS(self):  # CORS / Private Network Access preflight (phone fetching from the laptop)
        self.send_response(204)
        self._headers({
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "*",
            "Access-Control-Allow-Private-Network": "true",
            "Content-Length": "0",
        })
        self.end_headers()

    def _resolve(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/index.html"):
            self.send_response(302)
            self._headers({"Location": "/assets/www/index.html", "Content-Length": "0"})
            self.end_headers()
            return None
        if path.startswith("/assets/"):
            return safe_join(self.assets_root, path[len("/assets/"):])
        if path.startswith("/bundle/") and self.bundle_root is not None:
            return safe_join(self.bundle_root, path[len("/bundle/"):])
        return Path("/nonexistent")

    def _serve(self, body: bool):
        p = self._resolve()
        if p is None:
            return
        if not p.is_file():
            msg = b"not found\n"
            self.send_response(404)
            self._headers({"Content-Type": "text/plain", "Content-Length": str(len(msg))})
            self.end_headers()
            if body:
                self.wfile.write(msg)
            return
        size = p.stat().st_size
        self.send_response(200)
        self._headers({"Content-Type": mime_for(p.name), "Content-Length": str(size)})
        self.end_headers()
        if body:
            with open(p, "rb") as f:
                try:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


def make_server(host: str, port: int, assets: Path, bundle: Path | None, quiet: bool = False,
                tls: tuple[str, str] | None = None) -> ThreadingHTTPServer:
    """A threaded server; with tls=(certfile, keyfile) it speaks HTTPS (tests map the WebView's
    https://appassets.androidplatform.net origin onto it with Chromium's --host-resolver-rules)."""
    handler = type("BoundHandler", (Handler,), {"assets_root": Path(assets), "bundle_root": Path(bundle) if bundle else None, "quiet": quiet})
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls[0], tls[1])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="the APK's assets/ folder (default: android_demo/build/assets)")
    ap.add_argument("--bundle", type=Path, default=None, help="a model bundle folder, served under /bundle/")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let a phone on the LAN fetch the bundle")
    ap.add_argument("--port", type=int, default=int(os.environ.get("COGENESIS_DEMO_PORT", "8765")))
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    ap.add_argument("--tls-key", help="... and this key")
    a = ap.parse_args(argv)
    if not (a.assets / "www" / "index.html").is_file():
        print(f"devserver: {a.assets}/www/index.html missing; run android_demo/build_apk.sh --assets-only first", file=sys.stderr)
    if a.bundle is not None and not a.bundle.is_dir():
        print(f"devserver: bundle folder {a.bundle} not found", file=sys.stderr)
        return 2
    srv = make_server(a.host, a.port, a.assets, a.bundle, tls=(a.tls_cert, a.tls_key) if a.tls_cert else None)
    scheme = "https" if a.tls_cert else "http"
    print(f"devserver: {scheme}://{a.host}:{a.port}/assets/www/index.html  (bundle: {a.bundle or 'none'})", file=sys.stderr)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
