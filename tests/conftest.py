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
             "targets")  # what shapes an ONNX bundle (other export/ modules, e.g. executorch, do not)
    for p in [ROOT / "export" / f"{f}.py" for f in files] + [ROOT / "cogenesis" / "bundle.py"]:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _bundle(quant: str) -> Path:
    """Export the default model at `quant` once per version of the export code (cached across runs)."""
    from cogenesis.export.pipeline import export_bundle

    from cogenesis.bundle import BundleError, verify_bundle

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
