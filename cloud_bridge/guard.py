"""Egress privacy guard: the one choke point every outbound request body passes before it leaves the device.

The guard knows the session's private context and looks for it in outbound text:

* **verbatim spans**: runs of >= ``ngram`` (default 4) consecutive *content words* shared with a private text
  (profile facts, writing history, user-marked texts). Content words are lower-cased ``\\w+`` tokens minus English
  stop words and generic instruction vocabulary ("write", "blog", "post", "guide"...), so "at the local shelter"
  and "at local shelter" match alike and instruction boilerplate never does.
  Why 4 content words (about 5-8 raw words): measured on the 150 records of the authors' ``context_aware_dev``,
  each task instruction scanned against the 149 *other* users' contexts (22,350 unrelated pairs: any span is a
  false positive) and against its own user's context (instructions that really quote the user's facts):

  ===================  ==============================  ===================================
  rule                 unrelated pairs with a finding  own instructions with a finding
  ===================  ==============================  ===================================
  2 content words      2361 (10.6 %)                   136/150
  3 content words       128 (0.57 %)                    77/150 (many are mere topic words)
  **4**                 **5 (0.022 %)**                 **34/150**
  5 content words         2 (0.009 %)                   12/150
  6 content words         1 (0.004 %)                    1/150
  private-term model    577 (2.59 %)                    49/150 (see `cogenesis.cloud_bridge.terms`)
  ===================  ==============================  ===================================

  (The last row is the private-term model alone, per user rather than per record: 22,272 pairs of different
  users.) (Plain 5-word n-grams without the stop/task-word filter: 127 unrelated pairs, 0.57 %.) 4 is the knee: 25x
  fewer false positives than 3, ~3x the recall of 5. The authors' generic system prompt flags 0/150 contexts
  from 3 up. The instruction *sanitizer* (non-blocking, shows its changes) uses 3 on profile facts.
  A second index catches what content words cannot: **8 consecutive words of any kind** ("they're a reflection
  of me, a game": one content word, sent by a logits reply in the 1.5B-cloud experiment and flagged by the
  independent detector, which counts every word). On the same split (``scripts/verbatim_run_fp.py``; each user's
  facts and history against every other user's instructions and reference replies, 16,500 pairs):
  5 words 315 (1.9 %), 6: 58, 7: 11, **8: 3 (0.018 %)**, 10: 0; 2 of the 3 at 8 are task boilerplate with no
  content word ("develop a series of social media posts for"), which the index leaves out. Within one
  ";"-separated item of a profile fact field the run is **6 words** ("a mix of classic rock and", sent by a logits
  reply before the span had 4 content words): 3 of 16,500 unrelated pairs at 6 (5: 9, 7: 2); 23 of 150 reference
  replies quote their own facts that way.
* **identifiers**: short high-value profile values matched exactly as whole words, case-insensitively:
  Name (and each name part), Location (and each component), e-mail/phone/address-like fields, and any
  e-mail, phone or identifier-like token (letters and digits mixed, e.g. "Sk8-Track", "AB12CD") found in any
  private text. Single-word parts (a first name, a city) only match when not written all in lower case, so
  "Grace" the person is found but "grace" the word is not. Generic fields (Age, Gender) are never matched by
  value, and descriptive fields (Occupation, Personal_traits, Writing_style) only by long n-grams, so
  "Age: 34" does not flag every "34" and a "Friendly" trait does not flag "friendly".
* **patterns** (no context needed): e-mail addresses, phone numbers, card numbers (Luhn), IBANs (mod 97),
  US SSN-like numbers and street addresses.
* **private terms** (`cogenesis.cloud_bridge.terms`): every rare word, name, code name, number, date and
  address of the context, matched on normalized text (case, accents, zero-width characters, full-width
  letters, hyphens and number/date formats folded), kind ``private_term``. The sanitizer replaces them with
  "[NAME]", "[PRIVATE]", "[NUMBER]", "[DATE]", "[EMAIL]"; `pending` says when a text ends in the first
  letters of one (the logits modes hold such a step back).

The scan is linear in the body size (long strings are cut at sentence ends and a piece is matched only when
it holds enough private words; patterns run around digits and "@" only): a 1 MB body in ~0.1-0.2 s here
(``bench/guard_scan.py``), where the per-pattern overlap checks used to make digit-heavy bodies quadratic.

Modes: ``strict`` raises `PrivacyViolation` on any finding (nothing is sent), ``audit`` records the findings
and lets the request go, ``off`` does not inspect and only logs the request. Every call appends one record to
the audit log (see `cogenesis.cloud_bridge.audit`). Token-id payloads (``{"prompt": [12, 345]}``) are scanned
through ``detokenize``; without it they cannot be inspected and strict mode refuses them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from bisect import bisect_right, insort
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote_plus

from cogenesis.cloud_bridge.fields import field_class

from cogenesis.core.context import PrivateContext

from .audit import append_record
from .terms import PLACEHOLDER as TERM_PLACEHOLDERS
from .terms import PrivateTerms

MODES = ("strict", "audit", "off")
DEFAULT_NGRAM = 4  # content words, see the module docstring for the measurement
RAW_NGRAM = 8  # every word counts, stop words too (verbatim runs); see the module docstring
ITEM_RAW_NGRAM = 6  # the same within one ";"-separated item of a profile fact field
SANITIZE_NGRAM = 3  # the sanitizer rewrites (never blocks), so it can afford more recall on facts
MIN_FACT_ITEM = 3  # a ";"-separated fact shorter than the n-gram still matches whole if it has >= 3 content words
MAX_GAP_WORDS = 3  # an n-gram may skip at most this many stop/task words between two content words
MAX_MATCH_CHARS = 200  # how much of a match an audit record keeps
PIECE_CHARS = 4096  # long texts are scanned in pieces of about this size, cut at sentence ends
LOCATE_MAX = 100_000  # longer strings: private terms are reported at offsets of the normalized text

STOPWORDS = frozenset(
    """a an the and or nor but if then else of to in on at by for with from as into onto about over under after
    before between through during without within upon up down out off again further once is are was were be been
    being am this that these those it its i me my mine we us our ours you your yours he him his she her hers they
    them their theirs what which who whom whose how when where why not no so than too very can will just do does
    did doing have has had having should would could may might must shall also via per s t d ll m re ve all any
    both each few more most other some such only own same here there""".split()
)
# Words of the task instructions themselves: shared by every user, so they never make a span private.
TASK_WORDS = frozenset(
    """write compose craft create develop draft generate produce prepare design outline pen compile make put
    together blog post posts piece pieces essay article articles guide review reflective reflection series social
    media detailed comprehensive step proposal script letter email newsletter report summary speech story short
    poem op ed opinion editorial press release discuss discussing highlight highlights highlighting include
    including focus focusing latest new recent tips""".split()
)
_NON_CONTENT = STOPWORDS | TASK_WORDS

_HONORIFICS = {"dr", "mr", "mrs", "ms", "mx", "prof", "jr", "sr", "ii", "iii", "phd", "md"}

_WORD = re.compile(r"\w+")
_TRAILING_WORD = re.compile(r"(\w+)$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_BREAK = re.compile(r"[.!?;:()\[\]{}\"\n\u201c\u201d]|(?<!\w)['\u2018\u2019]|['\u2018\u2019](?!\w)")
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


@dataclass(frozen=True)
class Finding:
    """One private thing found in outbound text; offsets are into the scanned string at `path`."""

    kind: str  # verbatim_span | identifier | email | phone | credit_card | iban | national_id | street_address | uninspectable
    source: str  # where it came from: "profile.Name", "history[2].text", "private[0]", "pattern.email", ...
    match: str
    start: int
    end: int
    path: str = ""  # JSON path of the string in the body ("$.messages[0].content"), "" for plain text

    def to_record(self) -> dict:
        return {"kind": self.kind, "source": self.source, "match": self.match[:MAX_MATCH_CHARS], "path": self.path}


class PrivacyViolation(Exception):
    """Strict mode refused to send a request; `findings` says what and from where."""

    def __init__(self, endpoint: str, findings: list[Finding]):
        self.endpoint = endpoint
        self.findings = list(findings)
        shown = "; ".join(_describe(f) for f in self.findings[:5])
        more = f"; ... and {len(self.findings) - 5} more" if len(self.findings) > 5 else ""
        super().__init__(f"refusing to send to {endpoint}: {len(self.findings)} finding(s): {shown}{more}")


def _describe(f: Finding) -> str:
    where = f" at {f.path}" if f.path else ""
    if f.kind == "uninspectable":
        return f"{f.match}{where}"
    return f"{f.kind} from {f.source}: {f.match[:80]!r}{where}[{f.start}:{f.end}]"


@dataclass
class SanitizeResult:
    """An instruction with private facts rewritten generically; `changes` lists (original, replacement)."""

    text: str
    changes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class _Entry:
    source: str
    replacement: str
    cap_only: bool  # single words (a first name, a city): only match when not written all lower case


def content_tokens(text: str) -> list[tuple[str, int, int]]:
    """(normalized word, start, end) for each content word of `text` (stop words and task words dropped)."""
    return [t for seg in content_segments(text) for t in seg]


def content_segments(text: str) -> list[list[tuple[str, int, int]]]:
    """Content words grouped into runs that an n-gram may span: a run breaks at sentence or clause punctuation
    (. ! ? ; : brackets, quotes, new lines) and where more than `MAX_GAP_WORDS` non-content words intervene."""
    segs: list[list[tuple[str, int, int]]] = [[]]
    gap, last_end = 0, 0
    for m in _WORD.finditer(text):
        w = unicodedata.normalize("NFKC", m.group()).casefold()
        if segs[-1] and _BREAK.search(text[max(last_end - 1, 0) : m.start() + 1]):
            segs.append([])
            gap = 0
        last_end = m.end()
        if w in _NON_CONTENT:
            gap += 1
            continue
        if gap > MAX_GAP_WORDS and segs[-1]:
            segs.append([])
        gap = 0
        segs[-1].append((w, m.start(), m.end()))
    return [seg for seg in segs if seg]


def _fold_word(w: str) -> str:
    """NFKC + casefold, accents dropped ("Café" -> "cafe"), so a copy that loses its accents still matches."""
    w = unicodedata.normalize("NFKC", w).casefold()
    if w.isascii():
        return w
    return "".join(c for c in unicodedata.normalize("NFKD", w) if not unicodedata.combining(c))


def raw_words(text: str) -> list[tuple[str, int, int]]:
    """(folded word, start, end) for every ``\\w+`` word of `text`, stop words included."""
    return [(_fold_word(m.group()), m.start(), m.end()) for m in _WORD.finditer(text)]


class _RunIndex:
    """Runs of `n` consecutive words (stop words counted) of private texts -> source label. It catches the
    copied sentence that is mostly stop words, which the content-word index cannot see."""

    def __init__(self, n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}

    def add(self, text: str, source: str) -> None:
        """Runs without a content word ("develop a series of social media posts for": task boilerplate that
        histories share with instructions) are not indexed."""
        ws = [w for w, _, _ in raw_words(text)]
        for i in range(len(ws) - self.n + 1):
            g = tuple(ws[i : i + self.n])
            if not _NON_CONTENT.issuperset(g):
                self.grams.setdefault(g, source)

    def may_match(self, words: list[str]) -> bool:
        n, grams = self.n, self.grams
        words = [w if w.isascii() else _fold_word(w) for w in words]
        return bool(grams) and any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1))

    def find(self, text: str, toks: list[tuple[str, int, int]] | None = None) -> list[tuple[int, int, str]]:
        """Matches with overlapping ones merged: (start, end, source) character spans. ``toks``: `raw_words`
        of ``text`` when the caller has them already (one tokenization for several indexes)."""
        if not self.grams:
            return []
        toks = raw_words(text) if toks is None else toks
        runs: list[list] = []
        for i in range(len(toks) - self.n + 1):
            src = self.grams.get(tuple(w for w, _, _ in toks[i : i + self.n]))
            if src is None:
                continue
            if runs and i <= runs[-1][1]:
                runs[-1][1] = i + self.n - 1
            else:
                runs.append([i, i + self.n - 1, src])
        return [(toks[a][1], toks[b][2], src) for a, b, src in runs]


def encode_body(body: dict | list | str | bytes) -> bytes:
    """The exact bytes to send for a body; hash and send these so the audit sha256 matches the wire."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _SpanIndex:
    """Content-word n-grams of private texts -> source label."""

    def __init__(self, n: int):
        if n < 2:
            raise ValueError(f"ngram must be >= 2 content words, got {n}")
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.lengths = {n}
        self._pairs: set[tuple[str, str]] | None = None

    def add(self, text: str, source: str, items: bool = False) -> None:
        self._pairs = None
        for seg in content_segments(text):
            ws = [w for w, _, _ in seg]
            for i in range(len(ws) - self.n + 1):
                self.grams.setdefault(tuple(ws[i : i + self.n]), source)
        if items:  # short facts ("Has a cat named Whiskers") match as a whole
            for item in re.split(r"[;\n]", text):
                iw = tuple(w for w, _, _ in content_tokens(item))
                if MIN_FACT_ITEM <= len(iw) < self.n:
                    self.grams.setdefault(iw, source)
                    self.lengths.add(len(iw))

    def may_match(self, words: list[str]) -> bool:
        """False when no n-gram can match a text with these (casefolded) words: no chain of as many content
        words, each next to the other in some private n-gram, as the shortest n-gram has (a conservative,
        linear pre-check: segment breaks and gaps are ignored)."""
        if not self.grams:
            return False
        if self._pairs is None:
            self._pairs = {(g[i], g[i + 1]) for g in self.grams for i in range(len(g) - 1)}
        need, run = min(self.lengths) - 1, 0
        content = [w for w in words if w not in _NON_CONTENT]
        pairs = self._pairs
        for pair in zip(content, content[1:], strict=False):
            if pair in pairs:
                run += 1
                if run >= need:
                    return True
            else:
                run = 0
        return False

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Private n-gram matches, overlapping ones merged: (start, end, source) character spans."""
        if not self.grams:
            return []
        out: list[tuple[int, int, str]] = []
        for seg in content_segments(text):
            ws = [w for w, _, _ in seg]
            hits = []  # (first token, last token, source)
            for n in sorted(self.lengths):
                for i in range(len(ws) - n + 1):
                    src = self.grams.get(tuple(ws[i : i + n]))
                    if src is not None:
                        hits.append((i, i + n - 1, src))
            hits.sort()
            runs: list[list] = []
            for a, b, src in hits:
                if runs and a <= runs[-1][1]:  # shares a word with the previous match
                    runs[-1][1] = max(runs[-1][1], b)
                    runs[-1][2].append(src)
                else:
                    runs.append([a, b, [src]])
            for a, b, srcs in runs:
                out.append((seg[a][1], seg[b][2], Counter(srcs).most_common(1)[0][0]))
        return out


class EgressGuard:
    """Inspects outbound request bodies against the session's private context; see the module docstring."""

    def __init__(
        self,
        context: PrivateContext | None = None,
        mode: str = "strict",
        audit_log: str | Path | None = None,
        detokenize: Callable[[list[int]], str] | None = None,
        session_id: str | None = None,
        ngram: int = DEFAULT_NGRAM,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self.audit_log = Path(audit_log) if audit_log is not None else None
        self.detokenize = detokenize
        self.session_id = session_id or uuid.uuid4().hex
        self.last_record: dict | None = None
        self._spans = _SpanIndex(ngram)
        self._facts = _SpanIndex(min(SANITIZE_NGRAM, ngram))  # used by sanitize() only
        self._runs = _RunIndex(RAW_NGRAM)
        self._item_runs = _RunIndex(ITEM_RAW_NGRAM)
        self._exact: dict[str, _Entry] = {}
        self._exact_re: re.Pattern | None = None
        self._exact_vocab: set[str] | None = None
        ctx = context or PrivateContext()
        self.terms = PrivateTerms.from_context(ctx)
        for key, value in ctx.profile.items():
            if value and value.strip():
                self._add_profile_field(key, value)
        for i, s in enumerate(ctx.history):
            self._add_tokens(s.title, f"history[{i}].title")
            self._spans.add(s.title, f"history[{i}].title")
            self._runs.add(s.title, f"history[{i}].title")
            self._add_tokens(s.text, f"history[{i}].text")
            self._spans.add(s.text, f"history[{i}].text")
            self._runs.add(s.text, f"history[{i}].text")
        for i, t in enumerate(ctx.private_texts):
            if t.strip():
                self.add_private(t, f"private[{i}]")

    # ---- building the private index -------------------------------------------------------------------

    def add_private(self, text: str, label: str, exact: bool | None = None) -> None:
        """Mark an extra string private for this session. Short strings (fewer content words than the n-gram)
        match exactly as whole words, long ones by n-gram overlap; force either with `exact`."""
        if not text or not text.strip():
            return
        if exact is None:
            exact = len(content_tokens(text)) < self._spans.n
        self.terms.add_text(text, label)
        if exact:
            self.terms.add_term(text, "phrase", label)
        self._add_tokens(text, label)
        if exact:
            self._add_exact(text, label, "a private detail", cap_only=False)
        else:
            self._spans.add(text, label, items=True)
            self._facts.add(text, label, items=True)
            self._runs.add(text, label)

    def _add_profile_field(self, key: str, value: str) -> None:
        label = f"profile.{key}"
        cls = field_class(key)
        self._add_tokens(value, label)
        if cls == "name":
            self._add_exact(value, label, "the user", cap_only=False)
            for part in re.split(r"[\s,]+", value):
                part = part.strip(".'\"()")
                if len(part) >= 3 and part.casefold() not in STOPWORDS | _HONORIFICS:
                    self._add_exact(part, label, "the user", cap_only=True)
        elif cls == "place":
            self._add_exact(value, label, "the city", cap_only=False)
            for i, comp in enumerate(c.strip() for c in re.split(r"[,;]", value)):
                if len(comp) >= 3 and comp.casefold() not in STOPWORDS:
                    self._add_exact(comp, label, "the city" if i == 0 else "the region", cap_only=" " not in comp)
        elif cls == "contact":
            repl = "[email]" if "mail" in key.casefold() else "[phone]" if "phone" in key.casefold() else "[private]"
            for item in [value, *re.split(r"[;\n]", value)]:
                if len(item.strip()) >= 3:
                    self._add_exact(item.strip(), label, repl, cap_only=False)
        elif cls == "descriptive":
            self._spans.add(value, label)
            self._runs.add(value, label)
        elif cls == "fact":
            self._spans.add(value, label, items=True)
            self._facts.add(value, label, items=True)
            self._runs.add(value, label)
            for item in value.split(";"):
                self._item_runs.add(item, label)
        # "skip" fields (Age, Gender): only identifier-like tokens, added above

    def _add_tokens(self, text: str, label: str) -> None:
        """E-mails, phone numbers and identifier-like tokens inside any private text become exact identifiers."""
        for m in _EMAIL.finditer(text):
            self._add_exact(m.group(), label, "[email]", cap_only=False)
        for m in _PHONE.finditer(text):
            if _phone_ok(m.group()):
                self._add_exact(m.group(), label, "[phone]", cap_only=False)
        for m in _IDLIKE_TOKEN.finditer(text):
            tok = m.group()
            if _IDLIKE_MIX.search(tok) or sum(c.isdigit() for c in tok) >= 7:
                self._add_exact(tok, label, "[identifier]", cap_only=False)

    def _add_exact(self, phrase: str, source: str, replacement: str, cap_only: bool) -> None:
        key = _norm_phrase(phrase)
        if key and key not in self._exact:
            self._exact[key] = _Entry(source, replacement, cap_only)
            self._exact_re = self._exact_vocab = None

    @property
    def _exact_words(self) -> set[str]:
        if self._exact_vocab is None:
            self._exact_vocab = {w for k in self._exact for w in _WORD.findall(k)}
        return self._exact_vocab

    def _exact_pattern(self) -> re.Pattern | None:
        if self._exact_re is None and self._exact:
            alts = sorted(self._exact, key=len, reverse=True)
            body = "|".join(r"\s+".join(re.escape(w) for w in k.split(" ")) for k in alts)
            self._exact_re = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
        return self._exact_re

    # ---- scanning -------------------------------------------------------------------------------------

    def scan_text(self, text: str, path: str = "", terms: bool = True) -> list[Finding]:
        """All findings in one string, ordered by position. ``terms=False``: only the rules the Android demo's
        JavaScript port has (no private-term model). Linear in ``len(text)``: long texts are cut at sentence
        ends (where no span or identifier runs on) and each piece is matched only if it holds enough words
        of the private index (see `_scan_piece`); patterns run only around digits and "@"."""
        found: list[Finding] = []
        for a, b in _pieces(text):
            found += self._scan_piece(text, a, b, path, prefilter=len(text) > PIECE_CHARS)
        found = _outside(_pattern_findings(text, path), [f for f in found if f.kind == "identifier"], found)
        if terms:
            found += self._term_findings(text, path, found)
        return sorted(set(found), key=lambda f: (f.start, f.end, f.kind))

    def _scan_piece(self, text: str, a: int, b: int, path: str, prefilter: bool) -> list[Finding]:
        """Identifiers and verbatim spans in ``text[a:b]`` (offsets into ``text``). With ``prefilter``, the
        exact-identifier regex runs only if a word of an identifier is there, and the n-gram matcher only if
        enough words of the private n-grams stand close enough together to form one."""
        piece = text[a:b]
        words = None
        if prefilter:
            words = _words(piece)
        out: list[Finding] = []
        pat = self._exact_pattern()
        if pat is not None and (words is None or not self._exact_words.isdisjoint(words)):
            for m in pat.finditer(piece):
                entry = self._exact.get(_norm_phrase(m.group()))
                if entry is None or (entry.cap_only and m.group().islower()):
                    continue
                out.append(Finding("identifier", entry.source, m.group(), a + m.start(), a + m.end(), path))
        if words is None or self._spans.may_match(words):
            for start, end, src in self._spans.find(piece):
                out.append(Finding("verbatim_span", src, piece[start:end], a + start, a + end, path))
        toks = None  # one tokenization of the piece for both run indexes, and only if one may match
        for runs in (self._runs, self._item_runs):
            if words is None or runs.may_match(words):
                toks = raw_words(piece) if toks is None else toks
                for start, end, src in runs.find(piece, toks):
                    out.append(Finding("verbatim_span", src, piece[start:end], a + start, a + end, path))
        return out

    def _term_findings(self, text: str, path: str, found: list[Finding]) -> list[Finding]:
        """Private terms (see `cogenesis.cloud_bridge.terms`) not already inside another finding. Texts up to
        `LOCATE_MAX` characters get offsets into the text; longer ones offsets into its normalized form
        (path suffix ``#normalized``), which keeps the scan linear."""
        if len(text) > LOCATE_MAX:
            return [Finding("private_term", h.term.source, h.match, h.start, h.end, f"{path}#normalized")
                    for h in self.terms.find(text)]
        spans = sorted((f.start, f.end) for f in found)
        out = []
        for h in self.terms.locate(text):
            i = bisect_right(spans, (h.start, len(text) + 1)) - 1
            if i >= 0 and spans[i][0] <= h.start and h.end <= spans[i][1]:
                continue
            out.append(Finding("private_term", h.term.source, h.match, h.start, h.end, path))
        return out

    def scan_body(self, body: dict | list | str | bytes, terms: bool = True) -> list[Finding]:
        """Findings in a request body: every string in JSON (keys too), token-id lists via `detokenize`."""
        if isinstance(body, (dict, list)):
            return self._walk(body, "$", terms)
        raw = encode_body(body)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return [Finding("uninspectable", "body", "binary body (not UTF-8) cannot be inspected", 0, len(raw), "$")]
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            found = self.scan_text(text, "$", terms)
            if ("%" in text or "+" in text) and unquote_plus(text) != text:  # form-encoded bodies
                found += self.scan_text(unquote_plus(text), "$#urldecoded", terms)
            return found
        return self._walk(obj, "$", terms)

    def _walk(self, obj: object, path: str, terms: bool = True) -> list[Finding]:
        if isinstance(obj, str):
            return self.scan_text(obj, path, terms)
        if isinstance(obj, dict):
            out: list[Finding] = []
            for k, v in obj.items():
                sub = f"{path}.{k}"
                if isinstance(k, str):
                    out += self.scan_text(k, f"{sub}#key", terms)
                out += self._walk(v, sub, terms)
            return out
        if isinstance(obj, list):
            if obj and all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
                return self._scan_token_ids(obj, path, terms)
            out = []
            for i, v in enumerate(obj):
                out += self._walk(v, f"{path}[{i}]", terms)
            return out
        return []  # numbers, booleans, null carry no text

    def _scan_token_ids(self, ids: list[int], path: str, terms: bool = True) -> list[Finding]:
        if self.detokenize is None:
            msg = f"{len(ids)} token ids cannot be inspected without detokenize= (pass one to EgressGuard)"
            return [Finding("uninspectable", "token_ids", msg, 0, len(ids), path)]
        try:
            text = self.detokenize(list(ids))
        except Exception as e:  # a failing detokenizer means the tokens cannot be inspected
            msg = f"{len(ids)} token ids: detokenize failed ({type(e).__name__}: {e})"
            return [Finding("uninspectable", "token_ids", msg, 0, len(ids), path)]
        return self.scan_text(text, f"{path}#tokens", terms)

    def inspect(self, endpoint: str, body: dict | list | str | bytes) -> list[Finding]:
        """The choke point: scan `body` (unless mode is off), append one audit record, and in strict mode
        raise `PrivacyViolation` if anything was found. Returns the findings otherwise."""
        raw = encode_body(body)
        inspected = self.mode != "off"
        findings = self.scan_body(body) if inspected else []
        blocked = self.mode == "strict" and bool(findings)
        record = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "session": self.session_id,
            "endpoint": endpoint,
            "mode": self.mode,
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "inspected": inspected,
            "findings": [f.to_record() for f in findings],
            "blocked": blocked,
        }
        self.last_record = record
        if self.audit_log is not None:
            append_record(self.audit_log, record)  # an unwritable log raises: fail closed
        if blocked:
            raise PrivacyViolation(endpoint, findings)
        return findings

    def pending(self, text: str) -> bool:
        """True when ``text`` ends in the first letters of something private that the next tokens may
        complete: a private term (`PrivateTerms.pending`) or an exact identifier ("Zelph" of "Zelphine",
        3+ letters; single-word entries the guard only matches capitalized only when not all lower case)."""
        if self.terms.pending(text):
            return True
        m = _TRAILING_WORD.search(text)
        if m is None or len(m.group(1)) < 3:
            return False
        piece = m.group(1)
        low = piece.casefold()
        for key, entry in self._exact.items():
            if entry.cap_only and piece.islower():
                continue
            if any(len(word) > len(low) and word.startswith(low) for word in key.split(" ")):
                return True
        return False

    # ---- sanitizing -----------------------------------------------------------------------------------

    def sanitize(self, instruction: str, rewrite: Callable[[str], str] | None = None,
                 terms: bool = True) -> SanitizeResult:
        """Rewrite private facts in an instruction generically (see `sanitize_instruction`); ``terms=False``:
        without the private-term model (what the Android demo's JavaScript port does)."""
        found = [f for f in self.scan_text(instruction, terms=terms) if f.kind != "uninspectable"]
        found += [Finding("verbatim_span", s, instruction[a:b], a, b) for a, b, s in self._facts.find(instruction)]
        edits = []  # (start, end, replacement) with overlaps merged; the widest finding decides the replacement
        for f in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
            repl = self._replacement(f)
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
        result = SanitizeResult("".join(out), changes)
        if rewrite is not None:
            candidate = rewrite(result.text)
            leaked = [*self.scan_text(candidate, terms=terms), *self._facts.find(candidate)]
            if candidate != result.text and not leaked:
                result = SanitizeResult(candidate, [*changes, (result.text, candidate)])
        return result

    def _replacement(self, f: Finding) -> str:
        if f.kind == "identifier":
            entry = self._exact.get(_norm_phrase(f.match))
            return entry.replacement if entry else "[private]"
        if f.kind == "verbatim_span":
            return _FACT_REPLACEMENT
        if f.kind == "private_term":
            hits = self.terms.locate(f.match)
            return hits[0].term.placeholder if hits else TERM_PLACEHOLDERS["word"]
        return _PATTERN_REPLACEMENT.get(f.kind, "[private]")


