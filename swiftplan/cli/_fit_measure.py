"""`fit --measure` as the CLI shows it: run the top candidates (the measure use case), then a table of
predicted against measured speed and memory."""

from __future__ import annotations

from typing import Any

from swiftplan.cli._output import console
from swiftplan.units import format_gib


def measure(outcome: Any, *, as_json: bool, top_k: int, steps: int, layers: int | None, device: str,
            seed: int) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """(evaluations measured, measurements) for the outcome's best plans."""
    from swiftplan.usecases.measure import measure_top

    progress = None if as_json else (lambda text: console.print(f"[dim]{text}[/]", highlight=False))
    return measure_top(
        outcome, top_k=top_k, steps=steps, layers=layers, device=device, seed=seed, progress=progress
    )


def measurements_json(evaluations: list[Any], measured: list[Any]) -> list[dict[str, Any]]:
    from swiftplan.executors.measure import label, per_device_tokens, ranked

    order = ranked(measured)
    out = []
    for index, (evaluation, m) in enumerate(zip(evaluations, measured, strict=True)):
        out.append({
            "candidate": index + 1, "setup": label(m.setup), "device": m.device, "layers": m.layers,
            "predicted_tokens_per_s_per_device": per_device_tokens(evaluation),
            "measured_tokens_per_s": m.tokens_per_s if m.ran else None,
            "predicted_peak_allocated": evaluation.estimate.memory.peak_allocated,
            "measured_peak_allocated": m.peak_allocated_bytes if m.ran or m.oom else None,
            "measured_peak_reserved": m.peak_reserved_bytes if m.ran else None,
            "oom": m.oom, "skipped": m.skipped or None, "step_times_s": list(m.step_times_s),
            "measured_rank": order.index(index) + 1 if index in order else None,
        })  # fmt: skip
    return out


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:.3g}M" if tokens_per_s >= 1e6 else f"{tokens_per_s:,.0f}"


def render_measurements(evaluations: list[Any], measured: list[Any]) -> None:
    from rich.table import Table

    from swiftplan.executors.measure import label, per_device_tokens, ranked

    order = ranked(measured)
    device = measured[0].device
    layers = measured[0].layers
    table = Table(
        title=f"Measured on {device}" + (f" ({layers} layer(s))" if layers else "") + ", one device each",
        title_justify="left",
    )
    for name in (
        "#",
        "candidate",
        "pred tok/s",
        "meas tok/s",
        "ratio",
        "pred peak",
        "meas peak",
        "OOM",
        "rank",
    ):
        table.add_column(
            name, justify="left" if name == "candidate" else "right", no_wrap=name != "candidate"
        )
    for index, (evaluation, m) in enumerate(zip(evaluations, measured, strict=True)):
        predicted = per_device_tokens(evaluation)
        rank = order.index(index) + 1 if index in order else None
        table.add_row(
            str(index + 1),
            label(m.setup) + (" [bold green](winner)[/]" if rank == 1 else ""),
            _rate(predicted),
            _rate(m.tokens_per_s) if m.ran else "-",
            f"{m.tokens_per_s / predicted:.3g}" if m.ran and predicted > 0 else "-",
            format_gib(evaluation.estimate.memory.peak_allocated, 2),
            format_gib(m.peak_allocated_bytes, 2) if m.ran or m.oom else "-",
            "yes" if m.oom else "no" if m.ran else "-",
            str(rank) if rank else "-",
        )
    console.print(table)
    for index, m in enumerate(measured):
        if m.skipped:
            console.print(f"[dim]candidate {index + 1} skipped: {m.skipped}[/]", highlight=False)
    if order:
        console.print(f"winner by measurement: candidate {order[0] + 1} ({label(measured[order[0]].setup)}), "
                      f"{measured[order[0]].tokens_per_s:,.0f} tokens/s measured", highlight=False)  # fmt: skip
    else:
        console.print("no candidate completed its measured steps.", highlight=False)
    if device == "cpu":
        console.print("[yellow]CPU timings and RSS do not rank GPU plans: this was a smoke run of the measuring path.[/]",
                      highlight=False)  # fmt: skip
    if layers:
        console.print(f"[dim]with --measure-layers {layers} the measured speed and memory are of a shallower model than "
                      "predicted; compare the ranking, not the ratios.[/]", highlight=False)  # fmt: skip
