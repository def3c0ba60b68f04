"""Tab 4: the plans a search found; the runtime and knobs they were planned with; the selected one's
memory against the budget, speed and bound (and what a measurement after the search found for it), why other
families lost, and the command that runs it once saved."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from swiftplan.tui.plans import PlanChoice, SearchOutcome
from swiftplan.tui.widgets.bars import MemoryBars


class PlanPane(Vertical):
    """Plan table on top; details of the highlighted row underneath (scrolls)."""

    DEFAULT_CSS = """
    PlanPane { padding: 0 1; }
    PlanPane #plan-title { text-style: bold; }
    PlanPane #plan-runtime { color: $text-muted; display: none; }
    PlanPane DataTable { height: auto; max-height: 7; scrollbar-size-horizontal: 0; }
    PlanPane #plan-detail { height: 1fr; }
    PlanPane #plan-summary { text-style: bold; margin: 1 0 0 0; }
    PlanPane #plan-speed { margin: 1 0 0 0; }
    PlanPane #plan-measured { color: $warning; display: none; }
    PlanPane #plan-why { margin: 1 0 0 0; }
    PlanPane #plan-command { margin: 1 0 0 0; }
    """
    BINDINGS = [
        Binding("s", "app.save_plan", "Save plan"),
        Binding("y", "app.copy_command", "Copy command"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("No plans yet: run a search (ctrl+r).", id="plan-title")
        table: DataTable[str] = DataTable(id="plan-table", cursor_type="row")
        table.add_columns("#", "GiB/GPU", "tokens/s", "time", "cost", "plan")
        yield table
        with VerticalScroll(id="plan-detail"):
            yield Static("", id="plan-summary")
            yield Static("", id="plan-runtime")
            yield MemoryBars(id="plan-bars")
            yield Static("", id="plan-speed")
            yield Static("", id="plan-measured")
            yield Static("", id="plan-why")
            yield Static("", id="plan-command")

    def show_outcome(self, outcome: SearchOutcome) -> None:
        """Fill the table (the first row is selected) and the family lines."""
        title = outcome.title if outcome.choices else f"Nothing fits — {outcome.title}"
        self.query_one("#plan-title", Static).update(title)
        runtime = self.query_one("#plan-runtime", Static)
        runtime.update(outcome.runtime_line)
        runtime.display = bool(outcome.runtime_line)
        table = self.query_one(DataTable)
        table.clear()
        for index, choice in enumerate(outcome.choices, 1):
            table.add_row(str(index), *choice.columns, choice.summary)
        why = Text.assemble(("Why not the others:", "bold"))
        for line in outcome.family_lines:
            why.append(f"\n  {line}")
        if outcome.diagnosis:
            why.append("\nWhat does not fit:", style="bold red")
            for line in outcome.diagnosis:
                why.append(f"\n  {line}")
        for note in outcome.notes:
            why.append(f"\nnote: {note}", style="dim")
        why.append(f"\n{outcome.search_line}", style="dim")
        self.query_one("#plan-why", Static).update(why)
        if not outcome.choices:
            self.show_choice(None, "")

    def show_choice(self, choice: PlanChoice | None, command: str) -> None:
        """The highlighted plan's details and its command."""
        self.query_one("#plan-summary", Static).update(choice.summary if choice else "")
        self.query_one(MemoryBars).show(choice.memory if choice else None)
        self.query_one("#plan-speed", Static).update("\n".join(choice.speed_lines) if choice else "")
        self.show_command(command)

    def show_measured(self, line: str) -> None:
        """The highlighted plan's measured tokens/s beside the predicted ones, OOM, or why it was not run."""
        measured = self.query_one("#plan-measured", Static)
        measured.update(line)
        measured.display = bool(line)

    def show_command(self, command: str, saved: str | None = None) -> None:
        """The command line (and where the plan was saved)."""
        if not command:
            self.query_one("#plan-command", Static).update("")
            return
        text = Text.assemble(("$ ", "dim"))
        text.append(command, style="bold")
        state = f"saved to {saved}" if saved else "not saved yet"
        text.append(f"\n  {state} · s: save plan · y: copy command", style="dim")
        self.query_one("#plan-command", Static).update(text)
