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


HEAVY = ("torch", "transformers", "peft", "textual", "fastapi", "uvicorn", "vllm", "deepspeed", "matplotlib")
"""Libraries only the executors, the dashboard and plots may load (lazily, in their own commands)."""

LIGHT_COMMANDS = [
    ["--help"],
    ["models"],
    ["gpus"],
    ["estimate", "Qwen/Qwen2.5-7B", "--method", "qlora", "--gpus", "rtx4090", "--json"],
    ["estimate", "Qwen/Qwen2.5-7B", "--task", "serve", "--gpus", "l40s", "--json"],
    ["fit", "Qwen/Qwen2.5-7B", "--gpus", "rtx4090", "--json"],
    ["fit", "Qwen/Qwen2.5-7B", "--task", "serve", "--gpus", "l40s", "--json"],
    ["size", "Qwen/Qwen2.5-7B", "--task", "serve", "--concurrency", "8", "--json"],
]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=[" ".join(a[:2]) for a in LIGHT_COMMANDS])
def test_planning_commands_load_no_heavy_library(args):
    """As harlequin checks its entry points: run the real CLI, then look at what it imported."""
    code = (
        "import sys\nfrom swiftplan.cli import main\n"
        f"sys.argv = ['swiftplan', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), 'EXIT', code, file=sys.stderr)\n"
    )
    env = {"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] EXIT"), result.stderr[-2000:]
    assert last.endswith(("EXIT 0", "EXIT None")), result.stderr[-2000:]
