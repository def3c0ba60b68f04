"""The job form's model field: the names it suggests (the catalog) and the one line it shows about what was typed
(catalog entry, local config, or neither), without the network."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError


def model_choices() -> tuple[str, ...]:
    """Names the model field suggests: every catalog hub id, then the aliases."""
    from swiftplan.planner.model_catalog import catalog

    entries = catalog().values()
    names = [entry.model_id for entry in entries]
    names += [alias for entry in entries for alias in entry.aliases]
    return tuple(dict.fromkeys(names))


def _params(count: int) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def describe_model(name: str) -> str:
    """One line about a model name, without the network: catalog entry, local file, or neither."""
    from pathlib import Path

    from swiftplan.planner.architecture import total_params
    from swiftplan.planner.model_catalog import catalog, catalog_spec, close_matches, find_catalog_id

    name = name.strip()
    if not name:
        return "type a catalog name, a hub id or a path to config.json"
    path = Path(name).expanduser()
    if path.exists():
        from swiftplan.executors.model_source import spec_from_path

        try:
            spec = spec_from_path(path)
        except SwiftplanError as error:
            return f"local file: {error.message}"
        return f"local {spec.model_type}: {_params(total_params(spec))} params"
    model_id = find_catalog_id(name)
    if model_id is not None:
        spec = catalog_spec(model_id)
        family = catalog()[model_id].family
        return f"catalog: {model_id} ({family}), {_params(total_params(spec))} params"
    close = close_matches(name, limit=3)
    if close:
        return f"not in the catalog; did you mean {', '.join(close)}?"
    if "/" in name:
        return "not in the catalog: the search will fetch its config.json from the hub"
    return "not in the catalog and not a local path"
