"""False positives of raw-word verbatim runs (stop words counted) on the authors' dev split (numbers for guard.py).

The guard's span rule counts content words only, so a copied sentence made mostly of stop words ("they're a
reflection of me, a game": 8 words, 1 content word) passes it, while an independent detector that counts every
word (cogenesis.eval.leakcheck, 8-word passages) flags it. For n raw words, each user's private texts (profile facts
and writing history) are matched against the reference replies and instructions of every OTHER user (unrelated
pairs: any hit is a false positive) and against the user's own reference replies (how often a reply really
quotes its own context). Usage: python scripts/verbatim_run_fp.py [path/to/context_aware_dev.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

from cogenesis.cloud_bridge.guard import raw_words

from cogenesis.data.records import load_context_aware

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cogenesis" / "context_aware_dev.json"


def grams(text: str, n: int) -> set[tuple[str, ...]]:
    w = [t for t, _, _ in raw_words(text)]
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def private_texts(r) -> list[str]:
    ctx = r.private_context()
    return [v for v in ctx.profile.values() if v] + [s.title for s in ctx.history] + [s.text for s in ctx.history]


def measure(records, n: int) -> dict:
    users = {}
    for r in records:
        users.setdefault(r.user_id, set()).update(*(grams(t, n) for t in private_texts(r)))
    outgoing = {r.user_id: [] for r in records}
    for r in records:
        outgoing[r.user_id].append(grams(r.reference, n) | grams(r.instruction, n))
    unrelated = hits = own = own_n = 0
    for u, priv in users.items():
        for v, texts in outgoing.items():
            for g in texts:
                if v == u:
                    own_n += 1
                    own += bool(priv & g)
                else:
                    unrelated += 1
                    hits += bool(priv & g)
    return {"n": n, "unrelated": f"{hits}/{unrelated} ({100 * hits / unrelated:.3f} %)", "own_replies": f"{own}/{own_n}"}


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    records = load_context_aware(path)
    print(f"{len(records)} records, {len({r.user_id for r in records})} users")
    for n in (5, 6, 7, 8, 10):
        print(measure(records, n))


if __name__ == "__main__":
    main()
