"""Egress privacy guard: canaries are caught (text and token ids), strict blocks, audit records, few false
positives on the authors' real instructions, and the instruction sanitizer removes what the guard would block."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cogenesis.cloud_bridge.audit import read_audit
from cogenesis.cloud_bridge.guard import (
    EgressGuard,
    Finding,
    PrivacyViolation,
    encode_body,
    field_class,
    sanitize_instruction,
)

from cogenesis.core.context import PrivateContext, WritingSample, parse_profile_block
from cogenesis.eval.leakcheck import Canary, find_canaries

# ---- a context with a canary planted in every private field ---------------------------------------------

# Long fields get a canary *phrase* (caught by n-gram overlap); every field also gets a unique
# identifier-like canary token (caught exactly, even in fields that are never matched by value, like Age).
PHRASE_FIELDS = ["Personal_traits", "Writing_style", "Privacy_info", "Smart_device_usage", "Ai_assistant_usage"]
ALL_FIELDS = ["Age", "Name", "Occupation", "Location", *PHRASE_FIELDS, "Email", "Phone"]


def token_canary(i: int) -> str:
    return f"CNRY{i}Q{7919 * (i + 1) % 1000:03d}X"


def phrase_canary(label: str) -> str:
    return f"violet {label.lower()} heron sings over harbor lanterns"


PROFILE = {
    "Age": f"34 {token_canary(0)}",
    "Name": "Zelphine Quarrington",
    "Occupation": f"Luxury Real Estate Agent {token_canary(2)}",
    "Location": "Vexmouth, Lorindale",
    **{k: f"Friendly; {phrase_canary(k)}; {token_canary(4 + i)}" for i, k in enumerate(PHRASE_FIELDS)},
    "Email": "zelphine.q@example.org",
    "Phone": "+44 7700 900123",
}
HISTORY = [
    WritingSample("Harbor notes", f"{phrase_canary('history')} as the tide turns. Ref {token_canary(20)}."),
]
PRIVATE = [f"{phrase_canary('private')} {token_canary(21)}"]

EXPECTED = {  # canary text -> the source label the finding must name
    token_canary(0): "profile.Age",
    token_canary(2): "profile.Occupation",
    **{token_canary(4 + i): f"profile.{k}" for i, k in enumerate(PHRASE_FIELDS)},
    **{phrase_canary(k): f"profile.{k}" for k in PHRASE_FIELDS},
    "Zelphine Quarrington": "profile.Name",
    "Vexmouth": "profile.Location",
    "zelphine.q@example.org": "profile.Email",
    "+44 7700 900123": "profile.Phone",
    phrase_canary("history"): "history[0].text",
    token_canary(20): "history[0].text",
    phrase_canary("private"): "private[0]",
    token_canary(21): "private[0]",
}


@pytest.fixture
def ctx() -> PrivateContext:
    return PrivateContext(dict(PROFILE), list(HISTORY), list(PRIVATE))


def byte_tokenize(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def byte_detokenize(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def chat_body(text: str) -> dict:
    return {"model": "cloud-large", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": f"Please continue: {text}. Thanks"}]}


@pytest.mark.parametrize("canary", sorted(EXPECTED))
def test_canary_in_text_payload_is_found_with_its_source(ctx, canary):
    findings = EgressGuard(ctx, mode="audit").inspect("/v1/chat/completions", chat_body(canary))
    assert EXPECTED[canary] in {f.source for f in findings}, findings
    assert all(f.path == "$.messages[1].content" for f in findings)


@pytest.mark.parametrize("canary", sorted(EXPECTED))
def test_canary_in_token_id_payload_is_found_via_detokenize(ctx, canary):
    guard = EgressGuard(ctx, mode="audit", detokenize=byte_detokenize)
    body = {"prompt": byte_tokenize(f"Continue the story: {canary} and more"), "max_tokens": 8}
    findings = guard.inspect("/v1/completions", body)
    assert EXPECTED[canary] in {f.source for f in findings}, findings
    assert {f.path for f in findings} == {"$.prompt#tokens"}


def test_every_private_field_has_a_canary_that_is_checked():
    labels = set(EXPECTED.values())
    assert {f"profile.{k}" for k in ALL_FIELDS} | {"history[0].text", "private[0]"} <= labels
    assert set(PROFILE) == set(ALL_FIELDS)


def test_token_ids_without_detokenize_are_refused_in_strict_mode(ctx, tmp_path):
    guard = EgressGuard(ctx, mode="strict", audit_log=tmp_path / "a.jsonl")
    with pytest.raises(PrivacyViolation, match=r"token ids cannot be inspected without detokenize=.*\$\.prompt"):
        guard.inspect("/v1/completions", {"prompt": [12, 345, 678]})
    (rec,) = read_audit(tmp_path / "a.jsonl")
    assert rec["blocked"] is True and rec["findings"][0]["kind"] == "uninspectable"
    # batched prompts (lists of lists) are token ids too; audit mode records them and lets them go
    found = EgressGuard(ctx, mode="audit").inspect("/v1/completions", {"prompt": [[1, 2], [3, 4]]})
    assert [f.kind for f in found] == ["uninspectable", "uninspectable"]


def test_clean_token_ids_pass_strict_with_detokenize(ctx):
    guard = EgressGuard(ctx, mode="strict", detokenize=byte_detokenize)
    assert guard.inspect("/v1/completions", {"prompt": byte_tokenize("Write a haiku about autumn rain.")}) == []


def test_strict_raises_naming_span_and_source(ctx, tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = EgressGuard(ctx, mode="strict", audit_log=log)
    with pytest.raises(PrivacyViolation) as exc:
        guard.inspect("/v1/chat/completions", chat_body("a letter from Zelphine Quarrington"))
    msg = str(exc.value)
    assert "profile.Name" in msg and "Zelphine Quarrington" in msg and "/v1/chat/completions" in msg
    assert exc.value.findings[0].source == "profile.Name"
    (rec,) = read_audit(log)
    assert rec["blocked"] is True and rec["mode"] == "strict"
    assert rec["findings"][0] == {"kind": "identifier", "source": "profile.Name",
                                  "match": "Zelphine Quarrington", "path": "$.messages[1].content"}


def test_strict_lets_clean_requests_through_and_logs_them(ctx, tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = EgressGuard(ctx, mode="strict", audit_log=log, session_id="s1")
    assert guard.inspect("/v1/chat/completions", chat_body("a short poem about the sea")) == []
    (rec,) = read_audit(log)
    assert rec["blocked"] is False and rec["findings"] == [] and rec["session"] == "s1"


def test_audit_mode_records_and_does_not_raise(ctx, tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = EgressGuard(ctx, mode="audit", audit_log=log)
    body = json.dumps(chat_body("hello from Vexmouth")).encode()
    findings = guard.inspect("/v1/chat/completions", body)
    assert [f.source for f in findings] == ["profile.Location"]
    (rec,) = read_audit(log)
    assert rec["blocked"] is False and rec["mode"] == "audit" and rec["inspected"] is True
    assert rec["findings"][0]["match"] == "Vexmouth"
    assert rec["bytes"] == len(body)
    assert rec["sha256"] == hashlib.sha256(body).hexdigest()
    assert rec["ts"].endswith("Z") and rec["session"] == guard.session_id


def test_sha256_of_dict_body_is_of_the_encoded_bytes(ctx, tmp_path):
    log = tmp_path / "audit.jsonl"
    body = chat_body("über café ünïcode")
    EgressGuard(ctx, mode="audit", audit_log=log).inspect("/x", body)
    (rec,) = read_audit(log)
    assert rec["sha256"] == hashlib.sha256(encode_body(body)).hexdigest()
    assert rec["bytes"] == len(encode_body(body))


def test_off_mode_only_logs(ctx, tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = EgressGuard(ctx, mode="off", audit_log=log)
    assert guard.inspect("/x", chat_body("Zelphine Quarrington")) == []
    (rec,) = read_audit(log)
    assert rec["inspected"] is False and rec["findings"] == [] and rec["blocked"] is False


def test_unknown_mode_is_rejected(ctx):
    with pytest.raises(ValueError, match="strict, audit, off"):
        EgressGuard(ctx, mode="paranoid")


def test_all_json_strings_are_scanned_recursively_including_keys(ctx):
    body = {"a": {"b": [{"c": "nothing"}, {"d": ["x", "mail zelphine.q@example.org"]}]},
            "Zelphine Quarrington": 1, "n": 3.5, "ok": True, "none": None}
    found = EgressGuard(ctx, mode="audit").inspect("/x", body)
    assert {(f.path, f.source) for f in found} == {
        ("$.a.b[1].d[1]", "profile.Email"),
        ("$.Zelphine Quarrington#key", "profile.Name"),
    }


def test_plain_binary_and_form_bodies(ctx):
    guard = EgressGuard(ctx, mode="audit")
    assert [f.source for f in guard.inspect("/x", b"plain text naming Vexmouth")] == ["profile.Location"]
    (binary,) = guard.inspect("/x", b"\xff\xfe\x00garbage")
    assert binary.kind == "uninspectable"
    form = guard.inspect("/x", b"q=Zelphine+Quarrington&lang=en")
    assert "profile.Name" in {f.source for f in form}


def test_offsets_point_at_the_match(ctx):
    text = "Dear team, Zelphine Quarrington from Vexmouth says hi."
    for f in EgressGuard(ctx).scan_text(text):
        assert text[f.start : f.end] == f.match


# ---- false positives ----------------------------------------------------------------------------------


def test_generic_profile_values_do_not_flag_common_words(ctx):
    guard = EgressGuard(ctx)
    # Age 34, a "Friendly" trait, an occupation and state names are not private alone
    text = ("I am 34, friendly and curious; a real estate agent told me the lily flower grows "
            "in 10-year cycles since the 21st century (2019-2020 data), see 5 Tips For The Open Road.")
    assert guard.scan_text(text) == []


def test_lower_case_name_part_that_is_no_common_word_is_private(ctx):
    # "zelphine" is no English word (Zipf 0): written in lower case it still names the user (issue 14);
    # before the private-term model, lower-case name parts passed
    found = EgressGuard(ctx).scan_text("the zelphine flower grows")
    assert [(f.kind, f.source, f.match) for f in found] == [("private_term", "profile.Name", "zelphine")]


def test_name_part_matches_only_when_capitalised():
    guard = EgressGuard(PrivateContext({"Name": "Grace Okafor"}))
    assert guard.scan_text("by the grace of the editors") == []
    assert [f.match for f in guard.scan_text("Grace wrote it")] == ["Grace"]
    assert [f.match for f in guard.scan_text("by grace okafor")] == ["grace okafor"]  # the full name: any case


def test_field_classes():
    assert field_class("Name") == "name" and field_class("first_name") == "name"
    assert field_class("Location") == "place" and field_class("Email") == "contact"
    assert field_class("Age") == "skip" and field_class("Writing_style") == "descriptive"
    assert field_class("Personal_traits") == "descriptive" and field_class("Privacy_info") == "fact"


@pytest.mark.parametrize(
    "text,kind",
    [
        ("write to jane.doe+news@mail.example.co.uk today", "email"),
        ("call +1 (415) 555-0132 after six", "phone"),
        ("call 0044 20 7946 0958", "phone"),
        ("card 4111-1111-1111-1111 expires soon", "credit_card"),
        ("pay to GB82 WEST 1234 5698 7654 32", "iban"),
        ("ssn 078-05-1120 on file", "national_id"),
        ("we live at 1600 Pennsylvania Avenue now", "street_address"),
    ],
)
def test_identifier_patterns_without_context(text, kind):
    found = EgressGuard(PrivateContext()).scan_text(text)
    assert [f.kind for f in found] == [kind]
    assert found[0].source == f"pattern.{kind}"


@pytest.mark.parametrize(
    "text",
    [
        "card 4111-1111-1111-1112 fails Luhn",
        "on 2024-05-01T12:30:45Z version 3.12.1 sold 1,250,000 units",
        "chapter 12 of 300 pages, 5 ways to drive",
    ],
)
def test_identifier_patterns_negatives(text):
    assert EgressGuard(PrivateContext()).scan_text(text) == []


def test_iban_with_bad_checksum_is_not_an_iban():
    found = EgressGuard(PrivateContext()).scan_text("GB82 WEST 1234 5698 7654 33")
    assert "iban" not in {f.kind for f in found}


def test_instruction_boilerplate_shared_with_history_titles_does_not_flag():
    c = PrivateContext(history=[WritingSample("Write a detailed step-by-step guide for beginners on composting", "...")])
    assert EgressGuard(c).scan_text("Write a detailed step-by-step guide for new team managers") == []


def test_spans_do_not_swallow_text_between_two_quotes():
    c = PrivateContext({"Smart_device_usage": "Purchased 'The Complete Manual to Urban Farming' eBook"})
    text = ("Review of 'The Complete Manual to Urban Farming': Write a comprehensive review of "
            "'The Complete Manual to Urban Farming' eBook you purchased.")
    found = EgressGuard(c).scan_text(text)
    assert {f.source for f in found} == {"profile.Smart_device_usage"}
    assert [f.match for f in found].count("Complete Manual to Urban Farming") == 2  # content-word spans
    assert all("review" not in f.match.casefold() for f in found)  # nothing runs from one title to the other
    assert all(f.end <= 48 or f.start >= 83 for f in found)  # each finding inside one of the two mentions


def test_add_private_short_is_exact_and_long_is_ngram(ctx):
    guard = EgressGuard(ctx)
    guard.add_private("Project Nightjar", "session.codename")
    guard.add_private("the quarterly merger talks with Brightline Foods stalled over pension liabilities", "session.note")
    assert [f.source for f in guard.scan_text("about project nightjar")] == ["session.codename"]
    assert [f.source for f in guard.scan_text("merger talks with Brightline Foods stalled")] == ["session.note"]
    assert guard.scan_text("merger talks stalled") == []  # 3 content words: below the n-gram


# ---- the authors' real data ---------------------------------------------------------------------------

DATA_DIRS = [Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cogenesis",
             Path("/work/shared/data/cogenesis")]


def real_records() -> list[dict]:
    for d in DATA_DIRS:
        f = d / "context_aware_dev.json"
        if f.is_file():
            return json.loads(f.read_text(encoding="utf-8"))
    pytest.skip(f"shared data absent: context_aware_dev.json not in {', '.join(map(str, DATA_DIRS))}")


def real_context(rec: dict) -> PrivateContext:
    return PrivateContext(parse_profile_block(rec["additional_profile"]),
                          [WritingSample(h["title"], h["text"]) for h in rec["profile"]])


@pytest.fixture(scope="module")
def real() -> tuple[list[str], list[EgressGuard], list[PrivateContext]]:
    recs = real_records()
    ctxs = [real_context(r) for r in recs]
    return [r["conversations"][0]["value"] for r in recs], [EgressGuard(c, mode="audit") for c in ctxs], ctxs


GENERIC_SYSTEM_PROMPT = (
    "You are now a helpful personal AI assistant. You should emulate the author's style and tone based on "
    "provided history content. Your responses should be detailed and informative, using the personal information "
    "reasonably in the user's profile. Aim for insightful and high-quality solutions that make users satisfied. "
    "Compose an abstract for the title 'X' that matches the author's unique content, style and tone."
)


def test_real_generic_prompt_text_never_flags(real):
    _, guards, _ = real
    assert [i for i, g in enumerate(guards) if g.scan_text(GENERIC_SYSTEM_PROMPT)] == []


def test_real_false_positive_rate_on_unrelated_instructions(real):
    """Every instruction against the 149 *other* users' contexts (22,350 pairs): any finding there is a false
    positive for that user. Measured without the private-term model: 119 pairs (0.53 %); 114 of them only exact
    hits of a first name or city the other user really shares ("Austin": 49, "Elena": 26), 5 (0.022 %) with an
    n-gram span. With it: 611 (2.7 %), mostly rare topic words of the other user's history ("mentorship": 101,
    "narrate": 30; see the table in cloud_bridge/terms.py). Bounds are ~1.5-3x."""
    instrs, guards, _ = real
    pairs = flagged = classic = spans = 0
    for j, g in enumerate(guards):
        for i, text in enumerate(instrs):
            if i == j:
                continue
            pairs += 1
            found = g.scan_text(text)
            flagged += bool(found)
            classic += any(f.kind != "private_term" for f in found)
            spans += any(f.kind == "verbatim_span" for f in found)
    assert pairs > 1000
    assert classic / pairs < 0.015, f"{classic}/{pairs} unrelated pairs flagged by the classic rules"
    assert flagged / pairs < 0.04, f"{flagged}/{pairs} unrelated pairs flagged"
    assert spans / pairs < 0.001, f"{spans}/{pairs} unrelated pairs with an n-gram span"


def test_real_instructions_that_name_private_facts_are_caught(real):
    """The data's README warns some task titles name private facts; the guard must see them (measured 46/150)."""
    instrs, guards, _ = real
    hits = [i for i, (t, g) in enumerate(zip(instrs, guards, strict=True)) if g.scan_text(t)]
    assert len(hits) >= 30, len(hits)
    madison = next(i for i, t in enumerate(instrs) if t.startswith("Develop an Outline for a Personal Newsletter"))
    strict = EgressGuard(real[2][madison], mode="strict")
    with pytest.raises(PrivacyViolation, match=r"profile\.Name: 'Madison'"):
        strict.inspect("/v1/chat/completions", {"messages": [{"role": "user", "content": instrs[madison]}]})


