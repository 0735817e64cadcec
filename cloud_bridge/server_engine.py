"""The reference cloud server's engine: the project runtime behind an OpenAI/vLLM-style API.

One `EdgeModel` (its onnxruntime session is shared: `run` is thread-safe) and one `Decoder` per client
session, kept in an LRU. A request reuses the longest prefix its session already has in the KV cache
(`Decoder.truncate` to the common prefix, then only the new tokens run), so a prefix that grows by a token per
request costs one token of compute. Positions whose logits a request needs (prompt logprobs) are always
recomputed, so a request with `prompt_logprobs` from position 0 gets no cache hit; `prompt_logprobs_start`
(our extension) keeps that cost to the positions asked for.

Structured output (`response_format`): a request may carry a `TokenConstraint`, a JSON-schema grammar compiled by
llguidance over the model's tokenizer. Before each sampling step the constraint's token mask sets every
disallowed logit to -inf (logprobs stay those of the raw model, as vLLM reports them); each sampled token
advances the matcher; the run stops when the grammar is complete (the matcher stops, or the model picks EOS
once the grammar accepts).
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
from cogenesis.runtime.generate import Step, decode_n_tokens
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
    constraint: TokenConstraint | None = None  # structured output: one per request (it is stateful)


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


class KVBudgetExceeded(Exception):
    """The request's KV cache does not fit next to the requests running now: answer 503 + Retry-After."""


class KVRequestTooLarge(Exception):
    """The request alone needs more KV cache than the whole budget: answer 400 (retrying cannot help)."""


class Reservation:
    """KV bytes admitted for one request; `release` is idempotent (a stream releases it when it ends)."""

    def __init__(self, engine: Engine, nbytes: int):
        self.engine, self.nbytes, self._done = engine, nbytes, False

    def release(self) -> None:
        with self.engine._lru:
            if not self._done:
                self._done = True
                self.engine._inflight -= self.nbytes


