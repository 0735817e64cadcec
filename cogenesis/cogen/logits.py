"""Logit-level co-generation: the on-device model (with the private context) and a cloud model (without it)
fuse their next-token distributions, per step (the paper's method) or per block (speculative, fewer round trips).

Privacy: the cloud gets the context-free prompt ids plus the tokens generated so far, never the local prompt.
Generated tokens were written by a model that saw the context, so they can carry it; pass ``guard`` and every
outgoing prefix (and draft) goes through a `cogenesis.cogen.prefix_policy.PrefixPolicy` first: nothing the
guard finds (its private-term model included) and no term still being spelled out is ever sent; at the first
private term fusion stops (``prefix_policy="stop"``) or goes on with a redacted prefix (``"redact"``). A
:class:`Schedule` can also limit fusion to the first P tokens. Block fusion also sends the
drafts that end up rejected, i.e. up to ``draft_k`` tokens the reply never contains.

Block fusion, greedy: the local model drafts ``k`` tokens; ONE cloud request returns the cloud's top-k at the
k draft positions + 1; position by position the fused argmax is compared with the draft, drafts are accepted
while they match, and the first mismatch is replaced by the fused choice (the local KV cache is rolled back
to it). Every accepted token is the argmax of exactly the distribution per-step fusion would compute at that
position (same local prefix, same cloud prefix), so the output is token-identical to per-step fusion.

Block fusion, sampling: drafts ``x ~ q`` (the local model's own sampling distribution with the context) are
accepted with probability ``min(1, p(x) / q(x))`` where ``p`` is the fused sampling distribution at that
position, and on rejection a token is drawn from ``max(0, p - q)`` renormalized; after k accepted drafts a
bonus token is drawn from ``p``. This is speculative sampling (Leviathan et al. 2023, Chen et al. 2023):
``P(out = y) = q(y) min(1, p(y)/q(y)) + (1 - sum_x min(q(x), p(x))) * max(0, p(y) - q(y)) / sum_x max(0, p(x) - q(x))
= min(q(y), p(y)) + max(0, p(y) - q(y)) = p(y)``, since ``1 - sum min(p, q) = sum max(0, p - q)``.
Each position is conditioned on the accepted prefix, which is exactly the per-step prefix, so by induction
the sequence distribution equals per-step fusion's. ``tests/test_block_fusion.py`` checks it with a
chi-square test on a toy vocabulary.

``k`` adapts: with ``a`` the recent per-token acceptance rate, ``t`` the local step time and ``c`` the time of a
cloud request, a round with k drafts costs ``(k+1) t + c`` and yields ``(1 - a^(k+1)) / (1 - a)`` tokens on
average; the next round uses the k (in [k_min, k_max]) that minimizes time per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from cogenesis.cloud_bridge.guard import PLACEHOLDERS
from cogenesis.cloud_bridge.terms import PLACEHOLDER as TERM_PLACEHOLDERS
from cogenesis.cogen.block import DraftSize, choose_k, run_blocks  # noqa: F401  (choose_k: re-exported)
from cogenesis.cogen.clouds import (  # noqa: F401  (re-exported)
    CloudLogprobs,
    LocalCloud,
    MappedCloud,
    MappedTopK,
    StringTopKCloud,
    VocabIndex,
    map_string_topk,
)
from cogenesis.cogen.fusion import DEFAULT_K, Fuser, FusionNet, Schedule
from cogenesis.cogen.prefix_policy import PrefixPolicy, PrefixView
from cogenesis.cogen.results import CogenResult, StepInfo  # noqa: F401  (re-exported)
from cogenesis.cogen.stepwise import FusionRun, run_stepwise
from cogenesis.runtime.processors import RepetitionPenalty
from cogenesis.runtime.sampling import Sampler, SamplingConfig

# ---------------------------------------------------------------- the generation engine


def cogenerate(
    decoder,
    local_prompt_ids: Sequence[int],
    cloud: CloudLogprobs | None,
    cloud_prompt_ids: Sequence[int],
    fuser: Fuser,
    *,
    block: bool = False,
    schedule: Schedule | tuple | str | None = None,
    max_new_tokens: int = 256,
    sampling: SamplingConfig | None = None,
    stop_ids: Iterable[int] = (),
    k: int = DEFAULT_K,
    draft_k: int = 4,
    draft_k_min: int = 1,
    draft_k_max: int = 16,
    adapt_k: bool = True,
    guard_scan: Callable[[list[int]], bool] | None = None,
    cloud_view: Callable[[list[int], list[int]], PrefixView] | None = None,
    detokenize: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int], None] | None = None,
    repetition_penalty: float = 1.0,
    cloud_mask: Iterable[int] = (),
    cloud_deadline_s: float | None = None,
) -> CogenResult:
    """Generate with fusion on a Decoder-like object (``forward(ids, keep)``, ``truncate(n)``, ``reset()``,
    ``length``). ``guard_scan(ids) -> True`` when the generated ids about to be sent reveal private context:
    the cloud is then no longer consulted. A cloud error also ends fusion; the reply finishes locally.
    ``cloud_view(gen, drafts)`` (a `PrefixPolicy`) decides what the cloud may see: ``send`` its prefix (the
    generated ids, or a redacted re-encoding), ``hold`` (this step or round is decided locally; fusion goes
    on) or ``stop`` (fusion is over). ``on_token`` is called with each token of the reply as it is decided
    (block mode: in bursts).
    ``repetition_penalty`` applies to the local logits over the reply (as the runtime's generate does).
    ``cloud_mask``: token ids dropped from every cloud top-k before fusion (the first tokens of the sanitizer's
    placeholders: the cloud saw "[private detail]" where the device knows the fact, so only the device may
    propose those tokens). ``cloud_deadline_s``: this long after the prompt is read the cloud is not asked again and the
    reply is finished locally (``fallback["reason"] == "deadline"``)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    t_start = time.perf_counter()
    res = CogenResult("", [], [], 0, "logits-block" if block else "logits", fuser.rule)
    run = FusionRun(decoder, cloud, [int(t) for t in cloud_prompt_ids], fuser, Sampler(sampling or SamplingConfig()),
                    Schedule.parse(schedule), res, max_new_tokens, {int(t) for t in stop_ids}, k,
                    RepetitionPenalty(repetition_penalty), {int(t) for t in cloud_mask}, guard_scan, cloud_view,
                    on_token, cloud_deadline_s)
    logits = run.start(local_prompt_ids)
    if block:
        run_blocks(run, logits, DraftSize(max(draft_k_min, min(draft_k, draft_k_max)), draft_k_min, draft_k_max,
                                          adapt_k))
    else:
        run_stepwise(run, logits)
    res.wall_s = time.perf_counter() - t_start
    res.local_s = run.loc.s
    if detokenize is not None:
        res.text = detokenize(res.tokens)
    return res


def ends_with_private_prefix(guard, text: str) -> bool:
    """True when ``text`` ends in the first letters of something private (`EgressGuard.pending`)."""
    return guard.pending(text)


def write_logits(
    instruction: str,
    context,
    model,
    cloud: CloudLogprobs | None,
    block: bool = False,
    rule: str = "learned",
    schedule: Schedule | tuple | str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    k: int = DEFAULT_K,
    weight: float = 0.5,
    net: FusionNet | None = None,
    guard=None,
    stop_on_flag: bool = True,
    draft_k: int = 4,
    draft_k_max: int = 16,
    adapt_k: bool = True,
    local_messages: list[dict] | None = None,
    cloud_messages: list[dict] | None = None,
    on_token: Callable[[int], None] | None = None,
    repetition_penalty: float = 1.0,
    placeholders: Sequence[str] = (),
    prefix_policy: str = "stop",
    cloud_deadline_s: float | None = None,
) -> CogenResult:
    """Write a reply to ``instruction`` with logit fusion (``block=True``: block fusion).

    The local model (an EdgeModel) gets ``with_context(instruction, context)``; the cloud gets
    ``without_context(instruction)`` as token ids plus the generated tokens. ``guard`` (an EgressGuard with the
    session's context) decides through a `PrefixPolicy` what of the reply the cloud may see when
    ``stop_on_flag``: ``prefix_policy="stop"`` ends fusion at the first private term, ``"redact"`` sends the
    reply with its private terms replaced by placeholders; both hold back a term still being spelled out. ``rule``: learned | mean | max | weight (``weight`` = the local model's share) | local
    | cloud. ``schedule``: (P, K, T), see :class:`cogenesis.cogen.fusion.Schedule`. ``placeholders``: the texts the
    sanitizer put into the cloud's instruction; the cloud may not propose their first tokens (``cloud_mask``).
    """
    from cogenesis.data.prompts import with_context, without_context

    local_msgs = local_messages or with_context(instruction, context)
    cloud_msgs = cloud_messages or without_context(instruction)
    fuser = Fuser(rule=rule, weight=weight, net=net, k=k)
    view = None
    if guard is not None and stop_on_flag:
        view = PrefixPolicy(guard, model.decode, lambda s: model.tokenizer.encode(s, add_special_tokens=False).ids,
                            prefix_policy)
        if prefix_policy == "redact":
            placeholders = sorted({*placeholders, *TERM_PLACEHOLDERS.values(), *PLACEHOLDERS})
    return cogenerate(
        model.decoder, model.encode(local_msgs), cloud, model.encode(cloud_msgs), fuser, block=block,
        schedule=schedule, max_new_tokens=max_new_tokens,
        sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
        stop_ids=model.stop_ids, k=k, draft_k=draft_k, draft_k_max=draft_k_max, adapt_k=adapt_k,
        cloud_view=view, cloud_deadline_s=cloud_deadline_s, detokenize=model.decode, on_token=on_token,
        repetition_penalty=repetition_penalty,
        cloud_mask=placeholder_ids(model.tokenizer, placeholders),
    )


def placeholder_ids(tokenizer, placeholders: Iterable[str]) -> set[int]:
    """First token ids of each placeholder text, alone and after a space (how it appears mid-sentence)."""
    ids: set[int] = set()
    for p in placeholders:
        for variant in (p, " " + p):
            enc = tokenizer.encode(variant, add_special_tokens=False).ids
            if enc:
                ids.add(int(enc[0]))
    return ids
