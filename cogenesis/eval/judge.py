"""LLM-as-judge, the paper's three judgments on a 1-10 scale, through any OpenAI-compatible endpoint.

CoGenesis (ACL 2024, Sec. 5) rates every answer three times with a strong model:

* ``overall``: overall quality, judged WITH the user's profile and writing history;
* ``personalization``: how well the answer fits this user (facts, voice, style of the past writings);
* ``overall_noprofile``: overall quality of the answer to the task alone, WITHOUT the profile.

The judge is evaluation tooling, not part of the product path: its prompts carry the private context (as the
paper's GPT-4 judge did), so point it at a judge you trust with the data (default: the reference server on
127.0.0.1). Answers are cached on disk by sha256(judge model + prompt), so re-runs send nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cogenesis.cloud_bridge.http import CloudError, Transport, normalize_base_url
from cogenesis.core.paths import API_KEY_ENV
from cogenesis.data.records import TaskRecord

ASPECTS = ("overall", "personalization", "overall_noprofile")
API_KEY_ENVS = ("COGENESIS_JUDGE_API_KEY", API_KEY_ENV)
DEFAULT_URL = "http://127.0.0.1:8000"

_FORMAT = (
    "Start with a brief explanation and stay as objective as possible. After the explanation, rate the response "
    "on a scale of 1 to 10, strictly in this format: \"[[rating]]\", e.g. \"Rating: [[5]]\"."
)
_CONTEXT = "[User Profile and Writing History]\n{context}\n\n"
_QA = "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

PROMPTS = {
    # the paper's three judge prompts (same sections, criteria and output format), in our words
    "overall": (
        "[Instruction]\nYou are an impartial evaluator. Judge the quality of the AI assistant's response to the user "
        "question below, above all how well it fits the user's personal profile and writing history: faithfulness "
        "to the user's own style, consistency with the profile, helpfulness, relevance, accuracy, depth, "
        "creativity and level of detail. " + _FORMAT + "\n\n" + _CONTEXT + _QA
    ),
    "personalization": (
        "[Instruction]\nYou are an impartial judge. Judge the AI assistant's response only for its PERSONALIZATION: "
        "how closely it matches the user's personal profile and writing history: the user's distinctive style, "
        "preferences and consistency with the profile, and how well it serves this user's individual needs and "
        "interests. " + _FORMAT + "\n\n" + _CONTEXT + _QA
    ),
    "overall_noprofile": (
        "[Instruction]\nYou are an impartial judge. Judge the quality of the AI assistant's response to the user "
        "question below, considering helpfulness, relevance, accuracy, depth, creativity and level of detail. "
        + _FORMAT + "\n\n" + _QA
    ),
}


def render_judge_context(record: TaskRecord, max_chars_per_text: int | None = None) -> str:
    """The profile block and every past writing (``Task: ...`` / ``Content: ...``), as the paper's judge sees them."""
    from cogenesis.data.records import render_profile_block

    parts = [render_profile_block(record.context.profile)] if record.context.profile else []
    for h in record.context.history:
        text = h.text if max_chars_per_text is None else h.text[:max_chars_per_text]
        parts.append(f"Task: {h.title}\nContent: {text}")
    parts += [f"Private note: {t}" for t in record.context.private if t.strip()]
    return "\n".join(parts)


def judge_messages(record: TaskRecord, answer: str, aspect: str,
                   max_chars_per_text: int | None = None) -> list[dict]:
    """The single user message asking for one judgment of ``answer`` to ``record`` (as the paper sends it)."""
    if aspect not in PROMPTS:
        raise ValueError(f"aspect must be one of {', '.join(ASPECTS)}; got {aspect!r}")
    ctx = render_judge_context(record, max_chars_per_text) if aspect != "overall_noprofile" else ""
    user = PROMPTS[aspect].format(context=ctx or "(none)", question=record.instruction.strip(),
                                  answer=answer.strip() or "(empty)")
    return [{"role": "user", "content": user}]


# ---- rating parsing ----------------------------------------------------------------------------------------

_NUM = r"(10(?:\.0+)?|[0-9](?:\.\d+)?)"
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
          "ten": 10}
_WORD = r"(one|two|three|four|five|six|seven|eight|nine|ten)"
_PATTERNS = [
    re.compile(r"\[\[\s*" + _NUM + r"\s*(?:/\s*10)?\s*\]\]"),  # [[7]]  [[7/10]]
    re.compile(r"\b(?:rating|score|grade|overall)\b[^0-9\n\[]{0,20}\[?\s*" + _NUM + r"(?![\d.]*\s*/\s*(?!10\b)\d)",
               re.I),  # Rating: 7   Score - 8/10   Rating: [7]
    re.compile(r"(?<![\d.])" + _NUM + r"\s*(?:/|out of)\s*10\b", re.I),  # 7/10  7 out of 10
    re.compile(r"\b(?:rating|score|grade)\b[^a-z\n]{0,5}(?:is\s+|of\s+)?" + _WORD + r"\b", re.I),  # Rating: seven
    re.compile(r"\b" + _WORD + r"\s*(?:/|out of)\s*ten\b", re.I),  # seven out of ten
]


