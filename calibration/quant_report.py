"""`cogenesis calibrate quant --out DIR`: choose the quantization by measurement.

For each variant of the same fp32 graph: size, decode tokens/s, teacher-forced top-1 agreement and mean
KL(fp32 || variant) over held-out reference texts, and the perplexity of those texts; then, for each device
profile, the variant it should ship (the fastest one whose quality passes the gate and whose weights + KV cache fit
the profile's memory budget). Writes quant_report.json, quant_report.md and quant_report.png.

Data: the shipped sample (cogenesis.data.records.load_sample), rendered as the on-device model sees it
(cogenesis.data.prompts.with_context: profile + past writings + task). Records are split BY USER: the first users
calibrate the static int8 variant, the others are held out for every number in the report.

Reference: our fp32 ONNX graph (itself held to transformers eager by the export parity test: greedy identical,
logit diff ~1e-4), teacher-forced on prompt + reference text; agreement/KL are over the reference-text positions.

Variants (names are stable; `VARIANTS` documents each):
  fp32, int8-dynamic, int8-static-qdq, int8-wo, int4-{sym,asym}-b{32,128}, int4-asym-b32-acc0,
  int4-asym-b32-head4, int4-asym-b32-q8emb, gguf-int4, gguf-int4-fast, builder-int4, et-8da4w, et-8da4w-gguf.

Modules: ``quant_variants`` (what each variant is, building and caching it), ``quant_measure`` (held-out data,
quality and speed), this one (the choice per device profile, the report, the CLI); every name stays importable
from here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cogenesis.calibration.quant_measure import (  # noqa: F401
    _decoder,
    _encoder,
    _log_softmax,
    _logits_over_reference,
    encode_records,
    measure_quality,
    measure_speed,
    reference_logprobs,
    split_records,
)
from cogenesis.calibration.quant_variants import (  # noqa: F401
    DEFAULT_VARIANTS,
    LM_HEAD_NODE,
    LM_HEAD_WEIGHT,
    VARIANTS,
    Variant,
    _CalibReader,
    _code_key,
    _matmulnbits,
    _q8_codes,
    _q8_head_and_embedding,
    build_variant,
    model_bytes,
    variant_model,
)

QUALITY_GATE = {"min_top1": 0.98, "max_kl": 0.02}


# -- choosing -----------------------------------------------------------------------------------------------------
def choose(rows: list[dict], target, facts: dict, gate: dict = QUALITY_GATE) -> dict:
    """The variant `target` should ship: among those that fit its memory budget (weights + KV cache at its max
    context), the fastest one that passes the quality gate; if none passes, the most faithful one that fits."""
    from cogenesis.export.targets import budget_check

    fits = []
    for r in rows:
        if r.get("error"):
            continue
        if r.get("runtime") == "executorch" and not (target.format == "executorch" or target.name.startswith("android")):
            continue  # the .pte is the phone artifact: laptops and Pis run the ONNX bundle (no libtorch there)
        b = budget_check(target, r["bytes"], facts)
        if b["fits"]:
            fits.append((r, b))
    if not fits:
        return {"target": target.name, "variant": None, "why": "no variant fits the memory budget"}
    good = [(r, b) for r, b in fits if r["teacher_forced_top1"] >= gate["min_top1"] and r["mean_kl"] <= gate["max_kl"]]
    if good:
        r, b = max(good, key=lambda x: (x[0]["decode_tok_s"], -x[0]["bytes"]))
        why = (f"fastest of {len(good)} variants with top-1 >= {gate['min_top1']} and KL <= {gate['max_kl']} that fit "
               f"{b['budget_mb']} MB ({b['total_mb']} MB incl. KV at {target.max_context} tokens)")
    else:
        r, b = max(fits, key=lambda x: (x[0]["teacher_forced_top1"], -x[0]["mean_kl"]))
        why = "no fitting variant passes the quality gate: the most faithful one that fits"
    return {"target": target.name, "variant": r["variant"], "format": "executorch" if r.get("runtime") == "executorch"
            else "onnx", "decode_tok_s": r["decode_tok_s"], "teacher_forced_top1": r["teacher_forced_top1"],
            "mean_kl": r["mean_kl"], "total_mb": b["total_mb"], "budget_mb": b["budget_mb"], "why": why}


# -- report -------------------------------------------------------------------------------------------------------
@dataclass
class _Data:
    """The encoded calibration and held-out records of one report."""

    calib_recs: list[dict]
    held_recs: list[dict]

    @property
    def calib_seqs(self) -> list[list[int]]:
        return [r["prompt_ids"] + r["ref_ids"] for r in self.calib_recs]

    @property
    def n_ref(self) -> int:
        return sum(len(r["ref_ids"]) for r in self.held_recs)


def _variant_names(variants) -> list[str]:
    names = list(variants or DEFAULT_VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"unknown variant {n!r}; choose from {', '.join(VARIANTS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")
    return names


def _logger(progress: bool):
    def log(msg):
        if progress:
            print(f"[quant] {msg}", flush=True)

    return log


def _encode_data(src, calib_users: int, max_heldout: int | None, max_ref_tokens: int) -> _Data:
    """The shipped sample split by user (calibration / held out), encoded as the on-device model sees it."""
    from cogenesis.data.records import load_sample

    calib, held = split_records(load_sample(), calib_users)
    held = held[:max_heldout] if max_heldout else held
    return _Data(encode_records(src.hf_dir, calib, max_ref_tokens), encode_records(src.hf_dir, held, max_ref_tokens))


def _reused_quality(reuse_quality: str | Path | None, data: _Data, model_name: str) -> dict[str, dict]:
    """Rows of an earlier report over the same held-out data and model, by variant ({} without one)."""
    if not reuse_quality:
        return {}
    prev = json.loads(Path(reuse_quality).read_text())
    if (prev["data"]["heldout_records"] != [r["tid"] for r in data.held_recs]
            or prev["data"]["heldout_reference_tokens"] != data.n_ref or prev.get("model") != model_name):
        raise ValueError(f"{reuse_quality}: measured on other held-out data or model; cannot reuse its quality")
    return {r["variant"]: r for r in prev["rows"] if "error" not in r}


def _quality_row(n: str, src, kv, data: _Data, reused: dict, threads: int, log, ref: list) -> dict:
    """Build/load variant `n` and measure its quality (or take it from `reused`). `ref` holds the fp32 reference
    log-probs once computed (on first need); a variant that cannot be built or run is reported, not fatal."""
    from cogenesis.export.pipeline import _fp32_cached

    v = VARIANTS[n]
    log(f"{n}: build/load")
    row = {"variant": n, "family": v.family, "runtime": v.runtime, "doc": v.doc}
    try:
        path, qfacts = variant_model(n, src, data.calib_seqs, kv)
        row.update(bytes=model_bytes(path), quant=qfacts, path=str(path))
        if n in reused:
            row.update({k: reused[n][k] for k in ("teacher_forced_top1", "mean_kl", "perplexity", "positions")})
        else:
            if not ref:
                log("fp32 reference log-probs")
                ref.append(reference_logprobs(_fp32_cached(src.hf_dir), kv, data.held_recs, threads))
            log(f"{n}: quality")
            row.update(measure_quality(_decoder(path, kv, threads), data.held_recs, ref[0]))
    except Exception as e:  # a variant that cannot be built or run is reported, not fatal
        row["error"] = f"{type(e).__name__}: {str(e)[-600:]}"
        log(f"{n}: FAILED {row['error'][:200]}")
    if "error" not in row:
        log(f"{n}: {row['bytes'] / 2**20:.0f} MB  top-1 {row['teacher_forced_top1']:.3f}  KL {row['mean_kl']:.4f}  "
            f"ppl {row['perplexity']:.2f}")
    return row


def _measure_speeds(rows: list[dict], kv, threads: int, prompt: list[int], decode_tokens: int, rounds: int,
                    log) -> None:
    """Decode tok/s of every working row, round-robin `rounds` times, best kept (a failure marks the row)."""
    for k in range(rounds):
        for row in rows:
            if "error" in row:
                continue
            try:
                dec = _decoder(Path(row["path"]), kv, threads)
                row.setdefault("decode_tok_s_rounds", []).append(
                    round(measure_speed(dec, prompt, decode_tokens, repeats=1), 2))
                del dec
            except Exception as e:
                row["error"] = f"speed: {type(e).__name__}: {str(e)[-600:]}"
                continue
            row["decode_tok_s"] = max(row["decode_tok_s_rounds"])
        log(f"speed round {k + 1}/{rounds}: " + ", ".join(
            f"{r['variant']} {r['decode_tok_s_rounds'][-1]:.0f}" for r in rows if "error" not in r))


def _speed_info(threads: int, decode_tokens: int, prompt_tokens: int, rounds: int) -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"threads": threads, "decode_tokens": decode_tokens, "prompt_tokens": prompt_tokens,
            "rounds": rounds, "cpu_count": os.cpu_count(), "load_average_at_end": load,
            "note": f"best of {rounds} round-robin rounds over all variants; on a shared machine "
                    "tok/s is noisy, compare within one report"}


def _report_dict(model_name: str, data: _Data, max_ref_tokens: int, speed: dict, rows: list[dict],
                 choices: list[dict], t0: float) -> dict:
    return {
        "model": model_name,
        "reference": "our fp32 ONNX graph, teacher-forced on held-out prompt + reference text",
        "data": {"source": "cogenesis/assets/sample_data.json (load_sample), prompts = with_context(record)",
                 "calibration_records": [r["tid"] for r in data.calib_recs],
                 "heldout_records": [r["tid"] for r in data.held_recs],
                 "heldout_reference_tokens": data.n_ref, "max_ref_tokens": max_ref_tokens},
        "speed": speed,
        "quality_gate": QUALITY_GATE,
        "rows": [{k: v for k, v in r.items() if k != "path"} for r in rows],
        "choices": choices,
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _write_report(rep: dict, out: Path, plot: bool) -> None:
    """quant_report.json and .md in `out`, and the plot when asked for and some variant worked."""
    (out / "quant_report.json").write_text(json.dumps(rep, indent=2))
    (out / "quant_report.md").write_text(format_markdown(rep))
    if plot and any("error" not in r for r in rep["rows"]):
        rep["plot"] = str(plot_report(rep, out / "quant_report.png"))
        (out / "quant_report.json").write_text(json.dumps(rep, indent=2))


def quant_report(out_dir: str | Path, variants: list[str] | tuple[str, ...] | None = None, model: str | None = None,
                 threads: int = 2, max_heldout: int | None = None, max_ref_tokens: int = 192,
                 decode_tokens: int = 64, calib_users: int = 2, targets: list[str] | None = None,
                 plot: bool = True, progress: bool = True, speed_rounds: int = 3,
                 reuse_quality: str | Path | None = None) -> dict:
    """Measure every variant, write quant_report.{json,md,png} in out_dir, return the report.

    Speed is measured after quality, round-robin over all variants `speed_rounds` times (best of the rounds), so
    that a load change on a shared machine does not favour whichever variant ran during a quiet minute.
    reuse_quality: a previous quant_report.json over the same held-out data; its quality numbers are kept and only
    speed is measured again (quality does not depend on the machine)."""
    from cogenesis.export.onnx_export import model_facts
    from cogenesis.export.pipeline import resolve_source
    from cogenesis.export.targets import TARGETS, get_target
    from cogenesis.runtime.model import KVSpec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _variant_names(variants)
    log = _logger(progress)
    t0 = time.time()
    src = resolve_source(model)
    facts = model_facts(src.hf_dir)
    kv = KVSpec(facts["num_layers"], facts["num_kv_heads"], facts["head_dim"])
    data = _encode_data(src, calib_users, max_heldout, max_ref_tokens)
    reused = _reused_quality(reuse_quality, data, src.name)
    log(f"{len(data.held_recs)} held-out records ({data.n_ref} reference tokens), "
        f"{len(data.calib_recs)} calibration records")
    ref: list = []
    rows = [_quality_row(n, src, kv, data, reused, threads, log, ref) for n in names]
    speed_prompt = data.held_recs[0]["prompt_ids"][-200:]
    _measure_speeds(rows, kv, threads, speed_prompt, decode_tokens, speed_rounds, log)
    ok = [r for r in rows if "error" not in r]
    choices = [choose(ok, get_target(t), facts) for t in targets or list(TARGETS)]
    speed = _speed_info(threads, decode_tokens, len(speed_prompt), speed_rounds)
    rep = _report_dict(src.name, data, max_ref_tokens, speed, rows, choices, t0)
    _write_report(rep, out, plot)
    return rep


def format_markdown(rep: dict) -> str:
    s = rep["speed"]
    lines = [f"# Quantization report: {rep['model']} ({rep['date']})", "",
             f"Held-out: {len(rep['data']['heldout_records'])} records, {rep['data']['heldout_reference_tokens']} "
             f"reference tokens (users not used for calibration). Reference: {rep['reference']}. Decode speed: "
             f"{s['threads']} threads, {s['decode_tokens']} tokens after a {s['prompt_tokens']}-token prompt, "
             f"{s['cpu_count']} cores, load average at the end "
             f"{' / '.join(f'{x:.1f}' for x in s['load_average_at_end'] or [])}; best of {s.get('rounds', 1)} "
             "round-robin rounds (a shared machine: compare speeds within this report only).", "",
             "| variant | MB | decode tok/s | top-1 vs fp32 | mean KL | perplexity | scheme |",
             "|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | - | - | - | - | - | FAILED: {r['error'][:120]} |")
            continue
        lines.append(f"| {r['variant']} | {r['bytes'] / 2**20:.0f} | {r['decode_tok_s']:.1f} | "
                     f"{r['teacher_forced_top1']:.3f} | {r['mean_kl']:.4f} | {r['perplexity']:.2f} | {r['doc']} |")
    g = rep["quality_gate"]
    lines += ["", f"## Choice per device profile (gate: top-1 >= {g['min_top1']}, KL <= {g['max_kl']}; budget = "
              "weights + fp32 KV cache at the profile's max context)", "",
              "| target | variant | format | tok/s here | top-1 | KL | MB used / budget | why |", "|---|---|---|---|---|---|---|---|"]
    for c in rep["choices"]:
        if c["variant"] is None:
            lines.append(f"| {c['target']} | - | - | - | - | - | - | {c['why']} |")
            continue
        lines.append(f"| {c['target']} | {c['variant']} | {c['format']} | {c['decode_tok_s']:.1f} | "
                     f"{c['teacher_forced_top1']:.3f} | {c['mean_kl']:.4f} | {c['total_mb']} / {c['budget_mb']} | {c['why']} |")
    return "\n".join(lines) + "\n"


def plot_report(rep: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rep["rows"] if "error" not in r]
    colors = {"fp32": "black", "int8": "tab:orange", "int4": "tab:blue", "gguf": "tab:green", "builder": "tab:purple",
              "executorch": "tab:red"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5.5))
    for r in rows:
        c = colors.get(r["family"], "gray")
        a.scatter(r["bytes"] / 2**20, r["teacher_forced_top1"], color=c, s=40)
        a.annotate(r["variant"], (r["bytes"] / 2**20, r["teacher_forced_top1"]), fontsize=7, xytext=(3, 3),
                   textcoords="offset points")
        b.scatter(r["decode_tok_s"], max(r["mean_kl"], 1e-6), color=c, s=40)
        b.annotate(r["variant"], (r["decode_tok_s"], max(r["mean_kl"], 1e-6)), fontsize=7, xytext=(3, 3),
                   textcoords="offset points")
    a.set_xlabel("model size (MiB)")
    a.set_ylabel("teacher-forced top-1 agreement with fp32")
    a.axhline(rep["quality_gate"]["min_top1"], ls="--", lw=0.8, color="gray")
    a.set_title("size vs agreement (held-out reference texts)")
    b.set_xscale("linear")
    b.set_yscale("log")
    b.axhline(rep["quality_gate"]["max_kl"], ls="--", lw=0.8, color="gray")
    b.set_xlabel(f"decode tokens/s ({rep['speed']['threads']} threads, this machine)")
    b.set_ylabel("mean KL(fp32 || variant)")
    b.set_title("speed vs divergence")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Quantization variants of {rep['model']}; chosen: " +
                 ", ".join(f"{c['target']}={c['variant']}" for c in rep["choices"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``cogenesis calibrate quant``."""
    p.add_argument("--out", required=True, help="folder for quant_report.json/.md/.png")
    p.add_argument("--model", default=None, help="HF folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help=f"variants to measure (default: all): {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=2, help="threads for the speed measurement (default 2)")
    p.add_argument("--max-heldout", type=int, default=None, help="use only the first N held-out records")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--speed-rounds", type=int, default=3, help="round-robin speed rounds, best kept (default 3)")
    p.add_argument("--reuse-quality", default=None, metavar="JSON",
                   help="keep the quality numbers of this earlier quant_report.json (same data); re-measure speed only")
    p.add_argument("--targets", nargs="+", default=None, help="device profiles to choose for (default: all)")
    p.add_argument("--no-plot", action="store_true")


def run(a: argparse.Namespace) -> int:
    """``cogenesis calibrate quant``."""
    rep = quant_report(a.out, variants=a.variants, model=a.model, threads=a.threads, max_heldout=a.max_heldout,
                       decode_tokens=a.decode_tokens, targets=a.targets, plot=not a.no_plot,
                       speed_rounds=a.speed_rounds, reuse_quality=a.reuse_quality)
    print(format_markdown(rep))
    print(f"report: {Path(a.out) / 'quant_report.md'}" + (f"; plot: {rep['plot']}" if rep.get("plot") else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cogenesis calibrate quant", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
