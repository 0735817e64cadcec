"""Foundation: the real default model -> verified bundles -> torch-free runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cogenesis.runtime.bundle import BundleError, read_manifest, verify_bundle, write_bundle

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a two-line poem about autumn rain.",
    "What should I pack for a weekend hiking trip? Answer briefly.",
    "Draft a polite reminder e-mail about an unpaid invoice.",
]


def _eager(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir), AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def eager(hf_dir):
    return _eager(hf_dir)


def test_runtime_import_does_not_import_torch():
    code = ("import sys, cogenesis.runtime as rt; bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"runtime import pulled in {r.stdout.strip()}"


def test_chat_template_matches_transformers(int4_model, eager):
    tok, _ = eager
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Tell me a joke."}]
    for m in (msgs, msgs[1:2]):
        want = tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        assert int4_model.render(m) == want
        ids = tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert int4_model.encode(m) == ids


def test_fp32_bundle_greedy_identical_to_eager(fp32_bundle, eager):
    """>= 3 chat prompts x 64 tokens: the fp32 bundle's greedy tokens equal PyTorch eager's."""
    import cogenesis.runtime as rt
    import torch

    tok, model = eager
    bundle = rt.load(fp32_bundle, threads=2)
    for p in PROMPTS:
        msgs = [{"role": "user", "content": p}]
        ids = bundle.encode(msgs)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = list(bundle.stream_ids(ids, max_new_tokens=64, stop_ids=set()))
        assert got == out, f"greedy mismatch for {p!r} at token {next(i for i, (a, b) in enumerate(zip(got, out, strict=False)) if a != b)}"


def _teacher_forced(bundle_dir, eager, n_new=48):
    import cogenesis.runtime as rt
    import torch

    tok, model = eager
    m = rt.load(bundle_dir, threads=2)
    agree, kls = [], []
    for p in PROMPTS:
        ids = m.encode([{"role": "user", "content": p}])
        with torch.no_grad():
            full = model.generate(torch.tensor([ids]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0].tolist()
            ref = model(torch.tensor([full])).logits[0, len(ids) - 1 : -1].numpy()
        got = m.logits(full)[len(ids) - 1 : -1]
        agree.append((got.argmax(-1) == ref.argmax(-1)).mean())
        lp = ref - np.log(np.exp(ref - ref.max(-1, keepdims=True)).sum(-1, keepdims=True)) - ref.max(-1, keepdims=True)
        lq = got - np.log(np.exp(got - got.max(-1, keepdims=True)).sum(-1, keepdims=True)) - got.max(-1, keepdims=True)
        kls.append((np.exp(lp) * (lp - lq)).sum(-1).mean())
    return float(np.mean(agree)), float(np.mean(kls))


def test_int4_gguf_exact_agreement(int4_bundle, eager):
    """int4 keeps the GGUF's own Q4_1/Q8_0 codes: measured 100% top-1, KL ~6e-5 -> require >= 99%."""
    agree, kl = _teacher_forced(int4_bundle, eager)
    assert agree >= 0.99, agree
    assert kl < 1e-3, kl
    rep = json.loads((int4_bundle / "export_report.json").read_text())
    assert rep["quant"]["scheme"] == "gguf-exact" and rep["quant"]["max_weight_abs_diff_vs_fp32"] == 0.0
    assert rep["parity"]["teacher_forced_top1"] >= 0.99


def test_int8_agreement(int8_bundle, eager):
    """int8 weight-only with int8 activations per block of 32: measured 95% top-1, KL ~5e-3 -> require >= 90%.

    (onnxruntime's quantize_dynamic, per-tensor activations, measured 60% / KL 0.74: kept as int8-dynamic.)"""
    agree, kl = _teacher_forced(int8_bundle, eager)
    assert agree >= 0.90, agree
    assert kl < 0.02, kl


