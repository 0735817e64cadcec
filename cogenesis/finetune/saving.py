"""The base model to start from, and the output: the merged HF folder (+ the LoRA adapter alone), written to a
temporary sibling and renamed into place; `merge_adapter` merges an adapter made elsewhere."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def _resolve_base(base: str | Path | None) -> Path:
    if base in (None, "", "default"):
        from cogenesis.export.default_model import default_model

        return default_model()[1]
    p = Path(base)
    if p.suffix == ".gguf":
        from cogenesis.export.default_model import gguf_to_hf

        return gguf_to_hf(p)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {base!r}: not a local Hugging Face folder (no config.json). Model hub ids are not "
            "fetched: download the model elsewhere and pass its folder, or omit it for SmolLM2-135M-Instruct.")
    return p


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it, or choose another --out")


def _adapter_state(model) -> tuple[dict, object]:
    """The LoRA weights alone (fp16, a few MB) and their peft config, taken before merging."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, model.peft_config["default"]


def merge_adapter(base: str | Path | None, adapter: str | Path, out: str | Path, force: bool = False) -> Path:
    """Merge a LoRA adapter folder (``out/adapter`` of a run, e.g. one made on a GPU machine) into ``base``
    and write the merged HF folder at ``out`` for `cogenesis export`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json; pass the adapter folder of a LoRA run "
                                "(<finetune --out>/adapter)")
    _check_out(out, force)
    base_dir = _resolve_base(base)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.config.use_cache = True
    info_path = adapter / "finetune.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["merged_from_adapter"] = str(adapter)
    log_path = adapter / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else []
    _save(model, tok, base_dir, out, info, log, force)
    return out


def _write_adapter(folder: Path, adapter: tuple[dict, object], info: dict, log: list[dict]) -> None:
    from safetensors.torch import save_file

    state, cfg = adapter
    cfg.save_pretrained(folder)
    save_file(state, str(folder / "adapter_model.safetensors"))
    (folder / "training_log.json").write_text(json.dumps(log, indent=1))
    (folder / "finetune.json").write_text(json.dumps(info, indent=2, default=str))


def _complete_hf_folder(tmp: Path, base_dir: Path) -> None:
    """Copy the base's chat template / generation config when missing; lift rope_theta to the config's top."""
    for name in ("chat_template.jinja", "generation_config.json"):
        if (base_dir / name).is_file() and not (tmp / name).is_file():
            shutil.copy(base_dir / name, tmp / name)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:  # see export.default_model.gguf_to_hf
        cfg["rope_theta"] = rope["rope_theta"]
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _save(model, tok, base_dir: Path, out: Path, info: dict, log: list[dict], force: bool,
          adapter: tuple[dict, object] | None = None) -> None:
    """Write the HF folder to a temporary sibling, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if adapter is not None:
            _write_adapter(tmp / "adapter", adapter, info, log)
        tok.save_pretrained(tmp)
        _complete_hf_folder(tmp, base_dir)
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2, default=str))
        if out.exists() and not force:
            raise FileExistsError(f"{out} appeared while training; pass force=True to replace it")
        from cogenesis.runtime.bundle import replace_dir

        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
