"""HF Llama-family folder -> ExecuTorch `.pte` (XNNPACK delegate) bundle, and a Python runner for parity/bench.

`cogenesis export --format executorch [--quant fp32|8da4w|8da4w-gguf]`. The `.pte` is the Android/iOS native artifact; on a
Raspberry Pi the ONNX bundle stays the light path (ExecuTorch's Python runtime needs libtorch).

Why a small model of our own instead of exporting transformers' module: the speed of an ExecuTorch LLM is its
custom ops, ``llama::update_cache`` (writes the new K/V rows into a static in-graph cache, in place) and
``llama::custom_sdpa`` (causal attention over the cache up to ``start_pos``, grouped-query heads natively). They
need the cache in [batch, seq, heads, dim] layout, which transformers' StaticCache does not use; the 60 lines
below mirror ``LlamaForCausalLM`` exactly (RMSNorm in fp32, rotate-half RoPE, GQA, SiLU MLP, tied lm_head) and the
parity test holds them to transformers eager (fp32: greedy tokens identical).

Graph: ``forward(tokens int64[1, S], input_pos int64[1]) -> logits float32[1, vocab]`` (last position only), S
dynamic from 1 to ``max_seq_len - 1`` (prefill and decode are the same method), KV cache static and internal.

Quantization (torchao source transform, ExecuTorch's own ``quantize_model_``):
* ``fp32``: no quantization (tied embedding is stored twice: by the embedding gather and the XNNPACK lm_head);
* ``8da4w``: linears (lm_head included) 4-bit weights in groups of 32 with 8-bit dynamic per-token activations,
  embedding 8-bit per row (``8w``), lowered to XNNPACK's qd8-qb4w kernels and ``quantized_decomposed::embedding_byte``
  (ExecuTorch's stock LLM recipe). On SmolLM2, whose weights are already Q4_1, re-quantizing rounds them twice:
  measured teacher-forced top-1 vs eager ~0.65, KL ~0.56 (greedy output drifts within a few tokens);
* ``8da4w-gguf`` (GGUF sources): the same XNNPACK kernels on the GGUF's own codes (see `_apply_gguf_codes`): the
  weights are exact, only the int8 per-token activations approximate: measured top-1 ~0.91, KL ~0.02.

Export is run in a subprocess (torch.export + lowering peaks at several GB and takes minutes on 2 cores) and
cached under ``$COGENESIS_CACHE/executorch`` per source model, options and version of this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUANTS = ("fp32", "8da4w", "8da4w-gguf")
DEFAULT_GROUP_SIZE = 32
DEFAULT_MAX_SEQ_LEN = 2048
SUPPORTED = ("llama",)
SCHEMES = {
    "fp32": "fp32",
    "8da4w": "8da4w: int4 weights (group {g}, symmetric, HQQ scales) x int8 dynamic per-token activations for "
             "every linear incl. lm_head; embedding int8 per row",
    "8da4w-gguf": "8da4w on the GGUF's own Q4_1 codes (group 32, zero point folded into an exact fp32 block-sum "
                  "term) x int8 dynamic per-token activations; lm_head int8 per channel (8da8w); embedding = GGUF "
                  "Q8_0 codes",
}
RUNTIME_IMPORTS = ("executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized")


def _require_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError(
            "ExecuTorch is not installed. Install it into this environment (it resolves against torch==2.13.0 "
            "without pulling CUDA): pip install executorch==1.4.1 torchao==0.18.0"
        ) from e


# -- the model ------------------------------------------------------------------------------------------------
def _build_module(hf_dir: Path, max_seq_len: int):
    """An nn.Module equal to transformers' LlamaForCausalLM, with a static [1, S, kv_heads, dim] KV cache."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers torch.ops.llama.*)
    import torch
    from torch import nn
    from torch.nn import functional as F

    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") not in SUPPORTED:
        raise ValueError(f"ExecuTorch export supports {SUPPORTED} models, got model_type {cfg.get('model_type')!r}")
    rope = cfg.get("rope_parameters") or {}
    if (rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or "default") != "default":
        raise ValueError(f"ExecuTorch export: rope scaling {rope} is not supported (only the default RoPE)")
    dim, n_h = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_h)
    hd = cfg.get("head_dim") or dim // n_h
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    theta = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    bias = bool(cfg.get("attention_bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False))

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):  # x [S, dim]; the mean over a [1, S, dim, 1] view: XNNPACK's 4D inner mean
            var = x.pow(2).view(1, -1, dim, 1).mean((-2, -1), keepdim=True).view(-1, 1)
            return self.weight * (x * torch.rsqrt(var + eps))

    # rotate_half(x) = cat(-x2, x1) as x @ R (one +-1 per column: exact); XNNPACK cannot slice a dynamic shape
    rot = torch.zeros(hd, hd)
    rot[torch.arange(hd // 2) + hd // 2, torch.arange(hd // 2)] = -1.0
    rot[torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2] = 1.0

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(dim, n_h * hd, bias=bias)
            self.k_proj = nn.Linear(dim, n_kv * hd, bias=bias)
            self.v_proj = nn.Linear(dim, n_kv * hd, bias=bias)
            self.o_proj = nn.Linear(n_h * hd, dim, bias=bias)
            self.register_buffer("k_cache", torch.zeros(1, max_seq_len, n_kv, hd), persistent=False)
            self.register_buffer("v_cache", torch.zeros(1, max_seq_len, n_kv, hd), persistent=False)
            self.register_buffer("rot_t", rot.t().contiguous(), persistent=False)

        def forward(self, x, cos, sin, start):
            # -1, not the symbolic S: XNNPACK reshapes only with static sizes (one inferred); with the 4D mean and the
            # matmul rotate-half, a layer is one delegate between the cache ops instead of 4 (fewer hops per token)
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
        def __init__(self):
            super().__init__()
            inter = cfg["intermediate_size"]
            self.gate_proj = nn.Linear(dim, inter, bias=mlp_bias)
            self.up_proj = nn.Linear(dim, inter, bias=mlp_bias)
            self.down_proj = nn.Linear(inter, dim, bias=mlp_bias)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attention()
            self.mlp = MLP()
            self.input_layernorm = RMSNorm()
            self.post_attention_layernorm = RMSNorm()

        def forward(self, h, cos, sin, start):
            h = h + self.self_attn(self.input_layernorm(h), cos, sin, start)
            return h + self.mlp(self.post_attention_layernorm(h))

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg["vocab_size"], dim)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg["num_hidden_layers"]))
            self.norm = RMSNorm()

    class EtLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(dim, cfg["vocab_size"], bias=False)
            inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
            f = torch.outer(torch.arange(max_seq_len, dtype=torch.int64).float(), inv)
            emb = torch.cat((f, f), dim=-1)
            self.register_buffer("rope_cos", emb.cos(), persistent=False)
            self.register_buffer("rope_sin", emb.sin(), persistent=False)
            self.all_logits = False  # evaluation only (eager): logits for every position instead of the last

        def forward(self, tokens, input_pos):
            s = tokens.shape[1]
            start = input_pos[0].item()
            torch._check(start >= 0)
            torch._check(start < max_seq_len)
            torch._check(start + s <= max_seq_len)
            cos = self.rope_cos.narrow(0, start, s).view(1, s, 1, hd)
            sin = self.rope_sin.narrow(0, start, s).view(1, s, 1, hd)
            h = self.model.embed_tokens(tokens).view(-1, dim)  # [S, dim]: 2D linears, no matmul reshapes to trace
            for layer in self.model.layers:
                h = layer(h, cos, sin, start)
            return self.lm_head(self.model.norm(h if self.all_logits else h[-1:]))

    from safetensors.torch import load_file

    sd = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    if "lm_head.weight" not in sd:
        if not cfg.get("tie_word_embeddings", False):
            raise ValueError(f"{hf_dir}: no lm_head.weight and tie_word_embeddings is false")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    m = EtLlama()
    missing, unexpected = m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: weights do not match a Llama model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, cfg


