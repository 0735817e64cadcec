"""The settings of one fine-tuning run (checked once, then passed to each step) and its result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cogenesis.finetune.examples import check_regime

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}


@dataclass
class TrainConfig:
    """What `finetune` was asked for; ``lr`` None becomes the method's default peak learning rate."""

    regime: str = "with_context"
    method: str = "lora"
    steps: int = 200
    lr: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    max_len: int = 1024
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lora_targets: Sequence[str] | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        check_regime(self.regime)
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]

    @property
    def alpha(self) -> int:
        """The LoRA alpha used: the one given, else 2 x r."""
        return self.lora_alpha or 2 * self.lora_r

    @property
    def warm(self) -> int:
        """Warmup steps: the ones given, else 10 % of the steps (none under 10 steps)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, self.steps // 10) if self.steps >= 10 else 0


@dataclass
class FinetuneResult:
    out: Path
    regime: str
    method: str
    steps: int
    losses: list[float]
    examples: int
    skipped: dict[str, str] = field(default_factory=dict)  # tid -> why
    sketch_source: str | None = None
    seconds: float = 0.0
    eval_losses: list[dict] = field(default_factory=list)  # {"step", "loss", "tokens"} on held-out records
    device: str = "cpu"

    @property
    def first_loss(self) -> float:
        return _mean(self.losses[: max(1, len(self.losses) // 4)])

    @property
    def last_loss(self) -> float:
        return _mean(self.losses[-max(1, len(self.losses) // 4) :])


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
