"""Serving the reference server: in the foreground (`serve`) or in a background thread (`serve_in_thread`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cogenesis.runtime import EdgeModel
from fastapi import FastAPI

from .server_app import create_app
from .server_gate import is_loopback
from .server_state import State, log


def _check_bind(host: str, allow_unauthenticated: bool) -> None:
    if allow_unauthenticated and not is_loopback(host):
        raise ValueError(f"--allow-unauthenticated is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}; "
                         f"set --api-key to serve on {host}")


def serve(model: str | Path | EdgeModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allow_unauthenticated: bool = False, simulate_rtt_ms: float = 0, fault: str | None = None,
          log_level: str = "info", threads: int | None = None, **settings) -> None:
    """Run the server in the foreground (blocks). One JSON line per request on stderr."""
    _check_bind(host, allow_unauthenticated)
    app = create_app(model, api_key, allow_unauthenticated, simulate_rtt_ms, fault, threads=threads, **settings)
    _setup_logging(log_level)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)


def _setup_logging(level: str) -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level.upper())


@dataclass
class RunningServer:
    """A server running in a background thread (tests, benchmarks): `url`, `app`, `stop()`."""

    url: str
    app: FastAPI
    server: object
    thread: threading.Thread

    @property
    def state(self) -> State:
        return self.app.state.cogenesis

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start `app` on host:port (0 = a free port) in a daemon thread and wait until it accepts connections."""
    _check_bind(host, app.state.cogenesis.settings.allow_unauthenticated)
    # IPPROTO_TCP explicitly: with proto 0 asyncio does not set TCP_NODELAY, and every keep-alive request then
    # waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    real_port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=real_port, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="cogenesis-cloud")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{real_port} did not start")
        time.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{shown}:{real_port}", app, server, thread)
