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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LM_HEAD_NODE = "/lm_head/MatMul"
LM_HEAD_WEIGHT = "lm_head.MatMul.weight"


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # fp32 | int8 | int4 | gguf | builder | executorch
    doc: str
    runtime: str = "onnx"  # onnx | executorch


VARIANTS = {v.name: v for v in [
    Variant("fp32", "fp32", "the builder's fp32 graph (reference)"),
    Variant("int8-dynamic", "int8", "onnxruntime quantize_dynamic: int8 weights per channel, activations per TENSOR "
            "at run time (lm_head fp32)"),
    Variant("int8-static-qdq", "int8", "onnxruntime quantize_static, QDQ: int8 weights per channel, activations per "
            "tensor with ranges calibrated (MinMax) on context-aware prompts of held-in users (lm_head fp32)"),
    Variant("int8-wo", "int8", "MatMulNBits 8-bit weights block 32, int8 activations per block of 32 "
            "(accuracy_level 4; the `int8` bundle), lm_head fp32"),
    Variant("int4-sym-b32", "int4", "MatMulNBits int4 symmetric block 32, accuracy_level 4, lm_head fp32"),
    Variant("int4-asym-b32", "int4", "MatMulNBits int4 asymmetric block 32, accuracy_level 4, lm_head fp32"),
    Variant("int4-sym-b128", "int4", "MatMulNBits int4 symmetric block 128, accuracy_level 4, lm_head fp32"),
    Variant("int4-asym-b128", "int4", "MatMulNBits int4 asymmetric block 128, accuracy_level 4, lm_head fp32"),
    Variant("int4-asym-b32-acc0", "int4", "as int4-asym-b32 with fp32 activations (accuracy_level 0)"),
    Variant("int4-asym-b32-head4", "int4", "as int4-asym-b32 with lm_head int4 too (the fp32 weight stays for the "
            "embedding gather)"),
    Variant("int4-asym-b32-q8emb", "int4", "as int4-asym-b32 with lm_head and embedding sharing one int8 copy "
            "(block 32, symmetric)"),
    Variant("gguf-int4", "gguf", "GGUF-exact: the GGUF's own Q4_1/Q8_0 codes, fp32 activations (the `int4` bundle)"),
    Variant("gguf-int4-fast", "gguf", "GGUF codes with int8 activations per block of 32 (the `int4-fast` bundle)"),
    Variant("builder-int4", "builder", "onnxruntime-genai model builder `-p int4` (symmetric block 32, "
            "accuracy_level 4, lm_head fp32)"),
    Variant("et-8da4w", "executorch", "ExecuTorch .pte, XNNPACK, stock recipe: int4 weights (group 32, HQQ) x int8 "
            "dynamic per-token activations for all linears incl. lm_head, embedding int8", runtime="executorch"),
    Variant("et-8da4w-gguf", "executorch", "ExecuTorch .pte, XNNPACK: the GGUF's own Q4_1 codes x int8 dynamic "
            "per-token activations, lm_head int8 per channel, embedding = GGUF Q8_0 codes", runtime="executorch"),
]}
DEFAULT_VARIANTS = tuple(VARIANTS)
QUALITY_GATE = {"min_top1": 0.98, "max_kl": 0.02}


