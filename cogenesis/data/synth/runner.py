"""Unit runner: one request-validate-retry loop per unit, a thread pool per step."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from cogenesis.data.synth.client import ChatClient
from cogenesis.data.synth.errors import STEPS, GeneratorError, SynthesisAborted
from cogenesis.data.synth.store import FailureLog, JsonlStore
from cogenesis.data.synth.text import _THINK, extract_json, normalize_key


@dataclass
class _Unit:
    """One request of a step: its prompt, schema, row maker and extra check."""

    key: str
    messages: Callable[[], list[dict[str, str]]]  # built at submission, so avoid-lists see finished rows
    schema: type[BaseModel]
    make_row: Callable[[Any], dict[str, Any]]  # validated object -> row (with 'dedup'); ValueError = reject
    check: Callable[[Any], None] | None = None  # extra validation; raise ValueError to retry
    text_fallback: bool = False
    response_format: dict[str, Any] | None = None  # this step's structured-output request (set by synthesize)


class _UnitFailed(Exception):
    """A unit gave up: ``kind`` is http, invalid or duplicate."""

    def __init__(self, kind: str, error: str, attempts: int, raw: str) -> None:
        super().__init__(error)
        self.kind, self.error, self.attempts, self.raw = kind, error, attempts, raw


def _validate(unit: _Unit, raw: str) -> Any:
    """Parse, validate and check one reply of ``unit``; raise ValueError/ValidationError to retry."""
    try:
        data = extract_json(raw)
    except ValueError:
        if unit.text_fallback and "{" not in raw and raw.strip():
            data = {"text": _THINK.sub("", raw).strip()}
        else:
            raise
    obj = unit.schema.model_validate(data)
    _reject_placeholders(obj.model_dump())
    if unit.check is not None:
        unit.check(obj)
    return obj


_PLACEHOLDERS = {
    normalize_key(x)
    for x in (
        "...",
        "short group name",
        "2-3 sentences on their life and writing needs",
        "3-5 typical jobs",
        "City, Region",
        "how they write: tone, sentence length, habits",
        "explicit private facts: health, money, family, secrets, routines",
        "traces on their devices: apps, alerts, searches, purchases, messages",
        "what they ask an AI assistant to do",
        "Write ...",
        "one sentence on what the text must do",
    )
}


def _reject_placeholders(value: Any, where: str = "") -> None:
    """Raise ValueError when a field is empty filler or was copied from the prompt's JSON template."""
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_placeholders(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_placeholders(v, f"{where}[{i}]")
    elif isinstance(value, str) and value.strip() and normalize_key(value) in _PLACEHOLDERS | {""}:
        raise ValueError(f"{where}: {value!r} is the template placeholder; fill in real content")


def _run_unit(client: ChatClient, unit: _Unit, store: JsonlStore, max_attempts: int) -> dict[str, Any]:
    """Ask until a reply validates (feeding the error back); the row, or raise :class:`_UnitFailed`."""
    base = unit.messages()
    messages = list(base)
    raw = ""
    error = ""
    for attempt in range(1, max_attempts + 1):
        try:
            raw = client.chat(messages, response_format=unit.response_format, attempt=attempt)
        except GeneratorError as e:
            raise _UnitFailed("http", str(e), attempt, raw) from None
        try:
            obj = _validate(unit, raw)
            row = unit.make_row(obj)
            if row.get("dedup") and not store.claim(row["dedup"], unit.key):
                raise ValueError("duplicate of an earlier item; produce a different one")
            row["key"] = unit.key
            return row
        except ValidationError as e:
            error = "schema: " + "; ".join(
                f"{'.'.join(str(x) for x in er['loc']) or 'object'}: {er['msg']}" for er in e.errors()[:4]
            )
        except ValueError as e:
            error = str(e)
        messages = list(base) + [
            {"role": "assistant", "content": raw[:4000]},
            {
                "role": "user",
                "content": f"That reply was not usable ({error[:300]}). Reply again with the JSON object only.",
            },
        ]
    kind = "duplicate" if error.startswith("duplicate") else "invalid"
    raise _UnitFailed(kind, error, max_attempts, raw)


@dataclass
class _RunState:
    """Progress across the steps of one run: finished units, failures per step, stop flag."""

    limit: int | None
    done: int = 0
    failed: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STEPS})
    stopped: bool = False


def _run_step(
    step: str,
    units: list[_Unit],
    store: JsonlStore,
    failures: FailureLog,
    client: ChatClient,
    state: _RunState,
    workers: int,
    max_attempts: int,
    abort_after: int,
    progress: bool,
) -> None:
    """Run the unfinished units of ``step`` on a thread pool, storing rows and logging failures."""
    pending = [u for u in units if u.key not in store]
    if not pending or state.stopped:
        return
    consecutive_http = 0
    aborted = False
    it = iter(pending)
    bar = tqdm(total=len(pending), desc=f"synth {step}", unit="item", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"synth-{step}") as pool:
            inflight: dict[Future[dict[str, Any]], _Unit] = {}

            def fill() -> None:
                """Submit units until the pool's queue is full, the limit is reached or none are left."""
                while len(inflight) < max(1, workers) * 2 and not state.stopped:
                    if state.limit is not None and state.done + len(inflight) >= state.limit:
                        return
                    u = next(it, None)
                    if u is None:
                        return
                    inflight[pool.submit(_run_unit, client, u, store, max_attempts)] = u

            fill()
            while inflight:
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    u = inflight.pop(fut)
                    bar.update(1)
                    try:
                        row = fut.result()
                    except _UnitFailed as f:
                        failures.add(step, u.key, f.kind, f.error, f.attempts, f.raw)
                        state.failed[step] += 1
                        consecutive_http = consecutive_http + 1 if f.kind == "http" else 0
                        if abort_after and consecutive_http >= abort_after:
                            state.stopped = aborted = True
                        continue
                    consecutive_http = 0
                    if store.add(row):
                        state.done += 1
                    else:
                        failures.add(
                            step, u.key, "duplicate", "duplicate of a row stored concurrently", 1, ""
                        )
                        state.failed[step] += 1
                if state.limit is not None and state.done >= state.limit:
                    state.stopped = True
                fill()
    finally:
        bar.close()
    if aborted:
        raise SynthesisAborted(
            f"step '{step}': {abort_after} units in a row failed on {client.url}; stopped. "
            f"Finished units are checkpointed in {store.path.parent}; run again to resume."
        )
