"""An independent leak detector: did a private fact reach the cloud? Measured on what was really sent.

Used by the privacy fuzz bench (``bench/privacy_fuzz.py``), its test slice and the experiment's leakage
column. It deliberately shares NO code with the egress guard (``cogenesis.cloud_bridge.guard``) or its term
model (``cogenesis.cloud_bridge.terms``): a detector that reuses the guard's rules would miss exactly what the
guard misses. ``tests/test_leakcheck.py`` checks by AST that this module imports neither.

Pipeline:

1. :func:`decode_body`: every JSON string of an outbound body (keys too), every number, and every list of
   ints through the tokenizer (a token-id prompt such as ``prefix + drafts`` decodes as ONE text, so a name
   split across the prefix/draft boundary is still whole). A body that is not JSON is scanned as text.
2. :func:`normalize`: NFKC, casefold (``ß`` -> ``ss``), format characters (Unicode category Cf: zero-width
   spaces/joiners, soft hyphen, bidi marks) removed, accents stripped (NFKD, combining marks dropped), every
   non-alphanumeric character folded to a space, spaces collapsed. Both sides of a match go through it.
3. :func:`find_canaries`: each :class:`Canary` has canonical ``forms`` computed here from its ``kind`` and
   ``value``; a form matches on word boundaries of the normalized text ("Pemberlot" is found in "pemberlot's",
   "PEMBERLOT", "Pem\\u200bberlot", full-width letters, "Pemberlot-Smith", not in "Pemberlots").

Kinds and their canonical forms:

* ``name`` (people, pets, places): the whole name and each part of >= 3 letters (particles such as "van",
  "de" excluded). Also a *partial* hit: a text that ENDS in the first >= 4 letters of a name part (a name
  being spelled out token by token, as a generated prefix sent to the cloud would be).
* ``term`` (e.g. a lower-case project code name "marigold ferry"): the whole phrase only.
* ``code`` (alphanumeric identifiers): the phrase, and the phrase without spaces ("qx1234 ab" / "qx1234ab").
* ``email``: the normalized address ("jo.b@x.example" -> "jo b x example").
* ``phone``: digits only; a text matches when a run of digits in it (digits separated by single spaces,
  i.e. any punctuation) contains the last 7 digits of the number, so "+44 7700 900123" matches
  "07700 900123" and "(415) 555-0199" matches "415.555.0199".
* ``date``: ISO ``YYYY-MM-DD`` plus the month-day ``--MM-DD``. Texts are parsed for "14 March 1987",
  "14th of March, 1987", "March 14, 1987", "Mar 14th", "1987-03-14", "14/03/1987" and "03/14/1987" (numeric
  day/month orders are ambiguous: both readings are kept). A named month and day without a year still leaks
  a birthday, so it matches the month-day form; two-digit years are not parsed.
* ``address``: "42 Wren Hollow Lane" -> "42 wren hollow ln" and "wren hollow ln" (street suffixes are
  abbreviated the same way in the text: Street/St, Avenue/Ave, Lane/Ln...).
* ``passage``: verbatim copying of a longer private text: any ``ngram`` consecutive normalized words of it
  (default 8). n-grams that also occur in ``public`` texts (e.g. the instruction the user typed) are ignored.

All views of a text are built once per text and matching is substring search on them (plus one pass over
the tokens for passages): linear in the size of what was sent.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property

KINDS = ("name", "term", "code", "email", "phone", "date", "address", "passage")
PASSAGE_NGRAM = 8
PARTIAL_MIN = 4  # letters of a name part a text must end in to count as a partial hit
PHONE_KEY_DIGITS = 7
NAME_PART_MIN = 3
PARTICLES = frozenset({"van", "von", "der", "den", "del", "della", "das", "dos", "the", "and", "bin", "ibn", "mac"})

# ---- normalization ---------------------------------------------------------------------------------------


class _FoldTable(dict):
    """str.translate table built lazily: Cf and combining marks deleted, non-alphanumerics -> space,
    Unicode decimal digits -> ASCII digits, everything else kept."""

    def __missing__(self, code: int):
        ch = chr(code)
        cat = unicodedata.category(ch)
        if cat == "Cf" or cat.startswith("M"):
            out = None
        elif cat == "Nd":
            out = str(unicodedata.decimal(ch, 0))
        elif ch.isalnum():
            out = ch
        else:
            out = " "
        self[code] = out
        return out


_FOLD = _FoldTable()


def normalize(text: str) -> str:
    """NFKC + casefold + Cf removed + accents stripped + non-alphanumerics folded to single spaces."""
    s = unicodedata.normalize("NFKC", text).casefold()
    s = unicodedata.normalize("NFKD", s).translate(_FOLD)
    return " ".join(s.split())


def digits_only(text: str) -> str:
    """The decimal digits of ``text`` (any script), as ASCII."""
    return "".join(c for c in normalize(text) if c.isdigit())


# ---- dates -----------------------------------------------------------------------------------------------

_MONTHS = {"january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4, "may": 5,
           "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9, "sept": 9, "sep": 9,
           "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12}
_M = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + ")"
_D = r"(\d{1,2})(?:st|nd|rd|th)?"
_Y = r"(\d{4})"
_DMY = re.compile(rf"\b{_D} (?:of )?{_M}(?: {_Y})?\b")
_MDY = re.compile(rf"\b{_M} (?:the )?{_D}(?: {_Y})?\b")
_YMD = re.compile(r"\b(\d{4}) (\d{1,2}) (\d{1,2})\b")
_NUM = re.compile(r"\b(\d{1,2}) (\d{1,2}) (\d{4})\b")
_MN, _DN = "(?:" + _M[1:], r"\d{1,2}(?:st|nd|rd|th)?"
_NAMED_DATE = re.compile(rf"\b(?:{_DN} (?:of )?{_MN}|{_MN} (?:the )?{_DN})\b")  # a day and a named month


def _iso(y: int | None, m: int, d: int) -> list[str]:
    """ISO forms of a date (full and month-day), [] when it is not a valid date."""
    try:
        date(y if y is not None else 2000, m, d)  # 2000: a leap year, so 29 February is valid without a year
    except ValueError:
        return []
    md = f"--{m:02d}-{d:02d}"
    return [f"{y:04d}-{m:02d}-{d:02d}", md] if y is not None else [md]


def dates_in(norm: str) -> set[str]:
    """Every date mentioned in a normalized text, as ISO ``YYYY-MM-DD`` and ``--MM-DD`` strings."""
    out: set[str] = set()
    for d, m, y in _DMY.findall(norm):
        out.update(_iso(int(y) if y else None, _MONTHS[m], int(d)))
    for m, d, y in _MDY.findall(norm):
        out.update(_iso(int(y) if y else None, _MONTHS[m], int(d)))
    for y, m, d in _YMD.findall(norm):
        out.update(_iso(int(y), int(m), int(d)))
    for a, b, y in _NUM.findall(norm):
        out.update(_iso(int(y), int(b), int(a)))  # day/month/year
        out.update(_iso(int(y), int(a), int(b)))  # month/day/year
    return out


# ---- addresses -------------------------------------------------------------------------------------------

_SUFFIX = {"street": "st", "avenue": "ave", "av": "ave", "lane": "ln", "road": "rd", "drive": "dr", "boulevard": "blvd",
           "court": "ct", "place": "pl", "terrace": "ter", "crescent": "cres", "close": "cl", "square": "sq",
           "parkway": "pkwy", "highway": "hwy", "circle": "cir", "way": "way", "row": "row", "gardens": "gdns",
           "grove": "gr", "mews": "mews", "alley": "aly", "trail": "trl", "strasse": "str", "weg": "weg",
           "gasse": "gasse", "platz": "pl"}
_SUFFIX_RE = re.compile(r"\b(" + "|".join(sorted(_SUFFIX, key=len, reverse=True)) + r")\b")
_ADDRESS = re.compile(r"\b(\d{1,5}[a-z]?) ((?:[a-z0-9]+ ){0,3}?[a-z0-9]+ )(" +
                      "|".join(sorted(set(_SUFFIX.values()) | set(_SUFFIX), key=len, reverse=True)) + r")\b")


_ADDRESS_RAW = re.compile(r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][\w'\u2019.-]*\s+){1,3}(?:" +
                          "|".join(s.title() for s in sorted(set(_SUFFIX.values()) | set(_SUFFIX), key=len,
                                                             reverse=True)) + r")\b\.?")
"""An address as people write it: a house number, 1-3 capitalized words, a capitalized street suffix."""


def _abbreviate(norm: str) -> str:
    return _SUFFIX_RE.sub(lambda m: _SUFFIX[m.group(1)], norm)


# ---- canaries --------------------------------------------------------------------------------------------


def _forms(kind: str, value: str) -> tuple[str, ...]:
    n = normalize(value)
    if kind == "name":
        parts = [p for p in n.split() if len(p) >= NAME_PART_MIN and p not in PARTICLES and not p.isdigit()]
        out = [n, *parts]
    elif kind == "code":
        out = [n, n.replace(" ", "")]
    elif kind == "phone":
        out = [digits_only(value)]
    elif kind == "date":
        found = dates_in(n)
        if not found:
            raise ValueError(f"not a date: {value!r}")
        full = sorted(f for f in found if not f.startswith("--"))
        out = [*full, *sorted({"--" + f[5:] for f in full})] if full else sorted(found)
    elif kind == "address":
        a = _abbreviate(n)
        m = _ADDRESS.search(a)
        out = [a] if m is None else [m.group(0), (m.group(2) + m.group(3)).strip()]
    else:  # term, email, passage
        out = [n]
    return tuple(dict.fromkeys(f for f in out if f))


@dataclass(frozen=True)
class Canary:
    """A private fact to look for. ``forms`` (canonical, see the module docstring) are computed from ``kind``
    and ``value`` when not given (forms that are given are used as they are: pass canonical ones, e.g. a
    name without its parts that are ordinary words); ``label`` says where it came from or its shape."""

    kind: str
    value: str
    forms: tuple[str, ...] = ()
    label: str = ""
    ngram: int = 0  # passages: words per n-gram (0 = PASSAGE_NGRAM, shorter passages match whole)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown canary kind {self.kind!r}; one of {', '.join(KINDS)}")
        forms = self.forms or _forms(self.kind, self.value)
        if not forms:
            raise ValueError(f"canary {self.value!r} has no searchable form")
        object.__setattr__(self, "forms", tuple(forms))


def guess_kind(value: str) -> str:
    """A canary kind for a bare string: email, phone, date, address, code, name (capitalized) or term."""
    n = normalize(value)
    if "@" in value and "." in value.split("@")[-1]:
        return "email"
    if dates_in(n) and len(n.split()) <= 5:
        return "date"
    d = digits_only(value)
    if len(d) >= PHONE_KEY_DIGITS and re.fullmatch(r"[\d\s().+\-/]+", value.strip()):
        return "phone"
    if _ADDRESS_RAW.search(value):
        return "address"
    if any(c.isdigit() for c in n) and any(c.isalpha() for c in n):
        return "code"
    words = value.split()
    if words and all(w[:1].isupper() for w in words):
        return "name"
    return "term"


@dataclass(frozen=True)
class Hit:
    """A canary found in text ``text_index`` of the texts searched, by ``form`` (the n-gram for a passage)."""

    canary: Canary
    form: str
    text_index: int
    partial: bool = False  # only the first letters of a name, at the very end of the text


class _View:
    """The normalized views of one text, built on first use."""

    def __init__(self, text: str):
        self.norm = normalize(text)
        self.padded = f" {self.norm} "

    @cached_property
    def address(self) -> str:
        return f" {_abbreviate(self.norm)} "

    @cached_property
    def digit_runs(self) -> str:
        return "|".join(m.group(0).replace(" ", "") for m in re.finditer(r"\d+(?: \d+)*", self.norm))

    @cached_property
    def dates(self) -> set[str]:
        return dates_in(self.norm)

    @cached_property
    def tokens(self) -> list[str]:
        return self.norm.split()


def _match(c: Canary, v: _View) -> str | None:
    if c.kind == "phone":
        return next((f for f in c.forms if len(f) >= PHONE_KEY_DIGITS and f[-PHONE_KEY_DIGITS:] in v.digit_runs), None)
    if c.kind == "date":
        return next((f for f in c.forms if f in v.dates), None)
    hay = v.address if c.kind == "address" else v.padded
    return next((f for f in c.forms if f" {f} " in hay), None)


def _partial(c: Canary, v: _View) -> str | None:
    if c.kind != "name" or not v.tokens:
        return None
    last = v.tokens[-1]
    if len(last) < PARTIAL_MIN:
        return None
    return next((p for p in c.forms[1:] or c.forms if len(p) > len(last) and p.startswith(last)), None)


def _grams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def find_canaries(texts: Iterable[str], canaries: Sequence[Canary], public: Iterable[str] = (),
                  partial: bool = True) -> list[Hit]:
    """The canaries found in ``texts``: one :class:`Hit` per canary found (a full match wins over a partial
    one), in the order of ``canaries``. ``public``: texts whose n-grams do not count for passages.
    ``partial``: report names whose first letters end a text (see the module docstring)."""
    views = [_View(t) for t in texts if t]
    found: dict[int, Hit] = {}
    # passages: one n-gram index over all of them, one pass over each text's tokens per n-gram size
    by_n: dict[int, dict[tuple[str, ...], list[int]]] = {}
    pub = [normalize(t).split() for t in public]
    for i, c in enumerate(canaries):
        if c.kind != "passage":
            continue
        toks = c.forms[0].split()
        n = min(c.ngram or PASSAGE_NGRAM, len(toks))
        if n < 1:
            continue
        grams = _grams(toks, n)
        for p in pub:
            grams -= _grams(p, n)
        idx = by_n.setdefault(n, {})
        for g in grams:
            idx.setdefault(g, []).append(i)
    for ti, v in enumerate(views):
        for i, c in enumerate(canaries):
            if c.kind == "passage" or (i in found and not found[i].partial):
                continue
            f = _match(c, v)
            if f is not None:
                found[i] = Hit(c, f, ti)
            elif partial and i not in found and (f := _partial(c, v)) is not None:
                found[i] = Hit(c, f, ti, partial=True)
        for n, idx in by_n.items():
            toks = v.tokens
            for j in range(len(toks) - n + 1):
                ids = idx.get(tuple(toks[j : j + n]))
                if ids:
                    for i in ids:
                        found.setdefault(i, Hit(canaries[i], " ".join(toks[j : j + n]), ti))
    return [found[i] for i in sorted(found)]


# ---- outbound bodies -------------------------------------------------------------------------------------


def decode_body(body: bytes | str | Mapping | list, detokenize: Callable[[list[int]], str] | None = None
                ) -> list[str]:
    """Every text in an outbound body: JSON strings (keys too), numbers, and each list of ints decoded through
    ``detokenize`` (the token ids of a prompt; skipped without a tokenizer). Not JSON: the body as text."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, RecursionError):
            return [body]
    out: list[str] = []

    def walk(o) -> None:
        if isinstance(o, str):
            out.append(o)
        elif isinstance(o, bool) or o is None:
            return
        elif isinstance(o, (int, float)):
            out.append(str(o))
        elif isinstance(o, Mapping):
            for k, v in o.items():
                out.append(str(k))
                walk(v)
        elif isinstance(o, (list, tuple)):
            if o and all(isinstance(x, int) and not isinstance(x, bool) for x in o):
                # token ids: only their text counts (the ids side by side would read as one long digit run)
                if detokenize is not None:
                    try:
                        out.append(detokenize(list(o)))
                    except Exception:  # not token ids after all (out of range...): each number on its own
                        out.extend(str(x) for x in o)
            else:
                for x in o:
                    walk(x)

    walk(body)
    return out


