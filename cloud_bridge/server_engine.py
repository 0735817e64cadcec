"""The reference cloud server's engine: the project runtime behind an OpenAI/vLLM-style API.

One `EdgeModel` (its onnxruntime session is shared: `run` is thread-safe) and one `Decoder` per client
session, kept in an LRU. A request reuses the longest prefix its session already has in the KV cache
(`Decoder.truncate` to the common prefix, then only the new tokens run), so a prefix that grows by a token per
request costs one token of compute. Positions whose logits a request needs (prompt logprobs) are always
recomputed, so a request with `prompt_logprobs` from position 0 gets no cache hit; `prompt_logprobs_start`
(our extension) keeps that cost to the positions asked for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from cogenesis.runtime import EdgeModel
from cogenesis.runtime.model import Decoder
from cogenesis.runtime.sampling import Sampler, SamplingConfig

PREFILL_CHUNK = 256  # tokens per forward when logits of many positions are kept (bounds memory: 256 x vocab)
MIN_LOGPROB = -9999.0  # vLLM clamps -inf to this so the JSON stays valid


@dataclass
class TopLogprobs:
    """The distribution at one position: its top-k, and the logprob and 1-based rank of `token` (if any)."""

    ids: list[int]
    logprobs: list[float]
    token: int | None = None
    token_logprob: float | None = None
    token_rank: int | None = None


@dataclass
class RunRequest:
    prompt_ids: list[int]
    max_tokens: int = 16
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt_logprobs: int | None = None  # k for every prompt position >= prompt_logprobs_start (first is null)
    prompt_logprobs_start: int = 0
    logprobs: int | None = None  # k for every generated token
    stop_ids: set[int] = field(default_factory=set)
    stop: list[str] = field(default_factory=list)


@dataclass
class RunEvent:
    """One generated token (`token`), or the end (`finish_reason` set, `token` None)."""

    token: int | None = None
    logprobs: TopLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class RunInfo:
    """What a run did: filled before the first event is yielded (prompt side) and at the end."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the session's KV cache
    computed_tokens: int = 0  # tokens run through the model (prompt + generated)
    prompt_logprobs: list[TopLogprobs | None] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    completion_logprobs: list[TopLogprobs] = field(default_factory=list)  # when the request asked for logprobs


class _Slot:
    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.lock = threading.Lock()


