"""Vocabulary identity: do the device and the cloud number tokens the same way?

Logit fusion sends token ids and fuses distributions indexed by token id, so a cloud with another tokenizer
(SmolLM2's 49,152 tokens vs Qwen2.5's 151,936) would read every id as a different token and the fused reply
would be garbage, silently. Two checks, both computed from the tokenizer itself:

* `vocab_fingerprint`: sha256 over every (id, token string) pair, special tokens included. Written into the
  bundle manifest (``model.vocab_fingerprint``) and served by ``cogenesis cloud serve`` in ``GET /v1/models``
  (``cogenesis.vocab_fingerprint``). Qwen2.5-Coder 0.5B and 1.5B share one (byte-identical vocabularies).
* `PROBE` / `probe_ids`: for servers that publish no fingerprint (vLLM), the ids of a fixed public probe text
  (ASCII, accents, CJK, digits, code, special characters) must equal the server's ``POST /tokenize``.
"""

from __future__ import annotations

import hashlib

PROBE = ("CoGenesis vocabulary probe: Hello, world! naïve café, Straße, 東京, 2026-12-02, x = f(y) + 1;\n"
         "\tdef main(): return [0x1F, 'ok']  # ünïcödé — “quotes” ...")


def vocab_fingerprint(tokenizer) -> str:
    """``sha256:<16 hex>`` of the tokenizer's (id, token) table (a ``tokenizers.Tokenizer``)."""
    h = hashlib.sha256()
    for token, idx in sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def probe_ids(tokenizer) -> list[int]:
    """The probe text's ids, without special tokens (what ``POST /tokenize`` returns for it)."""
    return list(tokenizer.encode(PROBE, add_special_tokens=False).ids)
