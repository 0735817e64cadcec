"""`cogenesis export --format ort-genai`: a bundle that onnxruntime-genai runs (og.Model / og.Generator) as is.

Layout: our bundle (manifest.json, model.onnx(+.data), tokenizer.json, chat_template.jinja, ...) plus
`genai_config.json` and `tokenizer_config.json`, so the same directory is both a cogenesis bundle (our torch-free
runtime reads manifest["onnx"]) and an onnxruntime-genai model folder.

Which graph goes in:
* ``--quant fp32|int8|int4|int4-fast|int8-dynamic``: OUR graph (the builder's fp32 graph, quantized by
  export/pipeline.py: GGUF-exact int4 for GGUF sources), with our ``num_logits_to_keep`` input turned into an
  initializer (default 0 = all positions) so onnxruntime-genai, which does not know that input, need not feed it.
* ``--quant builder-int4``: the model builder's own int4 (``-p int4``; symmetric MatMulNBits block 32, int8
  activations, lm_head fp32). Measured on SmolLM2: it drifts from eager from the first tokens; kept for
  comparison. (Asymmetric int4 with lm_head quantized produces a model that fails to load; not offered.)

`genai_config.json` comes from the builder (``config_only=true``: it reads config.json/generation_config.json and
writes the tokenizer files genai needs); we then set ``past_present_share_buffer`` (our GQA graphs bind one KV
buffer as past and present), ``context_length``/``max_length`` to the target's context, and the full EOS list.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from cogenesis.runtime.bundle import BundleError, read_manifest, write_bundle
from cogenesis.runtime.chat import compile_template, render
from cogenesis.runtime.model import KVSpec
from onnx import numpy_helper

from . import report
from .graph import io_signature, save
from .onnx_export import model_facts, run_builder
from .pipeline import Source, _tool_versions, _write_chat_files, export_bundle, resolve_source
from .targets import Target, budget_check, get_target

QUANTS = ("fp32", "int8", "int4", "int4-fast", "int8-dynamic", "builder-int4")
KEEP_INPUT = "num_logits_to_keep"


def builder_config(hf_dir: Path, out_dir: Path) -> dict:
    """genai_config.json + tokenizer files from the builder's config_only mode (no weights are built)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", hf_dir.name, "-i", str(hf_dir),
           "-o", str(out_dir), "-p", "int4", "-e", "cpu", "-c", str(out_dir / ".builder-cache"),
           "--extra_options", "config_only=true"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out_dir / ".builder-cache", ignore_errors=True)
    if r.returncode != 0 or not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai builder (config_only) failed for {hf_dir}:\n{(r.stderr or r.stdout)[-2000:]}")
    return json.loads((out_dir / "genai_config.json").read_text())


def write_genai_graph(src: Path, dst_dir: Path) -> bool:
    """Save the graph at `src` as dst_dir/model.onnx(+.data) with our `num_logits_to_keep` input turned into an
    initializer: onnxruntime-genai feeds only the inputs it knows. The default 0 = logits for every position,
    what the builder's own graphs return. Returns whether the input was there."""
    m = onnx.load(str(src))
    inp = next((i for i in m.graph.input if i.name == KEEP_INPUT), None)
    if inp is not None:
        m.graph.input.remove(inp)
        m.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), KEEP_INPUT))
    save(m, str(dst_dir / "model.onnx"), "model.onnx.data")
    return inp is not None


