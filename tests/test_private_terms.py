"""The private-term model (cloud_bridge/terms.py), its use by the guard and sanitizer, and the logits modes'
prefix policy. The first block is one test per bypass listed in issue 14: each fails on the guard before the
term model (the context and outbound texts are the issue's shapes, not chosen to fit the rules)."""

from __future__ import annotations

import datetime
import importlib.util
import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest
from cogenesis.cloud_bridge.guard import EgressGuard
from cogenesis.cloud_bridge.terms import PrivateTerms, _fold, normalize, normalize_map, zipf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cogenesis.cogen.fusion import Fuser
from cogenesis.cogen.logits import cogenerate
from cogenesis.cogen.prefix_policy import PrefixPolicy
from cogenesis.core.context import PrivateContext, WritingSample

ROOT = Path(__file__).resolve().parents[1]
CTX = PrivateContext(
    {"Name": "Anna Lindqvist-Barros", "Location": "Porto, Portugal", "Phone": "+44 7700 900123",
     "Privacy_info": "Born 14 March 1987; Plays the oboe in a quartet; Our code name is marigold ferry; "
                     "Office line (415) 555-0199",
     "Writing_style": "Warm and direct"},
    [WritingSample("Weekend", "I took my ferret Pemberlot to the vet, and later waved to Zoë and Jürgen Straße. "
                              "My neighbour, Hollis Vantreight, fixed the fence at 12 Rowan Close.")],
    [])


def _kinds(found) -> list[tuple[str, str]]:
    return [(f.kind, f.match) for f in found]


@pytest.fixture(scope="module")
def guard() -> EgressGuard:
    return EgressGuard(CTX, mode="audit")


# ---- the bypasses of issue 14 ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, match", [
    ("an invitation to Pemberlot's birthday party", "Pemberlot"),  # a pet name that only the history has
    ("Hollis will be there", "Hollis"),  # a single proper noun of the history
    ("thanks to hollis vantreight", "hollis vantreight"),  # a lower-case person name
    ("the marigold ferry launch", "marigold ferry"),  # a lower-case project code name
    ("she plays the oboe", "oboe"),  # a fact of fewer than 4 content words
    ("call me on 07700 900123", "07700 900123"),  # the context's +44 7700 900123 in another format
    ("born on 1987-03-14", "1987-03-14"),  # the context's 14 March 1987 in ISO
    ("my birthday, March 14th", "March 14th"),  # ... by month and day
    ("Dear Barros,", "Barros"),  # a hyphenated surname part
    ("the Strasse gang", "Strasse"),  # ß written ss
    ("ＰＥＭＢＥＲＬＯＴ says hi", "ＰＥＭＢＥＲＬＯＴ"),  # full-width letters
    ("Pem\u200bberlot says hi", "Pem\u200bberlot"),  # a zero-width space inside the name
    ("Ju\u0308rgen says hi", "Ju\u0308rgen"),  # NFD accents
    ("#TeamPemberlot forever", "Pemberlot"),  # inside a hashtag
    ("send it to 12 rowan close please", "12 rowan close"),  # a street address in lower case
])
def test_bypass_of_issue_14_is_found(guard, text, match):
    found = guard.scan_text(text)
    at = text.index(match)
    assert any(f.start <= at and at + len(match) <= f.end for f in found), _kinds(found)
    assert all(text[f.start:f.end] == f.match for f in found)


def test_office_number_in_another_format_is_the_context_s_number(guard):
    # the guard's generic phone pattern flags it too; the term model knows it is this user's number
    assert [h.term.source for h in guard.terms.find("ring 415.555.0199 today")] == ["profile.Privacy_info"]


def test_first_letters_of_a_name_are_pending(guard):
    """One or two letters of a term at a word start hold a logits request (the issue's 1-2 character prefixes)."""
    for text in ("Dear P", "Dear Pe", "Dear Pem", "the marigold", "the marigold f", "call +44 77", "Dear Ho"):
        assert guard.pending(text), text
    for text in ("Dear Pemberton ", "the marigold is", "Dear all,", "Hello", "the cat"):
        assert not guard.pending(text), text