def test_incremental_decode_equals_full_recompute(int4_model):
    m = int4_model
    ids = m.encode([{"role": "user", "content": "Count to five."}])
    full = m.logits(ids + [100, 200, 300])
    m.decoder.reset()
    m.decoder.forward(ids)
    step = [m.decoder.forward([t])[-1] for t in (100, 200, 300)]
    for i, lg in enumerate(step):
        _same_logits(lg, full[len(ids) + i])
    first = step[0].copy()
    # roll back two tokens and continue differently: same as computing that sequence from scratch
    m.decoder.truncate(len(ids) + 1)
    again = m.decoder.forward([777])[-1]
    _same_logits(again, m.logits(ids + [100, 777])[-1])
    np.testing.assert_array_equal(step[0], first)  # a later step does not write into logits already returned


def _same_logits(got, want):
    """Without our kernel library the int4 bundle runs its portable graph: its top-64 logits (by the approximate
    ranking) are exact fp32; the rest come from the int8-activation lm_head, where a 1e-7 change of the hidden state (decode and prefill sum in different orders)
    can flip one activation's rounding and move the tail by ~0.03 (and swap which tokens near rank 64 were made
    exact). The kernel graph's fp16 cache is read the same way by a full recompute and by steps, but a 1e-7
    change of a key (prefill and decode linears sum in different orders) can round it to the neighbouring fp16
    value: measured up to 0.0025 on logits near 27 (1e-4 relative). A cache bug moves the top logits by far more
    than 5e-3."""
    top = np.argsort(-want)[:32]
    np.testing.assert_allclose(got[top], want[top], atol=5e-3)
    np.testing.assert_allclose(got, want, atol=0.1)


def test_kv_buffer_grows_past_initial_capacity(int4_model):
    m = int4_model
    ids = list(range(1000, 1000 + 700))  # > the 512-token initial buffer
    ref = m.logits(ids)[-1]
    m.decoder.reset()
    m.decoder.forward(ids[:300])
    m.decoder.forward(ids[300:699])
    np.testing.assert_allclose(m.decoder.forward(ids[699:])[-1], ref, atol=5e-3)  # see _same_logits


def test_sampling_seeded_and_limits(int4_model):
    m = int4_model
    msgs = [{"role": "user", "content": "Name a colour."}]
    a = m.generate(msgs, max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7).token_ids
    b = m.generate(msgs, max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7).token_ids
    assert a == b
    greedy = m.generate(msgs, max_new_tokens=12).token_ids
    assert m.generate(msgs, max_new_tokens=12, temperature=1.5, top_k=1, seed=3).token_ids == greedy
    assert len(m.generate(msgs, max_new_tokens=5, stop_ids=set()).token_ids) == 5
    r = m.generate(msgs, max_new_tokens=200)
    assert r.stats.stop_reason == "stop_token" and len(r.token_ids) < 200
    with pytest.raises(ValueError, match="top_p"):
        m.generate(msgs, top_p=0)


def test_stream_equals_generate(int4_model):
    msgs = [{"role": "user", "content": "Say hello in French and in Japanese."}]
    pieces = list(int4_model.stream(msgs, max_new_tokens=24))
    assert len(pieces) > 3
    assert "".join(pieces) == int4_model.generate(msgs, max_new_tokens=24).text


# -- bundle verification: each failure has its own clear message ---------------------------------------------
def _copy(bundle: Path, tmp: Path) -> Path:
    # real copies: a hard link to the cached bundle would make onnx refuse it later ("hardlink attack")
    dst = tmp / "b"
    shutil.copytree(bundle, dst)
    return dst


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_tampered_byte_rejected(int4_bundle, tmp_path):
    import cogenesis.runtime as rt

    b = _copy(int4_bundle, tmp_path)
    data = bytearray((b / "tokenizer.json").read_bytes())
    data[100] ^= 0x01
    _rewrite(b / "tokenizer.json", bytes(data))
    with pytest.raises(BundleError, match=r"tokenizer\.json: sha256 does not match"):
        rt.load(b)


