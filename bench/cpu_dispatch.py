"""Which int4 path is fastest on THIS CPU, next to a natively built llama.cpp (issue 18).

    python bench/cpu_dispatch.py [--threads 1 2] [--rounds 2] [--new-tokens 64]

Rows, interleaved round by round (each ONNX row in its own process, `edge_decode.py --one`):
* our int4 bundle, kernel graph (`model.kernel.onnx` + our library; the exact path, COGENESIS_KERNELS=1);
* the same bundle's portable graph (`model.onnx`, onnxruntime's MatMulNBits);
* llama.cpp `llama-bench`, built here from source with -DGGML_NATIVE=ON (`scripts/build_llama_cpp.sh`), on the same
  Q4_1 GGUF, flash attention off and on; and on a Q4_0 copy (`llama-quantize`, its fastest 4-bit format here),
  flash attention off.
On a CPU with AVX-512, three more rows: our kernels and llama.cpp both built for x86-64-v3 (AVX2 + FMA + F16C,
no AVX-512; COGENESIS_KERNELS_MARCH and LLAMA_CPP_MARCH), so the AVX2 code paths are compared on the same silicon.
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
V3 = "x86-64-v3"  # the AVX2 level: both engines built for it, on an AVX-512 CPU
LLAMA_V3 = (f"llama.cpp {V3} fa=0", f"llama.cpp {V3} fa=1")


def cpu() -> dict:
    from cogenesis.runtime import kernels

    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())
    feats = kernels.cpu_features()
    use, why = kernels.dispatch(feats, kernels.library_features())
    return {"model": name, "machine": platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in FLAGS if f in feats], "kernels_chosen": use, "why": why}


def ours(graph: Path, threads: int, new_tokens: int, march: str | None = None) -> dict:
    env = {**os.environ, "COGENESIS_KERNELS": "1", **({"COGENESIS_KERNELS_MARCH": march} if march else {})}
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
        if LLAMA_V3[0] in rows:
            lines.append(v3_ratio(rows))
        lines.append("")
    return "\n".join(lines)


def v3_ratio(rows: dict) -> str:
    """The markdown row: our x86-64-v3 kernels / the faster x86-64-v3 llama.cpp."""
    best = {k: max(rows[n][k] for n in LLAMA_V3) for k in METRICS}
    return (f"| **AVX2 builds ({V3}): kernels / faster llama.cpp** | "
            + " | ".join(f"**{rows[f'kernels {V3}'][k] / best[k]:.2f}x**" for k in METRICS) + " |")


def llama_bins(march: str = "native") -> Path:
    """The folder of llama-bench, llama-quantize and llama-server, built here once (scripts/build_llama_cpp.sh);
    march x86-64-v3: llama-bench only, built for AVX2 (no AVX-512)."""
    targets = ["llama-bench"] if march != "native" else ["llama-bench", "llama-quantize", "llama-server"]
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_cpp.sh"), *targets], check=True,
                         capture_output=True, text=True, env={**os.environ, "LLAMA_CPP_MARCH": march}).stdout
    return Path(out.strip().splitlines()[-1])


def q4_0_copy(bindir: Path, gguf: Path) -> Path:
    """llama.cpp's own Q4_0, requantized from the shipped Q4_1 (--allow-requantize): its fastest 4-bit format here."""
    q4_0 = ROOT / ".cache" / "llama.cpp" / "smollm2-135m-q4_0.gguf"
    if not q4_0.is_file():
        tmp = q4_0.with_suffix(".tmp")
        subprocess.run([str(bindir / "llama-quantize"), "--allow-requantize", str(gguf), str(tmp), "Q4_0"],
                       check=True, capture_output=True)
        tmp.replace(q4_0)
    return q4_0


def measure(threads: list[int], rounds: int, new_tokens: int) -> dict:
    """Every row at every thread count, interleaved round by round; the best of the rounds per metric."""
    from cogenesis.export.default_model import default_model

    if not (BUNDLE / "model.kernel.onnx").is_file():
        raise SystemExit(f"{BUNDLE} has no kernel graph: run `make demo` (or cogenesis export --quant int4 --out {BUNDLE})")
    gguf, _ = default_model(install=False)
    bindir = llama_bins()
    q4_0 = q4_0_copy(bindir, gguf)
    res: dict = {"cpu": cpu(), "rounds": rounds, "new_tokens": new_tokens,
                 "llama_cpp": "from llama-cpp-python " + os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36"),
                 "threads": {}}
    rows = (("kernels", lambda t: ours(BUNDLE / "model.kernel.onnx", t, new_tokens)),
            ("portable", lambda t: ours(BUNDLE / "model.onnx", t, new_tokens)),
            ("llama.cpp fa=0", lambda t: llama(bindir / "llama-bench", gguf, t, 0, new_tokens)),
            ("llama.cpp fa=1", lambda t: llama(bindir / "llama-bench", gguf, t, 1, new_tokens)),
            ("llama.cpp Q4_0 fa=0", lambda t: llama(bindir / "llama-bench", q4_0, t, 0, new_tokens)))
    if "avx512f" in res["cpu"]["features"]:  # the AVX2 paths too, both engines built for x86-64-v3
        v3 = llama_bins(V3) / "llama-bench"
        rows += ((f"kernels {V3}", lambda t: ours(BUNDLE / "model.kernel.onnx", t, new_tokens, V3)),
                 (LLAMA_V3[0], lambda t: llama(v3, gguf, t, 0, new_tokens)),
                 (LLAMA_V3[1], lambda t: llama(v3, gguf, t, 1, new_tokens)))
    for t in threads:
        runs: dict[str, list[dict]] = {}
        for _ in range(rounds):
            for name, fn in rows:
                runs.setdefault(name, []).append(fn(t))
                print(t, name, {k: round(v, 1) for k, v in runs[name][-1].items()}, flush=True)
        res["threads"][str(t)] = {n: {k: max(x[k] for x in xs) for k in METRICS} for n, xs in runs.items()}
    return res


def llama_greedy(gguf: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    """n greedy tokens per prompt (token ids in, EOS ignored) from the natively built llama-server, 1 thread."""
    import socket
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(llama_bins() / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port",
                             str(port), "-t", "1", "-c", "2048", "-np", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        out = []
        for p in prompts:
            r = requests.post(url + "/completion", json={"prompt": p, "n_predict": n, "temperature": 0, "top_k": 1,
                                                          "ignore_eos": True, "cache_prompt": False,
                                                          "return_tokens": True}, timeout=600)
            r.raise_for_status()
            out.append([int(t) for t in r.json()["tokens"]][:n])
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write(res: dict, out: Path) -> str:
    """cpu_dispatch.json and .md into `out`, atomically; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    for name, text in (("cpu_dispatch.json", json.dumps(res, indent=2) + "\n"), ("cpu_dispatch.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    print(write(measure(a.threads, a.rounds, a.new_tokens), Path(a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
