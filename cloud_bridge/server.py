"""Reference cloud server: the OpenAI-compatible subset (with vLLM's extensions) that the edge talks to.

Runs a bundle through the project runtime, so tests, benchmarks and demos need no GPU and no vLLM, and the
edge code is written against the same wire format vLLM serves (docs/vllm.md). Endpoints:

* ``POST /v1/completions``: ``prompt`` as text or token ids, ``max_tokens`` (0 with ``echo`` or
  ``prompt_logprobs`` = scoring only), ``logprobs`` (top-k of generated tokens), ``echo``, ``stop``,
  ``temperature``/``top_p``/``top_k``/``seed``, vLLM's ``prompt_logprobs=k`` (at every prompt position, the
  first null: ``{"<id>": {"logprob", "rank", "decoded_token"}}`` with the top-k and the prompt token itself),
  vLLM's ``return_tokens_as_token_ids`` ("token_id:123"), ``stream``.
* ``POST /v1/chat/completions``: ``messages`` rendered with the bundle's chat template; ``logprobs``/
  ``top_logprobs``, ``prompt_logprobs``, ``stream``.
* Both: ``response_format`` = ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` or
  ``{"type": "json_object"}`` (or ``"text"``), enforced while decoding by a grammar (llguidance) over the
  model's tokens: the output always parses and matches the schema, unless ``max_tokens`` cuts it short
  (``finish_reason`` "length"). JSON comes on one line (``json.dumps`` style); a bad ``response_format`` -> 400.
* ``POST /tokenize``, ``POST /detokenize``, ``GET /v1/models``, ``GET /health`` (no auth), ``GET /metrics``.

Extensions (advertised in ``/health`` and ``/v1/models`` under ``cogenesis.extensions``; clients use them only
when advertised): ``prompt_logprobs_start`` (only positions >= start get prompt logprobs, earlier ones are
null, so block fusion scores just its last few tokens and the session's cached prefix is reused), and
``session_prefix_cache`` (requests with the same ``X-Session-Id`` header, or ``user`` field, reuse the longest
common token prefix of the previous request; ``usage.prompt_tokens_details.cached_tokens`` says how much).

Operations: Bearer-token auth (``--allow-unauthenticated`` only on loopback), request bodies over
``max_body_bytes`` -> 413, limits on ``max_tokens``/k/positions -> 400 naming the limit, per-session locks,
``simulate_rtt_ms`` latency, fault injection (``500``, ``429``, ``garbage`` = 200 with invalid JSON, ``nan`` = 200
with NaN/Infinity log-probabilities on /v1/completions, ``stall`` =
no answer for ``stall_s``), one JSON log line per request (logger ``cogenesis.cloud.server``) and
``capture``: every request's exact body bytes (base64, with method, path and headers; the Authorization header
redacted) appended to a JSONL file, read back with `read_capture`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from cogenesis.cloud_bridge.settings import FAULTS, ServerSettings
from cogenesis.runtime import EdgeModel
from cogenesis.runtime.sampling import SamplingConfig
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from cogenesis.core.paths import API_KEY_ENV, SESSION_HEADER

from .server_engine import (
    Engine,
    GrammarError,
    KVBudgetExceeded,
    KVRequestTooLarge,
    Reservation,
    RunInfo,
    RunRequest,
    StructuredOutputUnavailable,
    TopLogprobs,
)
from .server_protocol import (
    RESPONSE_FORMATS,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerationRequest,
    TokenizeRequest,
    ValidationError,
    describe,
)

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("cogenesis.cloud.server")

EXTENSIONS = ("prompt_logprobs_start", "session_prefix_cache")
_OPEN_PATHS = {"/health"}


class ApiError(Exception):
    """An error answered as OpenAI-style JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers

    def response(self, headers: dict | None = None) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=headers or self.headers)


@dataclass
class _State:
    settings: ServerSettings
    engine: Engine
    model_name: str
    recent: deque = field(default_factory=lambda: deque(maxlen=2000))  # the structured log lines, newest last
    metrics: Counter = field(default_factory=Counter)
    capture_lock: threading.Lock = field(default_factory=threading.Lock)
    faults_left: int | None = None


# ---- app -----------------------------------------------------------------------------------------------------


