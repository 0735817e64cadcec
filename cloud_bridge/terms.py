"""Private-term model: every word, name, number and date of a private context that could identify the user.

Built once per session on the device from the private context (profile, writing history, private texts), then
used by the egress guard, the instruction sanitizer and the logits modes' prefix policy. What is a term:

* **rare words**: a word of the context whose English Zipf frequency (``wordfreq``, large list) is below
  ``ZIPF_RARE``, or that mixes letters and digits ("jdoe87", "b12"): pet names, invented names, jargon.
  Words wordfreq barely knows (Zipf < 1.5) of >= ``SUBSTRING_MIN`` letters also match inside longer words
  ("#TeamPemberlot", "Pemberlots").
* **proper nouns**: a capitalized word that does not start a sentence, list item or title-case line, with a
  Zipf frequency below ``ZIPF_PROPER`` ("Clara", "Hollis"), and runs of two or more capitalized words
  ("Rowan Close", "Azure Retreat") when at least one of them is a proper-noun term.
* **named things**: the 1-3 words after "named", "nicknamed", "code name", "alias"... whatever their frequency
  ("code name marigold ferry" -> "marigold ferry"); after "project" / "called" when they are two or hold a rare
  word ("project ferry citrus", not "project proposal"); after a relation ("my neighbour bartholomew",
  "my dog Max") the name and its parts, when they are no common words (a capitalized one only matches
  capitalized when it is fairly common: "Max", "Grace").
* **profile identities**: the Name field and each name part, each Location component, contact fields. Parts
  that are common words ("Grace", "Rose") only match capitalized (``cased``), so "grace" the word does not.
* **numbers**: every digit run of >= 7 digits (phones, accounts, IDs) keyed by its last 7 digits, so
  ``+44 7700 900123`` and ``07700 900123`` match; e-mail addresses and street addresses as phrases.
* **dates**: every date of the context, keyed in ISO form; "14 March 1987", "March 14th, 1987", "1987-03-14",
  "14/03/1987" and "03/14/1987" are one date. A full date also matches by month and day ("March 14").

Matching runs on **normalized** text: NFKD, zero-width / format characters and combining marks removed,
casefolded (``ß`` -> ``ss``), every non-alphanumeric character folded to one space. So "PEMBERLOT",
"Pem\\u200bberlot", full-width "Ｐｅｍｂｅｒｌｏｔ", NFD accents and "Pemberlot-Smith" are all "pemberlot". The
search is one Aho-Corasick automaton (``pyahocorasick``) over the normalized text plus one regex pass for
numbers and dates: linear in the body size (a 1 MB body: see ``tests/test_private_terms.py``).

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

import math
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from cogenesis.cloud_bridge.fields import field_class

ZIPF_RARE = 3.0  # words rarer than this (per billion words: 10^3 = 1 per million) are private terms
ZIPF_PROPER = 4.5  # a capitalized word mid-sentence rarer than this is a name ("my sister Clara")
ZIPF_PROPER_RUN = 4.0  # the same inside a run of capitalized words ("Volunteer Scheduling App")
SUBSTRING_MIN = 5  # invented words this long also match inside longer words ("#TeamPemberlot")
ZIPF_SUBSTRING = 1.5  # ... when rarer than this: "profess" (2.9) must not match inside "professional"
NUMBER_KEY_DIGITS = 7  # digit runs this long are identifiers; matched on their last 7 digits
WEAK_CUE_ZIPF = 4.5  # "called X" / "project X" / "my neighbour x": the words of X are rarer than this
ZIPF_WEAK_SINGLE = 3.5  # ... and a one-word X after "called" / "project" rarer than this
MIN_WORD = 3  # shorter words are never terms on their own (except name parts of >= 2 letters)

KINDS = ("name", "word", "phrase", "number", "date", "email")
_STOP = frozenset(
    """a an the and or nor but if then of to in on at by for with from as into onto about over under after before
    is are was were be been am this that these those it its i me my we our you your he him his she her they them
    their what which who how when where why not no so than too very can will just do does did have has had
    should would could may might must also all any some such only own same here there up out off""".split()
)
# "named X": X is a name whatever its frequency; "called X" / "project X" only when X has a rarer word
_HONORIFICS = frozenset("dr mr mrs ms mx prof jr sr ii iii iv phd md esq sir dame rev".split())
_RELATIONS = ("neighbou?r|sister|brother|friend|aunt|uncle|cousin|son|daughter|wife|husband|partner|fianc[eé]e?|boss"
              "|colleague|co-?worker|grand(?:mother|father|ma|pa|son|daughter)|mom|mum|dad|mother|father|niece"
              "|nephew|god(?:mother|father|son|daughter)|room-?mate|flatmate|landlord|landlady|doctor|dentist"
              "|therapist|teacher|coach|mentor|manager|assistant|baby|kid|child|pet|dog|cat|puppy|kitten")
# "named X": X is a name whatever its frequency; "my sister X": X when it is no common word (a capitalized X when
# it is no very common one: "my dog Max"); "called X" / "project X": X of two words or holding a rare word
# ("project marigold ferry", not "project proposal"); every X stops at a stop word or punctuation.
_CUES = re.compile(rf"\b(?:(?P<strong>named|nicknamed|code[\s-]?named?|codename|alias|aka|handle|username)"
                   rf"|(?P<rel>(?:my|our|his|her|their)\s+(?:best\s+|older\s+|younger\s+|little\s+|big\s+)?"
                   rf"(?:{_RELATIONS}))|called|project)"
                   r"(?:\s+(?:is|was|will\s+be)|\s*:)?\s+"
                   r"(?=[\"'\u201c\u2018]?(?P<x>[^\W_][\w'\u2019-]*(?:[ \t]+[^\W_][\w'\u2019-]*){0,2}))",
                   re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# a quoted title of 2-8 words ("Organizes quarterly 'Music and Medicine' charity events"): the event's, book's or
# album's name, private whatever its words' frequency; a 1.5B-cloud logits reply sent "Music and Medicine" (dev
# 10_9_3) when its words were all common. Matched capitalized, as a title is written.
_QUOTED_TITLE = re.compile(r"(?<!\w)[\"'\u201c\u2018](?P<t>[A-Z][\w'\u2019-]*(?:[ \t]+[\w'\u2019-]+){1,7})"
                           r"[\"'\u201d\u2019](?!\w)")
_SUFFIXES = (("street", "st"), ("avenue", "ave", "av"), ("road", "rd"), ("boulevard", "blvd"), ("lane", "ln"),
             ("drive", "dr"), ("court", "ct"), ("close", "cl"), ("place", "pl"), ("terrace", "ter", "terr"),
             ("way",), ("crescent", "cres"), ("parkway", "pkwy"), ("square", "sq"), ("gardens", "gdns"), ("row",),
             ("mews",), ("hill",))
_SUFFIX_FORMS = {form: forms for forms in _SUFFIXES for form in forms}  # every spelling of a street suffix
_STREET = re.compile(
    r"\b\d{1,5}[a-z]?\s+((?:[^\W\d_][\w'-]*\s+){1,3}(?:" + "|".join(sorted(_SUFFIX_FORMS, key=len, reverse=True))
    + r"))\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\u2022*#>|(\[\"\u201c-])\s*$")
_MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MON = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ORD = r"(?:st|nd|rd|th)?"
# dates on normalized text (lower case, punctuation folded to single spaces)
_DATE_DMY = re.compile(rf"\b(\d{{1,2}}){_ORD} (?:of )?({_MON})\b(?: (\d{{4}}))?")
_DATE_MDY = re.compile(rf"\b({_MON}) (\d{{1,2}}){_ORD}\b(?: (\d{{4}}))?")
_DATE_ISO = re.compile(r"\b(\d{4}) (\d{1,2}) (\d{1,2})\b")
_DATE_NUM = re.compile(r"\b(\d{1,2}) (\d{1,2}) (\d{4}|\d{2})\b")
_DIGIT_RUN = re.compile(r"\d+(?: \d+)*")


# ---- normalization ------------------------------------------------------------------------------------------


class _CharTable(dict):
    """str.translate table, filled lazily: char -> its normalized piece (see the module docstring)."""

    def __init__(self, fold_case: bool):
        super().__init__()
        self.fold_case = fold_case

    def __missing__(self, cp: int) -> str:
        piece = _norm_char(chr(cp), self.fold_case)
        self[cp] = piece
        return piece


def _strip(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if unicodedata.category(c) not in ("Mn", "Me", "Cf"))


def _norm_char(ch: str, fold_case: bool) -> str:
    s = _strip(ch)
    if fold_case:
        s = _strip(s.casefold())
    return "".join(c if c.isalnum() else " " for c in s)


_FOLDED, _CASED = _CharTable(True), _CharTable(False)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# ASCII in bytes.translate (about 30x faster than str.translate on a 1 MB body): letters (lower-cased when
# folding) and digits stay, every other ASCII byte becomes a space; bytes >= 0x80 (UTF-8 of letters that
# survived the per-character table, e.g. CJK) pass unchanged.
_BYTES_FOLDED = bytes(c if chr(c).isalnum() else 32 for c in range(128)).lower() + bytes(range(128, 256))
_BYTES_CASED = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + bytes(range(128, 256))


def normalize(text: str, fold_case: bool = True) -> str:
    """The matching form of ``text``: single spaces between alphanumeric runs, no leading/trailing space."""
    if not text.isascii():  # each distinct non-ASCII character once (str.replace runs in C)
        table = _FOLDED if fold_case else _CASED
        for ch in set("".join(_NON_ASCII.findall(text))):
            piece = table[ord(ch)]
            if piece != ch:
                text = text.replace(ch, piece)
    raw = text.encode("utf-8").translate(_BYTES_FOLDED if fold_case else _BYTES_CASED)
    return " ".join(raw.decode("utf-8").split())


def _fold(cased_norm: str) -> str:
    """``normalize(text)`` from ``normalize(text, fold_case=False)`` without a second pass over ``text``."""
    folded = cased_norm.casefold()
    if folded.isascii():
        return folded
    for ch in set("".join(_NON_ASCII.findall(folded))):  # letters whose lower case decomposes ("İ")
        piece = _FOLDED[ord(ch)]
        if piece != ch:
            folded = folded.replace(ch, piece)
    return folded if " " not in folded.strip() or "  " not in folded else " ".join(folded.split())


def normalize_map(text: str, fold_case: bool = True) -> tuple[str, list[int]]:
    """``normalize`` plus, for each output character, the index of the input character it came from."""
    table = _FOLDED if fold_case else _CASED
    out: list[str] = []
    idx: list[int] = []
    space = True  # drop leading spaces and collapse runs
    for i, ch in enumerate(text):
        for c in table[ord(ch)]:
            if c == " ":
                if space:
                    continue
                space = True
            else:
                space = False
            out.append(c)
            idx.append(i)
    while out and out[-1] == " ":
        out.pop()
        idx.pop()
    return "".join(out), idx


@lru_cache(maxsize=1)
def _freq() -> dict[str, float]:
    try:
        from wordfreq import get_frequency_dict
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("the private-term model needs wordfreq: pip install wordfreq") from e
    return get_frequency_dict("en", wordlist="large")


def zipf(word: str) -> float:
    """English Zipf frequency of a normalized word (0 for words wordfreq does not know)."""
    f = _freq().get(word, 0.0)
    return math.log10(f) + 9 if f > 0 else 0.0


# ---- terms ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One private term; ``key`` is its normalized form (for numbers: the last 7 digits, dates: ISO)."""

    key: str
    kind: str  # name | word | phrase | number | date | email
    source: str
    cased: bool = False  # a name part that is also a common word: only matches capitalized

    @property
    def placeholder(self) -> str:
        return PLACEHOLDER[self.kind]


