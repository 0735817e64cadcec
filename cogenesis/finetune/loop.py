"""The training loop: batches, the reply-token loss, warmup + cosine schedule, held-out evaluation."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from cogenesis.finetune.config import TrainConfig
from cogenesis.finetune.examples import Example


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


def lr_factor(step: int, warm: int, steps: int) -> float:
    """The learning rate at ``step`` as a fraction of the peak: linear warmup, then cosine down to 10 %."""
    if step < warm:
        return (step + 1) / (warm + 1)
    t = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))  # cosine down to 10 %


@dataclass
class TrainLoop:
    """Trains ``model`` (its trainable parameters, AdamW) on examples; evaluates on ``eval_examples``."""

    model: object
    dev: object
    pad_id: int
    cfg: TrainConfig
    eval_examples: list[Example] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step", "loss", "tokens"} per evaluation

    def __post_init__(self) -> None:
        import torch

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch_loss(self, batch: list[Example]):
        """Summed cross-entropy over the reply tokens of ``batch``, and how many there are."""
        import torch

        ids, mask, labels = (t.to(self.dev) for t in _collate(batch, self.pad_id))
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda"):
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        return loss, int((tgt != -100).sum())

    def evaluate(self, step: int) -> None:
        import torch

        if not self.eval_examples:
            return
        self.model.eval()
        total, n = 0.0, 0
        bs = self.cfg.batch_size
        with torch.no_grad():
            for i in range(0, len(self.eval_examples), bs):
                loss, k = self.batch_loss(self.eval_examples[i : i + bs])
                total, n = total + float(loss), n + k
        self.evals.append({"step": step, "loss": round(total / max(1, n), 5), "tokens": n})
        self.model.train()

    def step(self, step: int, batches) -> tuple[dict, float]:
        """One optimizer step over ``grad_accum`` batches: its log entry and mean loss."""
        import torch

        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.warm, cfg.steps)
        loss_sum, n_tok = 0.0, 0
        for _ in range(cfg.grad_accum):
            loss, k = self.batch_loss(next(batches))
            (loss / max(1, k) / cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
            n_tok += k
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            self.evaluate(step + 1)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        mean = loss_sum / max(1, n_tok)
        return {"step": step + 1, "loss": round(mean, 5), "tokens": n_tok, "lr": self.opt.param_groups[0]["lr"],
                "grad_norm": round(gnorm, 4)}, mean

    def run(self, examples: list[Example]) -> list[dict]:
        """Evaluate, train ``cfg.steps`` steps, evaluate again; the log (one entry per step)."""
        from tqdm import tqdm

        cfg = self.cfg
        log: list[dict] = []
        self.evaluate(0)
        bar = tqdm(total=cfg.steps, desc=f"finetune {cfg.method} {cfg.regime}", unit="step",
                   disable=not cfg.progress)
        batches = _batches(examples, cfg.batch_size, cfg.steps * cfg.grad_accum, cfg.seed)
        for step in range(cfg.steps):
            entry, mean = self.step(step, batches)
            log.append(entry)
            bar.set_postfix(loss=f"{mean:.3f}")
            bar.update()
        bar.close()
        self.evaluate(cfg.steps)
        return log
