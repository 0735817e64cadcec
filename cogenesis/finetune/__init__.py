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

Modules: ``examples`` (regimes, prompts, reply-only labels), ``sketches`` (outlines for ``with_sketch``),
``config`` (the run's settings and result), ``loop`` (the training loop), ``saving`` (base model, output folder,
`merge_adapter`), ``train`` (`finetune`), ``cli`` (`add_finetune_parser`).
"""

from __future__ import annotations

from cogenesis.finetune.cli import add_finetune_parser, cmd_finetune, result_dict  # noqa: F401
from cogenesis.finetune.config import DEFAULT_LR, METHODS, FinetuneResult, TrainConfig  # noqa: F401
from cogenesis.finetune.examples import (  # noqa: F401
    MIN_REPLY_TOKENS,
    REGIMES,
    Example,
    build_example,
    build_examples,
    prompt_messages,
)
from cogenesis.finetune.saving import merge_adapter  # noqa: F401
from cogenesis.finetune.sketches import cloud_sketches, derive_outline  # noqa: F401
from cogenesis.finetune.train import finetune  # noqa: F401
