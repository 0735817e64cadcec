"""ExecuTorch ``8da4w-gguf``: XNNPACK's 8da4w kernels on a GGUF file's own codes, not on re-quantized weights.

Q4_1 block: w = d*q + m = d*(q - 8) + (m + 8d). The first term is a symmetric int4 weight with scale d per
group of 32: exactly XNNPACK's qb4w (8-bit dynamic per-token activations x 4-bit group weights). The second
is sum_blocks (m + 8d) * blocksum(x): a small fp32 linear [K/32 -> N] on the block sums of x (exact). So the
weights are the GGUF's exactly; the only approximation left is the int8 per-token activation. The tied Q8_0
embedding is gathered from its own codes (int8, scale per group of 32); lm_head is int8 per channel x int8
dynamic activations (XNNPACK has no 8-bit group kernel).

This module imports torch and torchao: export/executorch_export.py imports it only for an ``8da4w-gguf`` export.
Its source is part of the .pte cache key (executorch_export.code_key).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
from torchao.quantization.granularity import PerAxis
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    IntxUnpackedToInt8Tensor,
    IntxUnpackedToInt8TensorActivationQuantization,
)

from .gguf_codes import BLOCK, BlockCodes, llama_unpermute_rows
from .gguf_exact import read_gguf

# GGUF tensor (blk.N.<name>.weight) -> HF linear under model.layers.N; attn_q/attn_k need llama's row unpermute
LINEARS = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
           "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


class GgufQ4Linear(nn.Module):
    """A Q4_1 linear as qb4w codes (d*(q - 8)) + an exact fp32 block-sum correction ((m + 8d) . blocksum(x))."""

    def __init__(self, c: BlockCodes):
        super().__init__()
        n, k = c.q.shape
        self.nb = k // BLOCK
        self.lin = nn.Linear(k, n, bias=False)
        w = IntxUnpackedToInt8Tensor(
            torch.from_numpy((c.q.astype(np.int16) - 8).astype(np.int8)), torch.from_numpy(c.d.astype(np.float32)),
            torch.zeros(c.d.shape, dtype=torch.int8), torch.int4, (1, BLOCK), torch.float32,
            IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
        self.lin.weight = nn.Parameter(w, requires_grad=False)
        self.corr = nn.Linear(self.nb, n, bias=False)
        self.corr.weight = nn.Parameter(torch.from_numpy((c.m + 8.0 * c.d).astype(np.float32)), requires_grad=False)

    def forward(self, x):
        return self.lin(x) + self.corr(x.unflatten(-1, (self.nb, BLOCK)).sum(-1))


def _layer_codes(codes: dict, hp: dict, i: int) -> dict:
    """HF linear name (under model.layers.i) -> its GGUF codes, rows in HF order."""
    b = f"blk.{i}."
    todo = {"self_attn.q_proj": codes[b + "attn_q.weight"].take_rows(
                llama_unpermute_rows(codes[b + "attn_q.weight"].q.shape[0], hp["n_head"])),
            "self_attn.k_proj": codes[b + "attn_k.weight"].take_rows(
                llama_unpermute_rows(codes[b + "attn_k.weight"].q.shape[0], hp["n_kv"]))}
    return todo | {hf: codes[b + g + ".weight"] for g, hf in LINEARS.items()}


def _swap_linear(model, fqn: str, c: BlockCodes) -> float:
    """Replace the linear `fqn` by GgufQ4Linear(c) after checking the codes are its weights; their max abs diff."""
    parent, attr = fqn.rsplit(".", 1)
    mod = model.get_submodule(parent)
    ref = getattr(mod, attr).weight.detach().numpy()
    diff = float(np.abs(c.dequantize() - ref).max())
    if diff > 1e-5 * float(np.abs(ref).max()):
        raise ValueError(f"{fqn}: GGUF codes differ from the HF weights by {diff:g}; wrong GGUF file?")
    setattr(mod, attr, GgufQ4Linear(c))
    return diff


def _replace_linears(model, codes: dict, hp: dict) -> tuple[int, float]:
    """Every layer's 7 linears from their Q4_1 codes: (how many, worst weight difference vs the HF weights)."""
    replaced, worst = 0, 0.0
    for i in range(hp["n_layer"]):
        for name, c in _layer_codes(codes, hp, i).items():
            if c.kind != "Q4_1":
                raise ValueError(f"blk.{i}.{name}: GGUF type {c.kind}; 8da4w-gguf needs Q4_1 layers (use --quant 8da4w)")
            worst = max(worst, _swap_linear(model, f"model.layers.{i}.{name}", c))
            replaced += 1
    return replaced, worst


def _quantize_embedding(model, codes: dict) -> str:
    """The embedding from the GGUF's Q8_0 codes when it has them, else re-quantized int8 per row; its scheme."""
    emb = codes.get("token_embd.weight")
    if emb is not None and emb.kind == "Q8_0":
        w = IntxUnpackedToInt8Tensor(torch.from_numpy(emb.q.astype(np.int8)), torch.from_numpy(emb.d.astype(np.float32)),
                                     torch.zeros(emb.d.shape, dtype=torch.int8), torch.int8, (1, BLOCK),
                                     torch.float32, None)
        model.model.embed_tokens.weight = nn.Parameter(w, requires_grad=False)
        return "GGUF Q8_0 codes (int8, group 32): exact"
    from executorch.extension.llm.export.quantize import quantize_model_

    quantize_model_(model, qembedding_config="8w", qembedding_group_size=0)
    return "int8 per row (re-quantized)"


def apply_gguf_codes(model, gguf_path: Path) -> dict:
    """8da4w on the GGUF file's own codes (see the module docstring), in place; returns facts for the manifest."""
    codes, hp = read_gguf(str(gguf_path))
    if hp["arch"] != "llama":
        raise ValueError(f"8da4w-gguf supports llama GGUF files, got {hp['arch']!r}")
    replaced, worst = _replace_linears(model, codes, hp)
    emb_scheme = _quantize_embedding(model, codes)
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
              filter_fn=lambda m, fqn: fqn == "lm_head")
    return {"gguf": gguf_path.name, "linears_from_gguf_codes": replaced, "max_weight_abs_diff_vs_hf": worst,
            "embedding": emb_scheme, "lm_head": "int8 per channel x int8 dynamic per-token activations"}
