"""Android demo (android_demo/): the APK, its dex code, and the web runtime in Chromium under Pixel 7 emulation.

What needs what (each test skips with the reason when its part is missing; `make android-deps` installs all):
* APK tests: Debian's aapt, apksigner, zipalign, android-framework-res, libsmali-java, dexdump + the npm deps
  in android_demo/web/node_modules (android_demo/build_apk.sh --deps).
* JVM check of the dex code: enjarify + a JDK.
* Browser tests: Debian's chromium, PyPI playwright (never `playwright install`), openssl for the TLS cert.
  They serve android_demo/build/assets exactly as the APK's AssetServer does: the same origin
  (https://appassets.androidplatform.net, mapped onto a local TLS server with --host-resolver-rules), the same
  paths (/assets/www/..., /bundle/...) and the same COOP/COEP headers.
* Model tests: a bundle. COGENESIS_BUNDLE=<dir>, else the suite's cached int4 bundle of the default model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
BUILD = DEMO / "build"
APK = BUILD / "cogenesis-demo.apk"
ASSETS = BUILD / "assets"
SHOTS = BUILD / "screenshots"
PACKAGE = "org.cogenesis.edge.demo"
ORIGIN = "https://appassets.androidplatform.net"
START = f"{ORIGIN}/assets/www/index.html"
CHROMIUM = os.environ.get("COGENESIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")
NPM_MARKERS = [
    DEMO / "web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
    DEMO / "web/node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs",
    DEMO / "web/node_modules/@huggingface/jinja/dist/index.js",
]
PROMPT_MESSAGES = [{"role": "user", "content": "Write a haiku about the sea."}]
N_MATCH = 16

sys.path.insert(0, str(DEMO / "tools"))


def _missing_tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ------------------------------------------------------------------------------------------------ build
@pytest.fixture(scope="session")
def npm_deps():
    missing = [str(p.relative_to(DEMO)) for p in NPM_MARKERS if not p.is_file()]
    if missing:
        pytest.skip(f"npm deps not installed ({', '.join(missing)}): run android_demo/build_apk.sh --deps")


@pytest.fixture(scope="session")
def assets(npm_deps):
    if not APK.is_file() or not (ASSETS / "www/index.html").is_file() or _stale():
        r = _run(["bash", str(DEMO / "build_apk.sh"), "--no-install", "--assets-only"])
        assert r.returncode == 0, r.stderr
    return ASSETS


def _stale() -> bool:
    """Rebuild when any source is newer than the build (tests must see the current sources)."""
    built = min((p.stat().st_mtime for p in [APK, ASSETS / "www/index.html"] if p.exists()), default=0)
    srcs = [p for d in ("www", "app") for p in (DEMO / d).rglob("*") if p.is_file()] + [DEMO / "build_apk.sh"]
    return any(p.stat().st_mtime > built for p in srcs)


@pytest.fixture(scope="session")
def apk(npm_deps):
    missing = _missing_tools("aapt", "apksigner", "zipalign", "smali", "dexdump", "keytool")
    if not FRAMEWORK_RES.is_file():
        missing.append("android-framework-res")
    if missing:
        pytest.skip(f"Android build tools not installed ({', '.join(missing)}): run android_demo/build_apk.sh --deps")
    t0 = time.time()
    r = _run(["bash", str(DEMO / "build_apk.sh"), "--no-install"])
    assert r.returncode == 0, f"build_apk.sh failed:\n{r.stderr}"
    assert APK.is_file()
    print(f"\nAPK built in {time.time() - t0:.1f} s: {APK} ({APK.stat().st_size / 1e6:.1f} MB)")
    return APK


# ------------------------------------------------------------------------------------------------ APK
def test_apk_signature_verifies(apk):
    r = _run(["apksigner", "verify", "--verbose", str(apk)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verifies" in r.stdout
    assert "Verified using v2 scheme (APK Signature Scheme v2): true" in r.stdout


def test_apk_badging(apk):
    r = _run(["aapt", "dump", "badging", str(apk)])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"package: name='{PACKAGE}'" in out
    assert "sdkVersion:'24'" in out
    assert "targetSdkVersion:'29'" in out
    assert f"launchable-activity: name='{PACKAGE}.MainActivity'" in out
    assert "uses-permission: name='android.permission.INTERNET'" in out
    assert "application-label:'CoGenesis Edge'" in out


def test_apk_is_zipaligned(apk):
    r = _run(["zipalign", "-c", "-p", "4", str(apk)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_dex_has_the_activity_and_asset_server(apk):
    r = _run(["dexdump", str(apk)])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"Class descriptor  : 'L{PACKAGE.replace('.', '/')}/MainActivity;'" in out
    assert "Superclass        : 'Landroid/app/Activity;'" in out
    assert f"Class descriptor  : 'L{PACKAGE.replace('.', '/')}/AssetServer;'" in out
    assert "Superclass        : 'Landroid/webkit/WebViewClient;'" in out
    assert "name          : 'shouldInterceptRequest'" in out
    assert "name          : 'onCreate'" in out


def test_apk_carries_the_web_runtime_but_no_model(apk):
    names = set(zipfile.ZipFile(apk).namelist())
    for n in [
        "AndroidManifest.xml", "classes.dex", "resources.arsc",
        "assets/www/index.html", "assets/www/js/app.js", "assets/www/js/runtime.js", "assets/www/js/guard.js",
        "assets/www/vendor/ort.wasm.min.mjs", "assets/www/vendor/ort-wasm-simd-threaded.mjs",
        "assets/www/vendor/ort-wasm-simd-threaded.wasm", "assets/www/vendor/tokenizers.min.mjs",
        "assets/www/vendor/jinja.mjs",
    ]:
        assert n in names, f"{n} missing from the APK"
    assert not [n for n in names if n.endswith((".onnx", ".onnx.data"))], "the model must not be in the APK"
    assert apk.stat().st_size < 40e6


def test_dex_code_verifies_and_runs_on_a_jvm(apk):
    """classes.dex -> JVM bytecode (enjarify) against Android API stubs: verifier + behaviour of the smali."""
    if _missing_tools("javac", "java"):
        pytest.skip("no JDK (javac/java): apt-get install default-jdk-headless to run the dex JVM check")
    if not Path("/usr/lib/python3/dist-packages/enjarify").is_dir():
        pytest.skip("enjarify not installed: run android_demo/build_apk.sh --deps")
    r = _run(["bash", str(DEMO / "tools/jvmcheck/run.sh"), str(BUILD / "apk/dex/classes.dex"), str(ASSETS)])
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ALL OK" in r.stdout


# ------------------------------------------------------------------------------------------------ guard (node)
GUARD_JS = DEMO / "www/js/guard.js"
NODE_PARITY = """
import { readFileSync } from 'node:fs';
import { EgressGuard } from '%s';
const cases = JSON.parse(readFileSync(0, 'utf8'));
const detok = (ids) => new TextDecoder().decode(Uint8Array.from(ids));
const out = cases.map(({ context, texts, bodies, sanitize }) => {
  const g = new EgressGuard(context, { mode: 'audit', detokenize: detok });
  const f = (xs) => xs.map((x) => [x.kind, x.source, x.match, x.path]);
  return { texts: texts.map((t) => f(g.scanText(t))), bodies: bodies.map((b) => f(g.scanBody(b))),
           sanitize: sanitize.map((t) => g.sanitize(t)) };
});
process.stdout.write(JSON.stringify(out));
"""


def _guard_cases() -> list[dict]:
    """Contexts and texts: the authors' sample records (each record's texts against several users' contexts) and
    canaries in every field class, so each rule of cloud_bridge.guard is exercised."""
    from cogenesis.core.context import PrivateContext, WritingSample, parse_profile_block

    recs = json.loads((ROOT / "cogenesis/assets/sample_data.json").read_text())
    contexts = [PrivateContext(parse_profile_block(r["additional_profile"]),
                               [WritingSample(h["title"], h["text"]) for h in r["profile"]], []) for r in recs]
    contexts.append(PrivateContext(
        {"Age": "34 CNRY0Q919X", "Name": "Dr. Zelphine Quarrington", "Location": "Vexmouth, Lorindale",
         "Occupation": "Luxury Real Estate Agent", "Personal_traits": "Friendly; violet heron sings over harbor lanterns",
         "Email": "zelphine.q@example.org", "Phone": "+44 7700 900123", "Address": "12 Quay Road; Flat 3",
         "Pets": "Has a cat named Whiskers; allergic to hazelnuts"},
        [WritingSample("Harbor notes at dusk", "The violet heron sings over harbor lanterns as the tide turns. Ref AB12CD.")],
        ["My landlord is raising the rent in March and I have not told anyone yet.", "Sk8-Track"]))
    texts = []
    for r in recs:
        texts += [r["conversations"][0]["value"], r["conversations"][1]["value"], *r.get("additional_tasks", [])]
        texts.append("I once wrote: " + r["profile"][0]["text"][40:200])  # verbatim spans against its own context
    texts += [
        "Zelphine will write to ZELPHINE and zelphine about Vexmouth, vexmouth and Lorindale.",
        "Email zelphine.q@example.org or call +44 7700 900123, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32.",
        "SSN 123-45-6789 at 221 Baker Street; my cat named Whiskers; the violet heron sings over the harbor lanterns.",
        "She is 34 and friendly. Ref AB12CD and Sk8-Track, the 21st of May in the 80s, a 10-year plan.",
        "Call 555-123-4567 or (206) 555-0142 or +1 206 555 0199; not 2024 or 1.5 or 12-34.",
        "Stra\u00dfe caf\u00e9 \u201cquoted\u201d \u2014 don\u2019t stop; na\u00efve r\u00e9sum\u00e9 (MARISOL) Tacoma.",
    ]
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": t}]} for t in texts[-5:]
    ] + [{"prompt": list(b"Call Zelphine at +44 7700 900123"), "max_tokens": 1},
         {"Vexmouth": "key is private", "n": 3, "flag": True, "x": None}]
    out = []
    for ctx in contexts:
        out.append({"context": ctx.to_dict(), "texts": texts, "bodies": bodies,
                    "sanitize": [t for t in texts if len(t) < 300]})
    return out


def test_guard_parity_with_python():
    """www/js/guard.js finds exactly what cogenesis.cloud_bridge.guard finds (kind, source, match, JSON path)."""
    if _missing_tools("node"):
        pytest.skip("node not installed (apt-get install nodejs; make android-deps)")
    from cogenesis.cloud_bridge import guard as guard_py

    from cogenesis.core.context import PrivateContext

    cases = _guard_cases()
    r = _run(["node", "--input-type=module", "-e", NODE_PARITY % GUARD_JS.as_uri()], input=json.dumps(cases))
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)

    def detok(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    n_findings = 0
    for case, got in zip(cases, js, strict=True):
        g = guard_py.EgressGuard(PrivateContext.from_dict(case["context"]), mode="audit", detokenize=detok)
        for t, jf in zip(case["texts"], got["texts"], strict=True):
            want = [[f.kind, f.source, f.match, f.path] for f in g.scan_text(t, terms=False)]
            assert jf == want, f"text {t[:80]!r}"
            n_findings += len(want)
        for b, jf in zip(case["bodies"], got["bodies"], strict=True):
            want = [[f.kind, f.source, f.match, f.path] for f in g.scan_body(b, terms=False)]
            assert jf == want, f"body {json.dumps(b)[:80]}"
        for t, js_s in zip(case["sanitize"], got["sanitize"], strict=True):
            py_s = g.sanitize(t, terms=False)
            assert js_s["text"] == py_s.text, t
            assert [tuple(c) for c in js_s["changes"]] == py_s.changes, t
    assert n_findings > 100  # the cases really exercise the rules


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    if _missing_tools("openssl"):
        pytest.skip("openssl not installed (needed for the appassets TLS certificate)")
    d = tmp_path_factory.mktemp("tls")
    r = _run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=appassets.androidplatform.net", "-addext", "subjectAltName=DNS:appassets.androidplatform.net",
        "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
    ])
    assert r.returncode == 0, r.stderr
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture(scope="session")
def bundle(request):
    """COGENESIS_BUNDLE if set, else the suite's int4 bundle of the default model (exported once, cached)."""
    env = os.environ.get("COGENESIS_BUNDLE")
    b = Path(env) if env else request.getfixturevalue("int4_bundle")
    if not (b / "model.onnx").is_file() or not (b / "tokenizer.json").is_file():
        pytest.fail(f"COGENESIS_BUNDLE={b} is not a bundle (no model.onnx / tokenizer.json)")
    return b


