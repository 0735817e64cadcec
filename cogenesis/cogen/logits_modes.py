"""The ``logits`` and ``logits-block`` modes of `cogenesis.cogen.write.write`: the adapter from a `WriteJob`
(guarded client, sanitized instruction, streaming) to the fusion engine in `cogenesis.cogen.logits`."""

from __future__ import annotations

import time

from cogenesis.cloud_bridge.guard import PLACEHOLDERS
from cogenesis.cogen.clouds import MappedCloud
from cogenesis.cogen.fusion import FusionNet
from cogenesis.cogen.logits import write_logits

OPTION_KEYS = ("rule", "schedule", "k", "weight", "stop_on_flag", "draft_k", "draft_k_max", "adapt_k",
               "prefix_policy", "cloud_deadline_s", "cross_tokenizer", "min_clean", "fusion_net")


def fusion_cloud(client, model, cross_tokenizer: bool = False, min_clean: float = 0.8):
    """The cloud the fusion talks to. By default the client itself, after checking that it serves the device's
    vocabulary (token ids, one request per block; vLLM or our server). With `cross_tokenizer`, a `MappedCloud`
    over the client's string-keyed top-k (text prefix, one request per position; steps whose top-k maps onto
    single device tokens for less than `min_clean` of its mass are local-only): for a cloud of another
    vocabulary, or a server that takes no token-id prompts (llama-server) even with the same vocabulary
    (Qwen2.5-0.5B device, Qwen2.5-1.5B cloud: every step maps cleanly)."""
    if cross_tokenizer:
        return MappedCloud(client, model, min_clean=min_clean)
    client.check_vocab(model.tokenizer)  # token ids must mean the same tokens on both sides
    return client


def write_mode(block: bool):
    """The ``logits`` / ``logits-block`` mode of :func:`cogenesis.cogen.write.write`.

    The cloud gets the sanitized instruction (``job.cloud_instruction()``) as context-free token ids through
    the session's guarded client; a cloud failure mid-reply finishes it locally (``result.fallback`` says at
    which token). ``mode_options``: rule, schedule, k, weight, stop_on_flag, draft_k, draft_k_max, adapt_k,
    prefix_policy (stop | redact), cloud_deadline_s (then the reply is finished locally).
    """

    def mode(job) -> str:
        from cogenesis.data.prompts import with_context, without_context
        from cogenesis.runtime.generate import StreamDecoder

        client = job.cloud_client()
        opts = {key: v for key, v in job.options.items() if key in OPTION_KEYS}
        unknown = set(job.options) - set(OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown logits-mode options {sorted(unknown)}; known: {', '.join(OPTION_KEYS)}")
        sd = StreamDecoder(job.model.tokenizer)

        def on_token(t: int) -> None:
            job.emit(sd.push(t))

        before = client.requests_sent
        cloud = fusion_cloud(client, job.model, bool(opts.pop("cross_tokenizer", False)),
                             float(opts.pop("min_clean", 0.8)))
        if net_path := opts.pop("fusion_net", None):  # a net trained for this device/cloud pair
            opts["net"] = FusionNet.load(net_path)
        t0 = time.perf_counter()
        cloud_instruction = job.cloud_instruction()
        res = write_logits(
            job.instruction, job.context, job.model, cloud, block=block,
            local_messages=with_context(job.instruction, job.context, max_tokens=job.context_tokens),
            cloud_messages=without_context(cloud_instruction),
            guard=client.guard, on_token=on_token,
            placeholders=sorted({new for _, new in job.result.changes if new in PLACEHOLDERS}),
            **opts, **job.gen,
        )
        job.emit(sd.flush())
        r = job.result
        r.cloud_requests += client.requests_sent - before
        r.timings["cloud_s"] = r.timings.get("cloud_s", 0.0) + res.cloud_s
        r.timings["local_s"] = r.timings.get("local_s", 0.0) + (time.perf_counter() - t0 - res.cloud_s)
        r.extra["fusion"] = {
            "rule": res.rule, "round_trips": res.round_trips, "tokens": len(res.tokens),
            "round_trips_per_token": res.round_trips_per_token, "fused_steps": res.fused_steps,
            "drafts_proposed": res.drafts_proposed, "drafts_accepted": res.drafts_accepted,
            "held_steps": res.held_steps,
            "weights": [st.weight for st in res.steps], "fallback": res.fallback, "stop_reason": res.stop_reason,
        }
        if isinstance(cloud, MappedCloud):
            r.extra["fusion"]["cross_tokenizer"] = cloud.report()
        if res.fallback is not None:
            fb = res.fallback
            r.fallback = (f"{fb['reason']} at token {fb['step']}: {fb['error']}; the rest was written locally")
            if res.round_trips == 0:
                r.mode_used = "local"
        return res.text

    return mode


LOGITS_MODES = {"logits": write_mode(block=False), "logits-block": write_mode(block=True)}
