"""Block fusion: greedy output == per-step fusion (toy models and the real model with LocalCloud), speculative
sampling keeps per-step fusion's distribution (chi-square on a toy vocabulary), fallbacks (cloud dies, guard)."""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from cogenesis.cloud_bridge.guard import EgressGuard
from cogenesis.runtime.sampling import Sampler, SamplingConfig, log_softmax

from cogenesis.cogen.fusion import Fuser, FusionNet, Schedule
from cogenesis.cogen.logits import LocalCloud, choose_k, cogenerate, write_logits
from cogenesis.core.context import PrivateContext

# ---------------------------------------------------------------- toy models




def toy_logits(seed: int, vocab: int, scale: float = 1.5):
    """A deterministic toy LM: logits depend on the last two tokens and the length."""

    @functools.cache
    def table(key: tuple) -> np.ndarray:
        return np.random.default_rng(abs(hash(key)) % (2**32)).normal(size=vocab) * scale

    def fn(tokens: list[int]) -> np.ndarray:
        return table((seed, len(tokens), *tokens[-2:]))

    return fn


class ToyDecoder:
    def __init__(self, fn):
        self.fn = fn
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, ids, keep: int = 1) -> np.ndarray:
        rows = []
        for t in ids:
            self.tokens.append(int(t))
            rows.append(self.fn(self.tokens))
        a = np.stack(rows)
        return a[-keep:] if keep else a

    def truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]


class ToyCloud:
    def __init__(self, fn, fail_after: int | None = None):
        self.fn, self.fail_after, self.requests = fn, fail_after, 0

    def next_token_logprobs(self, prefix_ids, draft_ids=(), k=20):
        if self.fail_after is not None and self.requests >= self.fail_after:
            raise ConnectionError("toy cloud is down")
        self.requests += 1
        seq, out = list(prefix_ids), []
        for i in range(len(draft_ids) + 1):
            lp = log_softmax(self.fn(seq + list(draft_ids[:i])))
            top = np.argsort(-lp)[:k]
            out.append({int(t): float(lp[t]) for t in top})
        return out


LOCAL_PROMPT, CLOUD_PROMPT = [1, 2, 3], [4, 2]


def run_toy(seed: int, vocab: int, block: bool, fuser: Fuser, *, max_new: int, sampling=None, draft_k=3,
            adapt=False, stop_ids=(), cloud_k=3, schedule=None, fail_after=None, guard_scan=None):
    dec = ToyDecoder(toy_logits(seed, vocab))
    cloud = ToyCloud(toy_logits(seed + 1000, vocab), fail_after)
    return cogenerate(dec, LOCAL_PROMPT, cloud, CLOUD_PROMPT, fuser, block=block, max_new_tokens=max_new,
                      sampling=sampling, stop_ids=stop_ids, k=cloud_k, draft_k=draft_k, draft_k_max=6,
                      adapt_k=adapt, schedule=schedule, guard_scan=guard_scan)


# ---------------------------------------------------------------- greedy equivalence


@pytest.mark.parametrize("rule", ["mean", "max", "weight", "cloud"])
def test_toy_block_greedy_equals_per_step(rule):
    fuser = Fuser(rule, weight=0.3)
    for seed in range(25):
        ref = run_toy(seed, 7, False, fuser, max_new=14, stop_ids=(0,))
        for k, adapt in [(1, False), (2, False), (4, False), (3, True)]:
            got = run_toy(seed, 7, True, fuser, max_new=14, stop_ids=(0,), draft_k=k, adapt=adapt)
            assert got.tokens == ref.tokens, (rule, seed, k, adapt)
            assert got.stop_reason == ref.stop_reason
            assert [s.fused for s in got.steps] == [s.fused for s in ref.steps]


