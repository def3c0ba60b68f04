"""README.md leads with the two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_install_and_test_commands():
    first, second = _readme_commands()[:2]
    assert first.startswith("pip install . && swiftplan ")
    assert "pytest" in second and "torch==2.13.0" in second


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    normalised = test_command.replace('"', "").replace("'", "")
    assert any(line.replace('"', "").replace("'", "") == normalised for line in ci_lines)
