"""Co-generation latency: local-only vs per-step logit fusion vs block fusion, at simulated network RTTs.

    python bench/cogen_latency.py [--tokens 256] [--rtt 0 50 150] [--rule learned] [--local-cloud] [--quick]

The cloud is the reference server (`cogenesis.cloud_bridge.server`, same bundle, without the private context)
in a background thread with ``simulate_rtt_ms``, reached over HTTP with `CloudClient`; ``--local-cloud`` uses
the in-process `LocalCloud` + sleep instead. Greedy decoding, fixed length (stop tokens ignored) so every run
writes exactly ``--tokens`` tokens. Writes bench/results/cogen_latency.json and .md.

The cloud runs on the same 2 CPU cores as the edge here, so its compute time is part of the wall time; the
"instant cloud" column removes it (wall - cloud compute, keeping the RTT and HTTP overhead), which is what a
deployment with a fast remote server would see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def _prompt(model):
    from cogenesis.data.prompts import with_context, without_context
    from cogenesis.data.records import load_sample

    r = load_sample()[0]
    return r.instruction, model.encode(with_context(r)), model.encode(without_context(r))


class _SleepCloud:
    """LocalCloud + a sleep per request (no HTTP)."""

    def __init__(self, model, rtt_ms: float):
        from cogenesis.cogen.logits import LocalCloud

        self.inner = LocalCloud(model, rtt_s=rtt_ms / 1000, exact=False)

    def next_token_logprobs(self, prefix_ids, draft_ids=(), k=20):
        return self.inner.next_token_logprobs(prefix_ids, draft_ids, k)

    @property
    def compute_s(self) -> float:
        return self.inner.compute_s


def run_one(model, fuser, lp, cp, cloud, block: bool, tokens: int, rtt_ms: float, server=None) -> dict:
    from cogenesis.cogen.logits import cogenerate

    model.decoder.reset()  # every run pays the prefill
    srv_before = _server_compute(server)
    t0 = time.perf_counter()
    r = cogenerate(model.decoder, lp, cloud, cp, fuser, block=block, max_new_tokens=tokens, stop_ids=(),
                   draft_k=4, draft_k_max=16)
    wall = time.perf_counter() - t0
    if server is not None:
        cloud_compute = _server_compute(server) - srv_before
    else:
        cloud_compute = cloud.compute_s if cloud is not None else 0.0
    # what the edge would see with an instantly computing cloud: the RTT and HTTP overhead stay
    instant = wall - cloud_compute
    return {
        "tokens": len(r.tokens), "wall_s": round(wall, 3), "tok_s": round(len(r.tokens) / wall, 2),
        "round_trips": r.round_trips, "round_trips_per_token": round(r.round_trips_per_token, 4),
        "cloud_s": round(r.cloud_s, 3), "cloud_compute_s": round(cloud_compute, 3),
        "local_forward_s": round(r.local_s, 3), "prefill_s": round(r.prefill_s, 3),
        "wall_instant_cloud_s": round(instant, 3),
        "drafts_proposed": r.drafts_proposed, "drafts_accepted": r.drafts_accepted,
        "acceptance": round(r.drafts_accepted / r.drafts_proposed, 3) if r.drafts_proposed else None,
        "mean_draft_k": round(sum(r.draft_k_history) / len(r.draft_k_history), 2) if r.draft_k_history else None,
        "fallback": r.fallback, "rtt_ms": rtt_ms,
    }


def _server_compute(server) -> float:
    return getattr(server, "_compute_s", 0.0) if server is not None else 0.0


def _instrument(srv) -> None:
    """Time the server engine's forward passes (its compute, without RTT and HTTP)."""
    eng = srv.state.engine
    orig = eng._forward
    srv._compute_s = 0.0

    def timed(dec, ids, keep):
        t = time.perf_counter()
        try:
            return orig(dec, ids, keep)
        finally:
            srv._compute_s += time.perf_counter() - t

    eng._forward = timed


