"""Context-aware data: records, loaders, prompt builders, synthesis.

The names below are re-exported lazily, so ``import cogenesis.data.cli`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PromptPair": "records",
    "RecordContext": "records",
    "TaskRecord": "records",
    "load_context_aware": "records",
    "load_prompt_pairs": "records",
    "load_records": "records",
    "load_sample": "records",
    "parse_outline": "prompts",
    "sketch_request": "prompts",
    "with_context": "prompts",
    "with_sketch": "prompts",
    "without_context": "prompts",
    "synthesize": "synthesis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"cogenesis.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cogenesis.data' has no attribute {name!r}")
