"""Token-level fusion of the on-device model (sees the private context) and the cloud model (does not).

At a step the local model gives a full next-token distribution ``pL`` (log-probabilities over its vocab), the
cloud gives only its top-k log-probabilities (an API never returns more; OpenAI's maximum is 20). The cloud's
distribution is completed over the vocab by spreading its missing mass ``1 - sum(top-k)`` evenly over the other
tokens (the *floor*), so ``pC`` is a proper distribution and every rule below is one too:

* ``local`` / ``cloud``: one model alone.
* ``mean``: ``0.5 pL + 0.5 pC``.      ``weight``: ``w pL + (1 - w) pC`` for a fixed ``w``.
* ``max``: ``max(pL, pC)`` renormalized.
* ``learned``: ``w pL + (1 - w) pC`` with ``w = FusionNet(features)`` per step.

The learned net (unlike the paper's Linear(2*vocab -> 512), 156M weights) sees only a few dozen sparse
features of the two top-k lists (:func:`step_features`): log-probs of each list's top slots under both models
(cloud missing -> floor), ranks, entropies, the cloud's missing mass, agreement, and the step index; it is a
tiny MLP stored as ``.npz`` + JSON metadata and evaluated in numpy on the device.

:class:`Schedule` (P, K, T) says on which steps to fuse: the first P, then T out of every K+T (local-only on
the other K).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

RULES = ("learned", "mean", "max", "weight", "local", "cloud")
DEFAULT_K = 20  # cloud top-k (OpenAI's top_logprobs maximum)
SLOTS = 8  # top slots of each list the learned net looks at
MIN_TAIL = 1e-4  # cloud missing mass never counts as less than this (top-k log-probs are rounded by servers)
LP_CLIP = -20.0
FEATURE_VERSION = 1
FORMAT = "cogenesis-fusion"
FORMAT_VERSION = 1
DEFAULT_ARTIFACT = "assets/fusion/fusion-v1"

CloudTopK = Mapping[int, float]


# ---------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """Fuse on the first ``P`` steps, then on ``T`` steps out of every ``K + T`` (the first ``K`` of each
    cycle are local-only). ``Schedule()`` = (0, 0, 1) fuses every step; ``(P, 0, 0)`` only the first P."""

    P: int = 0
    K: int = 0
    T: int = 1

    def __post_init__(self) -> None:
        if min(self.P, self.K, self.T) < 0:
            raise ValueError(f"schedule P, K, T must be >= 0, got {(self.P, self.K, self.T)}")

    @classmethod
    def parse(cls, s: Schedule | tuple | list | str | None) -> Schedule:
        """From a Schedule, a (P, K, T) tuple, or "P,K,T"; None -> fuse every step."""
        if s is None:
            return cls()
        if isinstance(s, Schedule):
            return s
        if isinstance(s, str):
            s = [int(x) for x in s.replace(" ", "").split(",") if x]
        if len(s) != 3:
            raise ValueError(f"schedule needs three numbers P,K,T, got {s!r}")
        return cls(*(int(x) for x in s))

    def fuse(self, step: int) -> bool:
        if step < self.P:
            return True
        cycle = self.K + self.T
        return cycle > 0 and (step - self.P) % cycle >= self.K

    def run_length(self, step: int, limit: int) -> int:
        """How many consecutive steps from ``step`` are fused (at most ``limit``)."""
        n = 0
        while n < limit and self.fuse(step + n):
            n += 1
        return n


# ---------------------------------------------------------------- the cloud's top-k, completed


def cloud_arrays(cloud: CloudTopK, vocab: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(ids, logprobs) sorted by logprob desc, and the floor log-prob of every other token.

    Entries outside the vocab or not finite are dropped; log-probs are clipped to <= 0.
    """
    items = [(int(t), float(v)) for t, v in cloud.items() if 0 <= int(t) < vocab and math.isfinite(float(v))]
    items.sort(key=lambda x: -x[1])
    ids = np.array([t for t, _ in items], dtype=np.int64)
    lp = np.minimum(np.array([v for _, v in items], dtype=np.float64), 0.0)
    tail = max(1.0 - float(np.exp(lp).sum()), MIN_TAIL)
    floor = math.log(tail / max(vocab - len(ids), 1))
    return ids, lp, floor