PLACEHOLDER = {"name": "[NAME]", "word": "[PRIVATE]", "phrase": "[PRIVATE]", "number": "[NUMBER]",
               "date": "[DATE]", "email": "[EMAIL]"}


@dataclass(frozen=True)
class TermHit:
    """A term found in a text; ``start``/``end`` index the text that was searched (see ``find``/``locate``)."""

    term: Term
    start: int
    end: int
    match: str


class PrivateTerms:
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

    # ---- building -----------------------------------------------------------------------------------------

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

    def add_field(self, key: str, value: str) -> None:
        """A profile field: names, places and contacts are terms whole and by part; others as text."""

        label, cls = f"profile.{key}", field_class(key)
        if cls == "name":
            self.add_term(value, "name", label)
            for part in _WORD.findall(value):
                if len(part) >= 2 and part.casefold() not in _STOP | _HONORIFICS:
                    self.add_term(part, "name", label, cased=zipf(normalize(part)) >= self.zipf_proper)
        elif cls == "place":
            for comp in re.split(r"[,;/]", value):
                if len(comp.strip()) >= 3:
                    self.add_term(comp, "name", label, cased=zipf(normalize(comp)) >= self.zipf_proper)
        elif cls == "contact":
            for item in re.split(r"[;\n]", value):
                if len(item.strip()) >= 3:
                    self.add_term(item, "phrase", label)
        if cls != "skip":
            self.add_text(value, label)

    def add_text(self, text: str, source: str) -> None:
        """Every term that the rules of the module docstring find in a private text."""
        if not text or not text.strip():
            return
        text = unicodedata.normalize("NFKC", text)
        for m in _EMAIL.finditer(text):
            self.add_term(m.group(), "email", source)
            local = m.group().split("@")[0]
            if len(normalize(local)) >= 3 and zipf(normalize(local)) < self.zipf_proper:
                self.add_term(local, "email", source)
        for m in _STREET.finditer(text):
            number = m.group()[: m.start(1) - m.start()].strip()
            *name, suffix = m.group(1).split()
            for sfx in _SUFFIX_FORMS.get(suffix.casefold().rstrip("."), (suffix,)):  # "Road" = "Rd"
                self.add_term(f"{number} {' '.join(name)} {sfx}", "phrase", source)
                self.add_term(f"{' '.join(name)} {sfx}", "phrase", source)
            self.add_term(f"{number} {' '.join(name)}", "phrase", source)
        for m in _CUES.finditer(text):
            self._add_cued(m, source)
        for m in _QUOTED_TITLE.finditer(text):
            words = m.group("t").split()
            if words[-1][:1].isupper() and all(w[:1].isupper() or normalize(w) in _STOP for w in words):
                self.add_term(m.group("t"), "name", source, cased=True)
        self._add_numbers(text, source)
        self._add_words(text, source)

    def _add_cued(self, m: re.Match, source: str) -> None:
        """The name after a cue (see `_CUES`)."""
        words = []
        for w in m.group("x").split():
            if normalize(w) in _STOP or not normalize(w):
                break
            words.append(w)
        if m.group("rel"):  # a person or pet: each part that is a name, and the whole
            parts = [w for w in words[:2] if zipf(normalize(w)) < (5.5 if w[:1].isupper() else WEAK_CUE_ZIPF)]
            parts = words[: len(parts)] if parts == words[: len(parts)] else []
            for w in parts:
                self.add_term(w, "name", source, cased=zipf(normalize(w)) >= self.zipf_proper)
            if len(parts) == 2:
                self.add_term(" ".join(parts), "name", source)
            return
        if not m.group("strong"):
            words = words[: next((i for i, w in enumerate(words) if zipf(normalize(w)) >= WEAK_CUE_ZIPF), len(words))]
            if len(words) < 2 and not (words and zipf(normalize(words[0])) < ZIPF_WEAK_SINGLE):
                return
        if words:
            named = " ".join(words)
            self.add_term(named, "name" if named[:1].isupper() else "phrase", source)
            if m.group("strong") and named[:1].isupper():
                self._cued[normalize(named)] = named

    def _add_words(self, text: str, source: str) -> None:
        for line in re.split(r"[\n;:.!?]", text):  # sentences, list items, "Title: description" halves
            words = list(_WORD.finditer(line))
            content = [w.group() for w in words if normalize(w.group()) not in _STOP]
            caps = sum(w[:1].isupper() for w in content)
            title_case = len(content) >= 2 and caps >= 0.75 * len(content)  # "Create an Outline for Your Team"
            run: list[tuple[str, float, bool]] = []  # capitalized words in a row: (word, zipf, starts a sentence)
            prev_end = 0
            for w in words:
                tok, key = w.group(), normalize(w.group())
                if re.fullmatch(r"[ \t'\u2019-]*", line[prev_end: w.start()]) is None:
                    run = self._flush_run(run, source)  # punctuation between the words ends a run
                prev_end = w.end()
                if not key or key.isdigit():
                    run = self._flush_run(run, source)
                    continue
                z = zipf(key)
                mixed = any(c.isdigit() for c in key) and any(c.isalpha() for c in key)
                if len(key) >= MIN_WORD and (z < self.zipf_rare or mixed) and not _is_ordinal(key):
                    self.add_term(tok, "word", source,
                                  substring=len(key) >= SUBSTRING_MIN and z < ZIPF_SUBSTRING and not mixed)
                capital = tok[:1].isupper() and not tok.isupper() or (tok.isupper() and len(tok) >= 3 and z == 0)
                if not capital and tok.islower() and len(key) >= MIN_WORD:
                    self._lower_seen.add(key)
                if capital and not title_case:
                    run.append((tok, z, bool(_SENTENCE_START.search(line[: w.start()]))))
                else:
                    run = self._flush_run(run, source)
            self._flush_run(run, source)

    def _flush_run(self, run: list[tuple[str, float, bool]], source: str) -> list:
        """Names in a run of capitalized words: a lone word rarer than ``zipf_proper``, in longer runs each
        word rarer than ``zipf_proper_run`` ("Volunteer Scheduling App" is a feature, not a person) and the
        whole run when one of its words is a name. Returns a new empty run."""
        while run and run[0][1] >= 5.0:  # "Then Clara", "The Azure Retreat": drop the common opener
            run = run[1:]
        limit = self.zipf_proper if len(run) == 1 else self.zipf_proper_run
        names = [tok for tok, z, initial in run
                 if not initial and len(tok) >= MIN_WORD and z < limit and normalize(tok) not in _STOP]
        for tok in names:
            self.add_term(tok, "name", source)
            self._proper_only.add(normalize(tok))
        if len(run) >= 2 and names:
            self.add_term(" ".join(tok for tok, _, _ in run), "name", source)
        return []

    def _add_numbers(self, text: str, source: str) -> None:
        norm = normalize(text)
        for m in _DIGIT_RUN.finditer(norm):
            digits = m.group().replace(" ", "")
            if len(digits) >= NUMBER_KEY_DIGITS and not _is_year_list(m.group()):
                key = digits[-NUMBER_KEY_DIGITS:]
                self.numbers.setdefault(key, Term(key, "number", source))
        for iso in _dates(norm):
            term = Term(iso, "date", source)
            self.dates.setdefault(iso, term)
            if not iso.startswith("--"):
                self.dates.setdefault("--" + iso[5:], Term("--" + iso[5:], "date", source))

    def add_term(self, phrase: str, kind: str, source: str, cased: bool = False, substring: bool = False) -> None:
        """One explicit term (any text: it is normalized here)."""
        key = normalize(phrase)
        if not key or len(key.replace(" ", "")) < 2:
            return
        if key.replace(" ", "").isdigit():
            digits = key.replace(" ", "")
            if len(digits) >= NUMBER_KEY_DIGITS:
                self.numbers.setdefault(digits[-NUMBER_KEY_DIGITS:], Term(digits[-NUMBER_KEY_DIGITS:], "number", source))
            return
        if cased:
            ck = normalize(phrase, fold_case=False)
            if key in self.terms:  # already matched in any case
                return
            for variant in {ck, ck.upper(), ck[:1].upper() + ck[1:]}:
                self.cased.setdefault(variant, Term(key, kind, source, cased=True))
        else:
            old = self.terms.get(key)
            if old is None or old.cased or (old.kind == "word" and kind == "name"):
                self.terms[key] = Term(key, kind, source)
            if substring:
                self.substrings.add(key)
        self._auto = self._prefixes = None

    # ---- matching ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.terms) + len(self.cased) + len(self.numbers) + len(self.dates)

    def _finalize(self) -> None:
        """Drop capitalized "names" that the context also writes in lower case ("Meditation" app vs
        "daily meditation"): a common noun, unless rare anyway. A name given by a strong cue ("a rescue dog
        named Melody", while a song has "a melody") stays, matched capitalized only: on the authors' dev data
        the dropped "Melody" was sent to a 1.5B cloud in the album title "The Night I Met Melody"."""
        for key in self._proper_only & self._lower_seen:
            term = self.terms.get(key)
            if term is not None and term.kind == "name" and zipf(key) >= self.zipf_rare:
                del self.terms[key]
                if key in self._cued:
                    self.add_term(self._cued[key], "name", term.source, cased=True)
        self._proper_only -= self._lower_seen

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


