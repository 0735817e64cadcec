"""Deadlines: a request as a whole, and a reply's use of the cloud (issue 17). A slow-drip server keeps every
single read under the read timeout; only an overall deadline ends it."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from cogenesis.cloud_bridge.client import CloudClient, CloudTimeoutError
from cogenesis.cloud_bridge.server import create_app, serve_in_thread

from cogenesis.cogen.logits import write_logits

KEY = "deadline-test-key"


class DripServer:
    """A real HTTP server on 127.0.0.1 that answers 200 and then sends its body one byte every `gap` seconds."""

    def __init__(self, gap: float = 0.25, size: int = 400):
        self.gap, self.size = gap, size
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {self.size}\r\n\r\n".encode())
            for _ in range(self.size):  # bounded: at most size * gap seconds, then the connection closes
                if self.stop.is_set():
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(self.gap)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_request_deadline_cuts_a_slow_drip_answer():
    srv = DripServer(gap=0.25, size=400)  # 100 s to finish; every read succeeds within 0.25 s
    try:
        client = CloudClient(srv.url, api_key="k", retries=2, timeout=(2.0, 2.0), deadline_s=1.5, model="m")
        t0 = time.monotonic()
        with pytest.raises(CloudTimeoutError, match="request deadline"):
            client.request("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 1})
        assert time.monotonic() - t0 < 15  # cut near 1.5 s, not after 100 s (generous bound for a busy CI)
        assert client.requests_sent == 1  # a deadline is final: no retry
    finally:
        srv.close()


@pytest.mark.slow
def test_reply_deadline_finishes_locally(int4_model):
    with serve_in_thread(create_app(int4_model, api_key=KEY, simulate_rtt_ms=400)) as srv:
        client = CloudClient(srv.url, api_key=KEY, retries=0, detokenize=int4_model.decode)
        r = write_logits("Write a note to my team about next week.", None, int4_model, client, rule="mean",
                         max_new_tokens=24, cloud_deadline_s=1.0)
    assert r.fallback is not None and r.fallback["reason"] == "deadline", r.fallback
    assert 1 <= r.round_trips < 24 and len(r.tokens) > r.fallback["step"]  # some help, then local to the end
    assert not any(s.fused for s in r.steps[r.fallback["step"]:])