@pytest.fixture(scope="session")
def app_server(assets, tls_cert, bundle):
    """The APK's AssetServer, on the desktop: same paths and headers, HTTPS (origin mapped by Chromium)."""
    from devserver import make_server

    srv = make_server("127.0.0.1", 0, assets, bundle, quiet=True, tls=tls_cert)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


class FakeCloud:
    """An OpenAI-compatible stand-in for the cloud (CORS like the reference server must have): records bodies."""

    OUTLINE = "- Greet everyone\n- Say when and where the picnic is\n- Ask each friend to bring one dish\n- Sign off warmly"

    def __init__(self):
        self.requests: list[dict] = []  # POSTs
        self.gets: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _cors(self):
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "authorization, content-type")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                self.send_header("Access-Control-Allow-Private-Network", "true")

            def do_OPTIONS(self):
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_GET(self):
                outer.gets.append(self.path)
                data = json.dumps({"object": "list", "data": [{"id": "fake-cloud", "object": "model"}]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "body": raw.decode("utf-8"),
                                       "auth": self.headers.get("Authorization")})
                body = json.loads(raw)
                if self.path.endswith("/chat/completions"):
                    out = {"id": "x", "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": FakeCloud.OUTLINE}}]}
                elif self.path.endswith("/completions"):
                    n = len(body["prompt"])
                    top = {"token_id:504": -0.2, "token_id:198": -1.9} if n % 2 else {"token_id:28": -0.4, "token_id:260": -1.2}
                    out = {"choices": [{"index": 0, "text": "", "logprobs": {"top_logprobs": [top]}}]}
                else:
                    self.send_response(404)
                    self._cors()
                    self.end_headers()
                    return
                data = json.dumps(out).encode()
                self.send_response(200)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def fake_cloud():
    c = FakeCloud()
    yield c
    c.srv.shutdown()


