"""Pydantic schemas of the four steps, and the closed JSON schemas sent as ``response_format``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _norm_keys(d: Any) -> Any:
    """Dict keys lowercased, spaces and dashes turned into underscores."""
    if isinstance(d, dict):
        return {re.sub(r"[\s\-]+", "_", str(k).strip()).lower(): v for k, v in d.items()}
    return d


def _listify(v: Any) -> Any:
    """A ';'- or newline-separated string as a list; list items stripped, empty ones dropped."""
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
    """Base of the step schemas: extra keys ignored, keys normalized, a one-object list unwrapped."""

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
    """One writing task: an imperative title and a one-sentence description."""

    title: str = Field(min_length=5, max_length=200)
    description: str = Field(min_length=10)

    def instruction(self) -> str:
        """The task as one instruction: ``title: description``."""
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
