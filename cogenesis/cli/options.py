"""Generation options, declared once for every command that generates (`run`, `write`)."""

from __future__ import annotations

import argparse


def add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="maximum new tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalize tokens already in the reply (1 = off; 1.2 keeps a 135M model out of loops)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


def generation_kwargs(a) -> dict:
    return dict(max_new_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                repetition_penalty=a.repetition_penalty)
