"""Egress privacy guard: the one choke point every outbound request body passes before it leaves the device.

The guard knows the session's private context and looks for it in outbound text:

* **verbatim spans** (`cogenesis.cloud_bridge.spans`, where the measured false-positive tables are): runs of
  >= ``ngram`` (default 4) consecutive *content words* shared with a private text (profile facts, writing
  history, user-marked texts), content words being ``\\w+`` tokens minus stop words and generic instruction
  vocabulary; and runs of **8 consecutive words of any kind** (**6** within one ";"-separated item of a
  profile fact field), which catch the copied sentence made mostly of stop words.
* **identifiers** (`cogenesis.cloud_bridge.identifiers`): short high-value profile values (Name, Location,
  contact fields and their parts) and any e-mail, phone or identifier-like token of a private text ("Sk8-Track",
  "AB12CD"), matched exactly as whole words, case-insensitively; single-word parts ("Grace") only when not
  written all in lower case.
* **patterns** (`cogenesis.cloud_bridge.patterns`, no context needed): e-mail addresses, phone numbers, card
  numbers (Luhn), IBANs (mod 97), US SSN-like numbers and street addresses.
* **private terms** (`cogenesis.cloud_bridge.terms`): every rare word, name, code name, number, date and
  address of the context, matched on normalized text (case, accents, zero-width characters, full-width
  letters, hyphens and number/date formats folded), kind ``private_term``. The sanitizer
  (`cogenesis.cloud_bridge.sanitize`) replaces them with "[NAME]", "[PRIVATE]", "[NUMBER]", "[DATE]",
  "[EMAIL]"; `pending` says when a text ends in the first letters of one (the logits modes hold such a step
  back).

The scan is linear in the body size (long strings are cut at sentence ends and a piece is matched only when
it holds enough private words, see `cogenesis.cloud_bridge.pieces`; patterns run around digits and "@" only):
a 1 MB body in ~0.1-0.2 s here (``bench/guard_scan.py``), where the per-pattern overlap checks used to make
digit-heavy bodies quadratic.

Modes: ``strict`` raises `PrivacyViolation` on any finding (nothing is sent), ``audit`` records the findings
and lets the request go, ``off`` does not inspect and only logs the request. Every call appends one record to
the audit log (see `cogenesis.cloud_bridge.audit`). Token-id payloads (``{"prompt": [12, 345]}``) are scanned
through ``detokenize``; without it they cannot be inspected and strict mode refuses them.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote_plus

from cogenesis.cloud_bridge.fields import field_class

from cogenesis.core.context import PrivateContext

from .audit import append_record
from .identifiers import IdentifierIndex
from .patterns import pattern_matches
from .pieces import PIECE_CHARS, _pieces, _words
from .sanitize import (
    _FACT_REPLACEMENT,
    _PATTERN_REPLACEMENT,
    PLACEHOLDERS,  # noqa: F401
    SANITIZE_NGRAM,
    SanitizeResult,
    rewrite_findings,
)
from .spans import (
    _NON_CONTENT,  # noqa: F401
    DEFAULT_NGRAM,
    ITEM_RAW_NGRAM,
    MAX_GAP_WORDS,  # noqa: F401
    MIN_FACT_ITEM,  # noqa: F401
    RAW_NGRAM,
    STOPWORDS,  # noqa: F401
    TASK_WORDS,  # noqa: F401
    _fold_word,  # noqa: F401
    _RunIndex,
    _SpanIndex,
    content_segments,  # noqa: F401
    content_tokens,
    raw_words,
)
from .terms import PLACEHOLDER as TERM_PLACEHOLDERS
from .terms import PrivateTerms

MODES = ("strict", "audit", "off")
MAX_MATCH_CHARS = 200  # how much of a match an audit record keeps
LOCATE_MAX = 100_000  # longer strings: private terms are reported at offsets of the normalized text

_TRAILING_WORD = re.compile(r"(\w+)$")


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


def encode_body(body: dict | list | str | bytes) -> bytes:
    """The exact bytes to send for a body; hash and send these so the audit sha256 matches the wire."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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
        self._idents = IdentifierIndex()
        ctx = context or PrivateContext()
        self.terms = PrivateTerms.from_context(ctx)
        for key, value in ctx.profile.items():
            if value and value.strip():
                self._add_profile_field(key, value)
        for i, s in enumerate(ctx.history):
            self._idents.add_tokens(s.title, f"history[{i}].title")
            self._spans.add(s.title, f"history[{i}].title")
            self._runs.add(s.title, f"history[{i}].title")
            self._idents.add_tokens(s.text, f"history[{i}].text")
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
        self._idents.add_tokens(text, label)
        if exact:
            self._idents.add(text, label, "a private detail", cap_only=False)
        else:
            self._spans.add(text, label, items=True)
            self._facts.add(text, label, items=True)
            self._runs.add(text, label)

    def _add_profile_field(self, key: str, value: str) -> None:
        label = f"profile.{key}"
        cls = field_class(key)
        self._idents.add_tokens(value, label)
        self._idents.add_profile_field(key, value, cls, label)
        if cls == "descriptive":
            self._spans.add(value, label)
            self._runs.add(value, label)
        elif cls == "fact":
            self._spans.add(value, label, items=True)
            self._facts.add(value, label, items=True)
            self._runs.add(value, label)
            for item in value.split(";"):
                self._item_runs.add(item, label)
        # "skip" fields (Age, Gender): only identifier-like tokens, added above

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
        out = [Finding("identifier", src, match, a + start, a + end, path)
               for src, match, start, end in self._idents.find(piece, words)]
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
        return self._idents.pending(m.group(1))

    # ---- sanitizing -----------------------------------------------------------------------------------

    def sanitize(self, instruction: str, rewrite: Callable[[str], str] | None = None,
                 terms: bool = True) -> SanitizeResult:
        """Rewrite private facts in an instruction generically (see `sanitize_instruction`); ``terms=False``:
        without the private-term model (what the Android demo's JavaScript port does)."""
        found = [f for f in self.scan_text(instruction, terms=terms) if f.kind != "uninspectable"]
        found += [Finding("verbatim_span", s, instruction[a:b], a, b) for a, b, s in self._facts.find(instruction)]
        result = rewrite_findings(instruction, found, self._replacement)
        if rewrite is not None:
            candidate = rewrite(result.text)
            leaked = [*self.scan_text(candidate, terms=terms), *self._facts.find(candidate)]
            if candidate != result.text and not leaked:
                result = SanitizeResult(candidate, [*result.changes, (result.text, candidate)])
        return result

    def _replacement(self, f: Finding) -> str:
        if f.kind == "identifier":
            return self._idents.replacement(f.match)
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


def _pattern_findings(text: str, path: str) -> list[Finding]:
    """The pattern detectors' matches in ``text`` (see `cogenesis.cloud_bridge.patterns`) as findings."""
    return [Finding(kind, f"pattern.{kind}", match, start, end, path) for kind, match, start, end in pattern_matches(text)]


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
