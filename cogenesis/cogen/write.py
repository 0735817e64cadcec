"""Co-generation front door: `write(instruction, context, model, mode=...)`.

Modes (the `MODES` registry; another module adds its own with `register_mode`):

* ``local``: the on-device model alone, with the private context (`with_context`). Nothing leaves the device.
* ``sketch``: the instruction is sanitized on-device (private facts it names are rewritten; `changes` shows
  what), the cloud gets ONLY that sanitized instruction (`sketch_request`) and returns an outline, and the
  on-device model writes the text from the private context + instruction + outline (`with_sketch`).

Fallback: if the cloud fails in any way (unreachable, timeout, 4xx/5xx, garbage, empty outline, or the egress
guard refusing the request, in which case nothing was sent), the session continues with the local mode and
`WriteResult.fallback` says why. The answer is never lost to a cloud problem.

Adding a mode (e.g. ``logits`` / ``logits-block`` in `cogenesis.cogen.logits`)::

    from cogenesis.cogen.session import WriteJob
    from cogenesis.cogen.write import register_mode

    def write_logits_mode(job: WriteJob) -> str:
        client = job.cloud_client()                       # guarded by the session's context
        msgs = without_context(job.cloud_instruction())   # sanitized text, recorded in the result
        ...  # call the cloud through job.cloud(fn, ...) so failures fall back and requests are counted
        return text                                       # stream pieces through job.emit(piece)

    register_mode("logits", write_logits_mode)

The logits modes live in `cogenesis.cogen.logits_modes` and are imported here (no plugin import at run time:
one direction of imports, checked by import-linter).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cogenesis.cloud_bridge.guard import EgressGuard, PrivacyViolation
from cogenesis.cogen.logits_modes import LOGITS_MODES
from cogenesis.cogen.session import CloudUnavailable, ModeFn, StreamCallback, WriteJob, WriteResult
from cogenesis.core.context import PrivateContext
from cogenesis.data.prompts import DEFAULT_CONTEXT_TOKENS, with_context, with_sketch

if TYPE_CHECKING:
    from cogenesis.cloud_bridge.client import CloudClient
    from cogenesis.runtime import EdgeModel

__all__ = ["MODES", "CloudUnavailable", "WriteJob", "WriteResult", "available_modes", "register_mode", "write"]


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


MODES: dict[str, ModeFn] = {"local": write_local, "sketch": write_sketch, **LOGITS_MODES}


def register_mode(name: str, fn: ModeFn) -> None:
    """Add (or replace) a mode of `write()`."""
    MODES[name] = fn


def available_modes() -> list[str]:
    return sorted(MODES)


def _mode_fn(mode: str) -> ModeFn:
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
