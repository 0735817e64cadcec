"""Names every layer shares, in one place: the cache folder and the cloud API's environment variable and header."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COGENESIS_CACHE"
"""Where models, bundles, kernels and judge answers are cached (default ~/.cache/cogenesis)."""

API_KEY_ENV = "COGENESIS_CLOUD_API_KEY"
"""The cloud API key, read by the client and by `cogenesis cloud serve` when no key is passed."""

SESSION_HEADER = "X-Session-Id"
"""Names a co-generation session, so the reference server reuses its prefix cache (HTTP headers are
case-insensitive)."""


def cache_dir() -> Path:
    """The cache folder: $COGENESIS_CACHE, else ~/.cache/cogenesis."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cogenesis")