def test_toy_block_greedy_with_schedule_and_fewer_round_trips():
    fuser = Fuser("mean")
    sched = Schedule(3, 2, 2)
    for seed in range(10):
        ref = run_toy(seed, 7, False, fuser, max_new=20, schedule=sched)
        got = run_toy(seed, 7, True, fuser, max_new=20, schedule=sched, draft_k=4)
        assert got.tokens == ref.tokens
        assert [s.fused for s in ref.steps] == [sched.fuse(i) for i in range(len(ref.steps))]
        assert ref.round_trips == sum(sched.fuse(i) for i in range(len(ref.tokens)))
        assert got.round_trips <= ref.round_trips


# ---------------------------------------------------------------- sampling: same distribution as per-step


def exact_per_step_distribution(seed, vocab, fuser, cfg, length, cloud_k):
    """P(sequence) under per-step fusion sampling, by enumeration."""
    lf, cf = toy_logits(seed, vocab), toy_logits(seed + 1000, vocab)
    sampler = Sampler(cfg)
    out = {}
    for seq in itertools.product(range(vocab), repeat=length):
        p = 1.0
        for i in range(length):
            pre = list(seq[:i])
            llp = log_softmax(lf(LOCAL_PROMPT + pre))
            clp = log_softmax(cf(CLOUD_PROMPT + pre))
            top = {int(t): float(clp[t]) for t in np.argsort(-clp)[:cloud_k]}
            p *= sampler.probs(fuser(llp, top, i).logprobs)[seq[i]]
        out[seq] = p
    return out


def chi2_sf(x: float, df: int) -> float:
    """Chi-square survival function (Wilson-Hilferty normal approximation; fine for df >= 3)."""
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_p(counts: Counter, probs: dict, n: int) -> float:
    exp = np.array([probs[s] * n for s in probs])
    obs = np.array([counts.get(s, 0) for s in probs], dtype=float)
    big = exp >= 5  # pool the rare outcomes into one cell
    e = np.append(exp[big], exp[~big].sum())
    o = np.append(obs[big], obs[~big].sum())
    stat = float(((o - e) ** 2 / np.maximum(e, 1e-12)).sum())
    return chi2_sf(stat, len(e) - 1)


@pytest.mark.parametrize("rule,cfg", [("mean", SamplingConfig(temperature=1.0)),
                                      ("max", SamplingConfig(temperature=0.7, top_p=0.95))])
def test_toy_block_sampling_matches_per_step_distribution(rule, cfg):
    vocab, length, n, seed = 3, 3, 3000, 3
    fuser = Fuser(rule)
    exact = exact_per_step_distribution(seed, vocab, fuser, cfg, length, 2)
    assert abs(sum(exact.values()) - 1) < 1e-9

    def sample(block: bool, fz: Fuser, n: int = n) -> Counter:
        c = Counter()
        for i in range(n):
            s = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p, seed=10_000 * block + i)
            r = run_toy(seed, vocab, block, fz, max_new=length, sampling=s, draft_k=2, cloud_k=2)
            c[tuple(r.tokens)] += 1
        return c

    blk = sample(True, fuser)
    tv = 0.5 * sum(abs(blk.get(s, 0) / n - p) for s, p in exact.items())
    assert chi_square_p(blk, exact, n) > 1e-3, f"block sampling differs from per-step fusion (TV {tv:.3f})"
    assert tv < 0.05
    # the test has power: sampling from the local model alone is rejected against the fused distribution
    loc = sample(False, Fuser("local"), 1000)
    assert chi_square_p(loc, exact, 1000) < 1e-6


def test_block_sampling_rejects_some_drafts():
    r = run_toy(5, 6, True, Fuser("mean"), max_new=40, sampling=SamplingConfig(temperature=1.0, seed=1),
                draft_k=4)
    assert 0 < r.drafts_accepted < r.drafts_proposed
    assert r.round_trips < len(r.tokens)


# ---------------------------------------------------------------- fallbacks and adaptive k


