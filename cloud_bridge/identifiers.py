"""Exact identifiers of the egress guard (`cogenesis.cloud_bridge.guard`): private values matched whole.

Short high-value profile values are matched exactly as whole words, case-insensitively: Name (and each name
part), Location (and each component), e-mail/phone/address-like fields, and any e-mail, phone or
identifier-like token (letters and digits mixed, e.g. "Sk8-Track", "AB12CD") found in any private text.
Single-word parts (a first name, a city) only match when not written all in lower case, so "Grace" the person
is found but "grace" the word is not. Generic fields (Age, Gender) are never matched by value, and descriptive
fields (Occupation, Personal_traits, Writing_style) only by long n-grams (`cogenesis.cloud_bridge.spans`), so
"Age: 34" does not flag every "34" and a "Friendly" trait does not flag "friendly".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .patterns import _EMAIL, _IDLIKE_MIX, _IDLIKE_TOKEN, _PHONE, _phone_ok
from .spans import _WORD, STOPWORDS

_HONORIFICS = {"dr", "mr", "mrs", "ms", "mx", "prof", "jr", "sr", "ii", "iii", "phd", "md"}


@dataclass(frozen=True)
class _Entry:
    source: str
    replacement: str
    cap_only: bool  # single words (a first name, a city): only match when not written all lower case


class IdentifierIndex:
    """Normalized private phrase -> where it came from and what the sanitizer writes instead."""

    def __init__(self):
        self.entries: dict[str, _Entry] = {}
        self._re: re.Pattern | None = None
        self._vocab: set[str] | None = None

    def add(self, phrase: str, source: str, replacement: str, cap_only: bool) -> None:
        key = _norm_phrase(phrase)
        if key and key not in self.entries:
            self.entries[key] = _Entry(source, replacement, cap_only)
            self._re = self._vocab = None

    def add_tokens(self, text: str, label: str) -> None:
        """E-mails, phone numbers and identifier-like tokens inside any private text become exact identifiers."""
        for m in _EMAIL.finditer(text):
            self.add(m.group(), label, "[email]", cap_only=False)
        for m in _PHONE.finditer(text):
            if _phone_ok(m.group()):
                self.add(m.group(), label, "[phone]", cap_only=False)
        for m in _IDLIKE_TOKEN.finditer(text):
            tok = m.group()
            if _IDLIKE_MIX.search(tok) or sum(c.isdigit() for c in tok) >= 7:
                self.add(tok, label, "[identifier]", cap_only=False)

    def add_profile_field(self, key: str, value: str, cls: str, label: str) -> None:
        """A profile field of class ``cls`` (`cogenesis.cloud_bridge.fields.field_class`): names, places and
        contacts whole and by part; other classes add nothing here."""
        if cls == "name":
            self.add(value, label, "the user", cap_only=False)
            for part in re.split(r"[\s,]+", value):
                part = part.strip(".'\"()")
                if len(part) >= 3 and part.casefold() not in STOPWORDS | _HONORIFICS:
                    self.add(part, label, "the user", cap_only=True)
        elif cls == "place":
            self.add(value, label, "the city", cap_only=False)
            for i, comp in enumerate(c.strip() for c in re.split(r"[,;]", value)):
                if len(comp) >= 3 and comp.casefold() not in STOPWORDS:
                    self.add(comp, label, "the city" if i == 0 else "the region", cap_only=" " not in comp)
        elif cls == "contact":
            repl = "[email]" if "mail" in key.casefold() else "[phone]" if "phone" in key.casefold() else "[private]"
            for item in [value, *re.split(r"[;\n]", value)]:
                if len(item.strip()) >= 3:
                    self.add(item.strip(), label, repl, cap_only=False)

    @property
    def words(self) -> set[str]:
        if self._vocab is None:
            self._vocab = {w for k in self.entries for w in _WORD.findall(k)}
        return self._vocab

    def pattern(self) -> re.Pattern | None:
        if self._re is None and self.entries:
            alts = sorted(self.entries, key=len, reverse=True)
            body = "|".join(r"\s+".join(re.escape(w) for w in k.split(" ")) for k in alts)
            self._re = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
        return self._re

    def find(self, piece: str, words: list[str] | None = None) -> list[tuple[str, str, int, int]]:
        """(source, match, start, end) of every identifier in ``piece``. ``words``: the piece's casefolded
        words (`cogenesis.cloud_bridge.pieces._words`) for a pre-check: no regex runs when none is a word of an
        identifier."""
        pat = self.pattern()
        if pat is None or (words is not None and self.words.isdisjoint(words)):
            return []
        out = []
        for m in pat.finditer(piece):
            entry = self.entries.get(_norm_phrase(m.group()))
            if entry is None or (entry.cap_only and m.group().islower()):
                continue
            out.append((entry.source, m.group(), m.start(), m.end()))
        return out

    def replacement(self, match: str) -> str:
        """What the sanitizer writes for a found identifier."""
        entry = self.entries.get(_norm_phrase(match))
        return entry.replacement if entry else "[private]"

    def pending(self, piece: str) -> bool:
        """True when the word ``piece`` (3+ letters) is the beginning of a longer word of an identifier
        ("Zelph" of "Zelphine"); entries matched capitalized only do not count for an all-lower-case piece."""
        low = piece.casefold()
        for key, entry in self.entries.items():
            if entry.cap_only and piece.islower():
                continue
            if any(len(word) > len(low) and word.startswith(low) for word in key.split(" ")):
                return True
        return False


def _norm_phrase(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())