def test_real_sanitized_instructions_pass_the_strict_guard(real):
    instrs, _, ctxs = real
    changed = 0
    for text, c in zip(instrs, ctxs, strict=True):
        res = sanitize_instruction(text, c)
        changed += res.changed
        EgressGuard(c, mode="strict").inspect("/v1/chat/completions", {"prompt": res.text})  # must not raise
    assert 0 < changed < len(instrs)


def test_real_dinner_party_example_is_rewritten(real):
    instrs, _, ctxs = real
    i = next(i for i, t in enumerate(instrs) if "Monthly Dinner Party" in t)
    res = sanitize_instruction(instrs[i], ctxs[i])
    assert "dinner party" not in res.text.lower()
    assert ("Monthly Dinner Party", "[private detail]") in res.changes


# ---- sanitizer ----------------------------------------------------------------------------------------


def test_sanitize_removes_planted_name_and_city_and_reports_changes():
    c = PrivateContext({"Name": "Isabel Martinez", "Location": "Miami, Florida", "Age": "47",
                        "Privacy_info": "Hosts a monthly dinner party to network with clients; Has a cat named Whiskers"})
    text = "Isabel wants a guide to Miami's best rooftop bars for Isabel Martinez's team in Miami, Florida."
    res = sanitize_instruction(text, c)
    assert "Isabel" not in res.text and "Miami" not in res.text and "Martinez" not in res.text
    assert res.text == ("The user wants a guide to the city's best rooftop bars for the user's team in the city.")
    assert res.changes == [("Isabel", "The user"), ("Miami", "the city"),
                           ("Isabel Martinez", "the user"), ("Miami, Florida", "the city")]
    assert sanitize_instruction(text, c) == res  # deterministic


