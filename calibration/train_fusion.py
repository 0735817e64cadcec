"""Train the fusion net on a calibration set (torch, CPU, seconds) and export it for numpy inference.

Objective (the paper's): cross-entropy of the reference next token under ``w pL + (1 - w) pC`` where
``w = net(features)``. Users are split into train / validation (early stopping) / held-out test; the report
compares the held-out loss and perplexity of learned fusion with local-only, cloud-only, mean, max and the
best fixed weight, and plots the learned weight against the decoding step.

    cogenesis calibrate fusion --data context_aware_dev.json --out artifacts/fusion
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogenesis.cogen.fusion import FEATURE_VERSION, N_FEATURES, FusionNet

from .fusion_data import CalibrationSet


@dataclass
class TrainConfig:
    hidden: tuple[int, ...] = (32, 32)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 3000
    eval_every: int = 10
    patience: int = 20  # evaluations without improvement
    seed: int = 0


def mix_nll(w: np.ndarray, lp_local: np.ndarray, lp_cloud: np.ndarray) -> np.ndarray:
    """-log(w pL(y) + (1 - w) pC(y)) per position."""
    w = np.clip(np.asarray(w, np.float64), 1e-12, 1 - 1e-12)
    return -np.logaddexp(np.log(w) + lp_local, np.log1p(-w) + lp_cloud)


def _torch_mlp(n_in: int, hidden: tuple[int, ...]):
    import torch

    layers, d = [], n_in
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.Tanh()]
        d = h
    layers.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*layers)


def to_fusion_net(mlp, mean: np.ndarray, std: np.ndarray, meta: dict | None = None) -> FusionNet:
    """Copy a trained torch MLP (Linear/Tanh stack) into a numpy FusionNet."""
    import torch

    lins = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    return FusionNet(mean.astype(np.float64), std.astype(np.float64),
                     [m.weight.detach().double().numpy().T.copy() for m in lins],
                     [m.bias.detach().double().numpy().copy() for m in lins], dict(meta or {}))


def torch_weight(mlp, feats: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The torch model's w for raw features (what numpy inference must reproduce)."""
    import torch

    with torch.no_grad():
        x = torch.tensor((feats - mean) / std, dtype=torch.float32)
        return torch.sigmoid(mlp(x)[:, 0]).double().numpy()


