"""The clouds logit fusion talks to: the one call it needs (`CloudLogprobs`), an in-process cloud for tests and
calibration (`LocalCloud`), and the cross-tokenizer adapter (`MappedCloud`: a string-keyed top-k mapped onto the
device's token ids through `VocabIndex`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cogenesis.cogen.fusion import DEFAULT_K
from cogenesis.runtime.sampling import log_softmax


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
