"""Typed records for context-aware writing tasks, and loaders for the authors' files and our JSONL.

Every other module consumes :class:`TaskRecord`: one writing task (``instruction``), its reference text,
and the user's private context (profile fields, past writings, extra private texts).

Formats read:

* ``context_aware_*.json`` (authors): list of ``{tid, conversations, profile, additional_profile,
  additional_tasks}``; see :func:`load_context_aware`.
* ``ablation_*.json`` (authors): list of ``{tid, conversations}`` with the prompt already rendered, with or
  without context; the two files of a split are joined by ``tid`` in :func:`load_prompt_pairs`.
* our JSONL: one :class:`TaskRecord` (``model_dump``) or one context-aware record per line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cogenesis.core.context import PrivateContext, WritingSample, parse_profile_block
from cogenesis.core.files import atomic_write_text

PROFILE_ORDER = (
    "Age",
    "Name",
    "Occupation",
    "Location",
    "Personal_traits",
    "Writing_style",
    "Privacy_info",
    "Smart_device_usage",
    "Ai_assistant_usage",
)
"""Profile fields in the order the authors' ``additional_profile`` block lists them."""

PRIVATE_FIELDS = ("Name", "Location", "Privacy_info", "Smart_device_usage")
"""Profile fields the data README names as explicitly private."""


class HistoryItem(BaseModel):
    """One past writing of the user: the task it answered and the text."""

    model_config = ConfigDict(extra="ignore")

    title: str = ""
    text: str
    id: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_str(cls, v: Any) -> Any:
        return None if v is None else str(v)


class RecordContext(BaseModel):
    """The private context of a record; same shape as ``PrivateContext.to_dict()``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    profile: dict[str, str] = Field(default_factory=dict)
    history: list[HistoryItem] = Field(default_factory=list)
    private: list[str] = Field(default_factory=list)

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, str):
            return parse_profile_block(v)
        if isinstance(v, dict):
            return {str(k): "" if x is None else str(x) for k, x in v.items()}
        return v

    @field_validator("private", mode="before")
    @classmethod
    def _private(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    def to_private_context(self) -> PrivateContext:
        return PrivateContext(
            dict(self.profile),
            [WritingSample(h.title, h.text) for h in self.history],
            list(self.private),
        )

    @classmethod
    def from_private_context(cls, ctx: PrivateContext) -> RecordContext:
        return cls.model_validate(ctx.to_dict())


class TaskRecord(BaseModel):
    """One context-aware writing task: instruction, reference, the user's private context."""

    model_config = ConfigDict(extra="ignore")

    tid: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    reference: str = ""
    context: RecordContext = Field(default_factory=RecordContext)
    additional_tasks: list[str] = Field(default_factory=list)
    source: str = ""

    @field_validator("tid", mode="before")
    @classmethod
    def _tid_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @property
    def user_id(self) -> str:
        """The user part of an authors' tid ``group_user_task`` (the whole tid otherwise)."""
        head, sep, _ = self.tid.rpartition("_")
        return head if sep else self.tid

    def private_context(self) -> PrivateContext:
        """The context as the :class:`PrivateContext` that prompt builders and the egress guard use."""
        return self.context.to_private_context()

    def to_context_aware(self) -> dict[str, Any]:
        """This record in the authors' ``context_aware_*.json`` shape."""
        return {
            "tid": self.tid,
            "conversations": [
                {"from": "user", "value": self.instruction},
                {"from": "assistant", "value": self.reference},
            ],
            "profile": [
                {"title": h.title, "text": h.text, "id": h.id if h.id is not None else str(i)}
                for i, h in enumerate(self.context.history)
            ],
            "additional_profile": render_profile_block(self.context.profile),
            "additional_tasks": list(self.additional_tasks),
        }


class PromptPair(BaseModel):
    """One task rendered twice by the authors: with the private context and without it."""

    tid: str
    with_context: str
    without_context: str
    reference: str
    source: str = ""

    @property
    def instruction(self) -> str:
        """The context-free task (the without-context prompt)."""
        return self.without_context.strip()

    def context(self) -> RecordContext:
        """The private context recovered from the sections of the with-context prompt."""
        return parse_rendered_prompt(self.with_context)[1]


# ---------------------------------------------------------------- raw authors' shapes (validation only)


class _Turn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    from_: str = Field(alias="from")
    value: str


