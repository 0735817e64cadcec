"""Constants and errors shared by the synthesis modules."""

from __future__ import annotations

STEPS = ("groups", "profiles", "tasks", "texts")
EXPORT_NAME = "context_aware_synth.json"

DOMAIN_HINTS = (
    "healthcare workers",
    "teachers and school staff",
    "small business owners",
    "skilled trades",
    "software and tech workers",
    "university students",
    "retirees",
    "artists and freelancers",
    "finance and office professionals",
    "parents and caregivers",
    "hospitality and service workers",
    "farmers and rural residents",
    "public servants",
    "athletes and fitness coaches",
    "scientists and researchers",
    "immigrants building a new life",
)
"""Rotated into the group prompts so that small models do not return the same portrait every time."""


class SynthError(RuntimeError):
    """Base error of the synthesis pipeline."""


class GeneratorError(SynthError):
    """The chat endpoint failed (transport error, HTTP error) after the allowed retries."""


class SynthesisAborted(SynthError):
    """Too many units in a row failed on the endpoint; the run stopped (resume by running again)."""