@pytest.fixture(scope="session")
def browser(app_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("PyPI playwright not installed (pip install playwright; never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + [
            f"--host-resolver-rules=MAP appassets.androidplatform.net:443 127.0.0.1:{app_server}",
            "--ignore-certificate-errors",
        ])
        yield p, b
        b.close()


@pytest.fixture(scope="module")
def app(browser, fake_cloud, bundle):
    """One Pixel 7 page with the bundle loaded (loading takes a while), shared by the UI tests."""
    p, b = browser
    ctx = b.new_context(**p.devices["Pixel 7"], ignore_https_errors=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    q = f"?cloud={fake_cloud.url}&token=test-token&autoload=1&example=1&maxTokens=24&privacy=strict"
    page.goto(START + q)
    page.wait_for_function("window.cogenesisReady === true", timeout=30_000)
    page.wait_for_function("window.cogenesis.model !== null || "
                           "document.getElementById('load-status').textContent.startsWith('could not')", timeout=600_000)
    assert page.evaluate("window.cogenesis.model !== null"), page.text_content("#load-status")
    page.errors = errors
    yield page
    ctx.close()


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


# ------------------------------------------------------------------------------------------------ reference
def python_reference(bundle: Path, messages: list[dict], n: int) -> tuple[list[int], list[int]]:
    """(prompt ids, first n greedy ids) from the Python runtime on the same bundle: cogenesis.runtime for a real
    bundle (manifest.json), else a plain onnxruntime greedy loop (a raw export without a manifest).

    The template is rendered and encoded WITHOUT special tokens, as cogenesis.runtime does: the bundle's
    tokenizer.json has a TemplateProcessing post-processor that would prepend a second <|im_start|>.
    """
    if (bundle / "manifest.json").is_file():
        import cogenesis.runtime as rt

        m = rt.load(bundle, threads=2)
        return m.encode(messages), m.generate(messages, max_new_tokens=n, temperature=0.0).token_ids
    import jinja2
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tpl = jinja2.Environment().from_string((bundle / "chat_template.jinja").read_text())
    text = tpl.render(messages=messages, add_generation_prompt=True, bos_token="<|im_start|>", eos_token="<|im_end|>")
    ids = tok.encode(text, add_special_tokens=False).ids
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in s.get_inputs()}
    layers = sum(1 for k in inputs if re.fullmatch(r"past_key_values\.\d+\.key", k))
    kv = inputs["past_key_values.0.key"].shape  # dims may be symbolic in an exported bundle
    heads = kv[1] if isinstance(kv[1], int) else 3
    hd = kv[3] if isinstance(kv[3], int) else 64
    past = {f"past_key_values.{i}.{k}": np.zeros((1, heads, 0, hd), np.float32) for i in range(layers) for k in ("key", "value")}
    names = [o.name for o in s.get_outputs()]
    out, cur, P = [], ids, 0
    for _ in range(n):
        S = len(cur)
        feeds = dict(past, input_ids=np.array([cur], np.int64), attention_mask=np.ones((1, P + S), np.int64))
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(P, P + S, dtype=np.int64)[None]
        if "num_logits_to_keep" in inputs:
            feeds["num_logits_to_keep"] = np.array(1, np.int64)
        r = dict(zip(names, s.run(None, feeds), strict=True))
        nxt = int(r["logits"][0, -1].argmax())
        out.append(nxt)
        past = {f"past_key_values.{i}.{k}": r[f"present.{i}.{k}"] for i in range(layers) for k in ("key", "value")}
        P, cur = P + S, [nxt]
    return ids, out


