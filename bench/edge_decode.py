"""Edge decode benchmark: our bundles vs transformers eager (and onnxruntime-genai's int4, llama.cpp if present).

    python bench/edge_decode.py [--threads 1 2] [--new-tokens 128]
    python bench/edge_decode.py --llamacpp-check    # greedy tokens: llama.cpp vs our int4 bundle only

llama.cpp: the fair anchor is llama.cpp built on this machine (-DGGML_NATIVE=ON, `scripts/build_llama_cpp.sh`, cached),
interleaved with our int4 rows by `native_anchor.py` (its section ends the report; also cpu_dispatch.{json,md}).
A second anchor, labelled prebuilt: `bash bench/llamacpp_setup.sh` installs node-llama-cpp's CPU binary from npm
(nothing compiled) into .cache/llamacpp-node; bench/llamacpp_decode.mjs runs it on the same GGUF and token ids.

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
sys.path.insert(0, str(ROOT / "bench"))


def _prompts(tok_encode) -> tuple[list[int], list[int]]:
    from cogenesis.core.context import PrivateContext
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


LONG_DECODE = 32  # tokens decoded after the 1.5k-token prompt (ONNX rows)


def _kernel_lib(path: str) -> str | None:
    """Our kernel library for a bundle's kernel graph (built if needed: the row measures it, no fallback)."""
    if not path.endswith("model.kernel.onnx"):
        return None
    from cogenesis.runtime import kernels

    return str(kernels.build())  # the cached build when there is one


def _peak_rss_mb() -> float:
    """This process's peak RSS. /proc VmHWM starts afresh at exec; ru_maxrss does not on Linux (a child reports at
    least its parent's peak at fork time), which made every row show the harness's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    dec = Decoder(make_session(path, threads, custom_ops=_kernel_lib(path)), KVSpec(30, 3, 64), shared_kv=uses_gqa(path))
    load_s = time.perf_counter() - t
    dec.forward(short[:16])  # warm up
    dec.reset()
    t = time.perf_counter()
    lg = dec.forward(short)[-1]
    t_pre_short = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    for _ in range(new_tokens):
        lg = dec.forward([int(lg.argmax())])[-1]
    decode_s, decode_cpu = time.perf_counter() - t, time.process_time() - c
    dec.reset()
    t = time.perf_counter()
    lg = dec.forward(long_)[-1]
    prefill_long = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(LONG_DECODE):  # decoding after a private context of 1.5k tokens: attention reads the whole cache
        lg = dec.forward([int(lg.argmax())])[-1]
    decode_long = LONG_DECODE / (time.perf_counter() - t)
    return {"load_s": load_s, "prefill_200_s": t_pre_short, "decode_tok_s": new_tokens / decode_s,
            "prefill_1500_s": prefill_long, "prompt_tokens": len(short), "long_prompt_tokens": len(long_),
            "decode_tok_s_after_1500": decode_long,
            "decode_cpu_s_per_tok": decode_cpu / new_tokens}  # CPU s (all threads, spinning included)


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


LLAMACPP_JS = ROOT / "bench" / "llamacpp_decode.mjs"
LLAMACPP_INSTALL = "bash bench/llamacpp_setup.sh"  # node >= 20 + npm; prebuilt node-llama-cpp, no compile, ~15 s
INT4_BUNDLE = ROOT / "artifacts" / "bundles" / "smollm2-int4"


def _kernels_row() -> str:
    """The kernel graph's row name, marked (default) where `kernels.dispatch` picks it on this CPU."""
    from cogenesis.runtime import kernels

    chosen, _ = kernels.dispatch(kernels.cpu_features(), kernels.library_features())
    return "cogenesis ORT int4 + kernels" + (" (default)" if chosen else "")


KERNELS_ROW = _kernels_row()


def llamacpp_dir() -> Path:
    return Path(os.environ.get("NODE_LLAMA_CPP_DIR", ROOT / ".cache" / "llamacpp-node"))