def test_sanitizer_uses_the_term_model(guard):
    s = guard.sanitize("Write an invitation to Pemberlot's birthday party")
    assert s.text == "Write an invitation to [NAME]'s birthday party"
    assert ("Pemberlot", "[NAME]") in s.changes
    s = guard.sanitize("Remind me that the marigold ferry review is on 1987-03-14; call 07700 900123")
    assert "marigold" not in s.text and "1987" not in s.text and "900123" not in s.text, s.text


def test_common_words_and_public_facts_do_not_flag(guard):
    for text in ("Write a warm blog post about the local library and its new reading room.",
                 "Compose a newsletter for the quartet season in March.",
                 "The ferry leaves at 10:30 from pier 4."):
        assert [f for f in guard.scan_text(text) if f.kind == "private_term"] == [], text


def test_common_name_part_matches_only_capitalized():
    tm = PrivateTerms.from_context(PrivateContext({"Name": "Grace Okafor"}))
    assert tm.find("by the grace of god") == []
    assert [h.term.key for h in tm.find("Grace wrote")] == ["grace"]
    assert [h.term.key for h in tm.find("ask okafor")] == ["okafor"]


def test_a_cued_name_that_is_also_a_common_word_stays_private():
    """Dev record 3_19_2: "a rescue dog named Melody" while a song of hers has "a melody". The name must match
    capitalized (it was sent as "The Night I Met Melody"); the common word must not."""
    from cogenesis.core.context import WritingSample

    ctx = PrivateContext({"Privacy_info": "Adopted a rescue dog named Melody who travels with her to most events"},
                         history=[WritingSample("Song", "A melody wrought from tears, now is mine.")])
    tm = PrivateTerms.from_context(ctx)
    assert [h.term.key for h in tm.find('Title: "The Night I Met Melody"')] == ["melody"]
    assert tm.find("a gentle melody for the bridge") == []


def test_linear_scan_handles_a_megabyte(guard):
    """Correctness on a 1 MB body (speed is measured in bench/guard_scan.py, never asserted here)."""
    filler = "The committee met to discuss the library budget and the summer reading list. " * 13000
    text = filler[:500_000] + " Pemberlot " + filler[:500_000] + " 07700 900123"
    found = guard.scan_text(text)
    assert {f.kind for f in found} == {"private_term"} and len(found) == 2
    assert all(f.path.endswith("#normalized") for f in found)


# ---- properties over generated contexts ----------------------------------------------------------------------

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_COMMON = ("the team met on a sunny day to plan the garden and share some ideas about the new school year "
           "while friends walked home after work").split()


@st.composite
def pseudo_word(draw) -> str:
    w = "".join(draw(st.lists(st.sampled_from(_SYLLABLES), min_size=3, max_size=5)))
    assume(zipf(w) == 0)
    return w.capitalize()


def _variants(word: str) -> list[str]:
    """Ways an outbound text can spell the same word."""
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in word)
    zw = word[:2] + "\u200b" + word[2:]
    return [word, word.lower(), word.upper(), full_width, zw, f"{word}'s", f"{word}-Smith", f"#{word}Fans"]


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=pseudo_word(), words=st.lists(st.sampled_from(_COMMON), min_size=3, max_size=20),
       pos=st.integers(min_value=1, max_value=20), variant=st.integers(min_value=0, max_value=7))
def test_property_a_planted_name_is_found_in_every_spelling(name, words, pos, variant):
    sentence = " ".join(words[:pos] + [name] + words[pos:])
    tm = PrivateTerms.from_context(PrivateContext(history=[WritingSample("notes", f"Yesterday {sentence}.")]))
    out = "Please say hi to " + _variants(name)[variant] + " tomorrow"
    assert [h for h in tm.find(out) if h.term.key == name.lower()], (sentence, out)
    red = tm.redact(out)
    assert name.lower() not in normalize(red).replace(" ", "")
    assert not tm.find(red)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(name=pseudo_word(), cut=st.integers(min_value=1, max_value=30))
