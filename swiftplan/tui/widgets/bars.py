"""A plan's per-GPU memory as one stacked bar against the device, with a legend in GiB."""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from swiftplan.tui.plans import MemoryBar, memory_legend
from swiftplan.units import GiB

TERM_STYLES = {
    "weights": "dodger_blue2",
    "adapters": "magenta",
    "gradients": "deep_pink3",
    "optimizer": "dark_orange",
    "master_weights": "red3",
    "activations": "green3",
    "logits": "gold1",
    "kv_cache": "cyan",
    "transient": "wheat1",
    "runtime_overhead": "grey50",
}


class MemoryBars(Widget):
    """Terms stacked left to right (each at its own largest), free memory dotted, the limit and the
    device total marked underneath."""

    DEFAULT_CSS = """
    MemoryBars { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.bar: MemoryBar | None = None

    def show(self, bar: MemoryBar | None) -> None:
        """Draw this breakdown."""
        self.bar = bar
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 if self.bar is None else len(self.render().wrap(self.app.console, width))

    def render(self) -> Text:
        bar = self.bar
        if bar is None:
            return Text("No plan selected.", style="dim")
        width = max(10, self.size.width or 60)
        scale = max(bar.budget_bytes, sum(size for _, size in bar.terms), bar.device_total_bytes)
        out = Text(no_wrap=False)
        used = 0
        drawn = 0
        for name, size in bar.terms:
            used += size
            end = round(used / scale * width)
            out.append("█" * (end - drawn), style=TERM_STYLES[name])
            drawn = end
        budget_end = round(bar.budget_bytes / scale * width)
        out.append("░" * max(0, budget_end - drawn), style="dim")
        out.append("\n")
        marks = [" "] * width
        for size, char in ((bar.limit_bytes, "┆"), (bar.device_total_bytes, "▲")):
            marks[min(width - 1, round(size / scale * width))] = char
        out.append("".join(marks) + "\n", style="bold")
        column = 0
        for name, size in bar.terms:
            entry = f"{name.replace('_', ' ')} {size / GiB:.2f} GiB"
            if column and column + 3 + len(entry) + 2 > width:
                out.append("\n")
                column = 0
            elif column:
                out.append("   ")
                column += 3
            out.append("■ ", style=TERM_STYLES[name])
            out.append(entry)
            column += len(entry) + 2
        out.append("\n")
        out.append(f"▲ device total, ┆ limit · {memory_legend(bar)}", style="dim")
        return out
