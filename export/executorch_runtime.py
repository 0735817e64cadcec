"""Running an ExecuTorch `.pte` from Python: the decoder (parity, bench) and the `.pte` bundle loader.

Why here and not in cogenesis.runtime: ExecuTorch's Python runtime needs libtorch loaded (``import torch``) and
its LLM custom ops register through torch, and the edge runtime must not import torch (import-linter contract
"edge-runtime"). On a device the `.pte` runs in the native ExecuTorch runtime (the Android/iOS app), not here.
Nothing heavy is imported at module level: torch and executorch are imported when a decoder is made.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
from cogenesis.runtime.bundle import read_manifest, verify_bundle
from tokenizers import Tokenizer

# what a process must import before it loads a .pte of ours (custom SDPA / KV cache ops, quantized kernels)
RUNTIME_IMPORTS = ("executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized")


def _require_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError(
            "ExecuTorch is not installed. Install it into this environment (it resolves against torch==2.13.0 "
            "without pulling CUDA): pip install executorch==1.4.1 torchao==0.18.0"
        ) from e


def set_threads(n: int | None) -> None:
    """XNNPACK's thread pool size (process-wide)."""
    if n:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(int(n))


class PteDecoder:
    """Same interface as cogenesis.runtime.model.Decoder (forward / reset / truncate) over a .pte."""

    def __init__(self, pte: str | Path, threads: int | None = None, max_seq_len: int | None = None,
                 method: str = "forward"):
        _require_executorch()
        import torch  # noqa: F401  (the pybindings need libtorch loaded)

        for mod in RUNTIME_IMPORTS:
            importlib.import_module(mod)
        from executorch.runtime import Runtime

        set_threads(threads)
        self.path = Path(pte)
        self.method = Runtime.get().load_program(self.path).load_method(method)
        facts = self.path.parent / "export.json"  # beside a cached export
        if max_seq_len is None and facts.is_file():
            max_seq_len = json.loads(facts.read_text()).get("max_seq_len")
        self.max_seq_len = max_seq_len
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def reset(self) -> None:
        self.tokens = []  # the cache rows past `length` are never read (causal attention up to start_pos)

    def truncate(self, length: int) -> None:
        self.tokens = self.tokens[: max(0, length)]

    def forward(self, ids, keep: int = 1) -> np.ndarray:
        """Run `ids` after the cached tokens; returns logits [1, vocab] of the last one (keep is ignored)."""
        import torch

        ids = [int(t) for t in (ids.reshape(-1) if isinstance(ids, np.ndarray) else ids)]
        if not ids:
            raise ValueError("forward() needs at least one token")
        if self.max_seq_len and (self.length + len(ids) > self.max_seq_len or len(ids) >= self.max_seq_len):
            raise ValueError(f"context full: {self.length} + {len(ids)} tokens > max_seq_len {self.max_seq_len} "
                             "of this .pte (re-export with a larger --max-seq-len)")
        out = self.method.execute((torch.tensor([ids], dtype=torch.long),
                                   torch.tensor([self.length], dtype=torch.long)))
        self.tokens.extend(ids)
        return out[0].numpy().reshape(1, -1).copy()  # the runtime may reuse its output buffer


def pte_parity(decoder: PteDecoder, runs: list[dict]) -> dict:
    """Like export.report.bundle_parity, for a .pte: greedy tokens and teacher-forced top-1 / KL vs eager.

    Teacher forcing feeds eager's continuation one token at a time (the graph returns the last position's
    logits only), so it also exercises the decode path at every position."""
    from .report import greedy, score, summarize

    per = []
    for r in runs:
        got = greedy(decoder, r["prompt_ids"], len(r["ref_ids"]))
        decoder.reset()
        tf = [decoder.forward(r["prompt_ids"])[-1]]
        for t in r["ref_ids"][:-1]:
            tf.append(decoder.forward([t])[-1])
        per.append(score(got, np.stack(tf), r))
    return summarize(per, runs)


def verify_pte_bundle(bundle: str | Path, check_hashes: bool = True) -> dict:
    """Verify an ExecuTorch bundle's files (size, sha256) against its manifest; returns the manifest."""
    return verify_bundle(bundle, read_manifest(bundle, kinds=("executorch",)), check_hashes=check_hashes)


def load_pte_bundle(bundle: str | Path, threads: int | None = None, verify: bool = True):
    """(PteDecoder, tokenizers.Tokenizer, manifest) for a verified ExecuTorch bundle."""
    root = Path(bundle)
    m = verify_pte_bundle(root, check_hashes=verify)
    et = m["executorch"]
    dec = PteDecoder(root / et["file"], threads, et.get("max_seq_len"), et.get("method", "forward"))
    return dec, Tokenizer.from_file(str(root / "tokenizer.json")), m
