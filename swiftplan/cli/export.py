"""`swiftplan export RUN`: the trained adapter, or with --merge a merged safetensors model."""

from __future__ import annotations

from pathlib import Path

import typer

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan export runs/qwen-lora --merge                  (merged model in runs/qwen-lora/merged)

  swiftplan export runs/qwen-lora --output adapter-only/   (the peft adapter + tokenizer)
"""


def export_command(
    run: Path = typer.Argument(..., help="Run directory written by `swiftplan train`."),
    merge: bool = typer.Option(False, "--merge", help="Merge the LoRA adapter into the base weights."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output directory (default RUN/merged or RUN/export)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write the run's weights with config.json and the tokenizer."""
    from swiftplan.cli._checks import output_dir
    from swiftplan.errors import SwiftplanError
    from swiftplan.extras import needs, require

    if not run.is_dir():
        raise SwiftplanError(
            f"RUN {run} is not a directory.", hint="Give the --output-dir of a `swiftplan train` run."
        )
    output_dir("--output", output)
    require("export")
    with needs("export"):
        from swiftplan.executors.train.export import export_run

    target = output or run / ("merged" if merge else "export")
    with needs("export"):
        written = export_run(run, target, merge=merge)
    files = sorted(p.name for p in written.iterdir())
    if as_json:
        print_json({"output": str(written), "merged": merge, "files": files})
        return
    console.print(f"{'merged model' if merge else 'weights'} written to {written}: {', '.join(files)}")


def register(app: typer.Typer) -> None:
    """Add `export` to the CLI."""
    app.command("export", epilog=EPILOG, no_args_is_help=True)(export_command)
