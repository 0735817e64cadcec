"""Choosing the next token from logits: greedy, temperature, top-k, top-p (numpy, seeded)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


@dataclass
class Sampler:
    config: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution actually sampled from (after temperature, top-k, top-p)."""
        c = self.config
        x = logits.astype(np.float64) / max(c.temperature, 1e-8)
        if c.top_k and c.top_k < x.shape[-1]:
            kth = np.partition(x, -c.top_k)[-c.top_k]
            x = np.where(x >= kth, x, -np.inf)
        x = x - x.max()
        p = np.exp(x)
        p /= p.sum()
        if c.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            cut = int(np.searchsorted(cum, c.top_p)) + 1
            mask = np.zeros_like(p, dtype=bool)
            mask[order[:cut]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return p

    def __call__(self, logits: np.ndarray) -> int:
        if self.config.temperature == 0:
            return int(np.argmax(logits))
        p = self.probs(logits)
        return int(self.rng.choice(p.shape[-1], p=p))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
