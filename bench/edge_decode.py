"""Edge decode benchmark: our bundles vs transformers eager (and onnxruntime-genai's int4, llama.cpp if present).

    python bench/edge_decode.py [--threads 1 2] [--new-tokens 128] [--quick]

Each configuration runs in its own process (clean peak RSS). Writes bench/results/edge_decode.json and .md.
Decode = 128 new tokens after a ~200-token chat prompt; prefill = one ~1.5k-token prompt. Memory bandwidth is
measured with a large numpy copy; "% of bandwidth limit" = (bytes read per token / bandwidth) / time per token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def _prompts(tok_encode) -> tuple[list[int], list[int]]:
    from cogenesis.context import PrivateContext
    from cogenesis.data.prompts import with_context

    ctx = PrivateContext.load(ROOT / "examples" / "demo_profile.json")
    short = tok_encode([{"role": "user", "content": "Write a friendly note to my neighbour thanking them for "
                        "watering my plants last week, mention the tomatoes and the basil, and invite them "
                        "over for dinner on Saturday. " * 4}])[:200]
    long_ = tok_encode(with_context("Write a blog post about balancing night shifts and baking.", ctx))
    while len(long_) < 1500:
        long_ = long_ + long_
    return short, long_[:1500]


def bandwidth_gbs() -> float:
    a = np.ones(256 * 2**20 // 8)  # 256 MiB
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        dt = time.perf_counter() - t
        best = max(best, 2 * a.nbytes / dt / 1e9)  # read + write
    return best


def run_ort(path: str, threads: int, new_tokens: int) -> dict:
    from cogenesis.runtime.model import Decoder, KVSpec, make_session, uses_gqa
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path).parent / "tokenizer.json"))
    tpl = None

    def enc(msgs):
        nonlocal tpl
        from cogenesis.runtime.chat import compile_template, render

        tpl = tpl or compile_template((Path(path).parent / "chat_template.jinja").read_text())
        return tok.encode(render(tpl, msgs), add_special_tokens=False).ids

    short, long_ = _prompts(enc)
    t = time.perf_counter()
    dec = Decoder(make_session(path, threads), KVSpec(30, 3, 64), shared_kv=uses_gqa(path))
    load_s = time.perf_counter() - t
    dec.forward(short[:16])  # warm up
    dec.reset()
    t = time.perf_counter()
    lg = dec.forward(short)[-1]
    t_pre_short = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens):
        lg = dec.forward([int(lg.argmax())])[-1]
    decode_s = time.perf_counter() - t
    dec.reset()
    t = time.perf_counter()
    dec.forward(long_)
    prefill_long = time.perf_counter() - t
    return {"load_s": load_s, "prefill_200_s": t_pre_short, "decode_tok_s": new_tokens / decode_s,
            "prefill_1500_s": prefill_long, "prompt_tokens": len(short), "long_prompt_tokens": len(long_)}


def run_eager(hf_dir: str, threads: int, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(hf_dir)

    def enc(msgs):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    short, long_ = _prompts(enc)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    with torch.no_grad():
        model.generate(torch.tensor([short[:16]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        t = time.perf_counter()
        model.generate(torch.tensor([short]), max_new_tokens=1, do_sample=False, pad_token_id=0)
        pre = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(torch.tensor([short]), max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
        decode_s = time.perf_counter() - t - pre
        t = time.perf_counter()
        model(torch.tensor([long_]), logits_to_keep=1)
        prefill_long = time.perf_counter() - t
    return {"load_s": load_s, "prefill_200_s": pre, "decode_tok_s": new_tokens / decode_s,
            "prefill_1500_s": prefill_long, "prompt_tokens": len(short), "long_prompt_tokens": len(long_)}


def run_llamacpp(gguf: str, threads: int, new_tokens: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, verbose=False, logits_all=False)

    def enc(msgs):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"
        return llm.tokenize(text.encode(), add_bos=False, special=True)

    short, long_ = _prompts(enc)
    t = time.perf_counter()
    llm.eval(short)
    pre = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_s = time.perf_counter() - t
    llm.reset()
    t = time.perf_counter()
    llm.eval(long_)
    return {"prefill_200_s": pre, "decode_tok_s": new_tokens / decode_s, "prefill_1500_s": time.perf_counter() - t}


def _bundle_encoder(bundle: Path):
    from cogenesis.runtime.chat import compile_template, render
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tpl = compile_template((bundle / "chat_template.jinja").read_text())
    return lambda msgs: tok.encode(render(tpl, msgs), add_special_tokens=False).ids


def run_pte(path: str, threads: int, new_tokens: int) -> dict:
    """An ExecuTorch .pte (XNNPACK) through executorch's Python runtime, same protocol as run_ort."""
    from cogenesis.export.executorch_export import PteDecoder

    short, long_ = _prompts(_bundle_encoder(Path(path).parent))
    t = time.perf_counter()
    dec = PteDecoder(path, threads=threads)
    load_s = time.perf_counter() - t
    dec.forward(short[:16])  # warm up
    dec.reset()
    t = time.perf_counter()
    lg = dec.forward(short)[-1]
    t_pre_short = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens):
        lg = dec.forward([int(lg.argmax())])[-1]
    decode_s = time.perf_counter() - t
    dec.reset()
    t = time.perf_counter()
    dec.forward(long_)
    prefill_long = time.perf_counter() - t
    return {"load_s": load_s, "prefill_200_s": t_pre_short, "decode_tok_s": new_tokens / decode_s,
            "prefill_1500_s": prefill_long, "prompt_tokens": len(short), "long_prompt_tokens": len(long_)}