def create_app(model: str | Path | EdgeModel, api_key: str | None = None, allow_unauthenticated: bool = False,
               simulate_rtt_ms: float = 0, fault: str | None = None, *, threads: int | None = None,
               **settings) -> FastAPI:
    """The FastAPI app over a bundle directory (or an already loaded EdgeModel, whose session is shared).

    Keyword settings: see `ServerSettings` (capture, fault_count, stall_s, max_* limits, served_model_name).
    """
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not api_key and not allow_unauthenticated:
        raise ValueError(f"the cloud server needs an API key: pass api_key / --api-key KEY (or set {API_KEY_ENV}), "
                         "or allow_unauthenticated / --allow-unauthenticated on a loopback address")
    if fault is not None and str(fault) not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}; got {fault!r}")
    cfg = ServerSettings(api_key=api_key, allow_unauthenticated=allow_unauthenticated,
                         simulate_rtt_ms=float(simulate_rtt_ms), fault=None if fault is None else str(fault), **settings)
    if isinstance(model, EdgeModel):
        edge = model
    else:
        from cogenesis.runtime import load

        edge = load(model, threads=threads)
    engine = Engine(edge, max_sessions=cfg.max_sessions, max_parallel=cfg.max_parallel,
                    kv_budget_bytes=None if cfg.kv_budget_mb is None else int(cfg.kv_budget_mb * 2**20))
    cfg.max_prompt_tokens = min(cfg.max_prompt_tokens, engine.max_model_len - 1)
    name = cfg.served_model_name or edge.manifest["model"].get("name") or edge.path.name
    state = _State(cfg, engine, name, faults_left=cfg.fault_count)
    app = FastAPI(title="CoGenesis reference cloud server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cogenesis = state
    app.add_middleware(_Gate, state=state)
    if cfg.cors_origins:  # added last = outermost: answers preflights before auth, as browsers require
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-session-id"])
    _routes(app, state)
    return app


def _routes(app: FastAPI, st: _State) -> None:
    eng, cfg = st.engine, st.settings

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        _note(request, error=exc.message)
        return exc.response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").response()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": st.model_name, "cogenesis": _caps(st)}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": st.model_name, "object": "model", "created": int(time.time()), "owned_by": "cogenesis",
                "root": st.model_name, "parent": None, "max_model_len": eng.max_model_len, "cogenesis": _caps(st)}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {**st.metrics, "sessions": eng.session_count(), "evictions": eng.evictions,
                "kv_bytes": eng.kv_bytes(), "kv_budget_bytes": eng.kv_budget_bytes}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await _body(request, st, TokenizeRequest)
        if body.messages is not None:
            ids = eng.model.encode([{"role": m.role, "content": m.text()} for m in body.messages])
        elif body.prompt is not None:
            ids = eng.model.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
        else:
            raise ApiError(400, "send 'prompt' (a string) or 'messages'", "prompt")
        return {"count": len(ids), "max_model_len": eng.max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        body = await _body(request, st, DetokenizeRequest)
        return {"prompt": eng.model.tokenizer.decode(_token_ids(body.tokens, eng, "tokens"), skip_special_tokens=False)}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _body(request, st, CompletionRequest)
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            ids = eng.model.tokenizer.encode(prompt, add_special_tokens=body.add_special_tokens).ids
        else:
            ids = _token_ids(prompt, eng, "prompt")
        echo = body.echo
        k_gen = _limit(body.logprobs, "logprobs", cfg.max_logprobs)
        req, k_pl, pl_start = _run_request(body, ids, st, default_max=16, k_gen=k_gen, echo_k=k_gen if echo else None)
        req.constraint = await _constraint(body, eng)
        as_ids = body.return_tokens_as_token_ids
        key = _session_key(request, body)
        _note(request, session=key)
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex}"
        res = await _admit(st, key, req)
        if body.stream:
            return _sse(_stream(st, request, key, req, rid, created, "text_completion", body, res,
                                prefix=eng.model.decode(ids) if echo else ""), res)
        info, finish, reason = await run_in_threadpool(_collect, st, key, req, res)
        _note(request, **_usage_log(info))
        text = _cut(eng.model.decode(info.completion_ids), reason)
        choice = {"index": 0, "text": (eng.model.tokenizer.decode(ids, skip_special_tokens=True) if echo else "") + text,
                  "logprobs": None, "finish_reason": finish, "stop_reason": reason if isinstance(reason, (str, int)) else None,
                  "prompt_logprobs": _prompt_lp_json(info, k_pl, pl_start, eng) if k_pl is not None else None}
        if k_gen is not None:
            choice["logprobs"] = _completion_logprobs(info, ids if echo else [], k_gen, as_ids, eng)
        return _json({"id": rid, "object": "text_completion", "created": created, "model": st.model_name,
                      "choices": [choice], "usage": _usage(info)})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _body(request, st, ChatCompletionRequest)
        text = eng.model.render(body.plain_messages(), add_generation_prompt=body.add_generation_prompt)
        ids = eng.model.tokenizer.encode(text, add_special_tokens=False).ids
        k_gen = (_limit(body.top_logprobs, "top_logprobs", cfg.max_logprobs) or 0) if body.logprobs else None
        if body.max_tokens is None and body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        req, k_pl, pl_start = _run_request(body, ids, st, default_max=cfg.default_chat_max_tokens, k_gen=k_gen)
        req.constraint = await _constraint(body, eng)
        key = _session_key(request, body)
        _note(request, session=key)
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        res = await _admit(st, key, req)
        if body.stream:
            return _sse(_stream(st, request, key, req, rid, created, "chat.completion.chunk", body, res), res)
        info, finish, reason = await run_in_threadpool(_collect, st, key, req, res)
        _note(request, **_usage_log(info))
        content = _cut(eng.model.decode(info.completion_ids), reason)
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                  "finish_reason": finish, "stop_reason": reason if isinstance(reason, (str, int)) else None}
        if k_gen is not None:
            choice["logprobs"] = {"content": _chat_logprobs(info, k_gen, body.return_tokens_as_token_ids, eng)}
        return _json({"id": rid, "object": "chat.completion", "created": created, "model": st.model_name,
                      "choices": [choice], "usage": _usage(info),
                      "prompt_logprobs": _prompt_lp_json(info, k_pl, pl_start, eng) if k_pl is not None else None})


