"""`swiftplan models`: list the built-in model catalog."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from swiftplan.cli._output import console, print_json

EPILOG = """
Examples:

  swiftplan models

  swiftplan models --json

Models outside the catalog work too: pass a hub id (config.json is fetched when online) or a
path to a local config.json / model directory.
"""


def models_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List catalog models with their parameter counts and sources."""
    from swiftplan.planner.architecture import active_params_per_token, total_params
    from swiftplan.planner.model_catalog import catalog, catalog_spec
    from swiftplan.planner.vision import vision_tower

    rows: list[dict[str, Any]] = []
    for model_id, entry in catalog().items():
        spec = catalog_spec(model_id)
        tower = vision_tower(spec)  # vision-language models: the tower and aligner count (and run) too
        vision = tower.params() if tower is not None else 0
        rows.append(
            {
                "id": model_id,
                "model_type": spec.model_type + (f"+{tower.family} vision" if tower is not None else ""),
                "params": total_params(spec) + vision,
                "active_params": active_params_per_token(spec) + vision,
                "layers": spec.num_layers,
                "hidden": spec.hidden_size,
                "heads": f"{spec.num_heads}/{spec.num_kv_heads}",
                "vocab": spec.vocab_size,
                "aliases": list(entry.aliases),
                "source": entry.source,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(title="swiftplan model catalog")
    for column in ("model", "type", "params", "active", "layers", "hidden", "heads q/kv", "vocab"):
        table.add_column(column, justify="right" if column not in ("model", "type") else "left")
    for row in rows:
        table.add_row(
            row["id"],
            row["model_type"],
            f"{row['params'] / 1e9:.2f}B",
            f"{row['active_params'] / 1e9:.2f}B",
            str(row["layers"]),
            str(row["hidden"]),
            row["heads"],
            str(row["vocab"]),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `models` to the CLI."""
    app.command("models", epilog=EPILOG)(models_command)
