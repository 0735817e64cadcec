"""Bridge client: the edge's only way to the cloud (an OpenAI-compatible server: ours or vLLM).

Every request body goes through ``guard.inspect(endpoint, body)`` first (strict mode raises
`PrivacyViolation` and nothing is sent) and the bytes sent are exactly ``encode_body(body)``, so the audit
log's sha256 is the hash of what went on the wire. Token-id prompts are scanned through ``detokenize``.

Errors are `CloudError` subclasses that name the URL and the fix; 429, 5xx and timeouts are retried
(``retries`` times, exponential ``backoff``, honouring Retry-After), nothing else is.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import requests

from cogenesis.core.cloud_prompts import parse_outline, sketch_request
from cogenesis.core.paths import API_KEY_ENV, SESSION_HEADER

from .guard import EgressGuard, encode_body
from .http import (  # noqa: F401  (the errors are part of the client's API)
    MAX_RETRY_AFTER_S,
    CloudAuthError,
    CloudBadRequestError,
    CloudConnectionError,
    CloudError,
    CloudNotFoundError,
    CloudPayloadTooLargeError,
    CloudProtocolError,
    CloudRateLimitError,
    CloudServerError,
    CloudTimeoutError,
    Transport,
    normalize_base_url,
    parse_object,
)


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    usage: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


class VocabularyMismatch(ValueError):
    """The cloud numbers tokens differently from the device: token-id fusion would be garbage. Not a
    `CloudError` on purpose: a session does not quietly fall back, it stops with this message."""


class CloudClient:
    """HTTP client for an OpenAI-compatible cloud (vLLM extensions used: prompt_logprobs, return_tokens_as_token_ids).

    `guard`: the EgressGuard every body passes (default: a strict guard with no private context, which still
    blocks e-mails, phone and card numbers...; `cogenesis.cogen.write` swaps in one that knows the context).
    `detokenize`: ids -> text, for scanning token-id prompts (set on the guard when it has none).
    `timeout`: (connect, read) seconds, per read; `deadline_s`: the whole request, retries and the slow arrival
    of an answer included (None: no deadline). `session_id`: sent as X-Session-Id so the server can reuse its KV
    cache for this client's growing prefix (default: a random id per client; "" sends none).
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 guard: EgressGuard | None = None, timeout: tuple[float, float] | float = (3.05, 60.0),
                 retries: int = 2, backoff: float = 0.5, session_id: str | None = None,
                 detokenize: Callable[[list[int]], str] | None = None, http: requests.Session | None = None,
                 deadline_s: float | None = 120.0):
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.model = model
        self.default_guard = guard is None
        self.guard = guard if guard is not None else EgressGuard(None, mode="strict", detokenize=detokenize)
        if detokenize is not None and self.guard.detokenize is None:
            self.guard.detokenize = detokenize
        self.transport = Transport(self.base_url, self.api_key, timeout=timeout, retries=retries, backoff=backoff,
                                   deadline_s=deadline_s, http=http)
        self.session_id = uuid.uuid4().hex if session_id is None else session_id
        self.requests_sent = 0  # HTTP attempts that left (retries included)
        self.bytes_sent = 0
        self._caps: dict | None = None
        self._vocab_checked: str | None = None  # the device fingerprint the cloud was verified against
        self._vocab_how = ""

    # -- plumbing ------------------------------------------------------------------------------------------
    def with_guard(self, guard: EgressGuard) -> CloudClient:
        """A client sharing this one's connection, settings and session id but inspecting with `guard`."""
        c = CloudClient.__new__(CloudClient)
        c.__dict__.update(self.__dict__)
        c.guard, c.default_guard = guard, False
        if guard.detokenize is None and self.guard.detokenize is not None:
            guard.detokenize = self.guard.detokenize
        c._parent = self
        return c

    def _bump(self, n_bytes: int) -> None:
        c = self
        while c is not None:  # counters are kept on the client and every client it was derived from
            c.requests_sent += 1
            c.bytes_sent += n_bytes
            c = c.__dict__.get("_parent")

    @property
    def http(self) -> requests.Session:
        """The HTTP session requests go through (the transport's)."""
        return self.transport.http

    def _session_headers(self) -> dict:
        return {SESSION_HEADER: self.session_id} if self.session_id else {}

    def request(self, method: str, path: str, body: dict | None = None, parse: bool = True) -> dict | None:
        """Inspect `body` with the guard, send exactly its bytes, retry 429/5xx/timeouts, return the JSON.
        The whole call (retries and the reading of every answer) ends by ``deadline_s``."""
        self.guard.inspect(path, body if body is not None else b"")  # raises PrivacyViolation: nothing is sent
        raw = encode_body(body) if body is not None else None
        r = self.transport.send(method, path, raw, self._session_headers(), on_attempt=self._bump)
        return parse_object(r, self.base_url + path) if parse else None

    # -- server facts ----------------------------------------------------------------------------------------
    def health(self) -> dict:
        """GET /health: {"ok": True, ...the server's JSON if any} (vLLM answers an empty 200). Not retried."""
        self.guard.inspect("/health", b"")
        r = self.transport.send("GET", "/health", None, self._session_headers(), retries=0, on_attempt=self._bump)
        try:
            extra = r.json() if r.content else {}
        except ValueError:
            extra = {}
        return {"ok": True, **(extra if isinstance(extra, dict) else {})}

    def capabilities(self) -> dict:
        """The served model card from GET /v1/models (cached): id, max_model_len, `cogenesis` extensions."""
        if self._caps is None:
            data = self.request("GET", "/v1/models")
            cards = data.get("data") if data else None
            if not isinstance(cards, list) or not cards or not isinstance(cards[0], dict) or "id" not in cards[0]:
                raise CloudProtocolError("GET /v1/models listed no model", self.base_url + "/v1/models", 200,
                                         "check that the server serves a model")
            card = next((c for c in cards if c.get("id") == self.model), cards[0]) if self.model else cards[0]
            self._caps = card
            if self.model is None:
                self.model = card["id"]
        return self._caps

    def supports(self, extension: str) -> bool:
        ext = (self.capabilities().get("cogenesis") or {}).get("extensions") or []
        return extension in ext

    def check_vocab(self, tokenizer) -> str:
        """Raise `VocabularyMismatch` unless the served model uses ``tokenizer``'s vocabulary; returns how it
        was checked: ``"fingerprint"`` (``cogenesis.vocab_fingerprint`` in GET /v1/models, our server) or
        ``"probe"`` (a fixed public text through POST /tokenize, vLLM). Cached per client."""
        from cogenesis.runtime.vocab import PROBE, probe_ids, vocab_fingerprint

        local = vocab_fingerprint(tokenizer)
        if self._vocab_checked == local:
            return self._vocab_how
        card = self.capabilities()
        remote = (card.get("cogenesis") or {}).get("vocab_fingerprint")
        fix = ("serve a model with the device's tokenizer (the same family, e.g. a larger Qwen2.5 for a Qwen2.5 "
               "device), or use --mode sketch, which sends text only, or --cross-tokenizer, which fuses through "
               "the tokens' text")
        if remote is not None:
            how = "fingerprint"
            if remote != local:
                raise VocabularyMismatch(f"the cloud model {card.get('id')!r} has vocabulary {remote}, the device "
                                         f"{local}: token-id fusion would fuse unrelated tokens; {fix}")
        else:
            how = "probe"
            try:
                theirs = self.tokenize(PROBE)
            except CloudError as e:
                raise VocabularyMismatch(f"cannot verify the cloud's vocabulary: {card.get('id')!r} publishes no "
                                         f"vocab_fingerprint and POST /tokenize failed ({e}); {fix}") from e
            if theirs != probe_ids(tokenizer):
                raise VocabularyMismatch(f"the cloud model {card.get('id')!r} tokenizes a probe text differently "
                                         f"from the device ({len(theirs)} vs {len(probe_ids(tokenizer))} tokens): "
                                         f"token-id fusion would fuse unrelated tokens; {fix}")
        self._vocab_checked, self._vocab_how = local, how
        return how

    def _model(self) -> str:
        if self.model is None:
            self.capabilities()
        return self.model  # type: ignore[return-value]

    def _post(self, path: str, body: dict) -> dict:
        """POST a body that needs the model name; a body the strict guard would refuse is refused before
        anything (even GET /v1/models) is sent."""
        if self.model is None and self.guard.mode == "strict" and self.guard.scan_body(body):
            self.guard.inspect(path, body)  # records the refusal and raises PrivacyViolation
        data = self.request("POST", path, {"model": self._model(), **body})
        return data or {}

    # -- API -----------------------------------------------------------------------------------------------
    def complete(self, prompt: str | Sequence[int], max_tokens: int = 16, temperature: float = 0.0,
                 **extra) -> Completion:
        """POST /v1/completions with a text or token-id prompt; `extra` fields go in the body as they are."""
        p = prompt if isinstance(prompt, str) else [int(t) for t in prompt]
        body = {"prompt": p, "max_tokens": max_tokens, "temperature": temperature, **extra}
        data = self._post("/v1/completions", body)
        ch = _choice(data, self.base_url + "/v1/completions")
        return Completion(str(ch.get("text", "")), ch.get("finish_reason"), data.get("usage") or {}, data)

    def chat(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0, **extra) -> Completion:
        """POST /v1/chat/completions (non-streaming)."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}
        url = self.base_url + "/v1/chat/completions"
        data = self._post("/v1/chat/completions", body)
        msg = _choice(data, url).get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), (str, type(None))):
            raise CloudProtocolError("the chat answer has no message content", url, 200, "use a chat-capable server")
        return Completion(msg.get("content") or "", _choice(data, url).get("finish_reason"), data.get("usage") or {},
                          data)

    def sketch(self, instruction: str, max_tokens: int = 320, temperature: float = 0.0, min_points: int = 8,
               max_points: int = 15, **extra) -> list[str]:
        """An outline of the answer from the cloud: `sketch_request(instruction)` -> at most `max_points` points.

        Send only text that may leave the device (`cogenesis.cogen.write` sanitizes the instruction first)."""
        c = self.chat(sketch_request(instruction, min_points, max_points), max_tokens=max_tokens,
                      temperature=temperature, **extra)
        points = parse_outline(c.text)[:max_points]
        if not points:
            raise CloudProtocolError(f"the cloud returned no outline ({c.text[:80]!r})",
                                     self.base_url + "/v1/chat/completions", 200, "try another cloud model")
        return points

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """POST /tokenize (vLLM): the server's token ids for `text` (the text is sent: it passes the guard)."""
        data = self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})
        ids = data.get("tokens") if data else None
        if not isinstance(ids, list):
            raise CloudProtocolError("/tokenize answered no 'tokens'", self.base_url + "/tokenize", 200,
                                     "use vLLM or cogenesis cloud serve")
        return [int(t) for t in ids]

    def detokenize(self, ids: Sequence[int]) -> str:
        data = self._post("/detokenize", {"tokens": [int(t) for t in ids]})
        return str(data.get("prompt", ""))

    def next_token_logprobs(self, prefix_ids: Sequence[int], draft_ids: Sequence[int] = (), k: int = 20,
                            include_tokens: bool = False) -> list[dict[int, float]]:
        """The cloud's top-k logprobs predicting each draft token, then the token after the last one.

        One request: prompt = prefix + drafts, `prompt_logprobs=k` (from the first draft position when the
        server advertises `prompt_logprobs_start`), `max_tokens=1`, `logprobs=k`, temperature 0, token ids as
        "token_id:N". Returns len(draft_ids) + 1 dicts {token id: logprob}; `include_tokens` adds each draft
        token's own logprob when it is outside the top-k."""
        prefix, draft = [int(t) for t in prefix_ids], [int(t) for t in draft_ids]
        if not prefix:
            raise ValueError("prefix_ids is empty")
        ids, start = prefix + draft, len(prefix)
        # ignore_eos: a cloud whose next token is EOS still "generates" it, so its top_logprobs arrive (EOS
        # included) instead of an empty list: the end of a reply is data, not a protocol error
        body: dict = {"prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": k,
                      "return_tokens_as_token_ids": True, "ignore_eos": True}
        if draft:
            body["prompt_logprobs"] = k
            if self._caps is None and self.guard.mode == "strict" and self.guard.scan_body(body):
                self.guard.inspect("/v1/completions", body)  # refused before anything (even /v1/models) is sent
            if self.supports("prompt_logprobs_start"):
                body["prompt_logprobs_start"] = start
        url = self.base_url + "/v1/completions"
        data = self._post("/v1/completions", body)
        ch = _choice(data, url)
        out: list[dict[int, float]] = []
        if draft:
            pl = ch.get("prompt_logprobs") or data.get("prompt_logprobs")
            if not isinstance(pl, list) or len(pl) != len(ids):
                raise CloudProtocolError(f"expected prompt_logprobs for {len(ids)} positions", url, 200,
                                         "serve with vLLM >= 0.5 (prompt_logprobs) or cogenesis cloud serve")
            for j in range(start, len(ids)):
                entry = pl[j]
                if not isinstance(entry, dict):
                    raise CloudProtocolError(f"prompt_logprobs[{j}] is missing", url, 200, "check the server")
                d = {}
                for tid, v in entry.items():
                    lp, rank = (v.get("logprob"), v.get("rank")) if isinstance(v, dict) else (v, None)
                    if rank is None or rank <= k or (include_tokens and int(tid) == ids[j]):
                        d[int(tid)] = _finite(lp, url)
                out.append(dict(sorted(d.items(), key=lambda kv: -kv[1])))
        lps = ch.get("logprobs") or {}
        tops = lps.get("top_logprobs") if isinstance(lps, dict) else None
        if isinstance(tops, list) and not tops and ch.get("finish_reason") == "stop":
            out.append({})  # a server that ignores ignore_eos stopped at EOS: no cloud view of this step
            return out
        if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict):
            raise CloudProtocolError("the answer has no top_logprobs for the next token", url, 200,
                                     "the server must support 'logprobs' on /v1/completions")
        out.append(_token_id_keys(tops[0], k, url))
        return out

    def top_logprobs(self, prefix_text: str, k: int = 20) -> dict[str, float]:
        """The cloud's top-k next tokens after `prefix_text`, keyed by their text (any OpenAI-compatible server,
        any tokenizer): the string-keyed view `cogenesis.cogen.logits.MappedCloud` maps onto the device's
        vocabulary. One POST /v1/completions, max_tokens=1, logprobs=k; the text passes the guard like any body.
        Reads the completions format (`top_logprobs: [{text: lp}]`, vLLM, OpenAI, our server) and the chat-style
        one (`content: [{top_logprobs: [{token, logprob}]}]`, llama.cpp's llama-server)."""
        url = self.base_url + "/v1/completions"
        data = self._post("/v1/completions", {"prompt": prefix_text, "max_tokens": 1, "temperature": 0,
                                              "logprobs": k, "ignore_eos": True})
        lps = _choice(data, url).get("logprobs")
        tops = lps.get("top_logprobs") if isinstance(lps, dict) else None
        if isinstance(tops, list) and tops and isinstance(tops[0], dict):
            pairs = list(tops[0].items())
        else:
            content = lps.get("content") if isinstance(lps, dict) else None
            first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else {}
            cands = first.get("top_logprobs")
            if not isinstance(cands, list) or not cands:
                raise CloudProtocolError("the answer has no top_logprobs for the next token", url, 200,
                                         "the server must support 'logprobs' on /v1/completions")
            pairs = [(c.get("token"), c.get("logprob")) for c in cands if isinstance(c, dict)]
        out: dict[str, float] = {}
        for tok, lp in pairs:
            if not isinstance(tok, str):
                raise CloudProtocolError(f"top_logprobs token {tok!r} is not a string", url, 200, "check the server")
            v = _finite(lp, url)
            out[tok] = max(v, out.get(tok, -math.inf))
        return dict(sorted(out.items(), key=lambda kv: -kv[1])[:k])

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- helpers -----------------------------------------------------------------------------------------------


def _token_id_keys(top: dict, k: int, url: str) -> dict[int, float]:
    out = {}
    for key, lp in top.items():
        if not isinstance(key, str) or not key.startswith("token_id:"):
            raise CloudProtocolError(f"top_logprobs key {key!r} is not 'token_id:N'", url, 200,
                                     "the server must support return_tokens_as_token_ids (vLLM >= 0.5.1)")
        out[int(key[9:])] = _finite(lp, url)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:k])


def _finite(lp: object, url: str) -> float:
    """A log-probability as float; NaN, infinities, positive values and non-numbers are a protocol error (they
    would poison the fused distribution)."""
    try:
        v = float(lp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v > 1e-6:
        raise CloudProtocolError(f"logprob {lp!r} is not a finite log-probability", url, 200, "check the server")
    return v


def _choice(data: dict | None, url: str) -> dict:
    ch = (data or {}).get("choices")
    if not isinstance(ch, list) or not ch or not isinstance(ch[0], dict):
        raise CloudProtocolError("the answer has no choices", url, 200, "point base_url at an OpenAI-compatible server")
    return ch[0]


