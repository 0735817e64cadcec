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
"""

from __future__ import annotations

import json
import math
import random
import string
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from cogenesis.cloud_bridge.audit import JsonlTail
from cogenesis.core.context import PrivateContext
from cogenesis.data.prompts import with_context, without_context
from cogenesis.data.records import TaskRecord, load_records
from cogenesis.eval.metrics import (
    Embedder,
    body_texts,
    canary_hits,
    fact_leakage,
    mean,
    meteor_synonyms,
    text_metrics,
)

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
METRIC_KEYS = ("rouge1", "rougeL", "meteor", "embed_sim")
JUDGE_KEYS = ("overall", "personalization", "overall_noprofile")


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


@dataclass
class ExperimentResult:
    out_dir: Path
    systems: dict[str, dict[str, Any]]  # system -> aggregate metrics
    skipped: dict[str, str]  # system -> why it did not run
    rows: list[Row]
    notes: list[str]
    report: Path
    results: Path
    plot: Path | None


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


def _load_data(data: str | Path | Sequence[TaskRecord]) -> list[TaskRecord]:
    if isinstance(data, (str, Path)):
        if str(data) == "sample":
            from cogenesis.data.records import load_sample

            return load_sample()
        return load_records(data)
    return list(data)


def _detok(model):
    return lambda ids: model.tokenizer.decode(list(ids), skip_special_tokens=False)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


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
) -> ExperimentResult:
    """Run ``systems`` on the first ``limit`` records of ``data`` and write the report to ``out_dir``.

    ``data``: a records file, "sample" (the shipped sample) or records. ``bundle``: the on-device bundle (or a
    loaded EdgeModel). ``cloud_url``: the OpenAI-compatible cloud (ours or vLLM; key from ``api_key`` or
    $COGENESIS_CLOUD_API_KEY). ``max_new_tokens``: for every answer; ``cloud_max_tokens``: for the sketch
    outline (default: the client's). ``write_options``: extra ``mode_options`` per system (e.g.
    ``{"logits-block": {"draft_k": 4}}``). ``canaries``: plant one made-up secret per record in its private
    texts and search every sent byte for it.
    """
    from tqdm import tqdm

    from cogenesis.cloud_bridge.guard import MODES as GUARD_MODES
    from cogenesis.cloud_bridge.guard import EgressGuard

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if guard_mode not in GUARD_MODES:
        raise ValueError(f"guard_mode must be one of {GUARD_MODES}")
    if bundle is None:
        raise ValueError("pass the on-device bundle (--bundle DIR; make one with `cogenesis export --out DIR`)")
    out = Path(out_dir)
    (out / "audit").mkdir(parents=True, exist_ok=True)
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

    if isinstance(bundle, (str, Path)):
        import cogenesis.runtime as rt

        model = rt.load(bundle, threads=threads)
        bundle_name = str(bundle)
    else:
        model, bundle_name = bundle, str(getattr(bundle, "path", "model"))
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "repetition_penalty": repetition_penalty}
    if temperature > 0:
        gen["seed"] = seed

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

    rows: list[Row] = []
    bar = tqdm(total=len(runnable) * len(records), desc="experiment", unit="answer", disable=not progress)
    cloud_model = None
    for system in runnable:
        audit_path = out / "audit" / f"{system}.jsonl"
        audit_path.unlink(missing_ok=True)
        tail = JsonlTail(audit_path)
        client = None
        if system in CLOUD_SYSTEMS:
            client = client_cls(cloud_url, api_key=api_key, http=_RecordingSession())
            cloud_model = client.capabilities().get("id")
        for rec in records:
            bar.set_postfix_str(f"{system} {rec.tid}")
            ctx = rec.private_context()
            guard = EgressGuard(ctx, mode=guard_mode, audit_log=audit_path, detokenize=_detok(model),
                                session_id=f"{system}/{rec.tid}")
            sent_before = len(client.http.sent) if client else 0
            row = _run_one(system, rec, ctx, model, client, guard, gen, cloud_max_tokens,
                           (write_options or {}).get(system, {}))
            row.findings = sum(len(r.get("findings") or []) for r in tail.new() if not r.get("blocked"))
            bodies = client.http.sent[sent_before:] if client is not None else []
            leak = fact_leakage(ctx, bodies, _detok(model), public=[rec.instruction])
            row.facts, row.leaked, row.bytes, row.requests = leak.facts, leak.leaked, leak.bytes, leak.requests
            if rec.tid in planted:
                texts = [t for b in bodies for t in body_texts(b, _detok(model))]
                row.canaries, row.canaries_leaked = 1, len(canary_hits([planted[rec.tid]], texts))
            rows.append(row)
            bar.update()
        if client is not None:
            client.close()
    bar.close()

    notes = _score(rows, records, embed, judge_url, judge_model, judge_max_tokens, judge_cache, progress)
    notes.insert(0, f"METEOR: exact + Porter-stem matching; WordNet synonym stage "
                    f"{'used' if meteor_synonyms() else 'omitted (WordNet data not installed; not on PyPI)'}.")
    aggregates = {s: _aggregate([r for r in rows if r.system == s]) for s in runnable}
    config = {
        "data": str(data) if isinstance(data, (str, Path)) else f"{len(records)} records",
        "records": [r.tid for r in records],
        "systems": list(systems),
        "bundle": bundle_name,
        "cloud_url": cloud_url,
        "cloud_model": cloud_model,
        "judge_url": judge_url,
        "guard_mode": guard_mode,
        "canaries": canaries,
        "gen": gen,
        "cloud_max_tokens": cloud_max_tokens,
        "seed": seed,
    }
    return _write_outputs(out, config, aggregates, skipped, rows, notes)


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


def _score(rows: list[Row], records: list[TaskRecord], embed: bool, judge_url: str | None,
           judge_model: str | None, judge_max_tokens: int, judge_cache, progress: bool) -> list[str]:
    """Fill every row's text metrics and judge ratings; returns notes for the report."""
    from tqdm import tqdm

    notes: list[str] = []
    embedder = None
    if embed:
        try:
            embedder = Embedder()
        except (FileNotFoundError, ImportError, OSError) as e:
            notes.append(f"Embedding similarity not computed: {e}")
    else:
        notes.append("Embedding similarity not computed (disabled).")
    by_tid = {r.tid: r for r in records}
    for row in rows:
        ref = by_tid[row.tid].reference
        row.metrics = text_metrics(row.text, ref) if not row.error else {k: math.nan for k in METRIC_KEYS[:3]}
    if embedder is not None:
        ok = [r for r in rows if not r.error and by_tid[r.tid].reference.strip()]
        sims = embedder.similarities([r.text for r in ok], [by_tid[r.tid].reference for r in ok]) if ok else []
        for r, s in zip(ok, sims, strict=True):
            r.metrics["embed_sim"] = s
    if not judge_url:
        notes.append("Judge ratings not computed: no judge configured (--judge-url).")
        return notes
    from cogenesis.eval.judge import Judge, JudgeError

    judge = Judge(judge_url, model=judge_model, cache_dir=judge_cache, max_tokens=judge_max_tokens)
    # record by record, then system: each aspect's prompt (instruction + the record's context + question) is the
    # same up to the answer, so a server with prefix caching (vLLM, llama-server slots) prefills it once
    order = {r.tid: i for i, r in enumerate(records)}
    todo = sorted((r for r in rows if not r.error), key=lambda r: order[r.tid])
    bar = tqdm(total=len(todo) * len(JUDGE_KEYS), desc="judge", unit="rating", disable=not progress)
    try:
        for row in todo:
            for aspect in JUDGE_KEYS:
                row.judge[aspect] = judge.judge(by_tid[row.tid], row.text, aspect).rating
                bar.update()
        notes.append(f"Judge: {judge.model} at {judge_url}; {judge.requests_sent} requests, "
                     f"{judge.cache_hits} answers from the cache; ratings 1-10, unparseable answers count as n/a.")
    except JudgeError as e:
        notes.append(f"Judge stopped: {e}. Ratings so far are kept.")
    finally:
        bar.close()
        judge.close()
    return notes


