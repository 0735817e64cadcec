"""What the cloud may see of the reply the device is writing: the logits modes' prefix policy.

In the logits modes every cloud request carries the reply generated so far, and that reply was written by a
model that read the private context. The policy looks at the generated ids (and, in block mode, the drafts)
before each request and answers one of:

* ``send``: nothing private in it; the ids go out as they are (bit-identical to a session without policy).
* ``hold``: the text ends in the first letters of a private term ("... Pem" of "Pemberlot", "... +44 77" of a
  phone number), or this round's drafts reach a private term: this step (round) is decided on the device
  alone and fusion goes on once the word is complete and shown to be public.
* ``stop`` (policy ``stop``): the reply contains a private term; the cloud is not consulted again and the reply
  is finished locally.
* ``send`` a **redacted** prefix (policy ``redact``): the reply with every private term replaced by its
  placeholder ("[NAME]", "[NUMBER]"...), re-encoded; fusion continues. The placeholders' first tokens are
  masked out of the cloud's proposals, so only the device writes them.

"Private" is what the session's `EgressGuard` finds (its private-term model, identifiers, verbatim spans,
patterns), so the cloud never sees a generated prefix the guard would refuse, and never the first pieces of
a term that is still being spelled out across tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

POLICIES = ("stop", "redact")


@dataclass(frozen=True)
class PrefixView:
    action: str  # send | hold | stop
    prefix: list[int]  # the generated ids to send (redacted under the redact policy)
    reason: str = ""


class PrefixPolicy:
    """Callable ``(generated ids, draft ids) -> PrefixView`` for `cogenesis.cogen.logits.cogenerate`."""

    def __init__(self, guard, decode: Callable[[list[int]], str], encode: Callable[[str], list[int]],
                 policy: str = "stop"):
        if policy not in POLICIES:
            raise ValueError(f"prefix_policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.guard, self.decode, self.encode, self.policy = guard, decode, encode, policy
        self.held = 0  # steps or rounds decided locally because a term was being spelled out
        self.redacted = 0  # requests whose prefix was redacted

    def __call__(self, gen: Sequence[int], drafts: Sequence[int] = ()) -> PrefixView:
        gen, drafts = list(gen), list(drafts)
        if not gen and not drafts:
            return PrefixView("send", gen)
        text = self.decode(gen + drafts)
        if self._pending(text):
            return self._hold("the reply ends in the first letters of a private term")
        found = self.guard.scan_text(text)
        if not found:
            return PrefixView("send", gen)
        gen_text = self.decode(gen)
        if drafts and any(f.end > len(gen_text.rstrip("\ufffd")) for f in found):
            # the drafts reach into something private (a name the prefix only began: "Mbeki" + "-Stone")
            return self._hold("this round's drafts reach a private term")
        if self.policy == "stop":
            return PrefixView("stop", gen, "the reply contains a private term; finished on the device")
        red = self.guard.sanitize(gen_text).text
        if self.guard.scan_text(red):
            return PrefixView("stop", gen, "the redacted reply still matched the private context")
        if self._pending(red):
            return self._hold("the redacted reply ends in the first letters of a private term")
        self.redacted += 1
        return PrefixView("send", self.encode(red))

    def _hold(self, reason: str) -> PrefixView:
        self.held += 1
        return PrefixView("hold", [], reason)

    def _pending(self, text: str) -> bool:
        return self.guard.pending(text)
