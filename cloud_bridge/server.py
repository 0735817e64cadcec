"""Reference cloud server: the OpenAI-compatible subset (with vLLM's extensions) that the edge talks to.

Runs a bundle through the project runtime, so tests, benchmarks and demos need no GPU and no vLLM, and the
edge code is written against the same wire format vLLM serves (docs/vllm.md). Endpoints:

* ``POST /v1/completions``: ``prompt`` as text or token ids, ``max_tokens`` (0 with ``echo`` or
  ``prompt_logprobs`` = scoring only), ``logprobs`` (top-k of generated tokens), ``echo``, ``stop``,
  ``temperature``/``top_p``/``top_k``/``seed``, vLLM's ``prompt_logprobs=k`` (at every prompt position, the
  first null: ``{"<id>": {"logprob", "rank", "decoded_token"}}`` with the top-k and the prompt token itself),
  vLLM's ``return_tokens_as_token_ids`` ("token_id:123"), ``stream``.
* ``POST /v1/chat/completions``: ``messages`` rendered with the bundle's chat template; ``logprobs``/
  ``top_logprobs``, ``prompt_logprobs``, ``stream``.
* Both: ``response_format`` = ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` or
  ``{"type": "json_object"}`` (or ``"text"``), enforced while decoding by a grammar (llguidance) over the
  model's tokens: the output always parses and matches the schema, unless ``max_tokens`` cuts it short
  (``finish_reason`` "length"). JSON comes on one line (``json.dumps`` style); a bad ``response_format`` -> 400.
* ``POST /tokenize``, ``POST /detokenize``, ``GET /v1/models``, ``GET /health`` (no auth), ``GET /metrics``.

Extensions (advertised in ``/health`` and ``/v1/models`` under ``cogenesis.extensions``; clients use them only
when advertised): ``prompt_logprobs_start`` (only positions >= start get prompt logprobs, earlier ones are
null, so block fusion scores just its last few tokens and the session's cached prefix is reused), and
``session_prefix_cache`` (requests with the same ``X-Session-Id`` header, or ``user`` field, reuse the longest
common token prefix of the previous request; ``usage.prompt_tokens_details.cached_tokens`` says how much).

Operations: Bearer-token auth (``--allow-unauthenticated`` only on loopback), request bodies over
``max_body_bytes`` -> 413, limits on ``max_tokens``/k/positions -> 400 naming the limit, per-session locks,
``simulate_rtt_ms`` latency, fault injection (``500``, ``429``, ``garbage`` = 200 with invalid JSON, ``nan`` = 200
with NaN/Infinity log-probabilities on /v1/completions, ``stall`` =
no answer for ``stall_s``), one JSON log line per request (logger ``cogenesis.cloud.server``) and
``capture``: every request's exact body bytes (base64, with method, path and headers; the Authorization header
redacted) appended to a JSONL file, read back with `read_capture`.

This module is the facade; the server lives in its ``server_*`` siblings, whose imports point one way:
``server_serve`` (serve, serve_in_thread, RunningServer) -> ``server_app`` (create_app) -> ``server_gate`` (the
ASGI gate, capture) and ``server_routes`` (one function per endpoint) -> ``server_parse`` (request bodies, limits)
and ``server_run`` (admission, runs, streaming) -> ``server_responses`` (response shapes) -> ``server_state``
(State, ApiError, the log) -> ``server_engine``.
"""

from cogenesis.cloud_bridge.settings import FAULTS, ServerSettings  # noqa: F401

from .server_app import create_app, settings_dict  # noqa: F401
from .server_gate import Gate, is_loopback, read_capture  # noqa: F401
from .server_parse import response_schema  # noqa: F401
from .server_serve import RunningServer, serve, serve_in_thread  # noqa: F401
from .server_state import EXTENSIONS, ApiError, State, log  # noqa: F401
