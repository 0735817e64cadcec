"""A seeded slice of the privacy fuzz bench (bench/privacy_fuzz.py) in `make test`: the real model against the real
reference server on 127.0.0.1, in sketch, logits and logits-block, canaries planted in the authors' dev users (the
demo profile when the shared data is absent). Leaks are counted only from what the SERVER captured, decoded by the
independent detector (cogenesis.eval.leakcheck), never from the guard's findings.

The slice must be able to fail: the device really has to produce canaries in some replies, and every mode really
has to use the cloud in some sessions (a mode that never calls the cloud proves nothing).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from cogenesis.core.context import PrivateContext, WritingSample
from cogenesis.eval.leakcheck import find_canaries

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = 36  # 12 per mode
REAL = 18  # of which the real model writes the reply end to end (the others: scripted replies with the canaries)
MAX_NEW_TOKENS = 16
SEED = 14
SESSION_TIMEOUT_S = 90  # a hung session becomes an error, not a hung test run


def _load_bench():
    spec = importlib.util.spec_from_file_location("privacy_fuzz", ROOT / "bench" / "privacy_fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


pf = _load_bench()


@pytest.fixture(scope="module")
def bases(request):
    try:
        shared = request.getfixturevalue("shared_data")
        return pf.load_bases(shared / "context_aware_dev.json")
    except pytest.skip.Exception:
        return pf.load_bases(None)  # the shipped demo profile: the slice still runs


@pytest.fixture(scope="module")
def fuzz(int4_model, bases, tmp_path_factory):
    sessions = pf.build_sessions(bases, SESSIONS, pf.MODES, real=REAL, seed=SEED)
    result = pf.run_fuzz(sessions, int4_model, MAX_NEW_TOKENS, workdir=tmp_path_factory.mktemp("fuzz"),
                         timeout_s=SESSION_TIMEOUT_S)
    return sessions, result


def test_sessions_cover_every_shape_task_and_mode(bases):
    sessions = pf.build_sessions(bases, SESSIONS, pf.MODES, real=REAL, seed=SEED)
    assert [s.mode for s in sessions[:3]] == list(pf.MODES)
    assert {s.focus for s in sessions} == set(pf.SHAPES)
    assert {s.task for s in sessions} == {"names", "asks"}
    assert sum(s.real for s in sessions) == REAL and {s.mode for s in sessions if s.real} == set(pf.MODES)
    from cogenesis.data.prompts import render_context

    for s in sessions:
        block = render_context(s.context, pf.CONTEXT_TOKENS)
        for p in s.planted:  # every planted canary is in the on-device prompt: the device can repeat it
            assert p.context_form in block, (s.sid, p.shape)
        pets = [p for p in s.planted if p.shape == "pet"]
        for p in pets:  # pet names live only in the writing history
            assert p.context_form not in " ".join(s.context.profile.values()) + " ".join(s.context.private_texts)
            assert any(p.context_form in h.text for h in s.context.history)
        if s.task == "names":
            assert find_canaries([s.instruction], [s.planted[0].canary]), s.instruction
        if not s.real:
            assert find_canaries([s.script], [s.planted[0].canary], partial=False), s.script


def test_phone_and_date_are_written_differently_in_context_and_instruction():
    rng = random.Random(3)
    for shape in ("phone", "date", "address"):
        for _ in range(20):
            p, _, _ = pf.plant(shape, rng)
            assert p.context_form != p.ask_form
            assert find_canaries([p.ask_form], [p.canary], partial=False), (shape, p.ask_form)


@pytest.mark.slow
def test_scripted_model_forces_its_script(int4_model):
    sm = pf.ScriptedModel(int4_model, "Dear Pemberlot, happy birthday!")
    msgs = [{"role": "user", "content": "Write something."}]
    assert sm.generate(msgs, max_new_tokens=40).text == "Dear Pemberlot, happy birthday!"
    sm.set_script("Hi Qu\u200billaby.")
    assert "".join(sm.stream(msgs, max_new_tokens=40)) == "Hi Qu\u200billaby."
    dec, script = sm.decoder, sm.decoder.script
    plen = dec.length - len(script)  # the stop token is never fed back
    dec.truncate(plen + 1)  # roll back like block fusion does: the script continues from the kept tokens
    rows = dec.forward(script[1:3], keep=2)
    assert rows.shape == (2, int(int4_model.manifest["model"]["vocab_size"]))
    assert rows.argmax(-1).tolist() == script[2:4]


def test_capture_tail_reads_only_new_requests(tmp_path):
    import base64
    import json

    cap = tmp_path / "c.jsonl"
    tail = pf.CaptureTail(cap)
    assert tail.new() == []
    rec = {"path": "/v1/models", "body_b64": base64.b64encode(b'{"x": 1}').decode()}
    cap.write_text(json.dumps(rec) + "\n" + json.dumps(rec)[:10])  # the second line is still being written
    got = tail.new()
    assert len(got) == 1 and got[0]["body"] == b'{"x": 1}'
    with open(cap, "a") as f:
        f.write(json.dumps(rec)[10:] + "\n")
    assert len(tail.new()) == 1 and tail.new() == []


def test_summary_and_atomic_results(tmp_path):
    ctx = PrivateContext({"Name": "Ada Quill"}, [WritingSample("t", "x")])
    s = pf.Session(0, "logits", "demo", "Write a note.", ctx, [], "pet", "asks", False)
    rec = {"sid": 0, "mode": s.mode, "policy": "default", "real": False, "source": "demo", "focus": "pet",
           "task": "asks", "shapes": ["pet", "unicode:nfd"], "visible": [], "instruction": "x", "reply": "y",
           "produced": [{"shape": "pet", "value": "Pemberlot", "form": "pemberlot", "partial": False}],
           "sent": [{"shape": "pet", "value": "Pemberlot", "form": "pemberlot", "partial": False}],
           "in_sanitized_instruction": [], "sent_partial": [], "cloud_requests": 3, "server_requests": 4,
           "server_bytes": 100, "used_cloud": True, "mode_used": "logits", "fused_steps": 2, "tokens": 8,
           "fallback": None, "error": None, "wall_s": 0.5}
    summ = pf.summarize([rec])
    assert summ["modes"]["logits"]["sent"] == 1 and summ["modes"]["logits"]["fused_share"] == 0.25
    assert summ["shapes"]["logits"]["pet"] == {"planted": 1, "produced": 1, "sent": 1, "sessions": 1,
                                                "used_cloud": 1}
    assert summ["shapes"]["logits"]["unicode"]["planted"] == 1
    config = {"sessions": 1, "seed": 0, "max_new_tokens": 8, "bundle": "b", "data": "d", "argv": ""}
    j, m = pf.write_results(tmp_path / "r" / "privacy_fuzz", config, {"sessions": [rec], "unsupported": {}})
    assert j.is_file() and m.is_file() and "Sent (must be 0)" in m.read_text()
    assert sorted(p.name for p in j.parent.iterdir()) == sorted([j.name, m.name])  # no temp files left


@pytest.mark.slow
def test_fuzz_slice_sends_no_canary(fuzz):
    sessions, result = fuzz
    recs = result["sessions"]
    assert len(recs) == len(sessions) and not result["unsupported"]
    errors = [(r["sid"], r["error"]) for r in recs if r["error"]]
    assert not errors, errors
    summ = pf.summarize(recs)
    # not vacuous: every mode really used the cloud in some sessions ...
    for mode in pf.MODES:
        t = summ["modes"][mode]
        assert t["used_cloud"] > 0 and t["server_requests"] > 0, (mode, t)
    assert summ["modes"]["logits"]["fused_steps"] > 0 and summ["modes"]["logits-block"]["fused_steps"] > 0
    # ... and the device really wrote canaries in its replies (real model and scripted replies)
    real_produced = sum(len(r["produced"]) for r in recs if r["real"])
    assert real_produced > 0, "the real model repeated no canary: the slice would prove nothing"
    for mode in ("logits", "logits-block"):  # the hard case: replies that carry canaries, with the cloud fusing
        assert any(r["produced"] and r["used_cloud"] for r in recs if r["mode"] == mode), mode
    # nothing the server received carries a canary, whole or its first letters
    sent = [(r["sid"], r["mode"], "real" if r["real"] else "scripted", h["shape"], h["value"], h["partial"])
            for r in recs for h in r["sent"] + r["sent_partial"]]
    assert not sent, f"{len(sent)} canaries reached the server: {sent[:12]}"
