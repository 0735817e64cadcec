"""ExecuTorch export: the .pte (XNNPACK, custom SDPA + static KV cache ops) against transformers eager.

The .pte exports are minutes of CPU each; they are cached under $COGENESIS_CACHE/executorch per source model,
options and version of export/executorch_export.py (+ executorch/torch/torchao versions), so only the first run
pays. fp32 must match eager exactly (greedy tokens identical); 8da4w is measured and bounded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("executorch", reason="ExecuTorch not installed (pip install executorch==1.4.1 torchao==0.18.0)")

from cogenesis.export.executorch_export import (  # noqa: E402
    PteDecoder,
    cached_pte,
    export_executorch_bundle,
    load_pte_bundle,
    pte_parity,
    verify_pte_bundle,
)
from cogenesis.export.report import PARITY_PROMPTS, reference_runs  # noqa: E402


@pytest.fixture(scope="module")
def refs(hf_dir):
    return reference_runs(hf_dir, PARITY_PROMPTS[:2], 32)


@pytest.fixture(scope="module")
def fp32_pte(hf_dir):
    return cached_pte(hf_dir, "fp32")


@pytest.fixture(scope="module")
def q_pte(hf_dir):
    return cached_pte(hf_dir, "8da4w")


def test_fp32_pte_greedy_identical_to_eager(fp32_pte, refs):
    pte, facts = fp32_pte
    assert facts["backend"] == "xnnpack" and facts["delegate_calls"] > 0 and facts["dynamic_seq"][1] >= 1024
    p = pte_parity(PteDecoder(pte, threads=2), refs)
    assert p["prompts"] == 2 and p["new_tokens"] == 32
    assert p["greedy_identical_prompts"] == 2, p["per_prompt"]
    assert p["teacher_forced_top1"] == 1.0
    assert p["max_abs_logit_diff"] < 1e-2 and p["mean_kl"] < 1e-6


def test_dynamic_prefill_chunks_and_rollback(fp32_pte, refs):
    dec = PteDecoder(fp32_pte[0], threads=2, max_seq_len=fp32_pte[1]["max_seq_len"])
    ids = refs[0]["prompt_ids"] + refs[0]["ref_ids"][:8]
    one = dec.forward(ids)[-1]
    dec.reset()
    dec.forward(ids[:5])
    dec.forward(ids[5:17])
    chunked = dec.forward(ids[17:])[-1]
    np.testing.assert_allclose(chunked, one, atol=2e-3)
    dec.truncate(10)  # drafts rejected: roll back and continue from position 10
    again = dec.forward(ids[10:])[-1]
    np.testing.assert_allclose(again, one, atol=2e-3)
    assert dec.length == len(ids)
    with pytest.raises(ValueError, match="context full"):
        dec.forward([1] * (fp32_pte[1]["max_seq_len"] - dec.length + 1))


def test_8da4w_pte_size_speed_and_agreement(q_pte, fp32_pte, refs):
    pte, facts = q_pte
    assert facts["quant"] == "8da4w" and facts["group_size"] == 32
    assert pte.stat().st_size < 0.25 * fp32_pte[0].stat().st_size  # ~100 MB vs ~620 MB
    p = pte_parity(PteDecoder(pte, threads=2), refs)
    # re-quantizing the (already Q4_1) weights to int4 with int8 activations: close but not exact
    assert p["teacher_forced_top1"] >= 0.8, p
    assert p["mean_kl"] < 0.3, p
    assert all(x["greedy_matching_prefix"] >= 1 for x in p["per_prompt"]), p["per_prompt"]


def test_executorch_bundle(tmp_path, q_pte):
    out = export_executorch_bundle(None, tmp_path / "et", quant="8da4w", target="android-arm64", new_tokens=8,
                                   prompts=PARITY_PROMPTS[:1], progress=False)
    m = verify_pte_bundle(out)
    assert m["executorch"]["file"] == "model.pte" and "model.pte" in m["files"] and "onnx" not in m
    assert m["executorch"]["max_seq_len"] >= 1024 and m["quant"]["scheme"] == "executorch-8da4w"
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["budget"]["fits"] and rep["parity"]["prompts"] == 1
    dec, tok, _ = load_pte_bundle(out, threads=2)
    ids = tok.encode("<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
    lg = dec.forward(ids)[-1]
    new = []
    for _ in range(8):
        new.append(int(np.argmax(lg)))
        lg = dec.forward([new[-1]])[-1]
    assert tok.decode(new).strip()
    (out / "model.pte").write_bytes(b"corrupt")
    from cogenesis.bundle import BundleError

    with pytest.raises(BundleError, match="model.pte"):
        verify_pte_bundle(out)
