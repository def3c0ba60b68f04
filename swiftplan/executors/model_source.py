"""Find a model's architecture: the packaged catalog, a local config.json, or the hub.

This is an edge module (it reads user files and may touch the network); the planner itself
only ever sees the resulting `ModelSpec`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_catalog import catalog_spec, close_matches, find_catalog_id
from swiftplan.planner.model_spec import ModelSpec, spec_from_hf_config

_LOCAL_HINT = (
    "Pass a local config.json instead: a path to the file or to the model directory holding it "
    "(e.g. `swiftplan estimate ./my-model/config.json`). `swiftplan models` lists the built-in catalog."
)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise SwiftplanError(f"Cannot read model config {path}: {error}.") from error
    except json.JSONDecodeError as error:
        raise SwiftplanError(
            f"Model config {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from error
    if not isinstance(config, dict):
        raise SwiftplanError(f"Model config {path} must be a JSON object, found {type(config).__name__}.")
    return config


def spec_from_path(path: Path) -> ModelSpec:
    """`ModelSpec` from a config.json file or a directory containing one."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise SwiftplanError(f"No config.json in {path}.", hint=_LOCAL_HINT)
    return spec_from_hf_config(_read_config(file), name=str(path), source=str(file.resolve()))


def _fetch_hub_config(model_id: str) -> dict[str, Any]:
    """Download only config.json from the Hugging Face hub (needs huggingface_hub and a network)."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("SWIFTPLAN_OFFLINE"):
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog and the hub is off (offline mode).", hint=_LOCAL_HINT
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog, and fetching its config.json needs huggingface_hub "
            "(pip install 'swiftplan[hub]').",
            hint=_LOCAL_HINT,
        ) from error
    try:
        local = hf_hub_download(model_id, "config.json", etag_timeout=5)
    except Exception as error:  # network, auth, missing repo: all mean "could not fetch"
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog and its config.json could not be fetched from the hub "
            f"({type(error).__name__}).",
            hint=_LOCAL_HINT,
        ) from error
    return _read_config(Path(local))


def resolve_model(name: str) -> ModelSpec:
    """`ModelSpec` for a catalog name or alias, a local path, or a hub id not in the catalog."""
    path = Path(name).expanduser()
    if path.exists():
        return spec_from_path(path)
    model_id = find_catalog_id(name)
    if model_id is not None:
        spec = catalog_spec(model_id)
        if model_id != name:
            spec = spec_from_hf_config(
                dict(spec.hf_config), name=name, source=f"catalog entry {model_id}: {spec.source}"
            )
        return spec
    if "/" in name and not name.startswith((".", "/")):
        return spec_from_hf_config(
            _fetch_hub_config(name), name=name, source=f"huggingface.co/{name}/config.json"
        )
    suggestions = close_matches(name)
    did_you_mean = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise SwiftplanError(
        f"Unknown model {name!r}: not in the catalog and not a local path.{did_you_mean}", hint=_LOCAL_HINT
    )
