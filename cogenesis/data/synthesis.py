"""Synthetic context-aware data: the CoGenesis paper's four-step pipeline over any OpenAI-compatible server.

Steps (each checkpointed to ``<out_dir>/<step>.jsonl``, one complete JSON line per finished unit):

1. ``groups``   user-group portraits (one request per group, spread over domain hints);
2. ``profiles`` detailed users per group: explicit private facts, smart-device traces, writing style;
3. ``tasks``    writing tasks fitted to each user (past-writing tasks + target tasks + extra tasks);
4. ``texts``    personalized texts in the user's voice for the past-writing and target tasks.

Each request sends the step's JSON schema as ``response_format`` (``json_schema``, derived from the pydantic
models: see :func:`step_schema`), so a server with structured output (vLLM, OpenAI, ``cogenesis cloud serve``)
decodes valid JSON even from a small model; ``structured_output=False`` turns it off for servers without it.
Every response is still parsed tolerantly (code fences, prose around the JSON, trailing commas), validated with
pydantic and deduplicated by a normalized-text key; a bad response is retried (the validation error is fed
back), and after ``max_attempts`` the unit becomes a row in ``failures.jsonl``. A crashed or aborted run
resumes where it stopped: finished keys are skipped, a torn last line is repaired, failed units are retried.
The export is the authors' ``context_aware`` JSON (atomic write), readable by ``load_context_aware``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from tqdm.auto import tqdm

from cogenesis.cloud_bridge.http import CloudConnectionError, CloudError, Transport, normalize_base_url
from cogenesis.data.records import HistoryItem, RecordContext, TaskRecord, save_context_aware

log = logging.getLogger(__name__)

API_KEY_ENVS = ("COGENESIS_SYNTH_API_KEY", "OPENAI_API_KEY")
STEPS = ("groups", "profiles", "tasks", "texts")
EXPORT_NAME = "context_aware_synth.json"

DOMAIN_HINTS = (
    "healthcare workers",
    "teachers and school staff",
    "small business owners",
    "skilled trades",
    "software and tech workers",
    "university students",
    "retirees",
    "artists and freelancers",
    "finance and office professionals",
    "parents and caregivers",
    "hospitality and service workers",
    "farmers and rural residents",
    "public servants",
    "athletes and fitness coaches",
    "scientists and researchers",
    "immigrants building a new life",
)
"""Rotated into the group prompts so that small models do not return the same portrait every time."""


class SynthError(RuntimeError):
    """Base error of the synthesis pipeline."""


class GeneratorError(SynthError):
    """The chat endpoint failed (transport error, HTTP error) after the allowed retries."""


class SynthesisAborted(SynthError):
    """Too many units in a row failed on the endpoint; the run stopped (resume by running again)."""


# ---------------------------------------------------------------- text helpers


def normalize_key(text: str) -> str:
    """Dedup key: accents folded, lowercase, punctuation dropped, whitespace collapsed."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", t).split())


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_json(text: str) -> Any:
    """The first JSON object/array in a model reply (whole reply, fenced block, or embedded in prose).

    Tolerates ``<think>`` blocks, code fences, raw newlines inside strings and trailing commas.
    Raises ValueError when nothing decodes.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    text = _THINK.sub("", text).strip()
    dec = json.JSONDecoder(strict=False)
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for cand in candidates:
        for variant in (cand, _TRAILING_COMMA.sub(r"\1", cand)):
            try:
                return dec.decode(variant)
            except json.JSONDecodeError:
                pass
    for variant in (text, _TRAILING_COMMA.sub(r"\1", text)):
        tries = 0
        for m in re.finditer(r"[{\[]", variant):
            tries += 1
            if tries > 50:
                break
            try:
                obj, _ = dec.raw_decode(variant, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, (dict, list)) and obj:
                return obj
    raise ValueError("no JSON object found in reply")


# ---------------------------------------------------------------- schemas


def _norm_keys(d: Any) -> Any:
    if isinstance(d, dict):
        return {re.sub(r"[\s\-]+", "_", str(k).strip()).lower(): v for k, v in d.items()}
    return d


def _listify(v: Any) -> Any:
    if isinstance(v, str):
        parts = [p.strip(" -•\t") for p in re.split(r"[;\n]", v)]
        return [p for p in parts if p]
    if isinstance(v, list):
        return [str(x).strip() for x in v if str(x).strip()]
    return v


StrList = Annotated[list[str], BeforeValidator(_listify)]
"""A list of short strings; a ';'- or newline-separated string is split into one."""


def _short(n: int) -> dict[str, Any]:
    """A generation bound for the JSON schema sent as ``response_format`` (validation does not enforce it)."""
    return {"maxLength": n}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, d: Any) -> Any:
        if isinstance(d, list) and len(d) == 1 and isinstance(d[0], dict):
            d = d[0]
        return _norm_keys(d)


class GroupPortrait(_Schema):
    """Step 1: a group of users who share a life situation."""

    name: str = Field(min_length=3, max_length=120)
    description: str = Field(min_length=20)
    occupations: StrList = Field(min_length=1)
    age_range: str = Field("", json_schema_extra=_short(40))
    typical_concerns: StrList = Field(default_factory=list)

    @field_validator("age_range", mode="before")
    @classmethod
    def _age_range(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v


class UserProfile(_Schema):
    """Step 2: one fictional user with explicit private facts and device-usage traces."""

    name: str = Field(min_length=3, max_length=80)
    age: str = Field(json_schema_extra=_short(20))
    occupation: str = Field(min_length=2, json_schema_extra=_short(120))
    location: str = Field(min_length=2, json_schema_extra=_short(120))
    personal_traits: StrList = Field(min_length=2)
    writing_style: StrList = Field(min_length=2)
    privacy_info: StrList = Field(min_length=3)
    smart_device_usage: StrList = Field(min_length=2)
    ai_assistant_usage: StrList = Field(default_factory=list)

    @field_validator("age", mode="before")
    @classmethod
    def _age(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    def to_profile(self) -> dict[str, str]:
        """The authors' profile fields (lists joined with '; ')."""
        j = "; ".join
        return {
            "Age": self.age,
            "Name": self.name,
            "Occupation": self.occupation,
            "Location": self.location,
            "Personal_traits": j(self.personal_traits),
            "Writing_style": j(self.writing_style),
            "Privacy_info": j(self.privacy_info),
            "Smart_device_usage": j(self.smart_device_usage),
            "Ai_assistant_usage": j(self.ai_assistant_usage),
        }


