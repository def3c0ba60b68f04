"""The packaged model catalog (profiles/models.json) and forgiving name lookup."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from swiftplan.planner.model_spec import ModelSpec, spec_from_hf_config


@dataclass(frozen=True, kw_only=True, slots=True)
class CatalogEntry:
    """One catalog model: its hub id, aliases, config and citation."""

    model_id: str
    """Hugging Face hub id."""
    aliases: tuple[str, ...]
    """Other names it answers to."""
    family: str
    """Model family (e.g. "Qwen2.5")."""
    config: dict[str, Any]
    """config.json keys the planner reads."""
    source: str
    """Where the architecture facts were read."""
    params_published_b: float | None
    """Published parameter count in billions, when the model card gives one."""


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-./]", "", name.lower())


@cache
def catalog() -> dict[str, CatalogEntry]:
    """All catalog entries by hub id."""
    raw = json.loads(resources.files("swiftplan.profiles").joinpath("models.json").read_text())
    return {
        model_id: CatalogEntry(
            model_id=model_id,
            aliases=tuple(entry["aliases"]),
            family=entry.get("family") or "",
            config=entry["config"],
            source=entry.get("source") or "",
            params_published_b=entry.get("params_published_b"),
        )
        for model_id, entry in raw["models"].items()
    }


@cache
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for model_id, entry in catalog().items():
        for name in (model_id, model_id.split("/", 1)[1], *entry.aliases):
            index.setdefault(_normalise(name), model_id)
    # A base id names its -Instruct/-chat sibling when only that one is catalogued, and vice versa.
    for model_id in catalog():
        short = model_id.split("/", 1)[1]
        for suffix in ("-Instruct", "-chat", "-hf"):
            if short.endswith(suffix):
                index.setdefault(_normalise(short[: -len(suffix)] + "-Instruct"), model_id)
                index.setdefault(_normalise(short[: -len(suffix)]), model_id)
            else:
                index.setdefault(_normalise(short + suffix), model_id)
    return index


def find_catalog_id(name: str) -> str | None:
    """Catalog hub id for `name` (hub id, short name, alias; case and punctuation ignored), or None."""
    key = _normalise(
        name.split("/", 1)[1] if "/" in name and _normalise(name) not in _alias_index() else name
    )
    return _alias_index().get(_normalise(name)) or _alias_index().get(key)


def close_matches(name: str, limit: int = 5) -> list[str]:
    """Catalog ids that look like `name`, for 'did you mean' hints."""
    keys = _alias_index()
    hits = difflib.get_close_matches(_normalise(name), list(keys), n=limit * 3, cutoff=0.6)
    return list(dict.fromkeys(keys[h] for h in hits))[:limit]


def catalog_spec(model_id: str) -> ModelSpec:
    """`ModelSpec` of a catalog model."""
    entry = catalog()[model_id]
    return spec_from_hf_config(entry.config, name=model_id, source=entry.source)
