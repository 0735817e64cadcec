"""Quantization variants of one fp32 graph for `cogenesis calibrate quant`: what each one is (`VARIANTS`), how it is
built (`build_variant`), where it is cached (`variant_model`: per fp32 graph + version of this building code) and
its size on disk (`model_bytes`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
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
