"""Size limits of the code (issue 16): no module over 500 lines, no function over 80 (def line to last line).

Measured here on the source tree with `ast`, so a new long function fails this test, not a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cogenesis", "runtime", "export", "cloud_bridge", "calibration")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_measure_sees_the_code():
    mods = _modules()
    assert len(mods) > 60 and any(p.name == "guard.py" for p in mods)


def test_no_module_over_the_limit():
    over = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules()
            if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_over_the_limit():
    over = [f for p in _modules() for f in _long_functions(p)]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


@pytest.mark.parametrize("lines, expected", [(80, []), (81, ["x.py:1 f (81 lines)"])])
def test_the_function_measure_can_fail(tmp_path, monkeypatch, lines, expected):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    p = tmp_path / "x.py"
    p.write_text("def f():\n" + "    x = 1\n" * (lines - 2) + "    return x\n")
    assert _long_functions(p) == expected