# ------------------------------------------------------------------------------------------------ browser tests
@pytest.mark.slow
def test_page_is_served_like_the_webview(app):
    info = app.evaluate("({href: location.href, coi: crossOriginIsolated, secure: isSecureContext})")
    assert info["href"].startswith(START)
    assert info["secure"] is True
    assert info["coi"] is True  # COOP/COEP from the asset server -> WASM threads in Chromium
    m = app.evaluate("window.cogenesis.model.info")
    assert m["layers"] == 30 and m["kvHeads"] == 3 and m["headDim"] == 64
    assert app.errors == []


@pytest.mark.slow
def test_tokenizer_matches_python(app, bundle):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    samples = [
        "Hello world", "  leading spaces and\ttabs\nnew lines\n\n", "Café naïve façade — “quotes” 😀 你好",
        "<|im_start|>user\nhi<|im_end|>\n", "numbers 1234567 and 3.14159, code: def f(x): return x**2",
    ]
    js = app.evaluate("(xs) => xs.map((x) => window.cogenesis.model.encode(x))", samples)
    for s, got in zip(samples, js, strict=True):
        assert got == tok.encode(s, add_special_tokens=False).ids, s
    dec = app.evaluate("(xs) => xs.map((x) => window.cogenesis.model.decode(window.cogenesis.model.encode(x), false))", samples)
    assert dec == samples