@pytest.mark.parametrize("block", [False, True])
def test_toy_cloud_dies_mid_generation_finishes_locally(block):
    fuser = Fuser("mean")
    r = run_toy(2, 7, block, fuser, max_new=24, fail_after=2, draft_k=3)
    assert len(r.tokens) == 24 and r.stop_reason == "max_tokens"
    assert r.round_trips == 2 and r.fallback["reason"] == "cloud_error"
    assert "ConnectionError" in r.fallback["error"]
    assert not any(s.fused for s in r.steps[r.fallback["step"]:])
    # the tokens after the failure are the local model's own greedy continuation
    local = run_toy(2, 7, False, Fuser("local"), max_new=24)
    ref = run_toy(2, 7, False, fuser, max_new=24)
    cut = r.fallback["step"]
    assert r.tokens[:cut] == ref.tokens[:cut]
    if r.tokens[:cut] == local.tokens[:cut]:
        assert r.tokens == local.tokens


def test_guard_scan_stops_consulting_the_cloud():
    seen = []

    def scan(ids):
        seen.append(list(ids))
        return len(ids) >= 5

    for block in (False, True):
        seen.clear()
        r = run_toy(4, 7, block, Fuser("mean"), max_new=16, guard_scan=scan, draft_k=2)
        assert r.fallback["reason"] == "guard" and len(r.tokens) == 16
        assert all(len(s) < 5 for s in seen[:-1])  # nothing with >= 5 generated tokens was sent
        assert not any(s.fused for s in r.steps[r.fallback["step"]:])


def test_choose_k_adapts():
    assert choose_k(0.95, 0.05, 0.2, 1, 16) > choose_k(0.5, 0.05, 0.2, 1, 16)
    assert choose_k(0.9, 0.05, 0.5, 1, 16) >= choose_k(0.9, 0.05, 0.05, 1, 16)
    assert choose_k(0.0, 0.05, 0.05, 1, 16) == 1
    assert choose_k(1.0, 0.05, 0.05, 1, 16) == 16


# ---------------------------------------------------------------- the real model with LocalCloud


def _prompts(n: int = 20):
    from cogenesis.data.prompts import with_context, without_context
    from cogenesis.data.records import load_sample

    recs = load_sample()
    out = []
    for i in range(n):
        r = recs[i % len(recs)]
        hist = 0 if i < len(recs) else 1
        out.append((with_context(r, max_tokens=90, max_history=hist, max_chars_per_sample=200),
                    without_context(r)))
    return out


@pytest.mark.slow
def test_real_block_greedy_equals_per_step_over_20_prompts(edge_model):
    m = edge_model
    rules = [Fuser("mean"), Fuser("max"), Fuser("weight", weight=0.7)]
    try:
        rules.append(Fuser("learned", net=FusionNet.load()))
    except FileNotFoundError:
        pass
    configs = [dict(draft_k=1, adapt_k=False), dict(draft_k=3, adapt_k=False), dict(draft_k=4, adapt_k=True)]
    acc = prop = 0
    for i, (loc_msgs, cloud_msgs) in enumerate(_prompts(20)):
        cloud = LocalCloud(m)
        lp, cp = m.encode(loc_msgs), m.encode(cloud_msgs)
        fz = rules[i % len(rules)]
        kw = dict(max_new_tokens=16, stop_ids=m.stop_ids)
        ref = cogenerate(m.decoder, lp, cloud, cp, fz, **kw)
        for cfg in (configs[i % 3],):  # each config on 6-7 prompts (a second config per prompt doubles the time)
            got = cogenerate(m.decoder, lp, cloud, cp, fz, block=True, draft_k_max=8, **kw, **cfg)
            assert got.tokens == ref.tokens, (i, fz.rule, cfg, m.decode(ref.tokens), m.decode(got.tokens))
            assert got.round_trips <= ref.round_trips
            acc, prop = acc + got.drafts_accepted, prop + got.drafts_proposed
    assert 0 < acc <= prop


