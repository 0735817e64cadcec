"""Private-term model: every word, name, number and date of a private context that could identify the user.

Built once per session on the device from the private context (profile, writing history, private texts), then
used by the egress guard, the instruction sanitizer and the logits modes' prefix policy. What is a term (rare
words, proper nouns, named things, profile identities, numbers, dates): the rules are listed and implemented in
`cogenesis.cloud_bridge.term_rules` (numbers and dates in `cogenesis.cloud_bridge.term_dates`).

Matching runs on **normalized** text (case, accents, zero-width and format characters, full-width letters and
punctuation folded: `cogenesis.cloud_bridge.textnorm`), so "PEMBERLOT", "Pem\\u200bberlot" and
"Pemberlot-Smith" are all "pemberlot". The search is one Aho-Corasick automaton (``pyahocorasick``) over the
normalized text plus one regex pass for numbers and dates: linear in the body size (a 1 MB body: see
``tests/test_private_terms.py``).

Thresholds, measured on the authors' ``context_aware_dev`` (150 records, 111 users; each user's term model
against the task instructions of every *other* user: any hit is a false positive; against the user's own
instruction; and against the record's reference reply, where the median word of the first hit says how far a
``stop`` prefix policy lets the cloud help), ``python scripts/term_model_fp.py``:

  ==============================================  ==================  ==============  =====================
  rules (Zipf limits)                             unrelated pairs     own instr.      replies with a term
                                                  with a hit          with a hit      (median first word)
  ==============================================  ==================  ==============  =====================
  rare words < 3.0 only                           418/22272 (1.88 %)  34/150          74/150 (34)
  rare < 2.5, names < 4.0                         270 (1.21 %)        37/150          66/150 (26)
  rare < 3.0, names < 4.0                         483 (2.17 %)        44/150          83/150 (31)
  **rare < 3.0, names < 4.5 (runs < 4.0)**        **577 (2.59 %)**    **49/150**      **87/150 (28)**
  rare < 3.0, names < 4.5 (runs < 4.5)            626 (2.81 %)        51/150          89/150 (27)
  rare < 3.5, names < 4.5                         3746 (16.8 %)       77/150          120/150 (26)
  ==============================================  ==================  ==============  =====================

3.5 is where ordinary topic words ("itinerary", "mindfulness") turn private for every user; below 3.0 real
names and rare nouns of the history (a pet "Whiskers" 2.99, "marigold" 2.75) fall out. The bold row is the
default: the false positives left are mostly another user's city or first name ("Austin", "Elena": a fact of
that user) and rare topic words of the LLM-written profiles ("mentorship", "narrate").
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass

from .term_dates import _DIGIT_RUN, _MON, _ORD, NUMBER_KEY_DIGITS, _date_spans
from .term_rules import (
    KINDS,  # noqa: F401
    MIN_WORD,  # noqa: F401
    PLACEHOLDER,  # noqa: F401
    SUBSTRING_MIN,  # noqa: F401
    WEAK_CUE_ZIPF,  # noqa: F401
    ZIPF_SUBSTRING,  # noqa: F401
    ZIPF_WEAK_SINGLE,  # noqa: F401
    Term,
    TermRules,
    zipf,  # noqa: F401
)
from .textnorm import _fold, normalize, normalize_map

ZIPF_RARE = 3.0  # words rarer than this (per billion words: 10^3 = 1 per million) are private terms
ZIPF_PROPER = 4.5  # a capitalized word mid-sentence rarer than this is a name ("my sister Clara")
ZIPF_PROPER_RUN = 4.0  # the same inside a run of capitalized words ("Volunteer Scheduling App")


@dataclass(frozen=True)
class TermHit:
    """A term found in a text; ``start``/``end`` index the text that was searched (see ``find``/``locate``)."""

    term: Term
    start: int
    end: int
    match: str


class PrivateTerms(TermRules):
    """The private-term model of one session; see the module docstring."""

    def __init__(self, zipf_rare: float = ZIPF_RARE, zipf_proper: float = ZIPF_PROPER,
                 zipf_proper_run: float = ZIPF_PROPER_RUN):
        self.zipf_rare, self.zipf_proper, self.zipf_proper_run = zipf_rare, zipf_proper, zipf_proper_run
        self.terms: dict[str, Term] = {}  # normalized phrase -> term (word-bounded)
        self.substrings: set[str] = set()  # keys also matched inside words
        self.cased: dict[str, Term] = {}  # case-preserved normalized phrase -> term
        self.numbers: dict[str, Term] = {}  # last 7 digits -> term
        self.dates: dict[str, Term] = {}  # "YYYY-MM-DD" or "--MM-DD" -> term
        self._auto = None
        self._prefixes: list[str] | None = None
        self._lower_seen: set[str] = set()  # words the context also writes in lower case (common nouns)
        self._proper_only: set[str] = set()  # keys added only because they were capitalized
        self._cued: dict[str, str] = {}  # names after a strong cue ("a dog named Melody"): key -> as written

    # ---- building (the rules: `TermRules`) -------------------------------------------------------------

    @classmethod
    def from_context(cls, context, **kw) -> PrivateTerms:
        """The terms of a ``PrivateContext`` (profile fields by class, history titles and texts, private texts)."""
        self = cls(**kw)
        for key, value in context.profile.items():
            if value and value.strip():
                self.add_field(key, value)
        for i, s in enumerate(context.history):
            self.add_text(s.title, f"history[{i}].title")
            self.add_text(s.text, f"history[{i}].text")
        for i, t in enumerate(context.private_texts):
            self.add_text(t, f"private[{i}]")
        return self

    # ---- matching ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.terms) + len(self.cased) + len(self.numbers) + len(self.dates)

    def _automaton(self):
        if self._auto is None:
            self._finalize()
            import ahocorasick

            a = ahocorasick.Automaton()
            for key, term in self.terms.items():
                a.add_word(f" {key} ", (term, 1))
                if key in self.substrings:
                    a.add_word(key, (term, 0))
            c = ahocorasick.Automaton()
            for key, term in self.cased.items():
                c.add_word(f" {key} ", (term, 1))
            for auto in (a, c):
                if len(auto):
                    auto.make_automaton()
            self._auto = (a, c)
        return self._auto

    def find(self, text: str) -> list[TermHit]:
        """Terms in ``text``; offsets and ``match`` refer to ``normalize(text)``. Linear in ``len(text)``."""
        cased = normalize(text, fold_case=False)
        norm = _fold(cased)
        hits = self._find_norm(norm, self._automaton()[0])
        if self.cased:
            hits += self._find_norm(cased, self._automaton()[1])
        hits += self._find_numbers(norm)
        return _dedupe(hits)

    @staticmethod
    def _find_norm(norm: str, auto) -> list[TermHit]:
        if not len(auto):
            return []
        padded = f" {norm} "
        out = []
        for end, (term, pad) in auto.iter(padded):
            length = len(term.key) + 2 * pad
            s, e = end + 1 - length + pad - 1, end + 1 - pad - 1  # offsets into norm (padded minus 1)
            out.append(TermHit(term, max(s, 0), e, norm[max(s, 0):e]))
        return out

    def _find_numbers(self, norm: str) -> list[TermHit]:
        out = []
        if self.numbers:
            n = NUMBER_KEY_DIGITS
            for m in _DIGIT_RUN.finditer(norm):
                digits = m.group().replace(" ", "")
                for i in range(len(digits) - n + 1):
                    term = self.numbers.get(digits[i : i + n])
                    if term is not None:
                        out.append(TermHit(term, m.start(), m.end(), m.group()))
                        break
        if self.dates:
            for iso, s, e in _date_spans(norm):
                term = self.dates.get(iso) or self.dates.get("--" + iso[5:] if not iso.startswith("--") else iso)
                if term is not None:
                    out.append(TermHit(term, s, e, norm[s:e]))
        return out

    def locate(self, text: str) -> list[TermHit]:
        """Like ``find`` but with offsets into ``text`` itself (for rewriting it); for short texts."""
        norm, idx = normalize_map(text)
        hits = self._find_norm(norm, self._automaton()[0]) + self._find_numbers(norm)
        out = [TermHit(h.term, idx[h.start], idx[h.end - 1] + 1, text[idx[h.start]: idx[h.end - 1] + 1])
               for h in hits if h.end > h.start]
        if self.cased:
            cnorm, cidx = normalize_map(text, fold_case=False)
            out += [TermHit(h.term, cidx[h.start], cidx[h.end - 1] + 1, text[cidx[h.start]: cidx[h.end - 1] + 1])
                    for h in self._find_norm(cnorm, self._automaton()[1]) if h.end > h.start]
        return _dedupe(out)

    def redact(self, text: str) -> str:
        """``text`` with every term replaced by its kind's placeholder ("[NAME]", "[NUMBER]"...)."""
        out, pos = [], 0
        for h in _merge(self.locate(text)):
            out += [text[pos:h.start], h.term.placeholder]
            pos = h.end
        out.append(text[pos:])
        return "".join(out)

    def pending(self, text: str) -> bool:
        """True when ``text`` ends in the first letters of a term that may still be completed by what comes
        next ("... Pem" of "Pemberlot", "... marigold f" of "marigold ferry", "... +44 77" of a phone): a
        prefix policy must not send it yet. Checks every start in the tail: word starts for word-bounded
        terms, any position for substring terms, and a trailing digit run for numbers."""
        split_char = text.endswith("\ufffd")  # a character whose UTF-8 bytes are split across tokens
        text = text.rstrip("\ufffd")
        norm = normalize(text, fold_case=True)
        if not norm or not (split_char or text[-1:].isalnum() or unicodedata.category(text[-1:] or " ")[0] in "LNM"):
            return False  # the text ends in a space or punctuation: no term can continue across it
        prefixes = self._prefix_list()
        tail = norm[-self._longest():]
        for i in range(len(tail)):
            if i == 0 or tail[i - 1] == " ":
                if _is_proper_prefix(prefixes, " " + tail[i:]):
                    return True
            if _is_proper_prefix(prefixes, "\x00" + tail[i:]):
                return True
        m = re.search(r"\d+(?: \d+)*$", norm)
        if m and self.numbers:
            return True  # digits at the end: the next token may complete a private number (cheap to hold)
        m = re.search(rf"(?:\b({_MON})(?: \d{{1,2}})?|\b\d{{1,2}}(?:{_ORD})?(?: ({_MON}))?)$", norm)
        return bool(m and self.dates)

    def _prefix_list(self) -> list[str]:
        if self._prefixes is None:
            self._finalize()
            keys = [f" {k} " for k in self.terms] + [f" {normalize(k)} " for k in self.cased]
            keys += ["\x00" + k for k in self.substrings]
            self._prefixes = sorted(keys)
        return self._prefixes

    def _longest(self) -> int:
        return max((len(k) for k in self._prefix_list()), default=1) + 1


# ---- helpers ------------------------------------------------------------------------------------------------


def _is_proper_prefix(sorted_keys: list[str], s: str) -> bool:
    i = bisect_left(sorted_keys, s)
    return i < len(sorted_keys) and sorted_keys[i].startswith(s) and sorted_keys[i] != s


def _dedupe(hits: list[TermHit]) -> list[TermHit]:
    seen, out = set(), []
    for h in sorted(hits, key=lambda h: (h.start, -h.end)):
        k = (h.start, h.end, h.term.key)
        if k not in seen:
            seen.add(k)
            out.append(h)
    return out


def _merge(hits: list[TermHit]) -> list[TermHit]:
    """Overlapping hits merged (the widest decides the placeholder), ordered by position."""
    out: list[TermHit] = []
    for h in sorted(hits, key=lambda h: (h.start, -(h.end - h.start))):
        if out and h.start < out[-1].end:
            if h.end > out[-1].end:
                last = out[-1]
                out[-1] = TermHit(last.term, last.start, h.end, last.match)
            continue
        out.append(h)
    return out
