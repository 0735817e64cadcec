"""The reference server decides what it can from the headers before it reads a body byte (issue 17).

Raw sockets on 127.0.0.1 play the hostile client: a body announced but never sent, a body that drips, a key
that is wrong. Each check fails on the server that read (and captured) the body first."""

from __future__ import annotations

import json
import socket
import time

import pytest
from cogenesis.cloud_bridge.server import create_app, read_capture, serve_in_thread
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow
KEY = "hardening-test-key"


@pytest.fixture(scope="module")
def server(int4_model, tmp_path_factory):
    cap = tmp_path_factory.mktemp("hardening") / "capture.jsonl"
    app = create_app(int4_model, api_key=KEY, capture=str(cap), max_body_bytes=1 << 20, body_timeout_s=1.0)
    with serve_in_thread(app) as srv:
        yield srv


def _raw(url: str, head: bytes, body: bytes = b"", wait: float = 10.0) -> tuple[int, bytes, float]:
    """Send `head` (+ `body`), then read the answer without sending anything more: (status, bytes, seconds)."""
    host, port = url.split("//")[1].split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data, time.monotonic() - t0


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _post(length: int, key: str = KEY) -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _log(server, n: int = 1) -> list[dict]:
    time.sleep(0.2)
    return list(server.state.recent)[-n:]


def test_wrong_key_is_refused_before_the_body_is_read(server):
    before = len(read_capture(server.state.settings.capture))
    status, _, took = _raw(server.url, _post(60 << 20, key="wrong"))  # 60 MiB announced, none sent
    assert status == 401 and took < 8
    assert "bytes_in" not in _log(server)[-1]  # not one body byte was read
    assert len(read_capture(server.state.settings.capture)) == before  # and nothing was captured


def test_unauthenticated_small_body_is_not_captured(server):
    before = len(read_capture(server.state.settings.capture))
    body = json.dumps({"model": "m", "prompt": "hi"}).encode()
    status, _, _ = _raw(server.url, _post(len(body), key="wrong"), body)
    assert status == 401
    assert len(read_capture(server.state.settings.capture)) == before


def test_oversize_content_length_is_refused_before_reading(server):
    status, data, took = _raw(server.url, _post(60 << 20))
    assert status == 413 and took < 8 and b"Content-Length" in data
    assert "bytes_in" not in _log(server)[-1]


def test_slow_body_gets_408(server):
    status, data, took = _raw(server.url, _post(100), b'{"prompt": ')  # 11 of 100 bytes, then silence
    assert status == 408 and b"did not arrive within 1.0 s" in data
    assert took < 8


def test_authorized_request_still_works_and_is_captured(server, int4_model):
    before = len(read_capture(server.state.settings.capture))
    body = json.dumps({"model": server.state.model_name, "prompt": "Hello", "max_tokens": 2}).encode()
    status, _, _ = _raw(server.url, _post(len(body)), body)
    assert status == 200
    assert len(read_capture(server.state.settings.capture)) == before + 1


def test_unauthenticated_mode_answers_only_on_loopback(int4_model):
    """create_app(allow_unauthenticated=True) run by hand behind a non-loopback socket: the app itself refuses
    (in-process ASGI calls; scope['server'] is the address the request arrived at, nothing goes on a network)."""
    app = create_app(int4_model, allow_unauthenticated=True)
    for host, want in (("192.0.2.10", 403), ("127.0.0.1", 200)):
        with TestClient(app, base_url=f"http://{host}:8000") as c:
            r = c.get("/v1/models")
        assert r.status_code == want, (host, r.text)
        if want == 403:
            assert "loopback" in r.json()["error"]["message"]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "7", True])
def test_bad_seed_is_a_400_naming_the_field(server, seed):
    body = json.dumps({"model": server.state.model_name, "prompt": "Hello", "max_tokens": 1, "seed": seed,
                       "temperature": 0.7}).encode()
    status, data, _ = _raw(server.url, _post(len(body)), body)
    assert status == 400, data[-300:]
    err = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["param"] == "seed" and err["message"].startswith("'seed': "), err
