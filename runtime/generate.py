"""Token generation on a Decoder: prefill, decode loop, stop rules, streaming text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from .model import Decoder
from .sampling import Sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""

    @property
    def decode_tok_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0


def generate_tokens(
    decoder: Decoder,
    prompt_ids: list[int],
    sampler: Sampler,
    max_new_tokens: int,
    stop_ids: set[int],
    stats: GenerationStats | None = None,
    logits_hook: Callable[[int, object], object] | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    """Yield new token ids. `logits_hook(step, logits) -> logits` may rewrite the logits (fusion uses it).

    repetition_penalty > 1 divides positive (multiplies negative) logits of tokens already generated, as
    transformers does, but only over the reply: the private context's words must stay usable.
    """
    stats = stats if stats is not None else GenerationStats()
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
    seen: list[int] = []
    decoder.reset()
    stats.prompt_tokens = len(prompt_ids)
    t0 = time.perf_counter()
    logits = decoder.forward(prompt_ids, keep=1)[-1]
    stats.prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for step in range(max_new_tokens):
        if repetition_penalty != 1.0 and seen:
            idx = np.unique(np.asarray(seen))
            v = logits[idx]
            logits = logits.copy()
            logits[idx] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
        if logits_hook is not None:
            logits = logits_hook(step, logits)
        tok = sampler(logits)
        seen.append(tok)
        stats.new_tokens += 1
        if tok in stop_ids:
            stats.stop_reason = "stop_token"
            break
        yield tok
        if step + 1 == max_new_tokens:
            stats.stop_reason = "max_tokens"
            break
        logits = decoder.forward([tok], keep=1)[-1]
    stats.decode_s = time.perf_counter() - t1


class StreamDecoder:
    """Incremental detokenization: emits text only once it is stable (no half UTF-8 characters).

    Re-decodes a short window instead of the whole sequence each step (the approach text-generation-inference
    uses); tokenizers has no public incremental decoder for byte-level BPE.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)
