"""Calibration: teacher-forced extraction is consistent with the model, training beats the worse single model on
held-out users, numpy inference of the trained net matches torch, and the CLI writes artifact + report + plot."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cogenesis.calibration.fusion_data import CalibrationSet, extract
from cogenesis.runtime.sampling import log_softmax

from cogenesis.cogen.fusion import N_FEATURES, FusionNet

ROOT = Path(__file__).resolve().parents[1]




def _cache_path(bundle: Path, tag: str) -> Path:
    h = hashlib.sha256((bundle / "manifest.json").read_bytes())
    for p in ("calibration/fusion_data.py", "cogenesis/cogen/fusion.py"):
        h.update((ROOT / p).read_bytes())
    return Path(os.environ["COGENESIS_CACHE"]) / "calibration" / f"{tag}-{h.hexdigest()[:12]}.npz"


def _cached(bundle: Path, model, tag: str, records, n_tokens: int) -> CalibrationSet:
    p = _cache_path(bundle, tag)
    if p.is_file():
        return CalibrationSet.load(p)
    cs = extract(records, model, n_tokens=n_tokens, progress=False)
    cs.save(p)
    return cs


@pytest.fixture(scope="module")
def sample_set(edge_bundle, edge_model) -> CalibrationSet:
    """The shipped synthetic sample (13 records, 6 users) x 32 reference tokens, cached."""
    from cogenesis.data.records import load_sample

    return _cached(edge_bundle, edge_model, "sample-n32", load_sample(), 32)


def test_extract_matches_the_model(edge_model):
    from cogenesis.data.prompts import with_context, without_context
    from cogenesis.data.records import load_sample

    m = edge_model
    r = load_sample()[0]
    cs = extract([r], m, n_tokens=6, progress=False, context_tokens=80)
    assert len(cs) == 6 and cs.features().shape == (6, N_FEATURES)
    ref = m.encode(r.reference)[:6]
    a = cs.arrays
    assert a["target"].tolist() == ref
    local_ids = m.encode(with_context(r, max_tokens=80))
    lp = log_softmax(m.logits(local_ids + ref))
    n0 = len(local_ids) - 1
    np.testing.assert_allclose(a["lp_local"], [lp[n0 + j, y] for j, y in enumerate(ref)], atol=2e-3)
    lc = log_softmax(m.logits(m.encode(without_context(r)) + ref))
    c0 = len(m.encode(without_context(r))) - 1
    np.testing.assert_allclose(a["lp_cloud_exact"], [lc[c0 + j, y] for j, y in enumerate(ref)], atol=2e-3)
    assert np.isfinite(a["lp_cloud"]).all() and (a["lp_max"] <= 0).all()
    assert a["step"].tolist() == list(range(6))


def test_learned_fusion_beats_the_worse_single_model_on_heldout(sample_set, tmp_path):
    from cogenesis.calibration.train_fusion import TrainConfig, calibrate

    rep = calibrate(sample_set, tmp_path, TrainConfig(), log=lambda *_: None)
    h = rep["heldout"]
    worse = max(h["local_only"]["nll"], h["cloud_only"]["nll"])
    assert h["learned"]["nll"] < worse
    assert h["learned"]["nll"] < h["local_only"]["nll"] + 0.05  # and is close to / better than the better one
    assert rep["numpy_vs_torch_max_abs_diff"] < 1e-5
    assert rep["artifact"]["bytes"] < 1_000_000
    net = FusionNet.load(tmp_path / "fusion-v1")
    assert net.n_params == rep["artifact"]["n_params"]
    assert Path(rep["report"]).is_file()
    if rep["plot"]:
        assert Path(rep["plot"]).stat().st_size > 1000


def test_split_keeps_users_apart(sample_set):
    from cogenesis.calibration.train_fusion import split3

    tr, va, te = split3(sample_set)
    g = [set(np.unique(x.arrays["group"]).tolist()) for x in (tr, va, te)]
    assert not (g[0] & g[1]) and not (g[0] & g[2]) and not (g[1] & g[2])
    assert len(tr) + len(va) + len(te) == len(sample_set)


def test_cli_entry_writes_artifact_report_and_plot(sample_set, tmp_path):
    from cogenesis.calibration.train_fusion import main

    cache = tmp_path / "cal.npz"
    sample_set.save(cache)
    assert main(["--data", "unused.json", "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 0
    rep = json.loads((tmp_path / "out" / "fusion-v1-report.json").read_text())
    assert {"local_only", "cloud_only", "mean", "max", "learned"} <= set(rep["heldout"])
    assert (tmp_path / "out" / "fusion-v1.npz").is_file()


@pytest.mark.slow
def test_learned_fusion_on_shared_dev_data(shared_data, edge_bundle, edge_model, tmp_path):
    """Same check on the authors' real dev data (first 24 records x 24 tokens, cached)."""
    from cogenesis.calibration.train_fusion import TrainConfig, calibrate

    from cogenesis.data.records import load_context_aware

    recs = load_context_aware(shared_data / "context_aware_dev.json")[:24]
    cs = _cached(edge_bundle, edge_model, "dev24-n24", recs, 24)
    h = calibrate(cs, tmp_path, TrainConfig(), log=lambda *_: None)["heldout"]
    assert h["learned"]["nll"] < max(h["local_only"]["nll"], h["cloud_only"]["nll"])
