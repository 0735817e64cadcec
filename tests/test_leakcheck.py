"""The independent leak detector (cogenesis.eval.leakcheck): normalization, canonical forms, matching, body decoding,
and its independence from the egress guard (by AST: it may not import the guard or its term model)."""

from __future__ import annotations

import ast
import json
import time
import unicodedata
from pathlib import Path

import pytest

from cogenesis.eval import leakcheck
from cogenesis.eval.leakcheck import (
    Canary,
    decode_body,
    decode_capture,
    extract_canaries,
    find_canaries,
    guess_kind,
    normalize,
)

ROOT = Path(__file__).resolve().parents[1]


def _wide(s: str) -> str:
    """Full-width forms of the ASCII letters and digits of `s`."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def _found(canary: Canary, *texts: str) -> bool:
    return any(not h.partial for h in find_canaries(list(texts), [canary]))


# ---- independence ----------------------------------------------------------------------------------------


def test_leakcheck_imports_nothing_from_the_guard_or_its_term_model():
    tree = ast.parse((ROOT / "cogenesis" / "eval" / "leakcheck.py").read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            names += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    assert names, "the AST walk found no imports at all"
    bad = [n for n in names if any(p in n.split(".") for p in ("guard", "terms", "cloud_bridge"))
           or n.startswith(".")]
    assert not bad, f"leakcheck must stay independent of the guard: {bad}"


# ---- normalization ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,want", [
    ("PEMBERLOT", "pemberlot"),
    ("Pem\u200bberlot", "pemberlot"),  # zero-width space
    ("Pem\u200dber\u2060lot\ufeff", "pemberlot"),  # ZWJ, word joiner, BOM
    ("Pem\u00adberlot", "pemberlot"),  # soft hyphen (Cf)
    ("\u200ePemberlot\u200f", "pemberlot"),  # bidi marks
    (_wide("Pemberlot"), "pemberlot"),
    ("Stra\u00dfe", "strasse"),  # ß casefolds to ss
    ("STRASSE", "strasse"),
    ("Zoe\u0308 Ade\u0301ba\u0301yo\u0300", "zoe adebayo"),  # NFD accents
    ("Zo\u00eb Ad\u00e9b\u00e1y\u00f2", "zoe adebayo"),  # NFC accents
    ("Pemberlot's", "pemberlot s"),
    ("Pemberlot\u2019s", "pemberlot s"),
    ("Okafor-Reyes", "okafor reyes"),
    ("  marigold\t\n  ferry!!", "marigold ferry"),
    ("\ufb01sh", "fish"),  # ligature
    ("\u0661\u0662\u0663", "123"),  # Arabic-Indic digits
    ("jo.b@x.example", "jo b x example"),
])
def test_normalize(raw, want):
    assert normalize(raw) == want


def test_normalize_is_idempotent_and_nfc_nfd_agree():
    for s in ("Ren\u00e9e Fa\u00dfbinder", "\uff2d\uff41\uff52\uff49\uff53\uff4f\uff4c", "\u00c5ngstr\u00f6m"):
        n = normalize(s)
        assert normalize(n) == n
        assert normalize(unicodedata.normalize("NFD", s)) == n


# ---- names and terms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "pemberlot's bowl", "PEMBERLOT", "Pem\u200bberlot", _wide("Pemberlot"), "Pemberlot-Smith", "(Pemberlot)",
    "Dear Pemberlot,", "pemberlot", "Pe\u0301mberlot",
])
def test_name_found_on_word_boundaries(text):
    assert _found(Canary("name", "Pemberlot"), text)


@pytest.mark.parametrize("text", ["Pemberlots", "Pemberlotte", "apemberlot", "Pember lot"])
def test_name_not_found_inside_other_words(text):
    assert not _found(Canary("name", "Pemberlot"), text)


def test_name_parts_and_particles():
    c = Canary("name", "Odalys van der Brennick-Ho")
    assert c.forms[0] == "odalys van der brennick ho"
    assert "odalys" in c.forms and "brennick" in c.forms
    assert "van" not in c.forms and "der" not in c.forms and "ho" not in c.forms  # particles, < 3 letters
    assert _found(c, "thanks ODALYS") and _found(c, "the brennick family")
    assert not _found(c, "a van parked here")


def test_partial_name_at_the_end_of_a_text():
    c = Canary("name", "Pemberlot")
    hits = find_canaries(["Happy birthday, Pemb"], [c])
    assert len(hits) == 1 and hits[0].partial and hits[0].form == "pemberlot"
    assert find_canaries(["Happy birthday, Pem"], [c]) == []  # 3 letters: too short to say
    assert find_canaries(["Pemb was here"], [c]) == []  # only a text's end is a name being spelled
    assert find_canaries(["Happy birthday, Pemb"], [c], partial=False) == []
    full = find_canaries(["Pemb", "Pemberlot"], [c])
    assert len(full) == 1 and not full[0].partial and full[0].text_index == 1  # a full hit wins
    assert find_canaries(["project marig"], [Canary("term", "marigold ferry")]) == []  # terms: whole only


def test_lower_case_code_name_term():
    c = Canary("term", "marigold ferry")
    assert _found(c, "Update on Marigold-Ferry:") and _found(c, "MARIGOLD\u200b FERRY")
    assert not _found(c, "a marigold on the ferry") and not _found(c, "marigold")


# ---- numbers, dates, addresses, e-mails, codes -----------------------------------------------------------


@pytest.mark.parametrize("canary,text", [
    ("+44 7700 900123", "call 07700 900123"),
    ("07700 900123", "ring +44 (0)7700-900123 today"),
    ("+44 7700 900123", "07700900123"),
    ("(415) 555-0199", "415.555.0199"),
    ("415.555.0199", "+1 (415) 555 0199"),
    ("(415) 555-0199", "tel:4155550199"),
    ("(415) 555-0199", "just 555-0199"),
    ("+49 30 1234 5678", _wide("030 12345678")),
])
def test_phone_matches_on_the_last_seven_digits(canary, text):
    assert _found(Canary("phone", canary), text)


@pytest.mark.parametrize("text", ["415.555.0198", "the year 1999 and 2024", "4155 5501"])
def test_phone_other_numbers(text):
    assert not _found(Canary("phone", "(415) 555-0199"), text)


@pytest.mark.parametrize("text", [
    "1987-03-14", "14 March 1987", "March 14, 1987", "14th of March, 1987", "Mar 14th 1987", "14/03/1987",
    "03/14/1987", "14.03.1987", "born on the 14th March", "march 14", _wide("1987-03-14"),
])
def test_date_forms(text):
    assert Canary("date", "14 March 1987").forms == ("1987-03-14", "--03-14")
    assert _found(Canary("date", "14 March 1987"), text)


@pytest.mark.parametrize("text", ["1987-03-15", "14 April 1987", "03/15/1987", "March 1987", "1987", "14 03"])
def test_date_other_dates(text):
    assert not _found(Canary("date", "1987-03-14"), text)


def test_date_canary_needs_a_date():
    with pytest.raises(ValueError, match="not a date"):
        Canary("date", "next Tuesday")
    assert Canary("date", "03/04/1987").forms[:2] == ("1987-03-04", "1987-04-03")  # ambiguous: both readings


def test_address_forms():
    c = Canary("address", "42 Wren Hollow Lane")
    assert c.forms == ("42 wren hollow ln", "wren hollow ln")
    for text in ("42 wren hollow ln.", "42, Wren Hollow Lane", "I live on Wren Hollow Ln", _wide("42 WREN HOLLOW LANE")):
        assert _found(c, text), text
    assert not _found(c, "a wren in the hollow lane") and not _found(c, "42 Wren Hollow Road")
    assert Canary("address", "7 Königsallee Straße").forms[0] == "7 konigsallee str"


def test_email_and_code():
    e = Canary("email", "Jo.Brennick@Fastmail.example")
    assert _found(e, "mail jo.brennick@fastmail.example") and not _found(e, "jo.brennick@gmail.example")
    c = Canary("code", "QX1234-AB")
    assert _found(c, "code qx1234 ab") and _found(c, "QX1234AB") and not _found(c, "QX1234")


def test_guess_kind():
    assert [guess_kind(v) for v in ("a@b.example", "+1 415 555 0199", "14 March 1987", "42 Wren Hollow Lane",
                                    "QX1234-AB", "Pemberlot", "marigold ferry")] == \
        ["email", "phone", "date", "address", "code", "name", "term"]
    with pytest.raises(ValueError, match="unknown canary kind"):
        Canary("pet", "Pemberlot")


def test_passages_and_public_text():
    c = Canary("passage", "The kiln at the old mill runs hotter than any kiln I have used", ngram=5)
    assert _found(c, "yes: the KILN at the old-mill runs hot")
    assert not _found(c, "the kiln at the")  # 4 words
    hits = find_canaries(["the kiln at the old mill"], [c], public=["Write about the kiln at the old mill"])
    assert hits == []  # the user typed those words: not copied from the private text
    short = Canary("passage", "runs a pottery studio")  # shorter than the n-gram: matches whole
    assert _found(short, "she runs a pottery studio") and not _found(short, "runs a pottery class")


def test_find_canaries_one_hit_per_canary_in_order():
    cs = [Canary("name", "Pemberlot"), Canary("term", "marigold ferry"), Canary("phone", "07700 900123")]
    hits = find_canaries(["Marigold Ferry and pemberlot", "PEMBERLOT again"], cs)
    assert [h.canary for h in hits] == cs[:2] and all(h.text_index == 0 for h in hits)


# ---- bodies ----------------------------------------------------------------------------------------------


def test_decode_body_reads_every_string_key_number_and_token_list():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "Pemberlot": True,
                       "prompt": [5, 6, 7], "batch": [[1, 2], [3]], "n": 4155550199, "flag": False}).encode()
    seen: list[list[int]] = []

    def detok(ids):
        seen.append(ids)
        return "<" + ",".join(map(str, ids)) + ">"

    texts = decode_body(body, detok)
    assert {"model", "m", "hi", "Pemberlot", "<5,6,7>", "<1,2>", "<3>", "4155550199"} <= set(texts)
    assert seen == [[5, 6, 7], [1, 2], [3]]
    assert "False" not in texts and "True" not in texts
    assert not any(t.startswith("5 6") for t in decode_body(body))  # no tokenizer: ids are not text
    assert decode_body(b"Pemberlot \xff plain") == ["Pemberlot \ufffd plain"]
    assert decode_body("{broken json") == ["{broken json"]


def test_prefix_and_drafts_decode_as_one_text():
    """logits-block sends prompt = prefix + drafts in one list: a name split at the boundary is still whole."""
    vocab = {1: "Happy birthday, ", 2: "Pem", 3: "berlot", 4: "!"}
    body = json.dumps({"prompt": [1, 2, 3, 4], "prompt_logprobs": 5}).encode()
    texts = decode_body(body, lambda ids: "".join(vocab[i] for i in ids))
    hits = find_canaries(texts, [Canary("name", "Pemberlot")])
    assert len(hits) == 1 and not hits[0].partial


def test_decode_capture_reads_path_query_and_headers_but_not_the_key():
    rec = {"body": b'{"prompt": "x"}', "path": "/v1/completions/Pemberlot", "query": "u=marigold+ferry",
           "headers": {"x-user": "Jo Brennick", "authorization": "<redacted> Pemberlot"}}
    texts = decode_capture(rec)
    assert "Jo Brennick" in texts and "/v1/completions/Pemberlot" in texts and "u=marigold+ferry" in texts
    assert not any("redacted" in t for t in texts)
    cs = [Canary("name", "Jo Brennick"), Canary("term", "marigold ferry")]
    assert len(find_canaries(texts, cs)) == 2


def test_extract_canaries_from_a_private_text():
    text = ("Adopted a rescue cat named 'Clef'; studio 'River Sound Studios'; call (415) 555-0199 or "
            "jo@x.example; born 3 May 1990; locker AB12-CD34; lives at 12 Elm Street; worked 2019-2023; "
            "shifts 7pm-7am; the 'About' page; chat with 'BerlinDJ'")
    got = {(c.kind, c.forms[0]) for c in extract_canaries(text)}
    assert got >= {("term", "clef"), ("term", "river sound studios"), ("phone", "4155550199"),
                   ("email", "jo x example"), ("date", "1990-05-03"), ("code", "ab12 cd34"),
                   ("address", "12 elm st"), ("term", "berlindj")}
    assert not {f for _, f in got} & {"about", "7pm 7am", "20192023", "2019 2023"}


def test_scan_of_a_large_body_is_fast():
    words = ("the quick brown fox jumps over a lazy dog near 14 March 1987 and calls 415 555 0100 " * 13000)
    body = json.dumps({"messages": [{"role": "user", "content": words[:1_000_000]}]}).encode()
    cs = [Canary("name", "Pemberlot"), Canary("term", "marigold ferry"), Canary("phone", "(415) 555-0199"),
          Canary("date", "1987-03-15"), Canary("address", "42 Wren Hollow Lane"), Canary("email", "a@b.example"),
          Canary("passage", "a completely different sentence about a kiln and a mill and a pot")]
    t0 = time.perf_counter()
    hits = find_canaries(decode_body(body), cs * 5)
    dt = time.perf_counter() - t0
    assert hits == [] and len(body) > 999_000
    assert dt < 3.0, f"scanning 1 MB took {dt:.2f} s"


def test_module_constants_documented():
    assert leakcheck.PHONE_KEY_DIGITS == 7 and leakcheck.PARTIAL_MIN >= 4
