"""Linear scanning of long texts for the egress guard (`cogenesis.cloud_bridge.guard`).

A long string is cut at sentence ends (`_pieces`: no verbatim span or identifier runs across them), and each
piece is matched only when it holds enough words of the private index; `_words` gives a piece's words as
`cogenesis.cloud_bridge.spans.content_segments` sees them, in one C-level pass, for that pre-check. With the
pattern windows of `cogenesis.cloud_bridge.patterns` this keeps the scan linear in the body size: a 1 MB body
in ~0.1-0.2 s here (``bench/guard_scan.py``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

PIECE_CHARS = 4096  # long texts are scanned in pieces of about this size, cut at sentence ends

_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_WORD_CHAR = re.compile(r"\w")
_PIECE_CUT = re.compile(r"\n|(?<=[^\W\d_]{4})[.!?](?=\s)")  # a new line, or a sentence end after a 4+ letter word
# ASCII letters lower-cased, digits and "_" kept (what \w+ matches), every other byte a space
_WORD_BYTES = bytes(c if chr(c).isalnum() or c == 95 else 32 for c in range(128)).lower() + bytes(range(128, 256))


@lru_cache(maxsize=4096)
def _word_piece(ch: str) -> str | None:
    """A non-ASCII character as `content_segments` folds it: NFKC + casefold when a word character, else a
    space; None when its NFKC form holds a non-word character ("⑴" -> "(1)", Arabic ligatures with a space):
    then no pre-check is made."""
    if not _WORD_CHAR.match(ch):
        return " "
    folded = unicodedata.normalize("NFKC", ch).casefold()
    return folded if all(_WORD_CHAR.match(c) for c in folded) else None


def _words(piece: str) -> list[str] | None:
    """The casefolded ``\\w+`` words of a text, as `content_segments` sees them: each distinct non-ASCII
    character replaced once (C-level str.replace), then one bytes.translate for ASCII. None: no pre-check."""
    if not piece.isascii():
        if not unicodedata.is_normalized("NFKC", piece):
            return None  # NFKC would compose across characters (Hangul jamo, accents): no per-character view
        for ch in set("".join(_NON_ASCII.findall(piece))):
            rep = _word_piece(ch)
            if rep is None:
                return None
            piece = piece.replace(ch, rep)
    return piece.encode().translate(_WORD_BYTES).decode().split()


def _pieces(text: str) -> list[tuple[int, int]]:
    """``text`` cut into pieces of about `PIECE_CHARS` at a new line or after a sentence end (a period,
    ! or ? after a word of 4+ letters, so "Dr. Zelphine" stays whole): n-gram runs break there anyway."""
    out, a, n = [], 0, len(text)
    while n - a > PIECE_CHARS:
        m = _PIECE_CUT.search(text, a + PIECE_CHARS // 2, a + 2 * PIECE_CHARS)
        if m is None:
            break
        out.append((a, m.end()))
        a = m.end()
    out.append((a, n))
    return out

