"""The experiment's outputs: per-system aggregates, ``report.md``, ``results.json``, ``outputs.jsonl`` and the
quality-vs-leakage plot."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cogenesis.core.files import atomic_write_bytes, atomic_write_text
from cogenesis.eval.metrics import mean
from cogenesis.eval.scoring import JUDGE_KEYS, METRIC_KEYS
from cogenesis.eval.systems import LABELS, Row


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


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


# ---- aggregation -------------------------------------------------------------------------------------------


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path, None


def _write_outputs(out: Path, config: dict, aggregates: dict[str, dict], skipped: dict[str, str], rows: list[Row],
                   notes: list[str]) -> ExperimentResult:
    plot, why = _plot(aggregates, out / "quality_vs_leakage.png")
    if why:
        notes.append(why)
    report = atomic_write_text(out / "report.md", _markdown(config, aggregates, skipped, notes, rows))
    results = atomic_write_text(out / "results.json", json.dumps(
        _json_safe({"config": config, "systems": aggregates, "skipped": skipped, "notes": notes,
                    "rows": [_row_dict(r) for r in rows]}), indent=1, ensure_ascii=False))
    atomic_write_text(out / "outputs.jsonl", "".join(json.dumps(_row_dict(r), ensure_ascii=False) + "\n"
                                                     for r in rows))
    return ExperimentResult(out, aggregates, skipped, rows, notes, report, results, plot)