def _caps(st: _State) -> dict:
    c = st.settings
    return {"extensions": list(EXTENSIONS), "vocab_fingerprint": st.engine.model.vocab_fingerprint, "max_logprobs": c.max_logprobs, "max_tokens": c.max_tokens,
            "max_prompt_tokens": c.max_prompt_tokens, "max_logprob_positions": c.max_logprob_positions,
            "max_body_bytes": c.max_body_bytes, "session_header": "X-Session-Id",
            "response_format": list(RESPONSE_FORMATS) if _has_llguidance() else ["text"]}


@functools.lru_cache(maxsize=1)
def _has_llguidance() -> bool:
    import importlib.util

    return importlib.util.find_spec("llguidance") is not None


# ---- request parsing -----------------------------------------------------------------------------------------


async def _body(request: Request, st: _State, protocol: type[M]) -> M:
    """The body as the endpoint's pydantic model; a body that does not fit is a 400 naming the field."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = data.get("model")
    if model not in (None, "", st.model_name):
        raise ApiError(404, f"The model `{str(model)[:200]}` does not exist; this server serves `{st.model_name}` "
                       "(GET /v1/models)", "model", kind="NotFoundError")
    try:
        return protocol.model_validate(data)
    except ValidationError as e:
        msg, param = describe(e)
        raise ApiError(400, msg, param) from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None


def _limit(v: int | None, name: str, hi: int) -> int | None:
    """A server limit on an already type-checked integer."""
    if v is not None and v > hi:
        raise ApiError(400, f"'{name}' must be between 0 and {hi} (server limit), got {v}", name)
    return v


def _token_ids(v: list[int], eng: Engine, name: str) -> list[int]:
    bad = [t for t in v if not 0 <= t < eng.vocab_size]
    if bad:
        raise ApiError(400, f"'{name}' has token ids outside the vocabulary [0, {eng.vocab_size}): {bad[:5]}", name)
    return list(v)


def _run_request(body: GenerationRequest, ids: list[int], st: _State, default_max: int, k_gen: int | None,
                 echo_k: int | None = None) -> tuple[RunRequest, int | None, int]:
    """Check the generation and scoring fields against the server's limits; returns the run, the prompt-logprobs
    k and start."""
    cfg, eng = st.settings, st.engine
    n = len(ids)
    if n > cfg.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {n} tokens; this server accepts at most {cfg.max_prompt_tokens}", "prompt")
    max_tokens = default_max if body.max_tokens is None else body.max_tokens
    if max_tokens > cfg.max_tokens:
        raise ApiError(400, f"'max_tokens' must be an integer between 0 and {cfg.max_tokens} (server limit), "
                            f"got {max_tokens!r}", "max_tokens")
    k_pl = _limit(body.prompt_logprobs, "prompt_logprobs", cfg.max_logprobs)
    start = body.prompt_logprobs_start or 0
    if start > n:
        raise ApiError(400, f"'prompt_logprobs_start' must be between 0 and {n} (the prompt's length), got {start}",
                       "prompt_logprobs_start")
    if max_tokens == 0 and echo_k is None and k_pl is None and not getattr(body, "echo", False):
        raise ApiError(400, "'max_tokens' is 0: only allowed with echo or prompt_logprobs (scoring)", "max_tokens")
    if n + max_tokens > eng.max_model_len:
        raise ApiError(400, f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the model's context of "
                            f"{eng.max_model_len} tokens", "max_tokens")
    if body.stream and k_pl is not None:
        raise ApiError(400, "prompt_logprobs is not available with stream=true", "prompt_logprobs")
    run_k, run_start = k_pl, start
    if echo_k is not None:  # echo + logprobs scores every prompt token
        run_k, run_start = max(k_pl or 0, echo_k), 0
    if run_k is not None and n - max(run_start, 1) > cfg.max_logprob_positions:
        raise ApiError(400, f"prompt logprobs asked for {n - max(run_start, 1)} positions; the limit is "
                            f"{cfg.max_logprob_positions} (use prompt_logprobs_start to ask for the last few only)",
                       "prompt_logprobs")
    top_k = 0 if body.top_k in (None, -1) else body.top_k
    top_p = 1.0 if not body.top_p else body.top_p
    temperature = 1.0 if body.temperature is None else body.temperature
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=body.seed)
    stop_ids = set() if body.ignore_eos else set(eng.model.stop_ids)
    req = RunRequest(prompt_ids=ids, max_tokens=max_tokens, sampling=sampling, prompt_logprobs=run_k,
                     prompt_logprobs_start=run_start, logprobs=k_gen, stop_ids=stop_ids | set(body.stop_token_ids or ()),
                     stop=body.stop_list())
    return req, k_pl, start


def response_schema(body: GenerationRequest) -> dict | None:
    """The JSON schema that ``response_format`` asks for (None: free text); ApiError 400 when incomplete."""
    if body.response_format is None:
        return None
    try:
        return body.response_format.schema_or_none()
    except ValueError as e:
        raise ApiError(400, f"response_format: {e}", "response_format") from None


async def _constraint(body: GenerationRequest, eng: Engine):
    """The request's grammar constraint (built off the event loop: the first one loads the token trie)."""
    schema = response_schema(body)
    if schema is None:
        return None
    try:
        return await run_in_threadpool(eng.constraint, schema)
    except GrammarError as e:
        raise ApiError(400, f"response_format: the JSON schema cannot be enforced: {e}", "response_format") from None
    except StructuredOutputUnavailable as e:
        raise ApiError(400, str(e), "response_format") from None