class WritingTask(_Schema):
    title: str = Field(min_length=5, max_length=200)
    description: str = Field(min_length=10)

    def instruction(self) -> str:
        return f"{self.title.strip().rstrip(':.')}: {self.description.strip()}"


class TaskList(_Schema):
    """Step 3: writing tasks fitted to one user."""

    tasks: list[WritingTask] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, d: Any) -> Any:
        if isinstance(d, list):
            return {"tasks": d}
        if isinstance(d, dict) and "tasks" not in d:
            lists = [v for v in d.values() if isinstance(v, list)]
            if len(lists) == 1:
                return {"tasks": lists[0]}
        return d


class WrittenText(_Schema):
    """Step 4: one personalized text."""

    text: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, d: Any) -> Any:
        if isinstance(d, dict) and "text" not in d:
            for k in ("content", "response", "answer", "body"):
                if isinstance(d.get(k), str):
                    return {"text": d[k]}
        return d


# ---------------------------------------------------------------- response_format (structured output)

SCHEMA_MAX_ITEMS = 7
"""Longest list a constrained decoder may write (the prompts ask for 3-7 items)."""
SCHEMA_MAX_CHARS = 600
"""Longest free-text field (a description of 2-3 sentences), where the pydantic field sets none."""
SCHEMA_ITEM_CHARS = 160
"""Longest list item (a short phrase)."""


def step_schema(
    model: type[BaseModel],
    max_items: int = SCHEMA_MAX_ITEMS,
    max_chars: int = SCHEMA_MAX_CHARS,
    item_chars: int = SCHEMA_ITEM_CHARS,
    **props: dict[str, Any],
) -> dict[str, Any]:
    """The JSON schema a server should decode for ``model``: ``model.model_json_schema()``, closed.

    Closed means no extra keys (``additionalProperties: false``) and bounded: strings and lists without a
    maximum get one (``max_chars``, ``item_chars`` for list items, ``max_items``), so a constrained decoder
    always finishes; short strings need a letter or digit (``pattern``, unanchored, as the placeholder check).
    ``props`` update single properties first, e.g. ``text={"maxLength": 800}``. Validation stays the pydantic
    model's (more tolerant than this schema).
    """
    schema = model.model_json_schema()

    def close(node: Any, item: bool = False) -> None:
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        elif kind == "string":
            node.setdefault("maxLength", item_chars if item else max_chars)
            if node.get("minLength", 0) < 10:  # with a long minLength the pattern makes the grammar too large
                node.setdefault("pattern", "[A-Za-z0-9]")
        elif kind == "array":
            node.setdefault("maxItems", max(max_items, node.get("minItems", 0)))
            close(node.get("items"), item=True)
        for sub in [*node.get("properties", {}).values(), *node.get("$defs", {}).values()]:
            close(sub)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                close(sub, item)

    for name, extra in props.items():
        schema["properties"][name].update(extra)
    close(schema)
    return schema


def schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI/vLLM ``response_format`` for a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


# ---------------------------------------------------------------- HTTP client


@dataclass
class ChatClient:
    """Minimal OpenAI-compatible chat client: ``POST {base_url}/v1/chat/completions``.

    Transport errors, timeouts, 429 and 5xx are retried ``max_retries`` times with exponential backoff;
    then :class:`GeneratorError`. Other 4xx raise at once. Thread-safe (one session per thread).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 3
    backoff: float = 1.0
    temperature: float | None = 0.9
    max_tokens: int | None = 1500
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    requests_made: int = 0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)

    @property
    def url(self) -> str:
        return normalize_base_url(self.base_url) + "/v1/chat/completions"

    @property
    def transport(self) -> Transport:
        """The shared HTTP transport (one session per thread), made on first use."""
        if getattr(self._local, "transport", None) is None:
            self._local.transport = Transport(self.base_url, self.api_key, timeout=self.timeout,
                                              retries=self.max_retries, backoff=self.backoff, retry_connect=True)
        return self._local.transport

    def _count(self, tries: list[int], n_bytes: int) -> None:
        tries[0] += 1
        with self._lock:
            self.requests_made += 1

    def chat(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None = None,
             attempt: int = 1) -> str:
        """Send one chat request; return the assistant message content.

        ``response_format`` (this request's) takes precedence over the client's. A retry (``attempt`` > 1) with a
        fixed ``seed`` in extra_body uses seed + attempt - 1: the same seed tends to repeat the same mistake.
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages, **self.extra_body}
        if attempt > 1 and isinstance(body.get("seed"), int):
            body["seed"] += attempt - 1
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        fmt = response_format if response_format is not None else self.response_format
        if fmt is not None:
            body["response_format"] = fmt
        tries = [0]
        try:
            data = self.transport.post("/v1/chat/completions", body, on_attempt=lambda n: self._count(tries, n))
        except CloudError as e:
            if e.retryable or isinstance(e, CloudConnectionError):
                raise GeneratorError(f"{self.url}: failed after {tries[0]} tries ({e})") from e
            hint = ""
            if fmt is not None and "response_format" in str(e):
                hint = " (a server without structured output: run with structured_output=False, or --no-structured-output)"
            raise GeneratorError(f"{self.url}: {e}{hint}") from e
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(f"{self.url}: not an OpenAI chat completion: {str(data)[:300]}") from None
        return content if isinstance(content, str) else ""


# ---------------------------------------------------------------- checkpoint store


class JsonlStore:
    """Append-only JSONL of finished units keyed by ``row['key']``, deduplicated by ``row['dedup']``.

    Each row is appended with one ``os.write`` of a complete line (O_APPEND) and fsynced; on open a torn
    last line (crash mid-write) is cut off and unparsable lines are skipped with a warning.
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}
        self.dedup: dict[str, str] = {}  # dedup key -> unit key (stored or claimed)
        self.bad_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair_and_load()
        else:
            self.path.touch()

    def _repair_and_load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning(
                "%s: dropping a torn last line (%d bytes) from an interrupted run",
                self.path,
                len(data) - keep,
            )
            with self.path.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.bad_lines += 1
                log.warning("%s: line %d is not a checkpoint row; ignored", self.path, n)
                continue
            if key not in self.rows:
                self.rows[key] = row
                if row.get("dedup"):
                    self.dedup.setdefault(row["dedup"], key)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def claim(self, dedup: str, key: str) -> bool:
        """Reserve ``dedup`` for unit ``key`` (atomic); False when another unit already has it."""
        with self._lock:
            owner = self.dedup.setdefault(dedup, key)
            return owner == key

    def values(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.rows.values())

    def add(self, row: dict[str, Any]) -> bool:
        """Append ``row`` unless its key is stored or its dedup key belongs to another unit."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        key, dedup = row["key"], row.get("dedup")
        with self._lock:
            if key in self.rows or (dedup and self.dedup.setdefault(dedup, key) != key):
                return False
            _append(self.path, line, self.fsync)
            self.rows[key] = row
            return True


