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

The implementation lives in :mod:`cogenesis.data.synth` (one concern per module); this module re-exports it.
"""

from __future__ import annotations

from cogenesis.data.synth.client import API_KEY_ENVS, ChatClient  # noqa: F401
from cogenesis.data.synth.errors import (  # noqa: F401
    DOMAIN_HINTS,
    EXPORT_NAME,
    STEPS,
    GeneratorError,
    SynthError,
    SynthesisAborted,
)
from cogenesis.data.synth.pipeline import SynthesisResult, build_records, synthesize  # noqa: F401
from cogenesis.data.synth.schemas import (  # noqa: F401
    SCHEMA_ITEM_CHARS,
    SCHEMA_MAX_CHARS,
    SCHEMA_MAX_ITEMS,
    GroupPortrait,
    StrList,
    TaskList,
    UserProfile,
    WritingTask,
    WrittenText,
    schema_format,
    step_schema,
)
from cogenesis.data.synth.store import FailureLog, JsonlStore  # noqa: F401
from cogenesis.data.synth.text import extract_json, normalize_key  # noqa: F401
from cogenesis.data.synth.units import _step_formats  # noqa: F401
