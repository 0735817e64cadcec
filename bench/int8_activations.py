"""Our int4 bundle with fp32 activations (exact, the default on AVX2) and with int8 activations (`--quant
int4-fast`: the same GGUF codes, onnxruntime's MatMulNBits accuracy_level 4, the arithmetic llama.cpp uses for
Q4_1 x Q8_1), next to a natively built llama.cpp on the same GGUF (issue 18).

    python bench/int8_activations.py --fast-bundle DIR   # DIR: `cogenesis export --quant int4-fast --out DIR`

Rows interleaved round by round, best of the rounds, tok/s, measured by `cpu_dispatch.ours` / `cpu_dispatch.llama`.
Writes bench/results/int8_activations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_dispatch as cd  # noqa: E402

EXACT, FAST, LLAMA = "int4 exact (fp32 activations)", "int4-fast (int8 activations)", "llama.cpp fa=0"


def measure(fast: Path, threads: list[int], rounds: int, new_tokens: int) -> dict:
    from cogenesis.core.paths import cache_dir

    bench = Path(cd.subprocess.run(["bash", str(cd.ROOT / "scripts" / "build_llama_cpp.sh"), "llama-bench"],
                                   capture_output=True, text=True, check=True).stdout.split()[-1]) / "llama-bench"
    gguf = next((cache_dir() / "gguf" / "smollm2-135m").glob("*.gguf"))
    rows: dict[str, dict] = {}
    for t in threads:
        for _ in range(rounds):
            for name, fn in ((EXACT, lambda t=t: cd.ours(cd.BUNDLE / "model.onnx", t, new_tokens)),
                             (FAST, lambda t=t: cd.ours(fast / "model.onnx", t, new_tokens)),
                             (LLAMA, lambda t=t: cd.llama(bench, gguf, t, 0, new_tokens))):
                m = fn()
                best = rows.setdefault(str(t), {}).setdefault(name, m)
                for k in m:
                    best[k] = max(best[k], m[k])
    return rows


def markdown(cpu: dict, rows: dict, rounds: int) -> str:
    lines = ["# int8 activations on this CPU (`bench/int8_activations.py`)", "",
             f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores), features: {', '.join(cpu['features'])}. "
             f"SmolLM2-135M-Instruct Q4_1, best of {rounds} interleaved rounds, tok/s.", ""]
    for t, r in rows.items():
        lines += [f"## {t} thread(s)", "", "| path | " + " | ".join(cd.METRICS) + " |",
                  "|---" * (len(cd.METRICS) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(f"{m[k]:.1f}" for k in cd.METRICS) + " |" for n, m in r.items()]
        for n in (EXACT, FAST):
            lines.append(f"| {n.split(' (')[0]} / llama.cpp | " + " | ".join(f"{r[n][k] / r[LLAMA][k]:.2f}x"
                                                                       for k in cd.METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast-bundle", required=True, help="a `cogenesis export --quant int4-fast` bundle")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(cd.ROOT / "bench" / "results"))
    a = ap.parse_args()
    cpu = cd.cpu()
    rows = measure(Path(a.fast_bundle), a.threads, a.rounds, a.new_tokens)
    out = Path(a.out)
    (out / "int8_activations.json").write_text(json.dumps({"cpu": cpu, "rounds": a.rounds, "rows": rows}, indent=1))
    (out / "int8_activations.md").write_text(markdown(cpu, rows, a.rounds))
    print(markdown(cpu, rows, a.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
