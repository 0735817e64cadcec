"""Measuring a quantization variant for `cogenesis calibrate quant`: the held-out data (split by user, encoded as
the on-device model sees it), teacher-forced agreement / KL / perplexity against the fp32 reference, and decode
speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


# -- data ---------------------------------------------------------------------------------------------------------
def _encoder(hf_dir: Path):
    from cogenesis.export.pipeline import _chat_template
    from cogenesis.runtime.chat import compile_template, render
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tpl = compile_template(_chat_template(hf_dir))

    def enc_text(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def render_msgs(msgs, gen=True) -> str:
        return render(tpl, msgs, gen)

    return enc_text, render_msgs


def split_records(records, n_calib_users: int = 2):
    users = list(dict.fromkeys(r.user_id for r in records))
    calib = set(users[:n_calib_users])
    return [r for r in records if r.user_id in calib], [r for r in records if r.user_id not in calib]


def encode_records(hf_dir: Path, records, max_ref_tokens: int = 192) -> list[dict]:
    """prompt ids (with_context, generation prompt) + reference ids (the assistant turn, clipped)."""
    from cogenesis.data.prompts import with_context

    enc, render = _encoder(hf_dir)
    out = []
    for r in records:
        msgs = with_context(r)
        prompt = render(msgs, True)
        full = render(msgs + [{"role": "assistant", "content": r.reference}], False)
        if not full.startswith(prompt):
            raise ValueError(f"{r.tid}: the chat template does not extend the prompt with the assistant turn")
        out.append({"tid": r.tid, "prompt_ids": enc(prompt), "ref_ids": enc(full[len(prompt):])[:max_ref_tokens]})
    return out


# -- measuring ----------------------------------------------------------------------------------------------------
def _decoder(path: Path, kv, threads: int):
    if path.suffix == ".pte":
        from cogenesis.export.executorch_export import PteDecoder

        return PteDecoder(path, threads=threads)
    from cogenesis.runtime.model import Decoder, make_session, uses_gqa

    return Decoder(make_session(str(path), threads), kv, shared_kv=uses_gqa(str(path)))


def _logits_over_reference(dec, rec: dict) -> np.ndarray:
    """Logits predicting each reference token: [len(ref), vocab]."""
    p, r = rec["prompt_ids"], rec["ref_ids"]
    dec.reset()
    if hasattr(dec, "session"):  # onnxruntime: one teacher-forced pass
        return dec.forward(p + r, keep=len(r) + 1)[:-1]
    rows = [dec.forward(p)[-1]]  # a .pte returns the last position only: feed the reference token by token
    for t in r[:-1]:
        rows.append(dec.forward([t])[-1])
    return np.stack(rows)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_logprobs(fp32_path: Path, kv, recs: list[dict], threads: int) -> list[np.ndarray]:
    dec = _decoder(fp32_path, kv, threads)
    return [_log_softmax(_logits_over_reference(dec, r)).astype(np.float32) for r in recs]


def measure_quality(dec, recs: list[dict], ref_lp: list[np.ndarray]) -> dict:
    agree, kl, nll, n = 0.0, 0.0, 0.0, 0
    for rec, lp in zip(recs, ref_lp, strict=True):
        lq = _log_softmax(_logits_over_reference(dec, rec))
        tgt = np.asarray(rec["ref_ids"])
        agree += float((lq.argmax(-1) == lp.argmax(-1)).sum())
        kl += float((np.exp(lp) * (lp - lq)).sum(-1).sum())
        nll += float(-lq[np.arange(len(tgt)), tgt].sum())
        n += len(tgt)
    return {"teacher_forced_top1": agree / n, "mean_kl": max(kl / n, 0.0),  # fp32 vs itself: -1e-9 rounding
            "perplexity": float(np.exp(nll / n)), "positions": n}


def measure_speed(dec, prompt: list[int], new_tokens: int, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        dec.reset()
        lg = dec.forward(prompt)[-1]
        t = time.perf_counter()
        for _ in range(new_tokens):
            lg = dec.forward([int(np.argmax(lg))])[-1]
        best = max(best, new_tokens / (time.perf_counter() - t))
    return best
