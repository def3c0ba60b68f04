"""Text plotting for the dashboard: axes and a braille canvas. Pure: numbers in, characters out.

A terminal cell holds a 2 × 4 grid of braille dots, so a canvas of W × H cells has 2W × 4H points.
Each dot belongs to a layer (an int: higher wins), and a cell takes the colour of its highest
layer; `overlay` puts a whole character (a limit line, a marker) in a cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

BRAILLE_BLANK = 0x2800
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
"""Bit of each dot of a braille cell, by [row from the top][column]."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Axis:
    """A value range mapped onto [0, 1], linearly or on a log10 scale."""

    lo: float
    """Value at the start of the axis."""
    hi: float
    """Value at the end of the axis."""
    log: bool = False
    """log10 scale (values must be positive)."""

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ValueError(f"axis needs hi > lo, got {self.lo}..{self.hi}")
        if self.log and self.lo <= 0:
            raise ValueError(f"a log axis needs positive values, got lo={self.lo}")

    def fraction(self, value: float) -> float:
        """Where `value` falls, 0 at `lo` and 1 at `hi`, clipped to [0, 1]."""
        if self.log:
            value = max(value, self.lo)
            f = (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (value - self.lo) / (self.hi - self.lo)
        return min(1.0, max(0.0, f))

    def value_at(self, fraction: float) -> float:
        """Inverse of `fraction`."""
        if self.log:
            return 10 ** (math.log10(self.lo) + fraction * (math.log10(self.hi) - math.log10(self.lo)))
        return self.lo + fraction * (self.hi - self.lo)


def axis_for(values: Iterable[float], *, log: bool = False, zero: bool = False, pad: float = 0.05) -> Axis:
    """An axis covering `values` with a little padding; from 0 when `zero`. Degenerate ranges widen."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return Axis(lo=1.0, hi=10.0, log=True) if log else Axis(lo=0.0, hi=1.0)
    lo, hi = min(finite), max(finite)
    if log:
        lo, hi = lo / (1 + 4 * pad), hi * (1 + 4 * pad)
        return Axis(lo=lo, hi=hi if hi > lo else lo * 10, log=True)
    if zero:
        lo = min(0.0, lo)
    span = hi - lo or abs(hi) or 1.0
    lo = lo if zero and lo == 0 else lo - pad * span
    return Axis(lo=lo, hi=hi + pad * span)


class BrailleCanvas:
    """W × H cells of braille dots, each cell coloured by the highest layer drawn into it."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = max(1, width), max(1, height)
        self._bits = [[0] * self.width for _ in range(self.height)]
        self._layer = [[-1] * self.width for _ in range(self.height)]
        self._chars: dict[tuple[int, int], tuple[str, int]] = {}

    def dot(self, fx: float, fy: float, layer: int = 0) -> None:
        """A dot at fractions (fx from the left, fy from the bottom) of the canvas."""
        px = min(2 * self.width - 1, max(0, int(fx * (2 * self.width - 1) + 0.5)))
        py = min(4 * self.height - 1, max(0, int((1 - fy) * (4 * self.height - 1) + 0.5)))
        self._set(px, py, layer)

    def _set(self, px: int, py: int, layer: int) -> None:
        cx, cy = px // 2, py // 4
        self._bits[cy][cx] |= _DOT_BITS[py % 4][px % 2]
        self._layer[cy][cx] = max(self._layer[cy][cx], layer)

    def line(self, fx0: float, fy0: float, fx1: float, fy1: float, layer: int = 0) -> None:
        """A straight line of dots between two points given as fractions."""
        x0, x1 = fx0 * (2 * self.width - 1), fx1 * (2 * self.width - 1)
        y0, y1 = (1 - fy0) * (4 * self.height - 1), (1 - fy1) * (4 * self.height - 1)
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(steps + 1):
            t = i / steps
            px = int(x0 + (x1 - x0) * t + 0.5)
            py = int(y0 + (y1 - y0) * t + 0.5)
            self._set(min(2 * self.width - 1, max(0, px)), min(4 * self.height - 1, max(0, py)), layer)

    def cell_of(self, fx: float, fy: float) -> tuple[int, int]:
        """The cell (column, row from the top) holding the point at fractions (fx, fy)."""
        cx = min(self.width - 1, max(0, int(fx * (2 * self.width - 1) + 0.5) // 2))
        cy = min(self.height - 1, max(0, int((1 - fy) * (4 * self.height - 1) + 0.5) // 4))
        return cx, cy

    def overlay(self, cx: int, cy: int, char: str, layer: int, *, over_dots: bool = False) -> None:
        """Put `char` in a cell: always when `over_dots`, else only where no dot was drawn."""
        if not (0 <= cx < self.width and 0 <= cy < self.height):
            return
        if over_dots or not self._bits[cy][cx]:
            self._chars[(cx, cy)] = (char, layer)

    def rows(self) -> list[list[tuple[str, int]]]:
        """Each row from the top: (character, layer) per cell; layer -1 for an empty cell."""
        out = []
        for cy in range(self.height):
            row = []
            for cx in range(self.width):
                if (cx, cy) in self._chars:
                    row.append(self._chars[(cx, cy)])
                elif self._bits[cy][cx]:
                    row.append((chr(BRAILLE_BLANK + self._bits[cy][cx]), self._layer[cy][cx]))
                else:
                    row.append((" ", -1))
            out.append(row)
        return out


def short_number(value: float) -> str:
    """Compact tick label: 950, 1.2k, 35M, 0.42, 3e-05."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    if magnitude >= 0.01:
        return f"{value:.3g}"
    return f"{value:.0e}"


def meter(fraction: float, width: int) -> str:
    """A bar of `width` cells filled to `fraction` (eighths of a cell): '█████▍    '."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return bar.ljust(width)