def test_sanitize_facts_identifiers_and_clean_text():
    c = PrivateContext({"Name": "Isabel Martinez", "Email": "isa@example.com",
                        "Privacy_info": "Hosts a monthly dinner party to network with clients"})
    res = sanitize_instruction("Invite guests to your monthly dinner party; RSVP to isa@example.com or "
                               "+1 305 555 0199.", c)
    assert res.text == "Invite guests to your [private detail]; RSVP to [email] or [phone]."
    from cogenesis.cloud_bridge.guard import PLACEHOLDERS

    assert {new for _, new in res.changes} <= PLACEHOLDERS  # what logit fusion keeps the cloud from proposing
    clean = "Write a haiku about autumn rain."
    assert sanitize_instruction(clean, c).text == clean and not sanitize_instruction(clean, c).changed


def test_sanitize_rewrite_hook_is_used_only_if_it_leaks_nothing():
    c = PrivateContext({"Name": "Isabel Martinez", "Location": "Miami, Florida"})
    text = "Plan a birthday for Isabel in Miami."
    polished = sanitize_instruction(text, c, rewrite=lambda s: s.replace("Plan a birthday", "Organise a party"))
    assert polished.text == "Organise a party for the user in the city."
    assert polished.changes[-1] == ("Plan a birthday for the user in the city.", polished.text)
    leaky = sanitize_instruction(text, c, rewrite=lambda s: s + " (Isabel loves it)")
    assert leaky.text == "Plan a birthday for the user in the city."


