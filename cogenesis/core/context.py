"""The user's private context: what stays on the device.

One small dataclass that the prompt builders, the egress guard and the demo share. It is plain data:
profile fields (name, location, private facts...), past writings, and any extra text the user marks private.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WritingSample:
    title: str
    text: str


@dataclass
class PrivateContext:
    profile: dict[str, str] = field(default_factory=dict)
    history: list[WritingSample] = field(default_factory=list)
    private_texts: list[str] = field(default_factory=list)

    def spans(self) -> list[tuple[str, str]]:
        """Every private string with a label saying where it came from (for the egress guard)."""
        out = [(f"profile.{k}", v) for k, v in self.profile.items() if v and v.strip()]
        for i, s in enumerate(self.history):
            out.append((f"history[{i}].title", s.title))
            out.append((f"history[{i}].text", s.text))
        out += [(f"private[{i}]", t) for i, t in enumerate(self.private_texts) if t.strip()]
        return out

    def render(self, max_history: int | None = None, max_chars_per_sample: int | None = None) -> str:
        """A plain-text block for prompts: profile lines, then past writings."""
        lines = []
        if self.profile:
            lines.append("User profile:")
            lines += [f"{k}: {v}" for k, v in self.profile.items()]
        hist = self.history if max_history is None else self.history[:max_history]
        if hist:
            lines.append("")
            lines.append("Past writings by the user:")
            for s in hist:
                text = s.text if max_chars_per_sample is None else s.text[:max_chars_per_sample]
                lines.append(f"- {s.title}: {text}")
        for t in self.private_texts:
            lines.append("")
            lines.append(t)
        return "\n".join(lines).strip()

    def to_dict(self) -> dict:
        return {
            "profile": dict(self.profile),
            "history": [{"title": s.title, "text": s.text} for s in self.history],
            "private": list(self.private_texts),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "context") -> PrivateContext:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object with 'profile', 'history', 'private'; got {type(d).__name__}")
        prof = d.get("profile", {})
        if isinstance(prof, str):  # the authors' "Key: value\n..." block
            prof = parse_profile_block(prof)
        if not isinstance(prof, dict):
            raise ValueError(f"{where}: 'profile' must be an object of field -> text")
        hist = []
        for i, h in enumerate(d.get("history", []) or []):
            if not isinstance(h, dict) or "text" not in h:
                raise ValueError(f"{where}: history[{i}] must be an object with 'title' and 'text'")
            hist.append(WritingSample(str(h.get("title", "")), str(h["text"])))
        priv = d.get("private", []) or []
        if isinstance(priv, str):
            priv = [priv]
        return cls({str(k): str(v) for k, v in prof.items()}, hist, [str(p) for p in priv])

    @classmethod
    def load(cls, path: str | Path) -> PrivateContext:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"private context file not found: {p} (pass a JSON file with 'profile' and 'history')")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        return cls.from_dict(d, where=str(p))


def parse_profile_block(block: str) -> dict[str, str]:
    """Parse the authors' 'Age: ...\\nName: ...' profile string into fields (continuation lines are joined)."""
    out: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        head, sep, rest = line.partition(":")
        if sep and head.strip() and len(head) < 40 and " " not in head.strip().replace("_", ""):
            key = head.strip()
            out[key] = rest.strip()
        elif key is not None and line.strip():
            out[key] = (out[key] + " " + line.strip()).strip()
    return out
