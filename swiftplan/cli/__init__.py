"""The `swiftplan` command line: one module per verb, each a thin view over one layer.

Known errors (`SwiftplanError`) print as one paragraph with a hint and exit with code 2;
set SWIFTPLAN_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from swiftplan.errors import SwiftplanError

app = typer.Typer(
    name="swiftplan",
    help="Hardware-aware planner for fine-tuning and serving LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines `register(app)`; the order here is the order in --help.
_COMMAND_MODULES = [
    "models",
    "gpus",
    "probe",
    "estimate",
    "fit",
    "size",
    "verify",
    "train",
    "export",
    "serve",
    "dash",
]


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"swiftplan.cli.{name}").register(app)


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    try:
        app()
    except SwiftplanError as error:
        if os.environ.get("SWIFTPLAN_DEBUG"):
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {error.message}", highlight=False)
        if error.hint:
            Console(stderr=True).print(f"[dim]hint:[/] {error.hint}", highlight=False)
        sys.exit(2)
