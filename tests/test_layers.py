"""The layer contracts (pyproject.toml, [tool.importlinter]) hold, and they are able to fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lint_imports", ROOT / "scripts" / "lint_imports.py")
lint_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint_imports)


@pytest.fixture()
def tree(tmp_path) -> Path:
    lint_imports.assemble(tmp_path)
    return tmp_path


def test_every_contract_is_kept(tree):
    r = lint_imports.lint(tree, capture=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 kept, 0 broken" in r.stdout


def test_the_assembled_tree_holds_every_package(tree):
    for pkg in ("runtime", "export", "cloud_bridge", "calibration", "core", "cogen", "eval", "cli", "data"):
        assert (tree / "cogenesis" / pkg / "__init__.py").is_file(), pkg


@pytest.mark.parametrize("module, line, contract", [
    ("runtime/edge.py", "import cogenesis.cli", "cli -> eval"),  # an upward import
    ("runtime/edge.py", "import torch", "the edge runtime runs without torch"),
    ("core/context.py", "import cogenesis.cloud_bridge.guard", "cli -> eval"),
    ("cloud_bridge/fields.py", "import cogenesis.cloud_bridge.guard", "no import circles"),
    ("eval/leakcheck.py", "import cogenesis.cloud_bridge.terms", "the leakage detector shares no code"),
])
def test_a_planted_violation_breaks_its_contract(tree, module, line, contract):
    path = tree / "cogenesis" / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")
    r = lint_imports.lint(tree, capture=True)
    assert r.returncode != 0
    broken = r.stdout.split("Broken contracts")[-1]
    assert contract in broken, r.stdout