def gguf_source(hf_dir: Path) -> Path | None:
    """The GGUF an HF folder was converted from (default_model.gguf_to_hf writes source.json), if still present."""
    f = hf_dir / "source.json"
    if f.is_file():
        g = Path(json.loads(f.read_text()).get("gguf", ""))
        if g.is_file():
            return g
    return None


def _apply_gguf_codes(model, gguf_path: Path) -> dict:
    """8da4w on the GGUF file's own codes instead of re-quantizing its dequantized weights.

    Q4_1 block: w = d*q + m = d*(q - 8) + (m + 8d). The first term is a symmetric int4 weight with scale d per
    group of 32: exactly XNNPACK's qb4w (8-bit dynamic per-token activations x 4-bit group weights). The second
    is sum_blocks (m + 8d) * blocksum(x): a small fp32 linear [K/32 -> N] on the block sums of x (exact). So the
    weights are the GGUF's exactly; the only approximation left is the int8 per-token activation. The tied Q8_0
    embedding is gathered from its own codes (int8, scale per group of 32); lm_head is int8 per channel x int8
    dynamic activations (XNNPACK has no 8-bit group kernel)."""
    import numpy as np
    import torch
    from torch import nn
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    from .gguf_codes import BLOCK, llama_unpermute_rows
    from .gguf_exact import read_gguf

    codes, hp = read_gguf(str(gguf_path))
    if hp["arch"] != "llama":
        raise ValueError(f"8da4w-gguf supports llama GGUF files, got {hp['arch']!r}")

    class GgufQ4Linear(nn.Module):
        def __init__(self, c):
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

    names = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    replaced, worst = 0, 0.0
    for i in range(hp["n_layer"]):
        b, pre = f"blk.{i}.", f"model.layers.{i}."
        todo = {"self_attn.q_proj": codes[b + "attn_q.weight"].take_rows(
                    llama_unpermute_rows(codes[b + "attn_q.weight"].q.shape[0], hp["n_head"])),
                "self_attn.k_proj": codes[b + "attn_k.weight"].take_rows(
                    llama_unpermute_rows(codes[b + "attn_k.weight"].q.shape[0], hp["n_kv"]))}
        todo |= {hf: codes[b + g + ".weight"] for g, hf in names.items()}
        for name, c in todo.items():
            if c.kind != "Q4_1":
                raise ValueError(f"{b}{name}: GGUF type {c.kind}; 8da4w-gguf needs Q4_1 layers (use --quant 8da4w)")
            parent, attr = (pre + name).rsplit(".", 1)
            mod = model.get_submodule(parent)
            ref = getattr(mod, attr).weight.detach().numpy()
            diff = float(np.abs(c.dequantize() - ref).max())
            if diff > 1e-5 * float(np.abs(ref).max()):
                raise ValueError(f"{pre}{name}: GGUF codes differ from the HF weights by {diff:g}; wrong GGUF file?")
            worst = max(worst, diff)
            setattr(mod, attr, GgufQ4Linear(c))
            replaced += 1
    emb = codes.get("token_embd.weight")
    emb_scheme = "int8 per row (re-quantized)"
    if emb is not None and emb.kind == "Q8_0":
        w = IntxUnpackedToInt8Tensor(torch.from_numpy(emb.q.astype(np.int8)), torch.from_numpy(emb.d.astype(np.float32)),
                                     torch.zeros(emb.d.shape, dtype=torch.int8), torch.int8, (1, BLOCK),
                                     torch.float32, None)
        model.model.embed_tokens.weight = nn.Parameter(w, requires_grad=False)
        emb_scheme = "GGUF Q8_0 codes (int8, group 32): exact"
    else:
        from executorch.extension.llm.export.quantize import quantize_model_

        quantize_model_(model, qembedding_config="8w", qembedding_group_size=0)
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
              filter_fn=lambda m, fqn: fqn == "lm_head")
    return {"gguf": gguf_path.name, "linears_from_gguf_codes": replaced, "max_weight_abs_diff_vs_hf": worst,
            "embedding": emb_scheme, "lm_head": "int8 per channel x int8 dynamic per-token activations"}


