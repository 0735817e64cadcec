"""The experiment's quality scores per answer: ROUGE-1/L, METEOR, embedding similarity and the judge's ratings."""

from __future__ import annotations

import math

from cogenesis.data.records import TaskRecord
from cogenesis.eval.metrics import Embedder, text_metrics
from cogenesis.eval.systems import Row

METRIC_KEYS = ("rouge1", "rougeL", "meteor", "embed_sim")
JUDGE_KEYS = ("overall", "personalization", "overall_noprofile")


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
