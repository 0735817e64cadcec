"""Prompt builders (chat messages) for the on-device model and the cloud model, and an outline parser.

* :func:`with_context`: profile + past writings + task, for the small on-device model (bounded size).
* :func:`without_context`: the task alone; what the cloud may see. Nothing from the context goes in.
* :func:`sketch_request`: asks the cloud model for a context-free outline of the answer.
* :func:`with_sketch`: context + task + the cloud's outline, for the on-device model to write the final text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cogenesis.core.cloud_prompts import (  # noqa: F401  (re-exported: part of this module's API)
    GENERIC_SYSTEM,
    SKETCH_SYSTEM,
    Message,
    parse_outline,
    sketch_request,
    without_context,
)
from cogenesis.core.context import PrivateContext
from cogenesis.data.records import RecordContext, TaskRecord

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