def _aggregate(rows: list[Row]) -> dict[str, Any]:
    n = len(rows)
    ok = [r for r in rows if not r.error]
    agg: dict[str, Any] = {"answers": n, "errors": n - len(ok), "fallbacks": sum(1 for r in rows if r.fallback)}
    for k in METRIC_KEYS:
        agg[k] = mean(r.metrics.get(k) for r in ok)
    for k in JUDGE_KEYS:
        vals = [r.judge.get(k) for r in ok if k in r.judge]
        agg[f"judge_{k}"] = mean(vals)
        agg[f"judge_{k}_parsed"] = sum(v is not None for v in vals)
    agg["leakage"] = mean(r.leakage for r in rows)
    agg["records_leaking"] = mean(float(bool(r.leaked)) for r in rows)
    planted = [r for r in rows if r.canaries]
    agg["canary_leak"] = mean(r.canaries_leaked / r.canaries for r in planted) if planted else math.nan
    agg["findings_per_answer"] = mean(r.findings for r in rows)
    agg["bytes_per_answer"] = mean(r.bytes for r in rows)
    agg["requests_per_answer"] = mean(r.requests for r in rows)
    agg["wall_s_per_answer"] = mean(r.wall_s for r in rows)
    return agg


# ---- outputs -----------------------------------------------------------------------------------------------


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _row_dict(r: Row) -> dict:
    d = asdict(r)
    d["leakage"] = r.leakage
    return _json_safe(d)