def run_genai(path: str, threads: int, new_tokens: int) -> dict:
    """An onnxruntime-genai model folder (genai_config.json) through og.Generator."""
    import onnxruntime_genai as og

    d = Path(path)
    short, long_ = _prompts(_bundle_encoder(d))
    t = time.perf_counter()
    cfg = og.Config(str(d))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(cfg)
    load_s = time.perf_counter() - t

    def gen(ids, n):
        p = og.GeneratorParams(model)
        p.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n)
        g = og.Generator(model, p)
        t0 = time.perf_counter()
        g.append_tokens(np.asarray(ids, np.int32))
        g.generate_next_token()
        t1 = time.perf_counter()
        for _ in range(n - 1):
            g.generate_next_token()
        return t1 - t0, time.perf_counter() - t1

    gen(short[:16], 2)  # warm up
    pre, _ = gen(short, 1)
    _, decode_s = gen(short, new_tokens + 1)
    pre_long, _ = gen(long_, 1)
    return {"load_s": load_s, "prefill_200_s": pre, "decode_tok_s": new_tokens / decode_s,
            "prefill_1500_s": pre_long, "prompt_tokens": len(short), "long_prompt_tokens": len(long_)}


def one(kind: str, path: str, threads: int, new_tokens: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    fn = {"ort": run_ort, "eager": run_eager, "llamacpp": run_llamacpp, "pte": run_pte, "genai": run_genai}[kind]
    res = fn(path, threads, new_tokens)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _genai_int4(hf_dir: Path) -> Path | None:
    """onnxruntime-genai's own int4 build (the builder's default), for comparison."""
    from cogenesis.export.default_model import cache_dir
    from cogenesis.export.onnx_export import run_builder

    out = cache_dir() / "bench" / "genai-int4"
    if not (out / "model.onnx").is_file():
        try:
            run_builder(hf_dir, out, precision="int4")
        except RuntimeError as e:
            print(f"skipping onnxruntime-genai int4: {e}", file=sys.stderr)
            return None
    return out / "model.onnx"


def _genai_dir(builder_out: Path, hf_dir: Path) -> Path:
    """The builder's int4 folder as an og.Generator folder: links to its graph + its own genai_config.json."""
    d = builder_out.parent / "genai-int4-og"
    d.mkdir(exist_ok=True)
    for f in builder_out.iterdir():
        if f.is_file() and not (d / f.name).exists():
            (d / f.name).symlink_to(f.resolve()) if f.name.startswith("model.onnx") else (d / f.name).write_bytes(f.read_bytes())
    if not (d / "chat_template.jinja").exists():
        from cogenesis.export.pipeline import _chat_template

        (d / "chat_template.jinja").write_text(_chat_template(hf_dir))
    return d


def _ort_genai_bundle(int4_bundle: Path) -> Path | None:
    """`cogenesis export --format ort-genai` of our int4 bundle (repackaged, not re-quantized)."""
    b = ROOT / "artifacts" / "bundles" / "smollm2-int4-genai"
    if not (b / "genai_config.json").is_file():
        try:
            from cogenesis.export.ort_genai import export_ort_genai_bundle

            export_ort_genai_bundle(None, b, base_bundle=int4_bundle, force=True)
        except Exception as e:  # noqa: BLE001 - the benchmark goes on without the row
            print(f"skipping the ort-genai bundle row: {e}", file=sys.stderr)
            return None
    return b


def _et_bundle(quant: str) -> Path | None:
    """ExecuTorch bundle (cached .pte export; minutes the first time)."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        print(f"executorch not installed: ExecuTorch {quant} row skipped (pip install executorch==1.4.1)")
        return None
    b = ROOT / "artifacts" / "bundles" / f"smollm2-et-{quant}"
    if not (b / "manifest.json").is_file():
        from cogenesis.export.executorch_export import export_executorch_bundle

        export_executorch_bundle(None, b, quant=quant, force=True)
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--one", nargs=3, metavar=("KIND", "PATH", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "edge_decode"))
    a = ap.parse_args()
    if a.one:
        one(a.one[0], a.one[1], int(a.one[2]), a.new_tokens)
        return

    from cogenesis.export.default_model import default_model
    from cogenesis.export.pipeline import export_bundle

    gguf, hf_dir = default_model()
    bundles = {}
    for q in ("fp32", "int8", "int4", "int4-fast"):
        b = ROOT / "artifacts" / "bundles" / f"smollm2-{q}"
        if not (b / "manifest.json").is_file():
            export_bundle(None, b, quant=q, force=True)
        bundles[q] = b
    configs = [("transformers eager fp32", "eager", str(hf_dir), None)]
    configs += [(f"cogenesis ORT {q}", "ort", str(b / "model.onnx"), b) for q, b in bundles.items()]
    g = _genai_int4(hf_dir)
    if g:
        configs.append(("onnxruntime-genai builder int4", "ort", str(g), g.parent))
        configs.append(("og.Generator: builder int4", "genai", str(_genai_dir(g.parent, hf_dir)), g.parent))
    og_b = _ort_genai_bundle(bundles["int4"])
    if og_b:
        configs.append(("og.Generator: cogenesis int4 (ort-genai bundle)", "genai", str(og_b), og_b))
    for q in ("fp32", "8da4w"):
        b = _et_bundle(q)
        if b:
            configs.append((f"ExecuTorch XNNPACK {q} (.pte)", "pte", str(b / "model.pte"), b))
    try:
        import llama_cpp  # noqa: F401

        configs.append(("llama.cpp (same GGUF)", "llamacpp", str(gguf), None))
    except ImportError:
        print("llama-cpp-python not importable: llama.cpp row skipped (pip install llama-cpp-python builds it, ~18 min)")
    bw = bandwidth_gbs()
    from cogenesis.export.report import PARITY_PROMPTS, bundle_parity, reference_runs
    from cogenesis.runtime.model import KVSpec

    refs = reference_runs(hf_dir, PARITY_PROMPTS, 64)
    quality = {}
    for name, kind, path, _ in configs:
        if kind == "pte":
            from cogenesis.export.executorch_export import PteDecoder, pte_parity

            p = pte_parity(PteDecoder(path, threads=2), refs)
        elif kind == "genai":  # the same graph as an "ort" row, run by og.Generator: quality from its graph
            p = bundle_parity(str(Path(path) / "model.onnx"), KVSpec(30, 3, 64), refs)
        if kind in ("pte", "genai"):
            quality[name] = {"teacher_forced_top1": p["teacher_forced_top1"], "mean_kl": p["mean_kl"],
                             "greedy_identical_prompts": p["greedy_identical_prompts"]}
        if kind == "ort":
            p = bundle_parity(path, KVSpec(30, 3, 64), refs)
            quality[name] = {"teacher_forced_top1": p["teacher_forced_top1"], "mean_kl": p["mean_kl"],
                             "greedy_identical_prompts": p["greedy_identical_prompts"]}
    rows = []
    for name, kind, path, bdir in configs:
        size = None
        if bdir is not None:
            size = sum(f.stat().st_size for f in Path(bdir).iterdir() if f.name.startswith(("model.onnx", "model.pte")))
        elif kind == "eager":
            size = (Path(path) / "model.safetensors").stat().st_size
        else:
            size = Path(path).stat().st_size
        for th in a.threads:
            r = subprocess.run([sys.executable, __file__, "--one", kind, path, str(th), "--new-tokens", str(a.new_tokens)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name} @ {th} threads failed:\n{r.stderr[-1500:]}", file=sys.stderr)
                continue
            res = json.loads(line[7:])
            res.update(name=name, threads=th, model_bytes=size, **quality.get(name, {}))
            # bytes read per decoded token ~ weights + KV cache at the mean context length
            kv = 2 * 30 * 3 * 64 * 4 * (res.get("prompt_tokens", 200) + a.new_tokens / 2)
            res["bandwidth_limit_tok_s"] = bw * 1e9 / (size + kv)
            res["fraction_of_bandwidth_limit"] = res["decode_tok_s"] / res["bandwidth_limit_tok_s"]
            rows.append(res)
            print(f"{name:34s} t={th} decode {res['decode_tok_s']:6.1f} tok/s  prefill1.5k {res['prefill_1500_s']:.2f}s "
                  f"rss {res['peak_rss_mb']:.0f} MB", flush=True)
    base = {r["threads"]: r["decode_tok_s"] for r in rows if r["name"].startswith("transformers")}
    for r in rows:
        r["speedup_vs_eager"] = r["decode_tok_s"] / base[r["threads"]] if r["threads"] in base else None
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "memory_bandwidth_gb_s": bw}, "new_tokens": a.new_tokens, "rows": rows,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2))
    md = [f"# Edge decode benchmark ({out['date']}, {os.cpu_count()} cores, copy bandwidth {bw:.1f} GB/s)", "",
          "| config | threads | decode tok/s | x eager | prefill 200 (s) | prefill 1.5k (s) | peak RSS (MB) | model (MB) "
          "| % of bandwidth limit | top-1 vs eager | KL | greedy identical |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-"
        md.append(f"| {r['name']} | {r['threads']} | {r['decode_tok_s']:.1f} | {sp} | {r['prefill_200_s']:.2f} | "
                  f"{r['prefill_1500_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['model_bytes'] / 2**20:.0f} | "
                  f"{100 * r['fraction_of_bandwidth_limit']:.0f}% | "
                  + (f"{r['teacher_forced_top1']:.3f} | {r['mean_kl']:.4f} | {r['greedy_identical_prompts']}/3 |"
                     if "teacher_forced_top1" in r else "1 (reference) | 0 | 3/3 |"))
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
