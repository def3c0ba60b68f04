"""What `serve` checks before it starts (and before --dry-run prints): the weights can be loaded, they are
the plan's model, and the overrides stay inside what the plan sized.

Reads config.json files and the local Hugging Face cache; the network only for the config.json of a --model that
no local copy has (one small download, as `fit` makes).
"""

from __future__ import annotations

from pathlib import Path

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup

_WHAT_LOADS = (
    "serve loads a model directory (config.json and the weights), a model's config.json, a hub id such as "
    "Qwen/Qwen2.5-0.5B-Instruct, or a serving plan (.yaml) made by `swiftplan fit MODEL --task serve -o plan.yaml`."
)
_SHAPE = (
    ("model_type", "model_type"),
    ("hidden_size", "hidden_size"),
    ("num_layers", "num_hidden_layers"),
    ("num_heads", "num_attention_heads"),
    ("num_kv_heads", "num_key_value_heads"),
    ("head_dim", "head_dim"),
    ("intermediate_size", "intermediate_size"),
)
"""(ModelSpec field, config.json key): what makes two checkpoints the same architecture for memory."""


def _config_of(name: str, path: Path) -> None:
    """`path` (a directory or a file) holds a model's config.json."""
    file = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise SwiftplanError(f"{name} is a directory without a config.json: no model can be loaded from it.",
                             hint=_WHAT_LOADS)  # fmt: skip
    if not file.is_file() or file.suffix != ".json":
        raise SwiftplanError(f"{name} is not a model: it is neither a model directory nor a config.json.",
                             hint=_WHAT_LOADS)  # fmt: skip
    from swiftplan.executors.model_source import read_config

    try:
        config = read_config(file)
    except SwiftplanError as error:
        raise SwiftplanError(error.message, hint=_WHAT_LOADS) from error
    if "model_type" not in config:
        raise SwiftplanError(
            f"{file} is not a model's config.json: it has no model_type key.", hint=_WHAT_LOADS
        )


def check_weights(name: str) -> None:
    """The model `name` names can be loaded, as far as can be told without downloading it: a local model
    with a config.json, a catalog model, or a well-formed hub id (in the local cache when the hub is off).
    The real start fails on the same things, later and less clearly; --dry-run now fails on them too."""
    from swiftplan.executors.model_source import (
        cached_hub_config,
        check_hub_id,
        hub_cache_dir,
        hub_off_switch,
    )
    from swiftplan.planner.model_catalog import close_matches, find_catalog_id

    path = Path(name).expanduser()
    if path.exists():
        _config_of(name, path)
        return
    if find_catalog_id(name) is not None:
        return
    if "/" in name and not name.startswith((".", "/", "~")):
        check_hub_id(name)
        switch = hub_off_switch()
        if switch is not None and cached_hub_config(name) is None:
            raise SwiftplanError(
                f"Model {name!r} is not in the catalog or in the local Hugging Face cache ({hub_cache_dir()}), and "
                f"the hub is off ({switch}): nothing can tell whether it exists, and its weights cannot be "
                "downloaded.",
                hint=f"Download it while online (`hf download {name}`), or pass a local model directory.",
            )
        return
    if "/" in name or name.startswith((".", "~")):
        raise SwiftplanError(f"{name} does not exist.", hint=_WHAT_LOADS)
    suggestions = close_matches(name)
    did_you_mean = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise SwiftplanError(f"Unknown model {name!r}: not a local path, a catalog name or a hub id.{did_you_mean}",
                         hint=_WHAT_LOADS)  # fmt: skip


def spec_at_hand(name: str) -> ModelSpec | None:
    """The model's spec from a local config, the catalog or the Hugging Face cache (no network); None
    when none of them has it."""
    from swiftplan.executors.model_source import cached_hub_config, known_spec
    from swiftplan.planner.model_spec import spec_from_hf_config

    try:
        spec = known_spec(name)
        if spec is None and (config := cached_hub_config(name)) is not None:
            spec = spec_from_hf_config(
                config, name=name, source=f"huggingface.co/{name}/config.json (cached)"
            )
    except SwiftplanError:
        return None
    return spec


