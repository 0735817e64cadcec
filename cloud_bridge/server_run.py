"""The reference server's running: KV admission, a whole run, and a run streamed as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from .server_engine import KVBudgetExceeded, KVRequestTooLarge, Reservation, RunInfo, RunRequest
from .server_protocol import GenerationRequest
from .server_responses import cut, usage, usage_log
from .server_state import ApiError, State, note


async def admit(st: State, key: str | None, req: RunRequest) -> Reservation:
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


def collect(st: State, key: str | None, req: RunRequest, res: Reservation) -> tuple[RunInfo, str, str | int | None]:
    """Run to the end (in a worker thread): the run's info, finish_reason and stop_reason; frees `res`."""
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


def _count(st: State, info: RunInfo) -> None:
    m = st.metrics
    m["runs"] += 1
    m["prompt_tokens"] += info.prompt_tokens
    m["cached_tokens"] += info.cached_tokens
    m["computed_tokens"] += info.computed_tokens
    m["completion_tokens"] += len(info.completion_ids)


def stream(st: State, request: Request, key: str | None, req: RunRequest, rid: str, created: int, obj: str,
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
                final = cut(text, ev.stop_reason)
                if len(final) > emitted:
                    yield chunk(final[emitted:])
                yield chunk(None, finish=ev.finish_reason)
                break
            safe = len(text) - hold - (1 if text.endswith("\ufffd") else 0)
            if safe > emitted:
                yield chunk(text[emitted:safe])
                emitted = safe
    _count(st, info)
    note(request, **usage_log(info))
    if body.include_usage():
        yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": st.model_name,
                                     "choices": [], "usage": usage(info)}) + "\n\n"
    yield "data: [DONE]\n\n"


def sse(it: Iterator[str], res: Reservation) -> StreamingResponse:
    """The stream as text/event-stream."""
    # released when the stream ends, and after the response in any case (a client gone before the first byte)
    return StreamingResponse(it, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(res.release))


@contextmanager
def _released(res: Reservation) -> Iterator[None]:
    try:
        yield
    finally:
        res.release()
