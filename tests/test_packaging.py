"""Every Python package in the source tree is in pyproject's package list (a wheel would silently drop it)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / d for name, d in cfg["package-dir"].items()}
    found = set()
    for top, d in dirs.items():
        for init in d.rglob("__init__.py"):
            rel = init.parent.relative_to(d).parts
            if any(p.startswith(".") or p == "__pycache__" for p in rel):
                continue
            found.add(".".join((top, *rel)))
    missing = sorted(found - set(cfg["packages"]))
    assert not missing, f"packages not in pyproject.toml [tool.setuptools] packages: {missing}"
