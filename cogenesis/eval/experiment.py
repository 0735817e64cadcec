"""`cogenesis experiment`: every system on every record -> a Table-1-style report of quality vs. privacy.

Systems (the paper's Table 1 rows, plus block fusion):

* ``llm-ctx``: the cloud model WITH the private context: the quality upper bound that necessarily sends the
  context. Its guard runs in ``audit`` mode, so the leak is measured, not blocked.
* ``llm-noctx``: the cloud model with the task alone.
* ``slm-ctx``: the on-device model with the context (``write(mode="local")``); nothing leaves the device.
* ``sketch``, ``logits``, ``logits-block``: CoGenesis through ``cogenesis.cogen.write`` (the modes of the same name).

Every cloud request goes through the client's egress guard (mode ``guard_mode``, default ``audit``: each
method's own leakage is measured; ``strict`` measures the product as shipped, where flagged requests are
refused and the answer falls back to local). Per system: ROUGE-1/L, METEOR, embedding similarity, the three
judge ratings (when a judge is configured), leakage (fraction of the record's private facts found in the
exact bytes that were sent, by the independent detector `cogenesis.eval.leakcheck`, NOT by the guard's own
findings; which facts and how: `cogenesis.eval.metrics.private_facts`), planted-canary leaks (same detector),
the guard's findings per answer (informational), bytes and requests per answer, fallbacks, errors and wall
time. A system that cannot run here (no cloud URL, server down, a `write` mode not registered yet) is listed
with the reason in the report.

Outputs in ``out_dir``: ``report.md``, ``results.json`` (config, per-system metrics, per-record rows),
``outputs.jsonl`` (one row per system x record), ``quality_vs_leakage.png`` and ``audit/<system>.jsonl``.

This module runs the loop (system by system, record by record) and measures what each answer sent; how a
system answers one record: `cogenesis.eval.systems`; quality scores: `cogenesis.eval.scoring`; aggregates and
output files: `cogenesis.eval.report`; the command line: `cogenesis.cli.experiment`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogenesis.cloud_bridge.audit import JsonlTail
from cogenesis.core.context import PrivateContext
from cogenesis.data.records import TaskRecord, load_records
from cogenesis.eval.metrics import body_texts, canary_hits, fact_leakage, meteor_synonyms
from cogenesis.eval.report import (  # noqa: F401  (re-exported: the names this module used to define)
    ExperimentResult,
    _aggregate,
    _fmt,
    _json_safe,
    _markdown,
    _plot,
    _problems,
    _row_dict,
    _write_outputs,
)
from cogenesis.eval.scoring import JUDGE_KEYS, METRIC_KEYS, _score  # noqa: F401  (re-exported)
from cogenesis.eval.systems import (  # noqa: F401  (re-exported)
    CLOUD_SYSTEMS,
    LABELS,
    SYSTEMS,
    WRITE_MODES,
    Row,
    _detok,
    _probe_cloud,
    _probe_mode,
    _RecordingSession,
    _run_one,
    plant_canary,
)


@dataclass
class _Setup:
    """What every answer of one run shares."""

    out: Path
    records: list[TaskRecord]
    planted: dict[str, str]  # tid -> the canary planted in that record
    model: Any
    gen: dict[str, Any]
    guard_mode: str
    cloud_url: str | None
    api_key: str | None
    cloud_max_tokens: int | None
    write_options: dict[str, dict]
    client_cls: Any = None


def run_experiment(
    data: str | Path | Sequence[TaskRecord] = "sample",
    systems: Sequence[str] = SYSTEMS,
    limit: int | None = None,
    bundle: str | Path | Any = None,
    cloud_url: str | None = None,
    out_dir: str | Path = "artifacts/experiment",
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_max_tokens: int = 256,
    judge_cache: str | Path | None = None,
    api_key: str | None = None,
    max_new_tokens: int = 256,
    cloud_max_tokens: int | None = None,
    temperature: float = 0.0,
    repetition_penalty: float = 1.0,
    guard_mode: str = "audit",
    canaries: bool = True,
    embed: bool = True,
    threads: int | None = None,
    seed: int = 0,
    write_options: dict[str, dict] | None = None,
    progress: bool = True,
    force: bool = False,
) -> ExperimentResult:
    """Run ``systems`` on the first ``limit`` records of ``data`` and write the report to ``out_dir``.

    ``data``: a records file, "sample" (the shipped sample) or records. ``bundle``: the on-device bundle (or a
    loaded EdgeModel). ``cloud_url``: the OpenAI-compatible cloud (ours or vLLM; key from ``api_key`` or
    $COGENESIS_CLOUD_API_KEY). ``max_new_tokens``: for every answer; ``cloud_max_tokens``: for the sketch
    outline (default: the client's). ``write_options``: extra ``mode_options`` per system (e.g.
    ``{"logits-block": {"draft_k": 4}}``). ``canaries``: plant one made-up secret per record in its private
    texts and search every sent byte for it. ``force``: replace the report of an earlier run in ``out_dir``
    (without it, that report is never overwritten).
    """
    _check_arguments(systems, guard_mode, bundle)
    out = Path(out_dir)
    if (out / "results.json").exists() and not force:
        raise ValueError(f"{out} already holds an experiment report (results.json): choose another --out, or pass "
                         "--force to replace it")
    (out / "audit").mkdir(parents=True, exist_ok=True)
    records, planted = _prepare_records(data, limit, canaries, seed)
    model, bundle_name = _load_model(bundle, threads)
    gen = _gen_options(max_new_tokens, temperature, repetition_penalty, seed)
    setup = _Setup(out, records, planted, model, gen, guard_mode, cloud_url, api_key, cloud_max_tokens,
                   write_options or {})
    setup.client_cls, runnable, skipped = _runnable(systems, cloud_url, api_key)
    rows, cloud_model = _run_systems(setup, runnable, progress)

    notes = _score(rows, records, embed, judge_url, judge_model, judge_max_tokens, judge_cache, progress)
    notes.insert(0, f"METEOR: exact + Porter-stem matching; WordNet synonym stage "
                    f"{'used' if meteor_synonyms() else 'omitted (WordNet data not installed; not on PyPI)'}.")
    aggregates = {s: _aggregate([r for r in rows if r.system == s]) for s in runnable}
    config = _config(data, systems, setup, bundle_name, cloud_model, judge_url, canaries, seed)
    return _write_outputs(out, config, aggregates, skipped, rows, notes)


# ---- the steps of a run ------------------------------------------------------------------------------------


def _check_arguments(systems: Sequence[str], guard_mode: str, bundle: Any) -> None:
    from cogenesis.cloud_bridge.guard import MODES as GUARD_MODES

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if guard_mode not in GUARD_MODES:
        raise ValueError(f"guard_mode must be one of {GUARD_MODES}")
    if bundle is None:
        raise ValueError("pass the on-device bundle (--bundle DIR; make one with `cogenesis export --out DIR`)")


def _load_data(data: str | Path | Sequence[TaskRecord]) -> list[TaskRecord]:
    if isinstance(data, (str, Path)):
        if str(data) == "sample":
            from cogenesis.data.records import load_sample

            return load_sample()
        return load_records(data)
    return list(data)


def _prepare_records(data: str | Path | Sequence[TaskRecord], limit: int | None, canaries: bool,
                     seed: int) -> tuple[list[TaskRecord], dict[str, str]]:
    """The first ``limit`` records, each with a planted canary when ``canaries``; and tid -> canary."""
    records = _load_data(data)[: limit or None]
    if not records:
        raise ValueError("no records to run")
    rng = random.Random(seed)
    planted: dict[str, str] = {}
    if canaries:
        rs = []
        for r in records:
            r2, code = plant_canary(r, rng)
            rs.append(r2)
            planted[r.tid] = code
        records = rs
    return records, planted


def _load_model(bundle: str | Path | Any, threads: int | None) -> tuple[Any, str]:
    """The on-device model and its name for the report."""
    if isinstance(bundle, (str, Path)):
        import cogenesis.runtime as rt

        return rt.load(bundle, threads=threads), str(bundle)
    return bundle, str(getattr(bundle, "path", "model"))


def _gen_options(max_new_tokens: int, temperature: float, repetition_penalty: float, seed: int) -> dict[str, Any]:
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                           "repetition_penalty": repetition_penalty}
    if temperature > 0:
        gen["seed"] = seed
    return gen


def _runnable(systems: Sequence[str], cloud_url: str | None,
              api_key: str | None) -> tuple[Any, list[str], dict[str, str]]:
    """The CloudClient class (None when no cloud system can run), the systems that can run here, and why the
    others cannot."""
    skipped: dict[str, str] = {}
    client_cls, cloud_reason = (None, None)
    if any(s in CLOUD_SYSTEMS for s in systems):
        client_cls, cloud_reason = _probe_cloud(cloud_url, api_key)
    runnable = []
    for s in systems:
        reason = cloud_reason if s in CLOUD_SYSTEMS else None
        if reason is None and s in WRITE_MODES:
            reason = _probe_mode(WRITE_MODES[s])
        if reason:
            skipped[s] = reason
        else:
            runnable.append(s)
    return client_cls, runnable, skipped


def _config(data: str | Path | Sequence[TaskRecord], systems: Sequence[str], setup: _Setup, bundle_name: str,
            cloud_model: str | None, judge_url: str | None, canaries: bool, seed: int) -> dict[str, Any]:
    """The run's settings, as ``results.json`` and the report's header show them."""
    records = setup.records
    return {
        "data": str(data) if isinstance(data, (str, Path)) else f"{len(records)} records",
        "records": [r.tid for r in records],
        "systems": list(systems),
        "bundle": bundle_name,
        "cloud_url": setup.cloud_url,
        "cloud_model": cloud_model,
        "judge_url": judge_url,
        "guard_mode": setup.guard_mode,
        "canaries": canaries,
        "gen": setup.gen,
        "cloud_max_tokens": setup.cloud_max_tokens,
        "seed": seed,
    }


def _run_systems(setup: _Setup, runnable: list[str], progress: bool) -> tuple[list[Row], str | None]:
    """Every runnable system on every record: the rows, and the cloud's model id (None when no cloud ran)."""
    from tqdm import tqdm

    rows: list[Row] = []
    bar = tqdm(total=len(runnable) * len(setup.records), desc="experiment", unit="answer", disable=not progress)
    cloud_model = None
    for system in runnable:
        audit_path = setup.out / "audit" / f"{system}.jsonl"
        audit_path.unlink(missing_ok=True)
        tail = JsonlTail(audit_path)
        client = None
        if system in CLOUD_SYSTEMS:
            client = setup.client_cls(setup.cloud_url, api_key=setup.api_key, http=_RecordingSession())
            cloud_model = client.capabilities().get("id")
        for rec in setup.records:
            bar.set_postfix_str(f"{system} {rec.tid}")
            rows.append(_run_record(setup, system, rec, client, tail, audit_path))
            bar.update()
        if client is not None:
            client.close()
    bar.close()
    return rows, cloud_model


