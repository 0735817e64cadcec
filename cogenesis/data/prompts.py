"""Prompt builders (chat messages) for the on-device model and the cloud model, and an outline parser.

* :func:`with_context`: profile + past writings + task, for the small on-device model (bounded size).
* :func:`without_context`: the task alone; what the cloud may see. Nothing from the context goes in.
* :func:`sketch_request`: asks the cloud model for a context-free outline of the answer.
* :func:`with_sketch`: context + task + the cloud's outline, for the on-device model to write the final text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from cogenesis.context import PrivateContext
from cogenesis.data.records import RecordContext, TaskRecord

Message = dict[str, str]

CHARS_PER_TOKEN = 4
"""Rough English chars/token, used to turn token budgets into char budgets without a tokenizer."""

DEFAULT_CONTEXT_TOKENS = 1300
"""Budget for the rendered private context; with the system line and the task the prompt stays ~1.5k tokens."""

PERSONAL_SYSTEM = (
    "You are a personal writing assistant running on the user's own device. "
    "Write in the user's voice, matching the style of their past writings, "
    "and use their personal details where they make the text better. "
    "Reply with the requested text only."
)
GENERIC_SYSTEM = "You are a helpful writing assistant. Reply with the requested text only."
SKETCH_SYSTEM = (
    "You are a writing planner. You see a task but nothing about the person asking. "
    "Reply with an outline only: a numbered list, one short point per line."
)


def approx_tokens(text: str) -> int:
    """Rough token count (chars / 4) for budgeting prompts."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _clip(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` chars at a word boundary, marking the cut."""
    text = re.sub(r"\n\s*\n\s*", "\n\n", re.sub(r"[ \t\r\f\v]+", " ", text)).strip()
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 4)]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:.") + " ..."


def _as_context(context: PrivateContext | RecordContext | dict | None) -> PrivateContext:
    if context is None:
        return PrivateContext()
    if isinstance(context, PrivateContext):
        return context
    if isinstance(context, RecordContext):
        return context.to_private_context()
    return PrivateContext.from_dict(context)


def _split(
    record_or_instruction: TaskRecord | str, context: PrivateContext | RecordContext | dict | None
) -> tuple[str, PrivateContext]:
    if isinstance(record_or_instruction, TaskRecord):
        ctx = context if context is not None else record_or_instruction.context
        return record_or_instruction.instruction, _as_context(ctx)
    return str(record_or_instruction), _as_context(context)


def render_context(
    context: PrivateContext | RecordContext | dict | None,
    max_tokens: int = DEFAULT_CONTEXT_TOKENS,
    max_history: int = 3,
    max_chars_per_sample: int = 1200,
    max_chars_per_field: int = 1000,
) -> str:
    """Render the private context as a bounded text block (profile first, then as much history as fits).

    History samples are taken in stored order (at most ``max_history``), each clipped at a word boundary to
    ``max_chars_per_sample``; a sample that no longer fits the budget (``max_tokens`` * 4 chars) is clipped
    to the room left, or dropped when under 200 chars would remain.
    """
    ctx = _as_context(context)
    budget = max_tokens * CHARS_PER_TOKEN
    parts: list[str] = []
    if ctx.profile:
        lines = [
            f"{k.replace('_', ' ')}: {_clip(v, max_chars_per_field)}"
            for k, v in ctx.profile.items()
            if v.strip()
        ]
        parts.append("About the user:\n" + "\n".join(lines))
    for t in ctx.private_texts:
        if t.strip():
            parts.append("Private note:\n" + _clip(t, max_chars_per_field))
    block = "\n\n".join(parts)
    if len(block) > budget:
        return _clip(block, budget)
    samples: list[str] = []
    used = len(block) + len("\n\nPast writings by the user:")
    for s in ctx.history[:max_history]:
        room = budget - used - len(s.title) - 12
        if room < 200:
            break
        entry = f"[{_clip(s.title, 200)}]\n{_clip(s.text, min(max_chars_per_sample, room))}"
        samples.append(entry)
        used += len(entry) + 2
    if samples:
        block += ("\n\n" if block else "") + "Past writings by the user:\n" + "\n\n".join(samples)
    return block


def with_context(
    record_or_instruction: TaskRecord | str,
    context: PrivateContext | RecordContext | dict | None = None,
    max_tokens: int = DEFAULT_CONTEXT_TOKENS,
    max_history: int = 3,
    max_chars_per_sample: int = 1200,
) -> list[Message]:
    """Messages for the on-device model: the user's profile and past writings, then the task.

    Pass a :class:`TaskRecord` (its own context is used unless ``context`` is given) or an instruction
    string plus a context. The context block is bounded by ``max_tokens`` (approx.).
    """
    instruction, ctx = _split(record_or_instruction, context)
    block = render_context(ctx, max_tokens, max_history, max_chars_per_sample)
    user = (f"{block}\n\n" if block else "") + f"Task: {instruction.strip()}"
    return [{"role": "system", "content": PERSONAL_SYSTEM}, {"role": "user", "content": user}]


def without_context(record_or_instruction: TaskRecord | str) -> list[Message]:
    """Messages with the task alone: what may leave the device. Only the instruction text is used."""
    instruction = (
        record_or_instruction.instruction
        if isinstance(record_or_instruction, TaskRecord)
        else str(record_or_instruction)
    )
    return [{"role": "system", "content": GENERIC_SYSTEM}, {"role": "user", "content": instruction.strip()}]


def sketch_request(
    record_or_instruction: TaskRecord | str, min_points: int = 8, max_points: int = 15
) -> list[Message]:
    """Messages asking a cloud model for a context-free outline of ``min_points``-``max_points`` short points."""
    instruction = (
        record_or_instruction.instruction
        if isinstance(record_or_instruction, TaskRecord)
        else str(record_or_instruction)
    )
    user = (
        f"Task: {instruction.strip()}\n\n"
        f"Write an outline for this text in {min_points} to {max_points} numbered points, "
        "each under 15 words, in the order the text should follow. "
        "Do not invent names, places or personal facts; leave slots like [detail] where the writer "
        "should add their own. No introduction, no closing remark."
    )
    return [{"role": "system", "content": SKETCH_SYSTEM}, {"role": "user", "content": user}]


def with_sketch(
    record_or_instruction: TaskRecord | str,
    context: PrivateContext | RecordContext | dict | None,
    sketch: str | Sequence[str],
    max_tokens: int = DEFAULT_CONTEXT_TOKENS,
    max_history: int = 3,
    max_chars_per_sample: int = 1200,
) -> list[Message]:
    """Messages for the on-device model: context + task + the cloud's outline to follow and personalize."""
    instruction, ctx = _split(record_or_instruction, context)
    points = (
        parse_outline(sketch)
        if isinstance(sketch, str)
        else [str(p).strip() for p in sketch if str(p).strip()]
    )
    outline = "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1)) if points else str(sketch).strip()
    block = render_context(ctx, max_tokens, max_history, max_chars_per_sample)
    user = (
        (f"{block}\n\n" if block else "")
        + f"Task: {instruction.strip()}\n\n"
        + "Outline from a general assistant who does not know the user (follow its structure, "
        + "replace generic parts and [slots] with the user's own details):\n"
        + outline
    )
    return [{"role": "system", "content": PERSONAL_SYSTEM}, {"role": "user", "content": user}]


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
