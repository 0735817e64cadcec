"""Outlines for the ``with_sketch`` regime: derived from the reference text, or asked of a cloud model."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from cogenesis.data.prompts import parse_outline
from cogenesis.data.records import TaskRecord

_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def derive_outline(reference: str, max_points: int = 12, words: int = 10) -> list[str]:
    """A simple outline of a text: the first ``words`` words of each sentence (at most ``max_points``).

    Stands in for the cloud's sketch when none is given; it follows the reference's own structure, so a model
    trained on it learns to expand an outline, not to plan one.
    """
    sents = [s.strip() for para in reference.split("\n") for s in _SENT.split(para) if s.strip()]
    sents = [s for s in sents if len(s.split()) >= 3] or sents
    if len(sents) > max_points:  # keep the outline's spread over the whole text
        idx = [round(i * (len(sents) - 1) / (max_points - 1)) for i in range(max_points)]
        sents = [sents[i] for i in sorted(set(idx))]
    out = []
    for s in sents:
        ws = s.split()
        out.append(" ".join(ws[:words]).rstrip(",;:") + (" ..." if len(ws) > words else ""))
    return out


def _as_points(sketch: str | Sequence[str]) -> list[str]:
    return parse_outline(sketch) if isinstance(sketch, str) else [str(p) for p in sketch if str(p).strip()]


def cloud_sketches(records: Sequence[TaskRecord], client, out: str | Path | None = None,
                   **sketch_kw) -> dict[str, list[str]]:
    """Outlines for ``with_sketch`` training from a cloud model, as CoGenesis gets them at run time: each
    instruction is sanitized on-device first and only that goes out (through ``client``'s guard).

    ``client``: a `cogenesis.cloud_bridge.client.CloudClient`. Records whose request fails are left out.
    ``out``: also write the mapping as JSON (for ``--sketches``).
    """
    from cogenesis.cloud_bridge.guard import sanitize_instruction

    result: dict[str, list[str]] = {}
    for r in records:
        text = sanitize_instruction(r.instruction, r.private_context()).text
        try:
            result[r.tid] = client.sketch(text, **sketch_kw)
        except Exception as e:  # noqa: BLE001 - one failed outline must not lose the others
            warnings.warn(f"{r.tid}: no sketch ({type(e).__name__}: {e})", stacklevel=2)
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result
