"""A minimal OpenAI-compatible judge over real HTTP on 127.0.0.1 (deterministic ratings), shared by tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_judge(personalization: str = "Rating: [[8]]", other: str = "Rating: [[7]]") -> Iterator[tuple[str, list]]:
    """Yield (base_url, calls): `personalization` answers the PERSONALIZATION prompt, `other` every other one;
    `calls` collects the request bodies."""
    calls: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def _send(self, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._send({"object": "list", "data": [{"id": "judge-model"}]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            text = personalization if "PERSONALIZATION" in body["messages"][-1]["content"] else other
            self._send({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True, name="judge").start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", calls
    finally:
        srv.shutdown()
        srv.server_close()
