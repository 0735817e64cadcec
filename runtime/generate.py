"""Token generation on a Decoder, as a chain of small functions (gpt-fast's shape): `prefill` ->
`decode_one_token` -> `decode_n_tokens` (the one decode loop) -> `generate_tokens`; plus streaming text."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from .model import Decoder
from .processors import Processor, chain, standard
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


@dataclass
class Step:
    """One decided token: its index in the reply, the id, the processed logits it was chosen from, and whether
    it is a stop token (then it is the last step and not part of the reply)."""

    index: int
    token: int
    logits: np.ndarray
    stop: bool = False


Forward = Callable[[list[int]], np.ndarray]
"""Feed ids to the model's KV cache; return the logits row after the last one."""

Choose = Callable[[int, np.ndarray], int]
"""(step index, processed logits) -> token id."""


def prefill(decoder: Decoder, prompt_ids: Sequence[int]) -> np.ndarray:
    """A fresh cache holding the prompt; the logits after its last token."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    decoder.reset()
    return decoder.forward(list(prompt_ids), keep=1)[-1]


def prefill_reusing(decoder: Decoder, prompt_ids: Sequence[int], forward: Forward) -> np.ndarray:
    """The prompt minus its last token in one batch (kept when the cache already holds it), then the last token
    alone: the logits are the same bits whether or not the prompt was cached (a co-generation session's
    repeated prompt)."""
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("the prompt is empty")
    head = ids[:-1]
    if head and decoder.length >= len(head) and decoder.tokens[: len(head)] == head:
        decoder.truncate(len(head))
    else:
        decoder.reset()
        if head:
            forward(head)
    return forward(ids[-1:])


def decode_one_token(decoder: Decoder, token: int) -> np.ndarray:
    """Feed one token; the logits after it."""
    return decoder.forward([token], keep=1)[-1]


def decode_n_tokens(forward: Forward, logits: np.ndarray, choose: Choose, max_new_tokens: int,
                    stop_ids: Collection[int] = (), processors: Sequence[Processor] = (),
                    stats: GenerationStats | None = None) -> Iterator[Step]:
    """THE decode loop (local generation, per-step fusion and the reference server all run it): process the
    logits, choose a token, yield it, feed it. A stop token is yielded with ``stop=True`` and ends the loop; so
    does `max_new_tokens`. The consumer may stop early by leaving the loop (stop strings, a complete grammar)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stats = stats if stats is not None else GenerationStats()
    reply: list[int] = []
    t0 = time.perf_counter()
    try:
        for i in range(max_new_tokens):
            processed = chain(processors, logits, reply)
            tok = int(choose(i, processed))
            stats.new_tokens += 1
            if tok in stop_ids:
                stats.stop_reason = "stop_token"
                yield Step(i, tok, processed, stop=True)
                return
            reply.append(tok)
            yield Step(i, tok, processed)
            if i + 1 == max_new_tokens:
                stats.stop_reason = "max_tokens"
                return
            logits = forward([tok])
    finally:
        stats.decode_s = time.perf_counter() - t0


def generate_tokens(decoder: Decoder, prompt_ids: list[int], sampler: Sampler, max_new_tokens: int,
                    stop_ids: Collection[int], stats: GenerationStats | None = None,
                    repetition_penalty: float = 1.0) -> Iterator[int]:
    """Yield the reply's token ids: `prefill`, then `decode_n_tokens` with the sampler."""
    stats = stats if stats is not None else GenerationStats()
    processors = standard(repetition_penalty)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stats.prompt_tokens = len(prompt_ids)
    t0 = time.perf_counter()
    logits = prefill(decoder, prompt_ids)
    stats.prefill_s = time.perf_counter() - t0
    for step in decode_n_tokens(lambda ids: decode_one_token(decoder, ids[0]), logits, lambda _, lg: sampler(lg),
                                max_new_tokens, stop_ids, processors, stats):
        if not step.stop:
            yield step.token


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
