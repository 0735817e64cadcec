"""Logit-level co-generation: the on-device model (with the private context) and a cloud model (without it)
fuse their next-token distributions, per step (the paper's method) or per block (speculative, fewer round trips).

Privacy: the cloud gets the context-free prompt ids plus the tokens generated so far, never the local prompt.
Generated tokens were written by a model that saw the context, so they can carry it; pass ``guard`` and every
outgoing prefix (and draft) goes through a `cogenesis.cogen.prefix_policy.PrefixPolicy` first: nothing the
guard finds (its private-term model included) and no term still being spelled out is ever sent; at the first
private term fusion stops (``prefix_policy="stop"``) or goes on with a redacted prefix (``"redact"``). A
:class:`Schedule` can also limit fusion to the first P tokens. Block fusion also sends the
drafts that end up rejected, i.e. up to ``draft_k`` tokens the reply never contains.

Block fusion, greedy: the local model drafts ``k`` tokens; ONE cloud request returns the cloud's top-k at the
k draft positions + 1; position by position the fused argmax is compared with the draft, drafts are accepted
while they match, and the first mismatch is replaced by the fused choice (the local KV cache is rolled back
to it). Every accepted token is the argmax of exactly the distribution per-step fusion would compute at that
position (same local prefix, same cloud prefix), so the output is token-identical to per-step fusion.

Block fusion, sampling: drafts ``x ~ q`` (the local model's own sampling distribution with the context) are
accepted with probability ``min(1, p(x) / q(x))`` where ``p`` is the fused sampling distribution at that
position, and on rejection a token is drawn from ``max(0, p - q)`` renormalized; after k accepted drafts a
bonus token is drawn from ``p``. This is speculative sampling (Leviathan et al. 2023, Chen et al. 2023):
``P(out = y) = q(y) min(1, p(y)/q(y)) + (1 - sum_x min(q(x), p(x))) * max(0, p(y) - q(y)) / sum_x max(0, p(x) - q(x))
= min(q(y), p(y)) + max(0, p(y) - q(y)) = p(y)``, since ``1 - sum min(p, q) = sum max(0, p - q)``.
Each position is conditioned on the accepted prefix, which is exactly the per-step prefix, so by induction
the sequence distribution equals per-step fusion's. ``tests/test_block_fusion.py`` checks it with a
chi-square test on a toy vocabulary.

``k`` adapts: with ``a`` the recent per-token acceptance rate, ``t`` the local step time and ``c`` the time of a
cloud request, a round with k drafts costs ``(k+1) t + c`` and yields ``(1 - a^(k+1)) / (1 - a)`` tokens on
average; the next round uses the k (in [k_min, k_max]) that minimizes time per token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from cogenesis.cloud_bridge.guard import PLACEHOLDERS, PrivacyViolation
from cogenesis.cloud_bridge.terms import PLACEHOLDER as TERM_PLACEHOLDERS
from cogenesis.cogen.prefix_policy import PrefixPolicy, PrefixView
from cogenesis.fusion import DEFAULT_K, Fuser, FusionNet, Schedule
from cogenesis.runtime.sampling import Sampler, SamplingConfig, log_softmax


@runtime_checkable
class CloudLogprobs(Protocol):
    """The one cloud call logit fusion needs (``cogenesis.cloud_bridge.client.CloudClient`` implements it)."""

    def next_token_logprobs(
        self, prefix_ids: Sequence[int], draft_ids: Sequence[int] = (), k: int = DEFAULT_K
    ) -> list[dict[int, float]]:
        """Top-k log-probs predicting each draft token and the token after the last: len(draft_ids) + 1 dicts."""
        ...


class LocalCloud:
    """An in-process "cloud": an EdgeModel run WITHOUT the private context (calibration, tests, benchmarks).

    Uses its own KV cache on the model's ONNX session, so it can share the EdgeModel the local side uses.
    ``exact=True`` evaluates every token after the first prompt one at a time, so the logits do not depend on
    how tokens were batched into requests (per-step and block fusion then see bit-identical cloud logits).
    ``rtt_s`` sleeps per request (a simulated network); ``fail_after`` raises ConnectionError from that
    request on (a cloud that dies). ``guard`` (an EgressGuard) inspects every request body first.
    """

    def __init__(self, model, guard=None, rtt_s: float = 0.0, exact: bool = True, fail_after: int | None = None,
                 endpoint: str = "local-cloud/logprobs"):
        from cogenesis.runtime.model import Decoder

        d = model.decoder
        self.decoder = Decoder(d.session, d.kv, shared_kv=d.shared)
        self.vocab = int(model.manifest["model"]["vocab_size"])
        self.guard, self.rtt_s, self.exact, self.fail_after, self.endpoint = guard, rtt_s, exact, fail_after, endpoint
        self.requests = 0
        self.compute_s = 0.0  # time spent computing (not sleeping)
        self.received: list[dict] = []  # every body received (tests look for canaries here)

    def next_token_logprobs(self, prefix_ids: Sequence[int], draft_ids: Sequence[int] = (),
                            k: int = DEFAULT_K) -> list[dict[int, float]]:
        body = {"prefix_ids": [int(t) for t in prefix_ids], "draft_ids": [int(t) for t in draft_ids], "k": int(k)}
        if self.guard is not None:
            self.guard.inspect(self.endpoint, body)  # strict mode raises PrivacyViolation: nothing is "sent"
        if self.fail_after is not None and self.requests >= self.fail_after:
            raise ConnectionError(f"{self.endpoint}: cloud unavailable (simulated failure)")
        self.requests += 1
        self.received.append(body)
        if self.rtt_s:
            time.sleep(self.rtt_s)
        t0 = time.perf_counter()
        out = self._topk(body["prefix_ids"], body["draft_ids"], k)
        self.compute_s += time.perf_counter() - t0
        return out

    def _topk(self, prefix: list[int], draft: list[int], k: int) -> list[dict[int, float]]:
        if not prefix:
            raise ValueError("prefix_ids is empty")
        dec, ids, need = self.decoder, prefix + draft, len(draft) + 1
        common = 0
        for a, b in zip(dec.tokens, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prefix) - 1)  # re-run at least the last prefix token: its logits are needed
        if common == 0:
            dec.reset()
        else:
            dec.truncate(common)
        new = ids[common:]
        if not self.exact:
            logits = dec.forward(new, keep=need)
        else:  # only a fresh prompt is batched; every token whose logits are returned runs alone
            pre = len(new) - need
            if common == 0 and pre > 0:
                dec.forward(new[:pre], keep=1)
                new = new[pre:]
            logits = np.concatenate([dec.forward([t], keep=1) for t in new], axis=0)[-need:]
        lp = log_softmax(logits)
        out = []
        for row in lp:
            top = np.argpartition(-row, k)[:k]
            top = top[np.argsort(-row[top], kind="stable")]
            out.append({int(t): float(row[t]) for t in top})
        return out


# ---------------------------------------------------------------- stock clouds: string-keyed top-k


@dataclass
class VocabIndex:
    """Local token id by its exact decoded string (byte-level BPE tokens decode one by one)."""

    by_string: dict[str, int]
    encode: Callable[[str], list[int]]
    vocab: int

    @classmethod
    def from_model(cls, model) -> VocabIndex:
        tok = model.tokenizer
        n = tok.get_vocab_size()
        special = {int(t) for t in model.stop_ids}
        by: dict[str, int] = {}
        for i in range(n):
            if i in special:
                continue
            s = tok.decode([i], skip_special_tokens=False)
            if s and "\ufffd" not in s:
                by.setdefault(s, i)  # the first (lowest-id) token wins a tie
        return cls(by, lambda s: tok.encode(s, add_special_tokens=False).ids, n)


@dataclass
class MappedTopK:
    """A string-keyed top-k mapped onto local ids, and how cleanly."""

    topk: dict[int, float]  # local id -> log-prob (only cleanly mapped candidates)
    clean_mass: float  # probability of the candidates that are exactly one local token
    total_mass: float  # probability of all returned candidates
    unmapped: list[str]

    @property
    def clean_fraction(self) -> float:
        return self.clean_mass / self.total_mass if self.total_mass > 0 else 0.0


def map_string_topk(cands: Mapping[str, float] | Iterable[tuple[str, float]], index: VocabIndex) -> MappedTopK:
    """Map ``{token string: logprob}`` (OpenAI-style, or another tokenizer's tokens) onto the local vocab.

    A candidate maps cleanly when its string is exactly one local token. Others (several local tokens, or
    unknown bytes) are reported in ``unmapped``; their mass is not guessed onto a first sub-token, since that
    token's true probability would need the other continuations too. Two candidates mapping to the same id
    (e.g. differently normalized strings) add up.
    """
    items = list(cands.items()) if isinstance(cands, Mapping) else list(cands)
    topk: dict[int, float] = {}
    clean = total = 0.0
    unmapped = []
    for s, lp in items:
        p = math.exp(min(float(lp), 0.0))
        total += p
        tid = index.by_string.get(s)
        if tid is None:
            ids = index.encode(s)
            tid = ids[0] if len(ids) == 1 else None
        if tid is None:
            unmapped.append(s)
            continue
        clean += p
        topk[tid] = math.log(math.exp(topk[tid]) + p) if tid in topk else math.log(p)
    return MappedTopK(topk, clean, total, unmapped)


class StringTopKCloud(Protocol):
    """A stock cloud API: top log-probs keyed by token strings for the next token after ``prefix_text``."""

    def top_logprobs(self, prefix_text: str, k: int = DEFAULT_K) -> dict[str, float]: ...


class MappedCloud:
    """Adapts a string-keyed cloud to :class:`CloudLogprobs` for a local model's vocab.

    Steps whose candidates map cleanly for less than ``min_clean`` of the returned mass come back as ``{}``:
    the fusion then uses the local model alone on that step (recorded as not fused). Drafts cost one request
    each (a stock API scores no drafts); ``steps`` keeps the mapping report of every position.
    """

    def __init__(self, cloud: StringTopKCloud, model, min_clean: float = 0.8, index: VocabIndex | None = None):
        self.cloud, self.model, self.min_clean = cloud, model, min_clean
        self.index = index or VocabIndex.from_model(model)
        self.steps: list[MappedTopK] = []

    def next_token_logprobs(self, prefix_ids: Sequence[int], draft_ids: Sequence[int] = (),
                            k: int = DEFAULT_K) -> list[dict[int, float]]:
        ids = list(prefix_ids)
        out = []
        for i in range(len(draft_ids) + 1):
            text = self.model.tokenizer.decode(ids + list(draft_ids[:i]), skip_special_tokens=False)
            m = map_string_topk(self.cloud.top_logprobs(text, k), self.index)
            self.steps.append(m)
            out.append(m.topk if m.clean_fraction >= self.min_clean else {})
        return out

    def report(self) -> dict:
        fr = [m.clean_fraction for m in self.steps]
        return {"steps": len(fr), "mean_clean_fraction": float(np.mean(fr)) if fr else None,
                "steps_fallback_local": sum(f < self.min_clean for f in fr)}


# ---------------------------------------------------------------- the generation engine


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


class _Local:
    """The local decoder with timing."""

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


def _prefill(decoder, loc: _Local, ids: list[int]) -> np.ndarray:
    """Prompt minus its last token in one batch (reused when the cache already holds it), then the last token
    alone: the logits are then the same bits whether or not the prompt was cached."""
    if not ids:
        raise ValueError("the local prompt is empty")
    head = ids[:-1]
    if head and decoder.length >= len(head) and decoder.tokens[: len(head)] == head:
        decoder.truncate(len(head))
    else:
        decoder.reset()
        if head:
            loc.forward(head)
    return loc.forward(ids[-1:])


def choose_k(alpha: float, t_local: float, t_cloud: float, k_min: int, k_max: int) -> int:
    """Drafts per round minimizing expected time per token (see the module docstring)."""
    best, best_cost = k_min, math.inf
    for k in range(k_min, k_max + 1):
        tokens = k + 1 if alpha >= 0.9999 else (1 - alpha ** (k + 1)) / (1 - alpha)
        cost = ((k + 1) * t_local + t_cloud) / tokens
        if cost < best_cost - 1e-12:
            best, best_cost = k, cost
    return best


def cogenerate(
    decoder,
    local_prompt_ids: Sequence[int],
    cloud: CloudLogprobs | None,
    cloud_prompt_ids: Sequence[int],
    fuser: Fuser,
    *,
    block: bool = False,
    schedule: Schedule | tuple | str | None = None,
    max_new_tokens: int = 256,
    sampling: SamplingConfig | None = None,
    stop_ids: Iterable[int] = (),
    k: int = DEFAULT_K,
    draft_k: int = 4,
    draft_k_min: int = 1,
    draft_k_max: int = 16,
    adapt_k: bool = True,
    guard_scan: Callable[[list[int]], bool] | None = None,
    cloud_view: Callable[[list[int], list[int]], PrefixView] | None = None,
    detokenize: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int], None] | None = None,
    repetition_penalty: float = 1.0,
    cloud_mask: Iterable[int] = (),
    cloud_deadline_s: float | None = None,
) -> CogenResult:
    """Generate with fusion on a Decoder-like object (``forward(ids, keep)``, ``truncate(n)``, ``reset()``,
    ``length``). ``guard_scan(ids) -> True`` when the generated ids about to be sent reveal private context:
    the cloud is then no longer consulted. A cloud error also ends fusion; the reply finishes locally.
    ``cloud_view(gen, drafts)`` (a `PrefixPolicy`) decides what the cloud may see: ``send`` its prefix (the
    generated ids, or a redacted re-encoding), ``hold`` (this step or round is decided locally; fusion goes
    on) or ``stop`` (fusion is over). ``on_token`` is called with each token of the reply as it is decided
    (block mode: in bursts).
    ``repetition_penalty`` applies to the local logits over the reply (as the runtime's generate does).
    ``cloud_mask``: token ids dropped from every cloud top-k before fusion (the first tokens of the sanitizer's
    placeholders: the cloud saw "[private detail]" where the device knows the fact, so only the device may
    propose those tokens). ``cloud_deadline_s``: this long after the prompt is read the cloud is not asked again and the
    reply is finished locally (``fallback["reason"] == "deadline"``)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
    sched = Schedule.parse(schedule)
    cfg = sampling or SamplingConfig()
    sampler = Sampler(cfg)
    greedy = cfg.temperature == 0
    stops = set(int(t) for t in stop_ids)
    cloud_prompt = [int(t) for t in cloud_prompt_ids]
    mask = {int(t) for t in cloud_mask}
    t_start = time.perf_counter()
    loc = _Local(decoder)
    logits = _prefill(decoder, loc, [int(t) for t in local_prompt_ids])
    t_decode = time.perf_counter()  # the cloud deadline counts from here (the prefill is the device's own)
    res = CogenResult("", [], [], 0, "logits-block" if block else "logits", fuser.rule, prefill_s=loc.s)
    gen = res.tokens
    alive = cloud is not None
    cloud_ema: float | None = None
    acc_n, acc_a = 0.0, 0.0  # decayed draft outcomes: tried, accepted
    kk = max(draft_k_min, min(draft_k, draft_k_max))

    def ask(ids_out: list[int]) -> list[dict[int, float]] | None:
        """One cloud request for positions after gen (+ drafts ids_out); None = fusion is over."""
        nonlocal alive, cloud_ema
        step = len(gen)
        if cloud_deadline_s is not None and time.perf_counter() - t_decode > cloud_deadline_s:
            alive = False
            res.fallback = {"step": step, "reason": "deadline",
                            "error": f"the reply's cloud deadline ({cloud_deadline_s} s) passed"}
            return None
        if guard_scan is not None and guard_scan(gen + ids_out):
            alive = False
            res.fallback = {"step": step, "reason": "guard", "error": "generated text matched the private context"}
            return None
        prefix = gen
        if cloud_view is not None:
            view = cloud_view(list(gen), list(ids_out))
            if view.action == "hold":
                res.held_steps += 1
                return None  # decided locally this time; fusion goes on
            if view.action == "stop":
                alive = False
                res.fallback = {"step": step, "reason": "guard", "error": view.reason}
                return None
            prefix = view.prefix
        t0 = time.perf_counter()
        try:
            out = cloud.next_token_logprobs(cloud_prompt + prefix, ids_out, k)
            if len(out) < len(ids_out) + 1:
                raise ValueError(f"cloud returned {len(out)} positions, expected {len(ids_out) + 1}")
        except Exception as e:  # any failure (network, server fault, guard refusal): finish locally
            alive = False
            reason = "privacy_violation" if isinstance(e, PrivacyViolation) else "cloud_error"
            res.fallback = {"step": step, "reason": reason, "error": f"{type(e).__name__}: {e}"}
            return None
        finally:
            dt = time.perf_counter() - t0
            res.cloud_s += dt
        res.round_trips += 1
        cloud_ema = dt if cloud_ema is None else 0.7 * cloud_ema + 0.3 * dt
        if mask:
            out = [{t: v for t, v in pos.items() if t not in mask} if pos else pos for pos in out]
        return out

    def pick(lp: np.ndarray) -> tuple[int, np.ndarray | None]:
        if greedy:
            return int(np.argmax(lp)), None
        p = sampler.probs(lp)
        return int(sampler.rng.choice(p.shape[-1], p=p)), p

    def local_lp(row: np.ndarray, seen: list[int]) -> np.ndarray:
        if repetition_penalty != 1.0 and seen:
            idx = np.unique(np.asarray(seen))
            v = row[idx]
            row = row.copy()
            row[idx] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
        return log_softmax(row)

    def emit(tok: int, info: StepInfo) -> bool:
        """Append a chosen token; False when it is a stop token or the budget is spent."""
        if tok in stops:
            res.stop_reason = "stop_token"
            return False
        gen.append(tok)
        res.steps.append(info)
        if on_token is not None:
            on_token(tok)
        if len(gen) >= max_new_tokens:
            res.stop_reason = "max_tokens"
            return False
        return True

    while True:
        step = len(gen)
        lp0 = local_lp(logits, gen)
        if not (alive and sched.fuse(step)):
            tok, _ = pick(lp0)
            if not emit(tok, StepInfo(step, tok, False, 1.0)):
                break
            logits = loc.forward([tok])
            continue
        if not block:
            top = ask([])
            f = fuser(lp0, top[0] if top else None, step)
            tok, _ = pick(f.logprobs)
            if not emit(tok, StepInfo(step, tok, f.cloud_used, f.weight)):
                break
            logits = loc.forward([tok])
            continue
        # ---- block round: draft n tokens locally, one request, verify position by position
        base = decoder.length
        n = min(kk, max_new_tokens - step - 1, sched.run_length(step, max_new_tokens))
        rows, lps, drafts, qs = [logits], [lp0], [], []
        for _ in range(n):
            d, q = pick(lps[-1])
            drafts.append(d)
            qs.append(q)
            if d in stops:
                break
            rows.append(loc.forward([d]))
            lps.append(local_lp(rows[-1], gen + drafts))
        send = drafts[: len(rows) - 1]
        top = ask(send)
        res.drafts_proposed += len(drafts)
        res.draft_k_history.append(len(drafts))
        if top is None:  # no cloud this round (held, or fusion is over): the drafts are the device's own choices
            if not drafts:  # nothing drafted (the reply's last position): decide it on the device
                tok, _ = pick(lp0)
                if not emit(tok, StepInfo(step, tok, False, 1.0)):
                    break
                logits = loc.forward([tok])
                continue
            done = False
            for i, d in enumerate(drafts):
                if not emit(d, StepInfo(step + i, d, False, None, True, True)):
                    done = True
                    break
            if done:
                break
            if len(rows) > len(drafts):  # no stop draft: rows[-1] are the logits after the last draft
                logits = rows[-1]
            continue
        chosen, accepted, stop = None, 0, False
        for i, llp in enumerate(lps):
            s = step + i
            f = fuser(llp, top[i], s) if sched.fuse(s) else None
            flp = f.logprobs if f is not None else llp
            info = StepInfo(s, -1, f is not None and f.cloud_used, f.weight if f is not None else 1.0,
                            i < len(drafts), None)
            if i < len(drafts):
                d = drafts[i]
                if greedy:
                    ok = int(np.argmax(flp)) == d
                    alt = int(np.argmax(flp))
                else:
                    p = sampler.probs(flp)
                    q = qs[i]
                    ok = sampler.rng.random() < min(1.0, p[d] / q[d]) if q[d] > 0 else False
                    alt = -1
                    if not ok:
                        r = np.maximum(p - q, 0.0)
                        tot = r.sum()
                        r = r / tot if tot > 0 else p
                        alt = int(sampler.rng.choice(r.shape[-1], p=r))
                info.accepted = ok
                if ok:
                    accepted += 1
                    info.token = d
                    if not emit(d, info):
                        stop = True
                        break
                    continue
                chosen = alt
            else:
                chosen, _ = pick(flp)
            info.token = chosen
            stop = not emit(chosen, info)
            break
        tried = accepted + (1 if chosen is not None and accepted < len(drafts) else 0)
        res.drafts_accepted += accepted
        acc_n, acc_a = 0.9 * acc_n + tried, 0.9 * acc_a + accepted
        if stop:
            break
        decoder.truncate(base + accepted)
        logits = loc.forward([chosen])
        if adapt_k and loc.ema is not None and cloud_ema is not None:
            alpha = (acc_a + 1.0) / (acc_n + 2.0)
            kk = choose_k(alpha, loc.ema, cloud_ema, draft_k_min, draft_k_max)
    res.wall_s = time.perf_counter() - t_start
    res.local_s = loc.s
    if detokenize is not None:
        res.text = detokenize(gen)
    return res


def ends_with_private_prefix(guard, text: str) -> bool:
    """True when ``text`` ends in the first letters of something private (`EgressGuard.pending`)."""
    return guard.pending(text)


def write_logits(
    instruction: str,
    context,
    model,
    cloud: CloudLogprobs | None,
    block: bool = False,
    rule: str = "learned",
    schedule: Schedule | tuple | str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    k: int = DEFAULT_K,
    weight: float = 0.5,
    net: FusionNet | None = None,
    guard=None,
    stop_on_flag: bool = True,
    draft_k: int = 4,
    draft_k_max: int = 16,
    adapt_k: bool = True,
    local_messages: list[dict] | None = None,
    cloud_messages: list[dict] | None = None,
    on_token: Callable[[int], None] | None = None,
    repetition_penalty: float = 1.0,
    placeholders: Sequence[str] = (),
    prefix_policy: str = "stop",
    cloud_deadline_s: float | None = None,
) -> CogenResult:
    """Write a reply to ``instruction`` with logit fusion (``block=True``: block fusion).

    The local model (an EdgeModel) gets ``with_context(instruction, context)``; the cloud gets
    ``without_context(instruction)`` as token ids plus the generated tokens. ``guard`` (an EgressGuard with the
    session's context) decides through a `PrefixPolicy` what of the reply the cloud may see when
    ``stop_on_flag``: ``prefix_policy="stop"`` ends fusion at the first private term, ``"redact"`` sends the
    reply with its private terms replaced by placeholders; both hold back a term still being spelled out. ``rule``: learned | mean | max | weight (``weight`` = the local model's share) | local
    | cloud. ``schedule``: (P, K, T), see :class:`cogenesis.fusion.Schedule`. ``placeholders``: the texts the
    sanitizer put into the cloud's instruction; the cloud may not propose their first tokens (``cloud_mask``).
    """
    from cogenesis.data.prompts import with_context, without_context

    local_msgs = local_messages or with_context(instruction, context)
    cloud_msgs = cloud_messages or without_context(instruction)
    fuser = Fuser(rule=rule, weight=weight, net=net, k=k)
    view = None
    if guard is not None and stop_on_flag:
        view = PrefixPolicy(guard, model.decode, lambda s: model.tokenizer.encode(s, add_special_tokens=False).ids,
                            prefix_policy)
        if prefix_policy == "redact":
            placeholders = sorted({*placeholders, *TERM_PLACEHOLDERS.values(), *PLACEHOLDERS})
    return cogenerate(
        model.decoder, model.encode(local_msgs), cloud, model.encode(cloud_msgs), fuser, block=block,
        schedule=schedule, max_new_tokens=max_new_tokens,
        sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
        stop_ids=model.stop_ids, k=k, draft_k=draft_k, draft_k_max=draft_k_max, adapt_k=adapt_k,
        cloud_view=view, cloud_deadline_s=cloud_deadline_s, detokenize=model.decode, on_token=on_token,
        repetition_penalty=repetition_penalty,
        cloud_mask=placeholder_ids(model.tokenizer, placeholders),
    )


def placeholder_ids(tokenizer, placeholders: Iterable[str]) -> set[int]:
    """First token ids of each placeholder text, alone and after a space (how it appears mid-sentence)."""
    ids: set[int] = set()
    for p in placeholders:
        for variant in (p, " " + p):
            enc = tokenizer.encode(variant, add_special_tokens=False).ids
            if enc:
                ids.add(int(enc[0]))
    return ids


# ---------------------------------------------------------------- modes of cogenesis.write


OPTION_KEYS = ("rule", "schedule", "k", "weight", "stop_on_flag", "draft_k", "draft_k_max", "adapt_k",
               "prefix_policy", "cloud_deadline_s", "cross_tokenizer", "min_clean", "fusion_net")


def fusion_cloud(client, model, cross_tokenizer: bool = False, min_clean: float = 0.8):
    """The cloud the fusion talks to. By default the client itself, after checking that it serves the device's
    vocabulary (token ids, one request per block; vLLM or our server). With `cross_tokenizer`, a `MappedCloud`
    over the client's string-keyed top-k (text prefix, one request per position; steps whose top-k maps onto
    single device tokens for less than `min_clean` of its mass are local-only): for a cloud of another
    vocabulary, or a server that takes no token-id prompts (llama-server) even with the same vocabulary
    (Qwen2.5-0.5B device, Qwen2.5-1.5B cloud: every step maps cleanly)."""
    if cross_tokenizer:
        return MappedCloud(client, model, min_clean=min_clean)
    client.check_vocab(model.tokenizer)  # token ids must mean the same tokens on both sides
    return client


def _write_mode(block: bool):
    """The ``logits`` / ``logits-block`` mode of :func:`cogenesis.write.write`.

    The cloud gets the sanitized instruction (``job.cloud_instruction()``) as context-free token ids through
    the session's guarded client; a cloud failure mid-reply finishes it locally (``result.fallback`` says at
    which token). ``mode_options``: rule, schedule, k, weight, stop_on_flag, draft_k, draft_k_max, adapt_k,
    prefix_policy (stop | redact), cloud_deadline_s (then the reply is finished locally).
    """

    def mode(job) -> str:
        from cogenesis.data.prompts import with_context, without_context
        from cogenesis.runtime.generate import StreamDecoder

        client = job.cloud_client()
        opts = {key: v for key, v in job.options.items() if key in OPTION_KEYS}
        unknown = set(job.options) - set(OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown logits-mode options {sorted(unknown)}; known: {', '.join(OPTION_KEYS)}")
        sd = StreamDecoder(job.model.tokenizer)

        def on_token(t: int) -> None:
            job.emit(sd.push(t))

        before = client.requests_sent
        cloud = fusion_cloud(client, job.model, bool(opts.pop("cross_tokenizer", False)),
                             float(opts.pop("min_clean", 0.8)))
        if net_path := opts.pop("fusion_net", None):  # a net trained for this device/cloud pair
            opts["net"] = FusionNet.load(net_path)
        t0 = time.perf_counter()
        cloud_instruction = job.cloud_instruction()
        res = write_logits(
            job.instruction, job.context, job.model, cloud, block=block,
            local_messages=with_context(job.instruction, job.context, max_tokens=job.context_tokens),
            cloud_messages=without_context(cloud_instruction),
            guard=client.guard, on_token=on_token,
            placeholders=sorted({new for _, new in job.result.changes if new in PLACEHOLDERS}),
            **opts, **job.gen,
        )
        job.emit(sd.flush())
        r = job.result
        r.cloud_requests += client.requests_sent - before
        r.timings["cloud_s"] = r.timings.get("cloud_s", 0.0) + res.cloud_s
        r.timings["local_s"] = r.timings.get("local_s", 0.0) + (time.perf_counter() - t0 - res.cloud_s)
        r.extra["fusion"] = {
            "rule": res.rule, "round_trips": res.round_trips, "tokens": len(res.tokens),
            "round_trips_per_token": res.round_trips_per_token, "fused_steps": res.fused_steps,
            "drafts_proposed": res.drafts_proposed, "drafts_accepted": res.drafts_accepted,
            "held_steps": res.held_steps,
            "weights": [st.weight for st in res.steps], "fallback": res.fallback, "stop_reason": res.stop_reason,
        }
        if isinstance(cloud, MappedCloud):
            r.extra["fusion"]["cross_tokenizer"] = cloud.report()
        if res.fallback is not None:
            fb = res.fallback
            r.fallback = (f"{fb['reason']} at token {fb['step']}: {fb['error']}; the rest was written locally")
            if res.round_trips == 0:
                r.mode_used = "local"
        return res.text

    return mode


def _register() -> None:
    from cogenesis.write import register_mode

    register_mode("logits", _write_mode(False))
    register_mode("logits-block", _write_mode(True))


_register()