@pytest.mark.slow
def test_greedy_matches_python_runtime(app, bundle):
    js = app.evaluate(
        """async ([msgs, n]) => { const m = window.cogenesis.model;
             const ids = m.encode(m.renderChat(msgs));
             const r = await m.generate(ids, {maxNewTokens: n, sampling: 'greedy'});
             return {prompt: ids, ids: r.ids, text: r.text, tps: r.tokensPerSecond}; }""",
        [PROMPT_MESSAGES, N_MATCH],
    )
    prompt, ref = python_reference(bundle, PROMPT_MESSAGES, N_MATCH)
    assert js["prompt"] == prompt, "chat template / tokenizer differ from Python"
    assert js["ids"] == ref[: len(js["ids"])] and len(js["ids"]) == N_MATCH, (js["ids"], ref)
    print(f"\nfirst {N_MATCH} greedy tokens match Python: {js['text']!r}")


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(app):
    r = app.evaluate(
        """async (msgs) => { const m = window.cogenesis.model; const ids = m.encode(m.renderChat(msgs));
             const go = (seed) => m.generate(ids, {maxNewTokens: 12, sampling: 'seeded', seed, temperature: 0.9, topP: 0.95});
             const a = await go(7), b = await go(7), c = await go(8);
             return [a.ids, b.ids, c.ids]; }""",
        PROMPT_MESSAGES,
    )
    assert r[0] == r[1]
    assert len(r[0]) > 0


