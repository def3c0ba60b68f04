"""The job form's measure fields (fit's --measure, --measure-top, --measure-steps, --measure-layers and
--measure-device) and what a measurement shows. Pure, but for `parse_measure`, whose checks are the measure
use case's (`usecases.measure.check_measure`: the same refusals as `fit --measure`).

After the search, the search worker runs the top candidates for a few real optimizer steps
(`usecases.measure.measure_top`) and reports a `MeasureView`: per candidate the predicted tokens/s of one
device beside the measured ones, the predicted and measured peak memory, OOM (a pruned trial) or why it was
skipped, and the rank by measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.units import format_gib
from swiftplan.usecases.measure import MEASURE_DEVICES, MeasureOptions, check_measure

MEASURE_DEFAULTS: dict[str, str] = {
    "measure": "no",
    "measure_top": "3",
    "measure_steps": "3",
    "measure_layers": "",
    "measure_device": MEASURE_DEVICES[0],
}
"""The measure fields and their initial text (fit's defaults: off, top 3, 3 steps, every layer, cuda)."""
MEASURE_OPTIONS = ("measure_top", "measure_steps", "measure_layers", "measure_device")
"""Fields only a measurement reads: the form disables them while the measure switch is off."""
CPU_NOTE = "CPU timings do not rank GPU plans: a measurement on the CPU is a smoke run of the measuring path."
"""What the dashboard says whenever the measure device is the CPU."""


def _whole(flag: str, text: str) -> int:
    try:
        return int(text.strip().replace("_", "").replace(",", ""))
    except ValueError:
        raise SwiftplanError(f"{flag} must be a whole number, got {text!r}.") from None


def parse_measure(fields: Mapping[str, str], request: Any) -> MeasureOptions | None:
    """The measure fields for the fit request the form made, checked as `fit --measure` checks them; None when
    the switch is off or the task is serve (the form disables the switch there, and the search ignores it)."""
    raw = {**MEASURE_DEFAULTS, **fields}
    if raw["measure"] != "yes" or request.task == "serve":
        return None
    layers = raw["measure_layers"].strip()
    return check_measure(
        request,
        top_k=_whole("--measure-top", raw["measure_top"]),
        steps=_whole("--measure-steps", raw["measure_steps"]),
        layers=None if layers.lower() in ("", "all") else _whole("--measure-layers", layers),
        device=raw["measure_device"].strip(),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasuredRow:
    """One candidate of a measurement."""

    summary: str
    """The plan in one line, as the plan table shows it (how a plan finds its row)."""
    label: str
    """The set-up in one line (what ran)."""
    predicted_tokens_per_s: float
    """The prediction's training tokens/s of one device."""
    measured_tokens_per_s: float | None
    """What one device did after the warm-up step; None when it did not complete its steps."""
    predicted_peak_bytes: int
    """Predicted peak allocated per device."""
    measured_peak_bytes: int | None
    """Measured peak allocated (CPU: peak RSS of the process); None when it did not run."""
    oom: bool
    """It ran out of device memory (a pruned trial)."""
    skipped: str
    """Why it was not run ('' when it ran)."""
    rank: int | None
    """Its place by measured tokens/s (1: fastest); None when it did not complete."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasureView:
    """A finished measurement as the search and plan tabs show it."""

    search_id: int
    """The search whose candidates were measured."""
    device: str
    """Where it ran: cuda or cpu."""
    layers: int | None
    """Decoder layers of the measured models (None: the full depth)."""
    steps: int
    """Timed optimizer steps per candidate."""
    rows: tuple[MeasuredRow, ...]
    """The candidates, best predicted first."""

    @property
    def title(self) -> str:
        """What was measured and where."""
        depth = f", {self.layers} layer(s)" if self.layers else ""
        return f"Measured on {self.device} ({self.steps} step(s) after a warm-up{depth}), one device each"

    @property
    def caveat(self) -> str:
        """What a CPU run cannot tell ('' on a GPU)."""
        return CPU_NOTE if self.device == "cpu" else ""

    @property
    def notes(self) -> tuple[str, ...]:
        """Skipped candidates, the winner by measurement, and the caveat of a shallower model (the CPU's is
        `caveat`)."""
        lines = [f"candidate {i} skipped: {row.skipped}" for i, row in enumerate(self.rows, 1) if row.skipped]
        winner = next((i for i, row in enumerate(self.rows, 1) if row.rank == 1), None)
        if winner is not None:
            row = self.rows[winner - 1]
            lines.append(f"winner by measurement: candidate {winner} ({row.label}), "
                         f"{row.measured_tokens_per_s or 0:,.0f} tokens/s measured")  # fmt: skip
        else:
            lines.append("no candidate completed its measured steps.")
        if self.layers:
            lines.append(f"with {self.layers} layer(s) the measured speed and memory are of a shallower model than "
                         "predicted; compare the ranking, not the ratios.")  # fmt: skip
        return tuple(lines)


def measure_view(search_id: int, options: MeasureOptions, evaluations: Sequence[Any],
                 measured: Sequence[Any]) -> MeasureView:  # fmt: skip
    """The view of `measure_top`'s (evaluations, measurements)."""
    from swiftplan.executors.measure import label, per_device_tokens, ranked
    from swiftplan.usecases.describe import candidate_summary

    order = ranked(measured)
    rows = tuple(
        MeasuredRow(
            summary=candidate_summary(evaluation),
            label=label(m.setup),
            predicted_tokens_per_s=per_device_tokens(evaluation),
            measured_tokens_per_s=m.tokens_per_s if m.ran else None,
            predicted_peak_bytes=evaluation.estimate.memory.peak_allocated,
            measured_peak_bytes=m.peak_allocated_bytes if m.ran or m.oom else None,
            oom=m.oom,
            skipped=m.skipped,
            rank=order.index(index) + 1 if index in order else None,
        )
        for index, (evaluation, m) in enumerate(zip(evaluations, measured, strict=True))
    )
    return MeasureView(search_id=search_id, device=options.device, layers=options.layers, steps=options.steps,
                       rows=rows)  # fmt: skip


def rate(tokens_per_s: float) -> str:
    """Tokens/s as the table shows them."""
    return f"{tokens_per_s / 1e6:.3g}M" if tokens_per_s >= 1e6 else f"{tokens_per_s:,.0f}"


MEASURE_COLUMNS = ("#", "candidate", "pred tok/s", "meas tok/s", "ratio", "pred peak", "meas peak", "rank")
"""The measurement table's columns (tokens/s and peaks are one device's)."""


def row_cells(index: int, row: MeasuredRow) -> tuple[str, ...]:
    """One row of the measurement table: measured tokens/s, or OOM (pruned) or 'skipped'."""
    if row.measured_tokens_per_s is not None:
        measured = rate(row.measured_tokens_per_s)
        ratio = (
            f"{row.measured_tokens_per_s / row.predicted_tokens_per_s:.3g}"
            if row.predicted_tokens_per_s > 0
            else "-"
        )
    else:
        measured, ratio = ("OOM" if row.oom else "skipped"), "-"
    peak = format_gib(row.measured_peak_bytes, 2) if row.measured_peak_bytes is not None else "-"
    return (str(index), row.label, rate(row.predicted_tokens_per_s), measured, ratio,
            format_gib(row.predicted_peak_bytes, 2), peak, str(row.rank) if row.rank else "-")  # fmt: skip


def plan_line(view: MeasureView | None, summary: str) -> str:
    """The plan tab's line for the plan `summary` names: its measured tokens/s beside the predicted ones,
    OOM, or why it was skipped ('' when it was not measured)."""
    if view is None:
        return ""
    for index, row in enumerate(view.rows, 1):
        if row.summary != summary:
            continue
        where = f"measured on {view.device}" + (f" with {view.layers} layer(s)" if view.layers else "")
        if row.measured_tokens_per_s is not None:
            line = (f"{where}: {row.measured_tokens_per_s:,.0f} tokens/s on one device (predicted "
                    f"{row.predicted_tokens_per_s:,.0f}), peak {format_gib(row.measured_peak_bytes or 0, 2)} "
                    f"(predicted {format_gib(row.predicted_peak_bytes, 2)}); rank {row.rank} of "
                    f"{sum(r.rank is not None for r in view.rows)} by measurement")  # fmt: skip
        elif row.oom:
            line = f"{where}: out of memory (a pruned trial)"
        else:
            line = f"candidate {index} not measured: {row.skipped}"
        return line + (f" · {CPU_NOTE}" if view.device == "cpu" and not row.skipped else "")
    return ""
