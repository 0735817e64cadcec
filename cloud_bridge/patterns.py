"""Pattern detectors of the egress guard (`cogenesis.cloud_bridge.guard`): private data found without any context.

E-mail addresses, phone numbers, card numbers (Luhn), IBANs (mod 97), US SSN-like numbers and street addresses.
Every pattern holds a digit or an "@", so in a long text the regexes run only in windows around them
(`_pattern_windows`), which keeps the scan linear: the per-pattern overlap checks used to make digit-heavy
bodies quadratic. The e-mail, phone and identifier-like token rules also feed the guard's exact identifiers
(e-mails, phones and "Sk8-Track" / "AB12CD" tokens found in a private text).
"""

from __future__ import annotations

import re
from bisect import bisect_right, insort
from collections.abc import Callable

from .pieces import PIECE_CHARS
from .spans import _NON_CONTENT

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])"
    r"|(?<![\w+])\+?\d{10,15}(?!\w)"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_STREET = re.compile(
    r"\b\d{1,5}\s+((?:[A-Z][A-Za-z'.-]*\s+){1,4})(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr"
    r"|Court|Ct|Place|Pl|Terrace|Way|Parkway|Pkwy|Highway|Hwy|Square|Sq)\b"
)
# A token mixing letters and digits (not a mere "10-year" / "21st" / "80s"), or a long digit run.
_IDLIKE_TOKEN = re.compile(r"(?<![\w.-])[\w][\w.-]{4,}[\w](?![\w-])")
_IDLIKE_MIX = re.compile(r"[^\W\d_]\d|\d(?!(?:st|nd|rd|th|s)\b)[^\W\d_]", re.IGNORECASE)

_PATTERN_TRIGGER = re.compile(r"\d+|@")
_WINDOW_BEFORE, _WINDOW_AFTER = 80, 280  # longest pattern text before / after its first digit or "@"


def _phone_ok(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    return 9 <= digits <= 15 and (s.lstrip().startswith(("+", "(")) or digits >= 10 or bool(re.search(r"[ .-]", s)))


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _pattern_windows(text: str) -> list[tuple[int, int]]:
    """Every pattern holds a digit or an "@": regions around them, merged (the whole text when short)."""
    if len(text) <= PIECE_CHARS:
        return [(0, len(text))]
    out: list[list[int]] = []
    for m in _PATTERN_TRIGGER.finditer(text):
        a, b = max(m.start() - _WINDOW_BEFORE, 0), min(m.end() + _WINDOW_AFTER, len(text))
        if out and a <= out[-1][1]:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def pattern_matches(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, match, start, end) of every pattern in ``text``, in the order the guard reports them: window by
    window, and in each the more specific patterns first (a match overlapping an earlier one is dropped)."""
    out: list[tuple[str, str, int, int]] = []
    for a, b in _pattern_windows(text):
        out += _pattern_matches_in(text, a, b)
    return out


def _pattern_matches_in(text: str, a: int, b: int) -> list[tuple[str, str, int, int]]:
    """Pattern matches in ``text[a:b]``; lookbehinds still see the text before ``a`` (``pos`` semantics)."""
    out: list[tuple[str, str, int, int]] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match) -> None:
        i = bisect_right(taken, (m.start(), len(text) + 1))
        if (i > 0 and taken[i - 1][1] > m.start()) or (i < len(taken) and taken[i][0] < m.end()):
            return  # overlaps a finding of an earlier (more specific) pattern
        insort(taken, (m.start(), m.end()))
        out.append((kind, m.group(), m.start(), m.end()))

    for kind, pattern, valid in _DETECTORS:
        for m in pattern.finditer(text, a, b):
            if valid is None or valid(m):
                add(kind, m)
    return out


_DETECTORS: tuple[tuple[str, re.Pattern, Callable[[re.Match], bool] | None], ...] = (
    # the more specific patterns first: a later match overlapping an earlier one is dropped
    ("email", _EMAIL, None),
    ("iban", _IBAN, lambda m: _iban_ok(m.group())),
    ("credit_card", _CARD, lambda m: _luhn_ok(re.sub(r"\D", "", m.group()))),
    ("national_id", _SSN, None),
    ("phone", _PHONE, lambda m: _phone_ok(m.group())),
    ("street_address", _STREET, lambda m: not any(w.casefold() in _NON_CONTENT for w in m.group(1).split())),
)