def _session_key(request: Request, body: GenerationRequest) -> str | None:
    key = request.headers.get(SESSION_HEADER) or body.user
    return str(key)[:200] if key else None


# ---- running -------------------------------------------------------------------------------------------------


async def _admit(st: _State, key: str | None, req: RunRequest) -> Reservation:
    """Reserve the request's KV cache, waiting up to `admit_wait_s` for running requests to free it; then 503 +
    Retry-After. The wait polls on the event loop (20 ms) so that waiting requests hold no worker thread: a thread
    per waiter could take every worker from the requests that hold the memory."""
    deadline = time.monotonic() + st.settings.admit_wait_s
    while True:
        try:
            return st.engine.admit(key, len(req.prompt_ids) + req.max_tokens)
        except KVRequestTooLarge as e:
            raise ApiError(400, str(e), "max_tokens") from None
        except KVBudgetExceeded as e:
            if time.monotonic() >= deadline:
                st.metrics["kv_budget_503"] += 1
                raise ApiError(503, str(e), kind="server_overloaded",
                               headers={"Retry-After": str(st.settings.retry_after_s)}) from None
        await asyncio.sleep(0.02)


def _collect(st: _State, key: str | None, req: RunRequest, res: Reservation) -> tuple[RunInfo, str, str | int | None]:
    info = RunInfo()
    finish, reason = "length", None
    try:
        with st.engine.session(key) as dec:
            for ev in st.engine.run(dec, req, info):
                if ev.finish_reason:
                    finish, reason = ev.finish_reason, ev.stop_reason
    finally:
        res.release()
    _count(st, info)
    return info, finish, reason