@pytest.mark.slow
def test_decode_speed_in_browser(app):
    r = app.evaluate(
        """async (msgs) => { const m = window.cogenesis.model; const ids = m.encode(m.renderChat(msgs));
             const res = await m.generate(ids, {maxNewTokens: 32, sampling: 'greedy'});
             return {tps: res.tokensPerSecond, n: res.ids.length, prefill: res.prefillSeconds, prompt: ids.length,
                     threads: m.info.threads, bytes: m.info.bytes}; }""",
        [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
    )
    BUILD.mkdir(exist_ok=True)
    (BUILD / "browser_speed.json").write_text(json.dumps(r, indent=1) + "\n")
    print(f"\nbrowser decode: {r['tps']:.1f} tok/s over {r['n']} tokens, {r['threads']} thread(s), "
          f"prefill {r['prompt']} tok in {r['prefill']:.2f} s, model {r['bytes'] / 1e6:.0f} MB")
    assert r["n"] > 0 and r["tps"] > 0  # recorded, not a gate: the machine is shared


def _generate_via_ui(page, instruction: str, mode: str, timeout=300_000):
    page.click("nav.tabs button[data-go=write]")
    page.fill("#instruction", instruction)
    page.click(f"#mode-seg input[value={mode}] + span")
    page.click("#btn-generate")
    page.wait_for_function(
        "['failed'].includes(document.getElementById('gen-status').textContent) || "
        "document.getElementById('gen-status').textContent.startsWith('done')", timeout=timeout)
    return page.text_content("#gen-status"), page.text_content("#output")


@pytest.mark.slow
def test_local_mode_sends_nothing(app, fake_cloud):
    app.evaluate("window.cogenesis.egress.clear()")
    before = len(fake_cloud.requests)
    status, out = _generate_via_ui(app, "Write a short post inviting my friends to a picnic this weekend.", "local")
    assert status.startswith("done"), out
    assert out.strip()
    assert len(fake_cloud.requests) == before
    assert app.evaluate("window.cogenesis.egress.entries.length") == 0
    shot(app, "1_write_local")


@pytest.mark.slow
def test_sketch_mode_sends_only_the_instruction(app, fake_cloud):
    app.evaluate("window.cogenesis.egress.clear()")
    before = len(fake_cloud.requests)
    instruction = "Write a short post inviting my friends to a picnic this weekend."
    status, out = _generate_via_ui(app, instruction, "sketch")
    assert status.startswith("done"), out
    sent = fake_cloud.requests[before:]
    assert [r["path"] for r in sent] == ["/v1/chat/completions"]
    assert sent[0]["auth"] == "Bearer test-token"
    body = json.loads(sent[0]["body"])
    user_text = "\n".join(m["content"] for m in body["messages"])
    assert instruction in user_text
    ctx = json.loads((DEMO / "www/example_context.json").read_text())
    for v in ctx["profile"].values():
        assert v.lower() not in sent[0]["body"].lower()
    assert body["model"] == "fake-cloud"  # no model set: the page asked GET /v1/models
    assert fake_cloud.gets == ["/v1/models"]
    # the egress panel shows exactly what was sent (the model-list GET too), and the guard's verdict
    entries = app.evaluate("window.cogenesis.egress.entries.filter((e) => e.method === 'POST')")
    assert len(entries) == 1
    assert entries[0]["body"] == sent[0]["body"]
    assert entries[0]["verdict"] == "clean" and entries[0]["sent"] is True
    assert entries[0]["sha256"] == hashlib.sha256(sent[0]["body"].encode()).hexdigest()
    assert app.text_content("#outline") == FakeCloud.OUTLINE
    shot(app, "2_write_sketch")


@pytest.mark.slow
def test_strict_mode_blocks_a_private_instruction_then_sends_it_sanitized(app, fake_cloud):
    before = len(fake_cloud.requests)
    status, out = _generate_via_ui(app, "Write a note from Maria Lopez to the parents about the spring fair.", "sketch")
    assert status == "failed"
    assert "blocked by the privacy guard" in out and "profile.Name" in out
    assert len(fake_cloud.requests) == before  # nothing left the phone
    e = app.evaluate("window.cogenesis.egress.entries[0]")
    assert e["verdict"] == "blocked" and e["sent"] is False
    assert any(f["source"] == "profile.Name" and f["kind"] == "identifier" for f in e["findings"])
    # the phone offers the instruction with the private facts rewritten, and sends only that
    app.wait_for_selector("#sanitize-box:not([hidden])")
    assert app.text_content("#sanitized") == "Write a note from the user to the parents about the spring fair."
    shot(app, "3_write_blocked_sanitize")
    app.click("#btn-send-sanitized")
    app.wait_for_function("document.getElementById('gen-status').textContent.startsWith('done')", timeout=300_000)
    sent = fake_cloud.requests[before:]
    assert len(sent) == 1 and "Maria" not in sent[0]["body"] and "the user to the parents" in sent[0]["body"]
    app.click("nav.tabs button[data-go=egress]")
    app.wait_for_selector(".eg .verdict.blocked")
    shot(app, "4_egress")


def _cors_allows(url: str) -> str | None:
    """The Access-Control-Allow-Origin a server gives the WebView's origin on a preflight (None: no CORS)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method="OPTIONS", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as e:
        return e.headers.get("Access-Control-Allow-Origin") if e.code < 400 else None


@pytest.mark.slow
def test_sketch_mode_against_the_reference_server(app, bundle, fake_cloud, tmp_path):
    """The page against `cogenesis cloud serve` (same bundle): only the instruction goes out, and the bytes the
    server captured are exactly the body the Egress panel shows."""
    from cogenesis.cloud_bridge import server

    cap = tmp_path / "capture.jsonl"
    srv = server.serve_in_thread(server.create_app(bundle, api_key="demo-key", capture=str(cap), threads=1))
    try:
        allow = _cors_allows(srv.url + "/v1/chat/completions")
        assert allow in ("*", ORIGIN), (f"the reference server answers no CORS preflight for {ORIGIN}: the WebView "
                                         "page could not call it (ServerSettings.cors_origins)")
        app.evaluate("window.cogenesis.egress.clear()")
        app.click("nav.tabs button[data-go=settings]")
        app.fill("#set-cloud", srv.url)
        app.fill("#set-token", "demo-key")
        instruction = "Write a short post inviting my friends to a picnic this weekend."
        status, out = _generate_via_ui(app, instruction, "sketch")
        assert status.startswith("done"), out
        entries = app.evaluate("window.cogenesis.egress.entries.filter((e) => e.method === 'POST')")
        got = [r for r in server.read_capture(cap) if r["method"] == "POST"]
        assert [r["path"] for r in got] == ["/v1/chat/completions"]
        assert got[0]["body"].decode("utf-8") == entries[0]["body"]
        assert instruction in entries[0]["body"] and "Maria" not in entries[0]["body"]
        assert app.text_content("#outline").strip()
    finally:
        srv.stop()
        app.click("nav.tabs button[data-go=settings]")
        app.fill("#set-cloud", fake_cloud.url)
        app.fill("#set-token", "test-token")
        app.click("nav.tabs button[data-go=write]")


@pytest.mark.slow
def test_logits_mode_experimental(app, fake_cloud):
    app.evaluate("window.cogenesis.egress.clear()")
    app.click("nav.tabs button[data-go=settings]")
    app.fill("#set-max", "4")
    before = len(fake_cloud.requests)
    instruction = "Write one sentence about the sea."
    status, out = _generate_via_ui(app, instruction, "logits")
    assert status.startswith("done"), out
    sent = fake_cloud.requests[before:]
    assert 1 <= len(sent) <= 4 and all(r["path"] == "/v1/completions" for r in sent)
    bodies = [json.loads(r["body"]) for r in sent]
    assert all(isinstance(b["prompt"], list) and all(isinstance(t, int) for t in b["prompt"]) for b in bodies)
    assert [len(b["prompt"]) for b in bodies] == list(range(len(bodies[0]["prompt"]), len(bodies[0]["prompt"]) + len(bodies)))
    first = app.evaluate("(ids) => window.cogenesis.model.decode(ids, false)", bodies[0]["prompt"])
    assert instruction in first and "Maria" not in first and "Valencia" not in first
    app.click("nav.tabs button[data-go=egress]")
    app.wait_for_selector(".eg")
    shot(app, "7_egress_logits")
    app.click("nav.tabs button[data-go=settings]")
    app.fill("#set-max", "24")
    app.click("nav.tabs button[data-go=write]")


@pytest.mark.slow
def test_bundle_from_a_laptop_over_lan_kept_on_the_phone(app, bundle):
    """The second way to get a bundle: devserver.py on a laptop (plain http, CORS), copy kept in Cache Storage."""
    from devserver import make_server

    srv = make_server("127.0.0.1", 0, ASSETS, bundle, quiet=True)
    hits: list[str] = []
    base = srv.RequestHandlerClass

    def do_get(self):
        hits.append(self.path)
        base.do_GET(self)

    srv.RequestHandlerClass = type("Counting", (base,), {"do_GET": do_get})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/bundle/tokenizer.json"
    try:
        r = app.evaluate(
            """async (u) => { const f = window.cogenesis.fetchBundleFile;
                 const a = await f(u, {keepCopy: true}); const b = await f(u, {keepCopy: true});
                 await caches.delete('cogenesis-bundle-v1'); return [a.length, b.length]; }""", url)
    finally:
        srv.shutdown()
    size = (bundle / "tokenizer.json").stat().st_size
    assert r == [size, size]
    assert hits == ["/bundle/tokenizer.json"]  # the second read came from the phone's copy


@pytest.mark.slow
def test_context_and_settings_screens(app):
    app.click("nav.tabs button[data-go=context]")
    app.wait_for_selector("#profile-rows .kv")
    vals = app.eval_on_selector_all("#profile-rows .kv .v", "els => els.map(e => e.value)")
    assert "Maria Lopez" in vals
    stored = app.evaluate("JSON.parse(localStorage.getItem('cogenesis.core.context.v1'))")
    assert stored["profile"]["Name"] == "Maria Lopez"
    shot(app, "5_private_context")
    app.click("nav.tabs button[data-go=settings]")
    assert app.input_value("#set-cloud").startswith("http://127.0.0.1:")
    assert "crossOriginIsolated=true" in app.text_content("#env-info")
    shot(app, "6_settings")
    app.click("nav.tabs button[data-go=write]")
    assert app.errors == []


# ------------------------------------------------------------------------------------------------ MatMulNBits
def test_matmulnbits_runs_in_onnxruntime_web(browser, assets, tmp_path):
    """The int4 bundle uses com.microsoft MatMulNBits (4- and 8-bit): check the WASM build runs both."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from devserver import make_server
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    rng = np.random.default_rng(0)
    K, N = 64, 32
    w = rng.standard_normal((K, N)).astype(np.float32)
    a = rng.standard_normal((1, 3, K)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 3, K])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, N])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    root = tmp_path / "assets" / "www"
    root.mkdir(parents=True)
    shutil.copytree(assets / "www" / "vendor", root / "vendor")
    ref = {"A": a.ravel().tolist()}
    for bits in (4, 8):
        for sym in (False, True):
            q = MatMulNBitsQuantizer(onnx.load_from_string(m.SerializeToString()),
                                     algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=sym, bits=bits))
            q.process()
            name = f"nbits{bits}{'s' if sym else 'a'}"
            assert [n.op_type for n in q.model.model.graph.node] == ["MatMulNBits"]
            onnx.save(q.model.model, str(root / f"{name}.onnx"))
            y = ort.InferenceSession(str(root / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
            ref[name] = y.ravel().tolist()
    (root / "ref.json").write_text(json.dumps(ref))
    (root / "index.html").write_text("""<!doctype html><script type=module>
import * as ort from './vendor/ort.wasm.min.mjs';
ort.env.wasm.wasmPaths = new URL('./vendor/', location.href).href;
const ref = await (await fetch('ref.json')).json(); const res = {};
for (const name of Object.keys(ref).filter((k) => k !== 'A')) {
  try { const s = await ort.InferenceSession.create(name + '.onnx', {executionProviders: ['wasm']});
    const y = (await s.run({A: new ort.Tensor('float32', Float32Array.from(ref.A), [1, 3, 64])})).Y.data;
    res[name] = Math.max(...Array.from(y, (v, i) => Math.abs(v - ref[name][i])));
  } catch (e) { res[name] = String(e); } }
window.RESULT = res;
</script>""")
    srv = make_server("127.0.0.1", 0, tmp_path / "assets", None, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    p, b = browser
    page = b.new_page()
    try:
        page.goto(f"http://127.0.0.1:{srv.server_address[1]}/assets/www/index.html")
        page.wait_for_function("window.RESULT", timeout=60_000)
        res = page.evaluate("window.RESULT")
    finally:
        page.close()
        srv.shutdown()
    print(f"\nMatMulNBits in onnxruntime-web wasm, max |diff| vs Python onnxruntime: {res}")
    for name, diff in res.items():
        assert isinstance(diff, float | int), f"{name}: {diff}"
        assert diff < 1e-3, f"{name}: {diff}"
