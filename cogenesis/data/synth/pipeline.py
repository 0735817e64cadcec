"""The pipeline: run (or resume) the four steps, assemble TaskRecords and export them (:func:`synthesize`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cogenesis.data.records import HistoryItem, RecordContext, TaskRecord, save_context_aware
from cogenesis.data.synth.client import ChatClient
from cogenesis.data.synth.errors import EXPORT_NAME, STEPS
from cogenesis.data.synth.runner import _run_step, _RunState, _Unit
from cogenesis.data.synth.store import FailureLog, JsonlStore
from cogenesis.data.synth.units import _group_units, _profile_units, _step_formats, _task_units, _text_units


@dataclass
class SynthesisResult:
    """What a :func:`synthesize` run left on disk."""

    out_dir: Path
    export_path: Path
    records: list[TaskRecord]
    counts: dict[str, int]
    failures: dict[str, int]
    requests: int
    complete: bool

    def summary(self) -> str:
        """One line: records, export path, checkpoint counts, failures and requests of this run."""
        done = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        bad = ", ".join(f"{k}={v}" for k, v in self.failures.items() if v) or "none"
        state = "complete" if self.complete else "partial (run again to resume)"
        return (
            f"{len(self.records)} records -> {self.export_path} [{state}]; checkpoints: {done}; "
            f"failures this run: {bad}; requests: {self.requests}"
        )


@dataclass(frozen=True)
class _Sizes:
    """How much a run makes: users, tasks and texts per user, and text lengths."""

    n_groups: int
    users_per_group: int
    tasks_per_user: int
    history_per_user: int
    extra_tasks: int
    min_words: int
    max_words: int

    @property
    def n_texts(self) -> int:
        """Texts written per user: past writings + target tasks."""
        return self.history_per_user + self.tasks_per_user

    @property
    def n_tasks(self) -> int:
        """Tasks asked for per user: the written ones + the extra ones."""
        return self.n_texts + self.extra_tasks

    def check(self) -> None:
        """Raise ValueError when a count that must be positive is not."""
        if min(self.n_groups, self.users_per_group, self.tasks_per_user) < 1 or self.history_per_user < 1:
            raise ValueError("n_groups, users_per_group, tasks_per_user and history_per_user must be >= 1")


def build_records(
    out_dir: str | Path, history_per_user: int, tasks_per_user: int, min_history: int = 1
) -> list[TaskRecord]:
    """Assemble TaskRecords from the checkpoints in ``out_dir`` (users lacking texts are skipped)."""
    d = Path(out_dir)
    profiles, tasks, texts = (
        JsonlStore(d / f"{s}.jsonl", fsync=False) for s in ("profiles", "tasks", "texts")
    )
    out: list[TaskRecord] = []
    for p in sorted(profiles.values(), key=lambda r: (r["group_id"], r["user_id"])):
        t = tasks.rows.get(p["key"])
        if t is None:
            continue
        tl = t["tasks"]
        history = []
        for j in range(min(history_per_user, len(tl))):
            row = texts.rows.get(f"{p['key']}_t{j}")
            if row is not None:
                history.append(HistoryItem(title=_instr(tl[j]), text=row["text"], id=str(len(history))))
        if len(history) < min_history:
            continue
        extra = [_instr(x) for x in tl[history_per_user + tasks_per_user :]]
        for k in range(tasks_per_user):
            j = history_per_user + k
            row = texts.rows.get(f"{p['key']}_t{j}") if j < len(tl) else None
            if row is None:
                continue
            out.append(
                TaskRecord(
                    tid=f"{p['group_id']}_{p['user_id']}_{k}",
                    instruction=_instr(tl[j]),
                    reference=row["text"],
                    context=RecordContext(profile=p["profile"], history=history),
                    additional_tasks=extra,
                    source="synthetic",
                )
            )
    return out


def _instr(task: dict[str, str]) -> str:
    """A stored task as one instruction: ``title: description``."""
    return f"{task['title'].strip().rstrip(':.')}: {task['description'].strip()}"


def _make_client(
    base_url: str,
    model: str,
    api_key: str | None,
    response_format: dict[str, Any] | None,
    extra_body: dict[str, Any] | None,
    **settings: Any,
) -> ChatClient:
    """The run's default client (``settings``: timeout, max_retries, backoff, temperature, max_tokens)."""
    return ChatClient(
        base_url, model, api_key, response_format=response_format, extra_body=dict(extra_body or {}), **settings
    )


