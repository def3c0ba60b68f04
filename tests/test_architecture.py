"""The planner stays pure (STYLE.md): import-linter's contract in pyproject.toml must hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_planner_imports_nothing_impure():
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter not installed (it is in the dev extra)")
    result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_importing_the_planner_loads_no_heavy_library():
    code = (
        "import sys, swiftplan.planner.estimate, swiftplan.planner.search.optimize\n"
        "print(sorted(m for m in ('torch','transformers','peft','pynvml','textual') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
