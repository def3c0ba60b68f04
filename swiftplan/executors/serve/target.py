"""What to serve: a plan file (or a bare model) plus command-line overrides → `ServeTarget`.

Shared by the vLLM and the built-in paths; reads the plan file, imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.serve.memory_fraction import ServeMemory
from swiftplan.executors.serve.report import Prediction
from swiftplan.planner.hardware import Accelerator
from swiftplan.planner.model_catalog import find_catalog_id
from swiftplan.planner.setup import ServeSetup

_DEFAULT_SLOTS = 8  # concurrency when serving a bare model without a plan


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeTarget:
    """The model, its weights and the serving set-up, with the plan's prediction if there is one."""

    model: str
    """The model as the plan (or the command line) names it."""
    weights: str
    """What to load: a hub id or a local model directory."""
    setup: ServeSetup
    """Context, concurrency, dtype, parallelism: from the plan, overridden by options."""
    prediction: Prediction
    """The plan's predicted speed and memory (all None without a plan)."""
    plan_path: str | None = None
    """The plan file, when one was given."""
    engine: str | None = None
    """The engine the plan was made for (None without a plan)."""
    backend: str | None = None
    """The device backend the plan was made for (None without a plan)."""
    gpus: int = 1
    """GPUs one replica of the plan uses (its tensor-parallel degree)."""
    accelerator: Accelerator | None = None
    """The device the plan was made for (None without a plan): which engines' kernels run its weights there."""
    memory: ServeMemory | None = None
    """One device's memory as the plan sized it (engines whose memory knob is not vLLM's convert with it)."""


def weights_source(model: str) -> str:
    """A loadable source for a model name: a config.json's directory, a hub id as is, a short alias's hub id."""
    path = Path(model).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        return str(path.parent)
    if path.exists() or "/" in model:
        return str(path) if path.exists() else model
    return find_catalog_id(model) or model


def resolve_target(
    plan_or_model: str, *, weights: str | None = None, context: int | None = None,
    concurrency: int | None = None, dtype: str | None = None, load_weights: bool = True,
) -> ServeTarget:  # fmt: skip
    """Read a plan file (a .yaml/.yml path) or take a model name, then apply the overrides. Refused: weights
    that cannot be loaded (unless `load_weights` is False: random weights), `weights` that are not the plan's
    model, a context past the model's positions, and overrides holding more tokens than the plan sized."""
    from swiftplan.executors.model_source import check_plan_model
    from swiftplan.executors.serve import checks
    from swiftplan.plan_file import is_plan_path, load_plan

    if dtype is not None and dtype not in ("bf16", "fp16", "fp32"):
        raise SwiftplanError(f"Unknown dtype {dtype!r}; valid values are: bf16, fp16, fp32.")
    overrides: dict[str, Any] = {
        k: v
        for k, v in {"context": context, "concurrency": concurrency, "dtype": dtype}.items()
        if v is not None
    }
    if is_plan_path(plan_or_model):
        plan = load_plan(plan_or_model)
        setup = plan.setup
        if not isinstance(setup, ServeSetup):
            raise SwiftplanError(f"{plan_or_model} is a training plan; `swiftplan serve` needs a serving plan.",
                                 hint="Create one with `swiftplan fit MODEL --task serve ... -o plan.yaml`.")  # fmt: skip
        # its launch values were checked on load; here they are checked against the model
        check_plan_model(plan, plan_or_model)
        model, prediction, path = plan.model, Prediction.from_plan(plan), plan_or_model
        planned: dict[str, Any] = {
            "engine": plan.engine,
            "backend": plan.hardware.accelerator.backend,
            "accelerator": plan.hardware.accelerator,
            "gpus": plan.layout.tp,
            "memory": ServeMemory.from_breakdown(
                plan.prediction.per_device_bytes, plan.prediction.device_memory_bytes
            ),
        }
    else:
        planned = {}
        setup = ServeSetup(concurrency=_DEFAULT_SLOTS)
        model, prediction, path = plan_or_model, Prediction(), None
    planned_setup = setup
    try:
        setup = dataclasses.replace(setup, **overrides)
    except (TypeError, SwiftplanError) as error:
        raise SwiftplanError(f"Invalid serving option: {error}") from error
    if load_weights:
        checks.check_weights(weights or model)
    if path is not None and weights is not None:
        checks.check_same_model(model, weights)
    if context is not None:
        checks.check_context(weights or model, context)
    if path is not None:
        checks.check_within_plan(planned_setup, setup, model=model, context=context, concurrency=concurrency,
                                 fits=plan.prediction.max_concurrency * plan.layout.dp
                                 if plan.prediction.max_concurrency else None)  # fmt: skip
    return ServeTarget(model=model, weights=weights_source(weights or model), setup=setup, prediction=prediction,
                       plan_path=path, **planned)  # fmt: skip


def parse_loras(items: list[str], *, served_name: str) -> tuple[tuple[str, str], ...]:
    """`--lora NAME=PATH` options → ((name, path), ...), names unique and distinct from the base, each path a
    hub id or a local directory holding adapter_config.json."""
    from swiftplan.executors.model_source import check_local_or_hub

    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise SwiftplanError(f"--lora {item!r} is not NAME=PATH.", hint="e.g. --lora sql=./adapters/sql")
        if name in (served_name, *(n for n, _ in pairs)):
            raise SwiftplanError(
                f"--lora name {name!r} is used twice (the base model is served as {served_name!r})."
            )
        check_local_or_hub(f"--lora {item}", path.strip(), files=("adapter_config.json",),
                           what="a LoRA adapter (peft's save_pretrained output)", usage="--lora NAME=DIR")  # fmt: skip
        pairs.append((name.strip(), path.strip()))
    return tuple(pairs)
