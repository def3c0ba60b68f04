"""Ask for a path (where to save a plan); enter confirms, escape cancels."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class PathPrompt(ModalScreen[str | None]):
    """Returns the path typed, or None."""

    DEFAULT_CSS = """
    PathPrompt { align: center middle; }
    PathPrompt > Vertical { width: 80%; max-width: 90; height: auto; border: round $accent; padding: 0 1; background: $surface; }
    PathPrompt #prompt-help { color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str, *, cursor_blink: bool = True) -> None:
        super().__init__()
        self._title, self._value, self._blink = title, value, cursor_blink

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._title)
            yield Input(self._value, compact=True, id="prompt-path")
            yield Static("enter saves · esc cancels", id="prompt-help")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.cursor_blink = self._blink
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(value or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
