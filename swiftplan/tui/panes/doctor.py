"""Tab 6: a failed run's log read by `swiftplan doctor`: what ran out, by how much, when, and what would fit."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Label, Static

from swiftplan.units import format_gib


def answer_text(outcome: Any) -> Text:
    """doctor's answer as text: the headline, the matching line, the plan comparison, the changes."""
    finding = outcome.reading.primary
    text = Text.assemble((outcome.headline, "bold"))
    if finding is None:
        for line in outcome.reading.clues:
            text.append(f"\n  {line[:200]}", style="dim")
        return text
    text.append(f"\nline {finding.line_number}: {finding.line[:240]}", style="dim")
    if (c := outcome.comparison) is not None:
        text.append(f"\nplan: peak {format_gib(c.planned_peak_bytes)} allocated, {format_gib(c.planned_device_bytes)}"
                    f" on a {format_gib(c.device_memory_bytes)} device")  # fmt: skip
        if c.missed_bytes is not None:
            text.append(f"; the run needed {format_gib(c.missed_bytes)} more than planned")
        if c.terms:
            text.append("\nterms in this phase: " + ", ".join(f"{n} {format_gib(v)}" for n, v in c.terms))
    for note in outcome.notes:
        text.append(f"\nnote: {note}", style="dim")
    if outcome.remedies:
        text.append("\nwhat would fit ", style="bold")
        text.append("(fit = checked by the estimator; log = read from the message)", style="dim")
        for remedy in outcome.remedies:
            text.append(f"\n  [{remedy.source}] ", style="bold green" if remedy.source == "fit" else "bold")
            text.append(remedy.text)
    return text


class DoctorPane(Vertical):
    """Log and plan fields, the answer."""

    DEFAULT_CSS = """
    DoctorPane { padding: 0 1; }
    DoctorPane #doctor-bar { height: 1; }
    DoctorPane #doctor-bar Label { width: auto; color: $text-muted; }
    DoctorPane #doctor-log { width: 2fr; }
    DoctorPane #doctor-plan { width: 1fr; }
    DoctorPane #doctor-answer { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="doctor-bar"):
            yield Label("Log ")
            yield Input(placeholder="train.log (enter reads it)", compact=True, id="doctor-log")
            yield Label(" plan ")
            yield Input(placeholder="plan.yaml (optional)", compact=True, id="doctor-plan")
        with VerticalScroll():
            yield Static(
                "Open a failed run's log (enter): what ran out, by how much, when, and what would fit.",
                id="doctor-answer",
            )

    def show(self, outcome: Any) -> None:
        """Draw doctor's answer."""
        self.query_one("#doctor-answer", Static).update(answer_text(outcome))

    def show_error(self, message: str, hint: str | None) -> None:
        """The log or the plan could not be read."""
        text = Text.assemble((message, "bold red"))
        if hint:
            text.append(f"  {hint}", style="dim")
        self.query_one("#doctor-answer", Static).update(text)