def _write_run_config(d: Path, model: str, base_url: str, sizes: _Sizes) -> None:
    """Record the run's model, server and sizes in ``d/run.json``."""
    config = {
        "model": model,
        "base_url": base_url,
        "n_groups": sizes.n_groups,
        "users_per_group": sizes.users_per_group,
        "tasks_per_user": sizes.tasks_per_user,
        "history_per_user": sizes.history_per_user,
        "extra_tasks": sizes.extra_tasks,
    }
    (d / "run.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


def _run_formats(
    sizes: _Sizes,
    structured_output: bool,
    response_format: dict[str, Any] | None,
    schema_bounds: dict[str, int] | None,
) -> dict[str, dict[str, Any]]:
    """Each step's ``response_format``; none when structured output is off or one format is given for all."""
    if not structured_output or response_format is not None:
        return {}
    return _step_formats(sizes.n_texts, sizes.n_tasks, sizes.min_words, sizes.max_words, **(schema_bounds or {}))


def _step_units(step: str, sizes: _Sizes, stores: dict[str, JsonlStore], structured: bool) -> list[_Unit]:
    """The units of ``step``, built from the stores of the steps before it."""
    if step == "groups":
        return _group_units(sizes.n_groups, stores["groups"], structured)
    if step == "profiles":
        return _profile_units(sizes.users_per_group, stores["groups"], stores["profiles"], structured)
    if step == "tasks":
        return _task_units(sizes.n_texts, sizes.n_tasks, stores["profiles"], structured)
    return _text_units(
        sizes.n_texts, stores["profiles"], stores["tasks"], sizes.min_words, sizes.max_words, structured
    )


def _run_steps(
    run: Callable[..., None],
    sizes: _Sizes,
    stores: dict[str, JsonlStore],
    formats: dict[str, dict[str, Any]],
) -> None:
    """Run the steps in order; each step's units are built once the previous step is done."""
    structured = bool(formats)
    for step in STEPS:
        step_units = _step_units(step, sizes, stores, structured)
        for u in step_units:
            u.response_format = formats.get(step)
        run(step, step_units, stores[step])


def _is_complete(state: _RunState, sizes: _Sizes, stores: dict[str, JsonlStore], records: list[TaskRecord]) -> bool:
    """Whether the run went through and every group, user and record asked for is there."""
    expected = sizes.n_groups * sizes.users_per_group
    return (
        not state.stopped
        and len(stores["groups"]) >= sizes.n_groups
        and len(stores["profiles"]) >= expected
        and len(records) >= expected * sizes.tasks_per_user
    )


def synthesize(
    out_dir: str | Path,
    base_url: str,
    model: str,
    api_key: str | None = None,
    n_groups: int = 4,
    users_per_group: int = 3,
    tasks_per_user: int = 2,
    workers: int = 4,
    *,
    history_per_user: int = 3,
    extra_tasks: int = 2,
    min_words: int = 120,
    max_words: int = 300,
    max_attempts: int = 3,
    timeout: float = 120.0,
    http_retries: int = 3,
    backoff: float = 1.0,
    temperature: float | None = 0.9,
    max_tokens: int | None = 1500,
    response_format: dict[str, Any] | None = None,
    structured_output: bool = True,
    schema_bounds: dict[str, int] | None = None,
    extra_body: dict[str, Any] | None = None,
    limit: int | None = None,
    abort_after: int = 8,
    progress: bool = True,
    export_name: str = EXPORT_NAME,
    client: ChatClient | None = None,
) -> SynthesisResult:
    """Run (or resume) the four-step pipeline into ``out_dir`` and export ``out_dir/export_name``.

    ``n_groups`` x ``users_per_group`` users, each with ``history_per_user`` past writings and
    ``tasks_per_user`` target tasks (one exported record each). With ``structured_output`` every request
    carries its step's JSON schema as ``response_format`` (see :func:`step_schema`); set it False for servers
    without structured output. An explicit ``response_format`` (e.g. ``{"type": "json_object"}``) is sent
    with every request instead. Replies are validated (and retried) either way. ``schema_bounds`` overrides
    the schemas' generation bounds (``max_items``, ``max_chars``, ``item_chars``: see :func:`step_schema`).
    ``limit`` stops after that many new finished units (a partial, resumable run). Raises
    :class:`SynthesisAborted` after ``abort_after`` consecutive endpoint failures; everything finished so far
    stays checkpointed.
    """
    sizes = _Sizes(n_groups, users_per_group, tasks_per_user, history_per_user, extra_tasks, min_words, max_words)
    sizes.check()
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    client = client or _make_client(
        base_url, model, api_key, response_format, extra_body, timeout=timeout, max_retries=http_retries,
        backoff=backoff, temperature=temperature, max_tokens=max_tokens,
    )
    _write_run_config(d, model, base_url, sizes)
    stores = {s: JsonlStore(d / f"{s}.jsonl") for s in STEPS}
    state = _RunState(limit)
    formats = _run_formats(sizes, structured_output, response_format, schema_bounds)
    run = partial(
        _run_step, failures=FailureLog(d / "failures.jsonl"), client=client, state=state, workers=workers,
        max_attempts=max_attempts, abort_after=abort_after, progress=progress,
    )
    requests_before = client.requests_made
    try:
        _run_steps(run, sizes, stores, formats)
    finally:
        records = build_records(d, history_per_user, tasks_per_user)
        export = save_context_aware(records, d / export_name)
    return SynthesisResult(
        out_dir=d,
        export_path=export,
        records=records,
        counts={s: len(stores[s]) for s in STEPS},
        failures=dict(state.failed),
        requests=client.requests_made - requests_before,
        complete=_is_complete(state, sizes, stores, records),
    )