def genai_generate(model_dir: str | Path, prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = False,
                   model=None) -> list[int]:
    """Greedy generation with onnxruntime-genai's own Generator; returns the new token ids."""
    import onnxruntime_genai as og

    model = model or og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    opts = {"do_sample": False, "max_length": len(prompt_ids) + max_new_tokens}
    if ignore_eos:
        opts["min_length"] = len(prompt_ids) + max_new_tokens
    params.set_search_options(**opts)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt_ids, np.int32))
    out: list[int] = []
    while not gen.is_done() and len(out) < max_new_tokens:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def genai_parity(model_dir: Path, runs: list[dict]) -> dict:
    """onnxruntime-genai's greedy tokens vs transformers eager's (EOS ignored on both sides)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    per = []
    for r in runs:
        got = genai_generate(model_dir, r["prompt_ids"], len(r["ref_ids"]), ignore_eos=True, model=model)
        n = min(len(got), len(r["ref_ids"]))
        prefix = next((i for i in range(n) if got[i] != r["ref_ids"][i]), n)
        per.append({"greedy_identical": got == r["ref_ids"], "greedy_matching_prefix": prefix, "generated": len(got)})
    return {"runtime": f"onnxruntime-genai {og.__version__} og.Generator greedy", "prompts": len(runs),
            "greedy_identical_prompts": sum(p["greedy_identical"] for p in per), "per_prompt": per}


def genai_decode_speed(model_dir: Path, prompt_ids: list[int], new_tokens: int = 64) -> float:
    """Decode tokens/s under onnxruntime-genai (prefill excluded)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens + 1,
                              min_length=len(prompt_ids) + new_tokens + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt_ids, np.int32))
    gen.generate_next_token()
    t = time.perf_counter()
    for _ in range(new_tokens):
        gen.generate_next_token()
    return new_tokens / (time.perf_counter() - t)


def _builder_int4(hf_dir: Path, dst: Path) -> dict:
    run_builder(hf_dir, dst, precision="int4")
    shutil.rmtree(dst / ".builder-cache", ignore_errors=True)
    return {"scheme": "onnxruntime-genai builder int4", "block_size": 32, "symmetric": True, "accuracy_level": 4,
            "lm_head": "fp32"}


def _base_graph(model: str | None, src: Source, work: Path, quant: str, target: str, new_tokens: int,
                prompts: list[str] | None, progress: bool,
                base_bundle: str | Path | None) -> tuple[Path, dict | None, dict]:
    """The graph to repackage: (its folder, its bundle's manifest or None for the builder's own, quant facts)."""
    if base_bundle is not None:
        base = Path(base_bundle)
    elif quant == "builder-int4":
        base = work / "builder"
        return base, None, _builder_int4(src.hf_dir, base)
    else:
        base = export_bundle(model, work / "onnx", quant=quant, target=target, force=True, new_tokens=new_tokens,
                             prompts=prompts, progress=progress)
    base_manifest = read_manifest(base)
    return base, base_manifest, base_manifest["quant"]


def _genai_config(cfg: dict, tgt: Target, eos: list[int]) -> dict:
    """The builder's genai_config.json set for our graph (model.onnx, one shared KV buffer) and the target."""
    c = json.loads(json.dumps(cfg))
    c["model"]["context_length"] = tgt.max_context
    c["search"]["max_length"] = tgt.max_context
    c["search"]["past_present_share_buffer"] = True  # GroupQueryAttention graphs: one buffer, past = present
    c["model"]["eos_token_id"] = eos
    c["model"]["decoder"]["filename"] = "model.onnx"
    c["model"]["decoder"]["session_options"]["intra_op_num_threads"] = tgt.threads
    return c


def _genai_report(tmp: Path, hf_dir: Path, facts: dict, qinfo: dict, tgt: Target, t0: float,
                  prompts: list[str] | None, new_tokens: int) -> dict:
    """export_report.json: parity vs transformers eager under onnxruntime-genai and under cogenesis.runtime."""
    runs = report.reference_runs(hf_dir, prompts or report.PARITY_PROMPTS, new_tokens)
    g_par = genai_parity(tmp, runs)
    kv = KVSpec(facts["num_layers"], facts["num_kv_heads"], facts["head_dim"])
    o_par = report.bundle_parity(str(tmp / "model.onnx"), kv, runs)
    weights = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("model.onnx"))
    return {"quant": qinfo, "parity": o_par, "genai_parity": g_par,
            "budget": budget_check(tgt, weights, facts), "target": tgt.to_dict(),
            "export_seconds": round(time.time() - t0, 1)}


