"""``data`` subcommands (show, prompt, synth) for the main CLI; also ``python -m cogenesis.data``.

Mount into an argparse CLI with ``add_data_parser(subparsers)``; the parsed args carry ``func``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _load(path: str) -> list[Any]:
    from cogenesis.data.records import load_records, load_sample

    return load_sample() if path == "sample" else load_records(path)


def cmd_show(args: argparse.Namespace) -> int:
    """Print counts and the first records of a data file."""
    from cogenesis.data.records import summarize

    recs = _load(args.path)
    if args.tid:
        recs = [r for r in recs if r.tid == args.tid]
        if not recs:
            print(f"no record with tid {args.tid!r} in {args.path}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([r.model_dump() for r in recs[: args.n]], ensure_ascii=False, indent=1))
        return 0
    print(json.dumps(summarize(recs)))
    for r in recs[: args.n]:
        p = r.context.profile
        who = f" {p['Name']} - {p.get('Occupation', '')} ({p.get('Location', '')})" if p.get("Name") else ""
        print(f"\n[{r.tid}]{who}")
        print(f"  task: {r.instruction[:200]}")
        print(f"  history: {len(r.context.history)} writings; reference: {len(r.reference.split())} words")
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    """Print the chat messages a builder makes for one record."""
    from cogenesis.data import prompts

    recs = _load(args.path)
    rec = next((r for r in recs if r.tid == args.tid), None) if args.tid else recs[0]
    if rec is None:
        print(f"no record with tid {args.tid!r} in {args.path}", file=sys.stderr)
        return 1
    if args.mode == "with":
        msgs = prompts.with_context(rec, max_tokens=args.max_tokens or prompts.DEFAULT_CONTEXT_TOKENS)
    elif args.mode == "without":
        msgs = prompts.without_context(rec)
    else:
        msgs = prompts.sketch_request(rec)
    print(json.dumps(msgs, ensure_ascii=False, indent=1))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Run or resume the synthesis pipeline."""
    from cogenesis.data.synthesis import SynthesisAborted, synthesize

    try:
        res = synthesize(
            args.out,
            args.base_url,
            args.model,
            api_key=args.api_key,
            n_groups=args.groups,
            users_per_group=args.users_per_group,
            tasks_per_user=args.tasks_per_user,
            workers=args.workers,
            history_per_user=args.history,
            max_attempts=args.attempts,
            timeout=args.timeout,
            response_format={"type": "json_object"} if args.json_mode else None,
            structured_output=not args.no_structured_output,
            limit=args.limit,
            progress=not args.quiet,
        )
    except SynthesisAborted as e:
        print(f"aborted: {e}", file=sys.stderr)
        return 2
    print(res.summary())
    return 0 if res.complete else 3


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data {show,prompt,synth}`` to an argparse subparsers object; each sets ``args.func``."""
    data = subparsers.add_parser("data", help="inspect context-aware data, render prompts, synthesize data")
    sub = data.add_subparsers(dest="data_cmd", required=True)

    show = sub.add_parser("show", help="counts and first records of a data file ('sample' = shipped sample)")
    show.add_argument("path", help="context_aware_*.json, ablation_*.json, our .jsonl, or 'sample'")
    show.add_argument("-n", type=int, default=3, help="records to print")
    show.add_argument("--tid", help="only this record")
    show.add_argument("--json", action="store_true", help="print records as JSON")
    show.set_defaults(func=cmd_show)

    pr = sub.add_parser("prompt", help="render the messages for one record")
    pr.add_argument("path")
    pr.add_argument("--tid", help="record id (default: the first)")
    pr.add_argument("--mode", choices=("with", "without", "sketch"), default="with")
    pr.add_argument("--max-tokens", type=int, default=None, help="context budget in tokens (default 1300)")
    pr.set_defaults(func=cmd_prompt)

    sy = sub.add_parser("synth", help="generate synthetic users/tasks/texts via an OpenAI-compatible server")
    sy.add_argument("--out", required=True, help="output folder (checkpoints + context_aware_synth.json)")
    sy.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    sy.add_argument("--model", required=True)
    sy.add_argument("--api-key", help="bearer key (default: $COGENESIS_SYNTH_API_KEY or $OPENAI_API_KEY)")
    sy.add_argument("--groups", type=int, default=4)
    sy.add_argument("--users-per-group", type=int, default=3)
    sy.add_argument("--tasks-per-user", type=int, default=2)
    sy.add_argument("--history", type=int, default=3, help="past writings per user")
    sy.add_argument("--workers", type=int, default=4)
    sy.add_argument("--attempts", type=int, default=3, help="tries per item before a failure row")
    sy.add_argument("--timeout", type=float, default=120.0)
    sy.add_argument("--limit", type=int, help="stop after this many new items (resume later)")
    sy.add_argument("--json-mode", action="store_true", help='send response_format={"type":"json_object"}')
    sy.add_argument("--no-structured-output", action="store_true",
                    help="do not send each step's JSON schema as response_format (for servers without structured "
                    "output; replies are still validated and retried)")
    sy.add_argument("--quiet", action="store_true", help="no progress bars")
    sy.set_defaults(func=cmd_synth)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``python -m cogenesis.data {show,prompt,synth} ...``."""
    parser = argparse.ArgumentParser(prog="python -m cogenesis.data")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_data_parser(sub)
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