def _skip_unused_xnnpack_passes() -> None:
    """XNNPACK re-traces every partition through 17 graph passes; 9 rewrite ops this graph never contains (conv,
    batch norm, PReLU, pad, bilinear upsampling, torch SDPA, cat, relu/clamp): skip those in this (export) process
    (~20% less lowering time; the parity tests hold the result to eager)."""
    from executorch.backends.xnnpack import _passes as xp

    pm = xp.XNNPACKPassManager
    if getattr(pm, "_cogenesis_trimmed", False):
        return
    unused = {xp.ConvertToUpsampleBilinear2d, xp.ConvertToSDPAPass, xp.FuseBatchNormPass, xp.DecomposeBatchNorm,
              xp.InsertPadQDQPass, xp.Conv1dUnsqueezePass, xp.PReLUReshapePass, xp.DecomposeConcatenate,
              xp.FuseActivationPass}
    init = pm.__init__

    def trimmed(self, exported_program, passes=None):
        init(self, exported_program, passes)
        if not passes:
            self.passes = [p for p in self.passes if p not in unused]

    pm.__init__, pm._cogenesis_trimmed = trimmed, True


def _export_in_process(hf_dir: Path, out: Path, quant: str, group_size: int, max_seq_len: int,
                       gguf: Path | None = None) -> dict:
    import executorch.kernels.quantized  # noqa: F401  (out variants of the quantized ops, for to_executorch)
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from torch.export import Dim

    t0 = time.time()
    torch.manual_seed(0)
    gguf_facts = None
    model, cfg = _build_module(hf_dir, max_seq_len)
    if quant == "8da4w":
        from executorch.extension.llm.export.quantize import quantize_model_

        quantize_model_(model, qlinear_config="8da4w", qlinear_group_size=group_size, qembedding_config="8w",
                        qembedding_group_size=0)
    elif quant == "8da4w-gguf":
        gguf = gguf or gguf_source(hf_dir)
        if gguf is None:
            raise ValueError(f"--quant 8da4w-gguf needs the GGUF source of {hf_dir} (export from a .gguf or use 8da4w)")
        gguf_facts = _apply_gguf_codes(model, Path(gguf))
    elif quant != "fp32":
        raise ValueError(f"ExecuTorch quant must be one of {QUANTS}, got {quant!r}")
    example = (torch.tensor([[1, 2, 3]], dtype=torch.long), torch.tensor([0], dtype=torch.long))
    seq = Dim("seq", min=1, max=max_seq_len - 1)
    with torch.no_grad():  # fp32: non-strict traces ~5x faster; the torchao paths keep ExecuTorch's strict recipe
        ep = torch.export.export(model, example, dynamic_shapes=({1: seq}, {0: 1}), strict=quant != "fp32")
    t_export = time.time() - t0
    _skip_unused_xnnpack_passes()
    parts = [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()] if quant != "fp32" else [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(ep, partitioner=parts,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True))
    et = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True,
                                                    memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                                                    do_quant_fusion_and_const_prop=quant != "fp32"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        et.write_to_file(f)
    tmp.replace(out)
    names = [getattr(n.target, "__name__", str(n.target)) for n in edge.exported_program().graph_module.graph.nodes
             if n.op == "call_function"]
    delegated = names.count("executorch_call_delegate")
    ops = sorted({x for x in names if x not in ("executorch_call_delegate", "getitem")})
    return {
        "file": out.name,
        "bytes": out.stat().st_size,
        "backend": "xnnpack",
        "quant": quant,
        "scheme": SCHEMES[quant].format(g=group_size),
        "gguf_codes": gguf_facts,
        "group_size": (32 if quant == "8da4w-gguf" else group_size) if quant != "fp32" else None,
        "max_seq_len": max_seq_len,
        "kv_cache": "static in-graph [1, max_seq_len, kv_heads, head_dim] (llama::update_cache, llama::custom_sdpa)",
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, "seq"]},
                   {"name": "input_pos", "dtype": "int64", "shape": [1]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, cfg["vocab_size"]]}],
        "dynamic_seq": [1, max_seq_len - 1],
        "delegate_calls": delegated,
        "non_delegated_ops": ops,
        "runtime_imports": list(RUNTIME_IMPORTS),
        "methods": [plan.name for plan in et.executorch_program.execution_plan],
        "export_seconds": round(time.time() - t0, 1),
        "torch_export_seconds": round(t_export, 1),
    }


