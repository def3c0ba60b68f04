"""Pick a cluster from the accelerator catalog: filter by name, choose a GPU count, enter."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from swiftplan.tui.hardware import CatalogOption


class ClusterPicker(ModalScreen[str | None]):
    """Returns a --gpus string ('4xrtx4090', '2x8xh100-sxm'), or None when dismissed."""

    DEFAULT_CSS = """
    ClusterPicker { align: center middle; }
    ClusterPicker > Vertical { width: 90%; max-width: 100; height: 90%; border: round $accent; padding: 0 1; background: $surface; }
    ClusterPicker Horizontal { height: 1; }
    ClusterPicker Label { width: 9; color: $text-muted; }
    ClusterPicker Input { width: 1fr; }
    ClusterPicker OptionList { height: 1fr; margin: 1 0 0 0; border: none; padding: 0; }
    ClusterPicker #pick-help { color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape", "dismiss_picker", "Close"),
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
    ]

    def __init__(self, options: Sequence[CatalogOption], *, cursor_blink: bool = True) -> None:
        super().__init__()
        self._options = list(options)
        self._shown: list[CatalogOption] = list(options)
        self._blink = cursor_blink

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Plan for GPUs from the catalog", id="pick-title")
            with Horizontal():
                yield Label("Filter")
                yield Input(placeholder="rtx4090, a100, h100, mi300…", compact=True, id="pick-filter")
            with Horizontal():
                yield Label("GPUs")
                yield Input("1", placeholder="per node, or NODESxGPUS (2x8)", compact=True, id="pick-count")
            yield OptionList(*[Option(o.label, id=o.id) for o in self._options], id="pick-list")
            yield Static("type to filter · ↑↓ choose · enter picks · esc closes", id="pick-help")

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = self._blink
        self.query_one("#pick-filter", Input).focus()
        self.query_one(OptionList).highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "pick-filter":
            return
        words = event.value.lower().split()
        self._shown = [o for o in self._options if all(w in o.search_text for w in words)]
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(o.label, id=o.id) for o in self._shown])
        options.highlighted = 0 if self._shown else None

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if self._shown:
            current = options.highlighted or 0
            options.highlighted = max(0, min(len(self._shown) - 1, current + step))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._pick(self.query_one(OptionList).highlighted)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._pick(event.option_index)

    def _pick(self, index: int | None) -> None:
        if index is None or not self._shown:
            self.notify("No accelerator matches the filter.", severity="warning")
            return
        count = self.query_one("#pick-count", Input).value.strip() or "1"
        acc = self._shown[index].id
        self.dismiss(acc if count == "1" else f"{count}x{acc}")

    def action_dismiss_picker(self) -> None:
        self.dismiss(None)
