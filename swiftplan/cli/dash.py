"""`swiftplan dash`: the Textual dashboard (probe, job form, live search, plan view, run monitor)."""

from __future__ import annotations

from pathlib import Path

import typer

from swiftplan.errors import SwiftplanError
from swiftplan.extras import needs, require

EPILOG = """
Examples:

  swiftplan dash                                   (probes this machine first)

  swiftplan dash --gpus 4xA100-80G --model Qwen/Qwen2.5-14B

  swiftplan dash --run runs/qwen-20260101-120000   (opens the run monitor on a training run)

  swiftplan dash --doctor train.log --doctor-plan plan.yaml   (why a run died, and what would fit)

Keys: 1-6 switch tabs (esc leaves a text field first), ctrl+r searches, c picks GPUs from the
catalog, s saves the selected plan, y copies the command that runs it, f follows a run, ctrl+q quits.
Needs the tui extra: pip install 'swiftplan[tui]'.
"""


def _has_terminal() -> bool:
    """Whether this process talks to an interactive terminal (both ends), as a full-screen app needs."""
    import sys

    return sys.stdin.isatty() and sys.stdout.isatty()


def dash_command(
    gpus: str = typer.Option(
        None,
        "--gpus",
        help="Start with a catalog cluster (rtx4090, 4xA100-80G, 2x8xH100) instead of probing.",
    ),
    model: str = typer.Option(None, "--model", help="Prefill the job form's model."),
    run: str = typer.Option(None, "--run", help="Open this training run directory in the run monitor."),
    plan_path: str = typer.Option("plan.yaml", "--plan-path", help="Where saving a plan proposes to write."),
    no_probe: bool = typer.Option(False, "--no-probe", help="Do not probe this machine's accelerators."),
    doctor: str = typer.Option(None, "--doctor", help="Open this failed run's log in the doctor tab."),
    doctor_plan: str = typer.Option(
        None, "--doctor-plan", help="The plan that run followed (with --doctor)."
    ),
) -> None:
    """Plan interactively: hardware, job, live search, plan, and a run against its plan."""
    _check_options(gpus=gpus, run=run, plan_path=plan_path)
    require("dash")
    with needs("dash"):
        from swiftplan.tui.app import make_app
    from swiftplan.executors.probe import probe

    if not _has_terminal():
        raise SwiftplanError(
            "swiftplan dash is a full-screen terminal app, and standard input or output is not a terminal "
            "(a pipe, a file or a CI job).",
            hint="Run it in a terminal; in scripts use fit, size or doctor with --json.",
        )
    app = make_app(
        probe=None if no_probe else probe,
        gpus=gpus,
        model=model,
        run_dir=run,
        plan_path=plan_path,
        doctor_log=doctor,
        doctor_plan=doctor_plan,
    )
    app.run()


def _check_options(*, gpus: str | None, run: str | None, plan_path: str) -> None:
    """The flags the dashboard would otherwise only complain about inside the app."""
    from swiftplan.cli._checks import output_file

    if gpus is not None and gpus.strip().lower() != "auto":
        from swiftplan.planner.hardware import parse_cluster

        parse_cluster(gpus)
    if run is not None and not Path(run).is_dir():
        raise SwiftplanError(
            f"--run {run} is not a directory.", hint="Give the --output-dir of a `swiftplan train` run."
        )
    output_file("--plan-path", plan_path)


def register(app: typer.Typer) -> None:
    """Add `dash` to the CLI."""
    app.command("dash", epilog=EPILOG)(dash_command)