def _problems(rows: list[Row], attr: str, limit: int = 2) -> dict[str, list[str]]:
    """The first distinct errors (or fallback reasons) per system."""
    out: dict[str, list[str]] = {}
    for r in rows:
        msg = getattr(r, attr)
        if msg and msg not in out.setdefault(r.system, []) and len(out[r.system]) < limit:
            out[r.system].append(msg)
    return {s: v for s, v in out.items() if v}


def _markdown(config: dict, aggregates: dict[str, dict], skipped: dict[str, str], notes: list[str],
              rows: list[Row]) -> str:
    has_judge = bool(config.get("judge_url"))
    cols = ["System", "n", "ROUGE-1", "ROUGE-L", "METEOR", "Emb. sim"]
    if has_judge:
        cols += ["Overall", "Personal.", "Overall w/o profile"]
    cols += ["Leakage", "Leaking answers", "Canary leak", "Bytes/answer", "Requests/answer", "Fallbacks", "Errors",
             "Wall s/answer"]
    lines = ["# CoGenesis experiment", "",
             f"{len(config['records'])} records of {config['data']}; on-device bundle `{config['bundle']}`; "
             f"cloud `{config['cloud_model'] or config['cloud_url'] or 'none'}`; guard mode `{config['guard_mode']}`; "
             f"max_new_tokens {config['gen']['max_new_tokens']}.", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for s, a in aggregates.items():
        cells = [s, str(a["answers"]), _fmt(a["rouge1"]), _fmt(a["rougeL"]), _fmt(a["meteor"]), _fmt(a["embed_sim"])]
        if has_judge:
            cells += [_fmt(a[f"judge_{k}"], 2) for k in JUDGE_KEYS]
        cells += [_fmt(a["leakage"]), _fmt(a["records_leaking"], 2), _fmt(a["canary_leak"], 2),
                  _fmt(a["bytes_per_answer"], 0), _fmt(a["requests_per_answer"], 1), str(a["fallbacks"]),
                  str(a["errors"]), _fmt(a["wall_s_per_answer"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Leakage: mean fraction of each record's private facts (private profile fields, past writings, "
              "private notes) found in the bytes sent to the cloud by an independent detector "
              "(`cogenesis.eval.leakcheck`: decoded bodies incl. token ids, normalized text; names, places, "
              "identifiers, verbatim passages; not the egress guard's own findings). Leaking answers: fraction "
              "of answers that sent at least one. Canary leak: fraction of the made-up secrets planted in the "
              "private context found in the sent bytes.", ""]
    if skipped:
        lines += ["## Systems not run", ""] + [f"- **{s}**: {why}" for s, why in skipped.items()] + [""]
    for title, attr in (("Errors", "error"), ("Fallbacks to local", "fallback")):
        probs = _problems(rows, attr)
        if probs:
            lines += [f"## {title}", ""]
            lines += [f"- **{s}** ({sum(1 for r in rows if r.system == s and getattr(r, attr))}x): {m[:300]}"
                      for s, ms in probs.items() for m in ms] + [""]
    lines += ["## Systems", ""] + [f"- **{s}**: {LABELS[s]}" for s in aggregates] + [""]
    if has_judge:
        parsed = ", ".join(f"{s} {min(a[f'judge_{k}_parsed'] for k in JUDGE_KEYS)}/{a['answers'] - a['errors']}"
                           for s, a in aggregates.items())
        notes = [*notes, f"Judge ratings parsed (least of the three aspects / answers judged): {parsed}."]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _plot(aggregates: dict[str, dict], path: Path) -> tuple[Path | None, str | None]:
    """Quality (judge overall, else ROUGE-L) against leakage and against bytes sent, one point per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return None, f"plot not drawn: matplotlib is not installed ({e})"
    use_judge = any(not math.isnan(a.get("judge_overall", math.nan)) for a in aggregates.values())
    key, label = ("judge_overall", "judge overall (1-10)") if use_judge else ("rougeL", "ROUGE-L F1")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120, sharey=True)
    panels = (("leakage", "privacy leakage (fraction of private facts sent)", "quality vs. privacy leakage"),
              ("bytes_per_answer", "bytes sent to the cloud per answer (symlog)", "quality vs. bytes sent"))
    for ax, (xkey, xlabel, title) in zip(axes, panels, strict=True):
        for s, a in aggregates.items():
            x, y = a[xkey], a[key]
            if math.isnan(x) or math.isnan(y):
                continue
            ax.scatter([x], [y], s=40)
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].set_xlim(-0.05, 1.05)
    axes[1].set_xscale("symlog", linthresh=100)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, None


def _write_outputs(out: Path, config: dict, aggregates: dict[str, dict], skipped: dict[str, str], rows: list[Row],
                   notes: list[str]) -> ExperimentResult:
    plot, why = _plot(aggregates, out / "quality_vs_leakage.png")
    if why:
        notes.append(why)
    report = out / "report.md"
    report.write_text(_markdown(config, aggregates, skipped, notes, rows), encoding="utf-8")
    results = out / "results.json"
    results.write_text(json.dumps(_json_safe({"config": config, "systems": aggregates, "skipped": skipped,
                                              "notes": notes, "rows": [_row_dict(r) for r in rows]}),
                                  indent=1, ensure_ascii=False), encoding="utf-8")
    with open(out / "outputs.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_row_dict(r), ensure_ascii=False) + "\n")
    return ExperimentResult(out, aggregates, skipped, rows, notes, report, results, plot)


# ---- command line ------------------------------------------------------------------------------------------


def add_experiment_parser(sub) -> None:
    """`cogenesis experiment ...` (register with ``add_experiment_parser(subparsers)``)."""
    p = sub.add_parser("experiment", help="run systems on records: quality vs. privacy leakage report (Table 1)")
    p.add_argument("--data", default="sample", help="records file (default: the shipped sample)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    p.add_argument("--limit", type=int, default=None, help="first N records")
    p.add_argument("--bundle", required=True, help="on-device bundle (cogenesis export --out DIR)")
    p.add_argument("--cloud-url", default=None, help="OpenAI-compatible cloud (cogenesis cloud serve, vLLM)")
    p.add_argument("--api-key", default=None, help="cloud API key (default: $COGENESIS_CLOUD_API_KEY)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible judge endpoint (no judge: no ratings)")
    p.add_argument("--judge-model", default=None, help="judge model name (default: the endpoint's first)")
    p.add_argument("--judge-max-tokens", type=int, default=256)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per answer (default 256)")
    p.add_argument("--cloud-max-tokens", type=int, default=None, help="tokens of the sketch outline")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="on-device model (1 = off)")
    p.add_argument("--guard-mode", choices=["audit", "strict", "off"], default="audit",
                   help="audit (default): measure each method's leakage; strict: as shipped (refuse + fall back)")
    p.add_argument("--no-canaries", action="store_true", help="do not plant a made-up secret per record")
    p.add_argument("--no-embed", action="store_true", help="skip the MiniLM embedding similarity")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the on-device model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", default=None, choices=["learned", "mean", "max", "weight", "local", "cloud"],
                   help="logits systems: the fusion rule (default learned)")
    p.add_argument("--prefix-policy", default=None, choices=["stop", "redact"],
                   help="logits systems: at the reply's first private term stop asking the cloud (default) or go "
                        "on with the term replaced by a placeholder")
    p.add_argument("--cross-tokenizer", action="store_true",
                   help="logits systems: fuse through the tokens' text (a cloud of another vocabulary, or "
                        "llama-server, which takes no token-id prompts)")
    p.add_argument("--fusion-net", default=None, metavar="JSON",
                   help="logits systems with --rule learned: a net trained for this pair (cogenesis calibrate fusion)")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(a) -> int:
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    logits_opts = {k: v for k, v in {"rule": a.rule, "prefix_policy": a.prefix_policy,
                                     "cross_tokenizer": a.cross_tokenizer or None,
                                     "fusion_net": a.fusion_net}.items() if v}
    r = run_experiment(a.data, systems=systems, limit=a.limit, bundle=a.bundle, cloud_url=a.cloud_url,
                       out_dir=a.out, judge_url=a.judge_url, judge_model=a.judge_model,
                       judge_max_tokens=a.judge_max_tokens, api_key=a.api_key, max_new_tokens=a.max_tokens,
                       cloud_max_tokens=a.cloud_max_tokens, temperature=a.temperature,
                       repetition_penalty=a.repetition_penalty, guard_mode=a.guard_mode, canaries=not a.no_canaries,
                       embed=not a.no_embed, threads=a.threads, seed=a.seed,
                       write_options={s: dict(logits_opts) for s in ("logits", "logits-block")} if logits_opts else None)
    print(r.report.read_text(encoding="utf-8"))
    print(f"written: {r.report}, {r.results}" + (f", {r.plot}" if r.plot else ""))
    return 0
