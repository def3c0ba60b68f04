"""The live scatter of search candidates: memory per GPU (x) against time (y, log scale)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from swiftplan.tui.plot import Axis, BrailleCanvas, axis_for
from swiftplan.tui.search import SearchSnapshot
from swiftplan.units import GiB, format_duration_short

LAYERS = {"infeasible": 0, "feasible": 1, "front": 2, "best": 3}
STYLES = {0: "red", 1: "green", 2: "bold yellow", 3: "bold bright_cyan", 9: "dim magenta"}
Y_MARGIN = 7
"""Columns for the y tick labels."""
LEGEND = Text.assemble(
    ("⠿ ", STYLES[0]),
    "over a limit  ",
    ("⠿ ", STYLES[1]),
    "fits  ",
    ("⠿ ", STYLES[2]),
    "time-vs-memory front  ",
    ("★ ", STYLES[3]),
    "best  ",
    ("┆ ", STYLES[9]),
    "memory limit",
)
"""What the colours mean (shown under the plot)."""


class CandidateScatter(Widget):
    """Every candidate with an estimate, coloured by feasibility; the limit as a dotted column."""

    DEFAULT_CSS = """
    CandidateScatter { height: 1fr; min-height: 6; }
    """
    can_focus = True

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.snapshot: SearchSnapshot | None = None

    def show(self, snapshot: SearchSnapshot | None) -> None:
        """Draw these candidates."""
        self.snapshot = snapshot
        self.refresh()

    def render(self) -> Text:
        snapshot = self.snapshot
        if snapshot is None or not snapshot.points:
            return Text("No candidates yet: fill in the job (2) and press ctrl+r to search.", style="dim")
        width, height = self.size.width - Y_MARGIN - 1, self.size.height - 3
        if width < 8 or height < 2:
            return Text(f"{snapshot.evaluated} candidates")
        gib = [p.memory_bytes / GiB for p in snapshot.points]
        limit, budget = snapshot.limit_bytes / GiB, snapshot.budget_bytes / GiB
        x_axis = Axis(lo=0.0, hi=max(budget * 1.1, min(max(gib), budget * 2.5)))
        y_axis = axis_for((p.time_s for p in snapshot.points), log=True)
        canvas = BrailleCanvas(width, height)
        best = None
        for point, x in zip(snapshot.points, gib, strict=True):
            canvas.dot(x_axis.fraction(x), y_axis.fraction(point.time_s), LAYERS[point.kind])
            if point.kind == "best":
                best = canvas.cell_of(x_axis.fraction(x), y_axis.fraction(point.time_s))
        limit_col, _ = canvas.cell_of(x_axis.fraction(limit), 0.0)
        for row in range(height):
            canvas.overlay(limit_col, row, "┆", 9)
        if best is not None:
            canvas.overlay(*best, "★", 3, over_dots=True)
        return self._frame(canvas, x_axis, y_axis, snapshot.y_label)

    def _frame(self, canvas: BrailleCanvas, x_axis: Axis, y_axis: Axis, y_label: str) -> Text:
        rows = canvas.rows()
        height = len(rows)
        ticks = {0: y_axis.value_at(1.0), height - 1: y_axis.value_at(0.0)}
        if height >= 5:
            ticks[height // 2] = y_axis.value_at(1 - (height // 2) / (height - 1))
        out = Text(no_wrap=True, overflow="crop")
        out.append(f"↑ {y_label} (log scale)\n", style="dim")
        for index, row in enumerate(rows):
            label = format_duration_short(ticks[index]) if index in ticks else ""
            out.append(f"{label:>{Y_MARGIN - 1}} ┤" if label else " " * (Y_MARGIN - 1) + " │", style="dim")
            for char, layer in row:
                out.append(char, style=STYLES.get(layer, ""))
            out.append("\n")
        width = canvas.width
        out.append(" " * Y_MARGIN + "└" + "─" * width + "\n", style="dim")
        left, right = "0", f"{x_axis.hi:.0f} GiB/GPU"
        middle = f"{x_axis.value_at(0.5):.0f}"
        axis = [" "] * (width + 1)
        for pos, text in ((0, left), (width // 2, middle), (width + 1 - len(right), right)):
            for i, char in enumerate(text):
                if 0 <= pos + i < len(axis):
                    axis[pos + i] = char
        out.append(" " * Y_MARGIN + "".join(axis), style="dim")
        return out
