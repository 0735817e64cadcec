"""`cogenesis cloud serve`: the reference cloud server's options (importable without fastapi).

    cogenesis cloud serve --model artifacts/bundles/smollm2-int4 --api-key KEY
"""

from __future__ import annotations

import argparse

from cogenesis.cloud_bridge.settings import FAULTS
from cogenesis.core.paths import API_KEY_ENV


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `cogenesis cloud serve`."""
    p.add_argument("--model", required=True, help="bundle directory to serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"Bearer token clients must send (default: ${API_KEY_ENV})")
    p.add_argument("--allow-unauthenticated", action="store_true", help="no API key (loopback addresses only)")
    p.add_argument("--simulate-rtt-ms", type=float, default=0.0, help="add this much latency to every request")
    p.add_argument("--fault", choices=FAULTS, default=None,
                   help="inject a fault into every request but /health: 500, 429, garbage (200 + invalid JSON), "
                        "nan (200 + NaN/Infinity log-probabilities), "
                        "stall (no answer for --stall-s)")
    p.add_argument("--fault-count", type=int, default=None, help="inject the fault only into the first N requests")
    p.add_argument("--stall-s", type=float, default=30.0, help="how long --fault stall holds a request")
    p.add_argument("--capture", default=None, metavar="FILE",
                   help="append every received request to FILE (JSONL: method, path, headers, base64 body)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--max-sessions", type=int, default=16, help="prefix-cache sessions kept (LRU)")
    p.add_argument("--max-parallel", type=int, default=2, help="model runs at the same time")
    p.add_argument("--kv-budget-mb", type=float, default=1024.0,
                   help="KV cache of kept sessions + running requests; idle sessions are evicted to stay under it, "
                        "beyond it requests wait --admit-wait-s, then get 503 + Retry-After (0: no limit)")
    p.add_argument("--admit-wait-s", type=float, default=10.0,
                   help="how long a request waits for the KV budget before 503 (0: answer 503 at once)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="a request body must arrive within this many seconds (else 408)")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-logprobs", type=int, default=20, help="largest logprobs / prompt_logprobs k")
    p.add_argument("--served-model-name", default=None, help="model id in the API (default: the bundle's model name)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def serve_from_args(a: argparse.Namespace) -> None:
    """Run the server from parsed `add_serve_arguments` options (blocks)."""
    from cogenesis.cloud_bridge.server import serve

    serve(a.model, host=a.host, port=a.port, api_key=a.api_key, allow_unauthenticated=a.allow_unauthenticated,
          simulate_rtt_ms=a.simulate_rtt_ms, fault=a.fault, log_level=a.log_level, threads=a.threads,
          fault_count=a.fault_count, stall_s=a.stall_s, capture=a.capture, max_sessions=a.max_sessions,
          max_parallel=a.max_parallel, kv_budget_mb=a.kv_budget_mb or None, admit_wait_s=a.admit_wait_s, max_body_bytes=a.max_body_bytes, body_timeout_s=a.body_timeout_s,
          max_tokens=a.max_tokens,
          max_logprobs=a.max_logprobs, served_model_name=a.served_model_name)


def register(sub) -> None:
    """Add `cogenesis cloud serve`."""
    cloud = sub.add_parser("cloud", help="the reference cloud server (OpenAI-compatible API with vLLM extensions)")
    csub = cloud.add_subparsers(dest="cloud_cmd", metavar="SUBCOMMAND")
    p = csub.add_parser("serve", help="serve a bundle over HTTP for development, tests, demos, small setups")
    add_serve_arguments(p)
    p.set_defaults(func=serve_from_args)