def _count(st: _State, info: RunInfo) -> None:
    m = st.metrics
    m["runs"] += 1
    m["prompt_tokens"] += info.prompt_tokens
    m["cached_tokens"] += info.cached_tokens
    m["computed_tokens"] += info.computed_tokens
    m["completion_tokens"] += len(info.completion_ids)


def _stream(st: _State, request: Request, key: str | None, req: RunRequest, rid: str, created: int, obj: str,
            body: GenerationRequest, res: Reservation, prefix: str = "") -> Iterator[str]:
    """Server-sent events; text is released once stable (no half characters, no partial stop string)."""
    eng, chat = st.engine, obj.startswith("chat")
    hold = max((len(s) for s in req.stop), default=1) - 1
    info = RunInfo()

    def chunk(text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            c = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": st.model_name,
                                      "choices": [c]}, ensure_ascii=False) + "\n\n"

    if chat:
        yield chunk(None, role=True)
    elif prefix:
        yield chunk(prefix)
    emitted = 0
    with _released(res), eng.session(key) as dec:
        for ev in eng.run(dec, req, info):
            text = eng.model.decode(info.completion_ids)
            if ev.finish_reason:
                final = _cut(text, ev.stop_reason)
                if len(final) > emitted:
                    yield chunk(final[emitted:])
                yield chunk(None, finish=ev.finish_reason)
                break
            safe = len(text) - hold - (1 if text.endswith("\ufffd") else 0)
            if safe > emitted:
                yield chunk(text[emitted:safe])
                emitted = safe
    _count(st, info)
    _note(request, **_usage_log(info))
    if body.include_usage():
        yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": st.model_name,
                                     "choices": [], "usage": _usage(info)}) + "\n\n"
    yield "data: [DONE]\n\n"


def _sse(it: Iterator[str], res: Reservation) -> StreamingResponse:
    # released when the stream ends, and after the response in any case (a client gone before the first byte)
    return StreamingResponse(it, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(res.release))


@contextmanager
def _released(res: Reservation) -> Iterator[None]:
    try:
        yield
    finally:
        res.release()


def _cut(text: str, reason: str | int | None) -> str:
    if isinstance(reason, str) and reason in text:
        return text[: text.index(reason)]
    return text


# ---- response shapes -----------------------------------------------------------------------------------------


def _json(content: dict) -> Response:
    return Response(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                    media_type="application/json")


def _usage(info: RunInfo) -> dict:
    n = len(info.completion_ids)
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": n, "total_tokens": info.prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": info.cached_tokens}}


def _usage_log(info: RunInfo) -> dict:
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": len(info.completion_ids),
            "cached_tokens": info.cached_tokens, "computed_tokens": info.computed_tokens}


def _tok(eng: Engine, tid: int, as_ids: bool) -> str:
    return f"token_id:{tid}" if as_ids else eng.piece(tid)


def _prompt_entry(t: TopLogprobs, k: int, eng: Engine) -> dict:
    out = {}
    if t.token is not None:
        out[str(t.token)] = {"logprob": t.token_logprob, "rank": t.token_rank, "decoded_token": eng.piece(t.token)}
    for r, (tid, lp) in enumerate(zip(t.ids[:k], t.logprobs[:k], strict=True), 1):
        out.setdefault(str(tid), {"logprob": lp, "rank": r, "decoded_token": eng.piece(tid)})
    return out


def _prompt_lp_json(info: RunInfo, k: int, start: int, eng: Engine) -> list:
    return [None if (t is None or p < start) else _prompt_entry(t, k, eng) for p, t in enumerate(info.prompt_logprobs)]


def _top_dict(t: TopLogprobs, k: int, as_ids: bool, eng: Engine) -> dict[str, float]:
    d = {_tok(eng, tid, as_ids): lp for tid, lp in zip(t.ids[:k], t.logprobs[:k], strict=True)}
    if t.token is not None:
        d.setdefault(_tok(eng, t.token, as_ids), t.token_logprob)
    return d


