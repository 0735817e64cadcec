"""Co-generation front door: `write(instruction, context, model, mode=...)`.

Modes (the `MODES` registry; another module adds its own with `register_mode`):

* ``local``: the on-device model alone, with the private context (`with_context`). Nothing leaves the device.
* ``sketch``: the instruction is sanitized on-device (private facts it names are rewritten; `changes` shows
  what), the cloud gets ONLY that sanitized instruction (`sketch_request`) and returns an outline, and the
  on-device model writes the text from the private context + instruction + outline (`with_sketch`).

Fallback: if the cloud fails in any way (unreachable, timeout, 4xx/5xx, garbage, empty outline, or the egress
guard refusing the request, in which case nothing was sent), the session continues with the local mode and
`WriteResult.fallback` says why. The answer is never lost to a cloud problem.

Adding a mode (e.g. ``logits`` / ``logits-block`` in `cogenesis.cogen_logits`)::

    from cogenesis.write import WriteJob, register_mode

    def write_logits_mode(job: WriteJob) -> str:
        client = job.cloud_client()                       # guarded by the session's context
        msgs = without_context(job.cloud_instruction())   # sanitized text, recorded in the result
        ...  # call the cloud through job.cloud(fn, ...) so failures fall back and requests are counted
        return text                                       # stream pieces through job.emit(piece)

    register_mode("logits", write_logits_mode)

`write()` imports `cogenesis.cogen_logits` on first use of a mode listed in `PLUGIN_MODES`, so registering at
import time there is enough.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation, sanitize_instruction
from cogenesis.context import PrivateContext
from cogenesis.data.prompts import DEFAULT_CONTEXT_TOKENS, with_context, with_sketch

if TYPE_CHECKING:
    from cogenesis.cloud_bridge.client import CloudClient
    from cogenesis.runtime import EdgeModel

StreamCallback = Callable[[str], None]


@dataclass
class WriteResult:
    text: str = ""
    mode: str = "local"  # what was asked for
    mode_used: str = "local"  # what actually produced the text ("local" after a fallback)
    outline: list[str] | None = None
    fallback: str | None = None  # why the cloud was not used, None when it was (or was not asked for)
    sanitized_instruction: str | None = None  # what the cloud was given (None: nothing was prepared for it)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (original, replacement) by the sanitizer
    cloud_requests: int = 0  # HTTP requests that left the device (retries included)
    timings: dict[str, float] = field(default_factory=dict)  # sanitize_s, cloud_s, local_s, first_token_s, total_s
    extra: dict = field(default_factory=dict)  # mode-specific details (e.g. fusion statistics)


class CloudUnavailable(Exception):
    """Raised inside a mode to fall back to local for a reason that is not an exception of the client."""


@dataclass
class WriteJob:
    """Everything a mode function needs; it fills `result` and returns the text."""

    instruction: str
    context: PrivateContext
    model: EdgeModel
    client: CloudClient | None
    sanitize: bool
    stream_cb: StreamCallback | None
    gen: dict
    guard: EgressGuard | None
    result: WriteResult
    options: dict = field(default_factory=dict)  # mode options (`mode_options` of write())
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # budget of the rendered private context in local prompts
    t0: float = field(default_factory=time.perf_counter)
    emitted: int = 0  # characters already streamed to stream_cb
    _sanitized: str | None = None
    _client: CloudClient | None = None

    def emit(self, piece: str) -> None:
        """Stream a piece of the answer to the caller."""
        if piece:
            if "first_token_s" not in self.result.timings:
                self.result.timings["first_token_s"] = time.perf_counter() - self.t0
            self.emitted += len(piece)
            if self.stream_cb is not None:
                self.stream_cb(piece)

    def generate_local(self, messages: list[dict]) -> str:
        """Run the on-device model on `messages`, streaming through `emit`; returns the full text."""
        t0 = time.perf_counter()
        pieces = []
        for piece in self.model.stream(messages, **self.gen):
            pieces.append(piece)
            self.emit(piece)
        self.result.timings["local_s"] = self.result.timings.get("local_s", 0.0) + time.perf_counter() - t0
        return "".join(pieces)

    def cloud_instruction(self) -> str:
        """The instruction as the cloud may see it: sanitized on-device when `sanitize` (changes recorded)."""
        if self._sanitized is None:
            t0 = time.perf_counter()
            if self.sanitize:
                s = sanitize_instruction(self.instruction, self.context)
                self._sanitized, self.result.changes = s.text, list(s.changes)
            else:
                self._sanitized = self.instruction
            self.result.sanitized_instruction = self._sanitized
            self.result.timings["sanitize_s"] = time.perf_counter() - t0
        return self._sanitized

    def cloud_client(self) -> CloudClient:
        """The client, inspecting with a guard that knows this session's private context."""
        if self.client is None:
            raise CloudUnavailable("no cloud client configured (pass client=CloudClient(url))")
        if self._client is None:
            if self.guard is not None:
                self._client = self.client.with_guard(self.guard)
            elif self.client.default_guard:  # a guard without the context only knows generic patterns
                audit = self.client.guard.audit_log
                g = EgressGuard(self.context, mode="strict", audit_log=audit, detokenize=_detok(self.model))
                self._client = self.client.with_guard(g)
            else:
                self._client = self.client
        return self._client

    def cloud(self, fn: Callable, *args, **kw):
        """Call a cloud function; time it and count requests. Any failure becomes a fallback in `write()`."""
        from cogenesis.cloud_bridge.client import CloudError

        c = self.cloud_client()
        before = c.requests_sent
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        except (CloudError, PrivacyViolation, CloudUnavailable):
            raise
        except Exception as e:  # a client bug or odd answer must not end the session
            raise CloudError(f"cloud call failed: {type(e).__name__}: {e}") from e
        finally:
            self.result.timings["cloud_s"] = self.result.timings.get("cloud_s", 0.0) + time.perf_counter() - t0
            self.result.cloud_requests += c.requests_sent - before