def test_missing_tokenizer_rejected(int4_bundle, tmp_path):
    import cogenesis.runtime as rt

    b = _copy(int4_bundle, tmp_path)
    (b / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json is missing"):
        rt.load(b)


def test_wrong_format_version_rejected(int4_bundle, tmp_path):
    import cogenesis.runtime as rt

    b = _copy(int4_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 99
    _rewrite(b / "manifest.json", json.dumps(m).encode())
    with pytest.raises(BundleError, match="unknown format_version 99"):
        rt.load(b)


def test_truncated_onnx_rejected(int4_bundle, tmp_path):
    import cogenesis.runtime as rt

    b = _copy(int4_bundle, tmp_path)
    data = (b / "model.onnx.data").read_bytes()
    _rewrite(b / "model.onnx.data", data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"model\.onnx\.data has \d+ bytes, manifest says \d+: the file is truncated"):
        rt.load(b)
    # even when the manifest is "fixed" to match, onnxruntime's failure is reported as a bundle error
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["model.onnx.data"]["size"] = len(data) // 2
    _rewrite(b / "manifest.json", json.dumps(m).encode())
    with pytest.raises(BundleError):
        rt.load(b, verify=False)


def test_signature_mismatch_rejected(int4_bundle, tmp_path):
    import cogenesis.runtime as rt

    b = _copy(int4_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["onnx"]["inputs"] = m["onnx"]["inputs"][:-1]
    _rewrite(b / "manifest.json", json.dumps(m).encode())
    with pytest.raises(BundleError, match="ONNX inputs do not match manifest"):
        rt.load(b)


def test_manifest_records_what_users_need(int4_bundle):
    m = verify_bundle(int4_bundle)
    assert m["format_version"] == 1 and m["model"]["vocab_size"] == 49152
    names = [i["name"] for i in m["onnx"]["inputs"]]
    assert names[:2] == ["input_ids", "attention_mask"] and "past_key_values.0.key" in names
    assert "present.29.value" in [o["name"] for o in m["onnx"]["outputs"]]
    assert set(m["files"]) >= {"model.onnx", "model.onnx.data", "tokenizer.json", "chat_template.jinja",
                              "generation_config.json", "export_report.json"}
    assert 2 in m["special_tokens"]["eos_token_ids"]
    assert {"onnxruntime", "onnxruntime-genai", "transformers"} <= set(m["tools"])


def test_write_bundle_is_atomic_and_refuses_overwrite(tmp_path):
    out = tmp_path / "bundle"

    def fill(d: Path) -> dict:
        for f in ("tokenizer.json", "chat_template.jinja", "generation_config.json", "model.onnx"):
            (d / f).write_text("x")
        return {"model": {}, "onnx": {"file": "model.onnx", "inputs": [], "outputs": []}}

    write_bundle(out, fill)
    before = read_manifest(out)
    with pytest.raises(BundleError, match="already exists; pass --force"):
        write_bundle(out, fill)

    def broken(d: Path) -> dict:
        fill(d)
        raise RuntimeError("export crashed half way")

    with pytest.raises(RuntimeError):
        write_bundle(out, broken, force=True)
    assert read_manifest(out) == before  # the old bundle survives a failed replacement
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp dirs left behind


def test_hub_id_gives_clear_error():
    from cogenesis.export.pipeline import resolve_source

    with pytest.raises(FileNotFoundError, match="Model hub ids are not fetched"):
        resolve_source("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_int4_fast_needs_gguf_codes(hf_dir, tmp_path):
    from cogenesis.export.pipeline import export_bundle

    with pytest.raises(BundleError, match="not a .gguf source"):
        export_bundle(str(hf_dir), tmp_path / "b", quant="int4-fast", progress=False)
    assert not (tmp_path / "b").exists()


# -- CLI journeys ---------------------------------------------------------------------------------------------
def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cogenesis.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          **kw)


def test_cli_info_and_run(int4_bundle):
    r = _cli("info", str(int4_bundle))
    assert r.returncode == 0, r.stderr
    assert "gguf-exact" in r.stdout and "verified: ok" in r.stdout
    r = _cli("run", "--bundle", str(int4_bundle), "--prompt", "Write one sentence about my weekend.",
             "--context", "examples/demo_profile.json", "--stream", "--max-tokens", "16", "-v", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0 and "tok/s" in r.stderr


def test_cli_errors_are_clear(int4_bundle, tmp_path):
    r = _cli("export", "--out", str(int4_bundle))
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr
    r = _cli("run", "--bundle", str(tmp_path / "nope"), "--prompt", "x")
    assert r.returncode == 2 and "bundle not found" in r.stderr
    r = _cli("--help")
    assert r.returncode == 0 and "export" in r.stdout and "run" in r.stdout