# -- data ---------------------------------------------------------------------------------------------------------
def _encoder(hf_dir: Path):
    from cogenesis.export.pipeline import _chat_template
    from cogenesis.runtime.chat import compile_template, render
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tpl = compile_template(_chat_template(hf_dir))

    def enc_text(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def render_msgs(msgs, gen=True) -> str:
        return render(tpl, msgs, gen)

    return enc_text, render_msgs


def split_records(records, n_calib_users: int = 2):
    users = list(dict.fromkeys(r.user_id for r in records))
    calib = set(users[:n_calib_users])
    return [r for r in records if r.user_id in calib], [r for r in records if r.user_id not in calib]


def encode_records(hf_dir: Path, records, max_ref_tokens: int = 192) -> list[dict]:
    """prompt ids (with_context, generation prompt) + reference ids (the assistant turn, clipped)."""
    from cogenesis.data.prompts import with_context

    enc, render = _encoder(hf_dir)
    out = []
    for r in records:
        msgs = with_context(r)
        prompt = render(msgs, True)
        full = render(msgs + [{"role": "assistant", "content": r.reference}], False)
        if not full.startswith(prompt):
            raise ValueError(f"{r.tid}: the chat template does not extend the prompt with the assistant turn")
        out.append({"tid": r.tid, "prompt_ids": enc(prompt), "ref_ids": enc(full[len(prompt):])[:max_ref_tokens]})
    return out


# -- building variants --------------------------------------------------------------------------------------------
def _q8_codes(w_nk: np.ndarray):
    """Symmetric int8 codes per block of 32 along K (Q8_0-like) of a [N, K] weight."""
    from cogenesis.export.gguf_codes import BLOCK, BlockCodes

    n, k = w_nk.shape
    b = w_nk.reshape(n, k // BLOCK, BLOCK)
    d = np.abs(b).max(-1) / 127.0
    d = np.where(d == 0, 1.0, d).astype(np.float32)
    q = np.clip(np.rint(b / d[..., None]), -127, 127).astype(np.int8).reshape(n, k)
    return BlockCodes(q, d, None, "Q8_0")


def _q8_head_and_embedding(model, q8_accuracy_level: int = 4) -> None:
    """lm_head MatMul and the embedding gather on one shared int8 copy of the tied weight (gguf_exact's rewrite)."""
    from cogenesis.export import gguf_exact
    from cogenesis.export.graph import initializer_map
    from onnx import helper, numpy_helper

    g = model.graph
    w = numpy_helper.to_array(initializer_map(g)[LM_HEAD_WEIGHT])  # [K, N]
    weights = {LM_HEAD_WEIGHT: _q8_codes(np.ascontiguousarray(w.T))}
    new_inits: list = []
    gguf_exact._replace_embedding(g, weights, new_inits)
    node = next(n for n in g.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] == LM_HEAD_WEIGHT)
    idx = list(g.node).index(node)
    new = gguf_exact._replace_matmul(g, node, weights[LM_HEAD_WEIGHT], 0, q8_accuracy_level, {}, new_inits)
    g.node.remove(node)
    for j, n in enumerate(new):
        g.node.insert(idx + j, n)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    fresh = {t.name: t for t in new_inits if t.name in used}
    del g.initializer[:]
    g.initializer.extend(keep + list(fresh.values()))
    if not any(o.domain == gguf_exact.MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(gguf_exact.MS, 1))


def _matmulnbits(model, bits: int, block: int, symmetric: bool, acc: int, head: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, accuracy_level=acc, bits=bits)
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=[] if head else [LM_HEAD_NODE], algo_config=cfg)
    q.process()
    model.CopyFrom(q.model.model)


class _CalibReader:
    """onnxruntime CalibrationDataReader over context-aware prompts: one prefill per prompt (empty past)."""

    def __init__(self, seqs: list[list[int]], kv, input_names: set[str]):
        self.feeds = []
        for ids in seqs:
            f = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
            for i in range(kv.num_layers):
                for t in ("key", "value"):
                    f[f"past_key_values.{i}.{t}"] = np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), np.float32)
            if "num_logits_to_keep" in input_names:
                f["num_logits_to_keep"] = np.array(1, np.int64)
            self.feeds.append(f)
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.feeds)


