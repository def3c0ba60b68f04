"""A measured series over the steps of a run, with the plan's predicted values as dashed lines."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from swiftplan.tui.plot import Axis, BrailleCanvas, axis_for, short_number
from swiftplan.tui.runs import Series

MEASURED, SECOND, PREDICTED = 1, 0, 5
STYLES = {MEASURED: "bright_cyan", SECOND: "blue", PREDICTED: "yellow", 6: "bright_red"}
PREDICTED_CHARS = ("┄", "╌")
"""Dash of the first and second predicted line."""
Y_MARGIN = 7
OFF_SCALE_FACTOR = 10.0
"""A prediction more than this many times above (or below) every measured value is named in the title,
not drawn: stretching the axis to it would flatten the measured line (a GPU plan's tokens/s against
a CPU run)."""


def on_scale(series: Series) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    """(predictions drawn on the axis, predictions too far from the measurements to share it)."""
    measured = [v for v in (*series.values, *series.second) if v > 0]
    if not measured:
        return series.predicted, ()
    lo, hi = min(measured) / OFF_SCALE_FACTOR, max(measured) * OFF_SCALE_FACTOR
    drawn = tuple(p for p in series.predicted if lo <= p[1] <= hi)
    return drawn, tuple(p for p in series.predicted if p not in drawn)


def value_axis(series: Series, predicted: tuple[tuple[str, float], ...]) -> Axis:
    """The y axis over the measurements and the drawn predictions; never below 0 for data that is not."""
    values = [*series.values, *series.second, *(value for _, value in predicted)]
    axis = axis_for(values)
    if axis.lo < 0 <= min(values, default=0.0):
        return Axis(lo=0.0, hi=axis.hi)
    return axis


class SeriesPlot(Widget):
    """Title and legend on the first row, the braille plot, the steps underneath."""

    DEFAULT_CSS = """
    SeriesPlot { height: 1fr; min-height: 4; }
    """
    can_focus = True

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.series: Series | None = None

    def show(self, series: Series | None) -> None:
        """Draw this series."""
        self.series = series
        self.refresh()

    def _title(self, series: Series) -> Text:
        title = Text.assemble((series.title, "bold"), "  ")
        if series.values:
            title.append("⠶ ", style=STYLES[MEASURED])
            title.append(f"{series.label} {short_number(series.values[-1])}  ")
        if series.second:
            title.append("⠶ ", style=STYLES[SECOND])
            title.append(f"{series.second_label} {short_number(series.second[-1])}  ")
        for (label, value), style, dash in zip(
            series.predicted, (PREDICTED, 6), PREDICTED_CHARS, strict=False
        ):
            title.append(f"{dash * 2} ", style=STYLES[style])
            title.append(f"{label} {short_number(value)}  ")
        if not series.predicted:
            title.append("(no prediction)", style="dim")
        off = on_scale(series)[1]
        if off:
            title.append("(" + ", ".join(label for label, _ in off) + " off scale)", style="dim")
        return title

    def render(self) -> Text:
        series = self.series
        if series is None:
            return Text("")
        out = self._title(series)
        out.no_wrap, out.overflow = True, "crop"
        width, height = self.size.width - Y_MARGIN - 1, self.size.height - 2
        if not series.values or width < 8 or height < 1:
            out.append("\n" + ("no steps logged yet" if not series.values else ""), style="dim")
            return out
        drawn = on_scale(series)[0]
        y_axis = value_axis(series, drawn)
        x_axis = Axis(lo=series.steps[0], hi=series.steps[-1]) if len(series.steps) > 1 else Axis(lo=0, hi=series.steps[0] or 1)  # fmt: skip
        canvas = BrailleCanvas(width, height)
        for values, layer in ((series.second, SECOND), (series.values, MEASURED)):
            points = [
                (x_axis.fraction(s), y_axis.fraction(v)) for s, v in zip(series.steps, values, strict=False)
            ]
            for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
                canvas.line(x0, y0, x1, y1, layer)
            if len(points) == 1:
                canvas.dot(*points[0], layer)
        for (label, value), layer, dash in zip(
            series.predicted, (PREDICTED, 6), PREDICTED_CHARS, strict=False
        ):
            if (label, value) not in drawn:
                continue
            _, row = canvas.cell_of(0.0, y_axis.fraction(value))
            for col in range(width):
                canvas.overlay(col, row, dash, layer)
        out.append("\n")
        for index, cells in enumerate(canvas.rows()):
            label = ""
            if index in (0, height - 1):
                label = short_number(y_axis.value_at(1.0 - index / max(1, height - 1)))
            out.append(f"{label:>{Y_MARGIN - 1}} │", style="dim")
            for char, layer in cells:
                out.append(char, style=STYLES.get(layer, ""))
            out.append("\n")
        first, last = f"step {series.steps[0]}", f"{series.steps[-1]}"
        out.append(
            " " * (Y_MARGIN + 1) + first + " " * max(1, width - len(first) - len(last)) + last, style="dim"
        )
        return out