def _genai_manifest(tmp: Path, src: Source, facts: dict, special: dict, qinfo: dict, target: str,
                    exporter: str) -> dict:
    """The manifest of an ort-genai bundle whose files are in `tmp`."""
    sig = io_signature(onnx.load(str(tmp / "model.onnx"), load_external_data=False))
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {**facts, "name": src.name, "source": {"name": src.name, "hf_dir": str(src.hf_dir)}},
        "special_tokens": special,
        "quant": qinfo,
        "target": target,
        "onnx": {"file": "model.onnx", "data": "model.onnx.data", "exporter": exporter,
                 "kv_cache": "shared-buffer", **sig},
        "ort_genai": {"config": "genai_config.json", "tokenizer_config": "tokenizer_config.json",
                      "runtime": "onnxruntime-genai", "num_logits_to_keep": "initializer (0 = all)"},
        "tokenizer": "tokenizer.json",
        "chat_template": "chat_template.jinja",
        "generation_config": "generation_config.json",
        "report": "export_report.json",
        "tools": _tool_versions(),
    }


def export_ort_genai_bundle(model: str | None, out: str | Path, quant: str = "int4", target: str = "laptop-x86_64",
                            force: bool = False, new_tokens: int = 64, prompts: list[str] | None = None,
                            progress: bool = True, base_bundle: str | Path | None = None) -> Path:
    """Export a bundle that both onnxruntime-genai and cogenesis.runtime run; parity is measured under both.

    base_bundle: an existing ONNX bundle of the same source model to repackage instead of exporting `quant` again
    (its quantization is kept; `quant` is ignored)."""
    if quant not in QUANTS:
        raise ValueError(f"--quant for --format ort-genai must be one of {QUANTS}, got {quant!r}")
    tgt = get_target(target)
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    t0 = time.time()
    src = resolve_source(model)
    facts = model_facts(src.hf_dir)
    work = Path(tempfile.mkdtemp(prefix=".ort-genai-", dir=out.parent if out.parent.exists() else None))
    try:
        base, base_manifest, qinfo = _base_graph(model, src, work, quant, target, new_tokens, prompts, progress,
                                                 base_bundle)
        cfg = builder_config(src.hf_dir, work / "cfg")

        def fill(tmp: Path) -> dict:
            write_genai_graph(base / "model.onnx", tmp)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(work / "cfg" / f, tmp / f)
            special = _write_chat_files(src.hf_dir, tmp)
            (tmp / "genai_config.json").write_text(json.dumps(_genai_config(cfg, tgt, special["eos_token_ids"]),
                                                              indent=4), encoding="utf-8")
            rep = _genai_report(tmp, src.hf_dir, facts, qinfo, tgt, t0, prompts, new_tokens)
            (tmp / "export_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
            exporter = ("onnxruntime-genai model builder (int4)" if quant == "builder-int4"
                        else base_manifest["onnx"]["exporter"])
            return _genai_manifest(tmp, src, facts, special, qinfo, tgt.name, exporter)

        return write_bundle(out, fill, force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_text(bundle: str | Path, prompt: str, max_new_tokens: int = 48) -> str:
    """Chat once with onnxruntime-genai on a bundle (its tokenizer and our chat template)."""
    import onnxruntime_genai as og

    root = Path(bundle)
    m = json.loads((root / "manifest.json").read_text())
    model = og.Model(str(root))
    tok = og.Tokenizer(model)
    text = render(compile_template((root / "chat_template.jinja").read_text()), [{"role": "user", "content": prompt}],
                  True, **m.get("special_tokens", {}).get("strings", {}))
    ids = [int(t) for t in tok.encode(text)]
    return tok.decode(np.asarray(genai_generate(root, ids, max_new_tokens, model=model), np.int32))
