"""`cogenesis experiment`: run systems on records; quality vs. privacy leakage report (`cogenesis.eval.experiment`)."""

from __future__ import annotations

from cogenesis.eval.experiment import SYSTEMS, run_experiment


def add_experiment_parser(sub) -> None:
    """`cogenesis experiment ...` (register with ``add_experiment_parser(subparsers)``)."""
    p = sub.add_parser("experiment", help="run systems on records: quality vs. privacy leakage report (Table 1)")
    p.add_argument("--data", default="sample", help="records file (default: the shipped sample)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    p.add_argument("--limit", type=int, default=None, help="first N records")
    p.add_argument("--bundle", required=True, help="on-device bundle (cogenesis export --out DIR)")
    p.add_argument("--cloud-url", default=None, help="OpenAI-compatible cloud (cogenesis cloud serve, vLLM)")
    p.add_argument("--api-key", default=None, help="cloud API key (default: $COGENESIS_CLOUD_API_KEY)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible judge endpoint (no judge: no ratings)")
    p.add_argument("--judge-model", default=None, help="judge model name (default: the endpoint's first)")
    p.add_argument("--judge-max-tokens", type=int, default=256)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--force", action="store_true", help="replace the report of an earlier run in --out")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per answer (default 256)")
    p.add_argument("--cloud-max-tokens", type=int, default=None, help="tokens of the sketch outline")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="on-device model (1 = off)")
    p.add_argument("--guard-mode", choices=["audit", "strict", "off"], default="audit",
                   help="audit (default): measure each method's leakage; strict: as shipped (refuse + fall back)")
    p.add_argument("--no-canaries", action="store_true", help="do not plant a made-up secret per record")
    p.add_argument("--no-embed", action="store_true", help="skip the MiniLM embedding similarity")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the on-device model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", default=None, choices=["learned", "mean", "max", "weight", "local", "cloud"],
                   help="logits systems: the fusion rule (default learned)")
    p.add_argument("--prefix-policy", default=None, choices=["stop", "redact"],
                   help="logits systems: at the reply's first private term stop asking the cloud (default) or go "
                        "on with the term replaced by a placeholder")
    p.add_argument("--cross-tokenizer", action="store_true",
                   help="logits systems: fuse through the tokens' text (a cloud of another vocabulary, or "
                        "llama-server, which takes no token-id prompts)")
    p.add_argument("--fusion-net", default=None, metavar="JSON",
                   help="logits systems with --rule learned: a net trained for this pair (cogenesis calibrate fusion)")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(a) -> int:
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    logits_opts = {k: v for k, v in {"rule": a.rule, "prefix_policy": a.prefix_policy,
                                     "cross_tokenizer": a.cross_tokenizer or None,
                                     "fusion_net": a.fusion_net}.items() if v}
    r = run_experiment(a.data, systems=systems, limit=a.limit, bundle=a.bundle, cloud_url=a.cloud_url,
                       out_dir=a.out, judge_url=a.judge_url, judge_model=a.judge_model,
                       judge_max_tokens=a.judge_max_tokens, api_key=a.api_key, max_new_tokens=a.max_tokens,
                       cloud_max_tokens=a.cloud_max_tokens, temperature=a.temperature,
                       repetition_penalty=a.repetition_penalty, guard_mode=a.guard_mode, canaries=not a.no_canaries,
                       embed=not a.no_embed, threads=a.threads, seed=a.seed, force=a.force,
                       write_options={s: dict(logits_opts) for s in ("logits", "logits-block")} if logits_opts else None)
    print(r.report.read_text(encoding="utf-8"))
    print(f"written: {r.report}, {r.results}" + (f", {r.plot}" if r.plot else ""))
    return 0
