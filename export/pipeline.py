"""`cogenesis export`: source model -> fp32 graph -> quantized graph -> verified bundle with a parity report."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from cogenesis.runtime.bundle import BundleError, sha256_file, write_bundle
from cogenesis.runtime.model import KVSpec
from cogenesis.runtime.vocab import vocab_fingerprint
from tokenizers import Tokenizer
from tqdm import tqdm

from cogenesis.core.paths import cache_dir

from . import graph, quantize, report
from .default_model import default_model, gguf_to_hf
from .onnx_export import export_fp32, model_facts
from .targets import budget_check, get_target

QUANTS = ("fp32", "int8", "int4", "int4-fast", "int8-dynamic")


@dataclass
class Source:
    hf_dir: Path
    gguf: Path | None
    name: str


def resolve_source(model: str | None) -> Source:
    if model in (None, "", "default"):
        g, hf = default_model()
        return Source(hf, g, "SmolLM2-135M-Instruct")
    from .models import MODELS, ModelError, status

    if model in MODELS:  # a registry name: its verified GGUF, so the export keeps the shipped quantization exactly
        st = status(MODELS[model])
        if st["gguf"] not in ("verified", "in package"):
            raise ModelError(f"model {model} is not installed ({st['gguf']}); run: cogenesis models add {model}")
        return Source(gguf_to_hf(st["gguf_path"]), Path(st["gguf_path"]), model)
    p = Path(model)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"--model {p}: GGUF file not found")
        return Source(gguf_to_hf(p), p, p.stem)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {p}: no config.json; pass a Hugging Face model folder or a .gguf file")
        return Source(p, None, p.name)
    raise FileNotFoundError(
        f"--model {model!r} is neither a local folder nor a .gguf file. Model hub ids are not fetched: download the "
        "model elsewhere and pass its folder, a model name from `cogenesis models list`, or omit --model for the "
        "default SmolLM2-135M-Instruct."
    )


def _fp32_cached(hf_dir: Path) -> Path:
    """The builder's fp32 graph, cached per source folder so fp32/int8/int4 exports share one build."""
    key = hashlib.sha256(str(hf_dir.resolve()).encode() + (hf_dir / "config.json").read_bytes()).hexdigest()[:16]
    st = hf_dir / "model.safetensors"
    key += f"-{st.stat().st_size if st.exists() else 0}-{int(st.stat().st_mtime) if st.exists() else 0}"
    path = cache_dir() / "fp32-graphs" / key / "model.onnx"
    if not path.is_file():
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="fp32-", dir=cache_dir()))
        try:
            model = export_fp32(hf_dir, tmp)
            out = tmp / "final"
            out.mkdir()
            graph.save(model, str(out / "model.onnx"), "model.onnx.data")
            path.parent.parent.mkdir(parents=True, exist_ok=True)
            if path.parent.exists():
                shutil.rmtree(path.parent)
            out.rename(path.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _kernel_graph(tmp: Path) -> dict:
    """model.kernel.onnx: the int4 graph on our kernels (exact Q4_1 linears, decode attention), same data file."""
    from .gguf_exact import kernel_graph

    kv_dtype = "float16"  # llama.cpp's cache type: top-1 0.995, KL 5e-7, logits within 0.02 on the parity prompts
    kg, ops = kernel_graph(onnx.load(str(tmp / "model.onnx"), load_external_data=False), kv_dtype=kv_dtype)
    onnx.save(kg, str(tmp / "model.kernel.onnx"))  # initializers still point into model.onnx.data
    return {"file": "model.kernel.onnx", "ops": ops, "fallback": "model.onnx", "kv_dtype": kv_dtype}


def _kernel_parity(path: Path, kv, runs) -> dict:
    """Parity of the kernel graph, when the kernel library builds here (else why not)."""
    from cogenesis.runtime import kernels

    try:
        lib = kernels.build()  # the cached build when there is one
    except kernels.KernelError as e:
        return {"skipped": f"kernel library unavailable: {e}"}
    return report.bundle_parity(str(path), kv, runs, custom_ops=str(lib))


def _tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for p in ("cogenesis-edge", "onnx", "onnxruntime", "onnxruntime-genai", "transformers", "torch", "gguf", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def _special_tokens(hf_dir: Path, gen: dict) -> dict:
    tc = json.loads((hf_dir / "tokenizer_config.json").read_text()) if (hf_dir / "tokenizer_config.json").exists() else {}
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    eos = gen.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    for s in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
        if s in vocab and vocab[s] not in eos:
            eos.append(vocab[s])
    strings = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if isinstance(tc.get(k), str)}
    return {"eos_token_ids": eos, "bos_token_id": gen.get("bos_token_id"), "strings": strings}


def _chat_template(hf_dir: Path) -> str:
    f = hf_dir / "chat_template.jinja"
    if f.is_file():
        return f.read_text()
    tc = json.loads((hf_dir / "tokenizer_config.json").read_text())
    if isinstance(tc.get("chat_template"), str):
        return tc["chat_template"]
    # Base models (e.g. Gemma-3-270M) have none: a plain "role: content" template keeps the runtime uniform.
    return ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


def _write_chat_files(hf_dir: Path, tmp: Path) -> dict:
    """chat_template.jinja and generation_config.json (its EOS = every end token) into `tmp`; the special tokens."""
    (tmp / "chat_template.jinja").write_text(_chat_template(hf_dir), encoding="utf-8")
    gen_path = hf_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    special = _special_tokens(hf_dir, gen)
    gen["eos_token_id"] = special["eos_token_ids"]
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    return special


def _source_record(src: Source) -> dict:
    """The manifest's model.source: name and folder, and for a GGUF source its file name and sha256."""
    source = {"name": src.name, "hf_dir": str(src.hf_dir)}
    if src.gguf is not None:
        source.update(gguf=src.gguf.name, gguf_sha256=sha256_file(src.gguf))
    return source


def _quantized_model(fp32_path: Path, tmp: Path, quant: str, gguf: Path | None) -> tuple[onnx.ModelProto, dict]:
    """The fp32 graph quantized as `quant`, in memory: (model, quantization facts)."""
    if quant == "int8-dynamic":
        with tempfile.TemporaryDirectory(dir=tmp.parent) as qdir:
            qinfo = quantize.int8_dynamic(fp32_path, Path(qdir) / "model.onnx")
            return onnx.load(str(Path(qdir) / "model.onnx")), qinfo
    m = onnx.load(str(fp32_path))
    if quant == "fp32":
        qinfo = {"scheme": "fp32"}
    elif quant == "int8":
        qinfo = quantize.weight_only(m, bits=8, symmetric=True)
    elif gguf is not None:
        from .gguf_exact import quantize_gguf_exact

        # int4-fast: int8 activations per block of 32 (what llama.cpp does for Q4_1): faster, not exact
        qinfo = quantize_gguf_exact(m, str(gguf), accuracy_level=4 if quant == "int4-fast" else 0)
    else:
        qinfo = quantize.weight_only(m, bits=4)
    return m, qinfo


def _write_quantized(fp32_path: Path, tmp: Path, quant: str, gguf: Path | None) -> tuple[dict, dict, dict | None]:
    """tmp/model.onnx(+.data) quantized as `quant`, and the kernel graph when our kernels can run it:
    (quantization facts, graph io signature, kernel graph entry or None)."""
    m, qinfo = _quantized_model(fp32_path, tmp, quant, gguf)
    graph.save(m, str(tmp / "model.onnx"), "model.onnx.data")
    sig = graph.io_signature(m)
    del m
    # our kernels read fp16 block scales (Q4_1/Q8_0); K-quant scales d*sc are fp32: portable graph only
    kernel = (_kernel_graph(tmp) if quant == "int4" and set(qinfo.get("gguf_types", ["?"])) <= {"Q4_1", "Q8_0"}
              else None)
    return qinfo, sig, kernel


def _parity(tmp: Path, hf_dir: Path, facts: dict, kernel: dict | None, prompts: list[str] | None,
            new_tokens: int) -> dict:
    """The report's parity entries: the bundle graph vs transformers eager, and the kernel graph when there is one."""
    kv = KVSpec(facts["num_layers"], facts["num_kv_heads"], facts["head_dim"])
    runs = report.reference_runs(hf_dir, prompts or report.PARITY_PROMPTS, new_tokens)
    out = {"parity": report.bundle_parity(str(tmp / "model.onnx"), kv, runs)}
    if kernel:
        out["kernel_parity"] = _kernel_parity(tmp / kernel["file"], kv, runs)
    return out


def _onnx_manifest(tmp: Path, src: Source, facts: dict, special: dict, qinfo: dict, target: str, sig: dict,
                   kernel: dict | None) -> dict:
    """The manifest of an ONNX bundle whose files are in `tmp`."""
    source = _source_record(src)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {**facts, "name": src.name, "source": source,
                  "vocab_fingerprint": vocab_fingerprint(Tokenizer.from_file(str(tmp / "tokenizer.json")))},
        "special_tokens": special,
        "quant": qinfo,
        "target": target,
        "onnx": {"file": "model.onnx", "data": "model.onnx.data", "exporter": "onnxruntime-genai model builder",
                 "kv_cache": "shared-buffer",
                 **sig,
                 **({"kernel_graph": kernel} if kernel else {})},
        "tokenizer": "tokenizer.json",
        "chat_template": "chat_template.jinja",
        "generation_config": "generation_config.json",
        "report": "export_report.json",
        "tools": _tool_versions(),
    }


