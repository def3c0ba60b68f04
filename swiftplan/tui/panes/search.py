"""Tab 3: the live search: candidates evaluated, the best so far, and the scatter of time vs memory; with the
job's measure switch on, the top candidates' measured tokens/s beside the predicted ones under the status."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from swiftplan.tui.measure import MEASURE_COLUMNS, MeasureView, row_cells
from swiftplan.tui.search import SearchSnapshot
from swiftplan.tui.widgets.scatter import LEGEND, CandidateScatter


class SearchPane(Vertical):
    """Status line, best-so-far line, the scatter and its legend."""

    DEFAULT_CSS = """
    SearchPane { padding: 0 1; }
    SearchPane #search-status { text-style: bold; }
    SearchPane #search-best { color: $success; height: auto; }
    SearchPane #search-legend { color: $text-muted; }
    SearchPane #search-measure-box { height: auto; max-height: 50%; display: none; }
    SearchPane #search-measure { height: auto; }
    """
    BINDINGS = [
        Binding("r", "app.search", "Restart search"),
        Binding("x", "app.cancel_search", "Cancel search"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("No search yet: fill in the job (2) and press ctrl+r.", id="search-status")
        yield Static("", id="search-best")
        with VerticalScroll(id="search-measure-box"):  # a long measurement scrolls; the scatter keeps half
            yield Static("", id="search-measure")
        yield CandidateScatter(id="search-plot")
        yield Static(LEGEND, id="search-legend")

    def show_started(self, title: str) -> None:
        """A search began (its title says what is searched)."""
        self.query_one("#search-status", Static).update(f"Searching… {title}")
        self.query_one("#search-best", Static).update("")
        self.query_one("#search-measure-box").display = False
        self.query_one(CandidateScatter).show(None)

    def show_progress(
        self, snapshot: SearchSnapshot, *, done: bool = False, title: str = "", hint: str = ""
    ) -> None:
        """Candidates so far (and, when done, what to do next)."""
        state = "Done" if done else "Searching…"
        status = f"{state} {snapshot.evaluated} candidates evaluated, {snapshot.feasible} fit"
        if title:
            status += f" · {title}"
        self.query_one("#search-status", Static).update(status)
        best = Text.assemble(("best: " if done else "best so far: ", "bold"))
        best.append(snapshot.best_line or "none fits yet")
        if hint:
            best.append(f"\n{hint}", style="bold")
        self.query_one("#search-best", Static).update(best)
        self.query_one(CandidateScatter).show(snapshot)

    def show_status(self, text: str, style: str = "") -> None:
        """A one-line state: cancelled, failed."""
        self.query_one("#search-status", Static).update(Text(text, style=style))

    def _measure(self, content: Text | Group) -> None:
        self.query_one("#search-measure", Static).update(content)
        self.query_one("#search-measure-box").display = True

    def show_measuring(self, text: str) -> None:
        """The measurement after the search: what runs now."""
        self._measure(Text(text, style="bold"))

    def show_measure_stopped(self, message: str, hint: str | None, *, cancelled: bool) -> None:
        """The measurement was cancelled or failed (the search's plans stand)."""
        text = Text(message, style="yellow" if cancelled else "bold red")
        if hint:
            text.append(f"\n{hint}", style="dim")
        self._measure(text)

    def show_measured(self, view: MeasureView) -> None:
        """Predicted against measured tokens/s and peak memory of each candidate, OOM or why it was skipped."""
        table = Table(title=view.title, title_justify="left", box=None, padding=(0, 1), expand=False)
        for name in MEASURE_COLUMNS:
            table.add_column(
                name, justify="left" if name == "candidate" else "right", no_wrap=name != "candidate"
            )
        for index, row in enumerate(view.rows, 1):
            cells = row_cells(index, row)
            style = "bold green" if row.rank == 1 else "red" if row.oom else "dim" if row.skipped else ""
            table.add_row(*cells, style=style)
        caveat = Text(view.caveat, style="bold yellow")  # first, where a short screen still shows it
        self._measure(
            Group(*([caveat] if view.caveat else []), table, Text("\n".join(view.notes), style="dim"))
        )
