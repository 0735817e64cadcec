"""The bridge's contract against a real vLLM (CPU build): real HTTP on 127.0.0.1, the default model's HF folder.

The `vllm_server` fixture (tests/conftest.py) starts vLLM from .venv-vllm (`make vllm`) once per session, or uses
$COGENESIS_TEST_VLLM_URL. Every test counts what it sent in vLLM's OWN log (uvicorn's access lines,
`"POST /v1/completions HTTP/1.1" 200`), not only in the client: a request that did not reach vLLM fails the test.
`make test` sets COGENESIS_REQUIRE_VLLM=1, so without vLLM these tests fail there instead of skipping.
The conformance suite of tests/test_cloud_server.py (`endpoint` = "vllm") runs against the same server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from cogenesis.cloud_bridge.audit import read_audit
from cogenesis.cloud_bridge.client import (
    CloudAuthError,
    CloudBadRequestError,
    CloudClient,
    CloudNotFoundError,
)
from cogenesis.cloud_bridge.guard import EgressGuard
from cogenesis.runtime.sampling import log_softmax

from cogenesis.core.context import PrivateContext
from cogenesis.data.synthesis import ChatClient, GeneratorError, synthesize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TEXT = "Once upon a time, in a village by the sea, there lived an old fisherman who"


def _h(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _model(v) -> str:
    return requests.get(v.url + "/v1/models", headers=_h(v.api_key), timeout=30).json()["data"][0]["id"]


class Served:
    """Counts vLLM's access-log lines of one test: `served.delta(path=..., status=...)` after the requests."""

    def __init__(self, v):
        self.v = v
        self.before = list(v.requests())

    def lines(self, want: int | None = None) -> list[tuple[str, str, int]]:
        if want is not None:
            self.v.wait_count(len(self.before) + want, status=None)
        return self.v.requests()[len(self.before):]

    def delta(self, want: int | None = None, path: str | None = None, method: str | None = None,
              status: int | None = 200) -> int:
        """How many access lines (of `path`/`method`/`status`) vLLM wrote since this object was made; with `want`,
        waits up to 15 s for the total to reach `want` lines first (uvicorn logs a line after the response)."""
        if self.v.log is None:
            pytest.skip("an external vLLM without COGENESIS_TEST_VLLM_LOG: its requests cannot be counted")
        return sum(1 for m, p, s in self.lines(want)
                   if (path is None or p == path) and (method is None or m == method) and (status is None or s == status))


# ---- the server --------------------------------------------------------------------------------------------


def test_vllm_serves_the_default_model_folder(vllm_server, hf_dir):
    v = vllm_server
    served = Served(v)
    r = requests.get(v.url + "/health", timeout=30)
    assert r.status_code == 200 and r.content == b""  # vLLM: an empty 200 (ours: JSON with the capabilities)
    c = CloudClient(v.url + "/v1", api_key=v.api_key, retries=0)
    assert c.health() == {"ok": True}
    card = c.capabilities()
    assert card["owned_by"] == "vllm" and card["max_model_len"] == 2048
    assert not c.supports("prompt_logprobs_start")  # a vLLM extension it lacks: the client sends none
    if v.process is not None:
        assert Path(card["id"]).resolve() == Path(hf_dir).resolve()
    assert requests.get(v.url + "/version", timeout=30).json()["version"]
    assert served.delta(4, status=None) == 4  # /health twice, /v1/models, /version
    assert served.delta(path="/v1/models", method="GET") == 1 and served.delta(path="/health") == 2


def test_errors_map_to_the_clients_exceptions(vllm_server, int4_model):
    v = vllm_server
    served = Served(v)
    with pytest.raises(CloudAuthError, match="API key") as e:
        CloudClient(v.url, api_key="wrong-key", model="m", retries=0).complete("hi", max_tokens=1)
    assert e.value.status == 401
    with pytest.raises(CloudNotFoundError, match="model"):
        CloudClient(v.url, api_key=v.api_key, model="no-such-model", retries=0).complete("hi", max_tokens=1)
    with pytest.raises(CloudBadRequestError, match="logprobs"):  # vLLM's --max-logprobs is 20, as ours
        CloudClient(v.url, api_key=v.api_key, detokenize=int4_model.decode, retries=0).next_token_logprobs(
            int4_model.encode(TEXT), (), k=100)
    assert served.delta(4, path="/v1/completions", status=None) == 3
    assert [s for _, p, s in served.lines() if p == "/v1/completions"] == [401, 404, 400]


