"""Data layer: loaders (real authors' data when present, shipped sample), prompt builders, outline parser."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cogenesis.core.context import PrivateContext
from cogenesis.data.prompts import (
    GENERIC_SYSTEM,
    approx_tokens,
    parse_outline,
    sketch_request,
    with_context,
    with_sketch,
    without_context,
)
from cogenesis.data.records import (
    PRIVATE_FIELDS,
    PromptPair,
    TaskRecord,
    load_context_aware,
    load_prompt_pairs,
    load_records,
    load_sample,
    parse_rendered_prompt,
    sample_path,
    save_context_aware,
    save_jsonl,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COGENESIS_DATA_DIR", REPO.parent / "shared" / "data" / "cogenesis"))
DEMO = REPO / "examples" / "demo_profile.json"


def need(name: str) -> Path:
    p = DATA / name
    if not p.is_file():
        pytest.skip(f"shared data absent: {p} (the authors' dev data, read from ../shared/data/cogenesis when present)")
    return p


def text_of(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


# ---------------------------------------------------------------- real data


def test_context_aware_dev_loads_all_records():
    recs = load_context_aware(need("context_aware_dev.json"))
    assert len(recs) == 150
    assert len({r.tid for r in recs}) == 150
    for r in recs:
        assert r.instruction.strip() and r.reference.strip()
        assert len(r.context.history) == 4
        assert {"Name", "Location", "Privacy_info", "Smart_device_usage", "Writing_style"} <= set(
            r.context.profile
        )
        assert r.additional_tasks
    ctx = recs[0].private_context()
    assert isinstance(ctx, PrivateContext)
    assert ctx.profile["Name"] == "Isabel Martinez"
    labels = {label for label, _ in ctx.spans()}
    assert "profile.Privacy_info" in labels and "history[3].text" in labels
    s = summarize(recs)
    assert s["records"] == 150 and s["users"] == 111 and s["history_per_record"] == (4, 4)


@pytest.mark.parametrize(
    "with_name, wo_name, n",
    [
        ("ablation_ctx_dev.json", "ablation_ctx_dev_wo.json", 150),
        ("ablation_paper_dev.json", "ablation_paper_dev_wo.json", 161),
    ],
)
def test_prompt_pairs_join_by_tid(with_name, wo_name, n):
    pairs = load_prompt_pairs(need(with_name), need(wo_name), strict=True)
    assert len(pairs) == n and all(isinstance(p, PromptPair) for p in pairs)
    for p in pairs:
        assert p.reference.strip()
        assert p.instruction in p.with_context  # the with-context prompt ends with the same task
        instruction, ctx = parse_rendered_prompt(p.with_context)
        assert instruction == p.instruction
        assert ctx.history, p.tid


def test_ctx_pairs_agree_with_context_aware_records():
    recs = {r.tid: r for r in load_context_aware(need("context_aware_dev.json"))}
    pairs = load_prompt_pairs(need("ablation_ctx_dev.json"), need("ablation_ctx_dev_wo.json"))
    assert {p.tid for p in pairs} == set(recs)
    for p in pairs:
        r = recs[p.tid]
        assert p.instruction == r.instruction.strip()
        assert p.reference == r.reference
        ctx = p.context()
        assert ctx.profile == r.context.profile
        assert [h.text.strip() for h in ctx.history] == [h.text.strip() for h in r.context.history]


def test_load_records_sniffs_authors_formats():
    ca = load_records(need("context_aware_dev.json"))
    assert len(ca) == 150 and ca[0].context.profile
    wo = load_records(need("ablation_ctx_train_wo.json"))
    assert len(wo) == 1346 and not wo[0].context.profile and not wo[0].context.history
    with_ctx = load_records(need("ablation_ctx_dev.json"))
    by_tid = {r.tid: r for r in ca}
    assert all(r.instruction == by_tid[r.tid].instruction for r in with_ctx)
    assert all(r.context.profile == by_tid[r.tid].context.profile for r in with_ctx)


def test_pairs_unmatched_tids(tmp_path):
    a = [
        {
            "tid": "1",
            "conversations": [{"from": "user", "value": "p1"}, {"from": "assistant", "value": "r1"}],
        },
        {
            "tid": "2",
            "conversations": [{"from": "user", "value": "p2"}, {"from": "assistant", "value": "r2"}],
        },
    ]
    b = [
        {"tid": "2", "conversations": [{"from": "user", "value": "t2"}, {"from": "assistant", "value": "r2"}]}
    ]
    (tmp_path / "w.json").write_text(json.dumps(a))
    (tmp_path / "wo.json").write_text(json.dumps(b))
    pairs = load_prompt_pairs(tmp_path / "w.json", tmp_path / "wo.json")
    assert [p.tid for p in pairs] == ["2"]
    with pytest.raises(ValueError, match="only in with-context"):
        load_prompt_pairs(tmp_path / "w.json", tmp_path / "wo.json", strict=True)


# ---------------------------------------------------------------- privacy of the context-free prompt


def test_without_context_carries_only_the_instruction_real_data():
    """No Name/Location value reaches the context-free prompt unless the task text itself contains it."""
    recs = load_context_aware(need("context_aware_dev.json"))
    leaks_via_instruction: dict[str, int] = {}
    for r in recs:
        msgs = without_context(r)
        assert [m["content"] for m in msgs] == [GENERIC_SYSTEM, r.instruction.strip()]
        out = text_of(msgs).lower()
        name, loc = r.context.profile["Name"], r.context.profile["Location"]
        first = next(
            (w for w in name.split() if w.rstrip(".") not in {"Dr", "Mr", "Mrs", "Ms", "Prof"}), name
        )
        values = {
            "Name": name,
            "first name": first,
            "last name": name.split()[-1],
            "Location": loc,
            "city": loc.split(",")[0],
        }
        for label, v in values.items():
            if v.strip() and v.lower() in out:
                assert v.lower() in r.instruction.lower(), f"{r.tid}: {label} {v!r} leaked"
                leaks_via_instruction[label] = leaks_via_instruction.get(label, 0) + 1
        # whole private fields never appear
        for f in PRIVATE_FIELDS:
            assert (
                r.context.profile[f].lower() not in out
                or r.context.profile[f].lower() in r.instruction.lower()
            )
    print(f"\ninstructions that themselves mention a profile value (of {len(recs)}): {leaks_via_instruction}")
    assert leaks_via_instruction.get("Name", 0) == 0 and leaks_via_instruction.get("Location", 0) == 0


def test_context_free_prompts_on_sample_contain_no_private_span():
    for r in load_sample():
        ctx = r.private_context()
        for msgs in (without_context(r), sketch_request(r)):
            out = text_of(msgs)
            for label, span in ctx.spans():
                assert span not in out, f"{r.tid}: {label} in context-free prompt"
            pieces = [p.strip() for f in PRIVATE_FIELDS for p in ctx.profile[f].split(";")]
            for p in pieces:
                assert p not in out, f"{r.tid}: {p!r}"
        full = text_of(with_context(r))
        assert ctx.profile["Name"] in full and r.instruction in full


def test_with_context_is_bounded_real_data():
    recs = load_context_aware(need("context_aware_dev.json"))
    sizes = [approx_tokens(text_of(with_context(r))) for r in recs]
    assert max(sizes) <= 1600, max(sizes)
    for r in recs[:20]:
        out = text_of(with_context(r))
        assert r.context.profile["Name"] in out
        assert (
            r.context.history[0].text[:60] in " ".join(out.split()) or r.context.history[0].text[:60] in out
        )
        assert out.rstrip().endswith(r.instruction.strip())


def test_with_context_respects_limits():
    r = load_sample()[0]
    long = r.model_copy(deep=True)
    for h in long.context.history:
        h.text = (h.text + " ") * 40
    small = text_of(with_context(long, max_tokens=500))
    assert approx_tokens(small) <= 500 + approx_tokens(r.instruction) + 100
    one = text_of(with_context(r, max_history=1))
    assert r.context.history[0].text[:40] in one and r.context.history[1].text[:40] not in one
    # instruction string + explicit context gives the same prompt as the record
    assert with_context(r.instruction, r.private_context()) == with_context(r)
    assert with_context(r.instruction, r.context.model_dump()) == with_context(r)


def test_sketch_prompts():
    r = load_sample()[0]
    req = sketch_request(r.instruction)
    assert r.instruction in text_of(req) and "8 to 15" in text_of(req)
    sketch = "1. Greet the organizer\n2. Introduce the truck\n3. Ask for a trial spot"
    msgs = with_sketch(r, None, sketch)
    out = text_of(msgs)
    assert "1. Greet the organizer" in out and "3. Ask for a trial spot" in out
    assert r.context.profile["Name"] in out and r.instruction in out
    assert (
        with_sketch(r, None, ["Greet the organizer", "Introduce the truck", "Ask for a trial spot"]) == msgs
    )


# ---------------------------------------------------------------- parse_outline


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. Hook\n2. Body\n3. Close", ["Hook", "Body", "Close"]),
        ("Here is an outline:\n1) Hook\n2) Body\nLet me know if you need more!", ["Hook", "Body"]),
        ("(1) Hook\n(2) Body", ["Hook", "Body"]),
        ("- Hook\n* Body\n• Close", ["Hook", "Body", "Close"]),
        ("**1. Hook**\n**2. Body**", ["Hook", "Body"]),
        ("1. **Hook:** open strong\n2. **Body:** facts", ["Hook: open strong", "Body: facts"]),
        ("1. Hook\n   with a question\n2. Body", ["Hook with a question", "Body"]),
        ("```\n1. Hook\n2. Body\n```", ["Hook", "Body"]),
        ('["Hook", "Body"]', ["Hook", "Body"]),
        ('{"outline": ["Hook", "Body"]}', ["Hook", "Body"]),
        ("1. Hook 2. Body 3. Close", ["Hook", "Body", "Close"]),
        ("Step 1: Hook\nStep 2: Body", ["Hook", "Body"]),
        ("## Outline\nHook\nBody", ["Hook", "Body"]),
        ("9. Nine\n10. Ten\n11. Eleven", ["Nine", "Ten", "Eleven"]),
        ("I. Hook\nII. Body\nIII. Close", ["Hook", "Body", "Close"]),
        ("## Intro\n- Hook\n## Main\n- Body", ["Hook", "Body"]),
        ("", []),
    ],
)
def test_parse_outline(text, expected):
    assert parse_outline(text) == expected


def test_parse_outline_keeps_numbers_inside_points():
    assert parse_outline("1. Mention the 2023 results\n2. Cite 3.5% growth") == [
        "Mention the 2023 results",
        "Cite 3.5% growth",
    ]


# ---------------------------------------------------------------- shipped sample and demo profile


def test_sample_data():
    recs = load_sample()
    assert sample_path().is_file()
    assert len(recs) >= 10
    users: dict[str, TaskRecord] = {}
    for r in recs:
        users.setdefault(r.user_id, r)
        assert r.reference.split() and len(r.reference.split()) >= 80
        for f in ("Name", "Location", "Privacy_info", "Smart_device_usage", "Writing_style"):
            assert r.context.profile.get(f), (r.tid, f)
        assert len(r.context.profile["Privacy_info"].split(";")) >= 4
        assert 2 <= len(r.context.history) <= 3
        for h in r.context.history:
            assert 60 <= len(h.text.split()) <= 120, (r.tid, h.title)
    assert 5 <= len(users) <= 6
    assert len({u.context.profile["Name"] for u in users.values()}) == len(users)
    per_user = [sum(1 for r in recs if r.user_id == u) for u in users]
    assert all(2 <= n <= 3 for n in per_user)


def test_sample_round_trips(tmp_path):
    recs = load_sample()
    p = save_context_aware(recs, tmp_path / "ca.json")
    assert load_context_aware(p) == [r.model_copy(update={"source": "ca"}) for r in recs]
    j = save_jsonl(recs, tmp_path / "mine.jsonl")
    assert load_records(j) == recs
    assert load_records(sample_path()) == recs


def test_demo_profile():
    ctx = PrivateContext.load(DEMO)
    assert ctx.profile["Name"] and ctx.profile["Location"] and ctx.profile["Privacy_info"]
    assert ctx.history and ctx.private_texts
    tokens = approx_tokens(ctx.render())
    assert 400 <= tokens <= 720, tokens
    names = {r.context.profile["Name"] for r in load_sample()}
    assert ctx.profile["Name"] in names


# ---------------------------------------------------------------- malformed input


def _good() -> dict:
    return json.loads(sample_path().read_text())[0]


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda r: r["conversations"].pop(), r"conversations|assistant"),
        (lambda r: r.pop("conversations"), r"conversations"),
        (lambda r: r["profile"][1].pop("text"), r"profile\.1\.text"),
        (lambda r: r.__setitem__("additional_tasks", "not a list"), r"additional_tasks"),
        (lambda r: r.__setitem__("tid", ""), r"tid"),
    ],
)
def test_malformed_record_names_file_index_and_tid(tmp_path, mutate, problem):
    data = json.loads(sample_path().read_text())
    bad = data[2]
    tid = bad["tid"]
    mutate(bad)
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError) as ei:
        load_context_aware(p)
    msg = str(ei.value)
    assert str(p) in msg and "record 2" in msg and re.search(problem, msg), msg
    if bad.get("tid"):
        assert repr(tid) in msg


def test_malformed_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        load_records(p)
    p.write_text(json.dumps({"tid": "a"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_context_aware(p)
    p.write_text(json.dumps([_good(), _good()]))
    with pytest.raises(ValueError, match=r"record 1 \(tid='sample_1_1'\): duplicate tid"):
        load_context_aware(p)
    p.write_text(json.dumps([_good(), "oops"]))
    with pytest.raises(ValueError, match="record 1: expected a JSON object"):
        load_context_aware(p)
    j = tmp_path / "y.jsonl"
    good = json.dumps(load_sample()[0].model_dump())
    j.write_text(good + "\n{broken\n")
    with pytest.raises(ValueError, match=r"y\.jsonl: line 2: not valid JSON"):
        load_records(j)
    j.write_text(good + "\n" + json.dumps({"tid": "t9", "instruction": ""}) + "\n")
    with pytest.raises(ValueError, match=r"line 2 \(tid='t9'\): instruction"):
        load_records(j)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_records(tmp_path / "missing.json")


# ---------------------------------------------------------------- CLI helpers (mounted by the main CLI)


def test_data_cli_show_and_prompt(capsys, tmp_path):
    from cogenesis.data.cli import main

    assert main(["show", "sample", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert '"records": 13' in out and "[sample_1_1] Marisol Okafor-Reyes" in out
    assert main(["prompt", "sample", "--tid", "sample_2_1", "--mode", "without"]) == 0
    msgs = json.loads(capsys.readouterr().out)
    assert "Lindqvist" not in json.dumps(msgs) and msgs[1]["content"].startswith("Write a newsletter piece")
    assert main(["prompt", "sample", "--tid", "nope"]) == 1
    assert main(["show", str(tmp_path / "missing.json")]) == 1
    assert "data file not found" in capsys.readouterr().err
