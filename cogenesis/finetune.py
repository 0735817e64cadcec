"""Supervised fine-tuning of the on-device model in the paper's three regimes (`cogenesis finetune`).

Regimes (CoGenesis, ACL 2024, Sec. 4): what the prompt holds while the loss is taken on the reference text.

* ``with_context``: the user's profile + past writings + the task (`with_context`), what the on-device model sees.
* ``without_context``: the task alone (`without_context`), what a cloud model sees.
* ``with_sketch``: context + task + an outline of the answer (`with_sketch`), the sketch-based co-generation
  input. Outlines come from ``sketches`` (tid -> outline text or points, e.g. a cloud model's sketches); without
  them one is derived from the reference's sentences (their first words), which the log records.

Each example is the chat template applied to ``prompt messages + assistant reference``; the loss is taken only
on the reply (prompt tokens are labelled -100, found by character offsets, so it holds for any template).
Too-long examples first get a smaller context budget, then a shortened reply.

Methods: ``lora`` (peft; the adapters are merged into the weights before saving) or ``full``. The output is a
normal Hugging Face folder (written to a temporary sibling and renamed into place) that ``cogenesis export
--model OUT`` turns into a bundle, plus ``training_log.json`` (loss per step) and ``finetune.json``.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cogenesis.data.prompts import (
    DEFAULT_CONTEXT_TOKENS,
    parse_outline,
    with_context,
    with_sketch,
    without_context,
)
from cogenesis.data.records import TaskRecord, load_records

REGIMES = ("with_context", "without_context", "with_sketch")
METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
MIN_REPLY_TOKENS = 32  # an example keeps at least this much of its reply when it has to be cut


@dataclass
class Example:
    """One tokenized training example: ids, labels (-100 on the prompt) and where it came from."""

    tid: str
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    reply_tokens: int
    context_tokens: int  # the context budget finally used (approx. tokens)
    reply_cut: bool = False


@dataclass
class FinetuneResult:
    out: Path
    regime: str
    method: str
    steps: int
    losses: list[float]
    examples: int
    skipped: dict[str, str] = field(default_factory=dict)  # tid -> why
    sketch_source: str | None = None
    seconds: float = 0.0
    eval_losses: list[dict] = field(default_factory=list)  # {"step", "loss", "tokens"} on held-out records
    device: str = "cpu"

    @property
    def first_loss(self) -> float:
        return _mean(self.losses[: max(1, len(self.losses) // 4)])

    @property
    def last_loss(self) -> float:
        return _mean(self.losses[-max(1, len(self.losses) // 4) :])


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ---- outlines ----------------------------------------------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def derive_outline(reference: str, max_points: int = 12, words: int = 10) -> list[str]:
    """A simple outline of a text: the first ``words`` words of each sentence (at most ``max_points``).

    Stands in for the cloud's sketch when none is given; it follows the reference's own structure, so a model
    trained on it learns to expand an outline, not to plan one.
    """
    sents = [s.strip() for para in reference.split("\n") for s in _SENT.split(para) if s.strip()]
    sents = [s for s in sents if len(s.split()) >= 3] or sents
    if len(sents) > max_points:  # keep the outline's spread over the whole text
        idx = [round(i * (len(sents) - 1) / (max_points - 1)) for i in range(max_points)]
        sents = [sents[i] for i in sorted(set(idx))]
    out = []
    for s in sents:
        ws = s.split()
        out.append(" ".join(ws[:words]).rstrip(",;:") + (" ..." if len(ws) > words else ""))
    return out


def _as_points(sketch: str | Sequence[str]) -> list[str]:
    return parse_outline(sketch) if isinstance(sketch, str) else [str(p) for p in sketch if str(p).strip()]


# ---- examples ----------------------------------------------------------------------------------------------


def prompt_messages(record: TaskRecord, regime: str, sketch: Sequence[str] | None = None,
                    context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> list[dict]:
    """The prompt messages of ``record`` in ``regime`` (the same builders the runtime uses)."""
    if regime == "with_context":
        return with_context(record, max_tokens=context_tokens)
    if regime == "without_context":
        return without_context(record)
    if regime == "with_sketch":
        if not sketch:
            raise ValueError(f"{record.tid}: regime with_sketch needs an outline")
        return with_sketch(record, None, list(sketch), max_tokens=context_tokens)
    raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")


def _render(tokenizer, messages: list[dict], reply: str | None) -> str:
    if reply is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)


def build_example(tokenizer, record: TaskRecord, regime: str, max_len: int,
                  sketch: Sequence[str] | None = None) -> Example:
    """Tokenize one record: the chat template over prompt + reference, labels only on the reply.

    Raises ValueError when even an empty context leaves no room for ``MIN_REPLY_TOKENS`` of the reply.
    """
    if not record.reference.strip():
        raise ValueError("no reference text to learn from")

    def tokenize(budget: int) -> tuple[list[int], int]:
        msgs = prompt_messages(record, regime, sketch, budget)
        prompt = _render(tokenizer, msgs, None)
        full = _render(tokenizer, msgs, record.reference.strip())
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the prompt as a prefix of prompt + reply")
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), sum(1 for a, _ in enc["offset_mapping"] if a < len(prompt))

    budget = DEFAULT_CONTEXT_TOKENS
    ids, n_prompt = tokenize(budget)
    # keep up to a third of max_len for the reply, taking the room from the context (bisection on its budget)
    want = min(len(ids) - n_prompt, max(MIN_REPLY_TOKENS, max_len // 3))
    if max_len - n_prompt < want and regime != "without_context":
        lo, hi, best = 0, budget, None
        while hi - lo > 8:
            mid = (lo + hi) // 2
            m_ids, m_prompt = tokenize(mid)
            if max_len - m_prompt >= want:
                lo, best = mid, (mid, m_ids, m_prompt)
            else:
                hi = mid
        budget, ids, n_prompt = best if best is not None else (0, *tokenize(0))
    room, n_reply = max_len - n_prompt, len(ids) - n_prompt
    if room < min(n_reply, MIN_REPLY_TOKENS):
        raise ValueError(f"prompt is {n_prompt} tokens: no room for the reply within max_len={max_len}")
    cut = n_reply > room
    ids = ids[:max_len]
    labels = [-100] * n_prompt + ids[n_prompt:]
    return Example(record.tid, ids, labels, n_prompt, len(ids) - n_prompt, budget, cut)


def build_examples(tokenizer, records: Sequence[TaskRecord], regime: str, max_len: int,
                   sketches: dict[str, str | Sequence[str]] | None = None
                   ) -> tuple[list[Example], dict[str, str], str | None]:
    """Examples for every usable record, the skipped tids with the reason, and where outlines came from."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")
    out, skipped = [], {}
    source = None
    if regime == "with_sketch":
        source = "given" if sketches else "derived from the reference's sentences (no sketches given)"
        if not sketches:
            warnings.warn("with_sketch: no sketches given; deriving outlines from the reference texts' sentences",
                          stacklevel=3)
    for r in records:
        sketch = None
        if regime == "with_sketch":
            if sketches:
                if r.tid not in sketches:
                    skipped[r.tid] = "no sketch for this tid"
                    continue
                sketch = _as_points(sketches[r.tid])
            else:
                sketch = derive_outline(r.reference)
        try:
            out.append(build_example(tokenizer, r, regime, max_len, sketch))
        except ValueError as e:
            skipped[r.tid] = str(e)
    return out, skipped, source