# ---- logits: token-id prompts, logprobs, prompt_logprobs ---------------------------------------------------


def test_next_token_logprobs_with_and_without_drafts_match_the_device(vllm_server, int4_model):
    """vLLM computes in float32 from the HF folder, which is the dequantized GGUF; the int4 bundle keeps the GGUF's
    own codes. Its kernel graph keeps the KV cache in fp16 (vLLM's is fp32 here): measured 3.2e-3 at most, under 2e-3 with
    an fp32 cache; an off-by-one position or a wrong prompt moves logprobs by far more than 1e-2."""
    tol = 1e-2 if int4_model.decoder.kv_dtype == np.float16 else 2e-3
    v, m = vllm_server, int4_model
    served = Served(v)
    ids = m.encode(TEXT)
    prefix, draft = ids[:-4], ids[-4:]
    c = CloudClient(v.url, api_key=v.api_key, detokenize=m.decode, retries=0)
    out = c.next_token_logprobs(prefix, draft, k=8)  # one request: prefix + drafts, prompt_logprobs=8
    assert len(out) == len(draft) + 1
    lp = log_softmax(m.logits(ids))
    worst = 0.0
    for i, d in enumerate(out):
        row = lp[len(prefix) - 1 + i]
        want = np.argsort(-row, kind="stable")[:8]
        assert len(d) == 8 and list(d.values()) == sorted(d.values(), reverse=True)
        assert set(d) == {int(t) for t in want} or abs(row[want[-1]] - row[want[-2]]) < tol
        worst = max(worst, max(abs(val - row[t]) for t, val in d.items()))
    assert worst < tol, worst
    with_tokens = c.next_token_logprobs(prefix, draft, k=1, include_tokens=True)
    for i, t in enumerate(draft):
        assert t in with_tokens[i] and abs(with_tokens[i][t] - lp[len(prefix) - 1 + i, t]) < tol
    alone = c.next_token_logprobs(ids, (), k=5)  # no drafts: logprobs of the generated token only
    assert len(alone) == 1 and len(alone[0]) == 5
    assert all(abs(val - lp[-1, t]) < tol for t, val in alone[0].items())
    assert next(iter(alone[0])) == int(np.argmax(lp[-1]))
    assert c.requests_sent == 4  # GET /v1/models once, then the three completions
    assert served.delta(4, path="/v1/completions", method="POST") == 3
    assert served.delta(path="/v1/models") == 1
    print(f"\nvLLM vs the int4 bundle: max |logprob difference| {worst:.2e} over {len(out)} positions")


