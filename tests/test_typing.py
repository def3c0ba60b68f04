"""The package type-checks: `mypy swiftplan` under the [tool.mypy] settings in pyproject.toml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 5 s with a warm .mypy_cache, about a minute cold (it reads torch's stubs)
def test_mypy_reports_no_errors():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (it is in the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "swiftplan"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
