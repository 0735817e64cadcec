"""The experiment's systems: which exist, whether each can run here, and how each answers one record.

``_run_one`` answers one record with one system (the cloud chat for ``llm-ctx`` / ``llm-noctx``, else
``cogenesis.cogen.write`` in the system's mode); ``_RecordingSession`` keeps the exact bytes sent to the cloud for
the independent leakage detector; ``plant_canary`` adds a made-up secret to a record's private texts.
"""

from __future__ import annotations

import json
import random
import string
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from cogenesis.core.context import PrivateContext
from cogenesis.data.prompts import with_context, without_context
from cogenesis.data.records import TaskRecord

SYSTEMS = ("llm-ctx", "llm-noctx", "slm-ctx", "sketch", "logits", "logits-block")
CLOUD_SYSTEMS = ("llm-ctx", "llm-noctx", "sketch", "logits", "logits-block")
WRITE_MODES = {"slm-ctx": "local", "sketch": "sketch", "logits": "logits", "logits-block": "logits-block"}
LABELS = {
    "llm-ctx": "Cloud LLM with context (privacy-violating upper bound)",
    "llm-noctx": "Cloud LLM without context",
    "slm-ctx": "On-device SLM with context",
    "sketch": "CoGenesis sketch",
    "logits": "CoGenesis logits (per step)",
    "logits-block": "CoGenesis logits (block)",
}


@dataclass
class Row:
    """One system's answer to one record, with its metrics."""

    system: str
    tid: str
    text: str = ""
    error: str | None = None
    fallback: str | None = None
    wall_s: float = 0.0
    requests: int = 0
    bytes: int = 0
    facts: int = 0
    leaked: list[str] = field(default_factory=list)
    findings: int = 0
    canaries: int = 0
    canaries_leaked: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    judge: dict[str, float | None] = field(default_factory=dict)
    outline: list[str] | None = None

    @property
    def leakage(self) -> float:
        return len(self.leaked) / self.facts if self.facts else 0.0


# ---- helpers -----------------------------------------------------------------------------------------------


class _RecordingSession(requests.Session):
    """A requests session that keeps the exact body bytes of every request it sends (the on-device copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def request(self, method, url, *args, **kwargs):  # noqa: D102
        data = kwargs.get("data")
        if data is None and kwargs.get("json") is not None:
            data = json.dumps(kwargs["json"]).encode()
        self.sent.append(data if isinstance(data, bytes) else b"" if data is None else str(data).encode())
        return super().request(method, url, *args, **kwargs)


def plant_canary(record: TaskRecord, rng: random.Random) -> tuple[TaskRecord, str]:
    """A copy of ``record`` with a unique made-up secret in its private texts; returns (record, secret)."""
    code = f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}{rng.randrange(10**4):04d}-" \
           f"{''.join(rng.choices(string.ascii_uppercase + string.digits, k=4))}"
    what = rng.choice(["gym locker code", "library card number", "building door code", "loyalty card number"])
    r = record.model_copy(deep=True)
    r.context.private.append(f"My {what} is {code}.")
    return r, code


def _detok(model):
    return lambda ids: model.tokenizer.decode(list(ids), skip_special_tokens=False)


# ---- system availability -----------------------------------------------------------------------------------


def _probe_cloud(cloud_url: str | None, api_key: str | None) -> tuple[Any, str | None]:
    """A CloudClient class and None, or None and why the cloud systems cannot run."""
    if not cloud_url:
        return None, "no cloud endpoint: pass cloud_url (--cloud-url http://HOST:PORT)"
    try:
        from cogenesis.cloud_bridge.client import CloudClient, CloudError
    except ImportError as e:
        return None, f"cogenesis.cloud_bridge.client is not available ({e})"
    try:
        c = CloudClient(cloud_url, api_key=api_key, retries=0)
        c.health()
        c.capabilities()
        c.close()
    except (CloudError, ValueError) as e:
        return None, f"cloud at {cloud_url} is not usable: {e}"
    return CloudClient, None


def _probe_mode(mode: str) -> str | None:
    try:
        from cogenesis.cogen.write import _mode_fn
    except ImportError as e:
        return f"cogenesis.cogen.write is not available ({e})"
    try:
        _mode_fn(mode)
    except ValueError as e:
        return f"write mode {mode!r} is not available yet: {e}"
    except ImportError as e:
        return f"write mode {mode!r} cannot be loaded: {type(e).__name__}: {e}"
    return None


# ---- running -----------------------------------------------------------------------------------------------


def _run_one(system: str, rec: TaskRecord, ctx: PrivateContext, model, client, guard, gen: dict,
             cloud_max_tokens: int | None, options: dict) -> Row:
    row = Row(system, rec.tid)
    t0 = time.perf_counter()
    try:
        if system in ("llm-ctx", "llm-noctx"):
            msgs = with_context(rec) if system == "llm-ctx" else without_context(rec)
            c = client.with_guard(guard)
            row.text = c.chat(msgs, max_tokens=gen["max_new_tokens"], temperature=gen["temperature"]).text
        else:
            from cogenesis.cogen.write import write

            opts = dict(options)
            if system == "sketch" and cloud_max_tokens and "max_tokens" not in opts:
                opts["max_tokens"] = cloud_max_tokens
            res = write(rec.instruction, ctx, model, mode=WRITE_MODES[system], client=client,
                        guard=guard if client is not None else None, mode_options=opts, **gen)
            row.text, row.fallback, row.outline = res.text, res.fallback, res.outline
    except Exception as e:  # one failing answer must not end the experiment; it is counted and reported
        row.error = f"{type(e).__name__}: {e}"
    row.wall_s = time.perf_counter() - t0
    return row
