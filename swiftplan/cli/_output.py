"""Shared output helpers for CLI verbs: one console, one JSON printer."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from rich.console import Console

console = Console()


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def print_json(payload: Any) -> None:
    """Print one JSON object to stdout (for --json)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=_default) + "\n")
