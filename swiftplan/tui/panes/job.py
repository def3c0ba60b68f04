"""Tab 2: the job form. It only holds text; `swiftplan.tui.job.parse_job` checks it in the search worker."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select, Static

from swiftplan.tui.job import (
    FORM_DEFAULTS,
    METHOD_CHOICES,
    OBJECTIVE_CHOICES,
    QUANT_CHOICES,
    TASK_CHOICES,
    runtime_choices,
)

SELECTS = {
    "task": TASK_CHOICES,
    "runtime": runtime_choices(),
    "objective": OBJECTIVE_CHOICES,
    "method": METHOD_CHOICES,
    "quant": QUANT_CHOICES,
    "pareto": ("no", "yes"),
}
"""Fields chosen from a list; the rest are typed."""
LAYOUT = (
    ("task", "Task", "objective", "Objective"),
    ("runtime", "Runtime", "", ""),
    ("method", "Method", "quant", "Quantization"),
    ("rank", "LoRA rank", "pareto", "Pareto front"),
    ("seq", "Sequence len", "global_batch", "Global batch"),
    ("dataset_tokens", "Dataset tokens", "epochs", "Epochs"),
    ("context", "Serve context", "concurrency", "Concurrency"),
    ("seed", "Seed", "trials", "Trials"),
)
"""Rows of (field, label, field, label) under the model field; an empty field leaves its cells blank."""
HELP = (
    "tab/shift+tab move between fields · enter or ctrl+r searches · esc leaves a field, then 1-5 switch tabs.\n"
    "Method and quantization limit what the search may choose; LoRA rank auto searches 4-256; dataset tokens "
    "(50M, 1.5B) only scale time and cost; context and concurrency are for serving; runtime is the training "
    "framework planned for (its loss, optimizer and engine; profiles/runtimes)."
)
PLACEHOLDERS = {"rank": "16 · 8,16,32 · auto", "concurrency": "auto", "trials": "auto"}


class JobPane(VerticalScroll):
    """Model (with catalog suggestions), task, pins, workload and objective; ctrl+r searches."""

    DEFAULT_CSS = """
    JobPane { padding: 0 1; }
    JobPane Grid { grid-size: 4; grid-columns: 15 1fr 15 1fr; grid-rows: 1; grid-gutter: 0 1; height: auto; }
    JobPane #job-model-row { grid-size: 2; grid-columns: 15 1fr; margin: 0 0 0 0; }
    JobPane Label { color: $text-muted; }
    JobPane #job-model-hint { color: $text-muted; padding: 0 0 0 16; }
    JobPane #job-error { color: $error; margin: 1 0 0 0; }
    JobPane #job-go { margin: 1 0 0 16; }
    JobPane #job-help { color: $text-muted; margin: 1 0 0 0; }
    """

    def __init__(self, *, model_choices: Sequence[str], id: str | None = None) -> None:
        super().__init__(id=id)
        self._choices = list(model_choices)

    def _field(self, key: str) -> Input | Select[str]:
        if key in SELECTS:
            return Select(
                [(choice, choice) for choice in SELECTS[key]],
                value=FORM_DEFAULTS[key],
                allow_blank=False,
                compact=True,
                id=f"job-{key}",
            )
        return Input(FORM_DEFAULTS[key], placeholder=PLACEHOLDERS.get(key, ""), compact=True, id=f"job-{key}")

    def compose(self) -> ComposeResult:
        with Grid(id="job-model-row"):
            yield Label("Model")
            yield Input(
                FORM_DEFAULTS["model"],
                placeholder="catalog name, hub id or path to config.json",
                suggester=SuggestFromList(self._choices, case_sensitive=False),
                compact=True,
                id="job-model",
            )
        yield Static("type a model: suggestions come from the catalog (→ accepts)", id="job-model-hint")
        with Grid():
            for left, left_label, right, right_label in LAYOUT:
                yield Label(left_label)
                yield self._field(left)
                yield Label(right_label)
                yield self._field(right) if right else Static("")
        yield Button("Search  ctrl+r", id="job-go", compact=True, variant="primary")
        yield Static("", id="job-error")
        yield Static(HELP, id="job-help")

    def _widget(self, key: str) -> Input | Select[str]:
        if key in SELECTS:
            return self.query_one(f"#job-{key}", Select)
        return self.query_one(f"#job-{key}", Input)

    def values(self) -> dict[str, str]:
        """Every field's text, keyed as `FORM_DEFAULTS`."""
        out = {}
        for key in FORM_DEFAULTS:
            value = self._widget(key).value
            out[key] = str(value) if value is not Select.BLANK else ""
        return out

    def fill(self, values: dict[str, str]) -> None:
        """Set fields (the CLI's --model, tests)."""
        for key, value in values.items():
            self._widget(key).value = value

    def show_model_hint(self, name: str, text: str) -> None:
        """The line under the model field, if it still describes what is typed."""
        if self.query_one("#job-model", Input).value.strip() == name.strip():
            self.query_one("#job-model-hint", Static).update(text)

    def show_error(self, message: str | None, hint: str | None = None) -> None:
        """Why the last search could not start (None clears it)."""
        text = Text(message or "")
        if hint:
            text.append(f"\n{hint}", style="dim")
        self.query_one("#job-error", Static).update(text)
