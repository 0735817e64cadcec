"""Bridge client: the edge's only way to the cloud (an OpenAI-compatible server: ours or vLLM).

Every request body goes through ``guard.inspect(endpoint, body)`` first (strict mode raises
`PrivacyViolation` and nothing is sent) and the bytes sent are exactly ``encode_body(body)``, so the audit
log's sha256 is the hash of what went on the wire. Token-id prompts are scanned through ``detokenize``.

Errors are `CloudError` subclasses that name the URL and the fix; 429, 5xx and timeouts are retried
(``retries`` times, exponential ``backoff``, honouring Retry-After), nothing else is.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import requests

from cogenesis.data.prompts import parse_outline, sketch_request

from .guard import EgressGuard, encode_body

API_KEY_ENV = "COGENESIS_CLOUD_API_KEY"
SESSION_HEADER = "X-Session-Id"
MAX_RETRY_AFTER_S = 10.0


class CloudError(Exception):
    """The cloud request failed; `url`, `status` (HTTP code or None) and `fix` say where and what to do."""

    retryable = False

    def __init__(self, message: str, url: str = "", status: int | None = None, fix: str = ""):
        self.message, self.url, self.status, self.fix = message, url, status, fix
        text = f"{message} [{url}]" if url else message
        super().__init__(f"{text}; fix: {fix}" if fix else text)


class CloudAuthError(CloudError):
    """401/403: missing or wrong API key."""


class CloudNotFoundError(CloudError):
    """404: wrong base URL, endpoint not served, or unknown model name."""


class CloudBadRequestError(CloudError):
    """400/422 and other 4xx: the server rejected the request (a limit, a field it does not support)."""


class CloudPayloadTooLargeError(CloudError):
    """413: the request body is over the server's size limit."""


class CloudRateLimitError(CloudError):
    """429: too many requests (retried)."""

    retryable = True


class CloudServerError(CloudError):
    """5xx: the server failed (retried)."""

    retryable = True


class CloudTimeoutError(CloudError):
    """No answer within the read timeout, or no connection within the connect timeout (retried)."""

    retryable = True


class CloudConnectionError(CloudError):
    """Connection refused, DNS failure, reset: nothing is listening there."""