def test_prompt_logprobs_bypass_the_prefix_cache(vllm_server, int4_model):
    """What the docs table says: prefix caching serves a growing prompt without prompt_logprobs, but a request WITH
    prompt_logprobs recomputes the whole prompt (vLLM skips reading the cache for it), and vLLM ignores our
    `prompt_logprobs_start` extension (it returns every position)."""
    v, m = vllm_server, int4_model
    served = Served(v)
    model = _model(v)
    ids = m.encode("A note on prefix caching in a test of the bridge. " + TEXT * 10)
    assert len(ids) > 128 + 8  # vLLM's CPU backend caches whole blocks of 128 tokens

    def post(body: dict) -> dict:
        r = requests.post(v.url + "/v1/completions", json={"model": model, "max_tokens": 1, "temperature": 0, **body},
                          headers=_h(v.api_key), timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    def cached(d: dict) -> int | None:
        det = d["usage"].get("prompt_tokens_details")
        return det.get("cached_tokens") if det else None

    post({"prompt": ids[:-1], "logprobs": 1})
    warm = post({"prompt": ids, "logprobs": 1})
    scored = post({"prompt": ids, "prompt_logprobs": 2})
    tail = post({"prompt": ids, "prompt_logprobs": 2, "prompt_logprobs_start": len(ids) - 3})
    for d in (scored, tail):
        pl = d["choices"][0]["prompt_logprobs"]
        assert len(pl) == len(ids) and pl[0] is None and all(isinstance(x, dict) for x in pl[1:])
    if v.process is not None:  # our start command has --enable-prompt-tokens-details
        assert cached(warm) and 0 < cached(warm) < len(ids) and cached(warm) % 128 == 0  # whole blocks
        assert cached(scored) == 0 and cached(tail) == 0
    assert served.delta(4, path="/v1/completions") == 4


# ---- sketch --------------------------------------------------------------------------------------------------


def test_sketch_mode_against_vllm(vllm_server, int4_model, tmp_path):
    v, m = vllm_server, int4_model
    served = Served(v)
    c = CloudClient(v.url, api_key=v.api_key, retries=0)
    points = c.sketch("Write a blog post about starting a vegetable garden.", max_tokens=96)
    assert 1 <= len(points) <= 15 and all(isinstance(p, str) and p for p in points)

    from cogenesis.cogen.write import write

    ctx = PrivateContext.load(ROOT / "examples" / "demo_profile.json")
    audit = tmp_path / "egress.jsonl"
    guard = EgressGuard(ctx, mode="strict", audit_log=audit, detokenize=m.decode)
    client = CloudClient(v.url, api_key=v.api_key, guard=guard, retries=0)
    res = write("Write a short post for my followers about my plans for next month.", ctx, m, mode="sketch",
                client=client, guard=guard, mode_options={"max_tokens": 96}, max_new_tokens=32)
    assert res.mode_used == "sketch" and res.fallback is None, res.fallback
    assert res.outline and res.text and res.cloud_requests == client.requests_sent == len(read_audit(audit))
    n = c.requests_sent + client.requests_sent  # each: GET /v1/models, POST /v1/chat/completions
    assert served.delta(n, status=None) == n == 4
    assert served.delta(path="/v1/chat/completions") == 2


# ---- logits-block, end to end ------------------------------------------------------------------------------


def test_logits_block_end_to_end_with_a_private_context(vllm_server, int4_model, tmp_path):
    """`cogenesis.cogen.write` in logits-block mode with the demo profile: the device drafts with the private context, vLLM
    scores the drafts (token ids + prompt_logprobs) without it. Every request the egress guard audited is a line in
    vLLM's log, and the reply is the one the reference server gives (greedy, same weights, fixed draft length:
    the adaptive one follows the measured latencies, which differ between the two servers)."""
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    from cogenesis.cogen.write import write

    v, m = vllm_server, int4_model
    ctx = PrivateContext.load(ROOT / "examples" / "demo_profile.json")
    prompt = "Write a short note thanking a friend for dinner."

    def run(url: str, key: str | None, name: str):
        audit = tmp_path / f"egress-{name}.jsonl"
        guard = EgressGuard(ctx, mode="strict", audit_log=audit, detokenize=m.decode)
        client = CloudClient(url, api_key=key, guard=guard, retries=0)
        res = write(prompt, ctx, m, mode="logits-block", client=client, guard=guard, max_new_tokens=40,
                    repetition_penalty=1.2, mode_options={"adapt_k": False, "draft_k": 4})
        return res, client, read_audit(audit)

    served = Served(v)
    res, client, audit = run(v.url, v.api_key, "vllm")
    fus = res.extra["fusion"]
    assert res.mode_used == "logits-block" and res.text
    assert fus["round_trips"] >= 1 and fus["fused_steps"] >= 1, fus
    # the cloud never failed; the only allowed early end is the guard stopping fusion at a private term
    assert fus["fallback"] is None or fus["fallback"]["reason"] == "guard", fus["fallback"]
    assert not any(r["blocked"] for r in audit)
    assert res.cloud_requests == client.requests_sent == len(audit)
    n = len(audit)
    assert served.delta(n, status=None) == n  # every audited request reached vLLM, and nothing else did
    assert [(p, s) for _, p, s in served.lines()] == [(r["endpoint"], 200) for r in audit]
    assert served.delta(path="/v1/completions") >= fus["round_trips"]

    with serve_in_thread(create_app(m, api_key="ref-key")) as srv:
        ref, _, _ = run(srv.url, "ref-key", "reference")
    assert ref.text == res.text, (ref.text, res.text)
    keys = ("round_trips", "fused_steps", "drafts_proposed", "drafts_accepted", "fallback", "stop_reason")
    assert {k: ref.extra["fusion"][k] for k in keys} == {k: fus[k] for k in keys}
    print(f"\nlogits-block against vLLM: {fus['round_trips']} round trips, {fus['fused_steps']} fused of "
          f"{fus['tokens']} tokens, {n} requests in vLLM's log; fallback: {fus['fallback']}")


# ---- structured output (synthesis) -------------------------------------------------------------------------


def test_structured_output_json_schema(vllm_server):
    from test_structured_output import PET_FORMAT, PET_PROMPT, Pet

    v = vllm_server
    served = Served(v)
    model = _model(v)

    def post(path: str, body: dict) -> requests.Response:
        return requests.post(v.url + path, json={"model": model, **body}, headers=_h(v.api_key), timeout=300)

    for seed in range(2):
        r = post("/v1/chat/completions", {"messages": PET_PROMPT, "max_tokens": 64, "temperature": 1.0, "seed": seed,
                                          "response_format": PET_FORMAT})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        Pet.model_validate_json(choice["message"]["content"])
    r = post("/v1/completions", {"prompt": "A pet, as JSON:", "max_tokens": 64, "temperature": 0,
                                 "response_format": PET_FORMAT})
    assert r.status_code == 200, r.text
    Pet.model_validate_json(r.json()["choices"][0]["text"])
    msgs = [{"role": "user", "content": 'Reply with a JSON object like {"answer": "yes"}.'}]
    r = post("/v1/chat/completions", {"messages": msgs, "max_tokens": 48, "temperature": 0,
                                      "response_format": {"type": "json_object"}})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)
    # an unanchored `pattern` beside minLength, as every synthesis schema has: llguidance (our start command)
    # honours both; vLLM's default backend choice (xgrammar) decodes one-letter strings here
    name = {"type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 4, "maxLength": 40, "pattern": "[A-Za-z0-9]"}}}
    for seed in range(2):
        r = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "A name, as JSON."}],
                                          "max_tokens": 48, "temperature": 1.0, "seed": seed, "response_format":
                                          {"type": "json_schema", "json_schema": {"name": "n", "schema": name}}})
        got = json.loads(r.json()["choices"][0]["message"]["content"])["name"]
        assert len(got) >= 4, got
    assert served.delta(7, status=None) == 7  # GET /v1/models, 5 chat completions, 1 completion
    assert served.delta(path="/v1/chat/completions") == 5 and served.delta(path="/v1/completions") == 1