def _batches(examples: list[Example], batch_size: int, steps: int, seed: int):
    """``steps`` batches, cycling over shuffled epochs."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        yield batch


def _collate(batch: list[Example], pad_id: int):
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        mask[i, :k] = 1
    return ids, mask, labels


# ---- training ----------------------------------------------------------------------------------------------


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


def _load_records(data: str | Path | Sequence[TaskRecord]) -> list[TaskRecord]:
    return load_records(data) if isinstance(data, (str, Path)) else list(data)


def _lora_targets(model) -> list[str]:
    """Names of the linear layers inside the transformer blocks (never the embeddings or the LM head)."""
    import torch

    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names) or ["q_proj", "k_proj", "v_proj", "o_proj"]


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
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}; got {regime!r}")
    if steps < 1 or batch_size < 1 or grad_accum < 1:
        raise ValueError("steps, batch_size and grad_accum must be >= 1")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it, or choose another --out")
    if isinstance(sketches, (str, Path)):
        sketches = json.loads(Path(sketches).read_text(encoding="utf-8"))
        if not isinstance(sketches, dict):
            raise ValueError("sketches file must be a JSON object tid -> outline")
    t0 = time.time()
    base_dir = _resolve_base(base)
    if data is None:
        from cogenesis.data.records import load_sample

        data = load_sample()
    records = _load_records(data)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)

    dev = _device(device)
    tok = AutoTokenizer.from_pretrained(base_dir)
    examples, skipped, sketch_source = build_examples(tok, records, regime, max_len, sketches)
    if not examples:
        reasons = "; ".join(f"{t}: {w}" for t, w in list(skipped.items())[:3])
        raise ValueError(f"no usable training example among {len(records)} records ({reasons})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_examples: list[Example] = []
    if eval_data is not None:
        eval_examples = build_examples(tok, _load_records(eval_data), regime, max_len, sketches)[0]

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(dev)
    model.config.use_cache = False
    targets = list(lora_targets or _lora_targets(model))
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
                         target_modules=targets, bias="none",
                         task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    lr = lr if lr is not None else DEFAULT_LR[method]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = warmup_steps if warmup_steps is not None else max(1, steps // 10) if steps >= 10 else 0

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))  # cosine down to 10 %

    def batch_loss(batch: list[Example]):
        ids, mask, labels = (t.to(dev) for t in _collate(batch, pad_id))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        return loss, int((tgt != -100).sum())

    evals: list[dict] = []

    def evaluate(step: int) -> None:
        if not eval_examples:
            return
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(eval_examples), batch_size):
                loss, k = batch_loss(eval_examples[i : i + batch_size])
                total, n = total + float(loss), n + k
        evals.append({"step": step, "loss": round(total / max(1, n), 5), "tokens": n})
        model.train()

    log: list[dict] = []
    evaluate(0)
    bar = tqdm(total=steps, desc=f"finetune {method} {regime}", unit="step", disable=not progress)
    batches = _batches(examples, batch_size, steps * grad_accum, seed)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * lr_at(step)
        loss_sum, n_tok = 0.0, 0
        for _ in range(grad_accum):
            loss, k = batch_loss(next(batches))
            (loss / max(1, k) / grad_accum).backward()
            loss_sum += float(loss.detach())
            n_tok += k
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            evaluate(step + 1)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss_sum / max(1, n_tok)
        log.append({"step": step + 1, "loss": round(mean, 5), "tokens": n_tok, "lr": opt.param_groups[0]["lr"],
                    "grad_norm": round(gnorm, 4)})
        bar.set_postfix(loss=f"{mean:.3f}")
        bar.update()
    bar.close()
    evaluate(steps)

    model.eval()
    adapter = None
    if method == "lora":
        adapter = _adapter_state(model)
        model = model.merge_and_unload()
    model = model.to("cpu")
    model.config.use_cache = True
    losses = [e["loss"] for e in log]
    result = FinetuneResult(out, regime, method, steps, losses, len(examples), skipped, sketch_source,
                            eval_losses=evals, device=str(dev))
    info = {
        "base": str(base_dir),
        "regime": regime,
        "method": method,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "max_len": max_len,
        "seed": seed,
        "lora": {"r": lora_r, "alpha": lora_alpha or 2 * lora_r, "dropout": lora_dropout,
                 "targets": targets} if method == "lora" else None,
        "trainable_params": trainable,
        "examples": len(examples),
        "records": len(records),
        "skipped": skipped,
        "reply_cut": sum(e.reply_cut for e in examples),
        "sources": sorted({r.source for r in records}),
        "sketch_source": sketch_source,
        "loss_first": result.first_loss,
        "loss_last": result.last_loss,
        "eval": evals,
        "device": str(dev),
        "torch": torch.__version__,
        "loss_mask": "prompt tokens labelled -100; loss on the assistant reply (and its end token) only",
    }
    _save(model, tok, base_dir, out, info, log, force, adapter)
    result.seconds = round(time.time() - t0, 1)
    return result


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
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it, or choose another --out")
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


def _save(model, tok, base_dir: Path, out: Path, info: dict, log: list[dict], force: bool,
          adapter: tuple[dict, object] | None = None) -> None:
    """Write the HF folder to a temporary sibling, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if adapter is not None:
            from safetensors.torch import save_file

            state, cfg = adapter
            cfg.save_pretrained(tmp / "adapter")
            save_file(state, str(tmp / "adapter" / "adapter_model.safetensors"))
            (tmp / "adapter" / "training_log.json").write_text(json.dumps(log, indent=1))
            (tmp / "adapter" / "finetune.json").write_text(json.dumps(info, indent=2, default=str))
        tok.save_pretrained(tmp)
        for name in ("chat_template.jinja", "generation_config.json"):
            if (base_dir / name).is_file() and not (tmp / name).is_file():
                shutil.copy(base_dir / name, tmp / name)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        rope = cfg.get("rope_parameters") or {}
        if "rope_theta" in rope and "rope_theta" not in cfg:  # see export.default_model.gguf_to_hf
            cfg["rope_theta"] = rope["rope_theta"]
        cfg_path.write_text(json.dumps(cfg, indent=2))
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2, default=str))
        if out.exists() and not force:
            raise FileExistsError(f"{out} appeared while training; pass force=True to replace it")
        from cogenesis.runtime.bundle import replace_dir

        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def result_dict(r: FinetuneResult) -> dict:
    """JSON-friendly summary of a run (CLI output)."""
    d = asdict(r)
    d["out"] = str(r.out)
    d["first_loss"], d["last_loss"] = r.first_loss, r.last_loss
    d.pop("losses")
    return d


