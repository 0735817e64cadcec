"""Calibration data for the fusion net: both models' top-k views, teacher-forced on reference texts.

For each record the local model reads ``with_context(record) + reference[:N]`` and the cloud model reads
``without_context(record) + reference[:N]`` (one forward pass each, logits at the N reference positions).
Each position keeps the sparse :class:`~cogenesis.cogen.fusion.StepView` the decoder would see (the cloud reduced
to its top-k, as an API returns it) and the reference token's log-prob under local-only, cloud-only (top-k
completed with the floor), max-fusion, and the cloud's exact full-vocab log-prob (for information).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cogenesis.runtime.sampling import log_softmax

from cogenesis.cogen.fusion import DEFAULT_K, cloud_full, stack_views, step_features, step_view

TARGET_KEYS = ("target", "lp_local", "lp_cloud", "lp_max", "lp_cloud_exact", "record", "group")


@dataclass
class CalibrationSet:
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.arrays["target"].shape[0])

    def features(self) -> np.ndarray:
        return step_features(self.arrays)

    def subset(self, mask: np.ndarray) -> CalibrationSet:
        return CalibrationSet({k: v[mask] for k, v in self.arrays.items()}, dict(self.meta))

    def split(self, heldout: float = 0.2, seed: int = 0) -> tuple[CalibrationSet, CalibrationSet]:
        """(train, held-out) by user group, so no user's texts are on both sides."""
        groups = np.unique(self.arrays["group"])
        rng = np.random.default_rng(seed)
        n_out = max(1, int(round(heldout * len(groups))))
        out = set(rng.permutation(groups)[:n_out].tolist())
        mask = np.isin(self.arrays["group"], list(out))
        return self.subset(~mask), self.subset(mask)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(p, meta=np.array(json.dumps(self.meta)), **self.arrays)
        return p

    @classmethod
    def load(cls, path: str | Path) -> CalibrationSet:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls({k: z[k] for k in z.files if k != "meta"}, meta)


def _group_id(user: str) -> int:
    return int(hashlib.sha256(user.encode()).hexdigest()[:7], 16)


def _topk_dict(lp_row: np.ndarray, k: int) -> dict[int, float]:
    top = np.argpartition(-lp_row, k)[:k]
    return {int(t): float(lp_row[t]) for t in top}


def extract(
    records: Sequence,
    model,
    cloud_model=None,
    n_tokens: int = 64,
    k: int = DEFAULT_K,
    progress: bool = True,
    context_tokens: int | None = None,
) -> CalibrationSet:
    """Teacher-forced views for the first ``n_tokens`` reference tokens of each record (TaskRecord list).

    ``model``: the on-device EdgeModel (sees the context); ``cloud_model``: an EdgeModel standing in for the
    cloud (default: the same model, without the context). Both must share a tokenizer.
    ``context_tokens`` bounds the rendered private context (default: the prompt builder's budget).
    """
    from cogenesis.data.prompts import with_context, without_context

    cloud_model = cloud_model or model
    views, cols = [], {key: [] for key in TARGET_KEYS}
    t0 = time.perf_counter()
    for ri, r in enumerate(records):
        ref = model.encode(r.reference)[:n_tokens]
        if not ref:
            continue
        n = len(ref)
        model.decoder.reset()
        local_msgs = with_context(r) if context_tokens is None else with_context(r, max_tokens=context_tokens)
        loc = log_softmax(model.decoder.forward(model.encode(local_msgs) + ref, keep=n + 1)[:n])
        cloud_model.decoder.reset()
        cl = log_softmax(cloud_model.decoder.forward(cloud_model.encode(without_context(r)) + ref, keep=n + 1)[:n])
        for j, y in enumerate(ref):
            top = _topk_dict(cl[j], k)
            views.append(step_view(loc[j], top, j, k))
            pc = cloud_full(top, loc.shape[-1])
            mx = np.maximum(np.exp(loc[j]), pc)
            cols["target"].append(y)
            cols["lp_local"].append(loc[j, y])
            cols["lp_cloud"].append(np.log(pc[y]))
            cols["lp_max"].append(np.log(mx[y] / mx.sum()))
            cols["lp_cloud_exact"].append(cl[j, y])
            cols["record"].append(ri)
            cols["group"].append(_group_id(r.user_id))
        if progress:
            el = time.perf_counter() - t0
            print(f"  [{ri + 1}/{len(records)}] {len(cols['target'])} positions, {el:.0f}s "
                  f"(~{el / (ri + 1) * (len(records) - ri - 1):.0f}s left)", flush=True)
    arrays = stack_views(views)
    arrays.update({key: np.asarray(v, np.int64 if key in ("target", "record", "group") else np.float32)
                   for key, v in cols.items()})
    meta = {
        "n_tokens": n_tokens, "k": k, "records": len(records), "positions": len(cols["target"]),
        "context_tokens": context_tokens, "local_model": model.manifest["model"].get("name"), "cloud_model": cloud_model.manifest["model"].get("name"),
        "cloud_sees_context": False, "seconds": round(time.perf_counter() - t0, 1),
    }
    return CalibrationSet(arrays, meta)


def features_of(cs: CalibrationSet) -> np.ndarray:
    """Feature matrix of a calibration set (same function the decoder uses)."""
    return step_features(cs.arrays)
