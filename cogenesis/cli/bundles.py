"""`cogenesis export | info | keygen | sign | kernels`: make, inspect, sign a bundle; build our kernels."""

from __future__ import annotations

import json
import sys
from pathlib import Path


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
        from cogenesis.runtime.signing import sign_bundle

        print(f"  signed: manifest.sig (Ed25519 key {sign_bundle(out, a.sign_key)})")
    print(f"  quant {rep['quant']['scheme']}  greedy identical {p['greedy_identical_prompts']}/{p['prompts']}  "
          f"teacher-forced top-1 {p['teacher_forced_top1']:.4f}  mean KL {p['mean_kl']:.5f}")
    kp = rep.get("kernel_parity", {})
    if "decode_top1" in kp:
        print(f"  kernel graph: greedy identical "
              f"{kp['greedy_identical_prompts']}/{kp['prompts']}  decode-step top-1 {kp['decode_top1']:.4f}  "
              f"mean KL {kp['decode_mean_kl']:.6f}")
    if "genai_parity" in rep:
        g = rep["genai_parity"]
        print(f"  under onnxruntime-genai (og.Generator): greedy identical {g['greedy_identical_prompts']}/{g['prompts']}")
    b = rep["budget"]
    print(f"  target {rep['target']['name']}: {b['total_mb']} MB of {b['budget_mb']} MB budget -> "
          f"{'fits' if b['fits'] else 'DOES NOT FIT'}")
    return 0


def cmd_info(a) -> int:
    from cogenesis.runtime.bundle import read_manifest, verify_bundle

    m = read_manifest(a.bundle, trusted_keys=a.verify_key or None)
    ok = "not checked"
    if not a.no_verify:
        verify_bundle(a.bundle, m)
        ok = "ok"
    if a.verify_key:
        from cogenesis.runtime.signing import verify_signature

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
        if "decode_top1" in kp:
            par += f", decode-step top-1 {kp['decode_top1']:.4f} ({kg.get('kv_dtype', 'float32')} KV cache)"
        try:
            used = kernels.usage()[1]
        except kernels.KernelError:  # COGENESIS_KERNELS=1 and no library: loading this bundle would fail
            used = "REQUIRED but not built: run `cogenesis kernels build`"
        ops = ", ".join(f"{n} x {op}" for op, n in kg.get("ops", {}).items())
        print(f"kernels     {kg['file']} ({ops}; {par}); {used}")
    for f, info in m["files"].items():
        print(f"  {f:28s} {info['size']:>12,d}  {info['sha256'][:16]}")
    return 0


def cmd_keygen(a) -> int:
    from cogenesis.runtime.signing import generate_key, key_id, load_private_key

    priv, pub = generate_key(a.out, force=a.force)
    print(f"private key {priv} (keep it secret)\npublic key  {pub} (give it to devices: --verify-key / "
          f"trusted_keys)\nkey id      {key_id(load_private_key(priv).public_key())}")
    return 0


def cmd_sign(a) -> int:
    from cogenesis.runtime.bundle import verify_bundle
    from cogenesis.runtime.signing import sign_bundle

    verify_bundle(a.bundle)  # never sign a bundle that does not verify
    print(f"signed {a.bundle}: manifest.sig (Ed25519 key {sign_bundle(a.bundle, a.key)})")
    return 0


def cmd_kernels(a) -> int:
    from cogenesis.runtime import kernels

    return kernels.main([a.action] + (["--force"] if a.force else []))


def register(sub) -> None:
    """Add the subcommands of this module."""
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

    p = sub.add_parser("kernels", help="build our onnxruntime kernel library (exact fast int4) or show its status")
    p.add_argument("action", choices=["build", "status"], nargs="?", default="status")
    p.add_argument("--force", action="store_true", help="rebuild even if a build for these sources exists")
    p.set_defaults(func=cmd_kernels)
