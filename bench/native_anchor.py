"""The default path against llama.cpp built natively here, for `bench/edge_decode.py` (issue 18).

Rows (interleaved round by round by `cpu_dispatch.measure`, best of the rounds): our int4 bundle's kernel graph and
its portable graph, llama.cpp on the same Q4_1 GGUF with flash attention off and on, and on llama.cpp's own Q4_0
copy. Ratios are default path / the faster llama.cpp setting per metric (> 1: ours faster). Fidelity next to each
row: our rows from the edge_decode parity run (teacher-forced top-1 vs transformers eager on the dequantized GGUF,
greedy identity over 64 tokens on 3 prompts); llama.cpp rows greedy only, from the natively built llama-server
(token ids in, same prompts).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_dispatch as cd  # noqa: E402

LLAMA = ("llama.cpp fa=0", "llama.cpp fa=1")


def greedy_identity(refs: list[dict]) -> dict[str, int]:
    """How many of the parity prompts llama.cpp's greedy tokens equal eager's, for the GGUF and its Q4_0 copy."""
    from cogenesis.export.default_model import default_model

    gguf, _ = default_model(install=False)
    prompts, ref_ids = [r["prompt_ids"] for r in refs], [r["ref_ids"] for r in refs]
    out = {}
    for name, path in (("gguf", gguf), ("q4_0", cd.q4_0_copy(cd.llama_bins(), gguf))):
        toks = cd.llama_greedy(path, prompts, len(ref_ids[0]))
        out[name] = sum(t == r for t, r in zip(toks, ref_ids, strict=True))
    return out


def run(threads: list[int], rounds: int, new_tokens: int, ours: dict[str, dict], refs: list[dict]) -> tuple[dict, list[str]]:
    """Measures, writes cpu_dispatch.{json,md} too, returns (results with fidelity, markdown section).
    ours: {"kernels": quality, "portable": quality} from the parity run."""
    res = cd.measure(threads, rounds, new_tokens)
    cd.write(res, cd.ROOT / "bench" / "results")
    g = greedy_identity(refs)
    res["fidelity"] = {**ours, **{n: {"greedy_identical_prompts": g["gguf"]} for n in LLAMA},
                       "llama.cpp Q4_0 fa=0": {"greedy_identical_prompts": g["q4_0"]}}
    return res, section(res, len(refs))


def _fid(f: dict | None, prompts: int) -> str:
    if not f:
        return "- | -"
    top1 = f"{f['teacher_forced_top1']:.3f}" if "teacher_forced_top1" in f else "-"
    return f"{top1} | {f['greedy_identical_prompts']}/{prompts}"


def section(res: dict, prompts: int) -> list[str]:
    c = res["cpu"]
    default = "kernels" if c["kernels_chosen"] else "portable"
    md = ["", "## The default path vs llama.cpp built here, same GGUF", "",
          f"CPU: {c['model']} ({c['machine']}, {c['cores']} cores), features: {', '.join(c['features'])}. "
          f"`kernels.dispatch` here: **{default}** ({c['why']}). llama.cpp {res['llama_cpp']}, built on this "
          f"machine with -DGGML_NATIVE=ON (`scripts/build_llama_cpp.sh`). SmolLM2-135M-Instruct Q4_1, "
          f"{res['new_tokens']} decoded tokens, best of {res['rounds']} interleaved rounds, tok/s.", ""]
    cols = list(cd.METRICS)
    for t, rows in res["threads"].items():
        md += [f"### {t} thread(s)", "", "| path | " + " | ".join(cols) + " | top-1 vs eager | greedy identical |",
               "|---" * (len(cols) + 3) + "|"]
        for name, m in rows.items():
            mark = " (default here)" if name == default else ""
            md.append(f"| {name}{mark} | " + " | ".join(f"{m[k]:.1f}" for k in cols) + " | "
                      + _fid(res["fidelity"].get(name), prompts) + " |")
        best = {k: max(rows[n][k] for n in LLAMA) for k in cols}
        md.append("| **default / faster llama.cpp (same GGUF)** | " + " | ".join(
            f"**{rows[default][k] / best[k]:.2f}x**" for k in cols) + " | | |")
        md.append("| default / llama.cpp Q4_0 | " + " | ".join(
            f"{rows[default][k] / rows['llama.cpp Q4_0 fa=0'][k]:.2f}x" for k in cols) + " | | |")
        if cd.LLAMA_V3[0] in rows:
            md.append(cd.v3_ratio(rows) + " | |")
        md.append("")
    md += ["Our rows compute the GGUF's Q4_1 weights exactly in fp32 (the kernels and the portable graph); llama.cpp "
           "multiplies them with Q8_1-quantized activations. Both keep the KV cache in fp16 (ours in the kernel graph; "
           "the portable graph's cache is fp32). Rows marked x86-64-v3 (on an AVX-512 CPU only): ours and llama.cpp "
           "both built for AVX2 + FMA + F16C without AVX-512, the code paths an AVX2-only CPU runs. Top-1 is teacher-forced over 64 tokens on 3 prompts "
           "against transformers eager on the dequantized GGUF; llama.cpp gives no logits here, so its rows carry "
           "greedy identity only."]
    return md
