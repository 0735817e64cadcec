"""The reference server's gate: a pure ASGI middleware in front of every route, and the capture file it writes.

In order: loopback-only without an API key (403), Bearer auth (401), the body's size (413) and arrival time
(408), ``capture`` of the exact body bytes, ``simulate_rtt_ms``, fault injection, then one JSON log line per
request (logger ``cogenesis.cloud.server``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import time
from pathlib import Path

from fastapi.responses import Response

from .server_state import ApiError, State, log

_OPEN_PATHS = {"/health"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gate:
    """Pure ASGI middleware in front of every route (it sees the body bytes exactly as received)."""

    def __init__(self, app, state: State):
        self.app, self.st = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        note = scope.setdefault("cogenesis_log", {})
        status = {"code": 0}

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._pass(scope, receive, send_wrapped)
        except ApiError as e:
            note["error"] = e.message
            await e.response()(scope, receive, send_wrapped)
        finally:
            self._log(scope, status["code"], t0, note)

    async def _pass(self, scope, receive, send) -> None:
        """Decide what the headers allow, read the body, then answer a fault or hand the request to the app."""
        cfg, path = self.st.settings, scope.get("path", "")
        # everything that can be decided from the headers is decided before one byte of the body is read
        if not cfg.api_key and not is_loopback(str((scope.get("server") or ("",))[0])):
            raise ApiError(403, "this server runs without an API key and answers only on a loopback address; "
                                "restart it with --api-key to serve other hosts", kind="permission_error")
        if path not in _OPEN_PATHS and not self._authorized(scope):
            await ApiError(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                           kind="authentication_error").response({"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        body = await self._body(scope, receive)
        if cfg.simulate_rtt_ms > 0:
            await asyncio.sleep(cfg.simulate_rtt_ms / 1000)
        if self._take_fault(scope, path):
            await self._fault(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, scope, receive) -> bytes:
        """The whole body, captured; 413 when it is over the limit, 408 when it does not arrive in time."""
        cfg = self.st.settings
        declared = _content_length(scope)
        if declared is not None and declared > cfg.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes (Content-Length) exceeds this server's limit "
                                f"of {cfg.max_body_bytes} bytes", kind="request_too_large")
        try:
            body, size, complete = await asyncio.wait_for(_read_body(receive, cfg.max_body_bytes), cfg.body_timeout_s)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {cfg.body_timeout_s} s",
                           kind="request_timeout") from None
        scope["cogenesis_log"]["bytes_in"] = size
        if cfg.capture:
            self._capture(scope, body)
        if not complete:
            raise ApiError(413, f"request body of {size}+ bytes exceeds this server's limit of "
                                f"{cfg.max_body_bytes} bytes", kind="request_too_large")
        return body

    def _take_fault(self, scope, path: str) -> bool:
        """Whether this request gets the configured fault (counting it down when `fault_count` is set)."""
        st, fault = self.st, self.st.settings.fault
        faulty = path not in _OPEN_PATHS and (fault != "nan" or path == "/v1/completions")
        if not (faulty and fault and (st.faults_left is None or st.faults_left > 0)):
            return False
        if st.faults_left is not None:
            st.faults_left -= 1
        scope["cogenesis_log"]["fault"] = fault
        st.metrics["faults"] += 1
        return True

    def _log(self, scope, code: int, t0: float, note: dict) -> None:
        st = self.st
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "method": scope.get("method"),
                "path": scope.get("path", ""), "status": code, "ms": round((time.perf_counter() - t0) * 1000, 2)}
        line.update(note)
        st.recent.append(line)
        st.metrics["requests"] += 1
        st.metrics[f"status_{code}"] += 1
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
        elif f == "nan":
            resp = Response(json.dumps(_nan_body(self.st.model_name)).encode(), media_type="application/json")
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


def _nan_body(model_name: str) -> dict:
    """Well-formed JSON whose log-probabilities are NaN / Infinity (Python's json writes them)."""
    lp = {"token_id:1": float("nan"), "token_id:2": float("inf"), "token_id:3": -1.0}
    return {"id": "cmpl-nan", "object": "text_completion", "model": model_name,
            "choices": [{"index": 0, "text": "", "finish_reason": "length",
                         "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [float("nan")],
                                      "top_logprobs": [lp]},
                         "prompt_logprobs": None}]}


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then what the client sends next (a disconnect)."""
    delivered = False

    async def replay():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
