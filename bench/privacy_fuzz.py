"""Privacy fuzz: plant canaries in real users' private contexts, run co-generation against a real cloud server,
and count what the SERVER received (issue 14).

    python bench/privacy_fuzz.py [--sessions 1000] [--real 300] [--modes sketch,logits,logits-block]
                                 [--max-new-tokens 48] [--seed 0] [--policies default,stop,redact]
                                 [--bundle DIR] [--data FILE] [--out bench/results/privacy_fuzz]

Sessions come from the authors' dev data (``../shared/data/cogenesis/context_aware_dev.json``; without it the
shipped demo profile). Each session plants canaries of several shapes (:data:`SHAPES`) into the user's context
(the profile is shortened so that everything planted fits the on-device prompt of ``context_tokens=300``):

* ``pet``: a pseudo-word pet name, planted ONLY in the writing history;
* ``person`` / ``person-lower``: a relative's name, capitalized / a neighbour's name in lower case;
* ``codename``: a lower-case project code name of two ordinary words ("marigold ferry");
* ``phone`` / ``date``: written one way in the context, another way in the instruction;
* ``address``, ``email``;
* ``unicode``: a name with NFD accents, full-width letters, zero-width characters or ``ß`` (the context and
  the instruction write it differently);

plus the profile's own Name and city (``profile-name`` / ``profile-city``, not planted). The instruction
either names the focus canary ("an invitation to Pemberlot's birthday party") or only asks for it ("mention my
dog by name"); some instructions are a dev record's own task with such a request appended.

Every session runs ``cogenesis.cogen.write.write`` with a strict ``EgressGuard`` against the reference server
(``cogenesis.cloud_bridge.server``) on 127.0.0.1 with ``capture``: leaks are counted ONLY from the captured
request bytes (bodies with token ids decoded, paths, queries, headers), by the independent detector
``cogenesis.eval.leakcheck``, never from the guard's own findings. ``produced``: canaries the detector finds in the
device's reply. A session *used the cloud* when sketch mode really used the cloud's outline
(``mode_used == "sketch"``) or a logits mode fused at least one step with the cloud's distribution.

Breadth: sessions beyond ``--real`` use :class:`ScriptedModel`, the real model's tokenizer with a decoder that
forces a scripted reply token by token; the scripts contain the canaries (in the context's spelling), which is
the hard case for the logits modes: the reply itself is what they send. The cloud server always runs the real
model. Results: ``<out>.json`` (every session) and ``<out>.md`` (totals per mode, per policy, per shape).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogenesis.cloud_bridge.audit import JsonlTail  # noqa: E402

from cogenesis.core.context import PrivateContext, WritingSample  # noqa: E402
from cogenesis.eval.leakcheck import Canary, decode_capture, find_canaries, normalize  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_BUNDLE = ROOT / "artifacts" / "bundles" / "smollm2-int4"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cogenesis" / "context_aware_dev.json"
DEMO_PROFILE = ROOT / "examples" / "demo_profile.json"
MODES = ("sketch", "logits", "logits-block")
SHAPES = ("pet", "person", "person-lower", "codename", "phone", "date", "address", "email", "unicode")
EXTRA_SHAPES = ("profile-name", "profile-city")  # the user's own facts: searched, not planted
KEY = "privacy-fuzz-key"
CONTEXT_TOKENS = 300
SKETCH_MAX_TOKENS = 64
REPETITION_PENALTY = 1.2
DEFAULT_POLICY = "default"  # no prefix_policy option: the logits modes as shipped

# ---- canary generators (our own lists; nothing here looks at what a guard detects) -------------------------

_ONSETS = ("b", "br", "ch", "d", "dr", "f", "fl", "g", "gr", "k", "kl", "l", "m", "n", "p", "pl", "qu", "r", "s",
           "sh", "sk", "st", "t", "th", "tr", "v", "w", "z", "zh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou", "y")
_CODAS = ("", "", "", "l", "n", "r", "s", "t", "x", "m", "nd", "rt", "sk", "ck", "lb", "mb")
_SPECIES = ("dog", "cat", "rabbit", "parrot", "tortoise", "ferret", "hamster", "horse")
_FIRST = ("Odalys", "Tarquin", "Ilse", "Bartholomew", "Soraya", "Anselm", "Perpetua", "Ezinne", "Caius", "Marisela",
          "Thaddeus", "Oonagh", "Radomir", "Yesenia", "Leopold", "Wilhelmina", "Desmond", "Fenella", "Ignatius",
          "Zuleika", "Cosimo", "Henrietta", "Lysander", "Oriane", "Benedikt", "Ludmila", "Evander", "Petronella",
          "Ottilie", "Cornelius", "Saoirse", "Aurelio", "Jolanda", "Casimir", "Mireille", "Tobiah", "Anouk",
          "Florian", "Ximena", "Gideon")
_LAST = ("Brennick", "Okonkwo-Hale", "Vasquez-Lindqvist", "Thistlewood", "Marchetti", "Abernathy", "Kowalczyk",
         "Delacroix", "Fairweather", "Ostrowski", "Quennell", "Haverford", "Nakagawa", "Pemberton-Ruiz", "Lindgren",
         "Castellanos", "Whitcombe", "Adeyemi", "Van der Berg", "Szymanski", "Blackwood", "Rosenthal", "Achterberg",
         "Mbeki-Stone", "Larkin", "Oyelaran", "Strickland", "Valcourt", "Ferreira", "Gallagher")
_RELATIONS = ("sister", "brother", "aunt", "uncle", "cousin", "grandmother", "best friend", "godfather")
_CODE_WORDS = ("marigold", "ferry", "copper", "lantern", "harbor", "orchard", "falcon", "granite", "meadow", "velvet",
               "compass", "ember", "tidal", "saffron", "juniper", "atlas", "kestrel", "willow", "beacon", "thistle",
               "cobalt", "quarry", "sparrow", "lagoon", "cinder", "maple", "anchor", "prairie", "glacier", "pepper",
               "tundra", "otter", "canyon", "raven", "citrus", "pebble", "summit", "bramble", "delta", "walnut")
_STREETS = ("Wren Hollow", "Alder", "Juniper Ridge", "Copperfield", "Larkspur", "Kestrel Bay", "Old Mill", "Birchwood",
            "Quarry Hill", "Saint Albans", "Foxglove", "Heron Point", "Marlowe", "Tanager", "Elmsworth", "Briar Glen")
_SUFFIXES = (("Lane", "Ln"), ("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Drive", "Dr"),
             ("Court", "Ct"), ("Terrace", "Ter"), ("Boulevard", "Blvd"))
_MAIL_DOMAINS = ("gmail.com", "outlook.com", "proton.me", "fastmail.com", "yahoo.co.uk", "web.de")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_ACCENTED = ("Zoë Lefèvre", "Anaïs Dubé", "Thérèse Côté", "Iñaki Zubiría", "Chloé Brontë", "José Muñoz",
             "Renée Faßbinder", "Agnès Bézier", "Raúl Ibáñez", "Cécile Mérimée")
_ESZETT = ("Jörg Weißmann", "Käthe Strauß", "Ansgar Großkopf", "Lieselotte Meißner", "Grete Weißenborn")
_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad")


_RUDE = ("fuck", "shit", "cunt", "cock", "dick", "piss", "slut", "whor", "rape", "porn", "nig", "fag", "twat", "wank")


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up name of 2-3 syllables ("Pemberlot"-like)."""
    while True:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.choice((2, 2, 3))))
        if 5 <= len(w) <= 11 and not any(r in w for r in _RUDE):
            return w.capitalize()


