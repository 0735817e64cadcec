"""Fusion rules, the P/K/T schedule, sparse features, the learned net (size, versioned artifact, numpy ==
torch), and mapping string-keyed / other-tokenizer top-k onto the local vocab."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cogenesis.runtime.sampling import log_softmax

from cogenesis.cogen.fusion import (
    N_FEATURES,
    Fuser,
    FusionNet,
    Schedule,
    cloud_arrays,
    cloud_full,
    stack_views,
    step_features,
    step_view,
)
from cogenesis.cogen.logits import MappedCloud, VocabIndex, cogenerate, map_string_topk

V = 50




def _local(seed=0):
    return log_softmax(np.random.default_rng(seed).normal(size=V) * 3)


def _cloud(seed=1, k=5):
    lp = log_softmax(np.random.default_rng(seed).normal(size=V) * 3)
    top = np.argsort(-lp)[:k]
    return {int(t): float(lp[t]) for t in top}


# ---------------------------------------------------------------- schedule


def test_schedule_pkt():
    s = Schedule(2, 3, 2)
    assert [s.fuse(i) for i in range(12)] == [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert all(Schedule().fuse(i) for i in range(50))
    only_first = Schedule(4, 0, 0)
    assert [only_first.fuse(i) for i in range(7)] == [1, 1, 1, 1, 0, 0, 0]
    assert not any(Schedule(0, 1, 0).fuse(i) for i in range(5))
    assert Schedule.parse("2,3,2") == s == Schedule.parse((2, 3, 2))
    assert Schedule.parse(None) == Schedule()
    assert s.run_length(0, 10) == 2 and s.run_length(2, 10) == 0 and s.run_length(5, 1) == 1
    with pytest.raises(ValueError):
        Schedule(-1, 0, 1)
    with pytest.raises(ValueError):
        Schedule.parse("1,2")


# ---------------------------------------------------------------- rules


def test_cloud_completion_is_a_distribution():
    c = _cloud()
    p = cloud_full(c, V)
    assert abs(p.sum() - 1) < 1e-9
    ids, lp, floor = cloud_arrays({**c, 999: -1.0, 3: float("nan")}, V)
    assert 999 not in ids.tolist() and len(ids) == len(c)
    assert floor < lp.min()
    # a cloud whose top-k holds all the mass still leaves a small floor
    _, _, fl = cloud_arrays({0: 0.0}, V)
    assert math.isfinite(fl)


@pytest.mark.parametrize("rule", ["mean", "max", "weight", "local", "cloud"])
def test_rules_give_distributions(rule):
    f = Fuser(rule, weight=0.3)(_local(), _cloud(), 0)
    assert abs(np.exp(f.logprobs).sum() - 1) < 1e-9


def test_rule_semantics():
    loc, cl = _local(), _cloud()
    pc = cloud_full(cl, V)
    np.testing.assert_allclose(np.exp(Fuser("mean")(loc, cl, 0).logprobs), 0.5 * np.exp(loc) + 0.5 * pc, rtol=1e-9)
    np.testing.assert_allclose(np.exp(Fuser("weight", weight=0.8)(loc, cl, 0).logprobs),
                               0.8 * np.exp(loc) + 0.2 * pc, rtol=1e-9)
    mx = np.maximum(np.exp(loc), pc)
    np.testing.assert_allclose(np.exp(Fuser("max")(loc, cl, 0).logprobs), mx / mx.sum(), rtol=1e-9)
    np.testing.assert_allclose(Fuser("weight", weight=1.0)(loc, cl, 0).logprobs, loc, atol=1e-12)
    # no cloud answer (or nothing mappable): the local model alone, reported as not fused
    f = Fuser("mean")(loc, {}, 3)
    assert not f.cloud_used and f.weight == 1.0 and np.array_equal(f.logprobs, loc)
    with pytest.raises(ValueError):
        Fuser("median")
    with pytest.raises(ValueError):
        Fuser("weight", weight=1.5)


def test_greedy_fused_choice_lies_in_the_candidate_union():
    for s in range(30):
        loc, cl = _local(s), _cloud(s + 100)
        tok = int(np.argmax(Fuser("mean")(loc, cl, 0).logprobs))
        assert tok in set(cl) | {int(np.argmax(loc))}


# ---------------------------------------------------------------- features and the learned net


def test_features_shape_and_batch_equals_single():
    views = [step_view(_local(s), _cloud(s + 7, k=3 + s % 4), s) for s in range(6)]
    x = step_features(stack_views(views))
    assert x.shape == (6, N_FEATURES) and np.isfinite(x).all()
    for i, v in enumerate(views):
        np.testing.assert_allclose(step_features(stack_views([v]))[0], x[i])
    v = step_view(_local(), {}, 0)  # no cloud: padded slots
    assert v.n_cloud == 0 and v.ct_present.sum() == 0
    assert np.isfinite(step_features(stack_views([v]))).all()


def _random_net(seed=0, hidden=(16, 8)):
    rng = np.random.default_rng(seed)
    dims = [N_FEATURES, *hidden, 1]
    return FusionNet(rng.normal(size=N_FEATURES), rng.uniform(0.5, 2, N_FEATURES),
                     [rng.normal(size=(a, b)) * 0.3 for a, b in zip(dims[:-1], dims[1:], strict=True)],
                     [rng.normal(size=b) * 0.1 for b in dims[1:]])


def test_net_save_load_roundtrip_and_checks(tmp_path):
    net = _random_net()
    npz, js = net.save(tmp_path / "f", {"note": "test"})
    back = FusionNet.load(tmp_path / "f")
    x = step_features(stack_views([step_view(_local(s), _cloud(s), s) for s in range(5)]))
    np.testing.assert_allclose(back(x), net(x), atol=1e-6)  # float32 storage
    assert back.meta["note"] == "test" and back.meta["format_version"] == 1
    w = Fuser("learned", net=back).local_weight(_local(), _cloud(), 0)
    assert 0 < w < 1
    meta = json.loads(js.read_text())
    js.write_text(json.dumps({**meta, "feature_version": 99}))
    with pytest.raises(ValueError, match="feature version"):
        FusionNet.load(tmp_path / "f")
    js.write_text(json.dumps(meta))
    npz.write_bytes(npz.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        FusionNet.load(tmp_path / "f")
    with pytest.raises(FileNotFoundError):
        FusionNet.load(tmp_path / "missing")


def test_shipped_net_is_small_and_versioned():
    from importlib import resources

    net = FusionNet.load()
    d = Path(str(resources.files("cogenesis").joinpath("assets/fusion")))
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < 1_000_000, f"fusion assets are {size} bytes"
    report = json.loads((d / "fusion-v1-report.json").read_text())
    h = report["heldout"]
    assert h["learned"]["nll"] < min(h["mean"]["nll"], h["max"]["nll"], h["local_only"]["nll"], h["cloud_only"]["nll"])
    assert net.n_params < 50_000
    assert net.meta["format"] == "cogenesis-fusion" and net.meta["feature_version"] == 1
    assert net.meta["n_features"] == N_FEATURES
    w = net(step_features(stack_views([step_view(_local(), _cloud(), 0)])))
    assert 0 < float(w[0]) < 1


def test_numpy_inference_matches_torch():
    import torch  # the calibration extra (torch==2.13.0; make test installs it)
    from cogenesis.calibration.train_fusion import _torch_mlp, to_fusion_net, torch_weight

    torch.manual_seed(0)
    mlp = _torch_mlp(N_FEATURES, (32, 32))
    x = step_features(stack_views([step_view(_local(s), _cloud(s + 3, k=2 + s % 10), s) for s in range(64)]))
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-3)
    net = to_fusion_net(mlp, mean, std)
    np.testing.assert_allclose(net(x), torch_weight(mlp, x, mean, std), atol=1e-5)


# ---------------------------------------------------------------- stock clouds: string keys, other tokenizers


def _toy_index():
    vocab = ["a", " the", " cat", " sat", "s", ".", " on"]
    by = {s: i for i, s in enumerate(vocab)}

    def encode(text: str) -> list[int]:  # greedy longest-match over the toy vocab
        out, i = [], 0
        while i < len(text):
            for j in range(len(text), i, -1):
                if text[i:j] in by:
                    out.append(by[text[i:j]])
                    i = j
                    break
            else:
                return [-1, -1]
        return out

    return VocabIndex(by, encode, len(vocab))


def test_map_string_topk_clean_and_unmapped():
    idx = _toy_index()
    m = map_string_topk({" cat": math.log(0.5), " cats": math.log(0.2), " dog": math.log(0.1), ".": math.log(0.1)},
                        idx)
    assert set(m.topk) == {2, 5}
    assert m.clean_mass == pytest.approx(0.6) and m.total_mass == pytest.approx(0.9)
    assert m.clean_fraction == pytest.approx(0.6 / 0.9)
    assert sorted(m.unmapped) == [" cats", " dog"]
    # two strings for one local token add up; a list of pairs works too
    m2 = map_string_topk([(" the", math.log(0.3)), (" the", math.log(0.1))], idx)
    assert m2.topk == {1: pytest.approx(math.log(0.4))}


class _StringCloud:
    """A stock API stand-in: answers with token strings (some not in the local vocab)."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def top_logprobs(self, prefix_text: str, k: int = 20) -> dict[str, float]:
        self.calls += 1
        return self.table(prefix_text)