@pytest.mark.slow
def test_real_cloud_dies_and_privacy_guard(edge_model):
    m = edge_model
    loc_msgs, cloud_msgs = _prompts(1)[0]
    instruction = cloud_msgs[-1]["content"]
    # the cloud dies after 3 requests: the reply is finished locally and the fallback is reported
    for block in (False, True):
        r = write_logits(instruction, None, m, LocalCloud(m, fail_after=3), block=block, rule="mean",
                         max_new_tokens=20, local_messages=loc_msgs, draft_k=2, adapt_k=False)
        assert r.round_trips == 3 and r.fallback["reason"] == "cloud_error"
        assert len(r.tokens) == 20 or r.stop_reason == "stop_token"
        assert r.text
    # treat what the model writes as private: the guard must stop fusion before any of it leaves
    plain = write_logits(instruction, None, m, LocalCloud(m), rule="mean", max_new_tokens=24, local_messages=loc_msgs)
    ctx = PrivateContext(private_texts=[plain.text])
    for block in (False, True):
        cloud = LocalCloud(m, guard=EgressGuard(ctx, mode="strict", detokenize=m.decode))
        g = EgressGuard(ctx, mode="audit")
        r = write_logits(instruction, ctx, m, cloud, block=block, rule="mean", max_new_tokens=24, guard=g,
                         local_messages=loc_msgs)
        assert r.fallback is not None and r.fallback["reason"] == "guard"
        for body in cloud.received:
            assert not g.scan_text(m.decode(body["prefix_ids"] + body["draft_ids"]))
        cut = r.fallback["step"]
        # same fusion until the policy first keeps a step local (a private word being spelled out: held, or
        # the stop), then local only from the stop on
        first_local = next((s.step for s in r.steps if not s.fused), cut)
        assert first_local <= cut and r.tokens[:first_local] == plain.tokens[:first_local]
        assert not any(s.fused for s in r.steps[cut:])
        # without the pre-scan, the strict guard inside the client refuses the request instead
        cloud2 = LocalCloud(m, guard=EgressGuard(ctx, mode="strict", detokenize=m.decode))
        r2 = write_logits(instruction, ctx, m, cloud2, block=block, rule="mean", max_new_tokens=24,
                          local_messages=loc_msgs)
        assert r2.fallback["reason"] == "privacy_violation"


# ---------------------------------------------------------------- end to end: the reference server over HTTP

KEY = "fusion-test-key"
CANARY_PROFILE = {
    "Name": "Zelphine Quarrington",
    "Location": "Vexmouth, Lorindale",
    "Occupation": "Harbor pilot, badge CNRY7Q113X",
    "Privacy_info": "violet heron sings over harbor lanterns",
}
CANARIES = ["Zelphine", "Quarrington", "Vexmouth", "Lorindale", "CNRY7Q113X", "violet heron", "harbor lanterns",
            "Zelph", "Quarr", "Vexmo", "Lorin"]


@pytest.fixture(scope="module")
def cloud_server(edge_model, tmp_path_factory):
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    cap = tmp_path_factory.mktemp("fusion-cloud") / "capture.jsonl"
    app = create_app(edge_model, api_key=KEY, capture=str(cap))
    with serve_in_thread(app) as srv:
        yield srv


def _client(srv, m, **kw):
    from cogenesis.cloud_bridge.client import CloudClient

    return CloudClient(srv.url, api_key=KEY, detokenize=m.decode, **kw)


def _received_texts(srv, m, since: int = 0) -> list[str]:
    """Every captured request body, raw and with token-id lists decoded."""
    from cogenesis.cloud_bridge.server import read_capture

    out = []
    for rec in read_capture(srv.state.settings.capture)[since:]:
        raw = rec["body"].decode("utf-8", "replace")
        out.append(raw)
        if rec["body"][:1] == b"{":
            body = json.loads(rec["body"])
            for v in body.values():
                if isinstance(v, list) and v and all(isinstance(t, int) for t in v):
                    out.append(m.tokenizer.decode(v, skip_special_tokens=False))
    return out