class Engine:
    """Sessions, prefix reuse and token-level scoring over one loaded model."""

    def __init__(self, model: EdgeModel, max_sessions: int = 16, max_parallel: int = 2,
                 kv_budget_bytes: int | None = None):
        if max_sessions < 1 or max_parallel < 1:
            raise ValueError("max_sessions and max_parallel must be >= 1")
        self.model = model
        self.max_sessions = max_sessions
        self.kv_budget_bytes = kv_budget_bytes  # None: no limit
        self._inflight = 0  # bytes admitted to running requests
        self.vocab_size = int(model.manifest["model"]["vocab_size"])
        self.max_model_len = int(model.manifest["model"].get("max_position_embeddings") or 8192)
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lru = threading.Lock()
        self._compute = threading.Semaphore(max_parallel)
        self.evictions = 0
        self._grammar_tokenizer = None
        self._grammar_lock = threading.Lock()

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

    # -- memory --------------------------------------------------------------------------------------------
    def admit(self, key: str | None, tokens: int) -> Reservation:
        """Reserve the KV cache a request of `tokens` (prompt + max_tokens) can grow to.

        Kept sessions and running requests together stay under `kv_budget_bytes`: idle sessions are evicted
        (least recently used first) to make room; when running requests hold the memory, KVBudgetExceeded.
        The requester's own session is not counted twice: its cache is what the reservation covers."""
        probe = self.model.decoder
        with self._lru:
            own = self._slots.get(key) if key is not None else None
            dec = own.decoder if own is not None else probe
            need = probe.kv_bytes_for(dec.capacity_for(tokens, fresh=own is None))
            budget = self.kv_budget_bytes
            if budget is not None:
                if need > budget:
                    raise KVRequestTooLarge(f"this request can grow to {tokens} tokens, {need / 2**20:.0f} MiB of KV "
                                            f"cache; the server's KV budget is {budget / 2**20:.0f} MiB: shorten the "
                                            "prompt or max_tokens")
                while self._held(own) + self._inflight + need > budget:
                    victim = next((k for k, sl in self._slots.items() if sl is not own and not sl.lock.locked()), None)
                    if victim is None:
                        raise KVBudgetExceeded(f"the KV budget ({budget / 2**20:.0f} MiB) is held by running requests; "
                                               "retry shortly")
                    del self._slots[victim]
                    self.evictions += 1
            self._inflight += need
        return Reservation(self, need)

    def _held(self, own: _Slot | None) -> int:
        # a session in use is covered by its request's reservation (which is >= its current cache)
        return sum(sl.decoder.kv_bytes for sl in self._slots.values() if sl is not own and not sl.lock.locked())

    def kv_bytes(self) -> int:
        """Bytes held by kept sessions plus those admitted to running requests."""
        with self._lru:
            return self._held(None) + self._inflight

    # -- structured output ---------------------------------------------------------------------------------
    def constraint(self, schema: dict) -> TokenConstraint:
        """A fresh matcher of the JSON `schema` over this model's vocabulary (GrammarError if it cannot be built).

        Blocks for ~1 s on first use (the tokenizer's token trie); call it off the event loop.
        """
        try:
            import llguidance
        except ImportError as e:
            raise StructuredOutputUnavailable(
                "structured output (response_format) needs the llguidance package on the server: "
                "pip install 'cogenesis-edge[cloud]'") from e
        with self._grammar_lock:
            if self._grammar_tokenizer is None:
                self._grammar_tokenizer = llguidance.LLTokenizer(
                    self.model.tokenizer.to_str(), n_vocab=self.vocab_size, eos_token=sorted(self.model.stop_ids))
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        except ValueError as e:
            raise GrammarError(str(e)) from None
        matcher = llguidance.LLMatcher(self._grammar_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return TokenConstraint(matcher, self.vocab_size)

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
        """`decode_n_tokens` (the runtime's one decode loop) with the grammar mask as a processor; events carry
        the token's log-probs (of the unmasked distribution, as vLLM reports them) and the stop reason."""
        if req.max_tokens <= 0:
            yield RunEvent(finish_reason="length")
            return
        assert logits is not None
        sampler = Sampler(req.sampling)
        con = req.constraint
        raw: list[np.ndarray] = [logits]  # the unmasked logits of the current step

        def forward(ids: list[int]) -> np.ndarray:
            raw[0] = self._forward(dec, ids, 1)[-1]
            info.computed_tokens += 1
            return raw[0]

        processors = [lambda lg, _reply: con.mask(lg)] if con is not None else []
        for step in decode_n_tokens(forward, logits, lambda _, lg: sampler(lg), req.max_tokens, req.stop_ids,
                                    processors):
            event = self._event(step, raw[0], req, info)
            yield event
            if event.finish_reason is not None:
                return
            if con is not None and con.done:  # the grammar is complete and admits nothing more
                yield RunEvent(finish_reason="stop")
                return
        yield RunEvent(finish_reason="length")

    def _event(self, step: Step, raw: np.ndarray, req: RunRequest, info: RunInfo) -> RunEvent:
        """The event of one decided token; a finish event for a stop token, a stop string or a complete grammar."""
        tok, con, out = step.token, req.constraint, info.completion_ids
        if step.stop:
            return RunEvent(finish_reason="stop", stop_reason=tok)
        lp = top_logprobs(raw[None], req.logprobs, np.asarray([tok]))[0] if req.logprobs is not None else None
        if con is not None:
            con.advance(tok)
        out.append(tok)
        if lp is not None:
            info.completion_logprobs.append(lp)
        if req.stop:  # checked before the token is announced, so a stream never shows the stop string
            max_stop = max(len(s) for s in req.stop)
            tail = self.model.tokenizer.decode(out[-(max_stop + 8):], skip_special_tokens=True)
            hit = next((s for s in req.stop if s in tail), None)
            if hit is not None:
                return RunEvent(finish_reason="stop", stop_reason=hit)
        return RunEvent(token=tok, logprobs=lp)


JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is laid out: json.dumps's one-line style. No free whitespace, so a small model cannot
stall in an endless run of newlines; a schema's own "x-guidance" options override this."""


class GrammarError(ValueError):
    """A JSON schema that the grammar compiler rejects (the message says why)."""


class StructuredOutputUnavailable(RuntimeError):
    """Structured output was asked for but llguidance is not installed."""


class TokenConstraint:
    """One request's grammar state: the allowed-token mask before sampling, advanced by each sampled token."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` [vocab] with the tokens the grammar forbids at -inf."""
        if self.matcher.is_error():
            raise RuntimeError(f"structured output: the grammar matcher failed: {self.matcher.get_error()}")
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        words = self._bits.astype("<u4")  # bit i of word w allows token 32 * w + i
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[: logits.shape[-1]].astype(bool)
        if not allowed.any():
            raise RuntimeError("structured output: the grammar allows no token here")
        return np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"structured output: token {token} rejected by the grammar: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete and accepts no further token (only EOS)."""
        return self.matcher.is_stopped()


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
