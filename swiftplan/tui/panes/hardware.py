"""Tab 1: the devices (probed, or picked from the catalog) with memory used/free, and the cluster."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from swiftplan.tui.hardware import HardwareView
from swiftplan.tui.plot import meter
from swiftplan.units import format_gib

METER_WIDTH = 12


def _gib(size: int | None) -> str:
    return "—" if size is None else format_gib(size, 1)


class HardwarePane(Vertical):
    """Where the hardware came from, one row per device, what plans are sized for, and notes."""

    DEFAULT_CSS = """
    HardwarePane { padding: 0 1; }
    HardwarePane #hw-source { text-style: bold; }
    HardwarePane #hw-host { color: $text-muted; }
    HardwarePane DataTable { height: auto; max-height: 12; margin: 1 0 0 0; }
    HardwarePane #hw-summary { margin: 1 0 0 0; }
    HardwarePane #hw-notes { color: $warning; }
    """
    BINDINGS = [
        Binding("p", "app.probe", "Probe again"),
        Binding("c", "app.pick_cluster", "Catalog cluster"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("Probing this machine…", id="hw-source")
        yield Static("", id="hw-host")
        table: DataTable[str | Text] = DataTable(id="hw-devices", cursor_type="row", zebra_stripes=True)
        table.add_columns("device", "name", "total", "used", "free", "in use")
        yield table
        yield Static("", id="hw-summary")
        yield Static("", id="hw-notes")

    def show_busy(self, text: str) -> None:
        """Say what is being looked up."""
        self.query_one("#hw-source", Static).update(text)

    def show(self, view: HardwareView) -> None:
        """Fill the panel."""
        self.query_one("#hw-source", Static).update(f"Hardware: {view.source}")
        self.query_one("#hw-host", Static).update(view.host_line or "")
        table = self.query_one(DataTable)
        table.clear()
        for row in view.devices:
            if row.used_bytes is not None and row.total_bytes:
                used = Text(meter(row.used_bytes / row.total_bytes, METER_WIDTH), style="yellow")
            else:
                used = Text("not probed", style="dim")
            table.add_row(
                row.label,
                row.name,
                _gib(row.total_bytes),
                _gib(row.used_bytes),
                _gib(row.free_bytes),
                used,
            )
        summary = Text.assemble((view.summary, "bold green" if view.cluster else "bold yellow"))
        if view.cluster is not None:
            summary.append(f"\n--gpus {view.gpus_text}", style="dim")
        summary.append("\np: probe again · c: plan for GPUs from the catalog", style="dim")
        self.query_one("#hw-summary", Static).update(summary)
        self.query_one("#hw-notes", Static).update("\n".join(f"note: {n}" for n in view.notes))

    def show_error(self, message: str, hint: str | None) -> None:
        """The probe or the cluster string failed."""
        text = Text.assemble((message, "bold red"))
        if hint:
            text.append(f"\n{hint}", style="dim")
        self.query_one("#hw-summary", Static).update(text)
