"""Training examples in the three regimes: the prompt builders, the chat template, reply-only labels."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cogenesis.data.prompts import (
    DEFAULT_CONTEXT_TOKENS,
    with_context,
    with_sketch,
    without_context,
)
from cogenesis.data.records import TaskRecord
from cogenesis.finetune.sketches import _as_points, derive_outline

REGIMES = ("with_context", "without_context", "with_sketch")
MIN_REPLY_TOKENS = 32  # an example keeps at least this much of its reply when it has to be cut


@dataclass
class Example:
    """One tokenized training example: ids, labels (-100 on the prompt) and where it came from."""

    tid: str
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    reply_tokens: int
    context_tokens: int  # the context budget finally used (approx. tokens)
    reply_cut: bool = False


def check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")


def prompt_messages(record: TaskRecord, regime: str, sketch: Sequence[str] | None = None,
                    context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> list[dict]:
    """The prompt messages of ``record`` in ``regime`` (the same builders the runtime uses)."""
    if regime == "with_context":
        return with_context(record, max_tokens=context_tokens)
    if regime == "without_context":
        return without_context(record)
    if regime == "with_sketch":
        if not sketch:
            raise ValueError(f"{record.tid}: regime with_sketch needs an outline")
        return with_sketch(record, None, list(sketch), max_tokens=context_tokens)
    raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")


def _render(tokenizer, messages: list[dict], reply: str | None) -> str:
    if reply is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)


def _tokenize(tokenizer, record: TaskRecord, regime: str, sketch: Sequence[str] | None,
              budget: int) -> tuple[list[int], int]:
    """Token ids of prompt + reply at context budget ``budget``, and how many of them are the prompt."""
    msgs = prompt_messages(record, regime, sketch, budget)
    prompt = _render(tokenizer, msgs, None)
    full = _render(tokenizer, msgs, record.reference.strip())
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + reply")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), sum(1 for a, _ in enc["offset_mapping"] if a < len(prompt))


def build_example(tokenizer, record: TaskRecord, regime: str, max_len: int,
                  sketch: Sequence[str] | None = None) -> Example:
    """Tokenize one record: the chat template over prompt + reference, labels only on the reply.

    Raises ValueError when even an empty context leaves no room for ``MIN_REPLY_TOKENS`` of the reply.
    """
    if not record.reference.strip():
        raise ValueError("no reference text to learn from")

    def tokenize(budget: int) -> tuple[list[int], int]:
        return _tokenize(tokenizer, record, regime, sketch, budget)

    budget = DEFAULT_CONTEXT_TOKENS
    ids, n_prompt = tokenize(budget)
    # keep up to a third of max_len for the reply, taking the room from the context (bisection on its budget)
    want = min(len(ids) - n_prompt, max(MIN_REPLY_TOKENS, max_len // 3))
    if max_len - n_prompt < want and regime != "without_context":
        lo, hi, best = 0, budget, None
        while hi - lo > 8:
            mid = (lo + hi) // 2
            m_ids, m_prompt = tokenize(mid)
            if max_len - m_prompt >= want:
                lo, best = mid, (mid, m_ids, m_prompt)
            else:
                hi = mid
        budget, ids, n_prompt = best if best is not None else (0, *tokenize(0))
    room, n_reply = max_len - n_prompt, len(ids) - n_prompt
    if room < min(n_reply, MIN_REPLY_TOKENS):
        raise ValueError(f"prompt is {n_prompt} tokens: no room for the reply within max_len={max_len}")
    cut = n_reply > room
    ids = ids[:max_len]
    labels = [-100] * n_prompt + ids[n_prompt:]
    return Example(record.tid, ids, labels, n_prompt, len(ids) - n_prompt, budget, cut)


def build_examples(tokenizer, records: Sequence[TaskRecord], regime: str, max_len: int,
                   sketches: dict[str, str | Sequence[str]] | None = None
                   ) -> tuple[list[Example], dict[str, str], str | None]:
    """Examples for every usable record, the skipped tids with the reason, and where outlines came from."""
    check_regime(regime)
    out, skipped = [], {}
    source = None
    if regime == "with_sketch":
        source = "given" if sketches else "derived from the reference's sentences (no sketches given)"
        if not sketches:
            warnings.warn("with_sketch: no sketches given; deriving outlines from the reference texts' sentences",
                          stacklevel=3)
    for r in records:
        sketch = None
        if regime == "with_sketch":
            if sketches:
                if r.tid not in sketches:
                    skipped[r.tid] = "no sketch for this tid"
                    continue
                sketch = _as_points(sketches[r.tid])
            else:
                sketch = derive_outline(r.reference)
        try:
            out.append(build_example(tokenizer, r, regime, max_len, sketch))
        except ValueError as e:
            skipped[r.tid] = str(e)
    return out, skipped, source
