"""`cogenesis write`: write with the private context, local-only or with a cloud (sketch, logits, logits-block)."""

from __future__ import annotations

import os

from cogenesis.cli.options import add_generation_options, generation_kwargs
from cogenesis.cloud_bridge.guard import EgressGuard
from cogenesis.cogen.session import detokenizer
from cogenesis.cogen.write import available_modes, write
from cogenesis.core.context import PrivateContext


def add_write_arguments(p) -> None:
    """The options of `cogenesis write`."""
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
    add_generation_options(p)
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
        guard = EgressGuard(ctx, mode=a.guard, audit_log=a.audit_log, detokenize=detokenizer(model))
        client = CloudClient(a.cloud_url, api_key=a.api_key, guard=guard, timeout=(3.05, a.timeout), retries=a.retries)
    opts = {"max_tokens": a.sketch_max_tokens} if a.mode == "sketch" else {}
    if a.mode.startswith("logits"):
        from cogenesis.cogen.fusion import Schedule

        opts = {k: v for k, v in {"rule": a.rule, "draft_k": a.draft_k if a.mode == "logits-block" else None,
                                  "prefix_policy": a.prefix_policy, "cross_tokenizer": a.cross_tokenizer or None,
                                  "fusion_net": a.fusion_net, "schedule": Schedule.parse(a.schedule) if a.schedule else None}.items()
                if v is not None}
    cb = None if a.json else (lambda s: print(s, end="", flush=True))
    gen = generation_kwargs(a)
    if gen["repetition_penalty"] == 1.0:
        del gen["repetition_penalty"]
    r = write(a.prompt, ctx, model, mode=a.mode, client=client, sanitize=not a.no_sanitize, stream_cb=cb,
              guard=guard, mode_options=opts, **gen)
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


def register(sub) -> None:
    """Add `cogenesis write`."""
    p = sub.add_parser("write", help="write with your private context: --mode local | sketch | logits | logits-block")
    add_write_arguments(p)
    p.set_defaults(func=write_from_args)