def decode_capture(record: Mapping, detokenize: Callable[[list[int]], str] | None = None) -> list[str]:
    """The texts of one request a server captured (``read_capture``): body, path, query and header values."""
    texts = decode_body(record.get("body", b""), detokenize)
    texts += [str(record.get("path", "")), str(record.get("query", ""))]
    texts += [str(v) for k, v in (record.get("headers") or {}).items() if str(k).lower() != "authorization"]
    return [t for t in texts if t]


# ---- facts of a context ----------------------------------------------------------------------------------

_QUOTED = re.compile(r"(?<![\w])['\"\u2018\u201c]([A-Z][^'\"\u2019\u201d\n]{1,40}?)['\"\u2019\u201d](?![\w])")
_CAP = r"[A-Z][\w\u2019'-]*"
_NAMED = re.compile(rf"\b(?:named|called|nicknamed)\s+['\"\u2018\u201c]?({_CAP}(?:\s+(?:&\s+|and\s+|of\s+)?{_CAP}){{0,3}})")
_DISTINCT_WORD = re.compile(r"\w*(?:[a-z][A-Z]|\d)\w*")  # "BerlinDJ", "TechTalk", "R2D2": not a dictionary word
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_PHONE_RE = re.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,}\d(?![\w])")
_CODE_RE = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{3,}[A-Za-z0-9](?![\w-])")
_ORDINAL = re.compile(r"^(?:\d+(?:st|nd|rd|th|s|am|pm|k|m|g|gb|mb|kg|km|mm|cm|ml|h|min|x|d)?|[a-z]+)$", re.I)
"""A piece of a code candidate that does not make it an identifier: a number, an ordinal/unit, a word."""


