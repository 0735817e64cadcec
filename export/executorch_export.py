"""HF Llama-family folder -> ExecuTorch `.pte` (XNNPACK delegate) bundle.

`cogenesis export --format executorch [--quant fp32|8da4w|8da4w-gguf]`. The `.pte` is the Android/iOS native artifact; on a
Raspberry Pi the ONNX bundle stays the light path (ExecuTorch's Python runtime needs libtorch).

Why a small model of our own instead of exporting transformers' module: the speed of an ExecuTorch LLM is its
custom ops, ``llama::update_cache`` (writes the new K/V rows into a static in-graph cache, in place) and
``llama::custom_sdpa`` (causal attention over the cache up to ``start_pos``, grouped-query heads natively). They
need the cache in [batch, seq, heads, dim] layout, which transformers' StaticCache does not use; the model in
export/executorch_model.py mirrors ``LlamaForCausalLM`` exactly (RMSNorm in fp32, rotate-half RoPE, GQA, SiLU MLP,
tied lm_head) and the parity test holds it to transformers eager (fp32: greedy tokens identical).

Graph: ``forward(tokens int64[1, S], input_pos int64[1]) -> logits float32[1, vocab]`` (last position only), S
dynamic from 1 to ``max_seq_len - 1`` (prefill and decode are the same method), KV cache static and internal.

Quantization (torchao source transform, ExecuTorch's own ``quantize_model_``):
* ``fp32``: no quantization (tied embedding is stored twice: by the embedding gather and the XNNPACK lm_head);
* ``8da4w``: linears (lm_head included) 4-bit weights in groups of 32 with 8-bit dynamic per-token activations,
  embedding 8-bit per row (``8w``), lowered to XNNPACK's qd8-qb4w kernels and ``quantized_decomposed::embedding_byte``
  (ExecuTorch's stock LLM recipe). On SmolLM2, whose weights are already Q4_1, re-quantizing rounds them twice:
  measured teacher-forced top-1 vs eager ~0.65, KL ~0.56 (greedy output drifts within a few tokens);
* ``8da4w-gguf`` (GGUF sources): the same XNNPACK kernels on the GGUF's own codes (export/executorch_gguf.py): the
  weights are exact, only the int8 per-token activations approximate: measured top-1 ~0.91, KL ~0.02.

Export is run in a subprocess (torch.export + lowering peaks at several GB and takes minutes on 2 cores) and
cached under ``$COGENESIS_CACHE/executorch`` per source model, options and version of the export code. Running a
`.pte` from Python (PteDecoder, pte_parity, load_pte_bundle) is in export/executorch_runtime.py, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .executorch_runtime import (  # noqa: F401  (re-exported: the .pte runner used to live here)
    RUNTIME_IMPORTS,
    PteDecoder,
    _require_executorch,
    load_pte_bundle,
    pte_parity,
    set_threads,
    verify_pte_bundle,
)

QUANTS = ("fp32", "8da4w", "8da4w-gguf")
DEFAULT_GROUP_SIZE = 32
DEFAULT_MAX_SEQ_LEN = 2048
SUPPORTED = ("llama",)
SCHEMES = {
    "fp32": "fp32",
    "8da4w": "8da4w: int4 weights (group {g}, symmetric, HQQ scales) x int8 dynamic per-token activations for "
             "every linear incl. lm_head; embedding int8 per row",
    "8da4w-gguf": "8da4w on the GGUF's own Q4_1 codes (group 32, zero point folded into an exact fp32 block-sum "
                  "term) x int8 dynamic per-token activations; lm_head int8 per channel (8da8w); embedding = GGUF "
                  "Q8_0 codes",
}
# the modules whose whole source determines a .pte (with the functions listed in code_key)
MODEL_FILES = ("executorch_model.py", "executorch_gguf.py")


# -- the model ------------------------------------------------------------------------------------------------
def _llama_config(hf_dir: Path) -> dict:
    """config.json of a Llama model with the default RoPE (what EtLlama mirrors); ValueError for anything else."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") not in SUPPORTED:
        raise ValueError(f"ExecuTorch export supports {SUPPORTED} models, got model_type {cfg.get('model_type')!r}")
    rope = cfg.get("rope_parameters") or {}
    if (rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or "default") != "default":
        raise ValueError(f"ExecuTorch export: rope scaling {rope} is not supported (only the default RoPE)")
    return cfg


