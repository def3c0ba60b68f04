"""Tab 5: a training run's loss, tokens/s and memory over the steps, next to the plan's predictions."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Static

from swiftplan.tui.runs import RunView
from swiftplan.tui.widgets.lines import SeriesPlot


class RunPane(Vertical):
    """Run directory field, status, three plots, notes."""

    DEFAULT_CSS = """
    RunPane { padding: 0 1; }
    RunPane #run-bar { height: 1; }
    RunPane #run-bar Label { width: auto; color: $text-muted; }
    RunPane #run-path { width: 1fr; }
    RunPane #run-status { text-style: bold; }
    RunPane #run-notes { color: $text-muted; height: auto; }
    """
    BINDINGS = [Binding("f", "app.follow_run", "Follow run")]

    def compose(self) -> ComposeResult:
        with Horizontal(id="run-bar"):
            yield Label("Run dir ")
            yield Input(placeholder="runs/<model>-<time> (enter opens)", compact=True, id="run-path")
            yield Label("", id="run-follow")
        yield Static(
            "Open a run directory written by `swiftplan train` (enter), f follows it live.", id="run-status"
        )
        yield SeriesPlot(id="run-loss")
        yield SeriesPlot(id="run-speed")
        yield SeriesPlot(id="run-memory")
        yield Static("", id="run-notes")

    def show(self, view: RunView) -> None:
        """Draw a run."""
        status = Text(view.status)
        status.append(f"  {view.plan_line}", style="dim")
        self.query_one("#run-status", Static).update(status)
        for widget_id, series in zip(("#run-loss", "#run-speed", "#run-memory"), view.series, strict=True):
            self.query_one(widget_id, SeriesPlot).show(series)
        self.query_one("#run-notes", Static).update("\n".join(view.notes))

    def show_error(self, message: str, hint: str | None) -> None:
        """The directory could not be read."""
        text = Text.assemble((message, "bold red"))
        if hint:
            text.append(f"  {hint}", style="dim")
        self.query_one("#run-status", Static).update(text)

    def show_following(self, following: bool) -> None:
        """Whether the run is re-read every few seconds."""
        self.query_one("#run-follow", Label).update(" following" if following else "")