def _is_ordinal(key: str) -> bool:
    return bool(re.fullmatch(r"\d+(?:st|nd|rd|th|s|k|m|am|pm|x|mm|cm|km|kg|g|h|hr|hrs|min|ft|lb|lbs|th)", key))


def _is_year_list(run: str) -> bool:
    """'2019 2020 2021' is years next to each other, not a phone number."""
    parts = run.split()
    return len(parts) > 1 and all(len(p) == 4 and p[:2] in ("19", "20") for p in parts)


def _iso(y: str | None, m: int, d: int) -> str | None:
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    if y is None:
        return f"--{m:02d}-{d:02d}"
    year = int(y) + (2000 if len(y) == 2 and int(y) < 50 else 1900 if len(y) == 2 else 0)
    return f"{year:04d}-{m:02d}-{d:02d}"


def _date_spans(norm: str) -> Iterable[tuple[str, int, int]]:
    """(ISO or --MM-DD, start, end) for every date written in a normalized text (both readings of 03/04).
    Every date has a digit: the regexes only run in windows around digit runs (one fast pass finds them)."""
    windows: list[list[int]] = []
    for m in re.finditer(r"\d+", norm):
        s, e = max(m.start() - 14, 0), m.end() + 16  # "september 14" / "14th of september"
        if windows and s <= windows[-1][1]:
            windows[-1][1] = e
        else:
            windows.append([s, e])
    for s, e in windows:
        yield from _date_spans_in(norm, s, min(e, len(norm)))


def _date_spans_in(norm: str, s: int, e: int) -> Iterable[tuple[str, int, int]]:
    for m in _DATE_DMY.finditer(norm, s, e):
        iso = _iso(m.group(3), _MONTHS[m.group(2)], int(m.group(1)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_MDY.finditer(norm, s, e):
        iso = _iso(m.group(3), _MONTHS[m.group(1)], int(m.group(2)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_ISO.finditer(norm, s, e):
        iso = _iso(m.group(1), int(m.group(2)), int(m.group(3)))
        if iso:
            yield iso, m.start(), m.end()
    for m in _DATE_NUM.finditer(norm, s, e):
        a, b, y = int(m.group(1)), int(m.group(2)), m.group(3)
        for iso in {_iso(y, b, a), _iso(y, a, b)} - {None}:
            yield iso, m.start(), m.end()


def _dates(norm: str) -> set[str]:
    return {iso for iso, _, _ in _date_spans(norm)}


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
