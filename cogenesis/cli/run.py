"""`cogenesis run` (generate on-device from a bundle) and `cogenesis audit` (what left the device)."""

from __future__ import annotations

import json
import sys

from cogenesis.cli.options import add_generation_options, generation_kwargs


def _local_messages(instruction: str, ctx, system: str | None) -> list[dict]:
    from cogenesis.data.prompts import with_context, without_context

    msgs = with_context(instruction, ctx) if ctx is not None else without_context(instruction)
    if system:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    return msgs


def cmd_run(a) -> int:
    import cogenesis.runtime as rt
    from cogenesis.core.context import PrivateContext
    model = rt.load(a.bundle, threads=a.threads)
    ctx = PrivateContext.load(a.context) if a.context else None
    if a.raw and (ctx or a.system or not a.prompt.strip()):
        raise SystemExit("error: --raw continues the prompt text as it is: give a non-empty --prompt and no "
                         "--context or --system")
    # --raw: a base model (gemma3-270m has no chat template) continues plain text; token ids skip the template
    messages = model.tokenizer.encode(a.prompt).ids if a.raw else _local_messages(a.prompt, ctx, a.system)
    stats = rt.GenerationStats()
    if a.stream:
        for piece in model.stream(messages, stats=stats, **generation_kwargs(a)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(model.generate(messages, **generation_kwargs(a)).text)
    if a.stream and a.verbose:
        print(f"[{stats.prompt_tokens} prompt tokens, prefill {stats.prefill_s:.2f}s, {stats.new_tokens} new tokens, "
              f"{stats.decode_tok_s:.1f} tok/s, stop: {stats.stop_reason}]", file=sys.stderr)
    return 0


def cmd_audit(a) -> int:
    from cogenesis.cloud_bridge.audit import format_summary, summarize_audit

    s = summarize_audit(a.log)
    print(json.dumps(s, indent=2) if a.json else format_summary(s))
    return 0


def register(sub) -> None:
    """Add the subcommands of this module."""
    p = sub.add_parser("run", help="generate on-device from a bundle (optionally with your private context)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--context", default=None, help="private context JSON (profile + writing history); stays local")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--raw", action="store_true",
                   help="no chat template: continue the prompt as plain text (base models such as gemma3-270m)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("-v", "--verbose", action="store_true", help="print speed after streaming")
    add_generation_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("audit", help="summarize an egress audit log (what left the device)")
    p.add_argument("log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
