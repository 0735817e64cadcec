"""The ExecuTorch export's model: an nn.Module equal to transformers' LlamaForCausalLM, with a static KV cache.

It mirrors ``LlamaForCausalLM`` exactly (RMSNorm in fp32, rotate-half RoPE, GQA, SiLU MLP, tied lm_head) but keeps
the KV cache in the [batch, seq, heads, dim] layout that ExecuTorch's ``llama::update_cache`` and
``llama::custom_sdpa`` need (see export/executorch_export.py for why). The parity tests hold it to transformers
eager.

This module imports torch and registers ExecuTorch's llama custom ops when it is imported: export/executorch_export.py
imports it only inside its export functions. Its source is part of the .pte cache key (executorch_export.code_key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers torch.ops.llama.*)
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LlamaDims:
    """The sizes the modules are built from (config.json of a Llama model), and the static cache length."""

    dim: int
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    theta: float
    bias: bool
    mlp_bias: bool
    intermediate: int
    vocab: int
    layers: int
    max_seq_len: int

    @classmethod
    def from_config(cls, cfg: dict, max_seq_len: int) -> LlamaDims:
        rope = cfg.get("rope_parameters") or {}
        dim, n_h = cfg["hidden_size"], cfg["num_attention_heads"]
        return cls(dim=dim, n_heads=n_h, n_kv=cfg.get("num_key_value_heads", n_h),
                   head_dim=cfg.get("head_dim") or dim // n_h, eps=float(cfg.get("rms_norm_eps", 1e-6)),
                   theta=float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
                   bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
                   intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"], layers=cfg["num_hidden_layers"],
                   max_seq_len=max_seq_len)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # x [S, dim]; the mean over a [1, S, dim, 1] view: XNNPACK's 4D inner mean
        var = x.pow(2).view(1, -1, self.dim, 1).mean((-2, -1), keepdim=True).view(-1, 1)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half_matrix(hd: int) -> torch.Tensor:
    """R with rotate_half(x) = cat(-x2, x1) = x @ R (one +-1 per column: exact); XNNPACK cannot slice a dynamic
    shape."""
    rot = torch.zeros(hd, hd)
    rot[torch.arange(hd // 2) + hd // 2, torch.arange(hd // 2)] = -1.0
    rot[torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2] = 1.0
    return rot


class Attention(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.n_h, self.n_kv, self.hd = d.n_heads, d.n_kv, d.head_dim
        self.q_proj = nn.Linear(d.dim, d.n_heads * d.head_dim, bias=d.bias)
        self.k_proj = nn.Linear(d.dim, d.n_kv * d.head_dim, bias=d.bias)
        self.v_proj = nn.Linear(d.dim, d.n_kv * d.head_dim, bias=d.bias)
        self.o_proj = nn.Linear(d.n_heads * d.head_dim, d.dim, bias=d.bias)
        self.register_buffer("k_cache", torch.zeros(1, d.max_seq_len, d.n_kv, d.head_dim), persistent=False)
        self.register_buffer("v_cache", torch.zeros(1, d.max_seq_len, d.n_kv, d.head_dim), persistent=False)
        self.register_buffer("rot_t", rotate_half_matrix(d.head_dim).t().contiguous(), persistent=False)

    def forward(self, x, cos, sin, start):
        # -1, not the symbolic S: XNNPACK reshapes only with static sizes (one inferred); with the 4D mean and the
        # matmul rotate-half, a layer is one delegate between the cache ops instead of 4 (fewer hops per token)
        n_h, n_kv, hd = self.n_h, self.n_kv, self.hd
        q = self.q_proj(x).view(1, -1, n_h, hd)
        k = self.k_proj(x).view(1, -1, n_kv, hd)
        v = self.v_proj(x).view(1, -1, n_kv, hd)
        q = q * cos + F.linear(q.view(-1, hd), self.rot_t).view(1, -1, n_h, hd) * sin
        k = k * cos + F.linear(k.view(-1, hd), self.rot_t).view(1, -1, n_kv, hd) * sin
        torch.ops.llama.update_cache(k, self.k_cache, start)
        torch.ops.llama.update_cache(v, self.v_cache, start)
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start, None, 0, True)
        return self.o_proj(out.view(-1, n_h * hd))


class MLP(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.gate_proj = nn.Linear(d.dim, d.intermediate, bias=d.mlp_bias)
        self.up_proj = nn.Linear(d.dim, d.intermediate, bias=d.mlp_bias)
        self.down_proj = nn.Linear(d.intermediate, d.dim, bias=d.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.self_attn = Attention(d)
        self.mlp = MLP(d)
        self.input_layernorm = RMSNorm(d.dim, d.eps)
        self.post_attention_layernorm = RMSNorm(d.dim, d.eps)

    def forward(self, h, cos, sin, start):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, start)
        return h + self.mlp(self.post_attention_layernorm(h))


class Inner(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.embed_tokens = nn.Embedding(d.vocab, d.dim)
        self.layers = nn.ModuleList(Layer(d) for _ in range(d.layers))
        self.norm = RMSNorm(d.dim, d.eps)


class EtLlama(nn.Module):
    """``forward(tokens int64[1, S], input_pos int64[1]) -> logits float32[1, vocab]`` (last position only)."""

    def __init__(self, d: LlamaDims):
        super().__init__()
        self.dim, self.hd, self.max_seq_len = d.dim, d.head_dim, d.max_seq_len
        self.model = Inner(d)
        self.lm_head = nn.Linear(d.dim, d.vocab, bias=False)
        hd = d.head_dim
        inv = 1.0 / (d.theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        f = torch.outer(torch.arange(d.max_seq_len, dtype=torch.int64).float(), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self.all_logits = False  # evaluation only (eager): logits for every position instead of the last

    def forward(self, tokens, input_pos):
        s, hd, max_seq_len = tokens.shape[1], self.hd, self.max_seq_len
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start < max_seq_len)
        torch._check(start + s <= max_seq_len)
        cos = self.rope_cos.narrow(0, start, s).view(1, s, 1, hd)
        sin = self.rope_sin.narrow(0, start, s).view(1, s, 1, hd)
        h = self.model.embed_tokens(tokens).view(-1, self.dim)  # [S, dim]: 2D linears, no matmul reshapes to trace
        for layer in self.model.layers:
            h = layer(h, cos, sin, start)
        return self.lm_head(self.model.norm(h if self.all_logits else h[-1:]))


def read_state_dict(hf_dir: Path, cfg: dict) -> dict:
    """The HF folder's safetensors weights, lm_head.weight filled in from the embedding when tied."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    if "lm_head.weight" not in sd:
        if not cfg.get("tie_word_embeddings", False):
            raise ValueError(f"{hf_dir}: no lm_head.weight and tie_word_embeddings is false")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def build_module(hf_dir: Path, cfg: dict, max_seq_len: int) -> EtLlama:
    """EtLlama with the HF folder's weights (fp32), in eval mode, no gradients."""
    sd = read_state_dict(hf_dir, cfg)
    m = EtLlama(LlamaDims.from_config(cfg, max_seq_len))
    missing, unexpected = m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: weights do not match a Llama model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