def test_mapped_cloud_falls_back_to_local_where_mapping_is_poor():
    idx = _toy_index()

    def table(prefix: str) -> dict[str, float]:
        if prefix.endswith(" cat"):  # mostly unmappable candidates here
            return {" sits": math.log(0.7), " sat": math.log(0.2)}
        return {" cat": math.log(0.6), " sat": math.log(0.3)}

    class Model:
        class tokenizer:  # noqa: N801
            @staticmethod
            def decode(ids, skip_special_tokens=False):
                vocab = ["a", " the", " cat", " sat", "s", ".", " on"]
                return "".join(vocab[i] for i in ids)

    cloud = MappedCloud(_StringCloud(table), Model(), min_clean=0.8, index=idx)
    out = cloud.next_token_logprobs([1], [2], k=5)  # " the" then draft " cat"
    assert out[0] == {2: pytest.approx(math.log(0.6)), 3: pytest.approx(math.log(0.3))}
    assert out[1] == {}  # " sits" (0.7) does not map: local only at that step
    rep = cloud.report()
    assert rep["steps"] == 2 and rep["steps_fallback_local"] == 1

    class Dec:
        def __init__(self):
            self.tokens = []

        length = property(lambda self: len(self.tokens))

        def reset(self):
            self.tokens = []

        def truncate(self, n):
            self.tokens = self.tokens[:n]

        def forward(self, ids, keep=1):
            self.tokens += list(ids)
            return np.tile(np.log(np.full(len(idx.by_string), 1 / 7)) + np.arange(7) * 0.01, (len(ids), 1))

    r = cogenerate(Dec(), [1], cloud, [1], Fuser("mean"), max_new_tokens=3)
    assert [s.fused for s in r.steps][0] is True
    assert any(not s.fused for s in r.steps)


