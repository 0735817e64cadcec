"""How long the egress guard takes to scan an outbound body (issue 14: a 1 MB body in under 0.2 s).

Bodies (a chat request whose one message is the text): prose of OTHER users (the usual case: nothing private
in it), the user's OWN history repeated (thousands of findings), and digit groups ("12 34 56 ..."), which made
the old per-pattern overlap checks quadratic. Sizes 176 KB and 1 MB; median of 5 runs of `scan_body` on the
raw bytes, guard built once per session beforehand (its build time is reported too). Writes
bench/results/guard_scan.{json,md}. Usage: python bench/guard_scan.py [--data context_aware_dev.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from cogenesis.cloud_bridge.guard import EgressGuard

from cogenesis.data.records import load_context_aware, load_sample

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "cogenesis" / "context_aware_dev.json"
SIZES = (176_000, 1_000_000)


def _fill(text: str, size: int) -> str:
    return (text * (size // max(len(text), 1) + 1))[:size]


def bodies(records) -> tuple[object, dict[str, str]]:
    me = records[0]
    others = "\n".join(t for r in records if r.user_id != me.user_id
                       for t in [*(h.text for h in r.private_context().history), r.reference])
    own = "\n".join(h.text for h in me.private_context().history)
    return me.private_context(), {"other users' prose": others, "the user's own history": own,
                                  "digit groups": "12 34 56 78 "}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEV) if DEV.is_file() else None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    records = load_context_aware(a.data) if a.data else load_sample()
    ctx, texts = bodies(records)
    t0 = time.perf_counter()
    guard = EgressGuard(ctx, mode="audit")
    build_s = time.perf_counter() - t0
    rows = []
    for name, text in texts.items():
        for size in SIZES:
            raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": _fill(text, size)}]},
                             ensure_ascii=False).encode()
            times, n = [], 0
            for _ in range(a.runs):
                t = time.perf_counter()
                n = len(guard.scan_body(raw))
                times.append(time.perf_counter() - t)
            rows.append({"body": name, "bytes": len(raw), "median_s": statistics.median(times),
                         "max_s": max(times), "findings": n})
            print(f"{name:24s} {len(raw) / 1e6:5.2f} MB  {statistics.median(times):.3f} s  {n} findings")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "data": Path(a.data).name if a.data else "shipped sample", "guard_build_s": build_s, "runs": a.runs}
    _atomic(out / "guard_scan.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# Egress guard scan time", "", f"`python bench/guard_scan.py` ({meta['data']}, median of {a.runs} runs, "
          f"guard built in {build_s:.2f} s, {_cpu()}).", "",
          "| body | size | median | max | findings |", "|---|---|---|---|---|"]
    md += [f"| {r['body']} | {r['bytes'] / 1e6:.2f} MB | {r['median_s']:.3f} s | {r['max_s']:.3f} s | {r['findings']} |"
           for r in rows]
    _atomic(out / "guard_scan.md", "\n".join(md) + "\n")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.machine()


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
