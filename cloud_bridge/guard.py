"""Egress privacy guard: the one choke point every outbound request body passes before it leaves the device.

The guard knows the session's private context and looks for it in outbound text:

* **verbatim spans**: runs of >= ``ngram`` (default 4) consecutive *content words* shared with a private text
  (profile facts, writing history, user-marked texts). Content words are lower-cased ``\\w+`` tokens minus English
  stop words and generic instruction vocabulary ("write", "blog", "post", "guide"...), so "at the local shelter"
  and "at local shelter" match alike and instruction boilerplate never does.
  Why 4 content words (about 5-8 raw words): measured on the 150 records of the authors' ``context_aware_dev``,
  each task instruction scanned against the 149 *other* users' contexts (22,350 unrelated pairs: any span is a
  false positive) and against its own user's context (instructions that really quote the user's facts):

  ===============  ==============================  ===================================
  n-gram           unrelated pairs with a span     own instructions with a span
  ===============  ==============================  ===================================
  2 content words  2361 (10.6 %)                   136/150
  3 content words   128 (0.57 %)                    77/150 (many are mere topic words)
  **4**             **5 (0.022 %)**                 **34/150**
  5 content words     2 (0.009 %)                   12/150
  6 content words     1 (0.004 %)                    1/150
  ===============  ==============================  ===================================

  (Plain 5-word n-grams without the stop/task-word filter: 127 unrelated pairs, 0.57 %.) 4 is the knee: 25x
  fewer false positives than 3, ~3x the recall of 5. The authors' generic system prompt flags 0/150 contexts
  from 3 up. The instruction *sanitizer* (non-blocking, shows its changes) uses 3 on profile facts.
* **identifiers**: short high-value profile values matched exactly as whole words, case-insensitively:
  Name (and each name part), Location (and each component), e-mail/phone/address-like fields, and any
  e-mail, phone or identifier-like token (letters and digits mixed, e.g. "Sk8-Track", "AB12CD") found in any
  private text. Single-word parts (a first name, a city) only match when not written all in lower case, so
  "Grace" the person is found but "grace" the word is not. Generic fields (Age, Gender) are never matched by
  value, and descriptive fields (Occupation, Personal_traits, Writing_style) only by long n-grams, so
  "Age: 34" does not flag every "34" and a "Friendly" trait does not flag "friendly".
* **patterns** (no context needed): e-mail addresses, phone numbers, card numbers (Luhn), IBANs (mod 97),
  US SSN-like numbers and street addresses.

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote_plus

from cogenesis.context import PrivateContext

from .audit import append_record

MODES = ("strict", "audit", "off")
DEFAULT_NGRAM = 4  # content words, see the module docstring for the measurement
SANITIZE_NGRAM = 3  # the sanitizer rewrites (never blocks), so it can afford more recall on facts
MIN_FACT_ITEM = 3  # a ";"-separated fact shorter than the n-gram still matches whole if it has >= 3 content words
MAX_GAP_WORDS = 3  # an n-gram may skip at most this many stop/task words between two content words
MAX_MATCH_CHARS = 200  # how much of a match an audit record keeps

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

# Profile field classes, by the words of the field name (case-insensitive, split on _ - and spaces).
_NAME_KEYS = {"name", "firstname", "lastname", "fullname", "surname", "nickname"}
_PLACE_KEYS = {"location", "city", "town", "hometown", "residence", "country", "state", "region"}
_CONTACT_KEYS = {
    "address", "street", "email", "mail", "phone", "mobile", "telephone", "tel", "username", "handle", "birthday",
    "birthdate", "dob", "ssn", "passport", "account", "iban", "postcode", "zip", "zipcode", "contact",
}
_SKIP_KEYS = {"age", "gender", "sex", "pronouns"}
_DESCRIPTIVE_KEYS = {"occupation", "job", "profession", "role", "traits", "personality", "style", "tone"}
_HONORIFICS = {"dr", "mr", "mrs", "ms", "mx", "prof", "jr", "sr", "ii", "iii", "phd", "md"}

_WORD = re.compile(r"\w+")
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
PLACEHOLDERS = frozenset({*_PATTERN_REPLACEMENT.values(), _FACT_REPLACEMENT, "[private]"})


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


def field_class(key: str) -> str:
    """'name' | 'place' | 'contact' | 'skip' | 'descriptive' | 'fact' for a profile field name."""
    parts = {p for p in re.split(r"[\s_\-.]+", key.casefold()) if p} | {re.sub(r"[\s_\-.]+", "", key.casefold())}
    for cls, keys in (("skip", _SKIP_KEYS), ("name", _NAME_KEYS), ("place", _PLACE_KEYS), ("contact", _CONTACT_KEYS),
                      ("descriptive", _DESCRIPTIVE_KEYS)):
        if parts & keys:
            return cls
    return "fact"


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

    def add(self, text: str, source: str, items: bool = False) -> None:
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
        self._exact: dict[str, _Entry] = {}
        self._exact_re: re.Pattern | None = None
        ctx = context or PrivateContext()
        for key, value in ctx.profile.items():
            if value and value.strip():
                self._add_profile_field(key, value)
        for i, s in enumerate(ctx.history):
            self._add_tokens(s.title, f"history[{i}].title")
            self._spans.add(s.title, f"history[{i}].title")
            self._add_tokens(s.text, f"history[{i}].text")
            self._spans.add(s.text, f"history[{i}].text")
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
        self._add_tokens(text, label)
        if exact:
            self._add_exact(text, label, "a private detail", cap_only=False)
        else:
            self._spans.add(text, label, items=True)
            self._facts.add(text, label, items=True)

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
        elif cls == "fact":
            self._spans.add(value, label, items=True)
            self._facts.add(value, label, items=True)
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
            self._exact_re = None

    def _exact_pattern(self) -> re.Pattern | None:
        if self._exact_re is None and self._exact:
            alts = sorted(self._exact, key=len, reverse=True)
            body = "|".join(r"\s+".join(re.escape(w) for w in k.split(" ")) for k in alts)
            self._exact_re = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
        return self._exact_re

    # ---- scanning -------------------------------------------------------------------------------------

    def scan_text(self, text: str, path: str = "") -> list[Finding]:
        """All findings in one string, ordered by position."""
        found: list[Finding] = []
        pat = self._exact_pattern()
        if pat is not None:
            for m in pat.finditer(text):
                entry = self._exact.get(_norm_phrase(m.group()))
                if entry is None or (entry.cap_only and m.group().islower()):
                    continue
                found.append(Finding("identifier", entry.source, m.group(), m.start(), m.end(), path))
        for start, end, src in self._spans.find(text):
            found.append(Finding("verbatim_span", src, text[start:end], start, end, path))
        ident = [(f.start, f.end) for f in found if f.kind == "identifier"]
        for f in _pattern_findings(text, path):
            if not any(s <= f.start and f.end <= e for s, e in ident):
                found.append(f)
        return sorted(set(found), key=lambda f: (f.start, f.end, f.kind))

    def scan_body(self, body: dict | list | str | bytes) -> list[Finding]:
        """Findings in a request body: every string in JSON (keys too), token-id lists via `detokenize`."""
        if isinstance(body, (dict, list)):
            return self._walk(body, "$")
        raw = encode_body(body)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return [Finding("uninspectable", "body", "binary body (not UTF-8) cannot be inspected", 0, len(raw), "$")]
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            found = self.scan_text(text, "$")
            if ("%" in text or "+" in text) and unquote_plus(text) != text:  # form-encoded bodies
                found += self.scan_text(unquote_plus(text), "$#urldecoded")
            return found
        return self._walk(obj, "$")

    def _walk(self, obj: object, path: str) -> list[Finding]:
        if isinstance(obj, str):
            return self.scan_text(obj, path)
        if isinstance(obj, dict):
            out: list[Finding] = []
            for k, v in obj.items():
                sub = f"{path}.{k}"
                if isinstance(k, str):
                    out += self.scan_text(k, f"{sub}#key")
                out += self._walk(v, sub)
            return out
        if isinstance(obj, list):
            if obj and all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
                return self._scan_token_ids(obj, path)
            out = []
            for i, v in enumerate(obj):
                out += self._walk(v, f"{path}[{i}]")
            return out
        return []  # numbers, booleans, null carry no text

    def _scan_token_ids(self, ids: list[int], path: str) -> list[Finding]:
        if self.detokenize is None:
            msg = f"{len(ids)} token ids cannot be inspected without detokenize= (pass one to EgressGuard)"
            return [Finding("uninspectable", "token_ids", msg, 0, len(ids), path)]
        try:
            text = self.detokenize(list(ids))
        except Exception as e:  # a failing detokenizer means the tokens cannot be inspected
            msg = f"{len(ids)} token ids: detokenize failed ({type(e).__name__}: {e})"
            return [Finding("uninspectable", "token_ids", msg, 0, len(ids), path)]
        return self.scan_text(text, f"{path}#tokens")

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

    # ---- sanitizing -----------------------------------------------------------------------------------

    def sanitize(self, instruction: str, rewrite: Callable[[str], str] | None = None) -> SanitizeResult:
        """Rewrite private facts in an instruction generically (see `sanitize_instruction`)."""
        found = [f for f in self.scan_text(instruction) if f.kind != "uninspectable"]
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
            leaked = [*self.scan_text(candidate), *self._facts.find(candidate)]
            if candidate != result.text and not leaked:
                result = SanitizeResult(candidate, [*changes, (result.text, candidate)])
        return result

    def _replacement(self, f: Finding) -> str:
        if f.kind == "identifier":
            entry = self._exact.get(_norm_phrase(f.match))
            return entry.replacement if entry else "[private]"
        if f.kind == "verbatim_span":
            return _FACT_REPLACEMENT
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


def _pattern_findings(text: str, path: str) -> list[Finding]:
    out: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match) -> None:
        if not any(s < m.end() and m.start() < e for s, e in taken):
            taken.append((m.start(), m.end()))
            out.append(Finding(kind, f"pattern.{kind}", m.group(), m.start(), m.end(), path))

    for m in _EMAIL.finditer(text):
        add("email", m)
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            add("iban", m)
    for m in _CARD.finditer(text):
        if _luhn_ok(re.sub(r"\D", "", m.group())):
            add("credit_card", m)
    for m in _SSN.finditer(text):
        add("national_id", m)
    for m in _PHONE.finditer(text):
        if _phone_ok(m.group()):
            add("phone", m)
    for m in _STREET.finditer(text):
        if not any(w.casefold() in _NON_CONTENT for w in m.group(1).split()):
            add("street_address", m)
    return out