ModeFn = Callable[[WriteJob], str]


def write_local(job: WriteJob) -> str:
    """The on-device model alone, with the private context."""
    return job.generate_local(with_context(job.instruction, job.context, max_tokens=job.context_tokens))


def write_sketch(job: WriteJob) -> str:
    """Cloud outline from the sanitized instruction, then the on-device model writes with the context."""
    client = job.cloud_client()
    instruction = job.cloud_instruction()
    job.result.outline = job.cloud(client.sketch, instruction, **job.options)
    return job.generate_local(with_sketch(job.instruction, job.context, job.result.outline,
                                          max_tokens=job.context_tokens))


MODES: dict[str, ModeFn] = {"local": write_local, "sketch": write_sketch}
PLUGIN_MODES: dict[str, str] = {"logits": "cogenesis.cogen_logits", "logits-block": "cogenesis.cogen_logits"}
"""Modes defined elsewhere: the module is imported on first use and must `register_mode` them."""


def register_mode(name: str, fn: ModeFn) -> None:
    """Add (or replace) a mode of `write()`."""
    MODES[name] = fn


def available_modes() -> list[str]:
    return sorted(set(MODES) | set(PLUGIN_MODES))


def _mode_fn(mode: str) -> ModeFn:
    if mode not in MODES and mode in PLUGIN_MODES:
        try:
            importlib.import_module(PLUGIN_MODES[mode])
        except ModuleNotFoundError as e:
            if e.name != PLUGIN_MODES[mode]:
                raise
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(available_modes())}")
    return MODES[mode]


def write(instruction: str, context: PrivateContext | dict | None, model: EdgeModel, mode: str = "local",
          client: CloudClient | None = None, sanitize: bool = True, stream_cb: StreamCallback | None = None,
          guard: EgressGuard | None = None, mode_options: dict | None = None,
          context_tokens: int = DEFAULT_CONTEXT_TOKENS, **gen) -> WriteResult:
    """Write `instruction` for the user; see the module docstring for the modes and the fallback.

    `gen`: generation options of the on-device model (max_new_tokens, temperature, top_k, top_p, seed).
    `guard`: the egress guard for this session (default: a strict one built from `context`, unless `client`
    was given its own). `mode_options`: passed to the mode as `job.options` (sketch: the keyword arguments of
    `CloudClient.sketch`, e.g. max_tokens, temperature). `context_tokens`: budget (approx. tokens) of the
    private context rendered into the on-device prompt.
    """
    from cogenesis.cloud_bridge.client import CloudError

    if not instruction or not instruction.strip():
        raise ValueError("the instruction is empty")
    ctx = context if isinstance(context, PrivateContext) else PrivateContext.from_dict(context or {})
    fn = _mode_fn(mode)
    result = WriteResult(mode=mode, mode_used=mode)
    job = WriteJob(instruction, ctx, model, client, sanitize, stream_cb, dict(gen), guard, result,
                   options=dict(mode_options or {}), context_tokens=context_tokens)
    try:
        result.text = fn(job)
    except (CloudError, PrivacyViolation, CloudUnavailable) as e:
        result.fallback = _reason(e) + ("" if job.emitted == 0 else f" (after {job.emitted} chars were streamed; "
                                                                      "restarted locally)")
        result.mode_used = "local"
        result.text = write_local(job)
    result.timings["total_s"] = time.perf_counter() - job.t0
    return result


def _reason(e: Exception) -> str:
    if isinstance(e, PrivacyViolation):
        return f"privacy guard blocked the cloud request, nothing was sent: {e}"
    return f"cloud unavailable, wrote locally: {type(e).__name__}: {e}"


def _detok(model: EdgeModel) -> Callable[[list[int]], str]:
    return lambda ids: model.tokenizer.decode(list(ids), skip_special_tokens=False)


# ---- command line (`cogenesis write`) --------------------------------------------------------------------------