def _run_record(setup: _Setup, system: str, rec: TaskRecord, client, tail: JsonlTail, audit_path: Path) -> Row:
    """One system's answer to one record, through a fresh egress guard, with what it sent measured."""
    from cogenesis.cloud_bridge.guard import EgressGuard

    ctx = rec.private_context()
    guard = EgressGuard(ctx, mode=setup.guard_mode, audit_log=audit_path, detokenize=_detok(setup.model),
                        session_id=f"{system}/{rec.tid}")
    sent_before = len(client.http.sent) if client else 0
    row = _run_one(system, rec, ctx, setup.model, client, guard, setup.gen, setup.cloud_max_tokens,
                   setup.write_options.get(system, {}))
    row.findings = sum(len(r.get("findings") or []) for r in tail.new() if not r.get("blocked"))
    bodies = client.http.sent[sent_before:] if client is not None else []
    _measure_leaks(row, rec, ctx, bodies, setup.model, setup.planted.get(rec.tid))
    return row


def _measure_leaks(row: Row, rec: TaskRecord, ctx: PrivateContext, bodies: list[bytes], model,
                   canary: str | None) -> None:
    """Fill ``row``'s leakage fields from the exact ``bodies`` sent (the independent detector, not the guard)."""
    leak = fact_leakage(ctx, bodies, _detok(model), public=[rec.instruction])
    row.facts, row.leaked, row.bytes, row.requests = leak.facts, leak.leaked, leak.bytes, leak.requests
    if canary is not None:
        texts = [t for b in bodies for t in body_texts(b, _detok(model))]
        row.canaries, row.canaries_leaked = 1, len(canary_hits([canary], texts))
