"""`finetune`: one run from a base model and records to a merged HF folder, step by step."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

from cogenesis.data.records import TaskRecord, load_records
from cogenesis.finetune.config import FinetuneResult, TrainConfig
from cogenesis.finetune.examples import Example, build_examples
from cogenesis.finetune.loop import TrainLoop
from cogenesis.finetune.saving import _adapter_state, _check_out, _resolve_base, _save


def _load_records(data: str | Path | Sequence[TaskRecord]) -> list[TaskRecord]:
    return load_records(data) if isinstance(data, (str, Path)) else list(data)


def _read_sketches(sketches: dict[str, str | Sequence[str]] | str | Path | None):
    """The sketches mapping, read from its JSON file when given a path."""
    if isinstance(sketches, (str, Path)):
        sketches = json.loads(Path(sketches).read_text(encoding="utf-8"))
        if not isinstance(sketches, dict):
            raise ValueError("sketches file must be a JSON object tid -> outline")
    return sketches


def _training_records(data: str | Path | Sequence[TaskRecord] | None) -> list[TaskRecord]:
    if data is None:
        from cogenesis.data.records import load_sample

        data = load_sample()
    return _load_records(data)


def _device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (this torch is "
                           f"{torch.__version__}); use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    return torch.device(device)


def _seed_and_device(threads: int | None, seed: int, device: str):
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    return _device(device)


def _lora_targets(model) -> list[str]:
    """Names of the linear layers inside the transformer blocks (never the embeddings or the LM head)."""
    import torch

    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names) or ["q_proj", "k_proj", "v_proj", "o_proj"]


def _load_model(base_dir: Path, dev, cfg: TrainConfig):
    """The base model on ``dev`` in fp32, wrapped in LoRA adapters for ``lora``, in train mode; its LoRA targets."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(dev)
    model.config.use_cache = False
    targets = list(cfg.lora_targets or _lora_targets(model))
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model, targets


def _finish_model(model, method: str):
    """The trained model on the CPU, ready to save (LoRA merged); the adapter alone (LoRA) or None."""
    model.eval()
    adapter = None
    if method == "lora":
        adapter = _adapter_state(model)
        model = model.merge_and_unload()
    model = model.to("cpu")
    model.config.use_cache = True
    return model, adapter


def _run_info(cfg: TrainConfig, base_dir: Path, records: list[TaskRecord], examples: list[Example],
              result: FinetuneResult, targets: list[str], trainable: int) -> dict:
    """What ``finetune.json`` records about the run."""
    import torch

    return {
        "base": str(base_dir),
        "regime": cfg.regime,
        "method": cfg.method,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "max_len": cfg.max_len,
        "seed": cfg.seed,
        "lora": {"r": cfg.lora_r, "alpha": cfg.alpha, "dropout": cfg.lora_dropout,
                 "targets": targets} if cfg.method == "lora" else None,
        "trainable_params": trainable,
        "examples": len(examples),
        "records": len(records),
        "skipped": result.skipped,
        "reply_cut": sum(e.reply_cut for e in examples),
        "sources": sorted({r.source for r in records}),
        "sketch_source": result.sketch_source,
        "loss_first": result.first_loss,
        "loss_last": result.last_loss,
        "eval": result.eval_losses,
        "device": result.device,
        "torch": torch.__version__,
        "loss_mask": "prompt tokens labelled -100; loss on the assistant reply (and its end token) only",
    }


def _train(cfg: TrainConfig, out: Path, base_dir: Path, records: list[TaskRecord], sketches, eval_data,
           dev, force: bool) -> FinetuneResult:
    """Tokenize, train, save: the part of `finetune` after its arguments are checked."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    examples, skipped, sketch_source = build_examples(tok, records, cfg.regime, cfg.max_len, sketches)
    if not examples:
        reasons = "; ".join(f"{t}: {w}" for t, w in list(skipped.items())[:3])
        raise ValueError(f"no usable training example among {len(records)} records ({reasons})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_examples: list[Example] = []
    if eval_data is not None:
        eval_examples = build_examples(tok, _load_records(eval_data), cfg.regime, cfg.max_len, sketches)[0]
    model, targets = _load_model(base_dir, dev, cfg)
    loop = TrainLoop(model, dev, pad_id, cfg, eval_examples)
    trainable = sum(p.numel() for p in loop.params)
    log = loop.run(examples)
    model, adapter = _finish_model(loop.model, cfg.method)
    result = FinetuneResult(out, cfg.regime, cfg.method, cfg.steps, [e["loss"] for e in log], len(examples),
                            skipped, sketch_source, eval_losses=loop.evals, device=str(dev))
    info = _run_info(cfg, base_dir, records, examples, result, targets, trainable)
    _save(model, tok, base_dir, out, info, log, force, adapter)
    return result


def finetune(
    base: str | Path | None = None,
    data: str | Path | Sequence[TaskRecord] | None = None,
    out: str | Path = "artifacts/finetuned",
    regime: str = "with_context",
    method: str = "lora",
    steps: int = 200,
    lr: float | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    max_len: int = 1024,
    lora_r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_targets: Sequence[str] | None = None,
    warmup_steps: int | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    sketches: dict[str, str | Sequence[str]] | str | Path | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
    device: str = "auto",
    eval_data: str | Path | Sequence[TaskRecord] | None = None,
    eval_every: int | None = None,
) -> FinetuneResult:
    """Fine-tune ``base`` (HF folder, .gguf, or None for the default model) on ``data`` in ``regime``.

    ``data``: records or a file `load_records` reads (None: the shipped sample). ``sketches``: tid -> outline
    (or a JSON file of that mapping) for ``with_sketch``. ``lr`` defaults to 2e-4 (LoRA) / 2e-5 (full); the
    schedule is linear warmup (default 10 % of the steps) then cosine decay. Writes a merged HF folder at ``out``
    (LoRA: also its adapter alone, in fp16, under ``out/adapter`` — small enough to copy off a GPU machine and
    merge elsewhere with `merge_adapter`). ``device``: auto (CUDA when present, bf16 autocast) | cpu | cuda.
    ``eval_data``: held-out records whose reply-token loss is measured before training, every ``eval_every``
    steps and at the end.
    """
    cfg = TrainConfig(regime=regime, method=method, steps=steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                      max_len=max_len, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      lora_targets=lora_targets, warmup_steps=warmup_steps, weight_decay=weight_decay,
                      max_grad_norm=max_grad_norm, seed=seed, eval_every=eval_every, progress=progress)
    out = Path(out)
    _check_out(out, force)
    sketches = _read_sketches(sketches)
    t0 = time.time()
    base_dir = _resolve_base(base)
    records = _training_records(data)
    dev = _seed_and_device(threads, seed, device)
    result = _train(cfg, out, base_dir, records, sketches, eval_data, dev, force)
    result.seconds = round(time.time() - t0, 1)
    return result
