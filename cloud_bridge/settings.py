"""The reference server's settings (`ServerSettings`) and the faults it can inject, apart from the app so that the
command line (`cogenesis cloud serve`) can name them without importing fastapi."""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = ("500", "429", "garbage", "stall", "nan")


@dataclass
class ServerSettings:
    api_key: str | None = None
    allow_unauthenticated: bool = False
    simulate_rtt_ms: float = 0.0
    fault: str | None = None  # one of FAULTS
    fault_count: int | None = None  # fault only the first N requests (None: every request)
    stall_s: float = 30.0
    capture: str | None = None  # JSONL file of every received request
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 30.0  # the whole body must arrive within this (a slow-drip upload gets 408)
    max_tokens: int = 1024
    max_logprobs: int = 20  # vLLM's default --max-logprobs
    max_prompt_tokens: int = 4096
    max_logprob_positions: int = 2048
    max_sessions: int = 16
    max_parallel: int = 2
    # KV cache of kept sessions + running requests (fp32: SmolLM2-135M 45 KiB/token, Qwen2.5-1.5B 56 KiB/token);
    # idle sessions are evicted to make room, beyond it 503 + Retry-After. None: no limit.
    kv_budget_mb: float | None = 1024.0
    # a request that does not fit next to the running ones waits this long for them to finish, then 503: with
    # 0, 64 clients x 60 s on 2 cores got 119 answers (3,170 503s); waiting keeps the engine busy
    # (bench/results/server_load.md)
    admit_wait_s: float = 10.0
    retry_after_s: int = 1
    default_chat_max_tokens: int = 256
    served_model_name: str | None = None
    # The Android demo's WebView page lives at this origin; browsers need CORS (preflight without auth) for it.
    cors_origins: tuple[str, ...] = ("https://appassets.androidplatform.net",)