class CloudProtocolError(CloudError):
    """The answer is not the JSON the OpenAI/vLLM API specifies (garbage, missing fields, empty outline)."""


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
    blocks e-mails, phone and card numbers...; `cogenesis.write` swaps in one that knows the context).
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
        if not base_url or "://" not in base_url:
            raise ValueError(f"base_url must be like http://127.0.0.1:8000 (got {base_url!r})")
        url = base_url.rstrip("/")
        self.base_url = url[:-3] if url.endswith("/v1") else url
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.model = model
        self.default_guard = guard is None
        self.guard = guard if guard is not None else EgressGuard(None, mode="strict", detokenize=detokenize)
        if detokenize is not None and self.guard.detokenize is None:
            self.guard.detokenize = detokenize
        self.timeout = timeout
        self.deadline_s = deadline_s
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.session_id = uuid.uuid4().hex if session_id is None else session_id
        self.http = http or requests.Session()
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

    def _headers(self, has_body: bool) -> dict:
        h = {"Accept": "application/json"}
        if has_body:
            h["Content-Type"] = "application/json"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        if self.session_id:
            h[SESSION_HEADER] = self.session_id
        return h

    def request(self, method: str, path: str, body: dict | None = None, parse: bool = True) -> dict | None:
        """Inspect `body` with the guard, send exactly its bytes, retry 429/5xx/timeouts, return the JSON.
        The whole call (retries and the reading of every answer) ends by ``deadline_s``."""
        self.guard.inspect(path, body if body is not None else b"")  # raises PrivacyViolation: nothing is sent
        raw = encode_body(body) if body is not None else None
        url = self.base_url + path
        until = time.monotonic() + self.deadline_s if self.deadline_s else math.inf
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, url, raw, parse, until)
            except CloudError as e:
                if not e.retryable or attempt == self.retries or time.monotonic() >= until:
                    raise
                time.sleep(min(self._delay(e, attempt), max(until - time.monotonic(), 0.0)))
        raise AssertionError("unreachable")

    def _delay(self, e: CloudError, attempt: int) -> float:
        after = getattr(e, "retry_after", None)
        if after is not None:
            return min(after, MAX_RETRY_AFTER_S)
        return self.backoff * (2**attempt)

    def _once(self, method: str, url: str, raw: bytes | None, parse: bool, until: float = math.inf) -> dict | None:
        self._bump(len(raw or b""))
        try:
            r = self.http.request(method, url, data=raw, headers=self._headers(raw is not None), timeout=self.timeout,
                                  stream=True)
            content = _read_until(r, until, url)
        except requests.Timeout as e:
            raise CloudTimeoutError(f"no answer within {self.timeout} s (connect, read)", url, None,
                                    "check that the server is up and not overloaded, or raise timeout=") from e
        except requests.ConnectionError as e:
            raise CloudConnectionError(f"cannot connect ({_root(e)})", url, None,
                                       "start the cloud server (cogenesis cloud serve) or fix the base URL") from e
        except requests.RequestException as e:
            raise CloudConnectionError(f"request failed ({type(e).__name__}: {e})", url, None,
                                       "check the base URL") from e
        if r.status_code >= 400:
            raise _http_error(r, url)
        if not parse:
            return None
        try:
            data = json.loads(content)
        except (json.JSONDecodeError, ValueError) as e:
            raise CloudProtocolError(f"the answer is not JSON (HTTP {r.status_code}, {len(content)} bytes: "
                                     f"{content[:60]!r})", url, r.status_code,
                                     "point base_url at an OpenAI-compatible server (vLLM or cogenesis cloud serve)") from e
        if not isinstance(data, dict):
            raise CloudProtocolError(f"expected a JSON object, got {type(data).__name__}", url, r.status_code,
                                     "point base_url at an OpenAI-compatible server")
        return data

    # -- server facts ----------------------------------------------------------------------------------------
    def health(self) -> dict:
        """GET /health: {"ok": True, ...the server's JSON if any} (vLLM answers an empty 200)."""
        self.guard.inspect("/health", b"")
        url = self.base_url + "/health"
        self._bump(0)
        try:
            r = self.http.get(url, headers=self._headers(False), timeout=self.timeout)
        except requests.Timeout as e:
            raise CloudTimeoutError("no answer from /health", url, None, "check the server") from e
        except requests.ConnectionError as e:
            raise CloudConnectionError(f"cannot connect ({_root(e)})", url, None,
                                       "start the cloud server (cogenesis cloud serve) or fix the base URL") from e
        if r.status_code >= 400:
            raise _http_error(r, url)
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

        Send only text that may leave the device (`cogenesis.write` sanitizes the instruction first)."""
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
        any tokenizer): the string-keyed view `cogenesis.cogen_logits.MappedCloud` maps onto the device's
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
        self.http.close()

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


MAX_ANSWER_BYTES = 64 << 20  # a larger answer is not a completion: refuse it instead of filling memory


def _read_until(r: requests.Response, until: float, url: str) -> bytes:
    """The answer's body, read in chunks: a server that drips bytes just under the read timeout is cut off at
    the request's deadline (requests has per-read timeouts only); the body then also serves ``r.content``."""
    parts, size = [], 0
    try:
        while chunk := r.raw.read1(1 << 16):  # what arrived, at most one socket read: the deadline is checked
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise CloudProtocolError(f"the answer exceeds {MAX_ANSWER_BYTES >> 20} MiB", url, r.status_code,
                                         "check the server")
            if time.monotonic() > until:
                raise CloudTimeoutError("the answer was still arriving at the request deadline", url, r.status_code,
                                        "the server is too slow or stalling; raise deadline_s= or check it")
    finally:
        r.close()
    r._content = b"".join(parts)  # requests' own cache of the body (r.json(), r.text and _http_error read it)
    return r._content


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


def _root(e: Exception) -> str:
    s = str(e)
    for hint in ("Connection refused", "Name or service not known", "No route to host", "Connection reset"):
        if hint in s:
            return hint
    return type(e).__name__


def _http_error(r: requests.Response, url: str) -> CloudError:
    msg = ""
    try:
        j = r.json()
        err = j.get("error", j) if isinstance(j, dict) else j
        msg = err.get("message", "") if isinstance(err, dict) else str(err)
        msg = msg or (j.get("message", "") if isinstance(j, dict) else "")
    except ValueError:
        msg = r.text[:200]
    s = r.status_code
    what = f"HTTP {s}: {msg}".rstrip(": ")
    if s in (401, 403):
        return CloudAuthError(what, url, s, f"set the API key (api_key= or ${API_KEY_ENV}) to the server's --api-key")
    if s == 404:
        return CloudNotFoundError(what, url, s, "check the base URL (no /v1 needed) and the model name (GET /v1/models)")
    if s == 413:
        return CloudPayloadTooLargeError(what, url, s, "send a shorter prompt or raise the server's --max-body-bytes")
    if s == 429:
        e = CloudRateLimitError(what, url, s, "slow down or raise the server's limits")
        ra = r.headers.get("Retry-After")
        e.retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
        return e
    if s >= 500:
        return CloudServerError(what, url, s, "the server failed; retry later or check its logs")
    return CloudBadRequestError(what, url, s, "check the request fields against the server's limits (GET /v1/models)")
