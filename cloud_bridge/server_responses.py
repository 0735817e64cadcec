"""The reference server's response shapes: JSON bodies, usage, log-probabilities (OpenAI/vLLM style), choices."""

from __future__ import annotations

import functools
import importlib.util
import json

from fastapi.responses import Response

from cogenesis.core.paths import SESSION_HEADER

from .server_engine import Engine, RunInfo, TopLogprobs
from .server_protocol import RESPONSE_FORMATS
from .server_state import EXTENSIONS, State


def caps(st: State) -> dict:
    """The ``cogenesis`` block of /health and /v1/models: extensions and limits."""
    c = st.settings
    return {"extensions": list(EXTENSIONS), "vocab_fingerprint": st.engine.model.vocab_fingerprint,
            "max_logprobs": c.max_logprobs, "max_tokens": c.max_tokens,
            "max_prompt_tokens": c.max_prompt_tokens, "max_logprob_positions": c.max_logprob_positions,
            "max_body_bytes": c.max_body_bytes, "session_header": SESSION_HEADER,
            "response_format": list(RESPONSE_FORMATS) if _has_llguidance() else ["text"]}


@functools.lru_cache(maxsize=1)
def _has_llguidance() -> bool:
    return importlib.util.find_spec("llguidance") is not None


def json_response(content: dict) -> Response:
    return Response(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                    media_type="application/json")


def cut(text: str, reason: str | int | None) -> str:
    """`text` up to the stop string that ended the run (if one did)."""
    if isinstance(reason, str) and reason in text:
        return text[: text.index(reason)]
    return text


def usage(info: RunInfo) -> dict:
    n = len(info.completion_ids)
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": n, "total_tokens": info.prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": info.cached_tokens}}


def usage_log(info: RunInfo) -> dict:
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": len(info.completion_ids),
            "cached_tokens": info.cached_tokens, "computed_tokens": info.computed_tokens}


def completion_choice(info: RunInfo, finish: str, reason: str | int | None, eng: Engine, *, ids: list[int],
                      echo: bool, k_gen: int | None, as_ids: bool, k_pl: int | None, pl_start: int) -> dict:
    """The one choice of a /v1/completions answer."""
    text = cut(eng.model.decode(info.completion_ids), reason)
    choice = {"index": 0, "text": (eng.model.tokenizer.decode(ids, skip_special_tokens=True) if echo else "") + text,
              "logprobs": None, "finish_reason": finish, "stop_reason": _stop_reason(reason),
              "prompt_logprobs": prompt_logprobs_json(info, k_pl, pl_start, eng) if k_pl is not None else None}
    if k_gen is not None:
        choice["logprobs"] = _completion_logprobs(info, ids if echo else [], k_gen, as_ids, eng)
    return choice


def chat_choice(info: RunInfo, finish: str, reason: str | int | None, eng: Engine, *, k_gen: int | None,
                as_ids: bool) -> dict:
    """The one choice of a /v1/chat/completions answer."""
    content = cut(eng.model.decode(info.completion_ids), reason)
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
              "finish_reason": finish, "stop_reason": _stop_reason(reason)}
    if k_gen is not None:
        choice["logprobs"] = {"content": _chat_logprobs(info, k_gen, as_ids, eng)}
    return choice


def _stop_reason(reason: str | int | None) -> str | int | None:
    return reason if isinstance(reason, (str, int)) else None


def _tok(eng: Engine, tid: int, as_ids: bool) -> str:
    return f"token_id:{tid}" if as_ids else eng.piece(tid)


def _prompt_entry(t: TopLogprobs, k: int, eng: Engine) -> dict:
    out = {}
    if t.token is not None:
        out[str(t.token)] = {"logprob": t.token_logprob, "rank": t.token_rank, "decoded_token": eng.piece(t.token)}
    for r, (tid, lp) in enumerate(zip(t.ids[:k], t.logprobs[:k], strict=True), 1):
        out.setdefault(str(tid), {"logprob": lp, "rank": r, "decoded_token": eng.piece(tid)})
    return out


def prompt_logprobs_json(info: RunInfo, k: int, start: int, eng: Engine) -> list:
    """vLLM's ``prompt_logprobs``: null before `start` (and at position 0), else {"<id>": {logprob, rank, ...}}."""
    return [None if (t is None or p < start) else _prompt_entry(t, k, eng) for p, t in enumerate(info.prompt_logprobs)]


def _top_dict(t: TopLogprobs, k: int, as_ids: bool, eng: Engine) -> dict[str, float]:
    d = {_tok(eng, tid, as_ids): lp for tid, lp in zip(t.ids[:k], t.logprobs[:k], strict=True)}
    if t.token is not None:
        d.setdefault(_tok(eng, t.token, as_ids), t.token_logprob)
    return d


def _completion_logprobs(info: RunInfo, echo_ids: list[int], k: int, as_ids: bool, eng: Engine) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    pos = 0
    rows: list[tuple[int, TopLogprobs | None]] = [(t, info.prompt_logprobs[i] if info.prompt_logprobs else None)
                                                  for i, t in enumerate(echo_ids)]
    rows += list(zip(info.completion_ids, info.completion_logprobs, strict=False))
    for tid, t in rows:
        tokens.append(_tok(eng, tid, as_ids))
        offsets.append(pos)
        pos += len(eng.piece(tid))
        lps.append(None if t is None else t.token_logprob)
        tops.append(None if t is None else _top_dict(t, k, as_ids, eng))
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def _chat_logprobs(info: RunInfo, k: int, as_ids: bool, eng: Engine) -> list[dict]:
    out = []
    for tid, t in zip(info.completion_ids, info.completion_logprobs, strict=False):
        s = _tok(eng, tid, as_ids)
        tops = [{"token": _tok(eng, i, as_ids), "logprob": lp, "bytes": list(_tok(eng, i, as_ids).encode())}
                for i, lp in zip(t.ids[:k], t.logprobs[:k], strict=True)]
        out.append({"token": s, "logprob": t.token_logprob, "bytes": list(s.encode()), "top_logprobs": tops})
    return out
