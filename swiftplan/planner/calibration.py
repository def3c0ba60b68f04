"""Read-only access to the calibration constants in profiles/calibration.json."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _calibration() -> dict[str, Any]:
    text = resources.files("swiftplan.profiles").joinpath("calibration.json").read_text()
    return json.loads(text)


def constant(section: str, name: str) -> float:
    """The value of calibration constant `section.name`."""
    return float(_calibration()[section][name]["value"])


def constant_source(section: str, name: str) -> str:
    """Where calibration constant `section.name` came from (and whether it is still a prior)."""
    entry = _calibration()[section][name]
    return f"{entry['source']} [{entry['status']}]"
