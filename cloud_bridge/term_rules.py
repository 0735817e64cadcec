"""The rules of the private-term model (`cogenesis.cloud_bridge.terms`): what in a private text is a term.

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

The Zipf limits (``ZIPF_RARE``, ``ZIPF_PROPER``, ``ZIPF_PROPER_RUN``) are the model's parameters, measured in
the table of `cogenesis.cloud_bridge.terms`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from cogenesis.cloud_bridge.fields import field_class

from .term_dates import _DIGIT_RUN, NUMBER_KEY_DIGITS, _dates, _is_year_list
from .textnorm import normalize

SUBSTRING_MIN = 5  # invented words this long also match inside longer words ("#TeamPemberlot")
ZIPF_SUBSTRING = 1.5  # ... when rarer than this: "profess" (2.9) must not match inside "professional"
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


def _is_ordinal(key: str) -> bool:
    return bool(re.fullmatch(r"\d+(?:st|nd|rd|th|s|k|m|am|pm|x|mm|cm|km|kg|g|h|hr|hrs|min|ft|lb|lbs|th)", key))


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


class TermRules:
    """The building half of `cogenesis.cloud_bridge.terms.PrivateTerms`: the rules of the module docstring,
    which fill its term tables (a mixin: ``PrivateTerms.__init__`` sets the state below)."""

    zipf_rare: float
    zipf_proper: float
    zipf_proper_run: float
    terms: dict[str, Term]  # normalized phrase -> term (word-bounded)
    substrings: set[str]  # keys also matched inside words
    cased: dict[str, Term]  # case-preserved normalized phrase -> term
    numbers: dict[str, Term]  # last 7 digits -> term
    dates: dict[str, Term]  # "YYYY-MM-DD" or "--MM-DD" -> term
    _lower_seen: set[str]  # words the context also writes in lower case (common nouns)
    _proper_only: set[str]  # keys added only because they were capitalized
    _cued: dict[str, str]  # names after a strong cue ("a dog named Melody"): key -> as written

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