def _append(path: Path, line: bytes, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class FailureLog:
    """``failures.jsonl``: one row per unit that failed in a run (append-only, never dropped)."""

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, step: str, key: str, kind: str, error: str, attempts: int, raw: str = "") -> None:
        row = {
            "step": step,
            "key": key,
            "kind": kind,
            "error": error[:1000],
            "attempts": attempts,
            "raw": raw[:2000],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with self._lock:
            _append(self.path, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"), self.fsync)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


# ---------------------------------------------------------------- prompts (ask for JSON)

_JSON_SYSTEM = (
    "You generate realistic synthetic data for research on privacy-preserving writing assistants. "
    "Everything you write is fictional. Reply with one JSON object only, no commentary."
)

# How each prompt names its JSON fields: a JSON template (servers without structured output need the exact
# keys), or, when the server enforces the schema, the same hints in words: a small model copies a template's
# placeholder values verbatim far more often than it copies prose.
_FIELDS = {
    "groups": (
        "JSON fields:\n"
        '{"name": "short group name", "description": "2-3 sentences on their life and writing needs", '
        '"occupations": ["3-5 typical jobs"], "age_range": "e.g. 30-45", '
        '"typical_concerns": ["3-5 things they worry about or keep private"]}',
        "Reply with a JSON object with the fields name (a short name for the group), description (2-3 "
        "sentences on their life and writing needs), occupations (3-5 typical jobs), age_range (like 30-45) "
        "and typical_concerns (3-5 things they worry about or keep private).",
    ),
    "profiles": (
        "JSON fields (lists have 3-7 short items):\n"
        '{"name": "...", "age": 0, "occupation": "...", "location": "City, Region", '
        '"personal_traits": [...], "writing_style": ["how they write: tone, sentence length, habits"], '
        '"privacy_info": ["explicit private facts: health, money, family, secrets, routines"], '
        '"smart_device_usage": ["traces on their devices: apps, alerts, searches, purchases, messages"], '
        '"ai_assistant_usage": ["what they ask an AI assistant to do"]}',
        "Reply with a JSON object with the fields name (their full name), age, occupation, location (their "
        "city and region), personal_traits, writing_style (their tone, sentence length and habits when they "
        "write), privacy_info (explicit private facts about their health, money, family, secrets and "
        "routines), smart_device_usage (traces on their devices: apps, alerts, searches, purchases and "
        "messages) and ai_assistant_usage (what they ask an AI assistant to do). Lists have 3-7 short items.",
    ),
    "tasks": (
        'JSON: {"tasks": [{"title": "Write ...", "description": "one sentence on what the text must do"}]}',
        "Reply with a JSON object whose field tasks lists them, each with a title and a description (one "
        "sentence on what the text must do).",
    ),
    "texts": ('JSON: {"text": "..."}', "Reply with a JSON object whose field text holds the text."),
}


def _fields(step: str, structured: bool) -> str:
    return _FIELDS[step][1 if structured else 0]


def _group_prompt(hint: str, avoid: list[str], structured: bool = False) -> list[dict[str, str]]:
    avoid_txt = f"\nAlready covered (choose a different group): {'; '.join(avoid[:30])}" if avoid else ""
    user = (
        f"Describe one group of people who use an AI writing assistant, drawn from: {hint}.{avoid_txt}\n"
        f"Be specific about their life situation. {_fields('groups', structured)}"
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]


def _profile_prompt(
    group: dict[str, Any], index: int, total: int, avoid: list[str], structured: bool = False
) -> list[dict[str, str]]:
    avoid_txt = (
        f"\nOther users already in this group (make this one clearly different): {'; '.join(avoid[:30])}"
        if avoid
        else ""
    )
    user = (
        f"User group: {group['name']} - {group['description']}\n"
        f"Typical jobs: {', '.join(group.get('occupations', []))}\n"
        f"Create user {index + 1} of {total} from this group: one fictional person with a full name, a city, "
        f"and concrete private details.{avoid_txt}\n{_fields('profiles', structured)}"
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]


def _render_profile(profile: dict[str, str]) -> str:
    return "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in profile.items() if v)


def _tasks_prompt(profile: dict[str, str], n: int, structured: bool = False) -> list[dict[str, str]]:
    user = (
        f"User profile:\n{_render_profile(profile)}\n\n"
        f"Write {n} different writing tasks this user would really ask an assistant for: emails, posts, "
        "letters, plans, guides, speeches... Fit them to the user's job, life and private situation; some "
        "should only make full sense with their private details. Each title is an imperative sentence.\n"
        + _fields("tasks", structured)
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]


def _text_prompt(
    profile: dict[str, str], task: dict[str, str], min_words: int, max_words: int, structured: bool = False
) -> list[dict[str, str]]:
    user = (
        f"User profile:\n{_render_profile(profile)}\n\n"
        f"Task: {task['title']}: {task['description']}\n\n"
        f"Write the text this user would write for the task, as the user, in first person, {min_words}-"
        f"{max_words} words, strictly in their writing style. Use a few of their personal and private details "
        "naturally. No title line.\n" + _fields("texts", structured)
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------- unit runner


@dataclass
class _Unit:
    key: str
    messages: Callable[[], list[dict[str, str]]]  # built at submission, so avoid-lists see finished rows
    schema: type[BaseModel]
    make_row: Callable[[Any], dict[str, Any]]  # validated object -> row (with 'dedup'); ValueError = reject
    check: Callable[[Any], None] | None = None  # extra validation; raise ValueError to retry
    text_fallback: bool = False
    response_format: dict[str, Any] | None = None  # this step's structured-output request (set by synthesize)


class _UnitFailed(Exception):
    def __init__(self, kind: str, error: str, attempts: int, raw: str) -> None:
        super().__init__(error)
        self.kind, self.error, self.attempts, self.raw = kind, error, attempts, raw


def _validate(unit: _Unit, raw: str) -> Any:
    try:
        data = extract_json(raw)
    except ValueError:
        if unit.text_fallback and "{" not in raw and raw.strip():
            data = {"text": _THINK.sub("", raw).strip()}
        else:
            raise
    obj = unit.schema.model_validate(data)
    _reject_placeholders(obj.model_dump())
    if unit.check is not None:
        unit.check(obj)
    return obj


_PLACEHOLDERS = {
    normalize_key(x)
    for x in (
        "...",
        "short group name",
        "2-3 sentences on their life and writing needs",
        "3-5 typical jobs",
        "City, Region",
        "how they write: tone, sentence length, habits",
        "explicit private facts: health, money, family, secrets, routines",
        "traces on their devices: apps, alerts, searches, purchases, messages",
        "what they ask an AI assistant to do",
        "Write ...",
        "one sentence on what the text must do",
    )
}


def _reject_placeholders(value: Any, where: str = "") -> None:
    """Raise ValueError when a field is empty filler or was copied from the prompt's JSON template."""
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_placeholders(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_placeholders(v, f"{where}[{i}]")
    elif isinstance(value, str) and value.strip() and normalize_key(value) in _PLACEHOLDERS | {""}:
        raise ValueError(f"{where}: {value!r} is the template placeholder; fill in real content")


def _run_unit(client: ChatClient, unit: _Unit, store: JsonlStore, max_attempts: int) -> dict[str, Any]:
    base = unit.messages()
    messages = list(base)
    raw = ""
    error = ""
    for attempt in range(1, max_attempts + 1):
        try:
            raw = client.chat(messages, response_format=unit.response_format, attempt=attempt)
        except GeneratorError as e:
            raise _UnitFailed("http", str(e), attempt, raw) from None
        try:
            obj = _validate(unit, raw)
            row = unit.make_row(obj)
            if row.get("dedup") and not store.claim(row["dedup"], unit.key):
                raise ValueError("duplicate of an earlier item; produce a different one")
            row["key"] = unit.key
            return row
        except ValidationError as e:
            error = "schema: " + "; ".join(
                f"{'.'.join(str(x) for x in er['loc']) or 'object'}: {er['msg']}" for er in e.errors()[:4]
            )
        except ValueError as e:
            error = str(e)
        messages = list(base) + [
            {"role": "assistant", "content": raw[:4000]},
            {
                "role": "user",
                "content": f"That reply was not usable ({error[:300]}). Reply again with the JSON object only.",
            },
        ]
    kind = "duplicate" if error.startswith("duplicate") else "invalid"
    raise _UnitFailed(kind, error, max_attempts, raw)


@dataclass
class _RunState:
    limit: int | None
    done: int = 0
    failed: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STEPS})
    stopped: bool = False


def _run_step(
    step: str,
    units: list[_Unit],
    store: JsonlStore,
    failures: FailureLog,
    client: ChatClient,
    state: _RunState,
    workers: int,
    max_attempts: int,
    abort_after: int,
    progress: bool,
) -> None:
    pending = [u for u in units if u.key not in store]
    if not pending or state.stopped:
        return
    consecutive_http = 0
    aborted = False
    it = iter(pending)
    bar = tqdm(total=len(pending), desc=f"synth {step}", unit="item", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"synth-{step}") as pool:
            inflight: dict[Future[dict[str, Any]], _Unit] = {}

            def fill() -> None:
                while len(inflight) < max(1, workers) * 2 and not state.stopped:
                    if state.limit is not None and state.done + len(inflight) >= state.limit:
                        return
                    u = next(it, None)
                    if u is None:
                        return
                    inflight[pool.submit(_run_unit, client, u, store, max_attempts)] = u

            fill()
            while inflight:
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    u = inflight.pop(fut)
                    bar.update(1)
                    try:
                        row = fut.result()
                    except _UnitFailed as f:
                        failures.add(step, u.key, f.kind, f.error, f.attempts, f.raw)
                        state.failed[step] += 1
                        consecutive_http = consecutive_http + 1 if f.kind == "http" else 0
                        if abort_after and consecutive_http >= abort_after:
                            state.stopped = aborted = True
                        continue
                    consecutive_http = 0
                    if store.add(row):
                        state.done += 1
                    else:
                        failures.add(
                            step, u.key, "duplicate", "duplicate of a row stored concurrently", 1, ""
                        )
                        state.failed[step] += 1
                if state.limit is not None and state.done >= state.limit:
                    state.stopped = True
                fill()
    finally:
        bar.close()
    if aborted:
        raise SynthesisAborted(
            f"step '{step}': {abort_after} units in a row failed on {client.url}; stopped. "
            f"Finished units are checkpointed in {store.path.parent}; run again to resume."
        )


# ---------------------------------------------------------------- the pipeline


@dataclass
class SynthesisResult:
    """What a :func:`synthesize` run left on disk."""

    out_dir: Path
    export_path: Path
    records: list[TaskRecord]
    counts: dict[str, int]
    failures: dict[str, int]
    requests: int
    complete: bool

    def summary(self) -> str:
        done = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        bad = ", ".join(f"{k}={v}" for k, v in self.failures.items() if v) or "none"
        state = "complete" if self.complete else "partial (run again to resume)"
        return (
            f"{len(self.records)} records -> {self.export_path} [{state}]; checkpoints: {done}; "
            f"failures this run: {bad}; requests: {self.requests}"
        )


def _group_units(n_groups: int, groups: JsonlStore, structured: bool = False) -> list[_Unit]:
    units = []
    for i in range(n_groups):
        key = f"g{i}"
        hint = DOMAIN_HINTS[i % len(DOMAIN_HINTS)]

        def make(obj: GroupPortrait, i: int = i) -> dict[str, Any]:
            return {"dedup": normalize_key(obj.name), "group_id": i, **obj.model_dump()}

        def msgs(hint: str = hint) -> list[dict[str, str]]:
            return _group_prompt(hint, [r["name"] for r in groups.values()], structured)

        units.append(_Unit(key, msgs, GroupPortrait, make))
    return units


def _profile_units(
    users_per_group: int, groups: JsonlStore, profiles: JsonlStore, structured: bool = False
) -> list[_Unit]:
    units = []
    for g in sorted(groups.values(), key=lambda r: r["group_id"]):

        def msgs(g: dict[str, Any] = g, u: int = 0) -> list[dict[str, str]]:
            avoid = [
                f"{r['profile']['Name']} ({r['profile']['Occupation']})"
                for r in profiles.values()
                if r["group_id"] == g["group_id"]
            ]
            return _profile_prompt(g, u, users_per_group, avoid, structured)

        for u in range(users_per_group):
            key = f"g{g['group_id']}_u{u}"

            def make(obj: UserProfile, g: dict[str, Any] = g, u: int = u) -> dict[str, Any]:
                prof = obj.to_profile()
                return {
                    "dedup": normalize_key(f"{obj.name} {obj.occupation}"),
                    "group_id": g["group_id"],
                    "user_id": u,
                    "group": g["name"],
                    "profile": prof,
                }

            units.append(_Unit(key, lambda g=g, u=u: msgs(g, u), UserProfile, make))
    return units


def _dedup_tasks(tasks: Iterable[WritingTask]) -> list[dict[str, str]]:
    seen: set[str] = set()
    out = []
    for t in tasks:
        k = normalize_key(t.title)
        if k and k not in seen:
            seen.add(k)
            out.append({"title": t.title.strip(), "description": t.description.strip()})
    return out


def _task_units(n_needed: int, n_total: int, profiles: JsonlStore, structured: bool = False) -> list[_Unit]:
    """One unit per profile. The distinct tasks of every attempt are pooled: a small generator often repeats the
    first title inside one reply ("Eloquent", "Eloquent"), and the next attempt brings another one."""
    units = []
    for p in sorted(profiles.values(), key=lambda r: (r["group_id"], r["user_id"])):
        pool: list[WritingTask] = []

        def check(obj: TaskList, pool: list[WritingTask] = pool) -> None:
            pool.extend(obj.tasks)
            got = _dedup_tasks(pool)
            if len(got) < n_needed:
                raise ValueError(f"need at least {n_needed} distinct tasks, got {len(got)}; "
                                 "give tasks with other titles")

        def make(obj: TaskList, p: dict[str, Any] = p, pool: list[WritingTask] = pool) -> dict[str, Any]:
            tasks = _dedup_tasks(pool or obj.tasks)[:n_total]
            return {
                "dedup": normalize_key(" | ".join(t["title"] for t in tasks)),
                "group_id": p["group_id"],
                "user_id": p["user_id"],
                "tasks": tasks,
            }

        units.append(
            _Unit(
                p["key"], lambda p=p: _tasks_prompt(p["profile"], n_total, structured), TaskList, make, check
            )
        )
    return units


def _text_units(
    n_texts: int,
    profiles: JsonlStore,
    tasks: JsonlStore,
    min_words: int,
    max_words: int,
    structured: bool = False,
) -> list[_Unit]:
    units = []
    floor = max(10, min_words // 3)

    def check(obj: WrittenText) -> None:
        n = len(obj.text.split())
        if n < floor:
            raise ValueError(f"text too short ({n} words; write {min_words}-{max_words})")

    for t in sorted(tasks.values(), key=lambda r: (r["group_id"], r["user_id"])):
        prof = profiles.rows.get(t["key"])
        if prof is None:
            continue
        for j, task in enumerate(t["tasks"][:n_texts]):

            def make(obj: WrittenText, ukey: str = t["key"], j: int = j) -> dict[str, Any]:
                text = obj.text.strip()
                return {"dedup": normalize_key(text)[:400], "user": ukey, "index": j, "text": text}

            units.append(
                _Unit(
                    f"{t['key']}_t{j}",
                    lambda prof=prof, task=task: _text_prompt(
                        prof["profile"], task, min_words, max_words, structured
                    ),
                    WrittenText,
                    make,
                    check,
                    text_fallback=True,
                )
            )
    return units


def _step_formats(
    n_needed: int, n_total: int, min_words: int, max_words: int, **bounds: int
) -> dict[str, dict[str, Any]]:
    """Each step's ``response_format``: its pydantic schema, closed and fitted to this run's sizes."""
    floor = max(10, min_words // 3)  # as _text_units checks
    tasks = {"minItems": n_needed, "maxItems": max(n_needed, n_total)}
    text = {"minLength": floor * 5, "maxLength": max(floor * 5, max_words * 8)}
    return {
        "groups": schema_format("group_portrait", step_schema(GroupPortrait, **bounds)),
        "profiles": schema_format("user_profile", step_schema(UserProfile, **bounds)),
        "tasks": schema_format("task_list", step_schema(TaskList, **bounds, tasks=tasks)),
        "texts": schema_format("written_text", step_schema(WrittenText, **bounds, text=text)),
    }


def build_records(
    out_dir: str | Path, history_per_user: int, tasks_per_user: int, min_history: int = 1
) -> list[TaskRecord]:
    """Assemble TaskRecords from the checkpoints in ``out_dir`` (users lacking texts are skipped)."""
    d = Path(out_dir)
    profiles, tasks, texts = (
        JsonlStore(d / f"{s}.jsonl", fsync=False) for s in ("profiles", "tasks", "texts")
    )
    out: list[TaskRecord] = []
    for p in sorted(profiles.values(), key=lambda r: (r["group_id"], r["user_id"])):
        t = tasks.rows.get(p["key"])
        if t is None:
            continue
        tl = t["tasks"]
        history = []
        for j in range(min(history_per_user, len(tl))):
            row = texts.rows.get(f"{p['key']}_t{j}")
            if row is not None:
                history.append(HistoryItem(title=_instr(tl[j]), text=row["text"], id=str(len(history))))
        if len(history) < min_history:
            continue
        extra = [_instr(x) for x in tl[history_per_user + tasks_per_user :]]
        for k in range(tasks_per_user):
            j = history_per_user + k
            row = texts.rows.get(f"{p['key']}_t{j}") if j < len(tl) else None
            if row is None:
                continue
            out.append(
                TaskRecord(
                    tid=f"{p['group_id']}_{p['user_id']}_{k}",
                    instruction=_instr(tl[j]),
                    reference=row["text"],
                    context=RecordContext(profile=p["profile"], history=history),
                    additional_tasks=extra,
                    source="synthetic",
                )
            )
    return out


def _instr(task: dict[str, str]) -> str:
    return f"{task['title'].strip().rstrip(':.')}: {task['description'].strip()}"


def synthesize(
    out_dir: str | Path,
    base_url: str,
    model: str,
    api_key: str | None = None,
    n_groups: int = 4,
    users_per_group: int = 3,
    tasks_per_user: int = 2,
    workers: int = 4,
    *,
    history_per_user: int = 3,
    extra_tasks: int = 2,
    min_words: int = 120,
    max_words: int = 300,
    max_attempts: int = 3,
    timeout: float = 120.0,
    http_retries: int = 3,
    backoff: float = 1.0,
    temperature: float | None = 0.9,
    max_tokens: int | None = 1500,
    response_format: dict[str, Any] | None = None,
    structured_output: bool = True,
    schema_bounds: dict[str, int] | None = None,
    extra_body: dict[str, Any] | None = None,
    limit: int | None = None,
    abort_after: int = 8,
    progress: bool = True,
    export_name: str = EXPORT_NAME,
    client: ChatClient | None = None,
) -> SynthesisResult:
    """Run (or resume) the four-step pipeline into ``out_dir`` and export ``out_dir/export_name``.

    ``n_groups`` x ``users_per_group`` users, each with ``history_per_user`` past writings and
    ``tasks_per_user`` target tasks (one exported record each). With ``structured_output`` every request
    carries its step's JSON schema as ``response_format`` (see :func:`step_schema`); set it False for servers
    without structured output. An explicit ``response_format`` (e.g. ``{"type": "json_object"}``) is sent
    with every request instead. Replies are validated (and retried) either way. ``schema_bounds`` overrides
    the schemas' generation bounds (``max_items``, ``max_chars``, ``item_chars``: see :func:`step_schema`).
    ``limit`` stops after that many new finished units (a partial, resumable run). Raises
    :class:`SynthesisAborted` after ``abort_after`` consecutive endpoint failures; everything finished so far
    stays checkpointed.
    """
    if min(n_groups, users_per_group, tasks_per_user) < 1 or history_per_user < 1:
        raise ValueError("n_groups, users_per_group, tasks_per_user and history_per_user must be >= 1")
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    client = client or ChatClient(
        base_url,
        model,
        api_key,
        timeout=timeout,
        max_retries=http_retries,
        backoff=backoff,
        temperature=temperature,
        max_tokens=max_tokens,
        response_format=response_format,
        extra_body=dict(extra_body or {}),
    )
    config = {
        "model": model,
        "base_url": base_url,
        "n_groups": n_groups,
        "users_per_group": users_per_group,
        "tasks_per_user": tasks_per_user,
        "history_per_user": history_per_user,
        "extra_tasks": extra_tasks,
    }
    (d / "run.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    stores = {s: JsonlStore(d / f"{s}.jsonl") for s in STEPS}
    failures = FailureLog(d / "failures.jsonl")
    state = _RunState(limit)
    n_texts = history_per_user + tasks_per_user
    formats = (
        _step_formats(n_texts, n_texts + extra_tasks, min_words, max_words, **(schema_bounds or {}))
        if structured_output and response_format is None
        else {}
    )
    common = dict(
        failures=failures,
        client=client,
        state=state,
        workers=workers,
        max_attempts=max_attempts,
        abort_after=abort_after,
        progress=progress,
    )
    requests_before = client.requests_made
    try:
        sch = bool(formats)
        units: dict[str, Callable[[], list[_Unit]]] = {
            "groups": lambda: _group_units(n_groups, stores["groups"], sch),
            "profiles": lambda: _profile_units(users_per_group, stores["groups"], stores["profiles"], sch),
            "tasks": lambda: _task_units(n_texts, n_texts + extra_tasks, stores["profiles"], sch),
            "texts": lambda: _text_units(
                n_texts, stores["profiles"], stores["tasks"], min_words, max_words, sch
            ),
        }
        for step in STEPS:  # each step's units are built once the previous step is done
            step_units = units[step]()
            for u in step_units:
                u.response_format = formats.get(step)
            _run_step(step, step_units, stores[step], **common)
    finally:
        records = build_records(d, history_per_user, tasks_per_user)
        export = save_context_aware(records, d / export_name)
    expected = n_groups * users_per_group
    complete = (
        not state.stopped
        and len(stores["groups"]) >= n_groups
        and len(stores["profiles"]) >= expected
        and len(records) >= expected * tasks_per_user
    )
    return SynthesisResult(
        out_dir=d,
        export_path=export,
        records=records,
        counts={s: len(stores[s]) for s in STEPS},
        failures=dict(state.failed),
        requests=client.requests_made - requests_before,
        complete=complete,
    )