def build_variant(name: str, fp32_path: Path, src, dst: Path, calib_seqs: list[list[int]] | None = None,
                  kv=None) -> dict:
    """Write variant `name` of the fp32 graph to dst/model.onnx(+.data); returns its quantization facts."""
    import onnx
    from cogenesis.export import graph, quantize

    dst.mkdir(parents=True, exist_ok=True)
    if name == "fp32":
        raise ValueError("fp32 is the cached builder graph itself (variant_model returns it); nothing to build")
    if name == "int8-dynamic":
        return quantize.int8_dynamic(fp32_path, dst / "model.onnx")
    if name == "int8-static-qdq":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if not calib_seqs:
            raise ValueError("int8-static-qdq needs calibration prompts")
        names = {i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.input}
        quantize_static(str(fp32_path), str(dst / "model.onnx"), _CalibReader(calib_seqs, kv, names),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[LM_HEAD_NODE], use_external_data_format=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False})
        return {"scheme": "int8-static-qdq", "calibration": f"MinMax over {len(calib_seqs)} context-aware prompts "
                f"({sum(map(len, calib_seqs))} tokens)", "activations": "uint8 per tensor", "weights": "int8 per channel",
                "lm_head": "fp32"}
    m = onnx.load(str(fp32_path))
    if name == "int8-wo":
        info = quantize.weight_only(m, bits=8, symmetric=True)
    elif name.startswith("int4-"):
        parts = name.split("-")
        sym, block = parts[1] == "sym", int(parts[2][1:])
        acc = 0 if "acc0" in parts else 4
        head = "head4" in parts
        _matmulnbits(m, 4, block, sym, acc, head)
        info = {"scheme": "int4-matmulnbits", "block_size": block, "symmetric": sym, "accuracy_level": acc,
                "lm_head": "int4" if head else "fp32"}
        if "q8emb" in parts:
            _q8_head_and_embedding(m)
            info.update(lm_head="int8 block 32 (shared with embedding)", embedding="int8 block 32")
    elif name in ("gguf-int4", "gguf-int4-fast"):
        if src.gguf is None:
            raise ValueError(f"{name} needs a GGUF source model")
        from cogenesis.export.gguf_exact import quantize_gguf_exact

        info = quantize_gguf_exact(m, str(src.gguf), accuracy_level=4 if name.endswith("fast") else 0)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    graph.save(m, str(dst / "model.onnx"), "model.onnx.data")
    return info


def _code_key() -> str:
    """Version of the variant-building code (not of the measuring/report code: editing that keeps the cache)."""
    import inspect

    root = Path(__file__).resolve().parents[1] / "export"
    h = hashlib.sha256()
    for fn in (build_variant, _matmulnbits, _q8_head_and_embedding, _q8_codes, _CalibReader):
        h.update(inspect.getsource(fn).encode())
    for f in ("quantize.py", "gguf_exact.py", "gguf_codes.py", "graph.py", "onnx_export.py"):
        p = root / f
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def variant_model(name: str, src, calib_seqs=None, kv=None) -> tuple[Path, dict]:
    """(path, facts) of a variant: .onnx graphs cached per fp32 graph + code version, the .pte via executorch."""
    from cogenesis.export.pipeline import _fp32_cached

    from cogenesis.core.paths import cache_dir

    if name.startswith("et-"):
        from cogenesis.export.executorch_export import cached_pte

        pte, facts = cached_pte(src.hf_dir, name[3:])
        return pte, {"scheme": facts["scheme"], "export_seconds": facts.get("export_seconds")}
    if name == "builder-int4":
        from cogenesis.export.onnx_export import run_builder

        d = cache_dir() / "bench" / "genai-int4"  # shared with bench/edge_decode.py
        if not (d / "model.onnx").is_file():
            run_builder(src.hf_dir, d, precision="int4")
        return d / "model.onnx", {"scheme": VARIANTS[name].doc}
    fp32 = _fp32_cached(src.hf_dir)
    if name == "fp32":  # no copy, no link (onnx refuses external data with several hard links)
        return fp32, {"scheme": "fp32"}
    d = cache_dir() / "quant-variants" / f"{fp32.parent.name}-{_code_key()}" / name
    facts_path = d / "facts.json"
    if not facts_path.is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=d.parent if d.parent.exists() else None))
        try:
            facts = build_variant(name, fp32, src, tmp, calib_seqs, kv)
            (tmp / "facts.json").write_text(json.dumps(facts, indent=2))
            if d.exists():
                shutil.rmtree(d)
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return d / "model.onnx", json.loads(facts_path.read_text())