def _completion_logprobs(info: RunInfo, echo_ids: list[int], k: int, as_ids: bool, eng: Engine) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    pos = 0
    rows: list[tuple[int, TopLogprobs | None]] = [(t, info.prompt_logprobs[i] if info.prompt_logprobs else None)
                                                  for i, t in enumerate(echo_ids)]
    rows += list(zip(info.completion_ids, info.completion_logprobs, strict=False))
    for tid, t in rows:
        tokens.append(_tok(eng, tid, as_ids))
        offsets.append(pos)
        pos += len(eng.piece(tid))
        lps.append(None if t is None else t.token_logprob)
        tops.append(None if t is None else _top_dict(t, k, as_ids, eng))
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def _chat_logprobs(info: RunInfo, k: int, as_ids: bool, eng: Engine) -> list[dict]:
    out = []
    for tid, t in zip(info.completion_ids, info.completion_logprobs, strict=False):
        s = _tok(eng, tid, as_ids)
        tops = [{"token": _tok(eng, i, as_ids), "logprob": lp, "bytes": list(_tok(eng, i, as_ids).encode())}
                for i, lp in zip(t.ids[:k], t.logprobs[:k], strict=True)]
        out.append({"token": s, "logprob": t.token_logprob, "bytes": list(s.encode()), "top_logprobs": tops})
    return out


# ---- the gate: capture, size limit, auth, latency, faults, logs ----------------------------------------------


def _note(request: Request, **kv) -> None:
    """Add fields to this request's log line."""
    request.scope.setdefault("cogenesis_log", {}).update(kv)