def export_bundle(model: str | None, out: str | Path, quant: str = "int4", target: str = "laptop-x86_64",
                  force: bool = False, new_tokens: int = 64, prompts: list[str] | None = None,
                  progress: bool = True) -> Path:
    """Export `model` (HF folder, .gguf, or None for the default) into a verified bundle at `out`."""
    if quant not in QUANTS:
        raise ValueError(f"--quant must be one of {QUANTS}, got {quant!r}")
    tgt = get_target(target)
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    steps = tqdm(total=5, desc="export", disable=not progress, unit="step")
    t0 = time.time()
    steps.set_postfix_str("source model")
    src = resolve_source(model)
    if quant == "int4-fast" and src.gguf is None:
        raise BundleError(f"--quant int4-fast re-uses a GGUF's own 4-bit codes and {model} is not a .gguf source; "
                          "use --quant int4 (MatMulNBits) or int8, or export from the .gguf file")
    steps.update()
    steps.set_postfix_str("fp32 graph (onnxruntime-genai builder)")
    fp32_path = _fp32_cached(src.hf_dir)
    facts = model_facts(src.hf_dir)
    steps.update()

    def fill(tmp: Path) -> dict:
        steps.set_postfix_str(f"quantize {quant}")
        qinfo, sig, kernel = _write_quantized(fp32_path, tmp, quant, src.gguf)
        steps.update()
        steps.set_postfix_str("tokenizer, template, config")
        shutil.copy(src.hf_dir / "tokenizer.json", tmp / "tokenizer.json")
        special = _write_chat_files(src.hf_dir, tmp)
        steps.update()
        steps.set_postfix_str(f"parity vs eager ({len(prompts or report.PARITY_PROMPTS)} prompts x {new_tokens} tokens)")
        parity = _parity(tmp, src.hf_dir, facts, kernel, prompts, new_tokens)
        weights = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("model.onnx"))
        rep = {"quant": qinfo, **parity, "budget": budget_check(tgt, weights, facts), "target": tgt.to_dict(),
               "export_seconds": round(time.time() - t0, 1)}
        (tmp / "export_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
        steps.update()
        return _onnx_manifest(tmp, src, facts, special, qinfo, tgt.name, sig, kernel)

    try:
        return write_bundle(out, fill, force=force)
    finally:
        steps.close()
