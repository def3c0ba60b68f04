"""The rules the three fit scripts (calibrate.py, fit_training_speed.py, fit_serving_speed.py) share when they
write calibration.json: a fit that is not trusted is recorded in the constant's source and not written, and a
constant the fit set cannot inform says so; both replace the note of the previous fit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FIT_NOTE = " [fit "
"""Where a constant's own source ends and the note of the latest fit begins."""


def leave_one_out_text(values: Iterable[float]) -> str:
    """'; leave-one-out LO..HI' over the leave-one-out fits of one constant ('; no leave-one-out' without any)."""
    ordered = sorted(values)
    return f"; leave-one-out {ordered[0]:g}..{ordered[-1]:g}" if ordered else "; no leave-one-out (one row)"


def note_untrusted(entry: dict[str, Any], *, value: float, rows: str, trust: str, today: str) -> None:
    """Record an untrusted fit (a grid edge, one row, or a leave-one-out range wider than the value) in the
    constant's source; its value stays what it was."""
    base = entry["source"].split(FIT_NOTE)[0]
    entry["source"] = (
        f"{base}{FIT_NOTE}{today}: {value:g} on {rows}{trust} is not trusted (a grid edge, one row, or a "
        "leave-one-out range wider than the value): this value kept]"
    )


def note_kept(entry: dict[str, Any], *, why: str, today: str) -> None:
    """Record why the fit left a constant at its prior (no fit-set row can inform it)."""
    base = entry["source"].split(FIT_NOTE)[0]
    entry["source"] = f"{base}{FIT_NOTE}{today}: prior kept, {why}]"
