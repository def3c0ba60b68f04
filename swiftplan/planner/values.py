"""What counts as a number in a hand-written file (config.json, a price file): JSON and YAML give ints,
floats and booleans alike, and `true` or `NaN` must not pass for one."""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """An int or float that is not a bool, NaN or infinite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def is_positive_number(value: Any) -> bool:
    """A finite number above zero."""
    return is_finite_number(value) and value > 0


def is_whole_number(value: Any) -> bool:
    """A finite number with no fractional part (JSON may spell 4096 as 4096.0 or 4.096e3)."""
    return is_finite_number(value) and float(value).is_integer()