def _build_module(hf_dir: Path, max_seq_len: int):
    """An nn.Module equal to transformers' LlamaForCausalLM, with a static [1, S, kv_heads, dim] KV cache:
    (export/executorch_model.EtLlama with the folder's weights, config.json)."""
    from .executorch_model import build_module  # torch; registers torch.ops.llama.*

    cfg = _llama_config(hf_dir)
    return build_module(hf_dir, cfg, max_seq_len), cfg


def gguf_source(hf_dir: Path) -> Path | None:
    """The GGUF an HF folder was converted from (default_model.gguf_to_hf writes source.json), if still present."""
    f = hf_dir / "source.json"
    if f.is_file():
        g = Path(json.loads(f.read_text()).get("gguf", ""))
        if g.is_file():
            return g
    return None


def _apply_gguf_codes(model, gguf_path: Path) -> dict:
    """8da4w on the GGUF file's own codes instead of re-quantizing its dequantized weights (in place; see
    export/executorch_gguf.py); returns facts for the manifest."""
    from .executorch_gguf import apply_gguf_codes  # torch + torchao

    return apply_gguf_codes(model, gguf_path)


def _skip_unused_xnnpack_passes() -> None:
    """XNNPACK re-traces every partition through 17 graph passes; 9 rewrite ops this graph never contains (conv,
    batch norm, PReLU, pad, bilinear upsampling, torch SDPA, cat, relu/clamp): skip those in this (export) process
    (~20% less lowering time; the parity tests hold the result to eager)."""
    from executorch.backends.xnnpack import _passes as xp

    pm = xp.XNNPACKPassManager
    if getattr(pm, "_cogenesis_trimmed", False):
        return
    unused = {xp.ConvertToUpsampleBilinear2d, xp.ConvertToSDPAPass, xp.FuseBatchNormPass, xp.DecomposeBatchNorm,
              xp.InsertPadQDQPass, xp.Conv1dUnsqueezePass, xp.PReLUReshapePass, xp.DecomposeConcatenate,
              xp.FuseActivationPass}
    init = pm.__init__

    def trimmed(self, exported_program, passes=None):
        init(self, exported_program, passes)
        if not passes:
            self.passes = [p for p in self.passes if p not in unused]

    pm.__init__, pm._cogenesis_trimmed = trimmed, True


def _export_in_process(hf_dir: Path, out: Path, quant: str, group_size: int, max_seq_len: int,
                       gguf: Path | None = None) -> dict:
    import executorch.kernels.quantized  # noqa: F401  (out variants of the quantized ops, for to_executorch)
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from torch.export import Dim

    t0 = time.time()
    torch.manual_seed(0)
    gguf_facts = None
    model, cfg = _build_module(hf_dir, max_seq_len)
    if quant == "8da4w":
        from executorch.extension.llm.export.quantize import quantize_model_

        quantize_model_(model, qlinear_config="8da4w", qlinear_group_size=group_size, qembedding_config="8w",
                        qembedding_group_size=0)
    elif quant == "8da4w-gguf":
        gguf = gguf or gguf_source(hf_dir)
        if gguf is None:
            raise ValueError(f"--quant 8da4w-gguf needs the GGUF source of {hf_dir} (export from a .gguf or use 8da4w)")
        gguf_facts = _apply_gguf_codes(model, Path(gguf))
    elif quant != "fp32":
        raise ValueError(f"ExecuTorch quant must be one of {QUANTS}, got {quant!r}")
    example = (torch.tensor([[1, 2, 3]], dtype=torch.long), torch.tensor([0], dtype=torch.long))
    seq = Dim("seq", min=1, max=max_seq_len - 1)
    with torch.no_grad():  # fp32: non-strict traces ~5x faster; the torchao paths keep ExecuTorch's strict recipe
        ep = torch.export.export(model, example, dynamic_shapes=({1: seq}, {0: 1}), strict=quant != "fp32")
    t_export = time.time() - t0
    _skip_unused_xnnpack_passes()
    parts = [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()] if quant != "fp32" else [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(ep, partitioner=parts,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True))
    et = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True,
                                                    memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                                                    do_quant_fusion_and_const_prop=quant != "fp32"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        et.write_to_file(f)
    tmp.replace(out)
    names = [getattr(n.target, "__name__", str(n.target)) for n in edge.exported_program().graph_module.graph.nodes
             if n.op == "call_function"]
    delegated = names.count("executorch_call_delegate")
    ops = sorted({x for x in names if x not in ("executorch_call_delegate", "getitem")})
    return {
        "file": out.name,
        "bytes": out.stat().st_size,
        "backend": "xnnpack",
        "quant": quant,
        "scheme": SCHEMES[quant].format(g=group_size),
        "gguf_codes": gguf_facts,
        "group_size": (32 if quant == "8da4w-gguf" else group_size) if quant != "fp32" else None,
        "max_seq_len": max_seq_len,
        "kv_cache": "static in-graph [1, max_seq_len, kv_heads, head_dim] (llama::update_cache, llama::custom_sdpa)",
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, "seq"]},
                   {"name": "input_pos", "dtype": "int64", "shape": [1]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, cfg["vocab_size"]]}],
        "dynamic_seq": [1, max_seq_len - 1],
        "delegate_calls": delegated,
        "non_delegated_ops": ops,
        "runtime_imports": list(RUNTIME_IMPORTS),
        "methods": [plan.name for plan in et.executorch_program.execution_plan],
        "export_seconds": round(time.time() - t0, 1),
        "torch_export_seconds": round(t_export, 1),
    }


