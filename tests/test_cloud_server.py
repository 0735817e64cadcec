"""The reference cloud server over real HTTP on 127.0.0.1 with the real int4 model (no mocked HTTP).

The conformance tests (`endpoint` fixture) also run against a real vLLM: the `vllm_server` fixture (tests/conftest.py)
starts it from .venv-vllm (`make vllm`), or uses COGENESIS_TEST_VLLM_URL (+ COGENESIS_TEST_VLLM_API_KEY) when set;
see docs/vllm.md.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import numpy as np
import pytest
import requests
from cogenesis.cloud_bridge.client import CloudClient
from cogenesis.cloud_bridge.server import create_app, is_loopback, read_capture, serve_in_thread
from cogenesis.runtime.sampling import log_softmax

pytestmark = pytest.mark.slow
KEY = "test-key-123"
TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day in the small town, and the baker opened"


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("cloud") / "capture.jsonl"
    app = create_app(int4_model, api_key=KEY, capture=str(cap), max_body_bytes=64 * 1024, max_tokens=64,
                     max_logprob_positions=256, max_sessions=12)
    with serve_in_thread(app) as srv:
        yield srv


@pytest.fixture(params=["reference", "vllm"])
def endpoint(request):
    """(base_url, api_key, is_reference) for the conformance tests."""
    if request.param == "vllm":
        # vLLM from .venv-vllm (`make vllm`), started once per session, or $COGENESIS_TEST_VLLM_URL: tests/conftest.py
        v = request.getfixturevalue("vllm_server")
        return v.url, v.api_key, False
    return request.getfixturevalue("server").url, KEY, True


def _h(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _post(url: str, path: str, body: dict, key: str | None = KEY, **headers) -> requests.Response:
    return requests.post(url + path, json=body, headers={**_h(key), **headers}, timeout=120)


def _model(url: str, key: str | None) -> str:
    return requests.get(url + "/v1/models", headers=_h(key), timeout=30).json()["data"][0]["id"]


# ---- conformance (reference server, and vLLM when configured) ------------------------------------------------


def test_health_and_models(endpoint):
    url, key, ref = endpoint
    assert requests.get(url + "/health", timeout=30).status_code == 200
    data = requests.get(url + "/v1/models", headers=_h(key), timeout=30).json()
    assert data["object"] == "list" and data["data"][0]["id"]
    if ref:
        assert "prompt_logprobs_start" in data["data"][0]["cogenesis"]["extensions"]


def test_completion_text_and_token_ids(endpoint):
    url, key, _ = endpoint
    model = _model(url, key)
    r = _post(url, "/v1/completions", {"model": model, "prompt": TEXT, "max_tokens": 3, "temperature": 0}, key)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and isinstance(d["choices"][0]["text"], str)
    assert d["choices"][0]["finish_reason"] in ("length", "stop")
    assert d["usage"]["prompt_tokens"] > 10
    ids = requests.post(url + "/tokenize", json={"model": model, "prompt": TEXT, "add_special_tokens": False},
                        headers=_h(key), timeout=30).json()["tokens"]
    r2 = _post(url, "/v1/completions", {"model": model, "prompt": ids, "max_tokens": 3, "temperature": 0,
                                        "logprobs": 2, "return_tokens_as_token_ids": True}, key)
    ch = r2.json()["choices"][0]
    assert ch["text"] == d["choices"][0]["text"]  # same tokens either way, greedy
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) <= 3
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    assert all(k.startswith("token_id:") and v <= 0 for top in lp["top_logprobs"] for k, v in top.items())


def test_prompt_logprobs_shape(endpoint):
    url, key, _ = endpoint
    model = _model(url, key)
    r = _post(url, "/v1/completions", {"model": model, "prompt": TEXT, "max_tokens": 1, "temperature": 0,
                                       "prompt_logprobs": 3}, key)
    assert r.status_code == 200, r.text
    d = r.json()
    pl = d["choices"][0].get("prompt_logprobs") or d.get("prompt_logprobs")
    assert len(pl) == d["usage"]["prompt_tokens"] and pl[0] is None
    for entry in pl[1:]:
        assert 3 <= len(entry) <= 4  # top-3 plus the prompt token when it is not among them
        for tid, v in entry.items():
            assert int(tid) >= 0 and v["logprob"] <= 0 and v["rank"] >= 1 and isinstance(v["decoded_token"], str)
        assert sorted(v["rank"] for v in entry.values())[:3] == [1, 2, 3]


def test_echo_scoring_without_generation(endpoint):
    url, key, _ = endpoint
    r = _post(url, "/v1/completions", {"model": _model(url, key), "prompt": TEXT, "max_tokens": 0, "echo": True,
                                       "logprobs": 1, "temperature": 0}, key)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["text"] == TEXT
    assert ch["logprobs"]["token_logprobs"][0] is None
    assert len(ch["logprobs"]["tokens"]) == r.json()["usage"]["prompt_tokens"]


def test_tokenize_detokenize_chat(endpoint):
    url, key, _ = endpoint
    model = _model(url, key)
    ids = requests.post(url + "/tokenize", json={"model": model, "prompt": "Hello world"}, headers=_h(key),
                        timeout=30).json()["tokens"]
    text = requests.post(url + "/detokenize", json={"model": model, "tokens": ids}, headers=_h(key),
                         timeout=30).json()["prompt"]
    assert text.strip() == "Hello world"
    r = _post(url, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Say hi"}],
                                            "max_tokens": 4, "temperature": 0}, key)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["message"]["content"], str)


def test_client_next_token_logprobs_shape(endpoint, int4_model):
    url, key, _ = endpoint
    c = CloudClient(url, api_key=key, detokenize=int4_model.decode, retries=0)
    prefix = int4_model.encode(TEXT)
    out = c.next_token_logprobs(prefix[:3], prefix[3:6], k=5)
    assert len(out) == 4
    for d in out:
        assert len(d) == 5 and all(v <= 0 for v in d.values())
    alone = c.next_token_logprobs(prefix[:3], (), k=5)  # no drafts: the distribution after the prefix
    assert len(alone) == 1 and alone[0].keys() == out[0].keys()
    assert all(abs(alone[0][t] - out[0][t]) < 1e-3 for t in out[0])


def test_bad_k_is_400(endpoint):
    url, key, _ = endpoint
    r = _post(url, "/v1/completions", {"model": _model(url, key), "prompt": "hi", "max_tokens": 1, "logprobs": 1000},
              key)
    assert r.status_code == 400


def test_auth_required(endpoint):
    url, key, _ = endpoint
    if not key:
        pytest.skip("this server runs without an API key (set COGENESIS_TEST_VLLM_API_KEY with a keyed vLLM)")
    assert _post(url, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, None).status_code == 401
    assert _post(url, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, "wrong-key").status_code == 401


# ---- reference server: values, cache, limits, operations -----------------------------------------------------


def _local_top(lp_row: np.ndarray, k: int) -> dict[int, float]:
    top = np.argsort(-lp_row, kind="stable")[:k]
    return {int(t): float(lp_row[t]) for t in top}


def _assert_top_close(got: dict[int, float], want: dict[int, float], tol: float = 2e-3) -> None:
    for tid, v in got.items():
        assert abs(v - want.get(tid, v)) < tol
    # ids may differ only where two logprobs tie within tolerance at the k-th place
    kth = min(want.values())
    assert {t for t, v in want.items() if v > kth + tol} <= set(got)


def test_prompt_logprobs_equal_local_runtime(server, int4_model):
    ids = int4_model.encode(TEXT)
    k = 5
    d = _post(server.url, "/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": k,
                                              "logprobs": k, "return_tokens_as_token_ids": True}).json()
    lp = log_softmax(int4_model.logits(ids))
    pl = d["choices"][0]["prompt_logprobs"]
    assert pl[0] is None and len(pl) == len(ids)
    for p in range(1, len(ids)):
        got = {int(t): v["logprob"] for t, v in pl[p].items() if v["rank"] <= k}
        _assert_top_close(got, _local_top(lp[p - 1], k))
        tok = pl[p][str(ids[p])]
        assert abs(tok["logprob"] - lp[p - 1, ids[p]]) < 2e-3
        v = lp[p - 1, ids[p]]
        assert int((lp[p - 1] > v + 1e-3).sum()) + 1 <= tok["rank"] <= int((lp[p - 1] > v - 1e-3).sum()) + 1
    gen = {int(t[9:]): v for t, v in d["choices"][0]["logprobs"]["top_logprobs"][0].items()}
    _assert_top_close(gen, _local_top(lp[-1], k))


def test_prompt_logprobs_start_returns_only_the_tail(server, int4_model):
    ids = int4_model.encode(TEXT)
    full = _post(server.url, "/v1/completions", {"prompt": ids, "max_tokens": 0, "prompt_logprobs": 3}).json()
    tail = _post(server.url, "/v1/completions", {"prompt": ids, "max_tokens": 0, "prompt_logprobs": 3,
                                                 "prompt_logprobs_start": len(ids) - 4}).json()
    a, b = full["choices"][0]["prompt_logprobs"], tail["choices"][0]["prompt_logprobs"]
    assert len(a) == len(b) == len(ids)
    assert all(x is None for x in b[: len(ids) - 4])
    for x, y in zip(a[-4:], b[-4:], strict=True):
        assert x.keys() == y.keys()
        assert all(abs(x[t]["logprob"] - y[t]["logprob"]) < 1e-3 for t in x)


def test_prefix_cache_reuses_tokens_and_matches_cold(server, int4_model, log_lines):
    ids = int4_model.encode(TEXT * 3)
    body = {"max_tokens": 1, "temperature": 0, "logprobs": 5, "return_tokens_as_token_ids": True}
    first = _post(server.url, "/v1/completions", {**body, "prompt": ids[:-1]}, **{"X-Session-Id": "grow"}).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    warm = _post(server.url, "/v1/completions", {**body, "prompt": ids}, **{"X-Session-Id": "grow"}).json()
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] == len(ids) - 1
    line = log_lines(server.state, "grow", 2)[-1]
    assert line["cached_tokens"] == len(ids) - 1 and line["computed_tokens"] == 1
    cold = _post(server.url, "/v1/completions", {**body, "prompt": ids}).json()
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    w, c = (x["choices"][0]["logprobs"]["top_logprobs"][0] for x in (warm, cold))
    assert w.keys() == c.keys() and all(abs(w[t] - c[t]) < 1e-3 for t in w)
    # a shorter, diverging prompt in the same session rolls back to the common prefix
    other = _post(server.url, "/v1/completions", {**body, "prompt": ids[:20] + [int(ids[25])]},
                  **{"X-Session-Id": "grow"}).json()
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 20
    # the OpenAI `user` field keys a session too
    for n, want in ((10, 0), (11, 10)):
        d = _post(server.url, "/v1/completions", {**body, "prompt": ids[:n], "user": "user-7"}).json()
        assert d["usage"]["prompt_tokens_details"]["cached_tokens"] == want


def test_concurrent_sessions_match_sequential(server, int4_model):
    base = int4_model.encode(TEXT)
    prompts = [base[: 12 + 2 * i] for i in range(8)]

    def ask(p: list[int], session: str | None) -> list:
        out = []
        for extra in range(2):  # a growing prefix per session (the second request is a cache hit)
            r = _post(server.url, "/v1/completions", {"prompt": p + base[len(p): len(p) + extra], "max_tokens": 1,
                                                      "temperature": 0, "logprobs": 4,
                                                      "return_tokens_as_token_ids": True},
                      **({"X-Session-Id": session} if session else {}))
            ch = r.json()["choices"][0]
            out.append((ch["logprobs"]["tokens"], ch["logprobs"]["top_logprobs"][0]))
        return out

    sequential = [ask(p, None) for p in prompts]
    results: list = [None] * 8
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(prompts[i], f"conc-{i}")))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential, strict=True):
        for (tok_g, top_g), (tok_w, top_w) in zip(got, want, strict=True):
            assert tok_g == tok_w and top_g.keys() == top_w.keys()
            assert all(abs(top_g[t] - top_w[t]) < 1e-3 for t in top_w)


def test_chat_stream_equals_non_stream(server):
    body = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 8, "temperature": 0}
    plain = _post(server.url, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    r = requests.post(server.url + "/v1/chat/completions", json={**body, "stream": True}, headers=_h(KEY),
                      stream=True, timeout=60)
    pieces = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    assert "".join(pieces) == plain


def test_limits_are_400_with_clear_messages(server):
    def err(body: dict) -> str:
        r = _post(server.url, "/v1/completions", {"prompt": "hello", **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]["message"]

    assert "20" in err({"max_tokens": 1, "logprobs": 21})
    assert "prompt_logprobs" in err({"max_tokens": 1, "prompt_logprobs": -1})
    assert "max_tokens" in err({"max_tokens": 65})
    assert "only allowed with echo" in err({"max_tokens": 0})
    assert "prompt_logprobs_start" in err({"prompt": list(range(1, 300)), "max_tokens": 1, "prompt_logprobs": 1})
    assert "vocabulary" in err({"prompt": [10**9], "max_tokens": 1})
    r = requests.post(server.url + "/v1/completions", data=b"{not json", headers=_h(KEY), timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = _post(server.url, "/v1/completions", {"model": "gpt-9", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 404


def test_oversize_body_is_413(server):
    r = requests.post(server.url + "/v1/completions", data=json.dumps({"prompt": "x" * 100_000}),
                      headers={**_h(KEY), "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_auth_messages_and_open_health(server):
    r = _post(server.url, "/v1/completions", {"prompt": "hi"}, None)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert r.headers.get("WWW-Authenticate") == "Bearer"
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401


def test_unauthenticated_only_on_loopback(int4_model):
    with pytest.raises(ValueError, match="API key"):
        create_app(int4_model)
    app = create_app(int4_model, allow_unauthenticated=True)
    with pytest.raises(ValueError, match="loopback"):
        serve_in_thread(app, host="0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with serve_in_thread(app) as srv:
        assert _post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, None).status_code == 200


def test_capture_has_exact_bytes_and_logs_are_json(server, caplog):
    raw = b'{"prompt": "capture me \xc3\xa9", "max_tokens": 1}'
    with caplog.at_level(logging.INFO, logger="cogenesis.cloud.server"):
        r = requests.post(server.url + "/v1/completions", data=raw,
                          headers={**_h(KEY), "Content-Type": "application/json", "X-Session-Id": "cap"}, timeout=30)
        deadline = time.monotonic() + 10  # the line is logged after the response is sent: a loaded machine lags
        while time.monotonic() < deadline and not any('"cap"' in rec.getMessage() for rec in caplog.records):
            time.sleep(0.02)
    assert r.status_code == 200
    recs = read_capture(server.state.settings.capture)
    mine = [c for c in recs if c["body"] == raw]
    assert len(mine) == 1 and mine[0]["headers"]["authorization"] == "<redacted>"
    assert base64.b64decode(mine[0]["body_b64"]) == raw
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "cogenesis.cloud.server"]
    line = next(x for x in lines if x.get("session") == "cap")
    for key in ("path", "status", "ms", "prompt_tokens", "completion_tokens", "cached_tokens", "session"):
        assert key in line
    assert line["status"] == 200 and line["path"] == "/v1/completions"


def test_simulated_rtt_and_fault_count(int4_model):
    app = create_app(int4_model, api_key=KEY, simulate_rtt_ms=300, fault="500", fault_count=1)
    with serve_in_thread(app) as srv:
        t0 = time.perf_counter()
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
        assert time.perf_counter() - t0 >= 0.3
        assert _post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1}).status_code == 500
        assert _post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_completion_stream_with_stop_equals_non_stream(server):
    for stop in ([" 7"], [", 6"]):
        body = {"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": stop}
        plain = _post(server.url, "/v1/completions", body).json()["choices"][0]
        r = requests.post(server.url + "/v1/completions", json={**body, "stream": True}, headers=_h(KEY), timeout=60)
        chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in chunks) == plain["text"]
        assert plain["finish_reason"] == "stop" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
