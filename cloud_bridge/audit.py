"""On-device audit log of outbound requests: one JSON object per line (JSONL).

Each record is written by the egress guard (`cogenesis.cloud_bridge.guard`) with:
``ts`` (ISO-8601 UTC), ``session``, ``endpoint``, ``mode``, ``bytes`` (body size), ``sha256`` (of the exact
body bytes), ``inspected``, ``findings`` (list of {kind, source, match, path}) and ``blocked``.
The log stays on the device; it may contain the matched private strings so the user can see what nearly left.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

_LOCK = threading.Lock()


class AuditFormatError(ValueError):
    """A line of an audit log is not a JSON object."""


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one line: a single write on an O_APPEND file, then flush + fsync."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(p, "ab", buffering=0) as f:  # unbuffered: the whole line goes in one write()
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_audit(path: str | Path) -> list[dict]:
    """All records of an audit log; blank lines are skipped, a malformed line raises naming its number."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"audit log not found: {p}")
    out: list[dict] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise AuditFormatError(
                    f"{p}:{lineno}: malformed audit record ({e.msg} at column {e.colno}): {line.strip()[:80]!r}"
                ) from e
            if not isinstance(rec, dict):
                raise AuditFormatError(f"{p}:{lineno}: audit record must be a JSON object, got {type(rec).__name__}")
            out.append(rec)
    return out


def summarize_audit(path: str | Path) -> dict:
    """Totals over a log: requests, bytes, blocked, per endpoint, per mode, findings per kind and per source."""
    recs = read_audit(path)
    by_endpoint: dict[str, dict[str, int]] = {}
    by_mode: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    total_bytes = blocked = flagged = 0
    for r in recs:
        size = int(r.get("bytes", 0) or 0)
        is_blocked = bool(r.get("blocked", False))
        findings = r.get("findings") or []
        ep = by_endpoint.setdefault(str(r.get("endpoint", "?")), {"requests": 0, "bytes": 0, "blocked": 0, "flagged": 0})
        ep["requests"] += 1
        ep["bytes"] += size
        ep["blocked"] += is_blocked
        ep["flagged"] += bool(findings)
        by_mode[str(r.get("mode", "?"))] += 1
        total_bytes += size
        blocked += is_blocked
        flagged += bool(findings)
        for f in findings:
            kinds[str(f.get("kind", "?"))] += 1
            sources[str(f.get("source", "?"))] += 1
    stamps = sorted(str(r["ts"]) for r in recs if r.get("ts"))
    return {
        "requests": len(recs),
        "bytes": total_bytes,
        "blocked": blocked,
        "flagged": flagged,
        "sessions": len({r.get("session") for r in recs if r.get("session")}),
        "first": stamps[0] if stamps else None,
        "last": stamps[-1] if stamps else None,
        "by_endpoint": by_endpoint,
        "by_mode": dict(by_mode),
        "findings": dict(kinds),
        "findings_by_source": dict(sources),
    }


def format_summary(summary: dict) -> str:
    """Plain-text report of `summarize_audit` output (fixed-width tables, no colour)."""
    lines = [
        f"requests: {summary['requests']}  bytes: {summary['bytes']}  flagged: {summary['flagged']}  "
        f"blocked: {summary['blocked']}  sessions: {summary['sessions']}",
    ]
    if summary.get("first"):
        lines.append(f"from {summary['first']} to {summary['last']}")
    eps = summary.get("by_endpoint", {})
    if eps:
        w = max(8, *(len(e) for e in eps))
        lines += ["", f"{'endpoint':<{w}}  {'requests':>8}  {'bytes':>10}  {'flagged':>7}  {'blocked':>7}"]
        for e, s in sorted(eps.items(), key=lambda kv: -kv[1]["requests"]):
            lines.append(f"{e:<{w}}  {s['requests']:>8}  {s['bytes']:>10}  {s['flagged']:>7}  {s['blocked']:>7}")
    if summary.get("by_mode"):
        lines += ["", "by mode: " + ", ".join(f"{m}={n}" for m, n in sorted(summary["by_mode"].items()))]
    for title, key in (("findings by kind", "findings"), ("findings by source", "findings_by_source")):
        counts = summary.get(key) or {}
        if counts:
            lines += ["", f"{title}:"]
            lines += [f"  {k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if not summary.get("findings"):
        lines += ["", "no findings"]
    return "\n".join(lines)


class JsonlTail:
    """The records appended to a JSONL file (an audit log, a server capture) since the last call; a line still
    being written is read next time."""

    def __init__(self, path: str | Path):
        self.path, self.pos = Path(path), 0

    def new(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.pos += end
        return [json.loads(line) for line in chunk[:end].decode("utf-8").splitlines() if line.strip()]
