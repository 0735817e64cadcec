"""Load test of the reference cloud server: 64 concurrent clients x 60 s of mixed CoGenesis traffic, loopback only.

    python bench/server_load.py [--bundle B] [--clients 64] [--seconds 60] [--kv-budget-mb 256]

Each client is a thread with its own `CloudClient` (the real bridge client, retries off so every 429/503 is
seen) and its own session, and loops over one of three kinds of traffic, a third of the clients each:
* sketch: `client.sketch(instruction, max_tokens=48)`: a chat completion, as sketch mode sends it;
* logits: `next_token_logprobs(prefix, (), k=20)` with the prefix growing one token per request (per-step fusion);
* logits-block: `next_token_logprobs(prefix, draft[4], k=20)` with `prompt_logprobs` (block fusion), the prefix
  growing by the block.
A client whose prefix reaches 1,500 tokens starts a new session. Counted: requests, answers by status, errors
other than the documented 429/503 (anything else fails the run), latency p50/p99 per kind, and the server
process's resident memory sampled every 100 ms. The same traffic runs twice: with the KV budget and without
(`--kv-budget-mb 0`), so the table shows what the budget bounds. The budget covers KV caches only; each running
forward also holds transient logits (up to PREFILL_CHUNK rows x vocab x 4 B, and a log-softmax copy of them), so
the pass bound is idle RSS + KV budget + max_parallel x 2 x PREFILL_CHUNK x vocab x 4 B.
Writes bench/results/server_load.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cloud_server import KEY, TEXT, _pct, start_server  # noqa: E402
from cogenesis.cloud_bridge.client import CloudClient, CloudError  # noqa: E402
from cogenesis.cloud_bridge.guard import EgressGuard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("sketch", "logits", "logits-block")
DOCUMENTED = (429, 503)
MAX_PREFIX = 1500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.status: Counter = Counter()
        self.errors: list[str] = []

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.lat[kind].append(seconds)
            self.status[f"{kind} 200"] += 1

    def fail(self, kind: str, e: Exception) -> None:
        status = getattr(e, "status", None)
        with self.lock:
            self.status[f"{kind} {status or type(e).__name__}"] += 1
            if status not in DOCUMENTED:
                self.errors.append(f"{kind}: {type(e).__name__}: {e}"[:300])


def client_loop(url: str, ids: list[int], kind: str, i: int, stop: threading.Event, stats: Stats) -> None:
    c = CloudClient(url, api_key=KEY, guard=EgressGuard(None, mode="off"), retries=0, timeout=(5, 300),
                    deadline_s=None, model="SmolLM2-135M-Instruct")
    start = 50 + (i * 37) % 300
    n = start
    c.session_id = uuid.uuid4().hex
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            if kind == "sketch":
                c.sketch("Write a short note to a neighbour about a lost cat.", max_tokens=48)
            elif kind == "logits":
                c.next_token_logprobs(ids[:n], (), k=20)
                n += 1
            else:
                c.next_token_logprobs(ids[:n], ids[n:n + 4], k=20)
                n += 4
        except CloudError as e:
            stats.fail(kind, e)
            if getattr(e, "status", None) in DOCUMENTED:
                time.sleep(getattr(e, "retry_after", None) or 1.0)  # as Retry-After asks
            continue
        stats.ok(kind, time.perf_counter() - t0)
        if n >= MAX_PREFIX:
            n, c.session_id = start, uuid.uuid4().hex
    c.close()


MAX_PARALLEL = 2


def transient_mb(bundle: Path) -> float:
    """Logits a running forward holds beyond the KV cache: PREFILL_CHUNK rows x vocab, fp32, plus one copy."""
    from cogenesis.cloud_bridge.server_engine import PREFILL_CHUNK

    vocab = json.loads((bundle / "manifest.json").read_text())["model"]["vocab_size"]
    return MAX_PARALLEL * 2 * PREFILL_CHUNK * vocab * 4 / 2**20


def run(bundle: Path, clients: int, seconds: float, kv_budget_mb: float, threads: int) -> dict:
    proc, url = start_server(bundle, threads, max_sessions=clients,
                             extra=("--kv-budget-mb", str(kv_budget_mb), "--max-parallel", str(MAX_PARALLEL)))
    try:
        import cogenesis.runtime as rt

        tok = rt.load(bundle, verify=False).tokenizer
        ids = tok.encode(TEXT * 40, add_special_tokens=False).ids[: MAX_PREFIX + 8]
        idle = rss_mb(proc.pid)
        stats, stop = Stats(), threading.Event()
        peak = [idle]

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
                time.sleep(0.1)

        ts = [threading.Thread(target=client_loop, args=(url, ids, KINDS[i % 3], i, stop, stats)) for i in range(clients)]
        sampler = threading.Thread(target=sample)
        t0 = time.perf_counter()
        for t in [sampler, *ts]:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in ts:
            t.join(600)
        wall = time.perf_counter() - t0
        sampler.join()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    lat = {k: {"n": len(v), "p50_s": _pct(v, 0.5), "p99_s": _pct(v, 0.99),
               "mean_s": statistics.fmean(v) if v else float("nan")} for k, v in stats.lat.items()}
    return {"clients": clients, "seconds": seconds, "wall_s": wall, "kv_budget_mb": kv_budget_mb,
            "server_threads": threads, "requests": sum(stats.status.values()), "status": dict(stats.status),
            "errors": len(stats.errors), "error_examples": stats.errors[:5], "latency": lat,
            "rss_idle_mb": idle, "rss_peak_mb": peak[0], "transient_mb": transient_mb(bundle),
            "rss_limit_mb": idle + kv_budget_mb + transient_mb(bundle) if kv_budget_mb else None,
            "server_alive_after": alive}


def _ok(r: dict) -> bool:
    return r["errors"] == 0 and r["server_alive_after"] and (r["rss_limit_mb"] is None or
                                                                 r["rss_peak_mb"] <= r["rss_limit_mb"])


def markdown(runs: list[dict], bundle: Path) -> str:
    r = runs[0]
    lines = [
        "# Reference cloud server under load (`bench/server_load.py`)", "",
        f"{r['clients']} concurrent clients (threads, one `CloudClient` and session each, retries off, each waits "
        f"what Retry-After says after a 429/503) x {r['seconds']:.0f} s of mixed traffic on 127.0.0.1, bundle "
        f"`{bundle.name}`, server `--threads {r['server_threads']} --max-parallel {MAX_PARALLEL}`. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; clients and server share them. "
        "The same traffic with the KV budget and without it.", "",
        "| KV budget | result | requests | 200 | 503 | other errors | server alive | idle RSS MiB | peak RSS MiB "
        "| bound MiB (idle + budget + transient logits) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in runs:
        n200 = sum(v for k, v in x["status"].items() if k.endswith(" 200"))
        n503 = sum(v for k, v in x["status"].items() if k.endswith(" 503"))
        bound = (f"{x['rss_limit_mb']:.0f} = {x['rss_idle_mb']:.0f} + {x['kv_budget_mb']:.0f} + "
                 f"{x['transient_mb']:.0f}") if x["rss_limit_mb"] else "none"
        budget = f"{x['kv_budget_mb']:.0f} MiB" if x["kv_budget_mb"] else "off"
        lines.append(f"| {budget} | {'PASS' if _ok(x) else 'FAIL'} | {x['requests']} | {n200} | {n503} | "
                     f"{x['errors']} | {x['server_alive_after']} | {x['rss_idle_mb']:.0f} | {x['rss_peak_mb']:.0f} "
                     f"| {bound} |")
    for x in runs:
        budget = f"{x['kv_budget_mb']:.0f} MiB" if x["kv_budget_mb"] else "off"
        lines += ["", f"Latency of answered requests, KV budget {budget}:", "",
                  "| traffic | answered (200) | p50 s | p99 s | mean s |", "|---|---|---|---|---|"]
        for k, v in x["latency"].items():
            lines.append(f"| {k} | {v['n']} | {v['p50_s']:.2f} | {v['p99_s']:.2f} | {v['mean_s']:.2f} |")
        lines += ["", "Answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(x["status"].items()))]
        if x["error_examples"]:
            lines += ["", "Errors:", *[f"- {e}" for e in x["error_examples"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle to serve (default: make demo's or the tests' int4 bundle)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--kv-budget-mb", type=float, default=256.0)
    p.add_argument("--no-compare", action="store_true", help="skip the run without a KV budget")
    p.add_argument("--threads", type=int, default=2, help="server onnxruntime threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    if a.bundle is None:
        cands = [ROOT / "artifacts" / "bundles" / "smollm2-int4"]
        cands += sorted((ROOT / ".cache" / "test-bundles").glob("smollm2-int4-*"), key=lambda q: q.stat().st_mtime)
        cands = [c for c in cands if (c / "manifest.json").exists()]
        if not cands:
            p.error("no bundle: pass --bundle DIR (make one with `cogenesis export --quant int4 --out DIR`)")
        a.bundle = str(cands[0])
    bundle = Path(a.bundle)
    budgets = [a.kv_budget_mb] + ([] if a.no_compare or not a.kv_budget_mb else [0.0])
    runs = [run(bundle, a.clients, a.seconds, b, a.threads) for b in budgets]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(runs, bundle)
    for name, text in (("server_load.json", json.dumps({"bundle": bundle.name, "runs": runs}, indent=2) + "\n"),
                       ("server_load.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    print(md)
    return 0 if all(_ok(r) for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
