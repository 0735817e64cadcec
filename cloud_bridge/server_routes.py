"""The reference server's endpoints, one function each; `add_routes` puts them (and the error handlers) on an app.

Each endpoint finds its app's `State` on ``request.app.state.cogenesis`` (set by `create_app`).
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .server_engine import Engine, Reservation, RunInfo, RunRequest
from .server_parse import constraint, limit, parse_body, run_request, session_key, token_ids
from .server_protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .server_responses import (
    caps,
    chat_choice,
    completion_choice,
    json_response,
    prompt_logprobs_json,
    usage,
    usage_log,
)
from .server_run import admit, collect, sse, stream
from .server_state import ApiError, State, log, note, state_of


def add_routes(app: FastAPI) -> None:
    """Register the error handlers and every endpoint on `app`."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(Exception, crash)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    note(request, error=exc.message)
    return exc.response()


async def crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed")
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").response()


async def health(request: Request) -> dict:
    st = state_of(request)
    return {"status": "ok", "model": st.model_name, "cogenesis": caps(st)}


async def models(request: Request) -> dict:
    st = state_of(request)
    card = {"id": st.model_name, "object": "model", "created": int(time.time()), "owned_by": "cogenesis",
            "root": st.model_name, "parent": None, "max_model_len": st.engine.max_model_len, "cogenesis": caps(st)}
    return {"object": "list", "data": [card]}


async def metrics(request: Request) -> dict:
    st = state_of(request)
    eng = st.engine
    return {**st.metrics, "sessions": eng.session_count(), "evictions": eng.evictions,
            "kv_bytes": eng.kv_bytes(), "kv_budget_bytes": eng.kv_budget_bytes}


async def tokenize(request: Request) -> dict:
    st = state_of(request)
    eng = st.engine
    body = await parse_body(request, st, TokenizeRequest)
    if body.messages is not None:
        ids = eng.model.encode([{"role": m.role, "content": m.text()} for m in body.messages])
    elif body.prompt is not None:
        ids = eng.model.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
    else:
        raise ApiError(400, "send 'prompt' (a string) or 'messages'", "prompt")
    return {"count": len(ids), "max_model_len": eng.max_model_len, "tokens": ids}


async def detokenize(request: Request) -> dict:
    st = state_of(request)
    eng = st.engine
    body = await parse_body(request, st, DetokenizeRequest)
    return {"prompt": eng.model.tokenizer.decode(token_ids(body.tokens, eng, "tokens"), skip_special_tokens=False)}


async def completions(request: Request) -> Response:
    st = state_of(request)
    eng, cfg = st.engine, st.settings
    body = await parse_body(request, st, CompletionRequest)
    ids = _prompt_ids(body, eng)
    echo = body.echo
    k_gen = limit(body.logprobs, "logprobs", cfg.max_logprobs)
    req, k_pl, pl_start = run_request(body, ids, st, default_max=16, k_gen=k_gen, echo_k=k_gen if echo else None)
    key, res = await _admit(request, st, body, req)
    created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex}"
    if body.stream:
        return sse(stream(st, request, key, req, rid, created, "text_completion", body, res,
                          prefix=eng.model.decode(ids) if echo else ""), res)
    info, finish, reason = await _collect(request, st, key, req, res)
    choice = completion_choice(info, finish, reason, eng, ids=ids, echo=echo, k_gen=k_gen,
                               as_ids=body.return_tokens_as_token_ids, k_pl=k_pl, pl_start=pl_start)
    return json_response({"id": rid, "object": "text_completion", "created": created, "model": st.model_name,
                          "choices": [choice], "usage": usage(info)})


async def _admit(request: Request, st: State, body, req: RunRequest) -> tuple[str | None, Reservation]:
    """The grammar constraint, the session key (noted in the log) and a KV reservation for one request."""
    req.constraint = await constraint(body, st.engine)
    key = session_key(request, body)
    note(request, session=key)
    return key, await admit(st, key, req)


async def _collect(request: Request, st: State, key: str | None, req: RunRequest,
                   res: Reservation) -> tuple[RunInfo, str, str | int | None]:
    """Run a non-streamed request to the end in a worker thread; its usage goes to the log line."""
    info, finish, reason = await run_in_threadpool(collect, st, key, req, res)
    note(request, **usage_log(info))
    return info, finish, reason


def _prompt_ids(body: CompletionRequest, eng: Engine) -> list[int]:
    """The prompt's token ids: text encoded with the bundle's tokenizer, or ids checked against the vocabulary."""
    prompt = body.single_prompt()
    if isinstance(prompt, str):
        return eng.model.tokenizer.encode(prompt, add_special_tokens=body.add_special_tokens).ids
    return token_ids(prompt, eng, "prompt")


async def chat(request: Request) -> Response:
    st = state_of(request)
    eng, cfg = st.engine, st.settings
    body = await parse_body(request, st, ChatCompletionRequest)
    text = eng.model.render(body.plain_messages(), add_generation_prompt=body.add_generation_prompt)
    ids = eng.model.tokenizer.encode(text, add_special_tokens=False).ids
    k_gen = (limit(body.top_logprobs, "top_logprobs", cfg.max_logprobs) or 0) if body.logprobs else None
    if body.max_tokens is None and body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    req, k_pl, pl_start = run_request(body, ids, st, default_max=cfg.default_chat_max_tokens, k_gen=k_gen)
    key, res = await _admit(request, st, body, req)
    created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        return sse(stream(st, request, key, req, rid, created, "chat.completion.chunk", body, res), res)
    info, finish, reason = await _collect(request, st, key, req, res)
    choice = chat_choice(info, finish, reason, eng, k_gen=k_gen, as_ids=body.return_tokens_as_token_ids)
    return json_response({"id": rid, "object": "chat.completion", "created": created, "model": st.model_name,
                          "choices": [choice], "usage": usage(info),
                          "prompt_logprobs": prompt_logprobs_json(info, k_pl, pl_start, eng) if k_pl is not None
                          else None})