def _fetched_spec(name: str) -> ModelSpec | None:
    """A hub model's spec from its config.json fetched from the hub (one small download, as `fit` does), when no
    local copy has it; None when the hub is off, unreachable or has no such model."""
    from swiftplan.executors.model_source import resolve_model

    try:
        return resolve_model(name)
    except SwiftplanError:
        return None


def _same_name(a: str, b: str) -> bool:
    from swiftplan.planner.model_catalog import find_catalog_id

    def canonical(name: str) -> str:
        path = Path(name).expanduser()
        if path.exists():
            return str((path.parent if path.is_file() else path).resolve())
        return (find_catalog_id(name) or name).casefold()

    return canonical(a) == canonical(b)


def check_same_model(planned: str, weights: str) -> None:
    """`--model` loads the plan's model, or a checkpoint of the same architecture (a fine-tune, the
    instruct variant): the plan's memory and speed hold for nothing else."""
    if _same_name(planned, weights):
        return
    plan_spec, given = spec_at_hand(planned), spec_at_hand(weights) or _fetched_spec(weights)
    if plan_spec is not None and given is not None:
        differ = [(key, getattr(given, field), getattr(plan_spec, field)) for field, key in _SHAPE
                  if getattr(given, field) != getattr(plan_spec, field)]  # fmt: skip
        if not differ:
            return
        key, theirs, ours = differ[0]
        why = f"its {key} is {theirs}, the plan's model has {ours}"
    elif given is None:
        why = (
            "its config.json is not at hand to compare (not local, in the catalog or in the Hugging Face cache, "
            "and the hub could not give it)"
        )
    else:
        why = "the plan's model config is not at hand to compare"
    raise SwiftplanError(
        f"--model {weights} is not the plan's model {planned} ({why}): the plan's memory and speed were worked "
        "out for its model, so serving another one on it is unchecked.",
        hint=f"Plan that model first: swiftplan fit {weights} --task serve --gpus GPUS -o plan.yaml, then serve "
        "that plan. --model takes the plan's model or a checkpoint of it (a local directory).",
    )


def check_context(model: str, context: int) -> None:
    """`--context` within the model's positions (vLLM refuses to start past them)."""
    spec = spec_at_hand(model)
    if spec is not None and context > spec.max_position_embeddings:
        raise SwiftplanError(
            f"--context {context} is beyond the {spec.max_position_embeddings:,} positions {model} reads "
            "(max_position_embeddings in its config.json, stretched by any rope scaling).",
            hint=f"Give --context {spec.max_position_embeddings} or less.",
        )


def check_within_plan(
    planned: ServeSetup,
    setup: ServeSetup,
    *,
    model: str,
    context: int | None,
    concurrency: int | None,
    fits: int | None = None,
) -> None:
    """Overrides of --context and --concurrency keep the tokens held at once (context × concurrency)
    within the KV cache the plan sized: the sequences of its context that it found fit on every replica (`fits`,
    the plan's max_concurrency × replicas), or those it was asked for; more was never checked against the
    device's memory."""
    slots = max(planned.concurrency, fits or 0)
    asked, sized = setup.context * setup.concurrency, planned.context * slots
    if asked <= sized:
        return
    given = " and ".join(f"--{flag} {value}" for flag, value in (("context", context), ("concurrency", concurrency))
                         if value is not None)  # fmt: skip
    raise SwiftplanError(
        f"{given} asks for {setup.concurrency:,} sequences of {setup.context:,} tokens at once ({asked:,} tokens "
        f"of KV cache), more than the plan sized and checked: {slots:,} × {planned.context:,} = "
        f"{sized:,} tokens.",
        hint=f"Stay within it, or re-plan: swiftplan fit {model} --task serve --context {setup.context} "
        f"--concurrency {setup.concurrency} --gpus GPUS -o plan.yaml.",
    )
