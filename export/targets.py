"""Named device profiles: what each target device gets (format, quantization, threads, context, memory budget)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    name: str
    arch: str
    format: str  # "onnx" | "executorch" | "ort-genai"
    quant: str  # default quantization
    threads: int
    max_context: int  # tokens the runtime should allow (KV cache budget)
    memory_budget_mb: int  # what the model may use on this device (weights + KV cache)
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


TARGETS = {
    t.name: t
    for t in [
        Target("laptop-x86_64", "x86_64", "onnx", "int4", 4, 8192, 4096, "any x86-64 laptop/desktop, AVX2"),
        Target("raspberry-pi-4", "aarch64", "onnx", "int4", 4, 2048, 1024, "Cortex-A72, 4 GB RAM shared with the OS"),
        Target("raspberry-pi-5", "aarch64", "onnx", "int4", 4, 4096, 2048, "Cortex-A76, 8 GB RAM"),
        Target("android-arm64", "aarch64", "onnx", "int4", 4, 2048, 768, "mid-range phone; onnxruntime-web/Android"),
    ]
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)} (see `cogenesis targets`)")
    return TARGETS[name]


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int = 4) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * tokens * dtype_bytes


def budget_check(target: Target, weights_bytes: int, model: dict) -> dict:
    """Does weights + KV cache at the target's max context fit the target's memory budget?"""
    kv = kv_cache_bytes(model["num_layers"], model["num_kv_heads"], model["head_dim"], target.max_context)
    total = weights_bytes + kv
    return {
        "weights_mb": round(weights_bytes / 2**20, 1),
        "kv_cache_mb_at_max_context": round(kv / 2**20, 1),
        "total_mb": round(total / 2**20, 1),
        "budget_mb": target.memory_budget_mb,
        "fits": total <= target.memory_budget_mb * 2**20,
    }
