"""The reference server's wire protocol: one pydantic model per endpoint (vLLM's `entrypoints/openai/protocol.py`
style).

Types and ranges that do not depend on the server's settings live here; a body that does not fit is a 400 that
names the field (`error.param`) and what it must be, never a 500. Limits that do depend on settings
(`max_tokens` <= the server's limit, prompt length vs the context) are checked by the routes. Unknown fields are
accepted and ignored, as OpenAI and vLLM do (clients send `n`, `user`, `presence_penalty`, ...).
Integers are strict (`true` is not 1, `"5"` is not 5); numbers accept ints.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

MAX_SEED = 2**63 - 1
MAX_STOP = 8
RESPONSE_FORMATS = ("text", "json_object", "json_schema")

Number = Annotated[float, Field(strict=True)]  # strict float still accepts JSON integers; rejects bools/strings
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
Logprobs = Annotated[StrictInt, Field(ge=0)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: StrictStr | None = None


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: the shape is checked before pydantic's own errors, so a 400 says what to send instead
    ("type 'xml' is not supported; use 'text', 'json_object', 'json_schema'") rather than a union error."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, rf: Any) -> Any:
        kinds = ", ".join(f"'{k}'" for k in RESPONSE_FORMATS)
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise ValueError(f"'response_format' must be an object with a 'type' ({kinds}), got {rf!r:.200}")
        if rf["type"] not in RESPONSE_FORMATS:
            raise ValueError(f"response_format type {rf['type']!r:.100} is not supported; use {kinds}")
        if rf["type"] != "json_schema":
            return rf
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise ValueError("response_format 'json_schema' needs a 'json_schema' object: "
                             '{"name": "...", "schema": {...JSON Schema...}}')
        if not isinstance(js.get("name"), str) or not js["name"]:
            raise ValueError("response_format.json_schema.name must be a non-empty string")
        if not isinstance(js.get("schema"), dict):
            raise ValueError(f"response_format.json_schema.schema must be a JSON Schema object, "
                             f"got {js.get('schema')!r:.200}")
        return rf

    def schema_or_none(self) -> dict | None:
        """The JSON schema to enforce (None: free text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "object"}
        assert self.json_schema is not None  # _shape guarantees it
        return self.json_schema.schema_


class GenerationRequest(_Request):
    """Fields both generation endpoints share (OpenAI + vLLM's sampling extensions)."""

    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=100.0)] | None = None
    top_p: Annotated[Number, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[StrictInt, Field(ge=-1)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None
    stop: StrictStr | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[Annotated[StrictInt, Field(ge=0)]] | None = None
    ignore_eos: StrictBool = False
    n: Literal[1] | None = None
    best_of: Literal[1] | None = None
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    prompt_logprobs: Logprobs | None = None
    prompt_logprobs_start: Annotated[StrictInt, Field(ge=0)] | None = None
    return_tokens_as_token_ids: StrictBool = False
    response_format: ResponseFormat | None = None
    user: Annotated[StrictStr, Field(max_length=512)] | None = None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(GenerationRequest):
    """POST /v1/completions: one prompt, as text or token ids (a batch of exactly one is unwrapped)."""

    prompt: StrictStr | TokenIds | Annotated[list[StrictStr | TokenIds], Field(min_length=1, max_length=1)]
    echo: StrictBool = False
    logprobs: Logprobs | None = None
    add_special_tokens: StrictBool = True

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            return p[0]
        return p


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: StrictBool = False
    top_logprobs: Logprobs | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    add_generation_prompt: StrictBool = True

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class TokenizeRequest(_Request):
    """POST /tokenize (vLLM): `prompt` text, or `messages` rendered with the chat template."""

    prompt: StrictStr | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: StrictBool = True


class DetokenizeRequest(_Request):
    """POST /detokenize (vLLM)."""

    tokens: TokenIds


def describe(e: ValidationError) -> tuple[str, str | None]:
    """The first error as a message that names the field and what it must be, and the top-level field name."""
    err = e.errors(include_url=False)[0]
    loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith(("function-", "union["))]
    # unions report one error per branch; the field path is what a user needs
    field = ".".join(x for x in loc if not x.startswith(("list[", "str", "int", "constrained-", "literal[")))
    if err.get("type") == "value_error":  # our own validators already say what to send
        return str(err.get("ctx", {}).get("error", err.get("msg"))), (loc[0] if loc else None)
    got = err.get("input")
    got_s = repr(got)[:80] if not isinstance(got, dict) else "an object"
    msg = f"'{field or 'body'}': {err.get('msg', 'invalid value')} (got {got_s})"
    more = len(e.errors()) - 1
    if more > 0 and field:
        msg += "; see the OpenAI API reference for the field's type"
    return msg, (loc[0] if loc else None)
