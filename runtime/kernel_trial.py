"""First-load trial where our kernels' path on this CPU has no measurement of ours (the NEON path today).

`kernels.dispatch` is a table measured on the CPUs we have (bench/results/cpu_dispatch.md: AVX-512, AVX2 + FMA).
The NEON path is checked for correctness only (under qemu, `make arm-check`), so on ARM the runtime times both
graphs of the bundle the first time it loads them and keeps the faster: a path slower than the portable graph is
never kept. The verdict is cached per (CPU, library, bundle, threads) in $COGENESIS_CACHE/kernels/trials.json,
so later loads cost nothing. The trial: a 64-token prefill, then 16 decode steps, best of 2 alternating rounds
(~2 s for SmolLM2-135M on a laptop core).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from cogenesis.core.files import atomic_write_text
from cogenesis.core.paths import cache_dir

from .model import Decoder, KVSpec, make_session

PROMPT, STEPS, ROUNDS = 64, 16, 2


def trials_path() -> Path:
    return cache_dir() / "kernels" / "trials.json"


def decode_rate(session, kv: KVSpec, shared: bool) -> float:
    """Decode tokens/s after a PROMPT-token prefill (token ids 100.., valid in any vocabulary we export)."""
    dec = Decoder(session, kv, shared_kv=shared)
    logits = dec.forward(list(range(100, 100 + PROMPT)))[-1]
    t = time.perf_counter()
    for _ in range(STEPS):
        logits = dec.forward([int(logits.argmax())])[-1]
    return STEPS / (time.perf_counter() - t)


def _key(lib: str, bundle_id: str, threads: int | None) -> str:
    from . import kernels

    cpu = " ".join(sorted(kernels.cpu_features())) + platform.machine()
    return hashlib.sha256(f"{cpu}|{lib}|{bundle_id}|{threads or os.cpu_count()}".encode()).hexdigest()[:24]


def kernels_faster(portable: Path, kernel: Path, lib: str, threads: int | None, kv: KVSpec, shared: bool,
                   bundle_id: str) -> tuple[bool, str]:
    """Whether the kernel graph decodes faster than the portable graph here, and the measurement, in words."""
    key = _key(lib, bundle_id, threads)
    path = trials_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        sessions = {"kernels": make_session(str(kernel), threads, custom_ops=lib),
                    "portable": make_session(str(portable), threads)}
        rates = {name: 0.0 for name in sessions}
        for _ in range(ROUNDS):  # alternating rounds: a burst of other load hits both
            for name, s in sessions.items():
                rates[name] = max(rates[name], decode_rate(s, kv, shared))
        known[key] = {**rates, "at": time.strftime("%Y-%m-%d %H:%M")}
        atomic_write_text(path, json.dumps(known, indent=1))
    r = known[key]
    faster = r["kernels"] > r["portable"]
    return faster, (f"first-load trial on this CPU: kernels {r['kernels']:.1f} vs portable {r['portable']:.1f} "
                    f"tok/s decode ({path})")
