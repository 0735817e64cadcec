"""What a logit-fusion run returns: the reply's tokens with one `StepInfo` each, and the run's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StepInfo:
    step: int
    token: int
    fused: bool  # the cloud's top-k took part in choosing this token
    weight: float | None  # the local model's weight (None: max rule, or local-only)
    drafted: bool | None = None  # block mode: this position had a local draft
    accepted: bool | None = None  # block mode: the draft was kept


@dataclass
class CogenResult:
    text: str
    tokens: list[int]
    steps: list[StepInfo]
    round_trips: int
    mode: str
    rule: str
    stop_reason: str = ""
    fallback: dict | None = None  # {"step", "reason": "cloud_error" | "guard" | "privacy_violation", "error"}
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    draft_k_history: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    cloud_s: float = 0.0  # time inside cloud requests (network + cloud compute)
    local_s: float = 0.0  # time in local forward passes
    prefill_s: float = 0.0  # of which the prompt
    held_steps: int = 0  # steps (block mode: rounds) the prefix policy kept local while a term was spelled out

    @property
    def round_trips_per_token(self) -> float:
        return self.round_trips / max(len(self.tokens), 1)

    @property
    def fused_steps(self) -> int:
        return sum(s.fused for s in self.steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["round_trips_per_token"] = self.round_trips_per_token
        return d
