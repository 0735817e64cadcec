"""Structured output (`response_format`) on the reference cloud server, and the synthesis pipeline against it.

Real HTTP on 127.0.0.1, the real int4 SmolLM2-135M bundle, llguidance masking the logits while decoding; no
mocks. One server for the module. The 135M model writes nonsense, but it writes it as schema-valid JSON, so
the pipeline's mechanics (schema per step, validation, checkpoints, resume after SIGKILL) run for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import pytest
import requests
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cogenesis.data.records import load_context_aware
from cogenesis.data.synthesis import STEPS, GroupPortrait, _step_formats, synthesize

pytestmark = pytest.mark.slow

KEY = "structured-test-key"
ROOT = Path(__file__).resolve().parents[1]


class Pet(BaseModel):
    """The test schema: enum, bounded integer, bounded strings, a short list; no extra keys."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=12)
    kind: Literal["cat", "dog", "bird"]
    age: int = Field(ge=0, le=30)
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=10)]] = Field(min_length=1, max_length=2)


PET_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": Pet.model_json_schema()}}
PET_PROMPT = [{"role": "user", "content": "Describe a pet as JSON with its name, kind, age and a few tags."}]


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    cap = tmp_path_factory.mktemp("structured") / "capture.jsonl"
    app = create_app(int4_model, api_key=KEY, max_tokens=512, capture=str(cap))
    with serve_in_thread(app) as srv:
        srv.capture = cap
        yield srv


def _post(url: str, path: str, body: dict, **kw) -> requests.Response:
    return requests.post(url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=300, **kw)


# ---- (a) the server ----------------------------------------------------------------------------------------


def test_json_schema_output_always_validates(server):
    t0 = time.monotonic()
    for seed in range(3):
        r = _post(server.url, "/v1/chat/completions", {"messages": PET_PROMPT, "max_tokens": 64, "temperature": 1.0,
                                                       "seed": seed, "response_format": PET_FORMAT})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice  # the grammar completed, not max_tokens
        pet = Pet.model_validate_json(choice["message"]["content"])
        assert pet.kind in ("cat", "dog", "bird") and 0 <= pet.age <= 30
    # the control: the same request without response_format is prose, not a Pet
    r = _post(server.url, "/v1/chat/completions", {"messages": PET_PROMPT, "max_tokens": 24, "temperature": 0})
    with pytest.raises(ValidationError):
        Pet.model_validate_json(r.json()["choices"][0]["message"]["content"])
    print(f"4 chat requests in {time.monotonic() - t0:.1f}s")


def test_json_object_stream_and_completions(server):
    # json_object: any JSON object
    msgs = [{"role": "user", "content": 'Reply with a JSON object like {"answer": "yes"}.'}]
    r = _post(server.url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 48, "temperature": 0,
                                                   "response_format": {"type": "json_object"}})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and isinstance(json.loads(choice["message"]["content"]), dict)
    # streamed: the deltas add up to a valid object
    body = {"messages": PET_PROMPT, "max_tokens": 64, "temperature": 0.7, "seed": 7, "stream": True,
            "response_format": PET_FORMAT}
    text, finish = "", None
    with _post(server.url, "/v1/chat/completions", body, stream=True) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                c = json.loads(line[6:])["choices"][0]
                text += c["delta"].get("content") or ""
                finish = c["finish_reason"] or finish
    assert finish == "stop"
    Pet.model_validate_json(text)
    # /v1/completions takes response_format too
    r = _post(server.url, "/v1/completions", {"prompt": "A pet, as JSON:", "max_tokens": 64, "temperature": 0,
                                              "response_format": PET_FORMAT})
    assert r.status_code == 200, r.text
    Pet.model_validate_json(r.json()["choices"][0]["text"])


@pytest.mark.parametrize(
    "fmt, says",
    [
        ("json", "must be an object with a 'type'"),
        ({"type": "xml"}, "'xml' is not supported"),
        ({"type": "json_schema"}, "needs a 'json_schema' object"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "name must be a non-empty string"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, "must be a JSON Schema object"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, "cannot be enforced"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "cannot be enforced"),
    ],
)
def test_malformed_response_format_is_400(server, fmt, says):
    for path, body in (("/v1/chat/completions", {"messages": PET_PROMPT}), ("/v1/completions", {"prompt": "x"})):
        r = _post(server.url, path, {**body, "max_tokens": 4, "response_format": fmt})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "response_format" and says in err["message"], err


def test_synthesis_step_schemas_compile_at_default_bounds(server):
    for fmt in _step_formats(n_needed=4, n_total=6, min_words=120, max_words=300).values():
        r = _post(server.url, "/v1/chat/completions", {"messages": PET_PROMPT, "max_tokens": 1, "response_format": fmt})
        assert r.status_code == 200, (fmt["json_schema"]["name"], r.text)
        assert r.json()["choices"][0]["message"]["content"].startswith("{")  # the grammar forced it


