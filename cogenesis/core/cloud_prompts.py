"""What the cloud is asked, and how its outline is read: the task alone (`without_context`), the sketch request
(`sketch_request`) and the outline parser (`parse_outline`).

The ground floor of the privacy boundary: nothing here takes a private context, so `cloud_bridge` (below the
data layer) can build cloud requests without importing records or the prompts that render a profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Protocol

Message = dict[str, str]


class HasInstruction(Protocol):
    """A task record (``cogenesis.data.records.TaskRecord``) or anything with its ``instruction``."""

    instruction: str


def instruction_of(record_or_instruction: HasInstruction | str) -> str:
    """The instruction text of a record, or the string itself."""
    if isinstance(record_or_instruction, str):
        return record_or_instruction
    return str(record_or_instruction.instruction)


GENERIC_SYSTEM = "You are a helpful writing assistant. Reply with the requested text only."
SKETCH_SYSTEM = (
    "You are a writing planner. You see a task but nothing about the person asking. "
    "Reply with an outline only: a numbered list, one short point per line."
)



def without_context(record_or_instruction: HasInstruction | str) -> list[Message]:
    """Messages with the task alone: what may leave the device. Only the instruction text is used."""
    instruction = instruction_of(record_or_instruction)
    return [{"role": "system", "content": GENERIC_SYSTEM}, {"role": "user", "content": instruction.strip()}]


def sketch_request(
    record_or_instruction: HasInstruction | str, min_points: int = 8, max_points: int = 15
) -> list[Message]:
    """Messages asking a cloud model for a context-free outline of ``min_points``-``max_points`` short points."""
    instruction = instruction_of(record_or_instruction)
    user = (
        f"Task: {instruction.strip()}\n\n"
        f"Write an outline for this text in {min_points} to {max_points} numbered points, "
        "each under 15 words, in the order the text should follow. "
        "Do not invent names, places or personal facts; leave slots like [detail] where the writer "
        "should add their own. No introduction, no closing remark."
    )
    return [{"role": "system", "content": SKETCH_SYSTEM}, {"role": "user", "content": user}]


_MARKER = re.compile(
    r"""^\s*(?:
        (?:step|point)\s*\d{1,2}\s*[:.)-]      # Step 1:  Point 2.
      | \(?\d{1,2}[.)\]:]                      # 1.  1)  (1)  1:
      | \(?(?:[a-zA-Z]|[ivxIVX]{1,4})[.)](?=\s)  # a.  b)  iv.
      | [-*\u2022\u2023\u25e6\u2013\u2014+>]   # - * bullets dashes
    )\s*""",
    re.X | re.I,
)
_INLINE_NUM = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
_PREAMBLE = re.compile(r"^(here\b|sure\b|certainly\b|of course\b|outline\b|below\b).*[:.!]$", re.I)


def _clean_point(s: str) -> str:
    s = re.sub(r"\*\*|__|`", "", s).strip()
    s = s.strip(" \t\"'")
    return " ".join(s.split())


def parse_outline(text: str | Sequence[str]) -> list[str]:
    """Parse a model's outline into points; tolerant of numbering, bullets, bold, fences, a JSON list.

    Marked lines (``1.``, ``2)``, ``(3)``, ``-``, ``*``, ``Step 4:`` ...) become points; indented unmarked
    lines right after a point are joined to it; other unmarked lines (headings, ``Here is ...:``, closing
    remarks) and code fences are dropped. Without any markers each non-empty line is a point; a single line ``1. a 2. b`` is split.
    """
    if not isinstance(text, str):
        return [_clean_point(str(p)) for p in text if _clean_point(str(p))]
    raw = text.strip()
    if raw.startswith("```"):
        raw = re.sub(r"^```[\w-]*\s*|\s*```$", "", raw).strip()
    if raw.startswith("[") or raw.startswith("{"):
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), None)
            if isinstance(data, list):
                return [p for p in (_clean_point(str(x)) for x in data) if p]
        except json.JSONDecodeError:
            pass
    lines = [
        re.sub(r"^(\s*)(?:\*\*|__)", r"\1", ln.rstrip())
        for ln in raw.splitlines()
        if ln.strip() and not ln.strip().startswith("```")
    ]
    if len(lines) == 1 and len(_INLINE_NUM.findall(lines[0])) >= 2:
        lines = [p for p in _INLINE_NUM.split(lines[0]) if p.strip()]
        return [p for p in (_clean_point(x) for x in lines) if p]
    marked = [bool(_MARKER.match(ln)) for ln in lines]
    points: list[str] = []
    if any(marked):
        prev_marked = False
        for ln, m in zip(lines, marked, strict=True):
            s = ln.strip()
            if m:
                p = _clean_point(_MARKER.sub("", ln, count=1))
                if p:
                    points.append(p)
                prev_marked = bool(p)
            elif prev_marked and points and ln[:1].isspace():
                points[-1] = f"{points[-1]} {_clean_point(s)}".strip()
            else:  # heading, preamble, closing remark
                prev_marked = False
        return points
    only_headings = all(ln.strip().startswith("#") for ln in lines)
    for ln in lines:
        s = ln.strip()
        if s.startswith("#"):
            if not only_headings:
                continue
            s = s.lstrip("#").strip()
        if not s or _PREAMBLE.match(s) or s.endswith(":"):
            continue
        points.append(_clean_point(s))
    return [p for p in points if p]
