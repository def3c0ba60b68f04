"""Tab 3: the live search: candidates evaluated, the best so far, and the scatter of time vs memory."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from swiftplan.tui.search import SearchSnapshot
from swiftplan.tui.widgets.scatter import LEGEND, CandidateScatter


class SearchPane(Vertical):
    """Status line, best-so-far line, the scatter and its legend."""

    DEFAULT_CSS = """
    SearchPane { padding: 0 1; }
    SearchPane #search-status { text-style: bold; }
    SearchPane #search-best { color: $success; height: auto; }
    SearchPane #search-legend { color: $text-muted; }
    """
    BINDINGS = [
        Binding("r", "app.search", "Restart search"),
        Binding("x", "app.cancel_search", "Cancel search"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("No search yet: fill in the job (2) and press ctrl+r.", id="search-status")
        yield Static("", id="search-best")
        yield CandidateScatter(id="search-plot")
        yield Static(LEGEND, id="search-legend")

    def show_started(self, title: str) -> None:
        """A search began (its title says what is searched)."""
        self.query_one("#search-status", Static).update(f"Searching… {title}")
        self.query_one("#search-best", Static).update("")
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
