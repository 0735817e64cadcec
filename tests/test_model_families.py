"""Model families beyond llama, exported GGUF-exact from their registry names and measured here against
transformers eager on the dequantized weights: Qwen2.5-Coder-0.5B (qwen2; Q5_0, Q8_0, Q4_K and Q6_K tensors,
attention biases, an untied head, q/k/v of different types in one layer) and Gemma-3-270M (gemma3; q/k norms,
sliding and global RoPE, a 262k tied vocabulary, no chat template)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["Write two sentences about why people keep journals.", "List three uses of a paperclip."]


@pytest.fixture(scope="module")
def eager05(qwen05):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(qwen05[2], dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def runtime05(qwen05):
    import cogenesis.runtime as rt

    return rt.load(qwen05[0], threads=2)


def test_greedy_tokens_equal_transformers_eager(runtime05, eager05):
    import torch

    for p in PROMPTS:
        ids = runtime05.encode([{"role": "user", "content": p}])
        with torch.no_grad():
            want = eager05.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = list(runtime05.stream_ids(ids, max_new_tokens=32, stop_ids=set()))
        assert got == want, p


def _teacher_forced(runtime, eager, prompts, chat: bool = True) -> tuple[float, float]:
    """Top-1 agreement and mean KL(eager || bundle) over eager's own 48-token greedy continuations."""
    import torch

    agree, kl = [], []
    for p in prompts:
        ids = runtime.encode([{"role": "user", "content": p}]) if chat else runtime.tokenizer.encode(p).ids
        with torch.no_grad():
            full = eager.generate(torch.tensor([ids]), max_new_tokens=48, min_new_tokens=48, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0].tolist()
            ref = eager(torch.tensor([full])).logits[0, len(ids) - 1 : -1].numpy().astype(np.float64)
        got = runtime.logits(full)[len(ids) - 1 : -1].astype(np.float64)
        agree += list(got.argmax(-1) == ref.argmax(-1))
        lp, lq = (x - x.max(-1, keepdims=True) for x in (ref, got))
        lp, lq = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (lp, lq))
        kl += list((np.exp(lp) * (lp - lq)).sum(-1))
    return float(np.mean(agree)), float(np.mean(kl))


def test_teacher_forced_top1_and_kl(runtime05, eager05):
    """The whole distribution over eager's own greedy replies, not only the greedy path: measured top-1 1.000,
    KL ~2e-4 (int8 activations on the 8-bit layers, as llama.cpp runs them) -> require >= 0.99 and < 2e-3."""
    agree, kl = _teacher_forced(runtime05, eager05, PROMPTS)
    assert agree >= 0.99, agree
    assert kl < 2e-3, kl


def test_every_weight_is_the_gguf_s_own_and_the_bundle_is_near_its_size(qwen05):
    """No fp32 matrix is left (the embedding and the untied head included), and the weights on disk stay within
    1.5x the GGUF (measured 1.37x: the 5-bit codes take a byte each) instead of the 2.6x of the re-quantized
    export."""
    import onnx

    bundle, gguf, _ = qwen05
    m = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    big = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 2**20
           and not t.name.endswith((".scales", ".blockmin")) and t.name not in ("cos_cache", "sin_cache")]
    assert big == [], f"fp32 weights left in the graph: {big[:5]}"
    ops = {n.op_type for n in m.graph.node}
    assert "MatMulNBits" in ops and "MatMul" in ops
    weights = sum(f.stat().st_size for f in bundle.iterdir() if f.name.startswith("model.onnx"))
    assert weights < 1.5 * gguf.stat().st_size, (weights, gguf.stat().st_size)


def test_the_vocabulary_fingerprint_marks_the_qwen_family(qwen05, int4_bundle):
    """Same tokenizer as the 1.5B cloud (token-id fusion allowed); not SmolLM2's (cross-tokenizer path)."""
    from cogenesis.runtime.vocab import vocab_fingerprint
    from tokenizers import Tokenizer

    bundle, _, hf = qwen05
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp = manifest["model"]["vocab_fingerprint"]
    assert fp == vocab_fingerprint(Tokenizer.from_file(str(hf / "tokenizer.json")))
    assert fp != json.loads((int4_bundle / "manifest.json").read_text())["model"]["vocab_fingerprint"]


def test_cogenesis_run_writes_english(qwen05):
    r = subprocess.run([sys.executable, "-m", "cogenesis.cli", "run", "--bundle", str(qwen05[0]), "--prompt",
                        "Name the capital of France in one word.", "--max-tokens", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "paris" in r.stdout.lower()


def test_gemma3_base_model_matches_eager(gemma270):
    """Gemma-3 needs the builder shim (per-layer-type RoPE of transformers 5; without it the builder stops with
    KeyError 'rope_type', and flattened too late its global layers got theta 1e4 instead of 1e6: fp32 graph top-1
    0.896, KL 0.054 on these prompts). With the shim the fp32 graph is exact (top-1 1.000, KL 2e-9); the int4
    bundle measures top-1 0.958, KL 1.2e-3 here: Gemma's activation outliers make the int8 activations of its
    8-bit (Q5_0/Q8_0) layers cost more than on Qwen (top-1 1.000) -> require >= 0.95 and KL < 3e-3."""
    import cogenesis.runtime as rt
    import torch
    from transformers import AutoModelForCausalLM

    bundle, _, hf = gemma270
    eager = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    agree, kl = _teacher_forced(rt.load(bundle, threads=2), eager, ["The capital of France is", "Once upon a time"],
                                chat=False)
    assert agree >= 0.95, agree
    assert kl < 3e-3, kl


def test_flatten_layer_rope_reads_both_thetas():
    from types import SimpleNamespace

    from cogenesis.export.builder_shim import flatten_layer_rope

    cfg = SimpleNamespace(rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                           "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}})
    flatten_layer_rope(cfg)
    assert (cfg.rope_theta, cfg.rope_local_base_freq, cfg.rope_parameters["rope_type"]) == (1e6, 1e4, "default")
    flat = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    flatten_layer_rope(flat)
    assert flat.rope_parameters == {"rope_type": "default", "rope_theta": 5e5} and not hasattr(flat, "rope_theta")


def test_cogenesis_run_raw_continues_a_base_model_s_text(gemma270):
    """Gemma-3-270M is a base model: through a chat template it writes "1111..."; `run --raw` sends the prompt as
    plain text and it continues it (greedy: "the capital of the country of France...")."""
    cmd = [sys.executable, "-m", "cogenesis.cli", "run", "--bundle", str(gemma270[0]), "--max-tokens", "12"]
    r = subprocess.run([*cmd, "--raw", "--prompt", "The capital of France is"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "france" in r.stdout.lower()
    bad = subprocess.run([*cmd, "--raw", "--prompt", "x", "--system", "be brief"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "--raw" in bad.stderr
