"""Block fusion: the device drafts a few tokens, one cloud request scores them all, the fused choice is kept
position by position (speculative decoding; the proof that it equals per-step fusion is in
`cogenesis.cogen.logits`' docstring). Drives a `FusionRun` with the runtime's `decode_one_token` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cogenesis.cogen.results import StepInfo
from cogenesis.cogen.stepwise import FusionRun


def choose_k(alpha: float, t_local: float, t_cloud: float, k_min: int, k_max: int) -> int:
    """Drafts per round minimizing expected time per token (see `cogenesis.cogen.logits`' docstring)."""
    best, best_cost = k_min, math.inf
    for k in range(k_min, k_max + 1):
        tokens = k + 1 if alpha >= 0.9999 else (1 - alpha ** (k + 1)) / (1 - alpha)
        cost = ((k + 1) * t_local + t_cloud) / tokens
        if cost < best_cost - 1e-12:
            best, best_cost = k, cost
    return best


@dataclass
class DraftSize:
    """How many drafts the next round proposes: adapted to the recent acceptance rate and timings."""

    k: int
    k_min: int = 1
    k_max: int = 16
    adapt: bool = True
    tried: float = 0.0  # decayed draft outcomes
    accepted: float = 0.0

    def record(self, tried: int, accepted: int) -> None:
        self.tried, self.accepted = 0.9 * self.tried + tried, 0.9 * self.accepted + accepted

    def adapt_to(self, run: FusionRun) -> None:
        """The k that minimizes the expected time per token at the measured step and request times."""
        if self.adapt and run.loc.ema is not None and run.cloud_ema is not None:
            alpha = (self.accepted + 1.0) / (self.tried + 2.0)
            self.k = choose_k(alpha, run.loc.ema, run.cloud_ema, self.k_min, self.k_max)


@dataclass
class Drafts:
    """A round's local drafts: the logits rows and log-probs before each, the tokens, and (sampling) the
    distributions they were drawn from."""

    rows: list[np.ndarray]
    lps: list[np.ndarray]
    tokens: list[int] = field(default_factory=list)
    qs: list[np.ndarray | None] = field(default_factory=list)


def run_blocks(run: FusionRun, logits: np.ndarray, size: DraftSize) -> None:
    """Rounds until a stop token or the budget; steps the schedule does not fuse are decided on the device."""
    while logits is not None:
        step = len(run.gen)
        lp0 = run.local_lp(logits, run.gen)
        if not run.fusing(step):
            logits = _local_step(run, step, lp0)
            continue
        logits = _round(run, step, logits, lp0, size)


def _local_step(run: FusionRun, step: int, lp0: np.ndarray) -> np.ndarray | None:
    tok, _ = run.pick(lp0)
    if not run.emit(tok, StepInfo(step, tok, False, 1.0)):
        return None
    return run.loc.forward([tok])


def _round(run: FusionRun, step: int, logits: np.ndarray, lp0: np.ndarray, size: DraftSize) -> np.ndarray | None:
    """Draft, one cloud request, verify; the logits after the round (None: the reply is over)."""
    base = run.decoder.length
    n = min(size.k, run.max_new_tokens - step - 1, run.schedule.run_length(step, run.max_new_tokens))
    d = _draft(run, logits, lp0, n)
    top = run.ask(d.tokens[: len(d.rows) - 1])
    run.res.drafts_proposed += len(d.tokens)
    run.res.draft_k_history.append(len(d.tokens))
    if top is None:  # no cloud this round (held, or fusion is over): the drafts are the device's own choices
        return _keep_drafts(run, step, lp0, d)
    chosen, accepted, stop = _verify(run, step, d, top)
    size.record(accepted + (1 if chosen is not None and accepted < len(d.tokens) else 0), accepted)
    run.res.drafts_accepted += accepted
    if stop:
        return None
    run.decoder.truncate(base + accepted)
    logits = run.loc.forward([chosen])
    size.adapt_to(run)
    return logits


def _draft(run: FusionRun, logits: np.ndarray, lp0: np.ndarray, n: int) -> Drafts:
    """Up to `n` local drafts (fewer at a stop token), each fed to the cache."""
    d = Drafts([logits], [lp0])
    for _ in range(n):
        tok, q = run.pick(d.lps[-1])
        d.tokens.append(tok)
        d.qs.append(q)
        if tok in run.stops:
            break
        d.rows.append(run.loc.forward([tok]))
        d.lps.append(run.local_lp(d.rows[-1], run.gen + d.tokens))
    return d


def _keep_drafts(run: FusionRun, step: int, lp0: np.ndarray, d: Drafts) -> np.ndarray | None:
    if not d.tokens:  # nothing drafted (the reply's last position): decide it on the device
        return _local_step(run, step, lp0)
    for i, tok in enumerate(d.tokens):
        if not run.emit(tok, StepInfo(step + i, tok, False, None, True, True)):
            return None
    return d.rows[-1] if len(d.rows) > len(d.tokens) else None  # rows[-1]: the logits after the last draft


def _verify(run: FusionRun, step: int, d: Drafts, top: list) -> tuple[int | None, int, bool]:
    """Keep drafts while the fused choice agrees; the first disagreement is replaced by the fused choice.
    Returns (the replacing or bonus token, drafts accepted, whether the reply is over)."""
    accepted = 0
    for i, llp in enumerate(d.lps):
        s = step + i
        f = run.fuser(llp, top[i], s) if run.schedule.fuse(s) else None
        flp = f.logprobs if f is not None else llp
        info = StepInfo(s, -1, f is not None and f.cloud_used, f.weight if f is not None else 1.0,
                        i < len(d.tokens), None)
        if i >= len(d.tokens):  # past the drafts: the bonus token
            chosen, _ = run.pick(flp)
        else:
            ok, chosen = _accept(run, flp, d.tokens[i], d.qs[i])
            info.accepted = ok
            if ok:
                accepted += 1
                info.token = d.tokens[i]
                if not run.emit(d.tokens[i], info):
                    return None, accepted, True
                continue
        info.token = chosen
        return chosen, accepted, not run.emit(chosen, info)
    return None, accepted, False


def _accept(run: FusionRun, flp: np.ndarray, draft: int, q: np.ndarray | None) -> tuple[bool, int]:
    """Greedy: keep the draft when it is the fused argmax. Sampling: keep it with probability min(1, p/q), else
    draw from max(0, p - q) renormalized. Returns (kept, the token otherwise)."""
    if run.greedy:
        alt = int(np.argmax(flp))
        return alt == draft, alt
    p = run.sampler.probs(flp)
    ok = run.sampler.rng.random() < min(1.0, p[draft] / q[draft]) if q[draft] > 0 else False
    if ok:
        return True, -1
    r = np.maximum(p - q, 0.0)
    tot = r.sum()
    r = r / tot if tot > 0 else p
    return False, int(run.sampler.rng.choice(r.shape[-1], p=r))
