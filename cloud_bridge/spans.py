"""Verbatim spans: the n-gram indexes of private texts that the egress guard (`cogenesis.cloud_bridge.guard`)
matches outbound text against, and the word tokenization they share.

* **content-word spans**: runs of >= ``ngram`` (default 4) consecutive *content words* shared with a private text
  (profile facts, writing history, user-marked texts). Content words are lower-cased ``\\w+`` tokens minus English
  stop words and generic instruction vocabulary ("write", "blog", "post", "guide"...), so "at the local shelter"
  and "at local shelter" match alike and instruction boilerplate never does.
  Why 4 content words (about 5-8 raw words): measured on the 150 records of the authors' ``context_aware_dev``,
  each task instruction scanned against the 149 *other* users' contexts (22,350 unrelated pairs: any span is a
  false positive) and against its own user's context (instructions that really quote the user's facts):

  ===================  ==============================  ===================================
  rule                 unrelated pairs with a finding  own instructions with a finding
  ===================  ==============================  ===================================
  2 content words      2361 (10.6 %)                   136/150
  3 content words       128 (0.57 %)                    77/150 (many are mere topic words)
  **4**                 **5 (0.022 %)**                 **34/150**
  5 content words         2 (0.009 %)                   12/150
  6 content words         1 (0.004 %)                    1/150
  private-term model    577 (2.59 %)                    49/150 (see `cogenesis.cloud_bridge.terms`)
  ===================  ==============================  ===================================

  (The last row is the private-term model alone, per user rather than per record: 22,272 pairs of different
  users.) (Plain 5-word n-grams without the stop/task-word filter: 127 unrelated pairs, 0.57 %.) 4 is the knee: 25x
  fewer false positives than 3, ~3x the recall of 5. The authors' generic system prompt flags 0/150 contexts
  from 3 up. The instruction *sanitizer* (non-blocking, shows its changes) uses 3 on profile facts.
* **raw-word runs** (`_RunIndex`): a second index catches what content words cannot: **8 consecutive words of any
  kind** ("they're a reflection of me, a game": one content word, sent by a logits reply in the 1.5B-cloud
  experiment and flagged by the independent detector, which counts every word). On the same split
  (``scripts/verbatim_run_fp.py``; each user's facts and history against every other user's instructions and
  reference replies, 16,500 pairs): 5 words 315 (1.9 %), 6: 58, 7: 11, **8: 3 (0.018 %)**, 10: 0; 2 of the 3 at 8
  are task boilerplate with no content word ("develop a series of social media posts for"), which the index
  leaves out. Within one ";"-separated item of a profile fact field the run is **6 words** ("a mix of classic rock
  and", sent by a logits reply before the span had 4 content words): 3 of 16,500 unrelated pairs at 6 (5: 9, 7: 2);
  23 of 150 reference replies quote their own facts that way.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

DEFAULT_NGRAM = 4  # content words, see the module docstring for the measurement
RAW_NGRAM = 8  # every word counts, stop words too (verbatim runs); see the module docstring
ITEM_RAW_NGRAM = 6  # the same within one ";"-separated item of a profile fact field
MIN_FACT_ITEM = 3  # a ";"-separated fact shorter than the n-gram still matches whole if it has >= 3 content words
MAX_GAP_WORDS = 3  # an n-gram may skip at most this many stop/task words between two content words

STOPWORDS = frozenset(
    """a an the and or nor but if then else of to in on at by for with from as into onto about over under after
    before between through during without within upon up down out off again further once is are was were be been
    being am this that these those it its i me my mine we us our ours you your yours he him his she her hers they
    them their theirs what which who whom whose how when where why not no so than too very can will just do does
    did doing have has had having should would could may might must shall also via per s t d ll m re ve all any
    both each few more most other some such only own same here there""".split()
)
# Words of the task instructions themselves: shared by every user, so they never make a span private.
TASK_WORDS = frozenset(
    """write compose craft create develop draft generate produce prepare design outline pen compile make put
    together blog post posts piece pieces essay article articles guide review reflective reflection series social
    media detailed comprehensive step proposal script letter email newsletter report summary speech story short
    poem op ed opinion editorial press release discuss discussing highlight highlights highlighting include
    including focus focusing latest new recent tips""".split()
)
_NON_CONTENT = STOPWORDS | TASK_WORDS

_WORD = re.compile(r"\w+")
_BREAK = re.compile(r"[.!?;:()\[\]{}\"\n\u201c\u201d]|(?<!\w)['\u2018\u2019]|['\u2018\u2019](?!\w)")


def content_tokens(text: str) -> list[tuple[str, int, int]]:
    """(normalized word, start, end) for each content word of `text` (stop words and task words dropped)."""
    return [t for seg in content_segments(text) for t in seg]


def content_segments(text: str) -> list[list[tuple[str, int, int]]]:
    """Content words grouped into runs that an n-gram may span: a run breaks at sentence or clause punctuation
    (. ! ? ; : brackets, quotes, new lines) and where more than `MAX_GAP_WORDS` non-content words intervene."""
    segs: list[list[tuple[str, int, int]]] = [[]]
    gap, last_end = 0, 0
    for m in _WORD.finditer(text):
        w = unicodedata.normalize("NFKC", m.group()).casefold()
        if segs[-1] and _BREAK.search(text[max(last_end - 1, 0) : m.start() + 1]):
            segs.append([])
            gap = 0
        last_end = m.end()
        if w in _NON_CONTENT:
            gap += 1
            continue
        if gap > MAX_GAP_WORDS and segs[-1]:
            segs.append([])
        gap = 0
        segs[-1].append((w, m.start(), m.end()))
    return [seg for seg in segs if seg]


def _fold_word(w: str) -> str:
    """NFKC + casefold, accents dropped ("Café" -> "cafe"), so a copy that loses its accents still matches."""
    w = unicodedata.normalize("NFKC", w).casefold()
    if w.isascii():
        return w
    return "".join(c for c in unicodedata.normalize("NFKD", w) if not unicodedata.combining(c))


def raw_words(text: str) -> list[tuple[str, int, int]]:
    """(folded word, start, end) for every ``\\w+`` word of `text`, stop words included."""
    return [(_fold_word(m.group()), m.start(), m.end()) for m in _WORD.finditer(text)]


class _RunIndex:
    """Runs of `n` consecutive words (stop words counted) of private texts -> source label. It catches the
    copied sentence that is mostly stop words, which the content-word index cannot see."""

    def __init__(self, n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}

    def add(self, text: str, source: str) -> None:
        """Runs without a content word ("develop a series of social media posts for": task boilerplate that
        histories share with instructions) are not indexed."""
        ws = [w for w, _, _ in raw_words(text)]
        for i in range(len(ws) - self.n + 1):
            g = tuple(ws[i : i + self.n])
            if not _NON_CONTENT.issuperset(g):
                self.grams.setdefault(g, source)

    def may_match(self, words: list[str]) -> bool:
        n, grams = self.n, self.grams
        words = [w if w.isascii() else _fold_word(w) for w in words]
        return bool(grams) and any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1))

    def find(self, text: str, toks: list[tuple[str, int, int]] | None = None) -> list[tuple[int, int, str]]:
        """Matches with overlapping ones merged: (start, end, source) character spans. ``toks``: `raw_words`
        of ``text`` when the caller has them already (one tokenization for several indexes)."""
        if not self.grams:
            return []
        toks = raw_words(text) if toks is None else toks
        runs: list[list] = []
        for i in range(len(toks) - self.n + 1):
            src = self.grams.get(tuple(w for w, _, _ in toks[i : i + self.n]))
            if src is None:
                continue
            if runs and i <= runs[-1][1]:
                runs[-1][1] = i + self.n - 1
            else:
                runs.append([i, i + self.n - 1, src])
        return [(toks[a][1], toks[b][2], src) for a, b, src in runs]


class _SpanIndex:
    """Content-word n-grams of private texts -> source label."""

    def __init__(self, n: int):
        if n < 2:
            raise ValueError(f"ngram must be >= 2 content words, got {n}")
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.lengths = {n}
        self._pairs: set[tuple[str, str]] | None = None

    def add(self, text: str, source: str, items: bool = False) -> None:
        self._pairs = None
        for seg in content_segments(text):
            ws = [w for w, _, _ in seg]
            for i in range(len(ws) - self.n + 1):
                self.grams.setdefault(tuple(ws[i : i + self.n]), source)
        if items:  # short facts ("Has a cat named Whiskers") match as a whole
            for item in re.split(r"[;\n]", text):
                iw = tuple(w for w, _, _ in content_tokens(item))
                if MIN_FACT_ITEM <= len(iw) < self.n:
                    self.grams.setdefault(iw, source)
                    self.lengths.add(len(iw))

    def may_match(self, words: list[str]) -> bool:
        """False when no n-gram can match a text with these (casefolded) words: no chain of as many content
        words, each next to the other in some private n-gram, as the shortest n-gram has (a conservative,
        linear pre-check: segment breaks and gaps are ignored)."""
        if not self.grams:
            return False
        if self._pairs is None:
            self._pairs = {(g[i], g[i + 1]) for g in self.grams for i in range(len(g) - 1)}
        need, run = min(self.lengths) - 1, 0
        content = [w for w in words if w not in _NON_CONTENT]
        pairs = self._pairs
        for pair in zip(content, content[1:], strict=False):
            if pair in pairs:
                run += 1
                if run >= need:
                    return True
            else:
                run = 0
        return False

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Private n-gram matches, overlapping ones merged: (start, end, source) character spans."""
        if not self.grams:
            return []
        out: list[tuple[int, int, str]] = []
        for seg in content_segments(text):
            ws = [w for w, _, _ in seg]
            hits = []  # (first token, last token, source)
            for n in sorted(self.lengths):
                for i in range(len(ws) - n + 1):
                    src = self.grams.get(tuple(ws[i : i + n]))
                    if src is not None:
                        hits.append((i, i + n - 1, src))
            hits.sort()
            runs: list[list] = []
            for a, b, src in hits:
                if runs and a <= runs[-1][1]:  # shares a word with the previous match
                    runs[-1][1] = max(runs[-1][1], b)
                    runs[-1][2].append(src)
                else:
                    runs.append([a, b, [src]])
            for a, b, srcs in runs:
                out.append((seg[a][1], seg[b][2], Counter(srcs).most_common(1)[0][0]))
        return out