def train(train_set: CalibrationSet, val_set: CalibrationSet, cfg: TrainConfig | None = None,
          log=print) -> tuple[FusionNet, dict, object]:
    """Fit the MLP with full-batch Adam, early stopping on validation loss. Returns (net, history, torch mlp)."""
    import torch

    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 3k-parameter MLP: threads only add overhead
    xtr, xva = train_set.features(), val_set.features()
    mean = xtr.mean(axis=0)
    std = np.maximum(xtr.std(axis=0), 1e-3)

    def tensors(cs: CalibrationSet, x: np.ndarray):
        f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        return f((x - mean) / std), f(cs.arrays["lp_local"]), f(cs.arrays["lp_cloud"])

    tr, va = tensors(train_set, xtr), tensors(val_set, xva)
    mlp = _torch_mlp(xtr.shape[1], tuple(cfg.hidden))
    w0 = min(max(best_fixed_weight(train_set), 0.01), 0.99)
    with torch.no_grad():  # start at the best fixed weight: the net only has to learn when to deviate
        mlp[-1].weight.mul_(0.1)
        mlp[-1].bias.fill_(math.log(w0 / (1 - w0)))
    opt = torch.optim.Adam(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_of(x, ll, lc):
        z = mlp(x)[:, 0]
        lw, l1w = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
        return -torch.logaddexp(lw + ll, l1w + lc).mean()

    best, best_state, bad, hist = math.inf, None, 0, []
    t0 = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        mlp.train()
        opt.zero_grad()
        loss = loss_of(*tr)
        loss.backward()
        opt.step()
        if epoch % cfg.eval_every == 0:
            mlp.eval()
            with torch.no_grad():
                v = float(loss_of(*va))
            hist.append({"epoch": epoch, "train": loss.item(), "val": v})
            if v < best - 1e-5:
                best, bad = v, 0
                best_state = {k: t.clone() for k, t in mlp.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    torch.set_num_threads(threads)
    if best_state is not None:
        mlp.load_state_dict(best_state)
    mlp.eval()
    info = {"epochs": epoch, "best_val": best, "seconds": round(time.perf_counter() - t0, 2), "curve": hist}
    log(f"  trained {epoch} epochs in {info['seconds']}s, best validation loss {best:.4f}")
    net = to_fusion_net(mlp, mean, std, {"train": {k: v for k, v in info.items() if k != "curve"}})
    return net, info, mlp


def evaluate(cs: CalibrationSet, net: FusionNet | None, fixed_w: float | None = None) -> dict[str, dict]:
    """Mean NLL and perplexity of each rule on ``cs``."""
    a = cs.arrays
    ll, lc = a["lp_local"].astype(np.float64), a["lp_cloud"].astype(np.float64)
    nll = {
        "local_only": -ll,
        "cloud_only": -lc,
        "cloud_only_full_vocab (not available via an API)": -a["lp_cloud_exact"].astype(np.float64),
        "mean": mix_nll(0.5, ll, lc),
        "max": -a["lp_max"].astype(np.float64),
    }
    if fixed_w is not None:
        nll[f"fixed_weight (w_local={fixed_w:.2f}, fit on train)"] = mix_nll(fixed_w, ll, lc)
    if net is not None:
        nll["learned"] = mix_nll(net(cs.features()), ll, lc)
    return {k: {"nll": float(v.mean()), "ppl": float(math.exp(v.mean()))} for k, v in nll.items()}


def best_fixed_weight(cs: CalibrationSet) -> float:
    ll, lc = cs.arrays["lp_local"].astype(np.float64), cs.arrays["lp_cloud"].astype(np.float64)
    grid = np.linspace(0.0, 1.0, 101)
    return float(grid[int(np.argmin([mix_nll(w, ll, lc).mean() for w in grid]))])


def weight_by_step(cs: CalibrationSet, net: FusionNet) -> dict[str, list[float]]:
    w = net(cs.features())
    steps = cs.arrays["step"].astype(int)
    xs = sorted(set(steps.tolist()))
    return {
        "step": xs,
        "mean": [float(w[steps == s].mean()) for s in xs],
        "p25": [float(np.percentile(w[steps == s], 25)) for s in xs],
        "p75": [float(np.percentile(w[steps == s], 75)) for s in xs],
    }


def plot_weight(curve: dict, path: Path, fixed_w: float | None, title: str) -> Path | None:
    """PNG of the learned local weight vs decoding step (None if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.plot(curve["step"], curve["mean"], label="learned w_local (mean)")
    ax.fill_between(curve["step"], curve["p25"], curve["p75"], alpha=0.25, label="25-75 %")
    if fixed_w is not None:
        ax.axhline(fixed_w, ls="--", c="gray", label=f"best fixed w = {fixed_w:.2f}")
    ax.axhline(0.5, ls=":", c="k", lw=0.8, label="mean rule")
    ax.set_xlabel("decoding step (reference token index)")
    ax.set_ylabel("weight of the local model")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def split3(cs: CalibrationSet, seed: int = 0, test: float = 0.2, val: float = 0.15):
    """(train, validation, test) by user group."""
    rest, te = cs.split(test, seed)
    tr, va = rest.split(val / (1 - test), seed + 1)
    return tr, va, te


def calibrate(cs: CalibrationSet, out: str | Path, cfg: TrainConfig | None = None, name: str = "fusion-v1",
              log=print) -> dict:
    """Train on ``cs``, write ``out/{name}.npz|json``, ``out/{name}-report.json`` and the weight plot."""
    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr, va, te = split3(cs, cfg.seed)
    log(f"  positions: train {len(tr)}, validation {len(va)}, held-out test {len(te)}")
    net, info, mlp = train(tr, va, cfg, log=log)
    fixed = best_fixed_weight(tr)
    table = evaluate(te, net, fixed)
    curve = weight_by_step(te, net)
    xs = te.features()[:256]
    parity = float(np.abs(net(xs) - torch_weight(mlp, xs, net.mean, net.std)).max())
    meta = {
        "trained_on": cs.meta, "config": {**cfg.__dict__, "hidden": list(cfg.hidden)},
        "heldout_test": {k: round(v["nll"], 4) for k, v in table.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    npz, js = net.save(out / name, meta)
    png = plot_weight(curve, out / f"{name}-weight-by-step.png", fixed,
                      f"{cs.meta.get('local_model')} + {cs.meta.get('cloud_model')} (cloud w/o context), held-out users")
    report = {
        "artifact": {"npz": str(npz), "json": str(js), "bytes": npz.stat().st_size + js.stat().st_size,
                     "n_params": net.n_params, "feature_version": FEATURE_VERSION, "n_features": N_FEATURES},
        "data": cs.meta,
        "split": {"train": len(tr), "validation": len(va), "test": len(te),
                  "test_groups": int(len(np.unique(te.arrays["group"])))},
        "training": info,
        "best_fixed_weight": fixed,
        "heldout": table,
        "weight_by_step": curve,
        "numpy_vs_torch_max_abs_diff": parity,
        "plot": str(png) if png else None,
        "note": ("the 'cloud' is the same small model run without the private context"
                 if cs.meta.get("local_model") == cs.meta.get("cloud_model") else ""),
    }
    rp = out / f"{name}-report.json"
    rp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    report["report"] = str(rp)
    return report


def format_table(table: dict[str, dict]) -> str:
    rows = [f"  {'rule':58s} {'NLL':>7s} {'PPL':>8s}"]
    rows += [f"  {k:58s} {v['nll']:7.4f} {v['ppl']:8.2f}" for k, v in table.items()]
    return "\n".join(rows)


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``cogenesis calibrate fusion``."""
    p.add_argument("--data", required=True, help="records with references (context-aware JSON, JSONL, ...)")
    p.add_argument("--out", required=True, help="output folder for the artifact, report and plot")
    p.add_argument("--bundle", default=None, help="on-device bundle (default: artifacts/bundles/smollm2-int4)")
    p.add_argument("--cloud-bundle", default=None, help="bundle standing in for the cloud (default: --bundle)")
    p.add_argument("--n-tokens", type=int, default=64, help="reference tokens per record (default 64)")
    p.add_argument("--k", type=int, default=20, help="cloud top-k (default 20)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records")
    p.add_argument("--cache", default=None, help="calibration set .npz: reused if present, written otherwise")
    p.add_argument("--hidden", default="32,32", help="hidden layer sizes (default 32,32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="fusion-v1", help="artifact name (default fusion-v1)")


def run(a: argparse.Namespace) -> int:
    """``cogenesis calibrate fusion``: extract (or load the cache), train, report."""
    cache = Path(a.cache) if a.cache else None
    if cache is not None and cache.is_file():
        cs = CalibrationSet.load(cache)
        print(f"calibration set: {cache} ({len(cs)} positions)")
    else:
        import cogenesis.runtime as rt

        from cogenesis.data.records import load_records

        from .fusion_data import extract

        bundle = a.bundle or "artifacts/bundles/smollm2-int4"
        model = rt.load(bundle, threads=a.threads)
        cloud = rt.load(a.cloud_bundle, threads=a.threads) if a.cloud_bundle else None
        recs = load_records(a.data)[: a.limit]
        print(f"extracting {len(recs)} records x {a.n_tokens} reference tokens (local with context, cloud without)")
        cs = extract(recs, model, cloud, n_tokens=a.n_tokens, k=a.k)
        cs.meta["data"] = Path(a.data).name
        if cache is not None:
            cs.save(cache)
    cfg = TrainConfig(hidden=tuple(int(x) for x in str(a.hidden).split(",") if x), seed=a.seed)
    rep = calibrate(cs, a.out, cfg, name=a.name)
    print("held-out loss (users not seen in training):")
    print(format_table(rep["heldout"]))
    print(f"artifact: {rep['artifact']['json']} ({rep['artifact']['bytes']} bytes, {rep['artifact']['n_params']} "
          f"params); report: {rep['report']}; plot: {rep['plot']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cogenesis calibrate fusion", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