def test_health_advertises_response_formats(server):
    caps = requests.get(server.url + "/health", timeout=30).json()["cogenesis"]
    assert caps["response_format"] == ["text", "json_object", "json_schema"]


# ---- (b), (c) the synthesis pipeline against it -----------------------------------------------------------

TINY = dict(
    n_groups=1,
    users_per_group=1,
    tasks_per_user=1,
    history_per_user=1,
    extra_tasks=0,
    min_words=10,
    max_words=20,
    workers=1,
    temperature=0.8,
    max_tokens=320,
    schema_bounds={"max_items": 3, "max_chars": 120, "item_chars": 32},
    extra_body={"seed": 0},
    backoff=0.0,
    http_retries=1,
    # a 135M generator writes placeholders ("Write ") now and then; the mechanics under test are the schemas,
    # checkpoints and resume, so give it room to retry (which answer it lands on depends on the exact logits)
    max_attempts=12,
    progress=False,
)
EXPECTED = {"groups": 1, "profiles": 1, "tasks": 1, "texts": 2}


def _rows(out: Path, step: str) -> list[dict]:
    p = out / f"{step}.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def _check_output(out: Path, res) -> None:
    for step in STEPS:
        rows = _rows(out, step)
        assert len({r["key"] for r in rows}) == len(rows) == EXPECTED[step], (step, rows)
        assert len({r["dedup"] for r in rows}) == len(rows)
    assert res.complete and res.counts == EXPECTED
    recs = load_context_aware(res.export_path)
    assert [(r.tid, r.instruction, r.reference) for r in recs] == [
        (r.tid, r.instruction, r.reference) for r in res.records
    ]
    assert [r.tid for r in recs] == ["0_0_0"]
    r = recs[0]
    assert r.instruction and r.reference and len(r.context.history) == 1 and r.context.history[0].text
    assert {"Name", "Occupation", "Privacy_info"} <= set(r.context.profile)
    GroupPortrait.model_validate(_rows(out, "groups")[0])  # what the checkpoint kept is the step's schema


def _sent_schemas(server, since: float) -> list[dict]:
    from cogenesis.cloud_bridge.server import read_capture

    out = []
    for rec in read_capture(server.capture):
        if rec["ts"] >= since and rec["path"] == "/v1/chat/completions":
            out.append(json.loads(rec["body"]))
    return out


def test_synthesis_end_to_end_against_reference_server(server, tmp_path):
    t0 = time.time()
    res = synthesize(tmp_path, server.url, server.state.model_name, api_key=KEY, **TINY)
    elapsed = time.time() - t0
    _check_output(tmp_path, res)
    sent = _sent_schemas(server, t0)
    assert len(sent) == res.requests >= 5
    names = [b["response_format"]["json_schema"]["name"] for b in sent]
    assert set(names) == {"group_portrait", "user_profile", "task_list", "written_text"}
    # first attempts keep the caller's seed; retries move it (the same seed tends to repeat the same mistake)
    retried = len(sent) - sum(EXPECTED.values())  # one first attempt per unit (groups 1, profiles 1, tasks 1, texts 2)
    seeds = [b["seed"] for b in sent]
    assert seeds.count(0) == len(sent) - retried and all(s > 0 for s in seeds if s != 0)
    failures = _rows(tmp_path, "failures")
    # retries are allowed; a reply that was not JSON is not (the grammar makes every reply parse)
    assert not [f for f in failures if "no JSON" in f["error"] or f["kind"] == "http"], failures
    print(f"\n{res.summary()} in {elapsed:.1f}s; failures: {failures}")
    for step in STEPS:
        print(step, json.dumps(_rows(tmp_path, step), ensure_ascii=False)[:600])


_CHILD = """
import json, sys
from cogenesis.data.synthesis import synthesize
out, url, model, key, kw = sys.argv[1:6]
synthesize(out, url, model, api_key=key, **json.loads(kw))
"""


def test_synthesis_resumes_after_sigkill(server, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-c", _CHILD, str(out), server.url, server.state.model_name, KEY, json.dumps(TINY)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not any((out / f"{s}.jsonl").exists() and (out / f"{s}.jsonl").read_bytes().endswith(b"\n")
                      for s in STEPS):
            assert child.poll() is None, child.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint line within 240 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        killed_at = time.time()
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    before = {s: _rows(out, s) for s in STEPS}
    assert before["groups"] and not before["texts"]  # killed part-way: the first step done, the last not
    res = synthesize(out, server.url, server.state.model_name, api_key=KEY, **TINY)
    _check_output(out, res)
    for step in STEPS:  # what the killed run finished was kept, not redone
        assert _rows(out, step)[: len(before[step])] == before[step]
    resumed = _sent_schemas(server, killed_at)
    resumed_steps = {b["response_format"]["json_schema"]["name"] for b in resumed}
    assert "group_portrait" not in resumed_steps and "written_text" in resumed_steps
    print(f"\nkilled after {sum(map(len, before.values()))} checkpoint line(s); resumed: {res.summary()}")
