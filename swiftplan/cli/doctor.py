"""`swiftplan doctor`: read a failed run's log and say what ran out, by how much, when, and what would fit."""

from __future__ import annotations

from typing import Any

import typer

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan doctor train.log

  swiftplan doctor train.log --plan plan.yaml      (compare with the plan, re-plan on the measured shortfall)

  journalctl -k | swiftplan doctor -               (the kernel's OOM-killer lines from stdin)

  swiftplan doctor vllm.log --json

Recognises PyTorch CUDA / ROCm (HIP) / Ascend (NPU) / MPS out-of-memory messages (DeepSpeed,
bitsandbytes and unsloth runs included), host-RAM kills (OOM killer, exit code -9 / 137), NCCL
watchdog timeouts, vLLM and SGLang KV-cache start-up errors, and a full disk. Of a long log,
doctor reads the last 8 MiB (about 100,000 lines), where a failure and its traceback are, and
says so; line numbers still count from the log's start.
"""


def doctor_command(
    log: str = typer.Argument(..., help="The failed run's log or console output; - reads standard input."),
    plan: str | None = typer.Option(None, "--plan", help="The plan file the run followed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """What ran out (device memory, host RAM, KV cache, NCCL, disk), by how much, when, and the smallest change."""
    from swiftplan.usecases.doctor import diagnose, read_request

    outcome = diagnose(read_request(log, plan_path=plan))
    if as_json:
        print_json(outcome_json(outcome))
        return
    _render(outcome)


def outcome_json(outcome: Any) -> dict[str, Any]:
    """The answer as one JSON object."""
    finding = outcome.reading.primary
    return {
        "source": outcome.source,
        "found": finding is not None,
        "headline": outcome.headline,
        "finding": finding,
        "other_findings": list(outcome.reading.findings[1:]),
        "lines_scanned": outcome.reading.lines_scanned,
        "clues": list(outcome.reading.clues) if finding is None else [],
        "plan": outcome.plan_path,
        "comparison": outcome.comparison,
        "remedies": list(outcome.remedies),
        "notes": list(outcome.notes),
    }


def _render(outcome: Any) -> None:
    from rich.markup import escape

    from swiftplan.units import format_gib

    finding = outcome.reading.primary
    console.print(f"[bold]{escape(outcome.source)}[/]: {escape(outcome.headline)}", highlight=False)
    if finding is None:
        if outcome.reading.clues:
            console.print("lines that looked like errors (none matched a known failure):")
            for line in outcome.reading.clues:
                console.print(f"  {escape(line[:200])}", highlight=False)
        else:
            console.print("no line mentioned an error, a kill, a timeout or memory.")
        for note in outcome.notes:
            console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
        return
    console.print(
        f"  line {finding.line_number}: {escape(finding.line[:240])}", highlight=False, soft_wrap=True
    )
    if finding.frameworks:
        console.print(f"  seen in the log: {', '.join(finding.frameworks)}")
    if (c := outcome.comparison) is not None:
        console.print(f"plan {escape(outcome.plan_path)}: peak {format_gib(c.planned_peak_bytes)} allocated, "
                      f"{format_gib(c.planned_device_bytes)} on a {format_gib(c.device_memory_bytes)} device", highlight=False)  # fmt: skip
        if c.needed_bytes is not None:
            console.print(
                f"  the run wanted {format_gib(c.needed_bytes)} (allocated + requested) at the failure"
            )
        if c.missed_bytes is not None:
            console.print(f"  beyond the plan's prediction: {format_gib(c.missed_bytes)}")
        if c.terms:
            terms = ", ".join(f"{name} {format_gib(value)}" for name, value in c.terms)
            console.print(f"  the plan's terms in this phase: {terms}")
    for note in outcome.notes:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
    if outcome.remedies:
        console.print(
            "[bold]what would fit[/] (fit = checked by the estimator; log = read from the message):"
        )
        for remedy in outcome.remedies:
            console.print(f"  [{remedy.source}] {remedy.text}", highlight=False, markup=False)
    for other in outcome.reading.findings[1:]:
        console.print(f"[dim]also:[/] line {other.line_number}: {escape(other.line[:160])}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `doctor` to the CLI."""
    app.command("doctor", epilog=EPILOG)(doctor_command)
