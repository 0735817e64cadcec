"""cogenesis.cogen.write: local and sketch modes end to end against the real reference server, and the fallbacks."""

from __future__ import annotations

import socket

import pytest
from cogenesis.cloud_bridge.client import CloudClient
from cogenesis.cloud_bridge.server import create_app, read_capture, serve_in_thread

from cogenesis.cogen.write import MODES, WriteJob, available_modes, register_mode, write
from cogenesis.core.context import PrivateContext

pytestmark = pytest.mark.slow
KEY = "sketch-test-key"
CTX = PrivateContext(
    profile={"Name": "Odalys Brennecke", "Location": "Harrowgate, Vermont",
             "Privacy_info": "Adopted a rescue greyhound named Pilot last spring; Training for the Burlington marathon"},
)
INSTRUCTION = "Write a short note to my neighbors from Odalys Brennecke about my greyhound named Pilot."
GEN = {"max_new_tokens": 4}
SKETCH = {"max_tokens": 40}


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("sketch") / "capture.jsonl"
    with serve_in_thread(create_app(int4_model, api_key=KEY, capture=str(cap))) as srv:
        yield srv


def _client(url: str, **kw) -> CloudClient:
    return CloudClient(url, api_key=KEY, retries=kw.pop("retries", 0), **kw)


def test_local_mode_streams_and_never_calls_the_cloud(int4_model, server):
    pieces: list[str] = []
    before = len(read_capture(server.state.settings.capture))
    r = write(INSTRUCTION, CTX, int4_model, mode="local", client=_client(server.url), stream_cb=pieces.append, **GEN)
    assert r.mode == r.mode_used == "local" and r.fallback is None and r.cloud_requests == 0
    assert r.text and "".join(pieces) == r.text
    assert r.sanitized_instruction is None and r.outline is None
    assert len(read_capture(server.state.settings.capture)) == before
    assert {"local_s", "total_s", "first_token_s"} <= set(r.timings)


def test_sketch_mode_sends_only_the_sanitized_instruction(int4_model, server):
    pieces: list[str] = []
    before = len(read_capture(server.state.settings.capture))
    r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=_client(server.url), stream_cb=pieces.append,
              mode_options=SKETCH, **GEN)
    assert r.mode_used == "sketch" and r.fallback is None, r.fallback
    assert r.outline and all(isinstance(p, str) for p in r.outline)
    assert r.text and "".join(pieces) == r.text
    assert "Odalys" not in r.sanitized_instruction and "Pilot" not in r.sanitized_instruction
    assert any("Odalys Brennecke" in orig for orig, _ in r.changes)
    sent = read_capture(server.state.settings.capture)[before:]
    assert r.cloud_requests == len(sent) == 2  # GET /v1/models, POST /v1/chat/completions
    body = sent[-1]["body"].decode()
    assert sent[-1]["path"] == "/v1/chat/completions"
    assert "the user" in body and "Odalys" not in body and "Brennecke" not in body and "Harrowgate" not in body
    assert {"sanitize_s", "cloud_s", "local_s", "total_s"} <= set(r.timings)


def _assert_fell_back(r, *words: str) -> None:
    assert r.mode == "sketch" and r.mode_used == "local" and r.text
    assert r.fallback and all(w in r.fallback for w in words), r.fallback


@pytest.mark.parametrize("fault,words,attempts", [("500", ("CloudServerError", "HTTP 500"), 2),
                                                  ("garbage", ("CloudProtocolError", "not JSON"), 1),
                                                  ("stall", ("CloudTimeoutError",), 2)])
def test_cloud_faults_fall_back_to_local(int4_model, fault, words, attempts):
    with serve_in_thread(create_app(int4_model, api_key=KEY, fault=fault, stall_s=3)) as srv:
        client = _client(srv.url, timeout=(2, 0.5), retries=1, backoff=0.01)
        pieces: list[str] = []
        r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=client, stream_cb=pieces.append,
                  mode_options=SKETCH, **GEN)
    _assert_fell_back(r, *words)
    assert "".join(pieces) == r.text
    assert r.cloud_requests == attempts  # 500 and timeouts are retried once, garbage is not
    assert r.sanitized_instruction and r.outline is None


def test_connection_refused_falls_back(int4_model):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=_client(f"http://127.0.0.1:{port}"), **GEN)
    _assert_fell_back(r, "CloudConnectionError", "cannot connect")


def test_wrong_key_and_no_client_fall_back(int4_model, server):
    r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=CloudClient(server.url, api_key="nope"), **GEN)
    _assert_fell_back(r, "CloudAuthError", "401")
    r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=None, **GEN)
    _assert_fell_back(r, "no cloud client")


def test_guard_block_falls_back_and_sends_nothing(int4_model, server):
    before = len(read_capture(server.state.settings.capture))
    r = write(INSTRUCTION, CTX, int4_model, mode="sketch", client=_client(server.url), sanitize=False, **GEN)
    _assert_fell_back(r, "privacy guard", "nothing was sent")
    assert r.cloud_requests == 0 and r.sanitized_instruction == INSTRUCTION
    assert len(read_capture(server.state.settings.capture)) == before


def test_modes_are_extensible(int4_model):
    seen = {}

    def shout(job: WriteJob) -> str:
        seen["instruction"] = job.cloud_instruction()
        job.emit("HELLO")
        return "HELLO"

    register_mode("test-shout", shout)
    try:
        r = write(INSTRUCTION, CTX, int4_model, mode="test-shout")
        assert r.text == "HELLO" and r.mode_used == "test-shout" and "Odalys" not in seen["instruction"]
        assert "test-shout" in available_modes() and "logits" in available_modes()
    finally:
        MODES.pop("test-shout")
    with pytest.raises(ValueError, match="unknown mode"):
        write(INSTRUCTION, CTX, int4_model, mode="nope")