def test_property_every_prefix_of_a_name_is_pending(name, cut):
    tm = PrivateTerms.from_context(PrivateContext(history=[WritingSample("t", f"I met {name} at the market.")]))
    cut = min(cut, len(name))
    text = "Dear " + name[:cut]
    assert tm.pending(text) or tm.find(text)  # a proper prefix is pending; the whole name is found
    assert not tm.pending("Dear " + name + ", ")


_FORMATS = [
    lambda d: d.strftime("%d %B %Y"), lambda d: d.strftime("%B %d, %Y"), lambda d: d.strftime("%Y-%m-%d"),
    lambda d: d.strftime("%d/%m/%Y"), lambda d: d.strftime("%m/%d/%Y"), lambda d: f"{d.strftime('%B')} {d.day}th, {d.year}",
]


@settings(max_examples=500, deadline=None, derandomize=True)
@given(date=st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2099, 12, 31)),
       a=st.integers(0, 5), b=st.integers(0, 5))
def test_property_dates_match_across_formats(date, a, b):
    tm = PrivateTerms.from_context(PrivateContext({"Birthday": _FORMATS[a](date)}))
    assert tm.find(f"see you on {_FORMATS[b](date)}!"), (_FORMATS[a](date), _FORMATS[b](date))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(digits=st.text("0123456789", min_size=10, max_size=10), style=st.integers(0, 4))
def test_property_phone_numbers_match_across_formats(digits, style):
    d = digits
    forms = [f"+44 {d[1:5]} {d[5:]}", f"0{d[1:5]} {d[5:]}", f"({d[:3]}) {d[3:6]}-{d[6:]}", f"{d[:3]}.{d[3:6]}.{d[6:]}",
             f"{d[:3]} {d[3:6]} {d[6:]}"]
    tm = PrivateTerms.from_context(PrivateContext({"Privacy_info": f"my number is {forms[0]}; the {forms[2]} line"}))
    assert tm.find(f"call {forms[style]} now"), forms[style]


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.text(max_size=60))
def test_property_normalize_map_agrees_with_normalize(text):
    norm, idx = normalize_map(text)
    assert norm == normalize(text)
    assert len(idx) == len(norm) and idx == sorted(idx) and all(0 <= i < len(text) for i in idx)
    assert normalize(norm) == norm  # idempotent
    assert _fold(normalize(text, fold_case=False)) == norm  # the one-pass fold find() uses


# ---- the prefix policy of the logits modes ----------------------------------------------------------------------

_CANARIES = ("pemberlot", "hollis vantreight", "marigold ferry", "7700900123", "rowan close")


def _independent_norm(text: str) -> str:
    """Written apart from terms.normalize on purpose: this is the test's own detector."""
    t = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text)).casefold()
    t = "".join(c for c in t if unicodedata.category(c) not in ("Mn", "Cf"))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", t).split())


def _leaks(text: str) -> list[str]:
    norm = _independent_norm(text)
    digits = re.sub(r"\D", "", text)
    return [c for c in _CANARIES if (c in digits if c.isdigit() else f" {c} " in f" {norm} ")]