def cloud_full(cloud: CloudTopK, vocab: int) -> np.ndarray:
    """The cloud's top-k completed to a full-vocab probability vector (floor elsewhere; sums to ~1)."""
    ids, lp, floor = cloud_arrays(cloud, vocab)
    p = np.full(vocab, math.exp(floor))
    p[ids] = np.exp(lp)
    return p / p.sum()


# ---------------------------------------------------------------- sparse features


@dataclass
class StepView:
    """The sparse view one fusion step has of both models (same shape at calibration and decoding time).

    ``lt_*``: the local top-``SLOTS`` tokens; ``ct_*``: the cloud top-``SLOTS`` (padded: ``ct_present`` 0).
    """

    lt_lp: np.ndarray  # local log-prob of the local top slots
    lt_cloud_lp: np.ndarray  # cloud log-prob of those tokens (floor if not in the cloud's top-k)
    lt_cloud_rank: np.ndarray  # their rank in the cloud's list (k if absent)
    ct_lp: np.ndarray  # cloud log-prob of the cloud top slots (floor for padding)
    ct_local_lp: np.ndarray  # local log-prob of those tokens
    ct_local_rank: np.ndarray  # their rank under the local model
    ct_present: np.ndarray  # 1 where the cloud slot exists
    local_entropy: float
    cloud_entropy: float
    cloud_tail: float
    floor: float
    agree: float  # local top-1 == cloud top-1
    overlap: float  # |local top slots & cloud top slots| / SLOTS
    n_cloud: int
    k: int
    step: int
    vocab: int

    ARRAYS = ("lt_lp", "lt_cloud_lp", "lt_cloud_rank", "ct_lp", "ct_local_lp", "ct_local_rank", "ct_present")
    SCALARS = ("local_entropy", "cloud_entropy", "cloud_tail", "floor", "agree", "overlap", "n_cloud", "k",
               "step", "vocab")


def step_view(local_lp: np.ndarray, cloud: CloudTopK, step: int, k: int = DEFAULT_K) -> StepView:
    """Build the view from the local full-vocab log-probs and the cloud's top-k dict."""
    vocab = local_lp.shape[-1]
    cids, clp, floor = cloud_arrays(cloud, vocab)
    lt = np.argpartition(-local_lp, SLOTS)[:SLOTS]
    lt = lt[np.argsort(-local_lp[lt], kind="stable")]
    crank = {int(t): r for r, t in enumerate(cids)}
    cmap = dict(zip(cids.tolist(), clp.tolist(), strict=True))
    kk = max(k, len(cids))
    lt_cloud_lp = np.array([cmap.get(int(t), floor) for t in lt])
    lt_cloud_rank = np.array([crank.get(int(t), kk) for t in lt], dtype=np.float64)
    n = min(SLOTS, len(cids))
    ct_lp = np.full(SLOTS, floor)
    ct_lp[:n] = clp[:n]
    ct_local_lp = np.full(SLOTS, float(local_lp.min()))
    ct_local_lp[:n] = local_lp[cids[:n]]
    ct_local_rank = np.full(SLOTS, float(vocab))
    if n:
        ct_local_rank[:n] = (local_lp[None, :] > ct_local_lp[:n, None]).sum(axis=1)
    present = np.zeros(SLOTS)
    present[:n] = 1.0
    pl = np.exp(local_lp)
    tail = max(1.0 - float(np.exp(clp).sum()), MIN_TAIL)
    return StepView(
        lt_lp=local_lp[lt].astype(np.float64), lt_cloud_lp=lt_cloud_lp, lt_cloud_rank=lt_cloud_rank,
        ct_lp=ct_lp, ct_local_lp=ct_local_lp, ct_local_rank=ct_local_rank, ct_present=present,
        local_entropy=float(-(pl * local_lp).sum()),
        cloud_entropy=float(-(np.exp(clp) * clp).sum() - tail * floor),
        cloud_tail=tail, floor=floor,
        agree=float(len(cids) > 0 and int(cids[0]) == int(lt[0])),
        overlap=len(set(lt.tolist()) & set(cids[:SLOTS].tolist())) / SLOTS,
        n_cloud=len(cids), k=kk, step=step, vocab=vocab,
    )


