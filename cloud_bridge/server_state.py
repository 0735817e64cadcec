"""What the reference server's modules share: one app's state, the OpenAI-style error, the request log note."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from cogenesis.cloud_bridge.settings import ServerSettings
from fastapi import Request
from fastapi.responses import JSONResponse

from .server_engine import Engine

log = logging.getLogger("cogenesis.cloud.server")

EXTENSIONS = ("prompt_logprobs_start", "session_prefix_cache")


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
class State:
    """One app's settings, engine and counters (``app.state.cogenesis``)."""

    settings: ServerSettings
    engine: Engine
    model_name: str
    recent: deque = field(default_factory=lambda: deque(maxlen=2000))  # the structured log lines, newest last
    metrics: Counter = field(default_factory=Counter)
    capture_lock: threading.Lock = field(default_factory=threading.Lock)
    faults_left: int | None = None


def state_of(request: Request) -> State:
    """The state of the app that serves `request`."""
    return request.app.state.cogenesis


def note(request: Request, **kv) -> None:
    """Add fields to this request's log line."""
    request.scope.setdefault("cogenesis_log", {}).update(kv)
