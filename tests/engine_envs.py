"""Where the engine tests find each framework's own environment (built by scripts/engine_envs.sh).

An engine test feeds a rendered command or config to that framework's own parser inside its venv, in
a subprocess; when the venv is missing (a clean checkout, CI) the test skips and says how to build it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(os.environ.get("SWIFTPLAN_ENGINE_ENVS", "/work/envs"))
"""Where scripts/engine_envs.sh puts the environments."""


def env_python(name: str) -> Path:
    """The python of engine env `name`, or skip the test saying why."""
    env = ROOT / name
    python = env / "bin" / "python"
    if not (env / ".ok").is_file() or not python.is_file():
        log = env / "install.log"
        why = f" (its last build failed: {log})" if log.is_file() else ""
        pytest.skip(f"engine env {name!r} not built at {env}{why}; run scripts/engine_envs.sh {name}")
    return python


def run_in_env(name: str, script: str, payload: Any, *, timeout_s: float = 600) -> dict[str, Any]:
    """Run `script` with env `name`'s python, `payload` as JSON on stdin; its last stdout line is JSON."""
    python = env_python(name)
    result = subprocess.run(
        [str(python), "-c", script], input=json.dumps(payload), capture_output=True, text=True,
        timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(f"{name} validator failed (rc {result.returncode}):\n{result.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def version_of(name: str, package: str) -> str:
    """The installed version of `package` in env `name` (from its freeze.txt)."""
    for line in (ROOT / name / "freeze.txt").read_text().splitlines():
        if line.lower().startswith(package.lower() + "=="):
            return line.split("==", 1)[1]
    return "unknown"
