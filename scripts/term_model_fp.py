"""False positives and recall of the private-term model on the authors' dev split (numbers for terms.py).

For each record, the term model of its user's context is matched against (a) the task instructions of every
OTHER user's records (unrelated pairs: any hit is a false positive), (b) the user's own instruction, (c) the
reference reply of the record: how far into it (in words) the first term appears, which is where a "stop"
prefix policy would end cloud help. Usage: python scripts/term_model_fp.py [path/to/context_aware_dev.json]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from cogenesis.cloud_bridge.terms import ZIPF_PROPER, ZIPF_PROPER_RUN, ZIPF_RARE, PrivateTerms, normalize

from cogenesis.data.records import load_context_aware

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cogenesis" / "context_aware_dev.json"


def measure(records, zipf_rare: float, zipf_proper: float, zipf_proper_run: float) -> dict:
    models = {}
    for r in records:
        if r.user_id not in models:
            models[r.user_id] = PrivateTerms.from_context(r.private_context(), zipf_rare=zipf_rare,
                                                          zipf_proper=zipf_proper, zipf_proper_run=zipf_proper_run)
    unrelated = hits_unrelated = own_hit = reply_hit = 0
    first_words, sizes = [], []
    for r in records:
        tm = models[r.user_id]
        sizes.append(len(tm))
        own_hit += bool(tm.find(r.instruction))
        for other in records:
            if other.user_id != r.user_id:
                unrelated += 1
                hits_unrelated += bool(tm.find(other.instruction))
        hits = tm.find(r.reference)
        if hits:
            reply_hit += 1
            first_words.append(normalize(r.reference)[: hits[0].start].count(" "))
    n = len(records)
    return {"zipf_rare": zipf_rare, "zipf_proper": zipf_proper, "zipf_proper_run": zipf_proper_run,
            "terms_median": statistics.median(sizes),
            "unrelated": f"{hits_unrelated}/{unrelated} ({100 * hits_unrelated / unrelated:.2f} %)",
            "own": f"{own_hit}/{n}", "replies_with_term": f"{reply_hit}/{n}",
            "first_term_word_median": statistics.median(first_words) if first_words else None}


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    records = load_context_aware(path)
    print(f"{len(records)} records, {len({r.user_id for r in records})} users")
    for zr, zp, zpr in [(ZIPF_RARE, 0.0, 0.0), (2.5, 4.0, 4.0), (ZIPF_RARE, 4.0, 4.0),
                        (ZIPF_RARE, ZIPF_PROPER, ZIPF_PROPER_RUN), (ZIPF_RARE, 4.5, 4.5), (3.5, 4.5, 4.0)]:
        print(measure(records, zr, zp, zpr))


if __name__ == "__main__":
    main()