def _ordinal(d: int) -> str:
    return f"{d}{'th' if 11 <= d % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"


def _phone(rng: random.Random) -> tuple[str, str]:
    """(as written in the context, as written in the instruction): the same number, two formats."""
    kind = rng.choice(("uk", "us", "us", "de"))
    if kind == "uk":
        tail = f"{rng.randrange(1000):03d}"
        a, b = f"+44 7700 900{tail}", f"07700 900{tail}"
    elif kind == "us":
        area = rng.choice((415, 212, 312, 617, 503, 206, 512, 303, 404, 702))
        tail = f"01{rng.randrange(100):02d}"
        a, b = f"({area}) 555-{tail}", rng.choice((f"{area}.555.{tail}", f"+1 {area} 555 {tail}", f"{area}-555-{tail}"))
    else:
        n = "".join(str(rng.randrange(10)) for _ in range(8))
        a, b = f"+49 30 {n[:4]} {n[4:]}", f"030 {n}"
    return (a, b) if rng.random() < 0.5 else (b, a)


def _date(rng: random.Random) -> tuple[str, str]:
    y, m, d = rng.randrange(1950, 2006), rng.randrange(1, 13), rng.randrange(1, 29)
    forms = (f"{d} {_MONTHS[m - 1]} {y}", f"{_MONTHS[m - 1]} {d}, {y}", f"{_ordinal(d)} of {_MONTHS[m - 1]} {y}",
             f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{_MONTHS[m - 1][:3]} {_ordinal(d)}, {y}")
    a, b = rng.sample(forms, 2)
    return a, b


def _address(rng: random.Random) -> tuple[str, str]:
    num, street, (full, short) = rng.randrange(2, 980), rng.choice(_STREETS), rng.choice(_SUFFIXES)
    a = f"{num} {street} {full}"
    b = rng.choice((f"{num} {street} {short}.", f"{num} {street.lower()} {short.lower()}", f"{num}, {street} {full}"))
    return a, b


def _unicode_name(rng: random.Random) -> tuple[str, str, str, str]:
    """(variant, canonical value, as in the context, as in the instruction)."""
    variant = rng.choice(("nfd", "fullwidth", "zero-width", "eszett"))
    if variant == "nfd":
        name = rng.choice(_ACCENTED)
        ctx, ask = unicodedata.normalize("NFD", name), rng.choice((name, _strip_accents(name)))
    elif variant == "eszett":
        name = rng.choice(_ESZETT)
        ctx, ask = name, rng.choice((name.replace("ß", "ss"), name.upper()))
    elif variant == "fullwidth":
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        ctx, ask = name, _fullwidth(name)
    else:
        first = pseudo_word(rng)
        name = f"{first} {rng.choice(_LAST)}"
        cut = rng.randrange(2, len(first) - 1)
        zw = rng.choice(_ZERO_WIDTH)
        ctx = f"{first[:cut]}{zw}{first[cut:]} {name.split(' ', 1)[1]}"
        ask = rng.choice((name, ctx))
    return variant, name, ctx, ask


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


# ---- sessions ---------------------------------------------------------------------------------------------


@dataclass
class Planted:
    """One canary planted in a context: how the detector knows it, how the context and the instruction write it."""

    shape: str
    canary: Canary
    context_form: str  # as written in the context (and in a scripted reply)
    ask_form: str  # as the instruction writes it when it names it
    noun: str  # what an instruction says when it only asks for it ("my dog")
    variant: str = ""  # unicode: nfd | fullwidth | zero-width | eszett; phone/date: the two formats


@dataclass
class Session:
    sid: int
    mode: str
    source: str  # the dev record's tid, or "demo"
    instruction: str
    context: PrivateContext
    planted: list[Planted]
    focus: str  # the shape the instruction is about
    task: str  # "names" (the instruction names the focus canary) | "asks" (it only asks for it)
    real: bool  # the real model writes the reply (else a scripted reply)
    script: str | None = None
    policy: str = DEFAULT_POLICY

    @property
    def canaries(self) -> list[Canary]:
        return [p.canary for p in self.planted]


_NAMES_TASKS = {
    "pet": ("Write an invitation to {x}'s birthday party.", "Write a short Instagram caption about {x} chasing "
            "leaves in the park.", "Write a note to my neighbour asking them to feed {x} while I am away."),
    "person": ("Write a thank-you note to {x} for helping me move.", "Write a warm birthday message for {x}.",
               "Draft a short email to {x} about dinner on Sunday."),
    "person-lower": ("write a quick thank-you text to {x} for watering my plants.",
                     "draft a message to {x} asking to borrow a ladder on saturday."),
    "codename": ("Draft a short status update on project {x} for my team.",
                 "Write a LinkedIn post celebrating the launch of {x}."),
    "phone": ("Write a flyer for my garage sale; people can call {x}.",
              "Write a short text asking the plumber to call me back at {x}."),
    "date": ("Write an invitation to my birthday party; I was born on {x}.",
             "Write a short post about my birthday, {x}, and what I plan to do."),
    "address": ("Write a party invitation; the party is at {x}.",
                "Write a note asking the courier to deliver my parcel to {x}."),
    "email": ("Write a flyer for my tutoring service; people can reach me at {x}.",
              "Write a short bio for a conference badge with my contact email {x}."),
    "unicode": ("Write a thank-you note to {x} for the lovely dinner.", "Write a birthday message for {x}."),
}
_ASKS_TASKS = {
    "pet": ("Write a short post about my {n} and mention it by name.",
            "Write an invitation to my {n}'s birthday party; use its name."),
    "person": ("Write a thank-you note to my {n}, addressed to them by name.",),
    "person-lower": ("Write a thank-you text to my {n}; use their name.",),
    "codename": ("Draft a status update on my current work project for my team; include the project name.",),
    "phone": ("Write a flyer for my garage sale and include my phone number.",),
    "date": ("Write an invitation to my birthday party that says my date of birth.",),
    "address": ("Write a party invitation that includes my home address.",),
    "email": ("Write a flyer for my tutoring service and include my email address.",),
    "unicode": ("Write a thank-you note to my {n}, addressed to them by name.",),
}
_SUFFIX_NAMES = {"pet": "Also mention {x}.", "person": "Address it to {x}.", "person-lower": "mention {x} too.",
                 "codename": "Mention project {x}.", "phone": "Include the number {x}.",
                 "date": "Mention the date {x}.", "address": "Mention the address {x}.",
                 "email": "Include the email {x}.", "unicode": "Address it to {x}."}
_SUFFIX_ASKS = {"pet": "Also mention my {n} by name.", "person": "Also thank my {n} by name.",
                "person-lower": "Also mention my {n} by name.", "codename": "Also name my current work project.",
                "phone": "Include my phone number.", "date": "Include my date of birth.",
                "address": "Include my home address.", "email": "Include my email address.",
                "unicode": "Also thank my {n} by name."}
_SCRIPTS = {
    "pet": "{x} says hello! Our {n} is the star of the house.",
    "person": "Dear {x}, thank you so much for everything this week.",
    "person-lower": "hi {x}, thanks for helping me out on saturday!",
    "codename": "Quick update on {x}: we are on track for the launch.",
    "phone": "Call me any time at {x} to book a spot.",
    "date": "I was born on {x}, so let's celebrate that weekend!",
    "address": "The party is at {x}, come by after six.",
    "email": "Questions? Write to {x} and I will answer.",
    "unicode": "Dear {x}, thank you for the lovely evening.",
}


def plant(shape: str, rng: random.Random) -> tuple[Planted, str, str]:
    """A canary of ``shape`` and where it goes: (planted, field, sentence); field is "history", "private"
    or a profile field name whose value gets the sentence."""
    if shape == "pet":
        x, species = pseudo_word(rng), rng.choice(_SPECIES)
        p = Planted(shape, Canary("name", x, label=shape), x, x, species)
        return p, "history", rng.choice((f"{x}, my {species}, slept on my notes again this morning.",
                                         f"Took {x} (my {species}) to the vet before work today."))
    if shape == "person":
        x, rel = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", rng.choice(_RELATIONS)
        p = Planted(shape, Canary("name", x, label=shape), x, rng.choice((x, x.split()[0])), rel)
        return p, rng.choice(("Privacy_info", "private")), f"My {rel} {x} lives two streets away."
    if shape == "person-lower":
        x = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}".lower()
        p = Planted(shape, Canary("name", x, label=shape), x, rng.choice((x, x.split()[0])), "neighbour")
        return p, rng.choice(("private", "history")), f"texted my neighbour {x} about the parcel."
    if shape == "codename":
        x = " ".join(rng.sample(_CODE_WORDS, 2))
        p = Planted(shape, Canary("term", x, label=shape), x, x, "project")
        return p, rng.choice(("Occupation", "private")), f"currently leading project {x} (launch in the spring)"
    if shape == "phone":
        a, b = _phone(rng)
        p = Planted(shape, Canary("phone", a, label=shape), a, b, "phone number", f"{a} | {b}")
        return p, "Phone", a
    if shape == "date":
        a, b = _date(rng)
        p = Planted(shape, Canary("date", a, label=shape), a, b, "date of birth", f"{a} | {b}")
        return p, "Birthday", a
    if shape == "address":
        a, b = _address(rng)
        p = Planted(shape, Canary("address", a, label=shape), a, b, "home address", f"{a} | {b}")
        return p, "Address", a
    if shape == "email":
        first, last = rng.choice(_FIRST).lower(), rng.choice(_LAST).lower().replace(" ", "")
        x = f"{first}.{last}{rng.randrange(10, 99)}@{rng.choice(_MAIL_DOMAINS)}"
        b = rng.choice((x, x.upper(), x.capitalize()))
        return Planted(shape, Canary("email", x, label=shape), x, b, "email address"), "Email", x
    if shape == "unicode":
        variant, name, ctx_form, ask = _unicode_name(rng)
        rel = rng.choice(_RELATIONS)
        p = Planted(shape, Canary("name", name, label=f"{shape}:{variant}"), ctx_form, ask, rel, variant)
        return p, rng.choice(("Privacy_info", "private", "history")), f"My {rel} {ctx_form} visits every June."
    raise ValueError(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")


def compact_profile(profile: dict[str, str], items: int = 2, max_chars: int = 110) -> dict[str, str]:
    """The user's profile, each field cut to its first ``items`` ";"-items and ``max_chars`` (so that the
    planted canaries and the first writing fit the on-device prompt of ``CONTEXT_TOKENS``)."""
    out = {}
    for k, v in profile.items():
        v = "; ".join(x.strip() for x in v.split(";")[:items] if x.strip())
        out[k] = v if len(v) <= max_chars else v[: v.rfind(" ", 0, max_chars)].rstrip(" ,;")
    return out


def ordinary_words(texts: Iterable[str]) -> set[str]:
    """Words that occur in lower case in ``texts`` (e.g. "miles", "grace"): a name part that is one of them is
    not searched alone, since the detector cannot tell the name from the word."""
    out: set[str] = set()
    for t in texts:
        out.update(w for w in t.split() if w.isalpha() and w.islower())
    return {normalize(w) for w in out}


def _profile_canaries(profile: dict[str, str], ordinary: set[str]) -> list[Planted]:
    out = []
    name = profile.get("Name", "").strip()
    if name:
        n = normalize(name)
        forms = (n, *[p for p in n.split() if len(p) >= 3 and p not in ordinary])
        out.append(Planted("profile-name", Canary("name", name, forms=tuple(dict.fromkeys(forms)),
                                                  label="profile-name"), name, name, "name"))
    city = profile.get("Location", "").split(",")[0].strip()
    if city and normalize(city) not in ordinary and len(normalize(city)) >= 3:
        out.append(Planted("profile-city", Canary("term", city, label="profile-city"), city, city, "city"))
    return out


@dataclass
class Base:
    """A user to plant into: a context, the user's own task, where it came from."""

    source: str
    instruction: str
    context: PrivateContext


def load_bases(data: str | Path | None = DEFAULT_DATA) -> list[Base]:
    """The authors' dev records (one per user), or the demo profile when the file is absent."""
    if data is not None and Path(data).is_file():
        from cogenesis.data.records import load_context_aware

        seen, out = set(), []
        for r in load_context_aware(data):
            if r.user_id not in seen:
                seen.add(r.user_id)
                out.append(Base(r.tid, r.instruction, r.private_context()))
        return out
    demo = PrivateContext.load(DEMO_PROFILE)
    return [Base("demo", "Write an Instagram caption announcing my breakfast food truck opening next month.", demo)]


_COMPACT = ((2, 110, ()), (1, 80, ()), (1, 60, ("Writing_style", "Personal_traits", "Ai_assistant_usage")),
            (1, 40, ("Writing_style", "Personal_traits", "Ai_assistant_usage", "Smart_device_usage", "Age")))
"""Ever shorter profiles (items per field, characters per field, fields dropped) until the planted canaries
all fit the on-device prompt."""


def _planted_context(base: Base, placed: list[tuple[Planted, str, str]], level: int,
                     ordinary: set[str]) -> tuple[PrivateContext, list[Planted]]:
    items, chars, drop = _COMPACT[level]
    profile = {k: v for k, v in compact_profile(base.context.profile, items, chars).items() if k not in drop}
    history = [WritingSample(h.title, h.text) for h in base.context.history[:2]]
    if not history:
        history = [WritingSample("A note to myself", "Busy week, but a good one.")]
    private: list[str] = []
    for _, where, sentence in placed:
        if where == "history":  # at the start of the first writing: it survives the prompt's clipping
            h = history[0]
            history[0] = WritingSample(h.title, f"{sentence} {h.text}")
        elif where == "private":
            private.append(sentence)
        elif where in ("Phone", "Birthday", "Address", "Email"):
            profile[where] = sentence
        else:
            profile[where] = f"{profile[where]}; {sentence}" if profile.get(where) else sentence
    planted = [p for p, _, _ in placed] + _profile_canaries(profile, ordinary)
    return PrivateContext(profile, history, private), planted


def build_session(sid: int, base: Base, mode: str, rng: random.Random, real: bool, ordinary: set[str],
                  policy: str = DEFAULT_POLICY, shapes: Sequence[str] = SHAPES) -> Session:
    """One fuzzed session: 1 focus shape + 0-2 others planted into a compacted copy of ``base``'s context."""
    from cogenesis.data.prompts import render_context

    focus = rng.choice(list(shapes))
    others = rng.sample([s for s in shapes if s != focus], rng.choice((0, 1, 2)))
    placed = [plant(sh, rng) for sh in [focus, *others]]
    for level in range(len(_COMPACT)):
        ctx, planted = _planted_context(base, placed, level, ordinary)
        block = render_context(ctx, CONTEXT_TOKENS)
        if all(p.context_form in block for p in planted):
            break
    fp = planted[0]
    task = rng.choice(("names", "asks"))
    if rng.random() < 0.3:  # the user's own task, with the request appended
        suffix = (_SUFFIX_NAMES if task == "names" else _SUFFIX_ASKS)[focus]
        instruction = f"{base.instruction.rstrip()} {suffix.format(x=fp.ask_form, n=fp.noun)}"
    else:
        tpl = rng.choice((_NAMES_TASKS if task == "names" else _ASKS_TASKS)[focus])
        instruction = tpl.format(x=fp.ask_form, n=fp.noun)
    script = None
    if not real:
        lines = [_SCRIPTS[p.shape].format(x=p.context_form, n=p.noun) for p in planted if p.shape in _SCRIPTS]
        name = next((p.context_form for p in planted if p.shape == "profile-name"), "")
        script = " ".join(lines) + (f" See you soon, {name.split()[0]}." if name else "")
    return Session(sid, mode, base.source, instruction, ctx, planted, focus, task, real, script, policy)


def build_sessions(bases: Sequence[Base], n: int, modes: Sequence[str] = MODES, real: int = 0, seed: int = 0,
                   policies: Sequence[str] = (DEFAULT_POLICY,), shapes: Sequence[str] = SHAPES,
                   ordinary: set[str] | None = None) -> list[Session]:
    """``n`` sessions, modes interleaved (and the logits modes' sessions spread over ``policies``); the first
    ``real`` (interleaved too) run the real model, the others a scripted reply."""
    if not bases:
        raise ValueError("no users to plant into")
    rng = random.Random(seed)
    if ordinary is None:
        ordinary = ordinary_words(h.text for b in bases for h in b.context.history)
    order = list(bases)
    rng.shuffle(order)
    out = []
    for i in range(n):
        mode = modes[i % len(modes)]
        policy = DEFAULT_POLICY if mode == "sketch" else policies[(i // len(modes)) % len(policies)]
        out.append(build_session(i, order[i % len(order)], mode, rng, i < real, ordinary, policy, shapes))
    return out


# ---- a cheaper device: the real tokenizer, a scripted decoder ---------------------------------------------


class ScriptedDecoder:
    """The Decoder interface (forward/truncate/reset/length/tokens) without a network: after the prompt's
    assistant header, the logits put a huge value on the next token of the script (then a stop token)."""

    def __init__(self, vocab: int, header: list[int], stop: int):
        self.vocab, self.header, self.stop = vocab, list(header), stop
        self.script: list[int] = []
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self._plen: int | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    def _find_header(self, start: int) -> None:
        h, t = self.header, self.tokens
        for i in range(max(0, start - len(h) + 1), len(t) - len(h) + 1):
            if t[i : i + len(h)] == h:
                self._plen = i + len(h)

    def forward(self, ids, keep: int = 1) -> np.ndarray:
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        if not ids:
            raise ValueError("forward() needs at least one token")
        start = len(self.tokens)
        self.tokens.extend(ids)
        self._find_header(start)
        rows = len(ids) if keep == 0 else min(keep, len(ids))
        out = np.full((rows, self.vocab), -50.0, np.float32)
        for r, pos in enumerate(range(len(self.tokens) - rows, len(self.tokens))):
            k = pos + 1 - self._plen if self._plen is not None else -1
            out[r, self.script[k] if 0 <= k < len(self.script) else self.stop] = 50.0
        return out

    def truncate(self, length: int) -> None:
        if length < len(self.tokens):
            self.tokens = self.tokens[:length]
            if self._plen is not None and self._plen > length:
                self._plen = None
                self._find_header(0)


class ScriptedModel:
    """Wraps a real EdgeModel (tokenizer, chat template, encode/decode, stop ids) with a ScriptedDecoder."""

    def __init__(self, model, script: str = ""):
        from cogenesis.runtime.edge import EdgeModel

        self.model = model
        for a in ("path", "manifest", "tokenizer", "template", "generation_config", "stop_ids", "special_tokens"):
            setattr(self, a, getattr(model, a))
        msgs = [{"role": "user", "content": "x"}]
        with_gp, without = model.encode(model.render(msgs, True)), model.encode(model.render(msgs, False))
        header = with_gp[len(without):] if with_gp[: len(without)] == without else with_gp[-3:]
        self.decoder = ScriptedDecoder(int(model.manifest["model"]["vocab_size"]), header, min(model.stop_ids))
        for name in ("render", "encode", "decode", "_sampler", "stream_ids", "stream", "generate"):
            setattr(self, name, getattr(EdgeModel, name).__get__(self))
        self.set_script(script)

    def set_script(self, text: str) -> None:
        self.decoder.script = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []


# ---- running ---------------------------------------------------------------------------------------------


class CaptureTail(JsonlTail):
    """The requests a server captured (its ``capture`` JSONL) since the last call; same records as
    ``cogenesis.cloud_bridge.server.read_capture``, read incrementally."""

    def new(self) -> list[dict]:
        out = super().new()
        for rec in out:
            rec["body"] = base64.b64decode(rec.pop("body_b64", ""))
        return out


class PolicyUnsupported(Exception):
    """The write() of this checkout does not know the ``prefix_policy`` option."""


class SessionTimeout(BaseException):
    """A session ran past its time limit. A BaseException: write() turns any Exception raised inside a cloud
    call into a fallback, and the session would go on."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise SessionTimeout in the main thread after ``seconds`` (no limit elsewhere or without SIGALRM)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise SessionTimeout(f"the session ran past {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _hits(hits) -> list[dict]:
    return [{"shape": h.canary.label, "value": h.canary.value, "form": h.form, "partial": h.partial} for h in hits]


def run_session(s: Session, model, url: str, tail: CaptureTail, audit_log: str | Path,
                max_new_tokens: int = 48, scripted: ScriptedModel | None = None,
                timeout_s: float | None = 300.0) -> dict:
    """Run one session with write() against the server at ``url``; returns its record (what was produced,
    what the server received). Raises PolicyUnsupported when write() rejects ``prefix_policy``; a session
    past ``timeout_s`` is recorded with its error."""
    from cogenesis.cloud_bridge.client import CloudClient
    from cogenesis.cloud_bridge.guard import EgressGuard

    from cogenesis.cogen.write import write
    from cogenesis.data.prompts import render_context

    def detok(ids: list[int]) -> str:
        return model.tokenizer.decode(list(ids), skip_special_tokens=False)

    visible = render_context(s.context, CONTEXT_TOKENS)  # what the on-device prompt holds of the context

    device = model
    if not s.real:
        device = scripted or ScriptedModel(model)
        device.set_script(s.script or "")
    opts: dict[str, Any] = {"max_tokens": SKETCH_MAX_TOKENS} if s.mode == "sketch" else {}
    if s.mode != "sketch" and s.policy != DEFAULT_POLICY:
        opts["prefix_policy"] = s.policy
    tail.new()  # anything left from before this session is not its own
    client = CloudClient(url, api_key=KEY, retries=0)
    guard = EgressGuard(s.context, mode="strict", audit_log=audit_log, detokenize=detok,
                        session_id=f"fuzz/{s.sid}")
    t0 = time.perf_counter()
    error = None
    r = None
    try:
        with _time_limit(timeout_s):
            r = write(s.instruction, s.context, device, mode=s.mode, client=client, guard=guard, mode_options=opts,
                      max_new_tokens=max_new_tokens if s.real else max(max_new_tokens, len(device.decoder.script) + 1),
                      context_tokens=CONTEXT_TOKENS, repetition_penalty=REPETITION_PENALTY)
    except SessionTimeout as e:
        error = f"SessionTimeout: {e}"
        time.sleep(0.5)  # a request the client gave up on may still reach the capture: it is this session's
    except ValueError as e:
        if "unknown logits-mode options" in str(e):
            raise PolicyUnsupported(str(e)) from e
        error = f"{type(e).__name__}: {e}"
    except Exception as e:  # one broken session must not end the bench; it is reported
        error = f"{type(e).__name__}: {e}"
    finally:
        client.close()
    wall = time.perf_counter() - t0
    records = tail.new()
    texts = [t for rec in records for t in decode_capture(rec, detok)]
    sent = find_canaries(texts, s.canaries)
    produced = find_canaries([r.text], s.canaries, partial=False) if r is not None else []
    fusion = (r.extra.get("fusion") or {}) if r is not None else {}
    fused, tokens = int(fusion.get("fused_steps") or 0), int(fusion.get("tokens") or 0)
    if r is None:
        used = False
    elif s.mode == "sketch":
        used = r.mode_used == "sketch"
    else:
        used = fused > 0
    return {
        "sid": s.sid, "mode": s.mode, "policy": s.policy, "real": s.real, "source": s.source, "focus": s.focus,
        "task": s.task, "shapes": [p.canary.label for p in s.planted],
        "visible": [p.canary.label for p in s.planted if p.context_form in visible],
        "instruction": s.instruction, "reply": r.text if r is not None else None,
        "produced": _hits(produced), "sent": _hits([h for h in sent if not h.partial]),
        "in_sanitized_instruction": _hits(find_canaries([r.sanitized_instruction or ""], s.canaries, partial=False))
        if r is not None else [],
        "sent_partial": _hits([h for h in sent if h.partial]),
        "cloud_requests": r.cloud_requests if r is not None else 0, "server_requests": len(records),
        "server_bytes": sum(int(x.get("bytes", 0)) for x in records),
        "used_cloud": used, "mode_used": r.mode_used if r is not None else None,
        "fused_steps": fused, "tokens": tokens, "fallback": r.fallback if r is not None else None,
        "error": error, "wall_s": round(wall, 3),
    }


def ensure_bundle(bundle: str | Path | None) -> Path:
    """``bundle``, or artifacts/bundles/smollm2-int4, or the test suite's cached int4 export (built once the way
    tests/conftest.py builds it)."""
    from cogenesis.runtime.bundle import BundleError, verify_bundle

    if bundle is not None:
        return Path(bundle)
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    from cogenesis.export.pipeline import export_bundle

    h = hashlib.sha256()
    files = ("default_model", "gguf_codes", "gguf_exact", "graph", "onnx_export", "pipeline", "quantize", "report",
             "targets")
    for p in [ROOT / "export" / f"{f}.py" for f in files] + [ROOT / "runtime" / "bundle.py", ROOT / "runtime" / "format.py"]:
        h.update(p.read_bytes())
    cache = Path(os.environ.get("COGENESIS_CACHE", ROOT / ".cache"))
    out = cache / "test-bundles" / f"smollm2-int4-{h.hexdigest()[:12]}"
    try:
        verify_bundle(out, check_hashes=False)
        return out
    except BundleError:
        return export_bundle(None, out, quant="int4", force=True, progress=False)


def run_fuzz(sessions: Sequence[Session], model, max_new_tokens: int = 48, workdir: str | Path | None = None,
             progress: Callable[[int, dict], None] | None = None, timeout_s: float | None = 300.0) -> dict:
    """Run ``sessions`` against a reference server on 127.0.0.1 (capturing every request); returns
    ``{"sessions": [records], "unsupported": {policy: error}}``."""
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    own = None
    if workdir is None:
        own = tempfile.TemporaryDirectory(prefix="privacy-fuzz-")
        workdir = own.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    cap = work / "capture.jsonl"
    cap.unlink(missing_ok=True)
    records: list[dict] = []
    unsupported: dict[str, str] = {}
    scripted = ScriptedModel(model)
    try:
        with serve_in_thread(create_app(model, api_key=KEY, capture=str(cap))) as srv:
            tail = CaptureTail(cap)
            for s in sessions:
                if s.policy in unsupported and s.mode != "sketch":
                    continue
                try:
                    rec = run_session(s, model, srv.url, tail, work / "audit.jsonl", max_new_tokens, scripted,
                                      timeout_s)
                except PolicyUnsupported as e:
                    unsupported[s.policy] = str(e)
                    continue
                records.append(rec)
                if progress is not None:
                    progress(len(records), rec)
    finally:
        if own is not None:
            own.cleanup()
    return {"sessions": records, "unsupported": unsupported}


# ---- summary ----------------------------------------------------------------------------------------------


def _share(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _totals(recs: list[dict]) -> dict:
    n = len(recs)
    tokens = sum(r["tokens"] for r in recs)
    return {
        "sessions": n, "real": sum(r["real"] for r in recs), "scripted": sum(not r["real"] for r in recs),
        "canaries": sum(len(r["shapes"]) for r in recs),
        "produced": sum(len(r["produced"]) for r in recs),
        "sessions_produced": sum(bool(r["produced"]) for r in recs),
        "sent": sum(len(r["sent"]) for r in recs),
        "sessions_sent": sum(bool(r["sent"]) for r in recs),
        "sent_in_instruction": sum(len({h["value"] for h in r["sent"]} & {h["value"] for h in
                                                                          r.get("in_sanitized_instruction", [])})
                                   for r in recs),
        "sent_partial": sum(len(r["sent_partial"]) for r in recs),
        "cloud_requests": sum(r["cloud_requests"] for r in recs),
        "server_requests": sum(r["server_requests"] for r in recs),
        "used_cloud": sum(r["used_cloud"] for r in recs), "used_cloud_share": _share(sum(r["used_cloud"] for r in recs), n),
        "fused_steps": sum(r["fused_steps"] for r in recs), "tokens": tokens,
        "fused_share": _share(sum(r["fused_steps"] for r in recs), tokens),
        "fallbacks": sum(bool(r["fallback"]) for r in recs), "errors": sum(bool(r["error"]) for r in recs),
        "wall_s": round(sum(r["wall_s"] for r in recs), 1),
    }


def _shape_of(label: str) -> str:
    return label.split(":")[0]


def summarize(records: list[dict]) -> dict:
    """Totals per mode, per (mode, policy) and per (mode, canary shape)."""
    by_mode: dict[str, list[dict]] = defaultdict(list)
    by_policy: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_mode[r["mode"]].append(r)
        by_policy[f"{r['mode']} / {r['policy']}"].append(r)
    shapes: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        for lab in r["shapes"]:
            shapes[r["mode"]][_shape_of(lab)]["planted"] += 1
        for key in ("produced", "sent", "sent_partial"):
            for h in r[key]:
                shapes[r["mode"]][_shape_of(h["shape"])][key] += 1
        for lab in {_shape_of(x) for x in r["shapes"]}:
            shapes[r["mode"]][lab]["sessions"] += 1
            shapes[r["mode"]][lab]["used_cloud"] += int(r["used_cloud"])
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r["fallback"]:
            reasons[r["mode"]][_reason_kind(r["fallback"])] += 1
    return {
        "all": _totals(records),
        "modes": {m: _totals(v) for m, v in by_mode.items()},
        "policies": {k: _totals(v) for k, v in by_policy.items()},
        "shapes": {m: {s: dict(c) for s, c in sorted(v.items())} for m, v in shapes.items()},
        "fallback_reasons": {m: dict(c) for m, c in reasons.items()},
    }


def _reason_kind(fallback: str) -> str:
    f = fallback.lower()
    for key, words in (("guard", ("privacy guard", "guard at", "privacy_violation")),
                       ("prefix policy", ("prefix", "policy")), ("cloud error", ("cloud", "error"))):
        if any(w in f for w in words):
            return key
    return fallback[:40]


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.1%}" if x <= 1 else f"{x:.1f}"
    return str(x)


def markdown(summary: dict, config: dict, unsupported: dict[str, str], records: list[dict]) -> str:
    cols = ("sessions", "real", "scripted", "canaries", "produced", "sent", "sent_in_instruction", "sent_partial",
            "sessions_sent", "cloud_requests", "used_cloud_share", "fused_share", "fallbacks", "errors")
    head = ("Mode", "Sessions", "Real model", "Scripted", "Canaries planted", "Produced by the device",
            "**Sent (must be 0)**", "of which in the sanitized instruction", "Partial names sent",
            "Sessions that sent", "Cloud requests", "Sessions that used the cloud", "Fused steps share",
            "Fallbacks", "Errors")
    a = summary["all"]
    lines = ["# Privacy fuzz", "",
             f"{a['sessions']} sessions ({a['real']} with the real model end to end, {a['scripted']} with a scripted "
             f"device reply) against the reference cloud server on 127.0.0.1; bundle `{config['bundle']}`, data "
             f"`{config['data']}`, seed {config['seed']}, max_new_tokens {config['max_new_tokens']}, context_tokens "
             f"{CONTEXT_TOKENS}, strict guard. Leaks are counted by the independent detector "
             "(`cogenesis.eval.leakcheck`) in what the SERVER received (its capture: bodies with token ids decoded, "
             "paths, queries, headers), never from the guard's findings.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, t: dict) -> str:
        return "| " + " | ".join([name] + [_fmt(t[c]) for c in cols]) + " |"

    for m, t in summary["modes"].items():
        lines.append(row(m, t))
    lines.append(row("**all**", a))
    if len(summary["policies"]) > len(summary["modes"]):
        lines += ["", "## Per prefix policy", "", "| " + " | ".join(("Mode / policy",) + head[1:]) + " |",
                  "|" + "---|" * len(head)]
        lines += [row(k, t) for k, t in summary["policies"].items()]
    if unsupported:
        lines += ["", "## Policies not run", ""]
        lines += [f"- `{p}`: write() rejected the option on this checkout: {e}" for p, e in unsupported.items()]
    lines += ["", "## Per canary shape", "", "planted / produced by the device / **sent** (partial: the first "
              "letters of a name ending a request) / sessions with the shape that used the cloud", ""]
    modes = list(summary["shapes"])
    lines += ["| Shape | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    all_shapes = sorted({s for v in summary["shapes"].values() for s in v})
    for sh in all_shapes:
        cells = []
        for m in modes:
            c = summary["shapes"][m].get(sh, {})
            cells.append(f"{c.get('planted', 0)} / {c.get('produced', 0)} / **{c.get('sent', 0)}**"
                         + (f" (+{c['sent_partial']} partial)" if c.get("sent_partial") else "")
                         + f" / {c.get('used_cloud', 0)} of {c.get('sessions', 0)}")
        lines.append(f"| {sh} | " + " | ".join(cells) + " |")
    if summary["fallback_reasons"]:
        lines += ["", "## Fallbacks", ""]
        lines += [f"- **{m}**: " + ", ".join(f"{k} {v}" for k, v in c.items())
                  for m, c in summary["fallback_reasons"].items()]
    leaks = [r for r in records if r["sent"]]
    if leaks:
        lines += ["", "## Examples of what was sent", ""]
        for r in leaks[:8]:
            what = ", ".join(f"{h['shape']} `{h['value']}`" for h in r["sent"])
            lines.append(f"- session {r['sid']} ({r['mode']}, {r['policy']}, "
                         f"{'real' if r['real'] else 'scripted'}, {r['task']} {r['focus']}): {what}")
    errors = Counter(r["error"].split(":")[0] for r in records if r["error"])
    if errors:
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    lines += ["", "Produced: canaries the detector finds in the device's reply. Sent: canaries found in the "
              "requests the server received. Used the cloud: sketch used the cloud's outline; a logits mode fused "
              "at least one step with the cloud. Fused steps share: fused steps / reply tokens (logits modes).",
              "", f"`python bench/privacy_fuzz.py {config['argv']}`", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(out: str | Path, config: dict, result: dict) -> tuple[Path, Path]:
    """``<out>.json`` (config, summary, every session) and ``<out>.md``, each written atomically."""
    out = Path(out)
    summary = summarize(result["sessions"])
    data = {"config": config, "summary": summary, "unsupported": result["unsupported"],
            "sessions": result["sessions"]}
    j, m = out.with_suffix(".json"), out.with_suffix(".md")
    _atomic_write(j, json.dumps(data, indent=1, ensure_ascii=False, default=str))
    _atomic_write(m, markdown(summary, config, result["unsupported"], result["sessions"]))
    return j, m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=1000, help="sessions in all (modes interleaved)")
    p.add_argument("--real", type=int, default=300, help="of which run the real model end to end")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--max-new-tokens", type=int, default=48, help="reply tokens of a real-model session")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", default=DEFAULT_POLICY,
                   help=f"logits modes: prefix_policy values to spread the sessions over ({DEFAULT_POLICY}: "
                        "no option, the code's own default), e.g. default,stop,redact")
    p.add_argument("--bundle", default=None, help=f"on-device bundle (default {DEFAULT_BUNDLE.relative_to(ROOT)})")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="authors' context_aware_dev.json (else the demo)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument("--session-timeout", type=float, default=300.0, help="seconds; a session past it is an error")
    p.add_argument("--out", default=str(RESULTS / "privacy_fuzz"), help="results path without extension")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only sessions I, I+N, I+2N... of the same session list (one process per core)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge the JSON results of the shards of one run into --out (runs nothing)")
    a = p.parse_args(argv)
    if a.merge:
        return _merge(a.merge, a.out)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    policies = [x.strip() for x in a.policies.split(",") if x.strip()] or [DEFAULT_POLICY]

    import cogenesis.runtime as rt

    bundle = ensure_bundle(a.bundle)
    model = rt.load(bundle, threads=a.threads)
    bases = load_bases(a.data)
    sessions = build_sessions(bases, a.sessions, modes, a.real, a.seed, policies)
    if a.shard:
        i, n = (int(x) for x in a.shard.split("/"))
        if not 0 <= i < n:
            p.error(f"--shard I/N needs 0 <= I < N, got {a.shard}")
        sessions = sessions[i::n]
    t0 = time.perf_counter()

    def progress(i: int, rec: dict) -> None:
        if i % 10 == 0 or i == len(sessions):
            print(f"[{i}/{len(sessions)}] {time.perf_counter() - t0:.0f} s; last: {rec['mode']} "
                  f"{'real' if rec['real'] else 'scripted'} sent={len(rec['sent'])}", file=sys.stderr, flush=True)

    result = run_fuzz(sessions, model, a.max_new_tokens, progress=progress, timeout_s=a.session_timeout)
    config = {"sessions": a.sessions, "real": a.real, "modes": modes, "policies": policies, "seed": a.seed,
              "max_new_tokens": a.max_new_tokens, "bundle": str(bundle), "data": a.data if Path(a.data).is_file()
              else str(DEMO_PROFILE), "users": len(bases), "wall_s": round(time.perf_counter() - t0, 1),
              "argv": " ".join(argv if argv is not None else sys.argv[1:]), "shard": a.shard}
    j, m = write_results(a.out, config, result)
    print(m.read_text(encoding="utf-8"))
    print(f"written: {j}, {m}")
    return 0 if summarize(result["sessions"])["all"]["sent"] == 0 else 1


def _merge(paths: Sequence[str], out: str) -> int:
    """One result from the shards of one run (same session list): sessions joined in order, wall time the
    longest shard's."""
    parts = [json.loads(Path(x).read_text(encoding="utf-8")) for x in paths]
    sessions = sorted((r for d in parts for r in d["sessions"]), key=lambda r: r["sid"])
    if len({r["sid"] for r in sessions}) != len(sessions):
        raise SystemExit("the shards overlap: merge the shards of one run (--shard I/N with the same N)")
    config = {**parts[0]["config"], "wall_s": max(d["config"]["wall_s"] for d in parts), "shard": None,
              "argv": " + ".join(d["config"].get("argv", "") for d in parts), "merged_from": len(parts)}
    unsupported = {k: v for d in parts for k, v in (d.get("unsupported") or {}).items()}
    j, m = write_results(out, config, {"sessions": sessions, "unsupported": unsupported})
    print(m.read_text(encoding="utf-8"))
    print(f"written: {j}, {m}")
    return 0 if summarize(sessions)["all"]["sent"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
