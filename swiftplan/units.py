"""Unit constants and the one place where bytes become human-readable figures."""

from __future__ import annotations

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


def parse_token_count(text: str) -> int:
    """'50M' / '1.5B' / '200k' / '12345' → integer token count."""
    raw = text.strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    if raw and raw[-1] in scale:
        return int(float(raw[:-1]) * scale[raw[-1]])
    return int(float(raw))