def _scripted_decoder(prompt: list[int], reply: list[int], vocab: int, stop: int):
    """A device model that writes a fixed reply (huge logit on the next scripted token): the hard case for the
    logits modes, a reply full of private terms. The fuzz bench's decoder, loaded from bench/."""
    mod = sys.modules.get("privacy_fuzz")
    if mod is None:
        spec = importlib.util.spec_from_file_location("privacy_fuzz", ROOT / "bench" / "privacy_fuzz.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
    dec = mod.ScriptedDecoder(vocab, prompt, stop)
    dec.script = list(reply)
    return dec


class RecordingCloud:
    """Answers every request with a flat top-k and records the prefixes it was sent."""

    def __init__(self):
        self.prefixes: list[list[int]] = []

    def next_token_logprobs(self, prefix_ids, draft_ids=(), k=8):
        self.prefixes.append(list(prefix_ids) + list(draft_ids))
        return [{i: -2.0 for i in range(k)} for _ in range(len(draft_ids) + 1)]


REPLY = (" We are all so happy for you today, and we hope the party is wonderful. Dear Pemberlot, happy birthday "
         "from all of us! Hollis Vantreight says the marigold ferry plan is "
         "ready. Come to 12 Rowan Close or call 07700 900123. Best wishes.")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "redact"])
@pytest.mark.parametrize("block", [False, True])
def test_prefix_policy_never_sends_a_private_term(int4_model, policy, block):
    m = int4_model
    guard = EgressGuard(CTX, mode="strict", detokenize=m.decode)
    encode = lambda s: m.tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    prompt, reply = encode("You write replies."), encode(REPLY)
    vocab = int(m.manifest["model"]["vocab_size"])
    cloud = RecordingCloud()
    pol = PrefixPolicy(guard, m.decode, encode, policy)
    dec = _scripted_decoder(prompt, reply, vocab, int(next(iter(m.stop_ids))))
    res = cogenerate(dec, prompt, cloud, encode("Cloud prompt."), Fuser("mean"),
                     block=block, max_new_tokens=len(reply), cloud_view=pol, draft_k=3, adapt_k=False)
    assert m.decode(res.tokens) == REPLY  # the device really wrote every canary (the test can fail)
    assert len(_leaks(m.decode(res.tokens))) == len(_CANARIES)
    sent = [m.decode(p) for p in cloud.prefixes]
    assert sent, "the cloud was never asked: a policy that never sends proves nothing"
    assert [s for s in sent if _leaks(s)] == []
    for p in cloud.prefixes:  # what the strict guard itself says of each request
        guard.inspect("/test", {"prompt": p})
    if policy == "stop":
        assert res.fallback is not None and res.fallback["reason"] == "guard"
    else:  # fusion went on past the name with a redacted prefix
        assert res.fallback is None and pol.redacted > 0
        assert any("[NAME]" in s for s in sent)
        assert res.fused_steps > sum(1 for s in res.steps if s.step < 3)
    assert pol.held > 0  # "Pem", "Holl"... were held while being spelled out


def test_prefix_policy_rejects_unknown_policy(guard):
    with pytest.raises(ValueError, match="prefix_policy must be one of stop, redact"):
        PrefixPolicy(guard, str, list, "maybe")


def test_random_contexts_keep_terms_apart():
    """Two users' pseudo-word names never cross-match (a sanity check of the automaton offsets)."""
    rng = random.Random(7)
    for _ in range(50):
        a, b = ("".join(rng.choice(_SYLLABLES) for _ in range(4)).capitalize() for _ in range(2))
        if a.lower() in b.lower() or b.lower() in a.lower():
            continue
        tm = PrivateTerms.from_context(PrivateContext(history=[WritingSample("t", f"I met {a} today.")]))
        assert tm.find(f"{b} and friends") == []
        assert [h.match for h in tm.find(f"{b} and {a}")] == [a.lower()]


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.text(max_size=80))
def test_property_guard_prefilter_sees_every_word_the_matcher_sees(text):
    """The guard's linear pre-check (`_words`) must never miss a word of `content_segments`: a miss would
    skip a piece that holds a private span."""
    from cogenesis.cloud_bridge.guard import _words, content_tokens

    words = _words(text)
    assume(words is not None)  # a character whose NFKC form holds a space: the piece is scanned in full
    assert {w for w, _, _ in content_tokens(text)} <= set(words)