def test_finding_record_is_truncated():
    f = Finding("verbatim_span", "history[0].text", "x" * 1000, 0, 1000, "$.prompt")
    assert len(f.to_record()["match"]) == 200


def test_a_copied_sentence_of_mostly_stop_words_is_a_verbatim_span():
    """Found by the independent detector (8 consecutive words, stop words counted) in the 1.5B-cloud experiment:
    the logits mode sent "they're a reflection of me, a game" from a past writing, which has one content word
    and so passed the 4-content-word rule. The guard now also matches runs of 8 words of any kind."""
    history = "I keep every scorecard. Win or lose, they're a reflection of me, a game I will always love."
    guard = EgressGuard(PrivateContext(history=[WritingSample("Why I play", history)]))
    sent = "Every match matters because they're a reflection of me, a game worth playing."
    assert find_canaries([sent], [Canary("passage", history)])  # a leak by the independent measure
    found = guard.scan_text(sent)
    assert [(f.kind, f.source, f.match) for f in found] == [
        ("verbatim_span", "history[0].text", "they're a reflection of me, a game")]
    assert guard.scan_text("Every match matters because they're a reflection of me, a") == []  # 7 words
    assert guard.scan_text("They’re a réflection of ME - a GAME!")  # case, accents and punctuation fold alike


