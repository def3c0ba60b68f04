"""A training run directory read for the run monitor: measured loss, tokens/s and memory per step
next to the plan's predictions.

Reads what `swiftplan train` writes (see `swiftplan.executors.train.run_dir`): `plan.yaml`,
`metrics.jsonl` (one line per optimizer step: loss, tokens, step_time_s, memory_rank0), and, once the
run has finished, `run_report.json`. A line still being written is skipped, so a live run can be
followed. The plan predicts speed and memory but not loss, so the loss has no predicted line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import TrainSetup
from swiftplan.units import format_gib

if TYPE_CHECKING:
    from swiftplan.planner.plan import Plan


@dataclass(frozen=True, kw_only=True, slots=True)
class Series:
    """One measured quantity over the steps, with the plan's prediction when it has one."""

    title: str
    """'loss', 'tokens/s', 'memory GiB'."""
    steps: tuple[int, ...]
    """Optimizer step of each value."""
    values: tuple[float, ...]
    """Measured values."""
    predicted: tuple[tuple[str, float], ...] = ()
    """(label, value) horizontal lines the plan predicts (dashed: ┄ first, ╌ second)."""
    label: str = "last"
    """What the measured line is called in the legend."""
    second: tuple[float, ...] = ()
    """A second measured line (reserved memory next to allocated), same steps."""
    second_label: str = ""
    """What the second line is called."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RunView:
    """What the run monitor shows."""

    path: str
    """The run directory as given."""
    status: str
    """Steps done of total, last loss, finished or running."""
    plan_line: str
    """The plan the run carries out."""
    series: tuple[Series, ...]
    """Loss, tokens/s, memory."""
    notes: tuple[str, ...] = ()
    """Caveats (CPU runs measure process RSS; the first step is warm-up)."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete lines of metrics.jsonl (a half-written last line is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _run_dir(path: str) -> Path:
    """The run directory at `path`; SwiftplanError when it is not one."""
    run = Path(path).expanduser()
    if not run.is_dir():
        raise SwiftplanError(f"No run directory at {path}.", hint="Runs are written by `swiftplan train`.")
    if not (run / "plan.yaml").is_file():
        raise SwiftplanError(
            f"{path} has no plan.yaml, so it is not a `swiftplan train` run directory.",
            hint="Pick the directory given to --output-dir.",
        )
    return run


def _series(plan: Plan, rows: list[dict[str, Any]]) -> tuple[Series, ...]:
    """Loss, tokens/s and rank-0 memory per step, with the plan's predictions beside them."""
    steps = tuple(int(row["step"]) for row in rows)
    planned_tokens_per_s = plan.prediction.tokens_per_s
    per_device = plan.prediction.per_device_bytes
    tokens_per_s = tuple(
        row["tokens"] / row["step_time_s"] if row.get("step_time_s") else 0.0 for row in rows
    )
    memory = [row.get("memory_rank0") or {} for row in rows]
    predicted_speed = (("planned", float(planned_tokens_per_s)),) if planned_tokens_per_s else ()
    return (
        Series(title="loss", steps=steps, values=tuple(float(row["loss"]) for row in rows)),
        Series(title="tokens/s", steps=steps, values=tokens_per_s, predicted=predicted_speed),
        Series(
            title="GiB rank 0",
            steps=steps,
            values=tuple(m.get("allocated", 0) / 2**30 for m in memory),
            label="allocated",
            second=tuple(m.get("reserved", 0) / 2**30 for m in memory),
            second_label="reserved",
            predicted=(
                ("peak", per_device.get("peak_allocated", 0) / 2**30),
                ("total", per_device.get("device_total", 0) / 2**30),
            ),
        ),
    )


def _status(rows: list[dict[str, Any]], report: dict[str, Any] | None) -> str:
    """'12/100 steps · running or stopped · loss 1.2345'."""
    total = (report or {}).get("steps", {}).get("total")
    last = int(rows[-1]["step"]) if rows else 0
    done = f"{last}" + (f"/{total}" if total else "") + " steps"
    state = "finished" if report else ("running or stopped" if rows else "no step logged yet")
    status = f"{done} · {state}"
    if rows:
        status += f" · loss {rows[-1]['loss']:.4f}"
    return status


def _notes(plan: Plan, report: dict[str, Any] | None, args: dict[str, Any]) -> list[str]:
    """How to read the run against its plan: CPU runs, and the report's measured-vs-predicted figures."""
    notes = []
    if args.get("device") == "cpu":
        notes.append(
            f"ran on CPU: memory is the process's peak RSS, not comparable with the {plan.hardware.describe()} prediction"
        )
    if not report:
        return notes
    measured = report.get("measured", {})
    planned_tokens_per_s = plan.prediction.tokens_per_s
    per_device = plan.prediction.per_device_bytes
    if measured.get("tokens_per_s") and planned_tokens_per_s:
        notes.append(
            f"report: {measured['tokens_per_s']:,.0f} tokens/s measured vs {planned_tokens_per_s:,.0f} predicted "
            f"({measured['tokens_per_s'] / planned_tokens_per_s:.2f}×, first step excluded)"
        )
    if measured.get("peak_allocated_bytes") and per_device.get("peak_allocated"):
        notes.append(
            f"report: peak allocated {format_gib(measured['peak_allocated_bytes'], 2)} measured vs "
            f"{format_gib(per_device['peak_allocated'], 2)} predicted"
        )
    return notes


def load_run(path: str) -> RunView:
    """Read a run directory; SwiftplanError when it is not one."""
    from swiftplan.plan_file import load_plan

    run = _run_dir(path)
    plan = load_plan(run / "plan.yaml")
    rows = read_metrics(run / "metrics.jsonl")
    report = _json(run / "run_report.json")
    train = plan.setup
    method = (
        f"{train.method} {train.quant} mb {train.micro_batch}×{train.grad_accum}"
        if isinstance(train, TrainSetup)
        else "serving plan"
    )
    return RunView(
        path=path,
        status=_status(rows, report),
        plan_line=f"{plan.model} on {plan.hardware.describe()} ({plan.layout.gpus} GPU) · {method}",
        series=_series(plan, rows),
        notes=tuple(_notes(plan, report, _json(run / "train_args.json") or {})),
    )