# ---- command line ------------------------------------------------------------------------------------------


def add_finetune_parser(sub) -> None:
    """`cogenesis finetune ...` (register with ``add_finetune_parser(subparsers)``)."""
    p = sub.add_parser("finetune", help="fine-tune the on-device model (LoRA or full) in a CoGenesis regime")
    p.add_argument("--base", default=None, help="HF folder or .gguf to start from (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=None, help="training records (authors' JSON, our JSONL...; default: the sample)")
    p.add_argument("--out", required=True, help="folder for the merged HF model (then: cogenesis export --model OUT)")
    p.add_argument("--regime", choices=REGIMES, default="with_context", help="what the prompt holds (default with_context)")
    p.add_argument("--method", choices=METHODS, default="lora", help="lora (merged before saving) or full")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 lora, 2e-5 full)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per example (context shrinks first)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=None, help="default 2 x r")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--sketches", default=None, help="JSON file tid -> outline for --regime with_sketch "
                   "(default: outlines derived from the references' sentences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA (bf16 autocast) when torch sees a GPU, else CPU")
    p.add_argument("--eval-data", default=None, help="held-out records: reply-token loss before/after training")
    p.add_argument("--eval-every", type=int, default=None, help="also evaluate every N steps")
    p.add_argument("--merge-adapter", default=None, metavar="ADAPTER_DIR",
                   help="no training: merge this LoRA adapter folder (<run>/adapter) into --base and write --out")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(a) -> int:
    try:
        if a.merge_adapter:
            out = merge_adapter(a.base, a.merge_adapter, a.out, force=a.force)
            print(f"merged {a.merge_adapter} -> {out}; next: cogenesis export --model {out} "
                  f"--out artifacts/bundles/{out.name}")
            return 0
        r = finetune(a.base, a.data, a.out, regime=a.regime, method=a.method, steps=a.steps, lr=a.lr,
                     batch_size=a.batch_size, grad_accum=a.grad_accum, max_len=a.max_len, lora_r=a.lora_r,
                     lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout, sketches=a.sketches, seed=a.seed,
                     threads=a.threads, force=a.force, device=a.device, eval_data=a.eval_data,
                     eval_every=a.eval_every)
    except (FileExistsError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result_dict(r), indent=2))
    print(f"loss {r.first_loss:.3f} -> {r.last_loss:.3f} (first / last quarter of the steps); next: "
          f"cogenesis export --model {r.out} --out artifacts/bundles/{r.out.name}")
    return 0


def cloud_sketches(records: Sequence[TaskRecord], client, out: str | Path | None = None,
                   **sketch_kw) -> dict[str, list[str]]:
    """Outlines for ``with_sketch`` training from a cloud model, as CoGenesis gets them at run time: each
    instruction is sanitized on-device first and only that goes out (through ``client``'s guard).

    ``client``: a `cogenesis.cloud_bridge.client.CloudClient`. Records whose request fails are left out.
    ``out``: also write the mapping as JSON (for ``--sketches``).
    """
    from cogenesis.cloud_bridge.guard import sanitize_instruction

    result: dict[str, list[str]] = {}
    for r in records:
        text = sanitize_instruction(r.instruction, r.private_context()).text
        try:
            result[r.tid] = client.sketch(text, **sketch_kw)
        except Exception as e:  # noqa: BLE001 - one failed outline must not lose the others
            warnings.warn(f"{r.tid}: no sketch ({type(e).__name__}: {e})", stacklevel=2)
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result