def test_real_vocab_roundtrip_maps_cleanly(edge_model):
    """The local model's own top-k, turned into token strings (what a same-tokenizer stock API returns),
    maps back to the same ids with all of its mass clean."""
    m = edge_model
    idx = VocabIndex.from_model(m)
    assert len(idx.by_string) > 40_000
    lp = log_softmax(m.logits(m.encode([{"role": "user", "content": "Write a short note to a friend."}]))[-1])
    top = np.argsort(-lp)[:20]
    strings = {m.tokenizer.decode([int(t)], skip_special_tokens=False): float(lp[t]) for t in top}
    mapped = map_string_topk(strings, idx)
    assert mapped.clean_fraction == pytest.approx(1.0)
    # a string names one token, but a few strings decode from two ids (the lowest id stands for both)
    assert {m.tokenizer.decode([t], skip_special_tokens=False) for t in mapped.topk} == set(strings)
    assert len(set(mapped.topk) & {int(t) for t in top}) >= 15
    # an alternate tokenizer's word-level candidates: multi-token words do not map and are reported
    other = {" antidisestablishmentarianism": -1.0, " the": -2.0, " Hello": -2.5}
    mo = map_string_topk(other, idx)
    assert " the" not in mo.unmapped and 0 < mo.clean_fraction < 1
