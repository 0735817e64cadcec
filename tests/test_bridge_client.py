"""CloudClient against the real reference server on 127.0.0.1 (real int4 model, real HTTP, no mocks)."""

from __future__ import annotations

import hashlib
import socket
import time

import numpy as np
import pytest
from cogenesis.cloud_bridge.audit import read_audit
from cogenesis.cloud_bridge.client import (
    CloudAuthError,
    CloudBadRequestError,
    CloudClient,
    CloudConnectionError,
    CloudNotFoundError,
    CloudPayloadTooLargeError,
    CloudProtocolError,
    CloudRateLimitError,
    CloudServerError,
    CloudTimeoutError,
)
from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation
from cogenesis.cloud_bridge.server import create_app, read_capture, serve_in_thread
from cogenesis.runtime.sampling import log_softmax

from cogenesis.core.context import PrivateContext

pytestmark = pytest.mark.slow
KEY = "client-test-key"
TEXT = "Once upon a time, in a village by the sea, there lived an old fisherman who"
CTX = PrivateContext(profile={"Name": "Quorra Vantablix", "Location": "Ostrava Bay"})


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("client") / "capture.jsonl"
    app = create_app(int4_model, api_key=KEY, capture=str(cap), max_body_bytes=32 * 1024, max_tokens=64)
    with serve_in_thread(app) as srv:
        yield srv


def _fault_server(model, fault: str, **kw):
    return serve_in_thread(create_app(model, api_key=KEY, fault=fault, **kw))


def _client(url: str, edge, **kw) -> CloudClient:
    kw.setdefault("retries", 0)
    return CloudClient(url, api_key=kw.pop("api_key", KEY), detokenize=edge.decode, **kw)


def test_every_body_passes_the_guard_and_bytes_match_the_audit(server, int4_model, tmp_path):
    audit = tmp_path / "audit.jsonl"
    guard = EgressGuard(CTX, mode="audit", audit_log=audit, detokenize=int4_model.decode)
    c = CloudClient(server.url, api_key=KEY, guard=guard, retries=0, session_id="audit-sess")
    before = len(read_capture(server.state.settings.capture))
    c.complete("Write one word:", max_tokens=2)
    c.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
    c.next_token_logprobs(int4_model.encode(TEXT), int4_model.encode(" a")[:1], k=3)
    c.tokenize("hello")
    recs = read_audit(audit)
    got = read_capture(server.state.settings.capture)[before:]
    assert len(recs) == len(got) == c.requests_sent == 5  # /v1/models once, then the 4 calls
    for rec, cap in zip(recs, got, strict=True):
        assert rec["endpoint"] == cap["path"]
        assert rec["sha256"] == hashlib.sha256(cap["body"]).hexdigest()  # the audited bytes are the wire bytes
        assert cap["headers"]["x-session-id"] == "audit-sess"
    assert any(r["endpoint"] == "/v1/completions" and r["bytes"] > 0 for r in recs)


def test_token_ids_need_a_detokenizer(server, int4_model):
    before = len(read_capture(server.state.settings.capture))
    c = CloudClient(server.url, api_key=KEY, retries=0, model="SmolLM2-135M-Instruct")
    with pytest.raises(PrivacyViolation, match="detokenize"):
        c.next_token_logprobs(int4_model.encode(TEXT), (), k=3)
    assert len(read_capture(server.state.settings.capture)) == before  # nothing was sent


def test_next_token_logprobs_match_local_runtime(server, int4_model):
    ids = int4_model.encode(TEXT)
    prefix, draft = ids[:-4], ids[-4:]
    c = _client(server.url, int4_model)
    out = c.next_token_logprobs(prefix, draft, k=8)
    assert len(out) == len(draft) + 1
    lp = log_softmax(int4_model.logits(ids))
    for i, d in enumerate(out):
        row = lp[len(prefix) - 1 + i]
        want = np.argsort(-row, kind="stable")[:8]
        assert len(d) == 8
        assert set(d) == {int(t) for t in want} or abs(row[want[-1]] - row[want[-2]]) < 2e-3
        assert all(abs(v - row[t]) < 2e-3 for t, v in d.items())
        assert list(d.values()) == sorted(d.values(), reverse=True)
    # include_tokens adds each draft token's own logprob
    out2 = c.next_token_logprobs(prefix, draft, k=1, include_tokens=True)
    for i, t in enumerate(draft):
        assert t in out2[i]
        assert abs(out2[i][t] - lp[len(prefix) - 1 + i, t]) < 2e-3