@pytest.mark.slow
def test_server_matches_local_cloud(cloud_server, edge_model):
    """CloudClient.next_token_logprobs over HTTP gives the same fused greedy reply as LocalCloud."""
    m = edge_model
    loc_msgs, cloud_msgs = _prompts(2)[1]
    lp, cp = m.encode(loc_msgs), m.encode(cloud_msgs)
    ref = cogenerate(m.decoder, lp, LocalCloud(m, exact=False), cp, Fuser("mean"), max_new_tokens=12,
                     stop_ids=m.stop_ids)
    for block in (False, True):
        got = cogenerate(m.decoder, lp, _client(cloud_server, m), cp, Fuser("mean"), block=block,
                         max_new_tokens=12, stop_ids=m.stop_ids)
        assert got.fallback is None
        same = sum(a == b for a, b in zip(got.tokens, ref.tokens, strict=False))
        assert same >= 10, (m.decode(ref.tokens), m.decode(got.tokens))  # float32 vs float64 near-ties aside


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["logits", "logits-block"])
def test_canary_never_reaches_the_server(cloud_server, edge_model, mode):
    from cogenesis.cogen.write import write
    from cogenesis.core.context import PrivateContext

    m = edge_model
    ctx = PrivateContext(profile=dict(CANARY_PROFILE))
    from cogenesis.cloud_bridge.server import read_capture

    since = len(read_capture(cloud_server.state.settings.capture))
    res = write("Write a short message introducing myself to my new neighbours, with my name and where I work.",
                ctx, m, mode=mode, client=_client(cloud_server, m), max_new_tokens=40)
    assert res.text and res.extra["fusion"]["round_trips"] > 0 and res.cloud_requests > 0
    texts = _received_texts(cloud_server, m, since)
    assert len(texts) >= res.extra["fusion"]["round_trips"]
    for t in texts:
        for c in CANARIES:
            assert c.casefold() not in t.casefold(), f"canary {c!r} reached the server"
    if any(c in res.text for c in ("Zelphine", "Vexmouth")):  # the local model used the context...
        assert res.fallback and res.extra["fusion"]["fallback"]["reason"] in ("guard", "privacy_violation")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["logits", "logits-block"])
def test_server_dies_mid_generation_finishes_locally(edge_model, mode):
    from cogenesis.cloud_bridge.server import create_app, serve_in_thread

    from cogenesis.cogen.write import write

    m = edge_model
    srv = serve_in_thread(create_app(m, api_key=KEY))
    client = _client(srv, m, retries=0, timeout=(1.0, 20.0))
    real = client.next_token_logprobs
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            srv.stop()  # the cloud goes away for good
        return real(*a, **kw)

    client.next_token_logprobs = dying
    try:
        res = write("Write a short note thanking a friend for dinner.", None, m, mode=mode, client=client,
                    max_new_tokens=24)
    finally:
        srv.stop()
    fus = res.extra["fusion"]
    assert fus["round_trips"] == 2 and fus["fallback"]["reason"] == "cloud_error"
    assert "Cloud" in fus["fallback"]["error"] and res.fallback
    assert fus["tokens"] == 24 or fus["stop_reason"] == "stop_token"
    assert res.text and res.mode_used == mode


@pytest.mark.parametrize("block", [False, True])
def test_cloud_mask_keeps_placeholder_tokens_to_the_device(block):
    """Tokens in ``cloud_mask`` (the sanitizer's placeholders) are never proposed by the cloud: with the
    cloud-only rule they vanish from the output; with the learned net the run still works."""
    from collections import Counter

    def run(rule, mask=()):
        dec = ToyDecoder(toy_logits(7, 9))
        cloud = ToyCloud(toy_logits(1007, 9))
        return cogenerate(dec, LOCAL_PROMPT, cloud, CLOUD_PROMPT, Fuser(rule), block=block, max_new_tokens=40,
                          k=4, draft_k=3, adapt_k=False, cloud_mask=mask)

    plain = run("cloud")
    common = [t for t, _ in Counter(plain.tokens).most_common(2)]
    masked = run("cloud", common)
    assert not set(common) & set(masked.tokens) and len(masked.tokens) == 40
    assert masked.round_trips > 0 and masked.fused_steps > 0
    assert len(run("learned", common).tokens) == 40