def add_write_arguments(p) -> None:
    """The options of `cogenesis write`."""
    import os

    p.add_argument("--bundle", required=True, help="on-device bundle directory")
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--context", default=None, help="private context JSON (profile + writing history); stays local")
    p.add_argument("--mode", default="local", choices=available_modes(),
                   help="local: on-device only; sketch: the cloud outlines the sanitized instruction")
    p.add_argument("--cloud-url", default=os.environ.get("COGENESIS_CLOUD_URL"),
                   help="OpenAI-compatible server (cogenesis cloud serve, or vLLM); default $COGENESIS_CLOUD_URL")
    p.add_argument("--api-key", default=None, help="cloud API key (default $COGENESIS_CLOUD_API_KEY)")
    p.add_argument("--guard", choices=["strict", "audit"], default="strict",
                   help="strict: refuse any request that carries private context (default)")
    p.add_argument("--audit-log", default=None, help="append one JSON line per outbound request")
    p.add_argument("--no-sanitize", action="store_true", help="send the instruction as typed (the guard still checks)")
    p.add_argument("--timeout", type=float, default=60.0, help="cloud read timeout in seconds")
    p.add_argument("--retries", type=int, default=2, help="retries on 429/5xx/timeouts")
    p.add_argument("--sketch-max-tokens", type=int, default=320, help="outline length the cloud may write")
    p.add_argument("--max-tokens", type=int, default=256, help="maximum new tokens on the device")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalize tokens already in the reply (1 = off; 1.2 keeps a 135M model out of loops)")
    p.add_argument("--rule", default=None, choices=["learned", "mean", "max", "weight", "local", "cloud"],
                   help="logits modes: how to fuse local and cloud next-token distributions (default learned)")
    p.add_argument("--schedule", default=None, metavar="P,K,T",
                   help="logits modes: fuse the first P steps, then T of every K+T steps (P,0,0 = first P only)")
    p.add_argument("--draft-k", type=int, default=None, help="logits-block: initial number of local drafts per request")
    p.add_argument("--prefix-policy", default=None, choices=["stop", "redact"],
                   help="logits modes: at the reply's first private term, stop asking the cloud (default) or go on "
                        "with the term replaced by a placeholder")
    p.add_argument("--cross-tokenizer", action="store_true",
                   help="logits modes: fuse through the tokens' text (the cloud's string top-k mapped onto the "
                        "device's tokens): for a cloud of another vocabulary, or a server without token-id prompts "
                        "(llama-server)")
    p.add_argument("--fusion-net", default=None, metavar="JSON",
                   help="--rule learned: a fusion net trained for this device/cloud pair (cogenesis calibrate fusion; "
                        "default: the shipped SmolLM2/SmolLM2 net)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON instead of streaming text")


def write_from_args(a) -> int:
    """Run `cogenesis write`: stream the text to stdout, a summary (fallback, sanitizer changes) to stderr."""
    import json
    import sys
    from dataclasses import asdict

    import cogenesis.runtime as rt
    from cogenesis.cloud_bridge.client import CloudClient

    model = rt.load(a.bundle, threads=a.threads)
    ctx = PrivateContext.load(a.context) if a.context else PrivateContext()
    client = guard = None
    if a.cloud_url:
        guard = EgressGuard(ctx, mode=a.guard, audit_log=a.audit_log, detokenize=_detok(model))
        client = CloudClient(a.cloud_url, api_key=a.api_key, guard=guard, timeout=(3.05, a.timeout), retries=a.retries)
    opts = {"max_tokens": a.sketch_max_tokens} if a.mode == "sketch" else {}
    if a.mode.startswith("logits"):
        from cogenesis.fusion import Schedule

        opts = {k: v for k, v in {"rule": a.rule, "draft_k": a.draft_k if a.mode == "logits-block" else None,
                                  "prefix_policy": a.prefix_policy, "cross_tokenizer": a.cross_tokenizer or None,
                                  "fusion_net": a.fusion_net, "schedule": Schedule.parse(a.schedule) if a.schedule else None}.items()
                if v is not None}
    cb = None if a.json else (lambda s: print(s, end="", flush=True))
    r = write(a.prompt, ctx, model, mode=a.mode, client=client, sanitize=not a.no_sanitize, stream_cb=cb,
              guard=guard, mode_options=opts, max_new_tokens=a.max_tokens, temperature=a.temperature,
              top_k=a.top_k, top_p=a.top_p, seed=a.seed,
              **({"repetition_penalty": a.repetition_penalty} if a.repetition_penalty != 1.0 else {}))
    if a.json:
        print(json.dumps(asdict(r), ensure_ascii=False, indent=2, default=str))
        return 0
    print(flush=True)
    err = sys.stderr
    print(f"[mode: {r.mode_used}" + (f" (asked: {r.mode})" if r.mode_used != r.mode else "")
          + f", cloud requests: {r.cloud_requests}, {r.timings.get('total_s', 0):.1f} s]", file=err)
    if r.fallback:
        print(f"[fallback: {r.fallback}]", file=err)
    for orig, repl in r.changes:
        print(f"[sanitized: {orig!r} -> {repl!r}]", file=err)
    if r.outline:
        print("[outline from the cloud:]", file=err)
        for i, pt in enumerate(r.outline, 1):
            print(f"  {i}. {pt}", file=err)
    return 0