def test_runs_of_only_stop_and_task_words_are_not_indexed():
    """Histories repeat instruction boilerplate; 8 words without a content word would flag other users' tasks
    (3 of 16,500 unrelated pairs at 8 raw words on the dev split, 2 of them such boilerplate:
    scripts/verbatim_run_fp.py)."""
    c = PrivateContext(history=[WritingSample("t", "Today I develop a series of social media posts for my shop.")])
    assert EgressGuard(c).scan_text("Please develop a series of social media posts for a bakery") == []


def test_what_the_qwen_pair_experiment_leaked_is_now_caught():
    """Three kinds of leak the independent detector found in logits replies of a Qwen2.5-0.5B device with the
    Qwen2.5-1.5B cloud (dev 3_19_2, 10_9_3, 10_9_3 again) that the guard let through: 6 words of one profile fact
    item (sent before the span reached 4 content words), a quoted event title made of common words, and 8 words
    of a past writing's title. Each sent text is a leak by the detector's measure; the guard now flags it."""
    from cogenesis.eval.leakcheck import extract_canaries

    fact = ("Listens to music on a smart speaker; Streaming history reveals a mix of classic rock and contemporary "
            "indie playlists; Organizes quarterly 'Music and Medicine' charity events")
    title = "Create a series of patient case studies for the free clinic: write anonymized case studies"
    ctx = PrivateContext({"Smart_device_usage": fact}, [WritingSample(title, "Some text.")])
    guard = EgressGuard(ctx)
    cases = [("Lately I enjoy a mix of classic rock and jazz.", "profile.Smart_device_usage",
              [Canary("passage", "Streaming history reveals a mix of classic rock and contemporary indie playlists",
                      ngram=6)]),
             ("Join us at the Music and Medicine gala.", "profile.Smart_device_usage", extract_canaries(fact)),
             ("Create a series of patient case studies for new nurses.", "history[0].title",
              [Canary("passage", title)])]
    for sent, source, canaries in cases:
        assert find_canaries([sent], canaries), sent  # a leak, measured independently
        assert source in {f.source for f in guard.scan_text(sent)}, sent
    assert guard.scan_text("Lately I enjoy a mix of classic rock.") == []  # 5 words of the item
    assert guard.scan_text("music and medicine go together") == []  # the title is matched as written
