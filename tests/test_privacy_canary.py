"""Canaries: unique strings planted in every private field must never reach the cloud server.

Sketch mode runs end to end against the real reference server; the check is on the bytes the SERVER received
(its --capture file: bodies, headers, paths), not on the client's own log.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cogenesis.cloud_bridge.audit import read_audit
from cogenesis.cloud_bridge.client import CloudClient
from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation, field_class
from cogenesis.cloud_bridge.server import create_app, read_capture, serve_in_thread

from cogenesis.cogen.write import write
from cogenesis.core.context import PrivateContext, WritingSample

pytestmark = pytest.mark.slow
KEY = "canary-test-key"
ROOT = Path(__file__).resolve().parents[1]
N_RECORDS = 3
CONTEXT_TOKENS = 300  # the local prompt's context budget: keeps the on-device prefill short on CI cores


def _word(rng: random.Random) -> str:
    """A pronounceable made-up word that appears in no data set: 'Qx' + 6 letters."""
    cons, vow = "bdfgklmnprstvz", "aeiou"
    return "Qx" + "".join(rng.choice(cons if i % 2 == 0 else vow) for i in range(6))


def plant(ctx: PrivateContext, rng: random.Random) -> tuple[PrivateContext, list[str], str]:
    """A copy of `ctx` with a canary in every private field; returns it, the canaries, and an instruction
    suffix that names the canary name, place and a canary fact (what the sanitizer must remove)."""
    canaries: list[str] = []

    def c() -> str:
        w = _word(rng)
        canaries.append(w)
        return w

    profile, name, place, pet = {}, None, None, None
    for key, value in ctx.profile.items():
        cls = field_class(key)
        if cls == "name":
            name = f"{c()} {c()}"
            profile[key] = name
        elif cls == "place":
            place = c()
            profile[key] = f"{place}, {c()}"
        elif cls == "fact" and pet is None:
            pet = c()
            profile[key] = f"{value}; Keeps a pet ferret named {pet}"
        else:
            profile[key] = f"{value} (codeword {c()})"
    if name is None:
        name = f"{c()} {c()}"
        profile["Name"] = name
    if pet is None:
        pet = c()
        profile["Privacy_info"] = f"Keeps a pet ferret named {pet}"
    history = [WritingSample(f"{h.title} {c()}", f"{h.text} My secret codeword is {c()}.") for h in ctx.history]
    private = [f"{t} Codeword {c()}." for t in ctx.private_texts] + [f"My locker codeword is {c()}."]
    suffix = f" Sign it from {name} in {place or 'town'}, and mention my ferret named {pet}."
    return PrivateContext(profile, history, private), canaries, suffix


def _cases(shared: Path | None) -> list[tuple[str, PrivateContext]]:
    demo = PrivateContext.load(ROOT / "examples" / "demo_profile.json")
    cases = [("Write an Instagram caption announcing my breakfast food truck opening next month.", demo)]
    if shared is not None:
        from cogenesis.data.records import load_context_aware

        seen: set[str] = set()
        for r in load_context_aware(shared / "context_aware_dev.json"):
            if r.user_id not in seen and len(cases) <= N_RECORDS:
                seen.add(r.user_id)
                cases.append((r.instruction, r.private_context()))
    return cases


def _leaks(records: list[dict], canaries: list[str]) -> list[tuple[str, str]]:
    found = []
    for rec in records:
        blob = (rec["body"] + json.dumps(rec["headers"]).encode() + rec["path"].encode()
                + rec["query"].encode()).lower()
        found += [(c, rec["path"]) for c in canaries if c.lower().encode() in blob]
    return found


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("canary") / "capture.jsonl"
    with serve_in_thread(create_app(int4_model, api_key=KEY, capture=str(cap))) as srv:
        yield srv


@pytest.fixture(scope="module")
def cases(request) -> list[tuple[str, PrivateContext]]:
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared = None  # the demo profile still runs; the authors' records are skipped
    return _cases(shared)


def test_dev_records_leak_no_canary(int4_model, server, cases, tmp_path):
    if len(cases) == 1:
        pytest.skip("shared dev data absent (../shared/data/cogenesis/context_aware_dev.json): demo profile only")
    _run(int4_model, server, cases[1:], tmp_path)


def test_demo_profile_leaks_no_canary(int4_model, server, cases, tmp_path):
    _run(int4_model, server, cases[:1], tmp_path)


def _run(model, server, cases, tmp_path) -> None:
    rng = random.Random(1234)
    cap = server.state.settings.capture
    for instruction, ctx in cases:
        planted, canaries, suffix = plant(ctx, rng)
        before = len(read_capture(cap))
        audit = tmp_path / f"audit-{before}.jsonl"
        client = CloudClient(server.url, api_key=KEY, retries=0)
        guard = EgressGuard(planted, mode="strict", audit_log=audit,
                            detokenize=lambda ids: model.tokenizer.decode(ids, skip_special_tokens=False))
        r = write(instruction + suffix, planted, model, mode="sketch", client=client, guard=guard,
                  mode_options={"max_tokens": 32}, context_tokens=CONTEXT_TOKENS, max_new_tokens=3)
        sent = read_capture(cap)[before:]
        assert not _leaks(sent, canaries), f"canaries reached the server: {_leaks(sent, canaries)}"
        assert not [c for c in canaries if c.lower() in r.sanitized_instruction.lower()]
        # the check is not vacuous: the sanitized request passed the strict guard and really reached the server
        assert r.mode_used == "sketch" and r.fallback is None, r.fallback
        assert r.outline and r.text is not None
        assert any(rec["path"] == "/v1/chat/completions" for rec in sent)
        assert all(not rec["blocked"] for rec in read_audit(audit))


def test_guard_blocks_a_leaking_request_in_strict_mode(int4_model, server, cases, tmp_path):
    planted, canaries, _ = plant(cases[-1][1], random.Random(99))
    name = planted.profile["Name"]
    audit = tmp_path / "audit.jsonl"
    guard = EgressGuard(planted, mode="strict", audit_log=audit, detokenize=int4_model.decode)
    client = CloudClient(server.url, api_key=KEY, guard=guard, retries=0)
    before = len(read_capture(server.state.settings.capture))
    leak_text = planted.history[0].text[-300:] if planted.history else planted.private_texts[-1]
    with pytest.raises(PrivacyViolation, match="identifier"):
        client.chat([{"role": "user", "content": f"Write a short bio of {name}."}], max_tokens=4)
    with pytest.raises(PrivacyViolation):
        client.next_token_logprobs(int4_model.encode(leak_text), int4_model.encode(" and")[:1], k=3)
    with pytest.raises(PrivacyViolation):
        client.complete(f"{planted.profile['Privacy_info']}", max_tokens=1)
    assert len(read_capture(server.state.settings.capture)) == before, "a blocked request reached the server"
    recs = read_audit(audit)
    assert len(recs) == 3 and all(r["blocked"] for r in recs)
    # write() with the sanitizer switched off: the guard refuses, the session continues locally
    r = write(f"Write a bio of {name}.", planted, int4_model, mode="sketch", client=client, sanitize=False,
              context_tokens=CONTEXT_TOKENS, max_new_tokens=3)
    assert r.mode_used == "local" and "privacy guard" in r.fallback and r.cloud_requests == 0
    assert len(read_capture(server.state.settings.capture)) == before