def llamacpp_info() -> dict | None:
    """Version of the installed prebuilt llama.cpp (node-llama-cpp), or None when it is not usable here."""
    import shutil

    nm = llamacpp_dir() / "node_modules"
    pkg = nm / "node-llama-cpp" / "package.json"
    bins = sorted((nm / "@node-llama-cpp").glob("*/bins/*/_nlcBuildMetadata.json"))
    if shutil.which("node") is None or not pkg.is_file() or not bins:
        return None
    meta = json.loads(bins[0].read_text())["buildOptions"]
    return {"release": meta["llamaCpp"]["release"], "repo": meta["llamaCpp"]["repo"],
            "binding": "node-llama-cpp " + json.loads(pkg.read_text())["version"], "binary": bins[0].parent.name,
            "built_on": "{name} {version}".format(**meta["platformInfo"])}


def _llamacpp_call(req: dict, timeout: float = 3600) -> dict:
    """Runs bench/llamacpp_decode.mjs on one JSON request; returns its JSON answer."""
    r = subprocess.run(["node", str(LLAMACPP_JS)], input=json.dumps(req), capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "NODE_LLAMA_CPP_DIR": str(llamacpp_dir())})
    if r.returncode != 0:
        raise RuntimeError(f"llamacpp_decode.mjs failed ({r.returncode}): {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def llamacpp_greedy(gguf: str, prompts: list[list[int]], n: int, threads: int = 1) -> list[list[int]]:
    """n greedy tokens per prompt (token ids in, EOS ignored) from llama.cpp on the GGUF.

    One thread by default: the tokens do not depend on it, and llama.cpp's spinning thread pool crawls when the
    cores are shared with other jobs."""
    return _llamacpp_call({"gguf": gguf, "threads": threads, "new_tokens": 0, "greedy_prompts": prompts,
                           "greedy_tokens": n})["greedy"]


def run_llamacpp(gguf: str, threads: int, new_tokens: int) -> dict:
    """llama.cpp (prebuilt, CPU) on the same GGUF and the same token ids as the int4 bundle, same protocol as run_ort."""
    short, long_ = _prompts(_bundle_encoder(INT4_BUNDLE))
    res = _llamacpp_call({"gguf": gguf, "threads": threads, "new_tokens": new_tokens, "prompt": short,
                          "long_prompt": long_})
    res.pop("greedy", None)
    res.pop("tokenized", None)
    return res


def _prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def llamacpp_agreement(gguf: str, int4_onnx: str, prompt_ids: list[list[int]], n: int = 32,
                       ref_ids: list[list[int]] | None = None) -> dict:
    """Greedy tokens of llama.cpp vs our int4 bundle (first n) and vs eager's reference ids when given."""
    from cogenesis.export.report import greedy
    from cogenesis.runtime.model import Decoder, KVSpec, make_session, uses_gqa

    refs = ref_ids or [[] for _ in prompt_ids]
    lc = llamacpp_greedy(gguf, prompt_ids, max([n] + [len(r) for r in refs]))
    dec = Decoder(make_session(int4_onnx, 1), KVSpec(30, 3, 64), shared_kv=uses_gqa(int4_onnx))
    ours = [greedy(dec, p, n) for p in prompt_ids]
    pairs = list(zip(lc, ours, refs, strict=True))
    out = {"tokens": n,
           "vs_int4_bundle_matching_prefix": [_prefix(a[:n], b) for a, b, _ in pairs],
           "vs_int4_bundle_same_positions": [sum(x == y for x, y in zip(a[:n], b, strict=True)) for a, b, _ in pairs],
           "llamacpp_tokens": [a[:n] for a in lc], "int4_bundle_tokens": ours}
    out["vs_int4_bundle_identical_prompts"] = sum(p == n for p in out["vs_int4_bundle_matching_prefix"])
    if ref_ids:
        out["eager_tokens"] = len(ref_ids[0])
        out["vs_eager_matching_prefix"] = [_prefix(a, r) for a, _, r in pairs]
        out["greedy_identical_prompts"] = sum(a[:len(r)] == r for a, _, r in pairs)
    return out


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
    res.setdefault("peak_rss_mb", _peak_rss_mb())  # llama.cpp: node's
    print("RESULT " + json.dumps(res))


def _genai_int4(hf_dir: Path) -> Path | None:
    """onnxruntime-genai's own int4 build (the builder's default), for comparison."""
    from cogenesis.export.onnx_export import run_builder

    from cogenesis.core.paths import cache_dir

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


def _vs_llamacpp(rows: list[dict], lc_rows: dict[int, dict]) -> list[dict]:
    """Our int4 rows against llama.cpp at the same thread count: speed ratios (> 1 = ours faster)."""
    out = []
    for r in rows:
        lc = lc_rows.get(r["threads"])
        if lc is None or "cogenesis" not in r["name"] or "int4" not in r["name"]:
            continue
        v = {"name": r["name"], "threads": r["threads"], "decode_speed_ratio": r["decode_tok_s"] / lc["decode_tok_s"],
             "prefill_1500_speed_ratio": lc["prefill_1500_s"] / r["prefill_1500_s"]}
        if r.get("decode_cpu_s_per_tok") and lc.get("decode_cpu_s_per_tok"):  # load-robust at 1 thread only
            v["decode_cpu_time_ratio"] = lc["decode_cpu_s_per_tok"] / r["decode_cpu_s_per_tok"]
        out.append(v)
    return out


def _llamacpp_md(lc: dict | None) -> list[str]:
    """The markdown section on llama.cpp: version, our int4 vs it, greedy agreement (or how to install it)."""
    if not lc:
        return ["", f"llama.cpp row: not installed on this machine. Install it with `{LLAMACPP_INSTALL}` (node >= 20 "
                "and npm; a prebuilt llama.cpp from node-llama-cpp, nothing compiled, ~15 s) and rerun."]
    md = ["", "## Our int4 vs llama.cpp on the same GGUF", "",
          f"llama.cpp {lc['release']} ({lc['repo']}), prebuilt CPU binary `{lc['binary']}` from {lc['binding']} "
          f"(built on {lc['built_on']}), flash attention {lc.get('flash_attention')}, greedy, same token ids. "
          f"{lc.get('system_info', 'CPU : ?').strip(' |')}.", "",
          "| ours | threads | decode speed vs llama.cpp | prefill 1.5k speed vs llama.cpp "
          "| decode CPU-time/token, llama.cpp / ours |", "|---|---|---|---|---|"]
    md += [f"| {v['name']} | {v['threads']} | {v['decode_speed_ratio']:.2f}x | {v['prefill_1500_speed_ratio']:.2f}x | "
           + (f"{v['decode_cpu_time_ratio']:.2f}x |" if "decode_cpu_time_ratio" in v else "- |") for v in lc["vs_ours"]]
    md += ["", "Ratios > 1: ours faster. CPU time per token counts spinning threads too, so it only says something "
           "at 1 thread, where it is robust to other load on the machine."]
    g = lc.get("greedy_agreement")
    if g:
        md += ["", f"Greedy tokens, llama.cpp vs our int4 bundle (first {g['tokens']}, parity prompts): matching "
               f"prefix {g['vs_int4_bundle_matching_prefix']}, same token at {g['vs_int4_bundle_same_positions']} "
               f"positions; vs eager fp32 ({g['eager_tokens']} tokens): matching prefix {g['vs_eager_matching_prefix']}. "
               "llama.cpp multiplies Q4_1 weights with Q8_1-quantized activations, so some drift is expected."]
    return md


def llamacpp_check(n: int = 32) -> dict:
    """--llamacpp-check: greedy agreement of llama.cpp and our int4 bundle on the parity prompts, printed."""
    from cogenesis.export.default_model import find_gguf
    from cogenesis.export.report import PARITY_PROMPTS

    if not llamacpp_info():
        sys.exit(f"llama.cpp not installed: {LLAMACPP_INSTALL}")
    enc = _bundle_encoder(INT4_BUNDLE)
    ids = [enc([{"role": "user", "content": p}]) for p in PARITY_PROMPTS]
    g = llamacpp_agreement(str(find_gguf(install=False)), str(INT4_BUNDLE / "model.onnx"), ids, n)
    print(json.dumps({"llamacpp": llamacpp_info(), **g}))
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--one", nargs=3, metavar=("KIND", "PATH", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "edge_decode"))
    ap.add_argument("--configs", nargs="+", default=None, metavar="SUBSTR",
                    help="only the rows whose name contains one of these (e.g. eager 'ORT int4' llama.cpp)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the native llama.cpp comparison")
    ap.add_argument("--llamacpp-check", action="store_true",
                    help="only: llama.cpp vs our int4 bundle, greedy tokens on the parity prompts (no torch)")
    a = ap.parse_args()
    if a.one:
        one(a.one[0], a.one[1], int(a.one[2]), a.new_tokens)
        return
    if a.llamacpp_check:
        llamacpp_check()
        return

    from cogenesis.export.default_model import default_model
    from cogenesis.export.pipeline import export_bundle

    gguf, hf_dir = default_model()

    def wanted(name: str) -> bool:  # --configs: build (export) only the rows asked for
        return not a.configs or any(sub in name for sub in a.configs)

    bundles = {}
    for q in ("fp32", "int8", "int4", "int4-fast"):  # int4 is also the reference of the llama.cpp check
        b = ROOT / "artifacts" / "bundles" / f"smollm2-{q}"
        if (q == "int4" or wanted(f"cogenesis ORT {q}")) and not (b / "manifest.json").is_file():
            export_bundle(None, b, quant=q, force=True)
        bundles[q] = b
    configs = [("transformers eager fp32", "eager", str(hf_dir), None)]
    configs += [(f"cogenesis ORT {q}", "ort", str(b / "model.onnx"), b) for q, b in bundles.items()]
    if (bundles["int4"] / "model.kernel.onnx").is_file():  # our exact Q4_1 kernels (the default where dispatched),
        at = 1 + [c[0] for c in configs].index("cogenesis ORT int4")  # after the same bundle's portable graph
        configs.insert(at, (KERNELS_ROW, "ort", str(bundles["int4"] / "model.kernel.onnx"),
                            bundles["int4"]))
    g = _genai_int4(hf_dir) if wanted("builder int4") else None
    if g:
        configs.append(("onnxruntime-genai builder int4", "ort", str(g), g.parent))
        configs.append(("og.Generator: builder int4", "genai", str(_genai_dir(g.parent, hf_dir)), g.parent))
    og_b = _ort_genai_bundle(bundles["int4"]) if wanted("og.Generator: cogenesis int4 (ort-genai bundle)") else None
    if og_b:
        configs.append(("og.Generator: cogenesis int4 (ort-genai bundle)", "genai", str(og_b), og_b))
    for q in ("fp32", "8da4w"):
        b = _et_bundle(q) if wanted(f"ExecuTorch XNNPACK {q} (.pte)") else None
        if b:
            configs.append((f"ExecuTorch XNNPACK {q} (.pte)", "pte", str(b / "model.pte"), b))
    lc_info = llamacpp_info() if wanted("llama.cpp") else None
    if lc_info:
        configs.append((f"llama.cpp prebuilt (npm, {lc_info['release']}, same GGUF)", "llamacpp", str(gguf), None))
    elif wanted("llama.cpp"):
        print(f"llama.cpp not installed: its row is skipped (install: {LLAMACPP_INSTALL}, needs node >= 20 + npm)")
    configs = [c for c in configs if wanted(c[0])]
    bw = bandwidth_gbs()
    from cogenesis.export.report import PARITY_PROMPTS, bundle_parity, reference_runs
    from cogenesis.runtime.model import KVSpec

    refs = reference_runs(hf_dir, PARITY_PROMPTS, 64)
    quality, lc_agree = {}, None
    for name, kind, path, _ in configs:
        if kind == "pte":
            from cogenesis.export.executorch_export import PteDecoder, pte_parity

            p = pte_parity(PteDecoder(path, threads=2), refs)
        elif kind == "genai":  # the same graph as an "ort" row, run by og.Generator: quality from its graph
            p = bundle_parity(str(Path(path) / "model.onnx"), KVSpec(30, 3, 64), refs)
        elif kind == "llamacpp":  # greedy only (no logits from llama.cpp here): vs eager and vs our int4 bundle
            try:
                lc_agree = llamacpp_agreement(path, str(bundles["int4"] / "model.onnx"),
                                              [r["prompt_ids"] for r in refs], 32, [r["ref_ids"] for r in refs])
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"llama.cpp greedy check failed: {e}", file=sys.stderr)
                continue
            quality[name] = {"greedy_identical_prompts": lc_agree["greedy_identical_prompts"],
                             "greedy_vs_int4_bundle_matching_prefix_32": lc_agree["vs_int4_bundle_matching_prefix"]}
        if kind in ("pte", "genai"):
            quality[name] = {"teacher_forced_top1": p["teacher_forced_top1"], "mean_kl": p["mean_kl"],
                             "greedy_identical_prompts": p["greedy_identical_prompts"]}
        if kind == "ort":
            p = bundle_parity(path, KVSpec(30, 3, 64), refs, custom_ops=_kernel_lib(path))
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
    lc_rows = {r["threads"]: r for r in rows if r.get("llamacpp")}
    if lc_info:
        run_info = {k: v for k, v in next(iter(lc_rows.values()), {}).get("llamacpp", {}).items() if k != "threads"}
        out["llamacpp"] = {**lc_info, **run_info, "greedy_agreement": lc_agree, "vs_ours": _vs_llamacpp(rows, lc_rows)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2))
    import cpu_dispatch

    c = cpu_dispatch.cpu()
    out["machine"].update(model=c["model"], features=c["features"], kernels=c["why"])
    md = [f"# Edge decode benchmark ({out['date']}, {os.cpu_count()} cores, copy bandwidth {bw:.1f} GB/s)", "",
          f"CPU: {c['model']} ({c['machine']}), features: {', '.join(c['features'])}; our kernels here: "
          f"{'used' if c['kernels_chosen'] else 'not used'} ({c['why']}).", "",
          "| config | threads | decode tok/s | x eager | prefill 200 (s) | prefill 1.5k (s) | decode tok/s after 1.5k "
          "| peak RSS (MB) | model (MB) | % of bandwidth limit | top-1 vs eager | KL | greedy identical |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-"
        md.append(f"| {r['name']} | {r['threads']} | {r['decode_tok_s']:.1f} | {sp} | {r['prefill_200_s']:.2f} | "
                  f"{r['prefill_1500_s']:.2f} | "
                  + (f"{r['decode_tok_s_after_1500']:.1f}" if "decode_tok_s_after_1500" in r else "-")
                  + f" | {r['peak_rss_mb']:.0f} | {r['model_bytes'] / 2**20:.0f} | "
                  f"{100 * r['fraction_of_bandwidth_limit']:.0f}% | "
                  + (f"{r['teacher_forced_top1']:.3f} | {r['mean_kl']:.4f} | {r['greedy_identical_prompts']}/3 |"
                     if "teacher_forced_top1" in r else f"- | - | {r['greedy_identical_prompts']}/3 |"
                     if "greedy_identical_prompts" in r else "1 (reference) | 0 | 3/3 |"))
    if wanted("cogenesis ORT int4"):  # the fair anchor: llama.cpp built natively here, interleaved with our int4
        import native_anchor

        out["native_llamacpp"], section = native_anchor.run(a.threads, a.rounds, 64, {
            "kernels": quality.get(KERNELS_ROW), "portable": quality.get("cogenesis ORT int4")}, refs)
        md += section
    if lc_info or wanted("llama.cpp"):  # a --configs run without llama.cpp says nothing about it
        md += _llamacpp_md(out.get("llamacpp"))
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
