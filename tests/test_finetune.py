"""Supervised fine-tuning: reply-only loss masks in the three regimes, a real LoRA run whose merged weights export
to an int4 bundle that the edge runtime runs, and a real full fine-tuning run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cogenesis.data.records import TaskRecord, load_sample
from cogenesis.finetune import REGIMES, build_example, build_examples, derive_outline, finetune, merge_adapter


@pytest.fixture(scope="module")
def tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


@pytest.mark.parametrize("regime", REGIMES)
def test_loss_only_on_the_reply(tokenizer, regime):
    rec = load_sample()[0]
    sketch = derive_outline(rec.reference) if regime == "with_sketch" else None
    ex = build_example(tokenizer, rec, regime, max_len=2048, sketch=sketch)
    assert len(ex.labels) == len(ex.input_ids) and not ex.reply_cut
    n = ex.prompt_tokens
    assert all(x == -100 for x in ex.labels[:n]) and all(x != -100 for x in ex.labels[n:])
    reply = tokenizer.decode(ex.input_ids[n:])
    prompt = tokenizer.decode(ex.input_ids[:n])
    assert reply.startswith(rec.reference.strip()[:40]) and "<|im_end|>" in reply
    assert prompt.endswith("<|im_start|>assistant\n") and rec.reference.strip()[:40] not in prompt
    if regime == "without_context":
        assert rec.context.profile["Name"] not in prompt
    else:
        assert rec.context.profile["Name"] in prompt
    if regime == "with_sketch":
        assert sketch[1] in prompt


def test_long_examples_shrink_the_context_first(tokenizer):
    rec = load_sample()[0]
    ex = build_example(tokenizer, rec, "with_context", max_len=384)
    assert len(ex.input_ids) <= 384 and ex.context_tokens < 1300
    assert ex.reply_tokens >= 384 // 3 - 4  # about a third of the budget is kept for the reply
    with pytest.raises(ValueError, match="no room"):
        build_example(tokenizer, rec, "with_sketch", max_len=64, sketch=["a"] * 40)


def test_examples_skip_what_cannot_be_learned(tokenizer):
    recs = load_sample()[:2] + [TaskRecord(tid="noref", instruction="Write something.")]
    exs, skipped, source = build_examples(tokenizer, recs, "with_context", 512)
    assert [e.tid for e in exs] == [r.tid for r in recs[:2]] and "noref" in skipped and source is None
    with pytest.warns(UserWarning, match="deriving outlines"):
        _, _, source = build_examples(tokenizer, recs[:1], "with_sketch", 512)
    assert "derived" in source
    exs, skipped, source = build_examples(tokenizer, recs[:2], "with_sketch", 512,
                                          sketches={recs[0].tid: "1. Greet\n2. Pitch the buns\n3. Ask"})
    assert [e.tid for e in exs] == [recs[0].tid] and skipped == {recs[1].tid: "no sketch for this tid"}
    assert source == "given"
    with pytest.raises(ValueError, match="regime"):
        build_examples(tokenizer, recs, "with_profile", 512)


def test_derive_outline():
    pts = derive_outline("First sentence is here. Second one follows it! A third? " + "More words here. " * 20,
                         max_points=5, words=3)
    assert len(pts) == 5 and pts[0] == "First sentence is ..." and pts[-1].startswith("More words")


def test_bad_base_and_existing_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub ids are not"):
        finetune("HuggingFaceTB/SmolLM2-135M-Instruct", load_sample()[:1], tmp_path / "x", steps=1)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="force"):
        finetune(None, load_sample()[:1], tmp_path / "exists", steps=1)


@pytest.mark.slow
def test_lora_finetune_merges_exports_and_runs(tmp_path, hf_dir, monkeypatch):
    import cogenesis.runtime as rt
    from cogenesis.export.pipeline import export_bundle

    out = tmp_path / "ft-lora"
    t0 = time.time()
    res = finetune(hf_dir, load_sample()[:2], out, regime="with_context", method="lora", steps=5, lr=1e-3,
                   max_len=256, lora_r=8, threads=2, seed=0, progress=False, device="cpu",
                   eval_data=load_sample()[:2])
    t_train = time.time() - t0
    assert len(res.losses) == 5 and res.examples == 2
    assert res.losses[-1] < res.losses[0] - 0.2, res.losses  # overfitting two records
    assert [e["step"] for e in res.eval_losses] == [0, 5] and res.device == "cpu"
    assert res.eval_losses[1]["loss"] < res.eval_losses[0]["loss"] - 0.2, res.eval_losses
    for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "training_log.json",
              "finetune.json"):
        assert (out / f).is_file(), f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5] and all(e["tokens"] > 50 for e in log)
    info = json.loads((out / "finetune.json").read_text())
    assert info["method"] == "lora" and "q_proj" in info["lora"]["targets"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # merged: the base model's own tensor names
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n or "base_layer" in n]

    # the fp16 adapter alone (what comes back from a GPU machine) merges into the same weights
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size < 5e6
    merged = merge_adapter(hf_dir, out / "adapter", tmp_path / "merged")
    with pytest.raises(FileExistsError, match="force"):
        merge_adapter(hf_dir, out / "adapter", tmp_path / "merged")
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        merge_adapter(hf_dir, tmp_path, tmp_path / "merged2")
    with safe_open(str(out / "model.safetensors"), "pt") as a, safe_open(str(merged / "model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        worst = max(float((a.get_tensor(n) - b.get_tensor(n)).abs().max()) for n in names)
    with safe_open(str(Path(hf_dir) / "model.safetensors"), "pt") as base, \
            safe_open(str(out / "model.safetensors"), "pt") as a:
        q = next(n for n in names if "q_proj" in n)
        moved = float((base.get_tensor(q) - a.get_tensor(q)).abs().max())
    assert worst < 1e-3 < moved, (worst, moved)  # training moved the weights; fp16 adapter rounding did not
    assert json.loads((merged / "finetune.json").read_text())["merged_from_adapter"].endswith("adapter")

    # the exporter caches fp32 graphs per source folder: keep this one-off graph (~0.5 GB) out of the shared cache
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("COGENESIS_CACHE", str(tmp_path / "cache"))
    t0 = time.time()
    bundle = export_bundle(str(out), tmp_path / "bundle", quant="int4", new_tokens=4, progress=False)
    t_export = time.time() - t0
    assert json.loads((bundle / "manifest.json").read_text())["quant"]["scheme"].startswith("int4")
    model = rt.load(bundle, threads=2)
    r = model.generate([{"role": "user", "content": "Write one line about bread."}], max_new_tokens=8)
    assert len(r.token_ids) > 0 and r.text.strip()
    print(f"\nlora: train {t_train:.0f}s, export {t_export:.0f}s, losses {res.losses}")


@pytest.mark.slow
def test_full_finetune(tmp_path, hf_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ft-full"
    res = finetune(hf_dir, load_sample()[2:3], out, regime="without_context", method="full", steps=2, lr=1e-4,
                   max_len=128, threads=2, progress=False)
    assert res.losses[-1] < res.losses[0], res.losses
    info = json.loads((out / "finetune.json").read_text())
    assert info["method"] == "full" and info["lora"] is None and info["trainable_params"] > 100_000_000
    m = AutoModelForCausalLM.from_pretrained(Path(out))
    assert m.config.model_type == "llama"
