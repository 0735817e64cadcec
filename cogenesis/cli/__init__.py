"""The `cogenesis` command line: one module per command (each with `register(sub)`), generation options declared
once (`options.py`). Each command imports only what it needs when it runs (the edge ones never import torch)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command, in the order `cogenesis --help` lists them."""
    from cogenesis.cli import bundles, calibrate, cloud, models, run, write
    from cogenesis.cli.experiment import add_experiment_parser
    from cogenesis.data.cli import add_data_parser
    from cogenesis.finetune import add_finetune_parser

    ap = argparse.ArgumentParser(
        prog="cogenesis",
        description="CoGenesis Edge: a small on-device model writes with your private context; a cloud model "
        "helps without ever seeing it.",
    )
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    for register in (models.register, bundles.register, run.register, write.register, cloud.register,
                     calibrate.register, add_finetune_parser, add_experiment_parser, add_data_parser):
        register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if not getattr(a, "func", None):
        ap.print_help()
        return 0
    if getattr(a, "cmd", None) == "export" and a.quant is None:
        from cogenesis.export.targets import get_target

        a.quant = get_target(a.target).quant
    try:
        return a.func(a) or 0
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from cogenesis.runtime.bundle import BundleError

        if isinstance(e, BundleError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
