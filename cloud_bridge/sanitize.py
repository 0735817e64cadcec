"""The instruction sanitizer's rewriting: private facts in an instruction replaced by generic stand-ins.

`cogenesis.cloud_bridge.guard.sanitize_instruction` (and ``EgressGuard.sanitize``) find what the guard would
block, plus any run of >= `SANITIZE_NGRAM` content words shared with a profile fact or past writing, and
rewrite each finding here: the user's name -> "the user", their city -> "the city", e-mails/phones ->
"[email]"/"[phone]", identifier-like tokens -> "[private]", fact spans -> "[private detail]", private terms ->
"[NAME]", "[PRIVATE]", "[NUMBER]", "[DATE]", "[EMAIL]". The sanitizer never blocks and shows every change, so
it can afford more recall on facts than the guard's 4 content words (see `cogenesis.cloud_bridge.spans`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .terms import PLACEHOLDER as TERM_PLACEHOLDERS

SANITIZE_NGRAM = 3  # the sanitizer rewrites (never blocks), so it can afford more recall on facts

_PATTERN_REPLACEMENT = {
    "email": "[email]",
    "phone": "[phone]",
    "credit_card": "[card number]",
    "iban": "[account number]",
    "national_id": "[id number]",
    "street_address": "[address]",
}
_FACT_REPLACEMENT = "[private detail]"
# Every bracketed stand-in the sanitizer writes: text a cloud model sees where only the device knows the fact.
PLACEHOLDERS = frozenset({*_PATTERN_REPLACEMENT.values(), _FACT_REPLACEMENT, "[private]", *TERM_PLACEHOLDERS.values()})


@dataclass
class SanitizeResult:
    """An instruction with private facts rewritten generically; `changes` lists (original, replacement)."""

    text: str
    changes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def rewrite_findings(instruction: str, found: list[Any], replacement: Callable[[Any], str]) -> SanitizeResult:
    """``instruction`` with every finding of ``found`` (``start``/``end`` offsets into it) replaced by
    ``replacement(finding)``; overlapping findings are merged and the widest decides the replacement."""
    edits = []  # (start, end, replacement) with overlaps merged; the widest finding decides the replacement
    for f in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
        repl = replacement(f)
        if edits and f.start < edits[-1][1]:
            s, e, r, w = edits[-1]
            if f.end > e:
                edits[-1] = (s, f.end, repl if f.end - f.start > w else r, max(w, f.end - f.start))
            continue
        edits.append((f.start, f.end, repl, f.end - f.start))
    out, changes, pos = [], [], 0
    for start, end, repl, _ in edits:
        original = instruction[start:end]
        repl = _match_case(repl, instruction[:start])
        out += [instruction[pos:start], repl]
        changes.append((original, repl))
        pos = end
    out.append(instruction[pos:])
    return SanitizeResult("".join(out), changes)


def _match_case(repl: str, before: str) -> str:
    if repl[0].isalpha() and (not before.strip() or re.search(r"[.!?:\n]\s*$", before)):
        return repl[0].upper() + repl[1:]  # "Madison will ..." -> "The user will ..."
    return repl
