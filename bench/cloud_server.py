"""Benchmark of the reference cloud server: single-position logprobs requests, warm vs cold prefix.

    python bench/cloud_server.py [--bundle artifacts/bundles/smollm2-int4] [--seconds 8] [--clients 1,4,16]

Each request is `CloudClient.next_token_logprobs(prefix, (), k=20)` (what per-step logit fusion sends):
* warm: every client keeps one session and its prefix grows by one token per request (the server's prefix
  cache runs 1 new token);
* cold: a new session per request with a ~200-token prefix (the whole prefix is prefilled).
The server runs in a subprocess (`python -m cogenesis cloud serve`); clients are threads with their
own connection; the client guard is off (we time the server, not the on-device scan).
Writes bench/results/cloud_server.json and bench/results/cloud_server.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
from cogenesis.cloud_bridge.client import CloudClient
from cogenesis.cloud_bridge.guard import EgressGuard

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
PREFIX_TOKENS = 200
TEXT = (
    "The town library had stood on the corner of Elm and Fifth for more than a century. Its stone steps were worn "
    "smooth by generations of readers, and the brass handles on its oak doors shone from the touch of countless "
    "hands. Inside, the air smelled of paper, dust and the faint sweetness of the lilacs that the head librarian "
    "kept on her desk from May until the last blossom fell. Children came after school to read comics in the "
    "window seats; retirees came in the mornings for the newspapers; students came in the evenings to cram for "
    "exams they were sure they would fail. "
)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(bundle: Path, threads: int, max_sessions: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "cogenesis", "cloud", "serve", "--model", str(bundle), "--port", str(port),
           "--api-key", KEY, "--threads", str(threads), "--max-sessions", str(max_sessions), "--log-level", "warning",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def run_cell(url: str, ids: list[int], mode: str, clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    clock = {"deadline": 0.0}
    ready = threading.Barrier(clients + 1)
    auth = {"Authorization": f"Bearer {KEY}"}

    def worker(i: int) -> None:
        c = CloudClient(url, api_key=KEY, guard=EgressGuard(None, mode="off"), retries=0, timeout=(5, 120),
                        session_id=f"bench-{mode}-{clients}-{i}-{uuid.uuid4().hex[:6]}", model="SmolLM2-135M-Instruct")
        n = PREFIX_TOKENS + i  # clients start at slightly different prefixes
        if mode == "warm":  # fill the session's cache first (untimed)
            c.next_token_logprobs(ids[:n], (), k=20)
            n += 1
        ready.wait()
        ready.wait()
        while time.perf_counter() < clock["deadline"]:
            if mode == "cold":
                c.session_id = uuid.uuid4().hex
            t0 = time.perf_counter()
            try:
                c.next_token_logprobs(ids[:n], (), k=20)
            except Exception as e:  # report, keep going
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            with lock:
                lat.append(time.perf_counter() - t0)
            if mode == "warm":
                n += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    ready.wait()  # every client is set up (warm ones have their prefix cached)
    m0 = requests.get(url + "/metrics", headers=auth, timeout=10).json()
    start = time.perf_counter()
    clock["deadline"] = start + seconds
    ready.wait()
    for t in ts:
        t.join()
    wall = time.perf_counter() - start
    m1 = requests.get(url + "/metrics", headers=auth, timeout=10).json()
    runs = max(1, m1.get("runs", 0) - m0.get("runs", 0))

    def per_req(key: str) -> float:
        return round((m1.get(key, 0) - m0.get(key, 0)) / runs, 1)

    return {
        "mode": mode, "clients": clients, "requests": len(lat), "errors": len(errors), "error_examples": errors[:3],
        "wall_s": round(wall, 2), "req_per_s": round(len(lat) / wall, 2),
        "p50_ms": round(_pct(lat, 0.5) * 1000, 1), "p95_ms": round(_pct(lat, 0.95) * 1000, 1),
        "mean_ms": round(statistics.mean(lat) * 1000, 1) if lat else None,
        "computed_tokens_per_req": per_req("computed_tokens"), "cached_tokens_per_req": per_req("cached_tokens"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "artifacts" / "bundles" / "smollm2-int4"))
    p.add_argument("--seconds", type=float, default=8.0, help="per cell")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--threads", type=int, default=2, help="server onnxruntime threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    import cogenesis.runtime as rt

    tok = rt.load(a.bundle, threads=1, verify=False).tokenizer
    ids = tok.encode(TEXT * 6, add_special_tokens=False).ids
    clients = [int(x) for x in a.clients.split(",")]
    need = PREFIX_TOKENS + max(clients) + int(a.seconds * 200)
    while len(ids) < need:
        ids = ids + ids
    proc, url = start_server(Path(a.bundle), a.threads, max_sessions=max(clients) + 4)
    cells = []
    try:
        run_cell(url, ids, "cold", 1, 1.0)  # warm up onnxruntime
        for mode in ("warm", "cold"):
            for c in clients:
                cell = run_cell(url, ids, mode, c, a.seconds)
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"bundle": a.bundle, "prefix_tokens": PREFIX_TOKENS, "k": 20, "seconds_per_cell": a.seconds,
            "server_threads": a.threads, "cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg()),
            "python": platform.python_version(), "machine": platform.machine(),
            "note": "server and clients share the same CPUs; other jobs may have been running (see loadavg)"}
    (out / "cloud_server.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=2) + "\n")
    lines = [
        "# Reference cloud server: single-position logprobs requests",
        "",
        f"`next_token_logprobs(prefix, (), k=20)` over HTTP on 127.0.0.1; {a.seconds:g} s per cell; server "
        f"`--threads {a.threads}`; {os.cpu_count()} CPUs shared by server and clients; load average at the end "
        f"{meta['loadavg_at_end'][0]:.1f}. warm = one session per client, prefix grows by one token per request "
        f"(prefix cache: 1 token computed); cold = new session per request, {PREFIX_TOKENS}-token prefix.",
        "",
        "| mode | clients | requests | req/s | p50 ms | p95 ms | tokens computed/req | cached/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c['mode']} | {c['clients']} | {c['requests']} | {c['req_per_s']} | {c['p50_ms']} | "
                     f"{c['p95_ms']} | {c['computed_tokens_per_req']} | {c['cached_tokens_per_req']} | {c['errors']} |")
    lines += ["", "Regenerate: `python bench/cloud_server.py`."]
    (out / "cloud_server.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
