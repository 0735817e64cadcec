"""The units of each step (prompt, schema, row maker, extra check) and each step's ``response_format``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cogenesis.data.synth.errors import DOMAIN_HINTS
from cogenesis.data.synth.prompts import _group_prompt, _profile_prompt, _tasks_prompt, _text_prompt
from cogenesis.data.synth.runner import _Unit
from cogenesis.data.synth.schemas import (
    GroupPortrait,
    TaskList,
    UserProfile,
    WritingTask,
    WrittenText,
    schema_format,
    step_schema,
)
from cogenesis.data.synth.store import JsonlStore
from cogenesis.data.synth.text import normalize_key


def _group_units(n_groups: int, groups: JsonlStore, structured: bool = False) -> list[_Unit]:
    """Step 1 units: one per group, domain hints rotated."""
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
    """Step 2 units: ``users_per_group`` users for each stored group."""
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
    """Tasks as dicts, first of each normalized title kept."""
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
    """Step 4 units: one per task to write (the first ``n_texts`` of each user with a profile)."""
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