def stack_views(views: list[StepView]) -> dict[str, np.ndarray]:
    """Views -> dict of batched arrays (the calibration cache stores these)."""
    out = {a: np.stack([getattr(v, a) for v in views]).astype(np.float32) for a in StepView.ARRAYS}
    out.update({s: np.array([getattr(v, s) for v in views], dtype=np.float32) for s in StepView.SCALARS})
    return out


def step_features(b: Mapping[str, np.ndarray]) -> np.ndarray:
    """Feature matrix [n, N_FEATURES] from batched view arrays (see :func:`stack_views`)."""

    def lp(x):
        return np.clip(np.asarray(x, np.float64), LP_CLIP, 0.0) / 10.0

    vocab = np.asarray(b["vocab"], np.float64)[:, None]
    k = np.asarray(b["k"], np.float64)[:, None]
    cols = [
        lp(b["lt_lp"]), lp(b["lt_cloud_lp"]), np.asarray(b["lt_cloud_rank"], np.float64) / k,
        lp(b["ct_lp"]), lp(b["ct_local_lp"]), np.log1p(np.asarray(b["ct_local_rank"], np.float64)) / np.log1p(vocab),
        np.asarray(b["ct_present"], np.float64),
    ]
    scal = np.stack([
        np.asarray(b["local_entropy"], np.float64) / 5.0,
        np.asarray(b["cloud_entropy"], np.float64) / 5.0,
        np.asarray(b["cloud_tail"], np.float64),
        lp(b["floor"]),
        np.asarray(b["agree"], np.float64),
        np.asarray(b["overlap"], np.float64),
        np.log1p(np.asarray(b["step"], np.float64)) / math.log(257.0),
    ], axis=1)
    return np.concatenate([*cols, scal], axis=1)


N_FEATURES = 7 * SLOTS + 7


# ---------------------------------------------------------------- the learned net (numpy inference)


