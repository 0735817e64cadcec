"""Synthesis pipeline against a real HTTP server on 127.0.0.1 (a small fixture speaking /v1/chat/completions).

The fixture answers each step deterministically with valid JSON (sometimes wrapped in prose or code fences),
and can be told to return garbage for some prompts, to answer the first try of some prompts badly, or to
go down (HTTP 503) after K requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cogenesis.data.records import load_context_aware
from cogenesis.data.synthesis import (
    STEPS,
    ChatClient,
    GeneratorError,
    JsonlStore,
    SynthesisAborted,
    UserProfile,
    extract_json,
    normalize_key,
    synthesize,
)

FIRST = ["Ana", "Bram", "Chidi", "Dara", "Emil", "Fen", "Gita", "Hugo", "Ines", "Joss", "Kai", "Lena"]
LAST = ["Ortiz", "Berg", "Nwosu", "Kaur", "Sato", "Moreau", "Haddad", "Lund", "Reyes", "Quinn"]


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)


@dataclass
class Fixture:
    """Deterministic fake generator; behaviour switches are plain attributes the tests flip."""

    garbage_if: Callable[[str], bool] = lambda prompt: False  # always garbage for matching prompts
    flaky_first_try: bool = True  # some prompts get a bad first answer, then a good one
    down_after: int | None = None  # answer 503 once this many requests were served
    same_names_in_group: bool = False  # profile names collide within a group until told "duplicate"
    one_title_per_reply: bool = False  # each tasks reply repeats one title (a new one per try), as a 135M model does
    tasks_tries: Counter = field(default_factory=Counter)
    requests: int = 0
    by_step: Counter = field(default_factory=Counter)
    retries_seen: int = 0
    auth: set = field(default_factory=set)
    response_formats: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- dispatch
    def reply(self, messages: list[dict]) -> tuple[int, str]:
        with self.lock:
            self.requests += 1
            n = self.requests
        if self.down_after is not None and n > self.down_after:
            return 503, ""
        prompt = messages[1]["content"]
        retry = len(messages) > 2
        feedback = messages[-1]["content"] if retry else ""
        if retry:
            with self.lock:
                self.retries_seen += 1
        if self.garbage_if(prompt):
            return 200, "Sure! Here is the JSON you asked for: {name: 'oops', broken"
        tasks_prompt = "writing tasks this user would really ask" in prompt
        if (
            self.flaky_first_try
            and not retry
            and (tasks_prompt or (prompt.startswith("User profile") and _h(prompt) % 4 == 0))
        ):
            return 200, 'I think this is a great idea {"half": '
        if prompt.startswith("Describe one group"):
            step, body = "groups", self._group(prompt)
        elif prompt.startswith("User group:"):
            step, body = "profiles", self._profile(prompt, "duplicate" in feedback)
        elif tasks_prompt:
            step, body = "tasks", self._tasks(prompt)
        elif "Write the text this user would write" in prompt:
            step, body = "texts", self._text(prompt)
        else:
            return 400, "unknown prompt"
        with self.lock:
            self.by_step[step] += 1
        return 200, body

    # -- step answers (varied wrappers exercise the tolerant JSON extraction)
    def _group(self, prompt: str) -> str:
        hint = re.search(r"drawn from: (.+?)\.", prompt).group(1)
        g = {
            "name": f"{hint.title()} Circle",
            "description": f"People among {hint} who write a lot for work and family.",
            "occupations": ["role one", "role two", "role three"],
            "age_range": "25-60",
            "typical_concerns": "money; health; family",
        }
        return "Here is the group:\n" + json.dumps(g) + "\nHope this helps!"

    def _profile(self, prompt: str, told_duplicate: bool) -> str:
        group = re.search(r"User group: (.+?) - ", prompt).group(1)
        idx = int(re.search(r"Create user (\d+) of", prompt).group(1))
        h = (
            _h(group)
            if self.same_names_in_group and not told_duplicate
            else _h(f"{group}/{idx}/{told_duplicate}")
        )
        name = f"{FIRST[h % len(FIRST)]} {LAST[(h // 7) % len(LAST)]}-{h % 997}"
        p = {
            "Name": name,
            "age": 20 + h % 50,
            "occupation": f"{group.split()[0]} specialist",
            "location": "Springfield, Oregon",
            "personal_traits": ["curious", "kind", "stubborn"],
            "writing style": "short sentences; warm tone; uses lists",
            "privacy_info": [f"private fact {i} of {name}" for i in range(4)],
            "smart_device_usage": ["fitness app", "budget alerts", "searches for rent help"],
            "ai_assistant_usage": ["emails", "posts"],
        }
        return "```json\n" + json.dumps(p, indent=1) + "\n```"

    def _tasks(self, prompt: str) -> str:
        name = re.search(r"^Name: (.+)$", prompt, re.M).group(1)
        n = int(re.search(r"Write (\d+) different writing tasks", prompt).group(1))
        if self.one_title_per_reply:
            with self.lock:
                self.tasks_tries[name] += 1
                k = self.tasks_tries[name]
            same = {"title": f"Write piece {k} for {name}", "description": f"The text asked for on try {k}."}
            return json.dumps({"tasks": [same] * n})
        tasks = [
            {"title": f"Write piece {i} for {name}", "description": f"A text number {i} about life."}
            for i in range(n)
        ]
        tasks.append(dict(tasks[0]))  # a duplicate the pipeline must drop
        return json.dumps({"tasks": tasks}, indent=1)[:-2] + ",\n]}"  # trailing comma, as small models do

    def _text(self, prompt: str) -> str:
        name = re.search(r"^Name: (.+)$", prompt, re.M).group(1)
        task = re.search(r"^Task: (.+)$", prompt, re.M).group(1)
        words = " ".join(f"word{i}" for i in range(60))
        text = f"I am {name} and this is my text for {task}.\n\n{words}"
        if _h(task) % 3 == 0:  # raw newline inside the JSON string: only a lenient parser reads it
            return '{"text": "' + text.replace('"', "'") + '"}'
        return json.dumps({"text": text})


class _Handler(BaseHTTPRequestHandler):
    fixture: Fixture

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.fixture.auth.add(self.headers.get("Authorization"))
        self.fixture.response_formats.append(body.get("response_format"))
        status, content = self.fixture.reply(body["messages"])
        if status != 200:
            self._send(status, {"error": content or "unavailable"})
            return
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Fixture]]:
    fx = Fixture()
    handler = type("H", (_Handler,), {"fixture": fx})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fx
    finally:
        httpd.shutdown()
        httpd.server_close()


SMALL = dict(
    n_groups=2,
    users_per_group=2,
    tasks_per_user=2,
    workers=3,
    history_per_user=2,
    extra_tasks=1,
    min_words=40,
    max_words=80,
    backoff=0.0,
    http_retries=1,
    progress=False,
)
FULL = {"groups": 2, "profiles": 4, "tasks": 4, "texts": 16}


def keys(out: Path, step: str) -> list[str]:
    return [
        json.loads(line)["key"] for line in (out / f"{step}.jsonl").read_text().splitlines() if line.strip()
    ]


def assert_clean_checkpoints(out: Path) -> None:
    for step in STEPS:
        k = keys(out, step)
        assert len(k) == len(set(k)), f"duplicate keys in {step}.jsonl"
        rows = [json.loads(x) for x in (out / f"{step}.jsonl").read_text().splitlines() if x.strip()]
        d = [r["dedup"] for r in rows]
        assert len(d) == len(set(d)), f"duplicate content in {step}.jsonl"


def failures(out: Path) -> list[dict]:
    p = out / "failures.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


# ---------------------------------------------------------------- end to end


def test_end_to_end(server, tmp_path):
    url, fx = server
    res = synthesize(
        tmp_path, url, "fixture-model", api_key="sk-test", response_format={"type": "json_object"}, **SMALL
    )
    assert res.complete and res.counts == FULL
    assert len(res.records) == 8 and not any(res.failures.values())
    recs = load_context_aware(res.export_path)
    assert len(recs) == 8
    assert [r.tid for r in recs] == [f"{g}_{u}_{t}" for g in range(2) for u in range(2) for t in range(2)]
    for r in recs:
        assert r.reference.startswith("I am ") and len(r.context.history) == 2
        assert {"Name", "Location", "Privacy_info", "Smart_device_usage", "Writing_style"} <= set(
            r.context.profile
        )
        assert len(r.additional_tasks) == 1
        assert r.instruction not in [h.title for h in r.context.history]
        assert r.private_context().spans()
    assert len({r.context.profile["Name"] for r in recs}) == 4
    assert fx.retries_seen > 0  # flaky first answers were retried, not dropped
    assert fx.auth == {"Bearer sk-test"}
    assert fx.response_formats and all(f == {"type": "json_object"} for f in fx.response_formats)
    assert_clean_checkpoints(tmp_path)
    # running again is a no-op: nothing left to do, same export
    before = fx.requests
    again = synthesize(tmp_path, url, "fixture-model", **SMALL)
    assert fx.requests == before and again.complete and again.records == res.records


def test_duplicates_are_retried_not_kept(server, tmp_path):
    url, fx = server
    fx.same_names_in_group = True
    res = synthesize(tmp_path, url, "m", **SMALL)
    assert res.complete and len(res.records) == 8
    names = [json.loads(x)["profile"]["Name"] for x in (tmp_path / "profiles.jsonl").read_text().splitlines()]
    assert len(names) == len(set(names)) == 4
    assert_clean_checkpoints(tmp_path)


def test_tasks_are_pooled_across_tries(server, tmp_path):
    """A generator that repeats one title per reply still yields distinct tasks: each try adds one."""
    url, fx = server
    fx.one_title_per_reply, fx.flaky_first_try = True, False
    res = synthesize(tmp_path, url, "m", **{**SMALL, "max_attempts": 6})
    assert res.complete and res.counts == FULL and not res.failures["tasks"]
    rows = [json.loads(x) for x in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:
        titles = [t["title"] for t in r["tasks"]]
        # 4 needed (2 tasks + 2 history): the 4th try completes the unit
        assert [int(re.search(r"piece (\d+)", t).group(1)) for t in titles] == [1, 2, 3, 4]
    assert_clean_checkpoints(tmp_path)


def test_malformed_json_is_retried_then_recorded(server, tmp_path):
    url, fx = server
    fx.garbage_if = lambda p: p.startswith("User group:") and "Create user 1 of" in p
    res = synthesize(tmp_path, url, "m", **SMALL)
    # user 0 of each group gets garbage on every try: 3 attempts, then a failure row each
    bad = [f for f in failures(tmp_path) if f["step"] == "profiles"]
    assert sorted(f["key"] for f in bad) == ["g0_u0", "g1_u0"]
    assert all(f["kind"] == "invalid" and f["attempts"] == 3 and "oops" in f["raw"] for f in bad)
    assert res.failures["profiles"] == 2 and not res.complete
    assert len(res.records) == 4 and len(load_context_aware(res.export_path)) == 4
    # the generator recovers: a resumed run fills exactly the failed units
    fx.garbage_if = lambda p: False
    res2 = synthesize(tmp_path, url, "m", **SMALL)
    assert res2.complete and res2.counts == FULL and len(res2.records) == 8
    assert_clean_checkpoints(tmp_path)


def test_server_down_midway_then_resume(server, tmp_path):
    url, fx = server
    fx.down_after = 14
    with pytest.raises(SynthesisAborted, match="run again to resume"):
        synthesize(tmp_path, url, "m", abort_after=2, **SMALL)
    partial = {s: len(keys(tmp_path, s)) if (tmp_path / f"{s}.jsonl").exists() else 0 for s in STEPS}
    assert 0 < sum(partial.values()) < sum(FULL.values())
    assert any(f["kind"] == "http" for f in failures(tmp_path))
    assert_clean_checkpoints(tmp_path)
    load_context_aware(tmp_path / "context_aware_synth.json")  # the partial export is valid too

    assert dict(fx.by_step) == {s: n for s, n in partial.items() if n}  # every good answer was kept

    fx.down_after = None
    before = Counter(fx.by_step)
    res = synthesize(tmp_path, url, "m", **SMALL)
    assert res.complete and res.counts == FULL and len(res.records) == 8
    assert_clean_checkpoints(tmp_path)
    # the resumed run asked only for the units that were missing
    assert {s: fx.by_step[s] - before[s] for s in STEPS} == {s: FULL[s] - partial[s] for s in STEPS}


def test_limit_then_resume_with_torn_line(server, tmp_path):
    url, fx = server
    res = synthesize(tmp_path, url, "m", limit=9, **SMALL)
    assert not res.complete
    assert sum(res.counts.values()) == 9
    # simulate a crash in the middle of writing the next checkpoint line
    with (tmp_path / "tasks.jsonl").open("a") as f:
        f.write('{"key": "g9_u9", "tasks": [{"title": "half a li')
    res = synthesize(tmp_path, url, "m", **SMALL)
    assert res.complete and res.counts == FULL and len(res.records) == 8
    assert (tmp_path / "tasks.jsonl").read_text().endswith("\n")
    assert "g9_u9" not in keys(tmp_path, "tasks")
    assert_clean_checkpoints(tmp_path)
    assert len(load_context_aware(tmp_path / "context_aware_synth.json")) == 8


def test_client_key_from_env_url_and_errors(server, tmp_path, monkeypatch):
    url, fx = server
    monkeypatch.setenv("COGENESIS_SYNTH_API_KEY", "sk-env")
    client = ChatClient(url + "/v1/", "m", max_retries=0)
    assert client.url == url + "/v1/chat/completions"
    assert client.api_key == "sk-env"
    out = client.chat(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "Describe one group of people, drawn from: x."},
        ]
    )
    assert extract_json(out)["name"] == "X Circle"
    assert fx.auth == {"Bearer sk-env"} and fx.response_formats == [None]
    with pytest.raises(GeneratorError, match="HTTP 400"):
        client.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "nonsense"}])
    fx.down_after = 0
    with pytest.raises(GeneratorError, match="failed after 1 tries"):
        client.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}])


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure!\n```json\n{"a": 1}\n```\nDone.', {"a": 1}),
        ('Here you go: {"a": [1, 2,],} thanks', {"a": [1, 2]}),
        ('<think>{"no": 0} hmm</think>{"a": 1}', {"a": 1}),
        ('{"text": "line one\nline two"}', {"text": "line one\nline two"}),
        ('[{"title": "t"}]', [{"title": "t"}]),
        ('noise {bad} then {"a": {"b": 2}}', {"a": {"b": 2}}),
    ],
)
def test_extract_json(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "no json here", "{'single': 'quotes'}", '{"a": '])
def test_extract_json_rejects(text):
    with pytest.raises(ValueError):
        extract_json(text)


def test_normalize_key():
    assert normalize_key("  Écrire: la LETTRE! ") == normalize_key("ecrire la lettre")


def test_profile_schema_is_tolerant_but_strict_on_content():
    p = UserProfile.model_validate(
        [
            {
                "Name": "Ana Ortiz",
                "Age": 41,
                "Occupation": "nurse",
                "Location": "Tacoma, WA",
                "Personal Traits": "calm; funny",
                "writing-style": ["short", "warm"],
                "privacy_info": "a\nb\nc",
                "smart_device_usage": ["x", "y"],
            }
        ]
    )
    assert p.to_profile()["Privacy_info"] == "a; b; c" and p.age == "41"
    with pytest.raises(ValueError):
        UserProfile.model_validate({"name": "Ana Ortiz", "age": 3, "occupation": "nurse"})


def test_store_dedup_and_torn_line(tmp_path):
    s = JsonlStore(tmp_path / "x.jsonl")
    assert s.add({"key": "a", "dedup": "k1"})
    assert not s.add({"key": "a", "dedup": "k2"})  # same unit twice
    assert not s.add({"key": "b", "dedup": "k1"})  # same content, other unit
    assert s.claim("k3", "c") and not s.claim("k3", "d") and s.add({"key": "c", "dedup": "k3"})
    with (tmp_path / "x.jsonl").open("a") as f:
        f.write('{"key": "z", "ded')
    s2 = JsonlStore(tmp_path / "x.jsonl")
    assert set(s2.rows) == {"a", "c"}
    assert (tmp_path / "x.jsonl").read_text().count("\n") == 2


def test_data_cli_synth(server, tmp_path, capsys):
    from cogenesis.data.cli import main

    url, fx = server
    args = ["synth", "--out", str(tmp_path), "--base-url", url, "--model", "m", "--groups", "1"]
    args += ["--users-per-group", "2", "--tasks-per-user", "1", "--history", "1", "--workers", "2", "--quiet"]
    assert main(args) == 0
    assert "2 records" in capsys.readouterr().out
    assert len(load_context_aware(tmp_path / "context_aware_synth.json")) == 2


def test_template_placeholders_are_rejected(server, tmp_path):
    url, fx = server
    copied = json.dumps(
        {
            "name": "short group name",
            "description": "2-3 sentences on their life and writing needs",
            "occupations": ["3-5 typical jobs"],
        }
    )
    fx.garbage_if = lambda p: False
    orig = fx._group
    fx._group = lambda prompt: copied if "healthcare" in prompt else orig(prompt)
    res = synthesize(tmp_path, url, "m", **{**SMALL, "n_groups": 2, "users_per_group": 1})
    bad = failures(tmp_path)
    assert [(f["step"], f["key"], f["kind"]) for f in bad] == [("groups", "g0", "invalid")]
    assert "template placeholder" in bad[0]["error"]
    assert res.counts["groups"] == 1 and len(res.records) == 2


def test_step_schemas_are_sent_unless_switched_off(server, tmp_path):
    url, fx = server
    small = {**SMALL, "n_groups": 1, "users_per_group": 1}
    assert synthesize(tmp_path / "on", url, "m", **small).complete
    fmts = {f["json_schema"]["name"]: f["json_schema"]["schema"] for f in fx.response_formats}
    assert all(f["type"] == "json_schema" for f in fx.response_formats)
    assert set(fmts) == {"group_portrait", "user_profile", "task_list", "written_text"}
    assert fmts["user_profile"]["additionalProperties"] is False
    assert fmts["user_profile"]["properties"]["privacy_info"] == {
        "items": {"type": "string", "maxLength": 160, "pattern": "[A-Za-z0-9]"},
        "minItems": 3,
        "maxItems": 7,
        "title": "Privacy Info",
        "type": "array",
    }
    # tasks: at least history + target tasks, at most that + extra; texts: bounded by max_words
    assert fmts["task_list"]["properties"]["tasks"]["minItems"] == 4
    assert fmts["task_list"]["properties"]["tasks"]["maxItems"] == 5
    assert fmts["written_text"]["properties"]["text"]["maxLength"] == 80 * 8
    fx.response_formats.clear()
    assert synthesize(tmp_path / "off", url, "m", structured_output=False, **small).complete
    assert fx.response_formats and set(map(str, fx.response_formats)) == {"None"}
