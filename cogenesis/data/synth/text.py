"""Text helpers: the dedup key and a tolerant JSON extractor for model replies."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any


def normalize_key(text: str) -> str:
    """Dedup key: accents folded, lowercase, punctuation dropped, whitespace collapsed."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", t).split())


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_json(text: str) -> Any:
    """The first JSON object/array in a model reply (whole reply, fenced block, or embedded in prose).

    Tolerates ``<think>`` blocks, code fences, raw newlines inside strings and trailing commas.
    Raises ValueError when nothing decodes.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    text = _THINK.sub("", text).strip()
    dec = json.JSONDecoder(strict=False)
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for cand in candidates:
        for variant in (cand, _TRAILING_COMMA.sub(r"\1", cand)):
            try:
                return dec.decode(variant)
            except json.JSONDecodeError:
                pass
    for variant in (text, _TRAILING_COMMA.sub(r"\1", text)):
        tries = 0
        for m in re.finditer(r"[{\[]", variant):
            tries += 1
            if tries > 50:
                break
            try:
                obj, _ = dec.raw_decode(variant, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, (dict, list)) and obj:
                return obj
    raise ValueError("no JSON object found in reply")