class Engine:
    """Sessions, prefix reuse and token-level scoring over one loaded model."""

    def __init__(self, model: EdgeModel, max_sessions: int = 16, max_parallel: int = 2):
        if max_sessions < 1 or max_parallel < 1:
            raise ValueError("max_sessions and max_parallel must be >= 1")
        self.model = model
        self.max_sessions = max_sessions
        self.vocab_size = int(model.manifest["model"]["vocab_size"])
        self.max_model_len = int(model.manifest["model"].get("max_position_embeddings") or 8192)
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lru = threading.Lock()
        self._compute = threading.Semaphore(max_parallel)
        self.evictions = 0

    # -- sessions ------------------------------------------------------------------------------------------
    def _new_decoder(self) -> Decoder:
        d = self.model.decoder
        return Decoder(d.session, d.kv, shared_kv=d.shared)

    @contextmanager
    def session(self, key: str | None) -> Iterator[Decoder]:
        """The session's decoder, locked for this request (a fresh one when `key` is None)."""
        if key is None:
            yield self._new_decoder()
            return
        with self._lru:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(self._new_decoder())
                while len(self._slots) > self.max_sessions:
                    self._slots.popitem(last=False)  # a request still holding it finishes on its own copy
                    self.evictions += 1
            else:
                self._slots.move_to_end(key)
        with slot.lock:
            yield slot.decoder

    def session_count(self) -> int:
        return len(self._slots)

    # -- model ---------------------------------------------------------------------------------------------
    def _forward(self, dec: Decoder, ids: list[int], keep: int) -> np.ndarray:
        with self._compute:
            return dec.forward(ids, keep=keep)

    @lru_cache(maxsize=65536)  # noqa: B019 - one engine per process, vocab-bounded
    def piece(self, token_id: int) -> str:
        """The text of one token (special tokens included), as vLLM's `decoded_token`."""
        return self.model.tokenizer.decode([token_id], skip_special_tokens=False)

    def run(self, dec: Decoder, req: RunRequest, info: RunInfo) -> Iterator[RunEvent]:
        """Score the prompt and generate; yields one event per generated token, then a final event."""
        ids = req.prompt_ids
        n = len(ids)
        info.prompt_tokens = n
        k_prompt = req.prompt_logprobs
        first = n if req.max_tokens > 0 else n + 1  # first position whose logits we need
        if k_prompt is not None:
            first = min(first, max(req.prompt_logprobs_start, 1) - 1)
        common = 0
        for a, b in zip(dec.tokens, ids, strict=False):
            if a != b:
                break
            common += 1
        reuse = min(common, first, n - 1 if req.max_tokens > 0 or k_prompt is not None else n)
        try:
            dec.truncate(reuse)  # drops the cached tail past the common prefix (and positions to rescore)
            info.cached_tokens = reuse
            rows: dict[int, TopLogprobs] = {}
            last = self._prefill(dec, ids, reuse, first, k_prompt, rows, info)
            if k_prompt is not None:
                info.prompt_logprobs = [None] * n
                for p in range(max(req.prompt_logprobs_start, 1), n):
                    info.prompt_logprobs[p] = rows.get(p)
            yield from self._generate(dec, req, last, info)
        except BaseException:
            dec.reset()  # never leave a half-updated cache behind (GeneratorExit included)
            raise

    def _prefill(self, dec: Decoder, ids: list[int], reuse: int, first: int, k: int | None,
                 rows: dict[int, TopLogprobs], info: RunInfo) -> np.ndarray | None:
        """Run ids[reuse:]; keep stats for positions >= first; return the logits at the last position."""
        n = len(ids)
        if dec.length != reuse:
            raise RuntimeError(f"cache length {dec.length} != expected {reuse}")
        last = None
        for a in range(reuse, n, PREFILL_CHUNK):
            b = min(a + PREFILL_CHUNK, n)
            keep = b - max(a, first) if first < b else 1
            logits = self._forward(dec, ids[a:b], keep)
            info.computed_tokens += b - a
            last = logits[-1]
            if k is not None and first < b:
                p0 = b - keep  # logits row i is position p0 + i; it predicts the token at p0 + i + 1
                lo = max(first, p0)
                upto = min(b, n - 1)  # the last position predicts a generated token, not a prompt one
                if upto > lo:
                    nxt = np.asarray(ids[lo + 1 : upto + 1])
                    for j, t in enumerate(top_logprobs(logits[lo - p0 : upto - p0], k, nxt)):
                        rows[lo + 1 + j] = t
        return last

    def _generate(self, dec: Decoder, req: RunRequest, logits: np.ndarray | None, info: RunInfo) -> Iterator[RunEvent]:
        if req.max_tokens <= 0:
            yield RunEvent(finish_reason="length")
            return
        assert logits is not None
        sampler = Sampler(req.sampling)
        out = info.completion_ids
        max_stop = max((len(s) for s in req.stop), default=0)
        for step in range(req.max_tokens):
            tok = sampler(logits)
            lp = top_logprobs(logits[None], req.logprobs, np.asarray([tok]))[0] if req.logprobs is not None else None
            if tok in req.stop_ids:
                yield RunEvent(finish_reason="stop", stop_reason=tok)
                return
            out.append(tok)
            if lp is not None:
                info.completion_logprobs.append(lp)
            if req.stop:  # checked before the token is announced, so a stream never shows the stop string
                tail = self.model.tokenizer.decode(out[-(max_stop + 8):], skip_special_tokens=True)
                hit = next((s for s in req.stop if s in tail), None)
                if hit is not None:
                    yield RunEvent(finish_reason="stop", stop_reason=hit)
                    return
            yield RunEvent(token=tok, logprobs=lp)
            if step + 1 == req.max_tokens:
                break
            logits = self._forward(dec, [tok], 1)[-1]
            info.computed_tokens += 1
        yield RunEvent(finish_reason="length")


def top_logprobs(logits: np.ndarray, k: int | None, tokens: np.ndarray | None = None) -> list[TopLogprobs]:
    """Log-softmax rows of `logits` [m, vocab]: top-k (by logprob, ties by id) and each row's `tokens` entry."""
    x = logits.astype(np.float32)
    mx = x.max(axis=-1, keepdims=True)
    lp = x - mx - np.log(np.exp(x - mx).sum(axis=-1, keepdims=True))
    lp = np.maximum(lp, MIN_LOGPROB)
    k = int(k or 0)
    out = []
    for i in range(lp.shape[0]):
        row = lp[i]
        if k > 0:
            cand = np.argpartition(-row, min(k, row.shape[0] - 1))[: k + 1] if k < row.shape[0] else np.arange(row.shape[0])
            order = np.lexsort((cand, -row[cand]))[:k]
            top = cand[order]
            t = TopLogprobs(top.tolist(), row[top].astype(float).tolist())
        else:
            t = TopLogprobs([], [])
        if tokens is not None:
            tok = int(tokens[i])
            v = row[tok]
            t.token, t.token_logprob, t.token_rank = tok, float(v), int((row > v).sum()) + 1
        out.append(t)
    return out
