"""`cogenesis calibrate fusion | quant`: train the logit-fusion net; measure quantization variants."""

from __future__ import annotations


def register(sub) -> None:
    """Add `cogenesis calibrate`."""
    from cogenesis.calibration import quant_report, train_fusion

    cal = sub.add_parser("calibrate", help="train the logit-fusion net; measure quantization variants")
    calsub = cal.add_subparsers(dest="calibrate_cmd", metavar="SUBCOMMAND")
    p = calsub.add_parser("fusion", help="train the fusion network on context-aware data (local with context, "
                                          "cloud without)")
    train_fusion.add_arguments(p)
    p.set_defaults(func=train_fusion.run)
    p = calsub.add_parser("quant", help="quantization report: size, speed, agreement, KL, perplexity per variant")
    quant_report.add_arguments(p)
    p.set_defaults(func=quant_report.run)