def sanitize_instruction(
    instruction: str, context: PrivateContext, rewrite: Callable[[str], str] | None = None
) -> SanitizeResult:
    """Rewrite the private facts an instruction names, on-device and deterministically: the user's name ->
    "the user", their city -> "the city", e-mails/phones -> "[email]"/"[phone]", identifier-like tokens ->
    "[private]", and any run of >= 3 content words shared with a private fact or past writing ->
    "[private detail]" (every bracketed stand-in is in `PLACEHOLDERS`). `rewrite` (e.g. a local model) may then
    polish the text; its output is kept only if it re-introduces nothing private. `changes` lists every (original, replacement) so the user can check."""
    return EgressGuard(context, mode="off").sanitize(instruction, rewrite=rewrite)


# ---- helpers ----------------------------------------------------------------------------------------------


def _norm_phrase(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def _match_case(repl: str, before: str) -> str:
    if repl[0].isalpha() and (not before.strip() or re.search(r"[.!?:\n]\s*$", before)):
        return repl[0].upper() + repl[1:]  # "Madison will ..." -> "The user will ..."
    return repl


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


# ASCII letters lower-cased, digits and "_" kept (what \w+ matches), every other byte a space
_WORD_BYTES = bytes(c if chr(c).isalnum() or c == 95 else 32 for c in range(128)).lower() + bytes(range(128, 256))


_WORD_CHAR = re.compile(r"\w")


@lru_cache(maxsize=4096)
def _word_piece(ch: str) -> str | None:
    """A non-ASCII character as `content_segments` folds it: NFKC + casefold when a word character, else a
    space; None when its NFKC form holds a non-word character ("⑴" -> "(1)", Arabic ligatures with a space):
    then no pre-check is made."""
    if not _WORD_CHAR.match(ch):
        return " "
    folded = unicodedata.normalize("NFKC", ch).casefold()
    return folded if all(_WORD_CHAR.match(c) for c in folded) else None


def _words(piece: str) -> list[str] | None:
    """The casefolded ``\\w+`` words of a text, as `content_segments` sees them: each distinct non-ASCII
    character replaced once (C-level str.replace), then one bytes.translate for ASCII. None: no pre-check."""
    if not piece.isascii():
        if not unicodedata.is_normalized("NFKC", piece):
            return None  # NFKC would compose across characters (Hangul jamo, accents): no per-character view
        for ch in set("".join(_NON_ASCII.findall(piece))):
            rep = _word_piece(ch)
            if rep is None:
                return None
            piece = piece.replace(ch, rep)
    return piece.encode().translate(_WORD_BYTES).decode().split()


def _pieces(text: str) -> list[tuple[int, int]]:
    """``text`` cut into pieces of about `PIECE_CHARS` at a new line or after a sentence end (a period,
    ! or ? after a word of 4+ letters, so "Dr. Zelphine" stays whole): n-gram runs break there anyway."""
    out, a, n = [], 0, len(text)
    while n - a > PIECE_CHARS:
        m = _PIECE_CUT.search(text, a + PIECE_CHARS // 2, a + 2 * PIECE_CHARS)
        if m is None:
            break
        out.append((a, m.end()))
        a = m.end()
    out.append((a, n))
    return out


_PIECE_CUT = re.compile(r"\n|(?<=[^\W\d_]{4})[.!?](?=\s)")


def _outside(cands: list[Finding], cover: list[Finding], found: list[Finding]) -> list[Finding]:
    """``found`` plus the candidates that no finding of ``cover`` contains (sorted sweep, linear)."""
    spans = sorted((f.start, f.end) for f in cover)
    starts = [s for s, _ in spans]
    ends, best = [], -1
    for _, e in spans:  # running maximum of the ends: the widest cover starting at or before a position
        best = max(best, e)
        ends.append(best)
    out = list(found)
    for f in cands:
        i = bisect_right(starts, f.start) - 1
        if i < 0 or ends[i] < f.end:
            out.append(f)
    return out


_PATTERN_TRIGGER = re.compile(r"\d+|@")
_WINDOW_BEFORE, _WINDOW_AFTER = 80, 280  # longest pattern text before / after its first digit or "@"


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


def _pattern_findings(text: str, path: str) -> list[Finding]:
    out: list[Finding] = []
    for a, b in _pattern_windows(text):
        out += _pattern_findings_in(text, a, b, path)
    return out


def _pattern_findings_in(text: str, a: int, b: int, path: str) -> list[Finding]:
    """Pattern findings in ``text[a:b]``; lookbehinds still see the text before ``a`` (``pos`` semantics)."""
    out: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match) -> None:
        i = bisect_right(taken, (m.start(), len(text) + 1))
        if (i > 0 and taken[i - 1][1] > m.start()) or (i < len(taken) and taken[i][0] < m.end()):
            return  # overlaps a finding of an earlier (more specific) pattern
        insort(taken, (m.start(), m.end()))
        out.append(Finding(kind, f"pattern.{kind}", m.group(), m.start(), m.end(), path))

    for m in _EMAIL.finditer(text, a, b):
        add("email", m)
    for m in _IBAN.finditer(text, a, b):
        if _iban_ok(m.group()):
            add("iban", m)
    for m in _CARD.finditer(text, a, b):
        if _luhn_ok(re.sub(r"\D", "", m.group())):
            add("credit_card", m)
    for m in _SSN.finditer(text, a, b):
        add("national_id", m)
    for m in _PHONE.finditer(text, a, b):
        if _phone_ok(m.group()):
            add("phone", m)
    for m in _STREET.finditer(text, a, b):
        if not any(w.casefold() in _NON_CONTENT for w in m.group(1).split()):
            add("street_address", m)
    return out