@dataclass
class FusionNet:
    """A small MLP: standardized features -> tanh hidden layers -> sigmoid = the local model's weight w."""

    mean: np.ndarray
    std: np.ndarray
    weights: list[np.ndarray]  # [in, out] per layer
    biases: list[np.ndarray]
    meta: dict = field(default_factory=dict)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """w_local in (0, 1) for each row of ``feats`` ([n, F] -> [n]; [F] -> scalar array)."""
        x = (np.atleast_2d(np.asarray(feats, np.float64)) - self.mean) / self.std
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if i < len(self.weights) - 1:
                x = np.tanh(x)
        out = 1.0 / (1.0 + np.exp(-x[:, 0]))
        return out if np.ndim(feats) == 2 else out[0]

    @property
    def n_params(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True))

    def save(self, prefix: str | Path, meta: dict | None = None) -> tuple[Path, Path]:
        """Write ``prefix.npz`` (float32 weights) and ``prefix.json`` (metadata with the npz's sha256)."""
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        npz, js = prefix.with_suffix(".npz"), prefix.with_suffix(".json")
        arrays = {"mean": self.mean.astype(np.float32), "std": self.std.astype(np.float32)}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w.astype(np.float32), b.astype(np.float32)
        np.savez(npz, **arrays)
        m = {**self.meta, **(meta or {})}
        m.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "feature_version": FEATURE_VERSION,
            "n_features": int(self.mean.shape[0]), "slots": SLOTS, "layers": len(self.weights),
            "hidden": [int(w.shape[1]) for w in self.weights[:-1]], "activation": "tanh", "output": "sigmoid",
            "n_params": self.n_params, "weights_file": npz.name,
            "weights_sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
        })
        js.write_text(json.dumps(m, indent=1) + "\n", encoding="utf-8")
        self.meta = m
        return npz, js

    @classmethod
    def load(cls, prefix: str | Path | None = None) -> FusionNet:
        """Load ``prefix.json`` + its npz (default: the artifact shipped in cogenesis/assets/fusion/)."""
        if prefix is None:
            prefix = Path(str(resources.files("cogenesis").joinpath(DEFAULT_ARTIFACT)))
        prefix = Path(prefix)
        js = prefix if prefix.suffix == ".json" else prefix.with_suffix(".json")
        if not js.is_file():
            raise FileNotFoundError(f"fusion net metadata not found: {js} (train one: cogenesis calibrate fusion)")
        meta = json.loads(js.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{js}: not a {FORMAT} v{FORMAT_VERSION} file ({meta.get('format')} "
                             f"v{meta.get('format_version')})")
        if meta.get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"{js}: trained on feature version {meta.get('feature_version')}, this code computes "
                             f"version {FEATURE_VERSION}; retrain with cogenesis calibrate fusion")
        npz = js.parent / meta["weights_file"]
        digest = hashlib.sha256(npz.read_bytes()).hexdigest()
        if digest != meta.get("weights_sha256"):
            raise ValueError(f"{npz}: sha256 {digest[:12]} does not match {js.name}; the artifact is corrupt")
        with np.load(npz) as z:
            n = meta["layers"]
            return cls(z["mean"].astype(np.float64), z["std"].astype(np.float64),
                       [z[f"w{i}"].astype(np.float64) for i in range(n)],
                       [z[f"b{i}"].astype(np.float64) for i in range(n)], meta)


# ---------------------------------------------------------------- fusing one step


@dataclass
class FusedStep:
    logprobs: np.ndarray  # fused log-probs over the full local vocab
    weight: float | None  # the local model's weight (None for max / one model alone)
    cloud_used: bool


@dataclass
class Fuser:
    """Applies one fusion rule to (local log-probs, cloud top-k) at a step."""

    rule: str = "mean"
    weight: float = 0.5  # for rule="weight": the local model's weight
    net: FusionNet | None = None
    k: int = DEFAULT_K

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"fusion rule must be one of {', '.join(RULES)}; got {self.rule!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1], got {self.weight}")
        if self.rule == "learned" and self.net is None:
            self.net = FusionNet.load()

    def local_weight(self, local_lp: np.ndarray, cloud: CloudTopK, step: int) -> float | None:
        if self.rule == "learned":
            feats = step_features(stack_views([step_view(local_lp, cloud, step, self.k)]))
            return float(self.net(feats)[0])
        return {"mean": 0.5, "weight": self.weight, "local": 1.0, "cloud": 0.0}.get(self.rule)

    def __call__(self, local_lp: np.ndarray, cloud: CloudTopK | None, step: int) -> FusedStep:
        """Fuse; an empty/None cloud (no answer, or nothing mappable) gives the local distribution."""
        if not cloud or self.rule == "local":
            return FusedStep(local_lp, 1.0, False)
        vocab = local_lp.shape[-1]
        pc = cloud_full(cloud, vocab)
        if self.rule == "max":
            p = np.maximum(np.exp(local_lp), pc)
            return FusedStep(np.log(p / p.sum()), None, True)
        w = self.local_weight(local_lp, cloud, step)
        p = w * np.exp(local_lp) + (1.0 - w) * pc
        with np.errstate(divide="ignore"):
            return FusedStep(np.log(p / p.sum()), w, True)