class _Gate:
    """Pure ASGI middleware in front of every route (it sees the body bytes exactly as received)."""

    def __init__(self, app, state: _State):
        self.app, self.st = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st, cfg = self.st, self.st.settings
        t0 = time.perf_counter()
        note = scope.setdefault("cogenesis_log", {})
        status = {"code": 0}

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        path = scope.get("path", "")
        try:
            # everything that can be decided from the headers is decided before one byte of the body is read
            if not cfg.api_key and not is_loopback(str((scope.get("server") or ("",))[0])):
                raise ApiError(403, "this server runs without an API key and answers only on a loopback address; "
                                    "restart it with --api-key to serve other hosts", kind="permission_error")
            if path not in _OPEN_PATHS and not self._authorized(scope):
                await ApiError(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                               kind="authentication_error").response({"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_wrapped)
                return
            declared = _content_length(scope)
            if declared is not None and declared > cfg.max_body_bytes:
                raise ApiError(413, f"request body of {declared} bytes (Content-Length) exceeds this server's limit "
                                    f"of {cfg.max_body_bytes} bytes", kind="request_too_large")
            try:
                body, size, complete = await asyncio.wait_for(_read_body(receive, cfg.max_body_bytes),
                                                              cfg.body_timeout_s)
            except TimeoutError:
                raise ApiError(408, f"the request body did not arrive within {cfg.body_timeout_s} s",
                               kind="request_timeout") from None
            note["bytes_in"] = size
            if cfg.capture:
                self._capture(scope, body)
            if not complete:
                raise ApiError(413, f"request body of {size}+ bytes exceeds this server's limit of "
                                    f"{cfg.max_body_bytes} bytes", kind="request_too_large")
            if cfg.simulate_rtt_ms > 0:
                await asyncio.sleep(cfg.simulate_rtt_ms / 1000)
            faulty = path not in _OPEN_PATHS and (cfg.fault != "nan" or path == "/v1/completions")
            if faulty and cfg.fault and (st.faults_left is None or st.faults_left > 0):
                if st.faults_left is not None:
                    st.faults_left -= 1
                note["fault"] = cfg.fault
                st.metrics["faults"] += 1
                await self._fault(scope, receive, send_wrapped)
                return
            delivered = False

            async def replay():
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapped)
        except ApiError as e:
            note["error"] = e.message
            await e.response()(scope, receive, send_wrapped)
        finally:
            line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "method": scope.get("method"),
                    "path": path, "status": status["code"], "ms": round((time.perf_counter() - t0) * 1000, 2)}
            line.update(note)
            st.recent.append(line)
            st.metrics["requests"] += 1
            st.metrics[f"status_{status['code']}"] += 1
            log.info(json.dumps(line, ensure_ascii=False, default=str))

    def _authorized(self, scope) -> bool:
        key = self.st.settings.api_key
        if not key:
            return True
        got = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    async def _fault(self, scope, receive, send) -> None:
        f = self.st.settings.fault
        if f == "500":
            resp: Response = ApiError(500, "simulated server fault (--fault 500)", kind="server_error").response()
        elif f == "429":
            resp = ApiError(429, "simulated rate limit (--fault 429)", kind="rate_limit_error").response(
                {"Retry-After": "1"})
        elif f == "garbage":
            resp = Response(b'{"id": "cmpl-garbage", "choices": [ <html>oops', media_type="application/json")
        elif f == "nan":  # well-formed JSON whose log-probabilities are NaN / Infinity (Python's json writes them)
            lp = {"token_id:1": float("nan"), "token_id:2": float("inf"), "token_id:3": -1.0}
            body = {"id": "cmpl-nan", "object": "text_completion", "model": self.st.model_name,
                    "choices": [{"index": 0, "text": "", "finish_reason": "length",
                                 "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [float("nan")],
                                              "top_logprobs": [lp]},
                                 "prompt_logprobs": None}]}
            resp = Response(json.dumps(body).encode(), media_type="application/json")
        else:  # stall: answer only after the client has given up
            await asyncio.sleep(self.st.settings.stall_s)
            resp = ApiError(503, "simulated stall (--fault stall)", kind="server_error").response()
        await resp(scope, receive, send)

    def _capture(self, scope, body: bytes) -> None:
        headers = {}
        for k, v in scope.get("headers") or []:
            name = k.decode("latin-1").lower()
            headers[name] = "<redacted>" if name == "authorization" else v.decode("latin-1")
        rec = {"ts": time.time(), "method": scope.get("method"), "path": scope.get("path"),
               "query": scope.get("query_string", b"").decode("latin-1"), "headers": headers,
               "bytes": len(body), "body_b64": base64.b64encode(body).decode("ascii")}
        with self.st.capture_lock, open(self.st.settings.capture, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def _content_length(scope) -> int | None:
    v = dict(scope.get("headers") or []).get(b"content-length")
    return int(v) if v is not None and v.isdigit() else None


async def _read_body(receive, limit: int) -> tuple[bytes, int, bool]:
    """The request body, read until it ends or passes `limit` (then `complete` is False and reading stops)."""
    parts, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        parts.append(chunk)
        if size > limit:
            return b"".join(parts)[: limit + 1], size, False
        if not msg.get("more_body", False):
            break
    return b"".join(parts), size, True


def read_capture(path: str | Path) -> list[dict]:
    """Records of a capture file, each with `body` (the exact bytes received) decoded from base64."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["body"] = base64.b64decode(rec["body_b64"])
            out.append(rec)
    return out


# ---- serving -------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, allow_unauthenticated: bool) -> None:
    if allow_unauthenticated and not is_loopback(host):
        raise ValueError(f"--allow-unauthenticated is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}; "
                         f"set --api-key to serve on {host}")


def serve(model: str | Path | EdgeModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allow_unauthenticated: bool = False, simulate_rtt_ms: float = 0, fault: str | None = None,
          log_level: str = "info", threads: int | None = None, **settings) -> None:
    """Run the server in the foreground (blocks). One JSON line per request on stderr."""
    import uvicorn

    _check_bind(host, allow_unauthenticated)
    app = create_app(model, api_key, allow_unauthenticated, simulate_rtt_ms, fault, threads=threads, **settings)
    _setup_logging(log_level)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)


def _setup_logging(level: str) -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level.upper())


@dataclass
class RunningServer:
    """A server running in a background thread (tests, benchmarks): `url`, `app`, `stop()`."""

    url: str
    app: FastAPI
    server: object
    thread: threading.Thread

    @property
    def state(self) -> _State:
        return self.app.state.cogenesis

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start `app` on host:port (0 = a free port) in a daemon thread and wait until it accepts connections."""
    import uvicorn

    _check_bind(host, app.state.cogenesis.settings.allow_unauthenticated)
    # IPPROTO_TCP explicitly: with proto 0 asyncio does not set TCP_NODELAY, and every keep-alive request then
    # waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    real_port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=real_port, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="cogenesis-cloud")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{real_port} did not start")
        time.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{shown}:{real_port}", app, server, thread)


def settings_dict(app: FastAPI) -> dict:
    """The app's settings with the API key hidden (for diagnostics)."""
    d = asdict(app.state.cogenesis.settings)
    d["api_key"] = "<set>" if d["api_key"] else None
    return d