def test_next_token_logprobs_reuse_the_session_cache(server, int4_model, log_lines):
    ids = int4_model.encode(TEXT)
    c = _client(server.url, int4_model, session_id="grow-client")
    for n in range(10, 14):
        c.next_token_logprobs(ids[:n], (), k=4)
    lines = log_lines(server.state, "grow-client", 4)
    assert [x["cached_tokens"] for x in lines] == [0, 10, 11, 12]
    assert [x["computed_tokens"] for x in lines][1:] == [1, 1, 1]
    # drafts: only the last prefix token and the drafts are recomputed (prompt_logprobs_start)
    c.next_token_logprobs(ids[:14], ids[14:17], k=4)
    last = log_lines(server.state, "grow-client", 5)[-1]
    assert last["cached_tokens"] == 13 and last["computed_tokens"] == 4


def test_sketch_returns_points(server, int4_model):
    c = _client(server.url, int4_model)
    points = c.sketch("Write a blog post about starting a vegetable garden.", max_tokens=40)
    assert 1 <= len(points) <= 15 and all(isinstance(p, str) and p for p in points)


def test_http_errors_map_to_clear_exceptions(server, int4_model):
    with pytest.raises(CloudAuthError, match="API key") as e:
        _client(server.url, int4_model, api_key="wrong").complete("hi", max_tokens=1)
    assert server.url in str(e.value) and e.value.status == 401
    with pytest.raises(CloudNotFoundError, match="model"):
        _client(server.url, int4_model, model="no-such-model").complete("hi", max_tokens=1)
    with pytest.raises(CloudNotFoundError, match="base URL"):
        _client(server.url + "/api", int4_model).complete("hi", max_tokens=1)
    with pytest.raises(CloudPayloadTooLargeError, match="max-body-bytes"):
        _client(server.url, int4_model).complete("word " * 10_000, max_tokens=1)
    with pytest.raises(CloudBadRequestError, match="logprobs"):
        _client(server.url, int4_model).next_token_logprobs([1, 2, 3], (), k=100)


def test_429_is_retried_then_succeeds(int4_model):
    with _fault_server(int4_model, "429", fault_count=1) as srv:
        c = _client(srv.url, int4_model, retries=2, backoff=0.01, model="SmolLM2-135M-Instruct")
        t0 = time.perf_counter()
        assert c.complete("Hello", max_tokens=1).finish_reason in ("length", "stop")
        assert c.requests_sent == 2 and time.perf_counter() - t0 >= 0.9  # honoured Retry-After: 1
    with _fault_server(int4_model, "429") as srv, pytest.raises(CloudRateLimitError):
        _client(srv.url, int4_model, retries=0, model="m").complete("Hello", max_tokens=1)


def test_5xx_retried_with_backoff_then_raises(int4_model):
    with _fault_server(int4_model, "500") as srv:
        c = _client(srv.url, int4_model, retries=2, backoff=0.05, model="SmolLM2-135M-Instruct")
        with pytest.raises(CloudServerError, match="HTTP 500") as e:
            c.complete("Hello", max_tokens=1)
        assert c.requests_sent == 3 and e.value.fix
        assert srv.state.metrics["faults"] == 3


def test_garbage_json_is_a_protocol_error(int4_model):
    with _fault_server(int4_model, "garbage") as srv:
        c = _client(srv.url, int4_model, retries=2, model="SmolLM2-135M-Instruct")
        with pytest.raises(CloudProtocolError, match="not JSON"):
            c.complete("Hello", max_tokens=1)
        assert c.requests_sent == 1  # not retried


def test_stall_past_read_timeout(int4_model):
    with _fault_server(int4_model, "stall", stall_s=3) as srv:
        c = _client(srv.url, int4_model, timeout=(2, 0.5), retries=1, backoff=0.01, model="SmolLM2-135M-Instruct")
        t0 = time.perf_counter()
        with pytest.raises(CloudTimeoutError, match="no answer"):
            c.complete("Hello", max_tokens=1)
        assert c.requests_sent == 2 and time.perf_counter() - t0 < 3


def test_connection_refused(int4_model):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = _client(f"http://127.0.0.1:{port}", int4_model, retries=2, model="m")
    with pytest.raises(CloudConnectionError, match="cogenesis cloud serve"):
        c.complete("Hello", max_tokens=1)
    assert c.requests_sent == 1  # not retried
    with pytest.raises(CloudConnectionError):
        c.health()


def test_health_and_capabilities(server, int4_model):
    c = _client(server.url + "/v1/", int4_model)
    assert c.base_url == server.url
    assert c.health()["ok"] is True
    assert c.supports("prompt_logprobs_start") and c.model == "SmolLM2-135M-Instruct"
    assert c.tokenize("Hello world") == int4_model.encode("Hello world")
    assert c.detokenize(int4_model.encode("Hello world")) == "Hello world"
    with pytest.raises(ValueError, match="base_url"):
        CloudClient("localhost:8000")
