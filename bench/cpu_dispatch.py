"""Which int4 path is fastest on THIS CPU, next to a natively built llama.cpp (issue 18).

    python bench/cpu_dispatch.py [--threads 1 2] [--rounds 2] [--new-tokens 64]

Rows, interleaved round by round (each ONNX row in its own process, `edge_decode.py --one`):
* our int4 bundle, kernel graph (`model.kernel.onnx` + our library; the exact path, COGENESIS_KERNELS=1);
* the same bundle's portable graph (`model.onnx`, onnxruntime's MatMulNBits);
* llama.cpp `llama-bench`, built here from source with -DGGML_NATIVE=ON (`scripts/build_llama_cpp.sh`), on the same
  Q4_1 GGUF, flash attention off and on; and on a Q4_0 copy (`llama-quantize`, its fastest 4-bit format here),
  flash attention off.
Metrics: prefill 200 and 1,500 tokens (tok/s), decode after 200 and after 1,500 tokens (tok/s); the best of the
rounds. The header names the CPU and its features and what `kernels.dispatch` picks here (the default path); the
ratios are default path / the faster llama.cpp setting. Writes bench/results/cpu_dispatch.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUNDLE = ROOT / "artifacts" / "bundles" / "smollm2-int4"
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "i8mm")
METRICS = ("prefill_200", "prefill_1500", "decode_after_200", "decode_after_1500")


def cpu() -> dict:
    from cogenesis.runtime import kernels

    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())
    feats = kernels.cpu_features()
    use, why = kernels.dispatch(feats, kernels.library_features())
    return {"model": name, "machine": platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in FLAGS if f in feats], "kernels_chosen": use, "why": why}


def ours(graph: Path, threads: int, new_tokens: int) -> dict:
    env = {**os.environ, "COGENESIS_KERNELS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "edge_decode.py"), "--one", "ort", str(graph),
                        str(threads), "--new-tokens", str(new_tokens)], capture_output=True, text=True, env=env,
                       timeout=1800)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{graph.name}: {r.stderr[-1500:]}")
    x = json.loads(line[7:])
    return {"prefill_200": x["prompt_tokens"] / x["prefill_200_s"],
            "prefill_1500": x["long_prompt_tokens"] / x["prefill_1500_s"],
            "decode_after_200": x["decode_tok_s"], "decode_after_1500": x["decode_tok_s_after_1500"]}


def llama(bench: Path, gguf: Path, threads: int, fa: int, new_tokens: int) -> dict:
    def run(*args: str) -> list[dict]:
        r = subprocess.run([str(bench), "-m", str(gguf), "-t", str(threads), "-fa", "on" if fa else "off", "-r", "2", "-o", "json",
                            *args], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"llama-bench failed: {r.stderr[-1500:]}")
        return json.loads(r.stdout)

    out = {}
    for t in run("-p", "200,1500", "-n", "0"):
        out[f"prefill_{t['n_prompt']}"] = t["avg_ts"]
    for t in run("-p", "0", "-n", str(new_tokens), "-d", "200,1500"):
        out[f"decode_after_{t['n_depth']}"] = t["avg_ts"]
    return out


def markdown(r: dict) -> str:
    c = r["cpu"]
    default = "kernels" if c["kernels_chosen"] else "portable"
    lines = ["# Which int4 path on this CPU (`bench/cpu_dispatch.py`)", "",
             f"CPU: {c['model']} ({c['machine']}, {c['cores']} cores), features: {', '.join(c['features'])}. "
             f"SmolLM2-135M-Instruct Q4_1 (the same GGUF for every row), best of {r['rounds']} interleaved rounds, "
             f"tok/s. llama.cpp {r['llama_cpp']} built here with -DGGML_NATIVE=ON.", "",
             f"`kernels.dispatch` on this CPU: **{default}** ({c['why']}).", ""]
    for t, rows in r["threads"].items():
        lines += [f"## {t} thread(s)", "", "| path | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, m in rows.items():
            mark = " (default here)" if name == default else ""
            lines.append(f"| {name}{mark} | " + " | ".join(f"{m[k]:.1f}" for k in METRICS) + " |")
        best = {k: max(rows["llama.cpp fa=0"][k], rows["llama.cpp fa=1"][k]) for k in METRICS}
        lines.append("| **default / best llama.cpp** | " + " | ".join(f"**{rows[default][k] / best[k]:.2f}x**"
                                                                        for k in METRICS) + " |")
        q = rows.get("llama.cpp Q4_0 fa=0")
        if q:
            lines.append("| default / llama.cpp Q4_0 | " + " | ".join(f"{rows[default][k] / q[k]:.2f}x"
                                                                      for k in METRICS) + " |")
        lines.append("| portable / kernels | " + " | ".join(f"{rows['portable'][k] / rows['kernels'][k]:.2f}x"
                                                             for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    from cogenesis.export.default_model import default_model

    if not (BUNDLE / "model.kernel.onnx").is_file():
        ap.error(f"{BUNDLE} has no kernel graph: run `make demo` (or cogenesis export --quant int4 --out {BUNDLE})")
    gguf, _ = default_model(install=False)
    bindir = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_cpp.sh"), "llama-bench", "llama-quantize"],
                            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    bench = Path(bindir) / "llama-bench"
    q4_0 = ROOT / ".cache" / "llama.cpp" / "smollm2-135m-q4_0.gguf"
    if not q4_0.is_file():  # requantized from the shipped Q4_1 (--allow-requantize): llama.cpp's own Q4_0 row
        tmp = q4_0.with_suffix(".tmp")
        subprocess.run([str(Path(bindir) / "llama-quantize"), "--allow-requantize", str(gguf), str(tmp), "Q4_0"],
                       check=True, capture_output=True)
        tmp.replace(q4_0)
    res: dict = {"cpu": cpu(), "rounds": a.rounds, "new_tokens": a.new_tokens,
                 "llama_cpp": "from llama-cpp-python " + os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36"),
                 "threads": {}}
    for t in a.threads:
        runs: dict[str, list[dict]] = {}
        for _ in range(a.rounds):
            for name, fn, arg in (("kernels", ours, BUNDLE / "model.kernel.onnx"),
                                  ("portable", ours, BUNDLE / "model.onnx"),
                                  ("llama.cpp fa=0", llama, 0), ("llama.cpp fa=1", llama, 1),
                                  ("llama.cpp Q4_0 fa=0", llama, 2)):
                if fn is ours:
                    got = ours(arg, t, a.new_tokens)
                else:
                    got = llama(bench, q4_0 if arg == 2 else gguf, t, arg == 1, a.new_tokens)
                runs.setdefault(name, []).append(got)
                print(t, name, runs[name][-1], flush=True)
        res["threads"][str(t)] = {n: {k: max(x[k] for x in xs) for k in METRICS} for n, xs in runs.items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    for name, text in (("cpu_dispatch.json", json.dumps(res, indent=2) + "\n"), ("cpu_dispatch.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