@pytest.mark.parametrize("fmt", [
    "json",
    {"type": "xml"},
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
])
def test_malformed_response_format_is_a_400_the_synthesis_client_does_not_retry(vllm_server, fmt):
    """vLLM refuses what our server refuses (with its own messages); the synthesis client raises at once."""
    v = vllm_server
    served = Served(v)
    client = ChatClient(v.url, _model(v), v.api_key, max_retries=3, backoff=0.0, max_tokens=4)
    with pytest.raises(GeneratorError, match="HTTP 400"):
        client.chat([{"role": "user", "content": "hi"}], response_format=fmt)
    assert client.requests_made == 1
    assert served.delta(2, path="/v1/chat/completions", status=400) == 1


def test_synthesis_end_to_end_against_vllm(vllm_server, tmp_path):
    """The paper's four-step pipeline with each step's JSON schema as response_format, decoded by vLLM."""
    from test_structured_output import TINY, _check_output, _rows

    v = vllm_server
    served = Served(v)
    res = synthesize(tmp_path, v.url, _model(v), api_key=v.api_key, **TINY)
    _check_output(tmp_path, res)
    failures = _rows(tmp_path, "failures")
    assert not [f for f in failures if "no JSON" in f["error"] or f["kind"] == "http"], failures
    assert served.delta(res.requests + 1, path="/v1/chat/completions") == res.requests >= 5
    print(f"\nsynthesis against vLLM: {res.summary()}; failures: {failures}")