def model_bytes(path: Path) -> int:
    if path.suffix == ".pte":
        return path.stat().st_size
    data = {path.name}
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    data |= {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return sum((path.parent / f).stat().st_size for f in data)


# -- measuring ----------------------------------------------------------------------------------------------------
def _decoder(path: Path, kv, threads: int):
    if path.suffix == ".pte":
        from cogenesis.export.executorch_export import PteDecoder

        return PteDecoder(path, threads=threads)
    from cogenesis.runtime.model import Decoder, make_session, uses_gqa

    return Decoder(make_session(str(path), threads), kv, shared_kv=uses_gqa(str(path)))


def _logits_over_reference(dec, rec: dict) -> np.ndarray:
    """Logits predicting each reference token: [len(ref), vocab]."""
    p, r = rec["prompt_ids"], rec["ref_ids"]
    dec.reset()
    if hasattr(dec, "session"):  # onnxruntime: one teacher-forced pass
        return dec.forward(p + r, keep=len(r) + 1)[:-1]
    rows = [dec.forward(p)[-1]]  # a .pte returns the last position only: feed the reference token by token
    for t in r[:-1]:
        rows.append(dec.forward([t])[-1])
    return np.stack(rows)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_logprobs(fp32_path: Path, kv, recs: list[dict], threads: int) -> list[np.ndarray]:
    dec = _decoder(fp32_path, kv, threads)
    return [_log_softmax(_logits_over_reference(dec, r)).astype(np.float32) for r in recs]


def measure_quality(dec, recs: list[dict], ref_lp: list[np.ndarray]) -> dict:
    agree, kl, nll, n = 0.0, 0.0, 0.0, 0
    for rec, lp in zip(recs, ref_lp, strict=True):
        lq = _log_softmax(_logits_over_reference(dec, rec))
        tgt = np.asarray(rec["ref_ids"])
        agree += float((lq.argmax(-1) == lp.argmax(-1)).sum())
        kl += float((np.exp(lp) * (lp - lq)).sum(-1).sum())
        nll += float(-lq[np.arange(len(tgt)), tgt].sum())
        n += len(tgt)
    return {"teacher_forced_top1": agree / n, "mean_kl": max(kl / n, 0.0),  # fp32 vs itself: -1e-9 rounding
            "perplexity": float(np.exp(nll / n)), "positions": n}


def measure_speed(dec, prompt: list[int], new_tokens: int, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        dec.reset()
        lg = dec.forward(prompt)[-1]
        t = time.perf_counter()
        for _ in range(new_tokens):
            lg = dec.forward([int(np.argmax(lg))])[-1]
        best = max(best, new_tokens / (time.perf_counter() - t))
    return best


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
    from cogenesis.export.pipeline import _fp32_cached, resolve_source
    from cogenesis.export.targets import TARGETS, get_target
    from cogenesis.runtime.model import KVSpec

    from cogenesis.data.records import load_sample

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(variants or DEFAULT_VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"unknown variant {n!r}; choose from {', '.join(VARIANTS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")

    def log(msg):
        if progress:
            print(f"[quant] {msg}", flush=True)

    t0 = time.time()
    src = resolve_source(model)
    facts = model_facts(src.hf_dir)
    kv = KVSpec(facts["num_layers"], facts["num_kv_heads"], facts["head_dim"])
    calib, held = split_records(load_sample(), calib_users)
    held = held[:max_heldout] if max_heldout else held
    calib_recs = encode_records(src.hf_dir, calib, max_ref_tokens)
    held_recs = encode_records(src.hf_dir, held, max_ref_tokens)
    calib_seqs = [r["prompt_ids"] + r["ref_ids"] for r in calib_recs]
    n_ref = sum(len(r["ref_ids"]) for r in held_recs)
    reused: dict[str, dict] = {}
    if reuse_quality:
        prev = json.loads(Path(reuse_quality).read_text())
        if (prev["data"]["heldout_records"] != [r["tid"] for r in held_recs]
                or prev["data"]["heldout_reference_tokens"] != n_ref or prev.get("model") != src.name):
            raise ValueError(f"{reuse_quality}: measured on other held-out data or model; cannot reuse its quality")
        reused = {r["variant"]: r for r in prev["rows"] if "error" not in r}
    log(f"{len(held_recs)} held-out records ({n_ref} reference tokens), {len(calib_recs)} calibration records")
    ref_lp = None
    rows = []
    for n in names:
        v = VARIANTS[n]
        log(f"{n}: build/load")
        row = {"variant": n, "family": v.family, "runtime": v.runtime, "doc": v.doc}
        try:
            path, qfacts = variant_model(n, src, calib_seqs, kv)
            row.update(bytes=model_bytes(path), quant=qfacts, path=str(path))
            if n in reused:
                row.update({k: reused[n][k] for k in ("teacher_forced_top1", "mean_kl", "perplexity", "positions")})
            else:
                if ref_lp is None:
                    log("fp32 reference log-probs")
                    ref_lp = reference_logprobs(_fp32_cached(src.hf_dir), kv, held_recs, threads)
                log(f"{n}: quality")
                row.update(measure_quality(_decoder(path, kv, threads), held_recs, ref_lp))
        except Exception as e:  # a variant that cannot be built or run is reported, not fatal
            row["error"] = f"{type(e).__name__}: {str(e)[-600:]}"
            log(f"{n}: FAILED {row['error'][:200]}")
        rows.append(row)
        if "error" not in row:
            log(f"{n}: {row['bytes'] / 2**20:.0f} MB  top-1 {row['teacher_forced_top1']:.3f}  KL {row['mean_kl']:.4f}  "
                f"ppl {row['perplexity']:.2f}")
    speed_prompt = held_recs[0]["prompt_ids"][-200:]
    for k in range(speed_rounds):
        for row in rows:
            if "error" in row:
                continue
            try:
                dec = _decoder(Path(row["path"]), kv, threads)
                row.setdefault("decode_tok_s_rounds", []).append(
                    round(measure_speed(dec, speed_prompt, decode_tokens, repeats=1), 2))
                del dec
            except Exception as e:
                row["error"] = f"speed: {type(e).__name__}: {str(e)[-600:]}"
                continue
            row["decode_tok_s"] = max(row["decode_tok_s_rounds"])
        log(f"speed round {k + 1}/{speed_rounds}: " + ", ".join(
            f"{r['variant']} {r['decode_tok_s_rounds'][-1]:.0f}" for r in rows if "error" not in r))
    ok = [r for r in rows if "error" not in r]
    tnames = targets or list(TARGETS)
    choices = [choose(ok, get_target(t), facts) for t in tnames]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    rep = {
        "model": src.name,
        "reference": "our fp32 ONNX graph, teacher-forced on held-out prompt + reference text",
        "data": {"source": "cogenesis/assets/sample_data.json (load_sample), prompts = with_context(record)",
                 "calibration_records": [r["tid"] for r in calib_recs],
                 "heldout_records": [r["tid"] for r in held_recs],
                 "heldout_reference_tokens": n_ref, "max_ref_tokens": max_ref_tokens},
        "speed": {"threads": threads, "decode_tokens": decode_tokens, "prompt_tokens": len(speed_prompt),
                  "rounds": speed_rounds, "cpu_count": os.cpu_count(), "load_average_at_end": load,
                  "note": f"best of {speed_rounds} round-robin rounds over all variants; on a shared machine "
                          "tok/s is noisy, compare within one report"},
        "quality_gate": QUALITY_GATE,
        "rows": [{k: v for k, v in r.items() if k != "path"} for r in rows],
        "choices": choices,
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    (out / "quant_report.json").write_text(json.dumps(rep, indent=2))
    (out / "quant_report.md").write_text(format_markdown(rep))
    if plot and ok:
        rep["plot"] = str(plot_report(rep, out / "quant_report.png"))
        (out / "quant_report.json").write_text(json.dumps(rep, indent=2))
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
