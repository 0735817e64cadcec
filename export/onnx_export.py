"""HF folder -> fp32 ONNX decoder with KV cache, via onnxruntime-genai's model builder.

Why the builder and not optimum: it is maintained by the onnxruntime team, emits the fused CPU graph
(GroupQueryAttention with rotary, SkipSimplifiedLayerNorm, fused qkv; ~340 nodes vs ~3100 for optimum's
export of the same model, measured 1.1x faster at fp32 and the base that makes int4 fast), ties the embedding to
lm_head instead of storing it twice, and uses the same input/output names (`input_ids`, `attention_mask`,
`past_key_values.N.key`, `present.N.key`). optimum-onnx 0.1.0 also pins transformers<4.58, which cannot read the
GGUF through the path we use. The parity tests (greedy tokens identical to PyTorch eager) hold the choice to account.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx

from .graph import add_logits_to_keep


def run_builder(hf_dir: Path, out_dir: Path, precision: str = "fp32", extra: list[str] | None = None) -> Path:
    """Run the builder in a subprocess (it holds the whole model in memory; a subprocess gives it all back)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cogenesis.export.builder_shim", "-m", hf_dir.name, "-i", str(hf_dir),
           "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(out_dir / ".builder-cache")]
    if extra:
        cmd += ["--extra_options", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not (out_dir / "model.onnx").is_file():
        tail = (r.stderr or r.stdout)[-2000:]
        raise RuntimeError(f"onnxruntime-genai model builder failed for {hf_dir}:\n{tail}")
    return out_dir / "model.onnx"


def model_facts(hf_dir: Path) -> dict:
    cfg = json.loads((hf_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    return {
        "architecture": cfg.get("model_type", "?"),
        "hf_architectures": cfg.get("architectures", []),
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
    }


def export_fp32(hf_dir: Path, work: Path) -> onnx.ModelProto:
    """The fp32 graph with our `num_logits_to_keep` input, loaded in memory (weights included)."""
    path = run_builder(hf_dir, work / "builder-fp32")
    model = onnx.load(str(path))
    add_logits_to_keep(model, "lm_head.MatMul.weight")
    return model