def _valid(x: float) -> float | None:
    return x if 1.0 <= x <= 10.0 else None


def parse_rating(text: str) -> float | None:
    """A 1-10 rating from a judge's answer, or None.

    Understands ``[[7]]``, ``Rating: 7``, ``Score: 8/10``, ``7 out of 10``, JSON (``{"rating": 7}`` or
    ``{"score": "7"}``), number words (``Rating: seven``) and a bare number. The LAST explicit rating wins
    (judges explain first, rate last); ratings outside 1-10 are rejected.
    """
    if not text or not text.strip():
        return None
    s = text.strip()
    for m in re.finditer(r"\{[^{}]*\}", s):
        try:
            obj = json.loads(m.group())
        except json.JSONDecodeError:
            continue
        for key in ("rating", "score", "Rating", "Score", "grade"):
            if key in obj:
                try:
                    return _valid(float(str(obj[key]).split("/")[0]))
                except ValueError:
                    pass
    for pat in _PATTERNS:
        hits = pat.findall(s)
        if hits:
            v = hits[-1]
            return _valid(float(_WORDS.get(v.lower(), v) if isinstance(v, str) else v))
    if re.fullmatch(r"\W*" + _NUM + r"\W*", s):
        return _valid(float(re.search(_NUM, s).group(1)))
    if s.lower().strip(" .!\n") in _WORDS:
        return float(_WORDS[s.lower().strip(" .!\n")])
    return None


# ---- judge client ------------------------------------------------------------------------------------------


@dataclass
class Judgment:
    aspect: str
    rating: float | None
    raw: str
    cached: bool = False


class JudgeError(Exception):
    """The judge endpoint could not be reached or answered something unusable."""


def default_cache_dir() -> Path:
    from cogenesis.core.paths import cache_dir

    return cache_dir() / "judge"


class Judge:
    """Judge answers through an OpenAI-compatible ``/v1/chat/completions`` (ours, vLLM, a hosted API).

    ``model``: the judge model name (default: the first model the endpoint lists). ``api_key``: default from
    $COGENESIS_JUDGE_API_KEY, then $COGENESIS_CLOUD_API_KEY. Answers are cached under ``cache_dir``.
    """

    def __init__(self, base_url: str = DEFAULT_URL, model: str | None = None, api_key: str | None = None,
                 cache_dir: str | Path | None = None, max_tokens: int = 256, temperature: float = 0.0,
                 timeout: float = 300.0, retries: int = 2):
        self.base_url = normalize_base_url(base_url, "judge url")
        self.api_key = api_key or next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)
        self._model = model
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_tokens, self.temperature, self.timeout, self.retries = max_tokens, temperature, timeout, retries
        self.requests_sent = 0
        self.cache_hits = 0
        self.transport = Transport(self.base_url, self.api_key, timeout=timeout, retries=retries,
                                   on_attempt=self._count)

    def _count(self, n_bytes: int) -> None:
        self.requests_sent += 1

    @property
    def model(self) -> str:
        if self._model is None:
            try:
                self._model = str(self.transport.send_json("GET", "/v1/models")["data"][0]["id"])
            except (CloudError, KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"cannot list the judge's models at {self.base_url}/v1/models ({e}); "
                                 "start the judge server or pass its model name") from e
        return self._model

    def cache_key(self, messages: list[dict]) -> str:
        prompt = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(f"{self.model}\n{prompt}".encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, messages: list[dict]) -> tuple[str, bool]:
        """The judge's answer to ``messages`` and whether it came from the cache."""
        key = self.cache_key(messages)
        path = self._cache_path(key)
        if path.is_file():
            try:
                self.cache_hits += 1
                return str(json.loads(path.read_text(encoding="utf-8"))["text"]), True
            except (ValueError, KeyError):
                self.cache_hits -= 1  # a broken cache file is re-asked and overwritten
        text = self._post(messages)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".judge-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"model": self.model, "messages": messages, "text": text, "max_tokens": self.max_tokens,
                       "temperature": self.temperature}, f, ensure_ascii=False)
        os.replace(tmp, path)
        return text, False

    def _post(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        try:
            content = self.transport.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
        except (CloudError, KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"judge request to {self.base_url}/v1/chat/completions failed ({e})") from e
        return content or ""

    def judge(self, record: TaskRecord, answer: str, aspect: str) -> Judgment:
        """One judgment (1-10, None when the judge's answer holds no rating)."""
        text, cached = self.complete(judge_messages(record, answer, aspect))
        return Judgment(aspect, parse_rating(text), text, cached)

    def judge_all(self, record: TaskRecord, answer: str, aspects: tuple[str, ...] = ASPECTS) -> dict[str, Judgment]:
        return {a: self.judge(record, answer, a) for a in aspects}

    def close(self) -> None:
        self.transport.close()
