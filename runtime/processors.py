"""Logits processors: each rewrites the next-token logits given the reply so far, before a token is chosen.

One chain for every decode path (`generate.decode_n_tokens`, the fusion engine's local distribution, the
server's grammar mask), so a rule such as the repetition penalty is written once. Temperature, top-k and top-p
stay in `sampling.Sampler`, which turns the processed logits into a token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Processor = Callable[[np.ndarray, Sequence[int]], np.ndarray]
"""(logits [vocab], reply ids so far) -> logits; must not modify its input in place."""


class RepetitionPenalty:
    """Divide positive (multiply negative) logits of tokens already in the reply by `penalty`, as transformers
    does, but only over the reply: the private context's words must stay usable. 1 = off."""

    def __init__(self, penalty: float):
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, logits: np.ndarray, reply: Sequence[int]) -> np.ndarray:
        if self.penalty == 1.0 or not len(reply):
            return logits
        idx = np.unique(np.asarray(reply))
        v = logits[idx]
        out = logits.copy()
        out[idx] = np.where(v > 0, v / self.penalty, v * self.penalty)
        return out


def chain(processors: Sequence[Processor], logits: np.ndarray, reply: Sequence[int]) -> np.ndarray:
    """Apply `processors` in order."""
    for p in processors:
        logits = p(logits, reply)
    return logits


def standard(repetition_penalty: float = 1.0) -> list[Processor]:
    """The processors generation options ask for (an empty chain when every option is off)."""
    rp = RepetitionPenalty(repetition_penalty)  # validates even when off
    return [rp] if rp.penalty != 1.0 else []
