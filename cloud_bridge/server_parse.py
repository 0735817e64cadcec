"""The reference server's request parsing: the body as a pydantic model, the server's limits, the run to do."""

from __future__ import annotations

import json
from typing import TypeVar

from cogenesis.runtime.sampling import SamplingConfig
from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from cogenesis.core.paths import SESSION_HEADER

from .server_engine import Engine, GrammarError, RunRequest, StructuredOutputUnavailable
from .server_protocol import GenerationRequest, ValidationError, describe
from .server_state import ApiError, State

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, st: State, protocol: type[M]) -> M:
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


def limit(v: int | None, name: str, hi: int) -> int | None:
    """A server limit on an already type-checked integer."""
    if v is not None and v > hi:
        raise ApiError(400, f"'{name}' must be between 0 and {hi} (server limit), got {v}", name)
    return v


def token_ids(v: list[int], eng: Engine, name: str) -> list[int]:
    """Token ids from a request field, each checked against the vocabulary."""
    bad = [t for t in v if not 0 <= t < eng.vocab_size]
    if bad:
        raise ApiError(400, f"'{name}' has token ids outside the vocabulary [0, {eng.vocab_size}): {bad[:5]}", name)
    return list(v)


def run_request(body: GenerationRequest, ids: list[int], st: State, default_max: int, k_gen: int | None,
                echo_k: int | None = None) -> tuple[RunRequest, int | None, int]:
    """Check the generation and scoring fields against the server's limits; returns the run, the prompt-logprobs
    k and start."""
    cfg, eng = st.settings, st.engine
    max_tokens, k_pl, start = _check_lengths(body, len(ids), st, default_max, echo_k)
    run_k, run_start = k_pl, start
    if echo_k is not None:  # echo + logprobs scores every prompt token
        run_k, run_start = max(k_pl or 0, echo_k), 0
    n = len(ids)
    if run_k is not None and n - max(run_start, 1) > cfg.max_logprob_positions:
        raise ApiError(400, f"prompt logprobs asked for {n - max(run_start, 1)} positions; the limit is "
                            f"{cfg.max_logprob_positions} (use prompt_logprobs_start to ask for the last few only)",
                       "prompt_logprobs")
    stop_ids = set() if body.ignore_eos else set(eng.model.stop_ids)
    req = RunRequest(prompt_ids=ids, max_tokens=max_tokens, sampling=_sampling(body), prompt_logprobs=run_k,
                     prompt_logprobs_start=run_start, logprobs=k_gen, stop_ids=stop_ids | set(body.stop_token_ids or ()),
                     stop=body.stop_list())
    return req, k_pl, start


def _check_lengths(body: GenerationRequest, n: int, st: State, default_max: int,
                   echo_k: int | None) -> tuple[int, int | None, int]:
    """The prompt's length, max_tokens and the prompt-logprobs fields against the limits: (max_tokens, k, start)."""
    cfg, eng = st.settings, st.engine
    if n > cfg.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {n} tokens; this server accepts at most {cfg.max_prompt_tokens}", "prompt")
    max_tokens = default_max if body.max_tokens is None else body.max_tokens
    if max_tokens > cfg.max_tokens:
        raise ApiError(400, f"'max_tokens' must be an integer between 0 and {cfg.max_tokens} (server limit), "
                            f"got {max_tokens!r}", "max_tokens")
    k_pl = limit(body.prompt_logprobs, "prompt_logprobs", cfg.max_logprobs)
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
    return max_tokens, k_pl, start


def _sampling(body: GenerationRequest) -> SamplingConfig:
    top_k = 0 if body.top_k in (None, -1) else body.top_k
    top_p = 1.0 if not body.top_p else body.top_p
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=body.seed)


def response_schema(body: GenerationRequest) -> dict | None:
    """The JSON schema that ``response_format`` asks for (None: free text); ApiError 400 when incomplete."""
    if body.response_format is None:
        return None
    try:
        return body.response_format.schema_or_none()
    except ValueError as e:
        raise ApiError(400, f"response_format: {e}", "response_format") from None


async def constraint(body: GenerationRequest, eng: Engine):
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


def session_key(request: Request, body: GenerationRequest) -> str | None:
    """The request's session: the X-Session-Id header, or the ``user`` field (at most 200 characters)."""
    key = request.headers.get(SESSION_HEADER) or body.user
    return str(key)[:200] if key else None
