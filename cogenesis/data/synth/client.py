"""The HTTP client: a minimal OpenAI-compatible chat client over the shared cloud transport."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from cogenesis.cloud_bridge.http import CloudConnectionError, CloudError, Transport, normalize_base_url
from cogenesis.data.synth.errors import GeneratorError

API_KEY_ENVS = ("COGENESIS_SYNTH_API_KEY", "OPENAI_API_KEY")


@dataclass
class ChatClient:
    """Minimal OpenAI-compatible chat client: ``POST {base_url}/v1/chat/completions``.

    Transport errors, timeouts, 429 and 5xx are retried ``max_retries`` times with exponential backoff;
    then :class:`GeneratorError`. Other 4xx raise at once. Thread-safe (one session per thread).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 3
    backoff: float = 1.0
    temperature: float | None = 0.9
    max_tokens: int | None = 1500
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    requests_made: int = 0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return normalize_base_url(self.base_url) + "/v1/chat/completions"

    @property
    def transport(self) -> Transport:
        """The shared HTTP transport (one session per thread), made on first use."""
        if getattr(self._local, "transport", None) is None:
            self._local.transport = Transport(self.base_url, self.api_key, timeout=self.timeout,
                                              retries=self.max_retries, backoff=self.backoff, retry_connect=True)
        return self._local.transport

    def _count(self, tries: list[int], n_bytes: int) -> None:
        """Count one HTTP attempt (this call's and the client's total)."""
        tries[0] += 1
        with self._lock:
            self.requests_made += 1

    def chat(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None = None,
             attempt: int = 1) -> str:
        """Send one chat request; return the assistant message content.

        ``response_format`` (this request's) takes precedence over the client's. A retry (``attempt`` > 1) with a
        fixed ``seed`` in extra_body uses seed + attempt - 1: the same seed tends to repeat the same mistake.
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages, **self.extra_body}
        if attempt > 1 and isinstance(body.get("seed"), int):
            body["seed"] += attempt - 1
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        fmt = response_format if response_format is not None else self.response_format
        if fmt is not None:
            body["response_format"] = fmt
        tries = [0]
        try:
            data = self.transport.post("/v1/chat/completions", body, on_attempt=lambda n: self._count(tries, n))
        except CloudError as e:
            if e.retryable or isinstance(e, CloudConnectionError):
                raise GeneratorError(f"{self.url}: failed after {tries[0]} tries ({e})") from e
            hint = ""
            if fmt is not None and "response_format" in str(e):
                hint = " (a server without structured output: run with structured_output=False, or --no-structured-output)"
            raise GeneratorError(f"{self.url}: {e}{hint}") from e
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(f"{self.url}: not an OpenAI chat completion: {str(data)[:300]}") from None
        return content if isinstance(content, str) else ""