def _nodelay(srv) -> None:
    """TCP_NODELAY on the listening socket (accepted ones inherit it on Linux). `serve_in_thread` binds a socket
    created with proto 0, for which asyncio skips its usual TCP_NODELAY: each keep-alive request then waits
    ~40 ms for a delayed ACK (measured: GET /health 44 ms -> 2 ms). `cogenesis cloud serve` is not affected."""
    import socket

    for s in getattr(srv.server, "servers", []):
        for sk in s.sockets:
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "artifacts" / "bundles" / "smollm2-int4"))
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rtt", type=float, nargs="+", default=[0, 50, 150])
    p.add_argument("--rule", default="learned")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--local-cloud", action="store_true", help="in-process LocalCloud + sleep instead of HTTP")
    p.add_argument("--quick", action="store_true", help="64 tokens, RTT 50 only")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration; the fastest is reported")
    p.add_argument("--log-server", action="store_true", help="keep the server's per-request log lines")
    p.add_argument("--out", default=str(RESULTS / "cogen_latency"))
    a = p.parse_args(argv)
    if a.quick:
        a.tokens, a.rtt, a.repeat = 64, [50], 1

    import logging

    import cogenesis.runtime as rt

    from cogenesis.cogen.fusion import Fuser

    if not a.log_server:
        logging.getLogger("cogenesis.cloud.server").setLevel(logging.WARNING)

    model = rt.load(a.bundle, threads=a.threads)
    try:
        fuser = Fuser(a.rule)
    except FileNotFoundError:
        print("no shipped fusion net; using the mean rule")
        fuser = Fuser("mean")
    _, lp, cp = _prompt(model)
    print(f"prompt: local {len(lp)} tokens (with context), cloud {len(cp)} tokens (without); reply {a.tokens} tokens")
    runs: dict[tuple[str, float], list[dict]] = {}
    load = [os.getloadavg()[0]]
    for rep in range(a.repeat):
        for rtt in a.rtt:
            # a local-only run next to each RTT's runs: the shared machine's speed drifts
            base = run_one(model, fuser, lp, cp, None, False, a.tokens, rtt)
            base.update(mode="local-only")
            runs.setdefault(("local-only", rtt), []).append(base)
            print(f"  [{rep + 1}/{a.repeat}] local-only       rtt {rtt:>4.0f} ms: {base['wall_s']:.1f}s")
            server = None
            if a.local_cloud:
                mk = lambda rtt=rtt: _SleepCloud(model, rtt)  # noqa: E731
            else:
                from cogenesis.cloud_bridge.client import CloudClient
                from cogenesis.cloud_bridge.server import create_app, serve_in_thread

                server = serve_in_thread(create_app(model, allow_unauthenticated=True, simulate_rtt_ms=rtt))
                _instrument(server)
                _nodelay(server)
                mk = lambda server=server: CloudClient(server.url, detokenize=model.decode)  # noqa: E731
            try:
                for mode, block in (("per-step fusion", False), ("block fusion", True)):
                    row = run_one(model, fuser, lp, cp, mk(), block, a.tokens, rtt, server)
                    row.update(mode=mode)
                    runs.setdefault((mode, rtt), []).append(row)
                    print(f"  [{rep + 1}/{a.repeat}] {mode:16s} rtt {rtt:>4.0f} ms: {row['wall_s']:.1f}s "
                          f"(instant cloud {row['wall_instant_cloud_s']:.1f}s), {row['round_trips']} round trips, "
                          f"acceptance {row['acceptance']}")
            finally:
                if server is not None:
                    server.stop()
            load.append(os.getloadavg()[0])
    rows = []
    for rtt in a.rtt:  # the fastest of the repeats (least disturbed by other load), vs the fastest local-only
        base = min(runs[("local-only", rtt)], key=lambda r: r["wall_s"])
        for mode in ("local-only", "per-step fusion", "block fusion"):
            rs = runs[(mode, rtt)]
            row = dict(min(rs, key=lambda r: r["wall_s"]))
            row["wall_all_s"] = [r["wall_s"] for r in rs]
            row["x_local_wall"] = round(row["wall_s"] / base["wall_s"], 3)
            row["x_local_instant_cloud"] = round(row["wall_instant_cloud_s"] / base["wall_s"], 3)
            rows.append(row)
    out = {
        "bench": "cogen_latency", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "threads": a.threads,
                    "cpus": os.cpu_count(), "loadavg_1min_during": load},
        "repeat": a.repeat,
        "model": model.manifest["model"].get("name"), "rule": fuser.rule, "tokens": a.tokens,
        "cloud": "LocalCloud + sleep" if a.local_cloud else "reference server over HTTP (same bundle, no context)",
        "prompt_tokens": {"local": len(lp), "cloud": len(cp)},
        "goals": {"round_trips_per_token": 0.15, "block_at_50ms_vs_local": 1.3},
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    Path(a.out + ".md").write_text(to_markdown(out))
    print(f"wrote {a.out}.json and .md")
    return 0


def to_markdown(out: dict) -> str:
    lines = [
        f"# Co-generation latency ({out['model']}, {out['tokens']}-token reply, rule {out['rule']})",
        "",
        f"Cloud: {out['cloud']}. Prompt: {out['prompt_tokens']['local']} tokens on the edge (with context), "
        f"{out['prompt_tokens']['cloud']} for the cloud. Greedy, fixed length. Machine: {out['machine']['platform']}, "
        f"{out['machine']['threads']} threads. The cloud computes on the same CPU here; *instant cloud* = wall minus "
        "the cloud's compute (RTT and HTTP overhead kept). TCP_NODELAY is set on the in-thread server's socket "
        "(see `_nodelay`). Each RTT group has its own local-only baseline run "
        f"(the shared machine's speed drifts); wall times include the prompt prefill. Fastest of {out['repeat']} runs "
        f"per row (all runs in the JSON); 1-min load average during the runs: "
        f"{', '.join(f'{x:.1f}' for x in out['machine']['loadavg_1min_during'])} on {out['machine']['cpus']} CPUs.",
        "",
        "| mode | RTT ms | wall s | x local | instant cloud s | x local | round trips | per token | draft acceptance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['mode']} | {r['rtt_ms']:.0f} | {r['wall_s']:.1f} | {r.get('x_local_wall', 1.0)} | "
            f"{r['wall_instant_cloud_s']:.1f} | {r.get('x_local_instant_cloud', 1.0)} | {r['round_trips']} | "
            f"{r['round_trips_per_token']} | {r['acceptance'] if r['acceptance'] is not None else '-'} |")
    g = out["goals"]
    lines += ["", f"Goals: <= {g['round_trips_per_token']} round trips per token; block fusion at 50 ms RTT <= "
              f"{g['block_at_50ms_vs_local']}x local-only wall time.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
