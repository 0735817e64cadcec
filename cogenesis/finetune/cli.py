"""`cogenesis finetune ...`: the parser (`add_finetune_parser`) and the command."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from cogenesis.finetune.config import METHODS, FinetuneResult
from cogenesis.finetune.examples import REGIMES
from cogenesis.finetune.saving import merge_adapter
from cogenesis.finetune.train import finetune


def result_dict(r: FinetuneResult) -> dict:
    """JSON-friendly summary of a run (CLI output)."""
    d = asdict(r)
    d["out"] = str(r.out)
    d["first_loss"], d["last_loss"] = r.first_loss, r.last_loss
    d.pop("losses")
    return d


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