def extract_canaries(text: str, label: str = "") -> list[Canary]:
    """Identifier-like facts of a private text: "named X" proper names, quoted capitalized titles of 2-4 words
    (or one word with inner capitals/digits: 'BerlinDJ'; a quoted 'Personal' is just a word),
    e-mails, phone-like numbers (>= 7 digits), dates with a year or a named month, street addresses and
    letter+digit codes (>= 5 characters, not "20th" or "10am")."""
    out: dict[tuple[str, str], Canary] = {}

    def add(kind: str, value: str) -> None:
        try:
            c = Canary(kind, value, label=label)
        except ValueError:
            return
        out.setdefault((kind, c.forms[0]), c)

    for m in _QUOTED.finditer(text):  # a quoted title of 2-4 words, or one word that is no dictionary word
        words = m.group(1).split()
        if 2 <= len(words) <= 4 or (len(words) == 1 and _DISTINCT_WORD.fullmatch(words[0])):
            add("term", m.group(1))
    for m in _NAMED.finditer(text):
        add("term", m.group(1).rstrip("'\u2019"))
    for m in _EMAIL_RE.finditer(text):
        add("email", m.group(0))
    for m in _PHONE_RE.finditer(text):
        if len(digits_only(m.group(0))) >= PHONE_KEY_DIGITS and not _looks_like_year_span(m.group(0)):
            add("phone", m.group(0))
    n = normalize(text)
    full = {d for d in dates_in(n) if not d.startswith("--")}
    for d in sorted(full):
        add("date", d)
    for m in _NAMED_DATE.finditer(n):  # a month and day without a year (a birthday), unless already dated
        if not ({"--" + d[5:] for d in full} & dates_in(m.group(0))):
            add("date", m.group(0))
    for m in _ADDRESS_RAW.finditer(text):
        add("address", m.group(0))
    for m in _CODE_RE.finditer(text):
        if not all(_ORDINAL.match(p) or not p for p in m.group(0).split("-")):
            add("code", m.group(0))
    return list(out.values())



def _looks_like_year_span(s: str) -> bool:
    """"2019-2023", "1999 2000": year ranges are not phone numbers."""
    return bool(re.fullmatch(r"\s*(?:19|20)\d\d\s*[-\s]\s*(?:19|20)\d\d\s*", s))


@dataclass
class Scan:
    """What one set of outbound requests carried: the texts decoded and the canaries found in them."""

    texts: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    @property
    def found(self) -> list[Canary]:
        return [h.canary for h in self.hits]


def scan_bodies(bodies: Iterable[bytes | str], canaries: Sequence[Canary],
                detokenize: Callable[[list[int]], str] | None = None, public: Iterable[str] = ()) -> Scan:
    """Decode every body and search it for ``canaries`` (see :func:`find_canaries`)."""
    texts = [t for b in bodies for t in decode_body(b, detokenize)]
    return Scan(texts, find_canaries(texts, canaries, public=public))
