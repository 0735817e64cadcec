"""The reference server's app: `create_app` (settings, engine, state, the gate, CORS, the routes)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from cogenesis.cloud_bridge.settings import FAULTS, ServerSettings
from cogenesis.runtime import EdgeModel, load
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from cogenesis.core.paths import API_KEY_ENV, SESSION_HEADER

from .server_engine import Engine
from .server_gate import Gate
from .server_routes import add_routes
from .server_state import State


def create_app(model: str | Path | EdgeModel, api_key: str | None = None, allow_unauthenticated: bool = False,
               simulate_rtt_ms: float = 0, fault: str | None = None, *, threads: int | None = None,
               **settings) -> FastAPI:
    """The FastAPI app over a bundle directory (or an already loaded EdgeModel, whose session is shared).

    Keyword settings: see `ServerSettings` (capture, fault_count, stall_s, max_* limits, served_model_name).
    """
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not api_key and not allow_unauthenticated:
        raise ValueError(f"the cloud server needs an API key: pass api_key / --api-key KEY (or set {API_KEY_ENV}), "
                         "or allow_unauthenticated / --allow-unauthenticated on a loopback address")
    if fault is not None and str(fault) not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}; got {fault!r}")
    cfg = ServerSettings(api_key=api_key, allow_unauthenticated=allow_unauthenticated,
                         simulate_rtt_ms=float(simulate_rtt_ms), fault=None if fault is None else str(fault), **settings)
    edge = model if isinstance(model, EdgeModel) else load(model, threads=threads)
    engine = Engine(edge, max_sessions=cfg.max_sessions, max_parallel=cfg.max_parallel,
                    kv_budget_bytes=None if cfg.kv_budget_mb is None else int(cfg.kv_budget_mb * 2**20))
    cfg.max_prompt_tokens = min(cfg.max_prompt_tokens, engine.max_model_len - 1)
    name = cfg.served_model_name or edge.manifest["model"].get("name") or edge.path.name
    state = State(cfg, engine, name, faults_left=cfg.fault_count)
    app = FastAPI(title="CoGenesis reference cloud server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cogenesis = state
    app.add_middleware(Gate, state=state)
    if cfg.cors_origins:  # added last = outermost: answers preflights before auth, as browsers require
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", SESSION_HEADER.lower()])
    add_routes(app)
    return app


def settings_dict(app: FastAPI) -> dict:
    """The app's settings with the API key hidden (for diagnostics)."""
    d = asdict(app.state.cogenesis.settings)
    d["api_key"] = "<set>" if d["api_key"] else None
    return d
