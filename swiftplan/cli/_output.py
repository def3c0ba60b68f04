"""Shared output helpers for CLI verbs: one console, one JSON printer."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from rich.console import Console, RenderableType
from rich.measure import Measurement

console = Console()

UNBOUNDED_WIDTH = 10_000
"""Columns to measure a renderable in, so that its natural width is not clamped to the terminal's."""


def natural_width(renderable: RenderableType) -> int:
    """Columns `renderable` needs to show every cell without folding."""
    return Measurement.get(console, console.options.update_width(UNBOUNDED_WIDTH), renderable).maximum


def fits_terminal(renderable: RenderableType) -> bool:
    """Whether `renderable` shows in the terminal's width with every cell on one line."""
    return natural_width(renderable) <= console.width


def print_unfolded(renderable: RenderableType) -> None:
    """Print at the renderable's natural width even past the terminal's (for --wide): lines run long
    instead of cells folding."""
    terminal_width, console.width = console.width, max(console.width, natural_width(renderable))
    try:
        console.print(renderable)
    finally:
        console.width = terminal_width


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def print_json(payload: Any) -> None:
    """Print one JSON object to stdout (for --json), strict JSON: a number that is not finite (a time
    or cost that overflowed) is null, never the `Infinity` or `NaN` that jq and JavaScript refuse."""
    text = json.dumps(payload, indent=2, default=_default)
    if "Infinity" in text or "NaN" in text:  # cheap test; the round trip changes only the bare constants
        text = json.dumps(json.loads(text, parse_constant=lambda _: None), indent=2, allow_nan=False)
    sys.stdout.write(text + "\n")