class _RawPair(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tid: str
    conversations: list[_Turn] = Field(min_length=2)

    @field_validator("tid", mode="before")
    @classmethod
    def _tid_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    def turn(self, role: str) -> str:
        names = {"user": ("user", "human"), "assistant": ("assistant", "gpt")}.get(role, (role,))
        for t in self.conversations:
            if t.from_ in names:
                return t.value
        raise ValueError(f"no '{role}' turn in conversations")


class _RawContextAware(_RawPair):
    profile: list[HistoryItem] = Field(default_factory=list)
    additional_profile: str = ""
    additional_tasks: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- helpers


def render_profile_block(profile: dict[str, str]) -> str:
    """The authors' ``Key: value`` profile block (known fields first, in their order)."""
    keys = [k for k in PROFILE_ORDER if k in profile] + [k for k in profile if k not in PROFILE_ORDER]
    return "\n".join(f"{k}: {profile[k]}" for k in keys)


def _short_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "record"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(e.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _where(path: str | Path, i: int, raw: Any, line: int | None = None) -> str:
    tid = raw.get("tid") if isinstance(raw, dict) else None
    pos = f"line {line}" if line is not None else f"record {i}"
    return f"{path}: {pos}" + (f" (tid={tid!r})" if tid is not None else "")


def _read_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e


def _read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    out = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: line {n}: not valid JSON ({e})") from e
    return out


def _as_list(data: Any, path: str | Path) -> list[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _check_unique(records: Sequence[TaskRecord | _RawPair], path: str | Path) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.tid in seen:
            raise ValueError(
                f"{path}: record {i} (tid={r.tid!r}): duplicate tid (first at record {seen[r.tid]})"
            )
        seen[r.tid] = i


def context_aware_to_record(raw: Any, source: str = "", where: str = "record") -> TaskRecord:
    """Convert one authors' context-aware dict to a :class:`TaskRecord` (ValueError naming ``where``)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    try:
        r = _RawContextAware.model_validate(raw)
        instruction, reference = r.turn("user"), r.turn("assistant")
        return TaskRecord(
            tid=r.tid,
            instruction=instruction,
            reference=reference,
            context=RecordContext(profile=r.additional_profile, history=r.profile),
            additional_tasks=r.additional_tasks,
            source=source,
        )
    except ValidationError as e:
        raise ValueError(f"{where}: {_short_error(e)}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


_SECTION = re.compile(r"^## (.+?)\s*$", re.M)
_ENTRY = re.compile(r"^(?:Task|Title): ", re.M)


def parse_rendered_prompt(prompt: str) -> tuple[str, RecordContext]:
    """Split an authors' rendered with-context prompt into (instruction, context).

    Sections are ``## User Profile`` (``Key: value`` lines), ``## User Writing History`` /
    ``## History Paper Abstracts`` (``Task:``/``Title:`` + ``Content:`` entries) and ``## Task``.
    A prompt without sections is returned whole as the instruction with an empty context.
    """
    heads = list(_SECTION.finditer(prompt))
    if not heads:
        return prompt.strip(), RecordContext()
    sections: dict[str, str] = {}
    for j, m in enumerate(heads):
        end = heads[j + 1].start() if j + 1 < len(heads) else len(prompt)
        sections[m.group(1).strip().lower()] = prompt[m.end() : end].strip()
    instruction = sections.get("task", "").strip()
    profile = parse_profile_block(sections.get("user profile", ""))
    history: list[HistoryItem] = []
    hist_text = next((v for k, v in sections.items() if k.startswith("history") or "history" in k), "")
    starts = [m.start() for m in _ENTRY.finditer(hist_text)]
    for j, s in enumerate(starts):
        chunk = hist_text[s : starts[j + 1] if j + 1 < len(starts) else len(hist_text)]
        head, _, body = chunk.partition("\nContent:")
        title = head.split(":", 1)[1].strip()
        history.append(HistoryItem(title=title, text=body.strip(), id=str(j)))
    return instruction, RecordContext(profile=profile, history=history)


# ---------------------------------------------------------------- loaders


def load_context_aware(path: str | Path) -> list[TaskRecord]:
    """Load an authors' ``context_aware_*.json`` (or a file in the same shape, e.g. our sample)."""
    data = _as_list(_read_json(path), path)
    src = Path(path).stem
    out = [context_aware_to_record(raw, src, _where(path, i, raw)) for i, raw in enumerate(data)]
    _check_unique(out, path)
    return out


def _load_raw_pairs(path: str | Path) -> list[_RawPair]:
    data = _as_list(_read_json(path), path)
    out = []
    for i, raw in enumerate(data):
        where = _where(path, i, raw)
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        try:
            r = _RawPair.model_validate(raw)
            r.turn("user"), r.turn("assistant")
        except ValidationError as e:
            raise ValueError(f"{where}: {_short_error(e)}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append(r)
    _check_unique(out, path)
    return out


def load_prompt_pairs(
    with_path: str | Path, without_path: str | Path, strict: bool = False
) -> list[PromptPair]:
    """Join an ``ablation_*`` with-context file and its ``_wo`` file by tid (order of the with file).

    Tids present in only one file are skipped, or raise ValueError with ``strict=True``.
    """
    with_recs = _load_raw_pairs(with_path)
    wo = {r.tid: r for r in _load_raw_pairs(without_path)}
    if strict:
        only_with = [r.tid for r in with_recs if r.tid not in wo]
        only_wo = sorted(set(wo) - {r.tid for r in with_recs})
        if only_with or only_wo:
            raise ValueError(
                f"{with_path} / {without_path}: tids not in both files: "
                f"{len(only_with)} only in with-context (e.g. {only_with[:3]}), "
                f"{len(only_wo)} only in without (e.g. {only_wo[:3]})"
            )
    src = Path(with_path).stem
    pairs = [
        PromptPair(
            tid=r.tid,
            with_context=r.turn("user"),
            without_context=wo[r.tid].turn("user"),
            reference=r.turn("assistant"),
            source=src,
        )
        for r in with_recs
        if r.tid in wo
    ]
    if not pairs:
        raise ValueError(
            f"{with_path} / {without_path}: no tid in common; are these files of the same split?"
        )
    return pairs


def _sniff_one(raw: Any) -> Literal["task", "context_aware", "pair"]:
    if isinstance(raw, dict):
        if "instruction" in raw:
            return "task"
        if "additional_profile" in raw or isinstance(raw.get("profile"), list):
            return "context_aware"
        if "conversations" in raw:
            return "pair"
    return "context_aware"  # let the strict converter produce the error message


def _record_from_any(raw: Any, source: str, where: str) -> TaskRecord:
    kind = _sniff_one(raw)
    if kind == "task":
        try:
            rec = TaskRecord.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"{where}: {_short_error(e)}") from None
        return rec if rec.source else rec.model_copy(update={"source": source})
    if kind == "pair":
        try:
            r = _RawPair.model_validate(raw)
            instruction, ctx = parse_rendered_prompt(r.turn("user"))
            return TaskRecord(
                tid=r.tid, instruction=instruction, reference=r.turn("assistant"), context=ctx, source=source
            )
        except ValidationError as e:
            raise ValueError(f"{where}: {_short_error(e)}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return context_aware_to_record(raw, source, where)


def load_records(path: str | Path) -> list[TaskRecord]:
    """Load records from any supported file, sniffing the format.

    ``.jsonl``: one TaskRecord or authors' record per line. ``.json``: a list of context-aware records,
    of ablation ``{tid, conversations}`` records (the rendered context, if any, is parsed back into the
    record's context), or of TaskRecords; or a ``{"records": [...]}`` object.
    """
    p = Path(path)
    src = p.stem
    if p.suffix.lower() == ".jsonl":
        rows = _read_jsonl(p)
        out = [_record_from_any(raw, src, _where(p, i, raw, line=n)) for i, (n, raw) in enumerate(rows)]
    else:
        data = _read_json(p)
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            data = data["records"]
        data = _as_list(data, p)
        out = [_record_from_any(raw, src, _where(p, i, raw)) for i, raw in enumerate(data)]
    _check_unique(out, p)
    return out


SAMPLE_RESOURCE = "assets/sample_data.json"


def sample_path() -> Path:
    """Path of the shipped synthetic sample (context-aware JSON shape)."""
    return Path(str(resources.files("cogenesis").joinpath(SAMPLE_RESOURCE)))


def load_sample() -> list[TaskRecord]:
    """The shipped synthetic sample: a few fictional users, each with writing tasks and references."""
    return load_context_aware(sample_path())


# ---------------------------------------------------------------- writers


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def save_context_aware(records: Iterable[TaskRecord], path: str | Path) -> Path:
    """Write records in the authors' context-aware JSON shape (atomic: temp file + os.replace)."""
    p = Path(path)
    _atomic_write_text(
        p, json.dumps([r.to_context_aware() for r in records], ensure_ascii=False, indent=1) + "\n"
    )
    return p


def save_jsonl(records: Iterable[TaskRecord], path: str | Path) -> Path:
    """Write records as our JSONL (one ``TaskRecord`` per line; atomic)."""
    p = Path(path)
    lines = [json.dumps(r.model_dump(), ensure_ascii=False) for r in records]
    _atomic_write_text(p, "".join(line + "\n" for line in lines))
    return p


def summarize(records: Sequence[TaskRecord]) -> dict[str, Any]:
    """Counts for a quick look (``cogenesis data show``)."""
    users = {r.user_id for r in records}
    hist = [len(r.context.history) for r in records]
    return {
        "records": len(records),
        "users": len(users),
        "with_reference": sum(1 for r in records if r.reference.strip()),
        "with_context": sum(1 for r in records if r.context.profile or r.context.history),
        "history_per_record": (min(hist), max(hist)) if hist else (0, 0),
        "sources": sorted({r.source for r in records}),
    }
