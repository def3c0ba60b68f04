"""The `swiftplan` command line: one module per verb, each a thin view over one layer.

Known errors (`SwiftplanError`) print as one paragraph with a hint and exit with code 2;
set SWIFTPLAN_DEBUG=1 to see the traceback instead. A third-party module that is not installed
(an optional extra) is reported the same way, with the `pip install 'swiftplan[extra]'` that brings it.
Help texts and messages are printed literally: brackets such as `[train]` are text, not rich markup.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from rich.markup import escape

from swiftplan.errors import SwiftplanError
from swiftplan.extras import missing_module_error

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
    "doctor",
    "dash",
]


def _register_commands() -> None:
    """Add every verb once (main() may run many times in one process, as the tests do)."""
    if app.registered_commands:
        return
    for name in _COMMAND_MODULES:
        importlib.import_module(f"swiftplan.cli.{name}").register(app)


def _literal_help(command: Any) -> None:
    """Escape rich markup in every help text and epilog, so `pip install 'swiftplan[tui]'` shows its brackets."""
    for attr in ("help", "short_help", "epilog"):
        text = getattr(command, attr, None)
        if isinstance(text, str):
            setattr(command, attr, escape(text))
    for param in getattr(command, "params", ()):
        if isinstance(getattr(param, "help", None), str):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        _literal_help(sub)


def _print_error(error: SwiftplanError) -> None:
    from rich.console import Console

    stderr = Console(stderr=True)
    stderr.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False)
    if error.hint:
        stderr.print(f"[dim]hint:[/] {escape(error.hint)}", highlight=False)


def _verb() -> str | None:
    """The command being run (the first argument that is not an option)."""
    return next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    command = typer.main.get_command(app)
    _literal_help(command)
    try:
        command()
    except SwiftplanError as error:
        if os.environ.get("SWIFTPLAN_DEBUG"):
            raise
        _print_error(error)
        sys.exit(2)
    except ModuleNotFoundError as error:  # an optional extra that no command wrapped with extras.needs
        known = missing_module_error(error, _verb())
        if known is None or os.environ.get("SWIFTPLAN_DEBUG"):
            raise
        _print_error(known)
        sys.exit(2)