def export_pte(hf_dir: str | Path, out: str | Path, quant: str = "8da4w", group_size: int = DEFAULT_GROUP_SIZE,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN, subprocess_: bool = True) -> dict:
    """Write `out` (.pte); returns facts for the manifest. Runs in a subprocess by default (memory, isolation)."""
    _require_executorch()
    if quant not in QUANTS:
        raise ValueError(f"ExecuTorch quant must be one of {QUANTS}, got {quant!r}")
    hf_dir, out = Path(hf_dir), Path(out)
    if not subprocess_:
        return _export_in_process(hf_dir, out, quant, group_size, max_seq_len)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        info_path = Path(f.name)
    try:
        cmd = [sys.executable, "-m", "cogenesis.export.executorch_export", "--hf-dir", str(hf_dir), "--out", str(out),
               "--quant", quant, "--group-size", str(group_size), "--max-seq-len", str(max_seq_len),
               "--info", str(info_path)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if r.returncode != 0 or not out.is_file():
            raise RuntimeError(f"ExecuTorch export failed ({quant}) for {hf_dir}:\n{(r.stderr or r.stdout)[-3000:]}")
        return json.loads(info_path.read_text())
    finally:
        info_path.unlink(missing_ok=True)


def _source_key(hf_dir: Path) -> str:
    h = hashlib.sha256(str(hf_dir.resolve()).encode() + (hf_dir / "config.json").read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
    if (hf_dir / "source.json").is_file():  # the GGUF it came from (its sha256): 8da4w-gguf reads its codes
        h.update((hf_dir / "source.json").read_bytes())
    return h.hexdigest()[:12]


def code_key() -> str:
    """Version of what determines a .pte: the model, quantization and lowering code (not the runner or bundle
    code, so editing those does not force minutes of re-export) and the executorch/torch/torchao versions."""
    import importlib.metadata as md
    import inspect

    h = hashlib.sha256(json.dumps(SCHEMES, sort_keys=True).encode())
    for fn in (_llama_config, _build_module, _apply_gguf_codes, _skip_unused_xnnpack_passes, _export_in_process):
        h.update(inspect.getsource(fn).encode())
    for name in MODEL_FILES:
        h.update((Path(__file__).with_name(name)).read_bytes())
    for p in ("executorch", "torch", "torchao"):
        try:
            h.update(f"{p}={md.version(p)}".encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:12]


def cached_pte(hf_dir: str | Path, quant: str = "8da4w", group_size: int = DEFAULT_GROUP_SIZE,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN, export_if_missing: bool = True) -> tuple[Path, dict] | None:
    """(pte path, export facts), exported once per source model, options and code version.
    With export_if_missing=False: None when it is not in the cache yet."""
    from cogenesis.core.paths import cache_dir

    hf_dir = Path(hf_dir)
    d = cache_dir() / "executorch" / f"{_source_key(hf_dir)}-{quant}-g{group_size}-s{max_seq_len}-{code_key()}"
    pte, info = d / "model.pte", d / "export.json"
    if not (pte.is_file() and info.is_file()):
        if not export_if_missing:
            return None
        facts = export_pte(hf_dir, pte, quant, group_size, max_seq_len)
        info.write_text(json.dumps(facts, indent=2))
    return pte, json.loads(info.read_text())


# -- bundle ---------------------------------------------------------------------------------------------------
def export_executorch_bundle(model: str | None, out: str | Path, quant: str = "8da4w",
                             target: str = "android-arm64", force: bool = False, new_tokens: int = 64,
                             prompts: list[str] | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                             max_seq_len: int = DEFAULT_MAX_SEQ_LEN, progress: bool = True) -> Path:
    """`cogenesis export --format executorch`: a verified bundle with model.pte and a parity report."""
    from cogenesis.runtime.bundle import BundleError, write_bundle

    from . import report
    from .onnx_export import model_facts
    from .pipeline import _source_record, _tool_versions, _write_chat_files, resolve_source
    from .targets import budget_check, get_target

    src = resolve_source(model)
    if quant in ("int4", "auto"):  # the device profiles' default: the faithful int4 for GGUF sources
        quant = "8da4w-gguf" if gguf_source(src.hf_dir) else "8da4w"
    if quant not in QUANTS:
        raise ValueError(f"--quant for --format executorch must be one of {QUANTS} (or int4 = the best of them "
                         f"for this source), got {quant!r}")
    tgt = get_target(target)
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    t0 = time.time()
    if progress:
        print(f"[executorch] exporting {src.name} ({quant}); cached after the first time", file=sys.stderr)
    pte, facts = cached_pte(src.hf_dir, quant, group_size, max_seq_len)
    mfacts = model_facts(src.hf_dir)

    def fill(tmp: Path) -> dict:
        shutil.copy(pte, tmp / "model.pte")
        shutil.copy(src.hf_dir / "tokenizer.json", tmp / "tokenizer.json")
        special = _write_chat_files(src.hf_dir, tmp)
        if progress:
            print("[executorch] parity vs transformers eager", file=sys.stderr)
        runs = report.reference_runs(src.hf_dir, prompts or report.PARITY_PROMPTS, new_tokens)
        parity = pte_parity(PteDecoder(tmp / "model.pte", threads=2, max_seq_len=facts["max_seq_len"]), runs)
        rep = {
            "quant": {"scheme": facts["scheme"], "quant": quant, "group_size": facts["group_size"]},
            "parity": parity,
            "budget": budget_check(tgt, facts["bytes"], {**mfacts, "num_layers": mfacts["num_layers"]}),
            "target": tgt.to_dict(),
            "executorch": facts,
            "export_seconds": round(time.time() - t0, 1),
        }
        (tmp / "export_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
        source = _source_record(src)  # as the ONNX manifest records it
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {**mfacts, "name": src.name, "source": source},
            "special_tokens": special,
            "quant": {"scheme": f"executorch-{quant}", "group_size": facts["group_size"], "detail": facts["scheme"]},
            "target": tgt.name,
            "executorch": {k: facts[k] for k in ("backend", "quant", "group_size", "max_seq_len", "kv_cache",
                                                 "inputs", "outputs", "dynamic_seq", "runtime_imports")}
            | {"file": "model.pte", "method": "forward", "methods": facts.get("methods", ["forward"]),
               "exporter": "cogenesis EtLlama + torch.export + XNNPACK"},
            "tokenizer": "tokenizer.json",
            "chat_template": "chat_template.jinja",
            "generation_config": "generation_config.json",
            "report": "export_report.json",
            "tools": _tool_versions() | _et_versions(),
        }

    return write_bundle(out, fill, force=force)


def _et_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("executorch", "torchao"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="export an HF Llama folder to an ExecuTorch .pte (internal)")
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quant", default="8da4w", choices=QUANTS)
    ap.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE)
    ap.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN)
    ap.add_argument("--info", default=None, help="write the export facts here (JSON)")
    a = ap.parse_args(argv)
    facts = _export_in_process(Path(a.hf_dir), Path(a.out), a.quant, a.group_size, a.max_seq_len)
    if a.info:
        Path(a.info).write_text(json.dumps(facts, indent=2))
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


