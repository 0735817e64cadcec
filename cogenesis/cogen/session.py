"""One co-generation session: what a mode function gets (`WriteJob`: the instruction, the private context, the
device model, the guarded cloud client, streaming) and what it fills (`WriteResult`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation, sanitize_instruction
from cogenesis.core.context import PrivateContext
from cogenesis.data.prompts import DEFAULT_CONTEXT_TOKENS

if TYPE_CHECKING:
    from cogenesis.cloud_bridge.client import CloudClient
    from cogenesis.runtime import EdgeModel

StreamCallback = Callable[[str], None]


@dataclass
class WriteResult:
    text: str = ""
    mode: str = "local"  # what was asked for
    mode_used: str = "local"  # what actually produced the text ("local" after a fallback)
    outline: list[str] | None = None
    fallback: str | None = None  # why the cloud was not used, None when it was (or was not asked for)
    sanitized_instruction: str | None = None  # what the cloud was given (None: nothing was prepared for it)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (original, replacement) by the sanitizer
    cloud_requests: int = 0  # HTTP requests that left the device (retries included)
    timings: dict[str, float] = field(default_factory=dict)  # sanitize_s, cloud_s, local_s, first_token_s, total_s
    extra: dict = field(default_factory=dict)  # mode-specific details (e.g. fusion statistics)


class CloudUnavailable(Exception):
    """Raised inside a mode to fall back to local for a reason that is not an exception of the client."""


@dataclass
class WriteJob:
    """Everything a mode function needs; it fills `result` and returns the text."""

    instruction: str
    context: PrivateContext
    model: EdgeModel
    client: CloudClient | None
    sanitize: bool
    stream_cb: StreamCallback | None
    gen: dict
    guard: EgressGuard | None
    result: WriteResult
    options: dict = field(default_factory=dict)  # mode options (`mode_options` of write())
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # budget of the rendered private context in local prompts
    t0: float = field(default_factory=time.perf_counter)
    emitted: int = 0  # characters already streamed to stream_cb
    _sanitized: str | None = None
    _client: CloudClient | None = None

    def emit(self, piece: str) -> None:
        """Stream a piece of the answer to the caller."""
        if piece:
            if "first_token_s" not in self.result.timings:
                self.result.timings["first_token_s"] = time.perf_counter() - self.t0
            self.emitted += len(piece)
            if self.stream_cb is not None:
                self.stream_cb(piece)

    def generate_local(self, messages: list[dict]) -> str:
        """Run the on-device model on `messages`, streaming through `emit`; returns the full text."""
        t0 = time.perf_counter()
        pieces = []
        for piece in self.model.stream(messages, **self.gen):
            pieces.append(piece)
            self.emit(piece)
        self.result.timings["local_s"] = self.result.timings.get("local_s", 0.0) + time.perf_counter() - t0
        return "".join(pieces)

    def cloud_instruction(self) -> str:
        """The instruction as the cloud may see it: sanitized on-device when `sanitize` (changes recorded)."""
        if self._sanitized is None:
            t0 = time.perf_counter()
            if self.sanitize:
                s = sanitize_instruction(self.instruction, self.context)
                self._sanitized, self.result.changes = s.text, list(s.changes)
            else:
                self._sanitized = self.instruction
            self.result.sanitized_instruction = self._sanitized
            self.result.timings["sanitize_s"] = time.perf_counter() - t0
        return self._sanitized

    def cloud_client(self) -> CloudClient:
        """The client, inspecting with a guard that knows this session's private context."""
        if self.client is None:
            raise CloudUnavailable("no cloud client configured (pass client=CloudClient(url))")
        if self._client is None:
            if self.guard is not None:
                self._client = self.client.with_guard(self.guard)
            elif self.client.default_guard:  # a guard without the context only knows generic patterns
                audit = self.client.guard.audit_log
                g = EgressGuard(self.context, mode="strict", audit_log=audit, detokenize=detokenizer(self.model))
                self._client = self.client.with_guard(g)
            else:
                self._client = self.client
        return self._client

    def cloud(self, fn: Callable, *args, **kw):
        """Call a cloud function; time it and count requests. Any failure becomes a fallback in `write()`."""
        from cogenesis.cloud_bridge.client import CloudError

        c = self.cloud_client()
        before = c.requests_sent
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        except (CloudError, PrivacyViolation, CloudUnavailable):
            raise
        except Exception as e:  # a client bug or odd answer must not end the session
            raise CloudError(f"cloud call failed: {type(e).__name__}: {e}") from e
        finally:
            self.result.timings["cloud_s"] = self.result.timings.get("cloud_s", 0.0) + time.perf_counter() - t0
            self.result.cloud_requests += c.requests_sent - before


ModeFn = Callable[[WriteJob], str]


def detokenizer(model: EdgeModel) -> Callable[[list[int]], str]:
    return lambda ids: model.tokenizer.decode(list(ids), skip_special_tokens=False)
