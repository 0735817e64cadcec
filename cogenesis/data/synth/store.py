"""Checkpoint store: the append-only JSONL of finished units, and the failure log."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonlStore:
    """Append-only JSONL of finished units keyed by ``row['key']``, deduplicated by ``row['dedup']``.

    Each row is appended with one ``os.write`` of a complete line (O_APPEND) and fsynced; on open a torn
    last line (crash mid-write) is cut off and unparsable lines are skipped with a warning.
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}
        self.dedup: dict[str, str] = {}  # dedup key -> unit key (stored or claimed)
        self.bad_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair_and_load()
        else:
            self.path.touch()

    def _repair_and_load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning(
                "%s: dropping a torn last line (%d bytes) from an interrupted run",
                self.path,
                len(data) - keep,
            )
            with self.path.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.bad_lines += 1
                log.warning("%s: line %d is not a checkpoint row; ignored", self.path, n)
                continue
            if key not in self.rows:
                self.rows[key] = row
                if row.get("dedup"):
                    self.dedup.setdefault(row["dedup"], key)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def claim(self, dedup: str, key: str) -> bool:
        """Reserve ``dedup`` for unit ``key`` (atomic); False when another unit already has it."""
        with self._lock:
            owner = self.dedup.setdefault(dedup, key)
            return owner == key

    def values(self) -> list[dict[str, Any]]:
        """A snapshot of the stored rows."""
        with self._lock:
            return list(self.rows.values())

    def add(self, row: dict[str, Any]) -> bool:
        """Append ``row`` unless its key is stored or its dedup key belongs to another unit."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        key, dedup = row["key"], row.get("dedup")
        with self._lock:
            if key in self.rows or (dedup and self.dedup.setdefault(dedup, key) != key):
                return False
            _append(self.path, line, self.fsync)
            self.rows[key] = row
            return True


def _append(path: Path, line: bytes, fsync: bool) -> None:
    """Append ``line`` to ``path`` with one O_APPEND write loop (fsynced when ``fsync``)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class FailureLog:
    """``failures.jsonl``: one row per unit that failed in a run (append-only, never dropped)."""

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, step: str, key: str, kind: str, error: str, attempts: int, raw: str = "") -> None:
        """Append one failure row."""
        row = {
            "step": step,
            "key": key,
            "kind": kind,
            "error": error[:1000],
            "attempts": attempts,
            "raw": raw[:2000],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with self._lock:
            _append(self.path, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"), self.fsync)

    def rows(self) -> list[dict[str, Any]]:
        """The failure rows on disk (unparsable lines skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out
