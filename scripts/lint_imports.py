"""Run import-linter's contracts (pyproject.toml, [tool.importlinter]) on the package as it is installed.

The design card's top-level folders (runtime/, export/, cloud_bridge/, calibration/) are mapped into the
`cogenesis` namespace by setuptools' package-dir. import-linter (grimp) finds subpackages by walking the root
package's folder, so on the source tree it reports "Module 'cogenesis.runtime' does not exist". This script
copies the .py files into a temporary folder laid out as the installed package, and runs `lint-imports` there.
Usage: python scripts/lint_imports.py   (exit status: lint-imports', 0 when every contract is kept)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def assemble(dest: Path) -> None:
    """Lay the package out as installed: each package-dir entry copied to its dotted place under `dest`."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool["package-dir"]
    for name in sorted(mapping, key=lambda n: n.count(".")):  # parents first, children replace their folder
        target = dest.joinpath(*name.split("."))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / mapping[name], target, ignore=shutil.ignore_patterns("*.pyc", "__pycache__", "csrc",
                                                                                   "results", "assets"))


def lint(tree: Path, capture: bool = False) -> subprocess.CompletedProcess:
    """Run lint-imports with this project's contracts on an assembled `tree`."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        raise FileNotFoundError(f"{lint_imports} not found: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run([str(lint_imports), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=capture, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cogenesis-layers-") as tmp:
        assemble(Path(tmp))
        try:
            return lint(Path(tmp)).returncode
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
