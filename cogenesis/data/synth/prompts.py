"""Prompts of the four steps (each asks for one JSON object)."""

from __future__ import annotations

from typing import Any

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
    """How the prompt of ``step`` names its JSON fields: a template, or words when ``structured``."""
    return _FIELDS[step][1 if structured else 0]


def _group_prompt(hint: str, avoid: list[str], structured: bool = False) -> list[dict[str, str]]:
    """Step 1: ask for one group portrait from ``hint``, unlike the groups in ``avoid``."""
    avoid_txt = f"\nAlready covered (choose a different group): {'; '.join(avoid[:30])}" if avoid else ""
    user = (
        f"Describe one group of people who use an AI writing assistant, drawn from: {hint}.{avoid_txt}\n"
        f"Be specific about their life situation. {_fields('groups', structured)}"
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]


def _profile_prompt(
    group: dict[str, Any], index: int, total: int, avoid: list[str], structured: bool = False
) -> list[dict[str, str]]:
    """Step 2: ask for user ``index`` of ``total`` in ``group``, unlike the users in ``avoid``."""
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
    """A profile as ``field: value`` lines (empty fields left out)."""
    return "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in profile.items() if v)


def _tasks_prompt(profile: dict[str, str], n: int, structured: bool = False) -> list[dict[str, str]]:
    """Step 3: ask for ``n`` writing tasks fitted to ``profile``."""
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
    """Step 4: ask for the user's own text for ``task``, in their style."""
    user = (
        f"User profile:\n{_render_profile(profile)}\n\n"
        f"Task: {task['title']}: {task['description']}\n\n"
        f"Write the text this user would write for the task, as the user, in first person, {min_words}-"
        f"{max_words} words, strictly in their writing style. Use a few of their personal and private details "
        "naturally. No title line.\n" + _fields("texts", structured)
    )
    return [{"role": "system", "content": _JSON_SYSTEM}, {"role": "user", "content": user}]
