"""Unit constants and the one place where bytes become human-readable figures."""

from __future__ import annotations

import math

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 10**9
TB = 10**12


def gib(num_bytes: float) -> float:
    """Bytes → GiB (2^30 bytes)."""
    return num_bytes / GiB


def format_gib(num_bytes: float, digits: int = 2) -> str:
    """Bytes as a 'x.xx GiB' string."""
    return f"{num_bytes / GiB:.{digits}f} GiB"


_DURATION_STEPS = ((120, 1, "s", "s"), (7200, 60, "min", "m"), (3 * 86400, 3600, "h", "h"))
"""(below this many seconds, divide by, long unit, short unit); longer spans are days."""


def format_duration(seconds: float) -> str:
    """A duration for people, the same everywhere: '45 s', '90 min', '3.4 h', '2.1 days' (5,400 s → '90 min')."""
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"
    for limit, scale, unit, _ in _DURATION_STEPS:
        if seconds < limit:
            value = seconds / scale
            return f"{value:.1f} {unit}" if unit == "h" else f"{value:.0f} {unit}"
    return f"{seconds / 86400:.1f} days"


def format_duration_short(seconds: float) -> str:
    """The same steps, compact for axis ticks: '52ms', '40s', '90m', '3.4h', '2.1d'."""
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    for limit, scale, _, short in _DURATION_STEPS:
        if seconds < limit:
            return f"{seconds / scale:.3g}{short}"
    return f"{seconds / 86400:.3g}d"


def format_usd(value: float) -> str:
    """'$1,234' (whole dollars from $100), '$12.34' from $1, three significant figures below ('$0.0163')."""
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value >= 1 else f"${value:.3g}"


def parse_token_count(text: str) -> int:
    """'50M' / '1.5B' / '200k' / '12345' → integer token count; ValueError for anything else, including
    'inf', 'nan', numbers too large for a float ('1e400') and a fraction of a token ('0.5', '2.5')."""
    raw = text.strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    number, factor = (raw[:-1], scale[raw[-1]]) if raw and raw[-1] in scale else (raw, 1)
    try:
        value = float(number) * factor
    except ValueError:
        raise ValueError(f"token count {text!r} is not a number (with an optional k, M, B or T)") from None
    if not math.isfinite(value):
        raise ValueError(f"token count {text!r} is not a finite number")
    if 0 < value < 1:
        raise ValueError(f"token count {text!r} is less than one token")
    whole = round(value)
    if abs(value - whole) > 1e-9 * max(1.0, value):  # '1.1B' is 1100000000.0000002 in floating point
        raise ValueError(f"token count {text!r} is not a whole number of tokens")
    return whole