def export_pte(hf_dir: str | Path, out: str | Path, quant: str = "8da4w", group_size: int = DEFAULT_GROUP_SIZE,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN, subprocess_: bool = True) -> dict:
    """Write `out` (.pte); returns facts for the manifest. Runs in a subprocess by default (memory, isolation)."""
    _require_executorch()
    if quant not in QUANTS:
        raise ValueError(f"ExecuTorch quant must be one of {QUANTS}, got {quant!r}")
    hf_dir, out = Path(hf_dir), Path(out)
    if not subprocess_:
        return _export_in_process(hf_dir, out, quant, group_size, max_seq_len)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        info_path = Path(f.name)
    try:
        cmd = [sys.executable, "-m", "cogenesis.export.executorch_export", "--hf-dir", str(hf_dir), "--out", str(out),
               "--quant", quant, "--group-size", str(group_size), "--max-seq-len", str(max_seq_len),
               "--info", str(info_path)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if r.returncode != 0 or not out.is_file():
            raise RuntimeError(f"ExecuTorch export failed ({quant}) for {hf_dir}:\n{(r.stderr or r.stdout)[-3000:]}")
        return json.loads(info_path.read_text())
    finally:
        info_path.unlink(missing_ok=True)


def _source_key(hf_dir: Path) -> str:
    h = hashlib.sha256(str(hf_dir.resolve()).encode() + (hf_dir / "config.json").read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
    if (hf_dir / "source.json").is_file():  # the GGUF it came from (its sha256): 8da4w-gguf reads its codes
        h.update((hf_dir / "source.json").read_bytes())
    return h.hexdigest()[:12]


def code_key() -> str:
    """Version of what determines a .pte: the model, quantization and lowering code (not the runner or bundle
    code, so editing those does not force minutes of re-export) and the executorch/torch/torchao versions."""
    import importlib.metadata as md
    import inspect

    h = hashlib.sha256(json.dumps(SCHEMES, sort_keys=True).encode())
    for fn in (_build_module, _apply_gguf_codes, _skip_unused_xnnpack_passes, _export_in_process):
        h.update(inspect.getsource(fn).encode())
    for p in ("executorch", "torch", "torchao"):
        try:
            h.update(f"{p}={md.version(p)}".encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:12]


def cached_pte(hf_dir: str | Path, quant: str = "8da4w", group_size: int = DEFAULT_GROUP_SIZE,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN, export_if_missing: bool = True) -> tuple[Path, dict] | None:
    """(pte path, export facts), exported once per source model, options and code version.
    With export_if_missing=False: None when it is not in the cache yet."""
    from cogenesis.core.paths import cache_dir

    hf_dir = Path(hf_dir)
    d = cache_dir() / "executorch" / f"{_source_key(hf_dir)}-{quant}-g{group_size}-s{max_seq_len}-{code_key()}"
    pte, info = d / "model.pte", d / "export.json"
    if not (pte.is_file() and info.is_file()):
        if not export_if_missing:
            return None
        facts = export_pte(hf_dir, pte, quant, group_size, max_seq_len)
        info.write_text(json.dumps(facts, indent=2))
    return pte, json.loads(info.read_text())


# -- running a .pte from Python -------------------------------------------------------------------------------
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
        import importlib

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


# -- bundle ---------------------------------------------------------------------------------------------------
def verify_pte_bundle(bundle: str | Path, check_hashes: bool = True) -> dict:
    """Verify an ExecuTorch bundle's files (size, sha256) against its manifest; returns the manifest."""
    from cogenesis.runtime.bundle import read_manifest, verify_bundle

    return verify_bundle(bundle, read_manifest(bundle, kinds=("executorch",)), check_hashes=check_hashes)


def load_pte_bundle(bundle: str | Path, threads: int | None = None, verify: bool = True):
    """(PteDecoder, tokenizers.Tokenizer, manifest) for a verified ExecuTorch bundle."""
    from tokenizers import Tokenizer

    root = Path(bundle)
    m = verify_pte_bundle(root, check_hashes=verify)
    et = m["executorch"]
    dec = PteDecoder(root / et["file"], threads, et.get("max_seq_len"), et.get("method", "forward"))
    return dec, Tokenizer.from_file(str(root / "tokenizer.json")), m


def export_executorch_bundle(model: str | None, out: str | Path, quant: str = "8da4w",
                             target: str = "android-arm64", force: bool = False, new_tokens: int = 64,
                             prompts: list[str] | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                             max_seq_len: int = DEFAULT_MAX_SEQ_LEN, progress: bool = True) -> Path:
    """`cogenesis export --format executorch`: a verified bundle with model.pte and a parity report."""
    import shutil

    from cogenesis.runtime.bundle import BundleError, write_bundle

    from . import report
    from .onnx_export import model_facts
    from .pipeline import _chat_template, _special_tokens, _tool_versions, resolve_source
    from .targets import budget_check, get_target

    src = resolve_source(model)
    if quant in ("int4", "auto"):  # the device profiles' default: the faithful int4 for GGUF sources
        quant = "8da4w-gguf" if gguf_source(src.hf_dir) else "8da4w"
    if quant not in QUANTS:
        raise ValueError(f"--quant for --format executorch must be one of {QUANTS} (or int4 = the best of them "
                         f"for this source), got {quant!r}")
    tgt = get_target(target)
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it, or choose another --out")
    t0 = time.time()
    if progress:
        print(f"[executorch] exporting {src.name} ({quant}); cached after the first time", file=sys.stderr)
    pte, facts = cached_pte(src.hf_dir, quant, group_size, max_seq_len)
    mfacts = model_facts(src.hf_dir)

    def fill(tmp: Path) -> dict:
        shutil.copy(pte, tmp / "model.pte")
        shutil.copy(src.hf_dir / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "chat_template.jinja").write_text(_chat_template(src.hf_dir), encoding="utf-8")
        gen_path = src.hf_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        special = _special_tokens(src.hf_dir, gen)
        gen["eos_token_id"] = special["eos_token_ids"]
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
        if progress:
            print("[executorch] parity vs transformers eager", file=sys.stderr)
        runs = report.reference_runs(src.hf_dir, prompts or report.PARITY_PROMPTS, new_tokens)
        parity = pte_parity(PteDecoder(tmp / "model.pte", threads=2, max_seq_len=facts["max_seq_len"]), runs)
        rep = {
            "quant": {"scheme": facts["scheme"], "quant": quant, "group_size": facts["group_size"]},
            "parity": parity,
            "budget": budget_check(tgt, facts["bytes"], {**mfacts, "num_layers": mfacts["num_layers"]}),
            "target": tgt.to_dict(),
            "executorch": facts,
            "export_seconds": round(time.time() - t0, 1),
        }
        (tmp / "export_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
        source = {"name": src.name, "hf_dir": str(src.hf_dir)}
        if src.gguf is not None:  # as the ONNX manifest records it
            from cogenesis.runtime.bundle import sha256_file

            source.update(gguf=src.gguf.name, gguf_sha256=sha256_file(src.gguf))
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {**mfacts, "name": src.name, "source": source},
            "special_tokens": special,
            "quant": {"scheme": f"executorch-{quant}", "group_size": facts["group_size"], "detail": facts["scheme"]},
            "target": tgt.name,
            "executorch": {k: facts[k] for k in ("backend", "quant", "group_size", "max_seq_len", "kv_cache",
                                                 "inputs", "outputs", "dynamic_seq", "runtime_imports")}
            | {"file": "model.pte", "method": "forward", "methods": facts.get("methods", ["forward"]),
               "exporter": "cogenesis EtLlama + torch.export + XNNPACK"},
            "tokenizer": "tokenizer.json",
            "chat_template": "chat_template.jinja",
            "generation_config": "generation_config.json",
            "report": "export_report.json",
            "tools": _tool_versions() | _et_versions(),
        }

    return write_bundle(out, fill, force=force)


def _et_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("executorch", "torchao"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="export an HF Llama folder to an ExecuTorch .pte (internal)")
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quant", default="8da4w", choices=QUANTS)
    ap.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE)
    ap.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN)
    ap.add_argument("--info", default=None, help="write the export facts here (JSON)")
    a = ap.parse_args(argv)
    facts = _export_in_process(Path(a.hf_dir), Path(a.out), a.quant, a.group_size, a.max_seq_len)
    if a.info:
        Path(a.info).write_text(json.dumps(facts, indent=2))
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


