"""Regenerate swiftplan/profiles/models.json from ../shared/reference/models.json and scripts/catalog_curated.json.

The reference file holds architecture facts with their sources; this keeps, per model, the
config.json keys the planner reads, the citation, and the parameter count the reference
computed (tests check our layout reproduces it exactly). Run from the repo root:

    python scripts/build_model_catalog.py ../shared/reference/models.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Keys that are not config.json keys (annotations added by the reference compilers).
_ANNOTATIONS = {
    "family",
    "architectures",
    "is_moe",
    "modality",
    "sources",
    "notes",
    "params",
    "source",
    "mla",
    "raw_config_keys",
    "routing",
    "head_dim_derived",
    "vision_tower_params_computed",
}
_SKIP_MODEL_TYPES: set[str] = set()  # every reference model is laid out (Qwen2-VL's tower: planner/vision.py)
CURATED = Path(__file__).resolve().parent / "catalog_curated.json"
"""Models added beside the reference (vision-language models), each with its sources, kept verbatim."""


def _config(entry: dict) -> dict:
    config = {k: v for k, v in entry.items() if k not in _ANNOTATIONS and not k.endswith("_note")}
    for key, value in (entry.get("mla") or {}).items():
        if key not in ("note", "kv_cache_elements_per_token_per_layer"):
            config[key] = value
    if isinstance(config.get("attention_bias"), str):  # a prose annotation, not the config value
        del config["attention_bias"]
    config.update(entry.get("raw_config_keys") or {})
    config.update(entry.get("routing") or {})
    return {k: v for k, v in config.items() if v is not None or k in ("q_lora_rank", "sliding_window")}


def _aliases(model_id: str) -> list[str]:
    short = model_id.split("/", 1)[1]
    aliases = {short, short.lower()}
    for suffix in ("-Instruct", "-hf", "-chat", "-v0.1", "-4k-instruct"):
        if short.endswith(suffix):
            aliases.add(short[: -len(suffix)])
    return sorted(aliases)


def main(reference_path: str) -> None:
    reference = json.loads(Path(reference_path).read_text())
    models = {}
    for model_id, entry in reference["models"].items():
        if entry["model_type"] in _SKIP_MODEL_TYPES:
            continue
        models[model_id] = {
            "aliases": _aliases(model_id),
            "family": entry.get("family"),
            "config": _config(entry),
            "params_reference": entry["params"].get("computed_total"),
            "params_published_b": entry["params"].get("published_total_b"),
            "params_published_source": entry["params"].get("published_source"),
            "source": entry.get("source"),
            "sources": entry.get("sources", []),
            "notes": entry.get("notes", []),
        }
    curated = json.loads(CURATED.read_text())["models"]
    models.update({model_id: entry | {"curated": True} for model_id, entry in curated.items()})
    out = {
        "_meta": {
            "description": "Model architecture catalog: config.json keys per model, with citations.",
            "generated_from": "shared/reference/models.json (see its README for how each figure was checked)",
            "generator": "scripts/build_model_catalog.py",
            "params_reference": "parameter count computed by the reference compilers from the config; "
            "tests/test_model_spec.py checks swiftplan reproduces it exactly",
        },
        "models": models,
    }
    target = Path(__file__).resolve().parent.parent / "swiftplan" / "profiles" / "models.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(models)} models to {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/models.json")
