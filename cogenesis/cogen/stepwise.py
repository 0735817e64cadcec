"""One logit-fusion run: the state its steps share (`FusionRun`: the reply, the cloud's health, timings) and
the per-step mode, which is the runtime's one decode loop (`decode_n_tokens`) with a fusing `choose`.

Block mode (`block.py`) drives the same `FusionRun` in rounds of drafts. The maths of both is in
`cogenesis.cogen.logits`' docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cogenesis.cloud_bridge.guard import PrivacyViolation
from cogenesis.cogen.clouds import CloudLogprobs
from cogenesis.cogen.fusion import Fuser, Schedule
from cogenesis.cogen.prefix_policy import PrefixView
from cogenesis.cogen.results import CogenResult, StepInfo
from cogenesis.runtime.generate import decode_n_tokens, prefill_reusing
from cogenesis.runtime.processors import RepetitionPenalty
from cogenesis.runtime.sampling import Sampler, log_softmax


class LocalTimer:
    """The local decoder's forward with timing: total seconds, and an average of one-token steps (block mode
    sizes its rounds with it)."""

    def __init__(self, decoder):
        self.dec = decoder
        self.s = 0.0
        self.ema: float | None = None

    def forward(self, ids: list[int]) -> np.ndarray:
        t0 = time.perf_counter()
        row = self.dec.forward(ids, keep=1)[-1]
        dt = time.perf_counter() - t0
        self.s += dt
        if len(ids) == 1:
            self.ema = dt if self.ema is None else 0.8 * self.ema + 0.2 * dt
        return row


@dataclass
class FusionRun:
    """What the steps of one `cogenerate` call share (see its docstring for the options)."""

    decoder: object
    cloud: CloudLogprobs | None
    cloud_prompt: list[int]
    fuser: Fuser
    sampler: Sampler
    schedule: Schedule
    res: CogenResult
    max_new_tokens: int
    stops: set[int]
    k: int
    penalty: RepetitionPenalty
    mask: set[int] = field(default_factory=set)
    guard_scan: Callable[[list[int]], bool] | None = None
    cloud_view: Callable[[list[int], list[int]], PrefixView] | None = None
    on_token: Callable[[int], None] | None = None
    cloud_deadline_s: float | None = None
    alive: bool = True
    cloud_ema: float | None = None
    t_decode: float = 0.0

    def __post_init__(self) -> None:
        self.loc = LocalTimer(self.decoder)
        self.greedy = self.sampler.config.temperature == 0
        self.alive = self.cloud is not None

    @property
    def gen(self) -> list[int]:
        return self.res.tokens

    def start(self, local_prompt: Sequence[int]) -> np.ndarray:
        """Read the local prompt; the cloud deadline counts from here (the prefill is the device's own)."""
        logits = prefill_reusing(self.decoder, local_prompt, self.loc.forward)
        self.res.prefill_s = self.loc.s
        self.t_decode = time.perf_counter()
        return logits

    # -- the cloud ---------------------------------------------------------------------------------------------
    def ask(self, ids_out: list[int]) -> list[dict[int, float]] | None:
        """One cloud request for the positions after the reply (+ drafts `ids_out`); None: decide locally (held
        this time, or fusion is over: `res.fallback` says why)."""
        prefix = self._cloud_prefix(ids_out)
        if prefix is None:
            return None
        t0 = time.perf_counter()
        try:
            out = self.cloud.next_token_logprobs(self.cloud_prompt + prefix, ids_out, self.k)
            if len(out) < len(ids_out) + 1:
                raise ValueError(f"cloud returned {len(out)} positions, expected {len(ids_out) + 1}")
        except Exception as e:  # any failure (network, server fault, guard refusal): finish locally
            reason = "privacy_violation" if isinstance(e, PrivacyViolation) else "cloud_error"
            return self._end_fusion(reason, f"{type(e).__name__}: {e}")
        finally:
            dt = time.perf_counter() - t0
            self.res.cloud_s += dt
        self.res.round_trips += 1
        self.cloud_ema = dt if self.cloud_ema is None else 0.7 * self.cloud_ema + 0.3 * dt
        if self.mask:
            out = [{t: v for t, v in pos.items() if t not in self.mask} if pos else pos for pos in out]
        return out

    def _cloud_prefix(self, ids_out: list[int]) -> list[int] | None:
        """What the cloud may see of the reply, or None (deadline passed, guard finding, held by the policy)."""
        if self.cloud_deadline_s is not None and time.perf_counter() - self.t_decode > self.cloud_deadline_s:
            return self._end_fusion("deadline", f"the reply's cloud deadline ({self.cloud_deadline_s} s) passed")
        if self.guard_scan is not None and self.guard_scan(self.gen + ids_out):
            return self._end_fusion("guard", "generated text matched the private context")
        if self.cloud_view is None:
            return self.gen
        view = self.cloud_view(list(self.gen), list(ids_out))
        if view.action == "hold":
            self.res.held_steps += 1
            return None  # decided locally this time; fusion goes on
        if view.action == "stop":
            return self._end_fusion("guard", view.reason)
        return view.prefix

    def _end_fusion(self, reason: str, error: str) -> None:
        self.alive = False
        self.res.fallback = {"step": len(self.gen), "reason": reason, "error": error}
        return None

    # -- the device --------------------------------------------------------------------------------------------
    def pick(self, lp: np.ndarray) -> tuple[int, np.ndarray | None]:
        """A token from log-probs `lp` (greedy, or sampled: then also the distribution it was drawn from)."""
        if self.greedy:
            return int(np.argmax(lp)), None
        p = self.sampler.probs(lp)
        return int(self.sampler.rng.choice(p.shape[-1], p=p)), p

    def local_lp(self, row: np.ndarray, seen: list[int]) -> np.ndarray:
        """The device's log-probs after `seen`, repetition penalty applied."""
        return log_softmax(self.penalty(row, seen))

    def fusing(self, step: int) -> bool:
        return self.alive and self.schedule.fuse(step)

    def emit(self, tok: int, info: StepInfo) -> bool:
        """Append a chosen token; False when it is a stop token or the budget is spent."""
        if tok in self.stops:
            self.res.stop_reason = "stop_token"
            return False
        self.gen.append(tok)
        self.res.steps.append(info)
        if self.on_token is not None:
            self.on_token(tok)
        if len(self.gen) >= self.max_new_tokens:
            self.res.stop_reason = "max_tokens"
            return False
        return True


def run_stepwise(run: FusionRun, logits: np.ndarray) -> None:
    """Per-step fusion: `decode_n_tokens` whose `choose` asks the cloud at each step the schedule fuses."""
    infos: list[StepInfo] = []

    def choose(step: int, processed: np.ndarray) -> int:
        lp0 = log_softmax(processed)
        if not run.fusing(step):
            tok, _ = run.pick(lp0)
            infos.append(StepInfo(step, tok, False, 1.0))
            return tok
        top = run.ask([])
        f = run.fuser(lp0, top[0] if top else None, step)
        tok, _ = run.pick(f.logprobs)
        infos.append(StepInfo(step, tok, f.cloud_used, f.weight))
        return tok

    for st in decode_n_tokens(run.loc.forward, logits, choose, run.max_new_tokens, (), [run.penalty]):
        if not run.emit(st.token, infos[-1]):
            break
