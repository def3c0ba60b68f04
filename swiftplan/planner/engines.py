"""What each engine can run (`profiles/engines.json`), and the reasons a plan cannot run on one.

The device table (`capabilities.py`) says what an accelerator can do; this table says what an engine
does on a device family that can. The search narrows its space with `allowed`, `estimate` and the
executors refuse with `engine_reasons`, so `fit` never returns a plan its engine cannot launch. Pure:
reads packaged data only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.capabilities import check
from swiftplan.planner.engine_requirements import (
    Requirements,
    knob_requirements,
    serve_requirements,
    train_requirements,
)
from swiftplan.planner.hardware import Backend
from swiftplan.planner.image_engines import (
    IMAGE_SERVE_ENGINES,
    IMAGE_TRAIN_ENGINES,
    image_engines_text,
    image_serve_engines_text,
    serves_images,
    trains_images,
)

__all__ = [  # Requirements and the image-engine tables moved out (engine_requirements, image_engines); importable here
    "DEFAULT_TRAIN_ENGINE",
    "IMAGE_SERVE_ENGINES",
    "IMAGE_TRAIN_ENGINES",
    "Engine",
    "EngineLimit",
    "EngineTask",
    "Requirements",
    "default_engine",
    "engine_reasons",
    "engines_that_run",
    "get_engine",
    "image_engines_text",
    "image_serve_engine",
    "image_serve_engines_text",
    "knob_requirements",
    "list_engines",
    "refused_knobs",
    "require_engine",
    "runtime_engine",
    "serve_requirements",
    "serves_images",
    "train_requirements",
    "trains_images",
]

EngineTask = Literal["train", "serve"]
DEFAULT_TRAIN_ENGINE = "swiftplan"
"""The engine `fit` plans training for unless told otherwise: the project's own loop."""

_LIST_OPTIONS = (
    "backend",
    "objective",
    "method",
    "quant",
    "optimizer",
    "zero",
    "offload",
    "kv_dtype",
    "zero3_quant",
)
_KNOB_OPTIONS = ("loss", "optimizer_impl", "fsdp", "modules_to_save", "optimizer_in_backward", "ckpt_every",
                 "activation_offload", "fsdp_cpu_offload", "float8", "adapter_dtype", "keep_output", "padding")  # fmt: skip
"""RuntimeKnobs an engine may restrict (list options; modules_to_save: the modules it can train in full)."""
_MAX_OPTIONS = ("tp_max", "pp_max", "gpus_max")
_OPTION_LABELS = {
    "backend": "device backend",
    "objective": "training task",
    "method": "method",
    "quant": "quantization",
    "optimizer": "optimizer",
    "zero": "ZeRO stage",
    "offload": "offload",
    "zero3_quant": "ZeRO-3 partitioning of a base quantized as",
    "kv_dtype": "KV-cache dtype",
    "tp_max": "tensor parallelism",
    "pp_max": "pipeline parallelism",
    "gpus_max": "GPUs",
    "loss": "loss implementation",
    "optimizer_impl": "optimizer implementation",
    "fsdp": "FSDP",
    "modules_to_save": "module trained in full next to LoRA",
    "optimizer_in_backward": "optimizer step in backward",
    "ckpt_every": "checkpointing every k-th block, k =",
    "activation_offload": "activation offloading",
    "fsdp_cpu_offload": "FSDP CPU offload",
    "float8": "float8 training",
    "adapter_dtype": "LoRA adapter dtype",
    "keep_output": "keeping the model output through backward",
    "padding": "padding",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineLimit:
    """A narrowing of an engine's options on some device backends."""

    backends: tuple[str, ...]
    """Backends the limit applies to; empty = every backend."""
    allows: Mapping[str, Any]
    """Option → allowed values (or the bound, for *_max options) on those backends."""
    reason: str
    """Why, shown to the user."""
    source: str
    """Where this comes from."""

    def applies(self, backend: str) -> bool:
        """Whether the limit holds on `backend`."""
        return not self.backends or backend in self.backends


@dataclass(frozen=True, kw_only=True, slots=True)
class Engine:
    """One training or serving engine and what it runs."""

    name: str
    """Engine id: 'swiftplan', 'vllm', 'megatron-swift', ..."""
    task: EngineTask
    """Training or serving."""
    label: str
    """Human name."""
    runnable: bool
    """Whether swiftplan can launch it today."""
    command: str
    """What the user runs."""
    source: str
    """Where the entry comes from."""
    allows: Mapping[str, Any]
    """Option → allowed values (lists) or bound (*_max); absent = unrestricted."""
    limits: tuple[EngineLimit, ...] = ()
    """Per-backend narrowings."""
    runtime: str | None = None
    """The runtime profile whose defaults it runs with (profiles/runtimes/NAME.yaml); None = none yet."""

    def allowed(self, option: str, backend: str) -> tuple[Any, ...] | None:
        """Values of a list option this engine allows on `backend`; None = unrestricted."""
        values: tuple[Any, ...] | None = tuple(self.allows[option]) if option in self.allows else None
        for limit in self.limits:
            if limit.applies(backend) and option in limit.allows:
                narrowed = tuple(limit.allows[option])
                values = narrowed if values is None else tuple(v for v in values if v in narrowed)
        return values

    def bound(self, option: str, backend: str) -> int | None:
        """The tightest *_max bound on `backend` (tp_max, pp_max, gpus_max); None = unbounded."""
        bounds = [self.allows[option]] if option in self.allows else []
        bounds += [lim.allows[option] for lim in self.limits if lim.applies(backend) and option in lim.allows]
        return min(bounds) if bounds else None

    def why(self, option: str, backend: str) -> str:
        """The reason an option is narrowed on `backend` (a limit's reason, else the engine's own)."""
        for limit in self.limits:
            if limit.applies(backend) and option in limit.allows:
                return limit.reason
        return f"{self.label} does not support it"


def _engine_from_entry(name: str, entry: dict[str, Any]) -> Engine:
    known = {"task", "label", "runnable", "command", "source", "allows", "limits", "runtime"}
    if set(entry) - known or entry.get("task") not in ("train", "serve") or not entry.get("source"):
        raise ValueError(f"engines.json entry {name!r} is malformed: keys {sorted(entry)}")
    for option in entry["allows"]:
        if option not in _LIST_OPTIONS + _KNOB_OPTIONS + _MAX_OPTIONS:
            raise ValueError(f"engines.json {name}: unknown option {option!r}")
    limits = []
    for limit in entry.get("limits", []):
        if not limit.get("reason") or not limit.get("source") or set(limit["when"]) - {"backend"}:
            raise ValueError(f"engines.json {name}: a limit needs a reason and a source: {limit}")
        limits.append(
            EngineLimit(
                backends=tuple(limit["when"].get("backend", ())),
                allows=MappingProxyType(dict(limit["allows"])),
                reason=limit["reason"],
                source=limit["source"],
            )
        )
    return Engine(
        name=name,
        task=entry["task"],
        label=entry["label"],
        runnable=bool(entry["runnable"]),
        command=entry["command"],
        source=entry["source"],
        allows=MappingProxyType(dict(entry["allows"])),
        limits=tuple(limits),
        runtime=entry.get("runtime"),
    )


@lru_cache(maxsize=1)
def _engines() -> dict[str, Engine]:
    text = resources.files("swiftplan.profiles").joinpath("engines.json").read_text(encoding="utf-8")
    return {name: _engine_from_entry(name, entry) for name, entry in json.loads(text)["engines"].items()}


def list_engines(task: EngineTask | None = None, *, runnable: bool | None = None) -> tuple[Engine, ...]:
    """Engines in table order, optionally only those of one task / that swiftplan can launch."""
    return tuple(
        e
        for e in _engines().values()
        if (task is None or e.task == task) and (runnable is None or e.runnable == runnable)
    )


def get_engine(name: str, task: EngineTask | None = None) -> Engine:
    """The engine called `name` (for `task`, when given); one clear error otherwise."""
    engine = _engines().get(name.strip().lower())
    if engine is None or (task is not None and engine.task != task):
        valid = [e.name for e in list_engines(task, runnable=True)]
        raise SwiftplanError(
            f"Unknown {task + ' ' if task else ''}engine {name!r}; valid values are: {', '.join(valid)}."
        )
    return engine


def runtime_engine(runtime: str, task: EngineTask) -> Engine | None:
    """The engine that runs with `runtime`'s defaults (its `runtime` in engines.json); None when the
    table has none (swiftplan cannot check or launch a plan for that framework yet)."""
    return next((e for e in list_engines(task) if e.runtime == runtime), None)


def default_engine(task: EngineTask, backend: Backend, *, images: bool = False) -> Engine:
    """The engine `fit` plans for when none is named: our loop for training; for serving vLLM where
    it runs on this backend, else the built-in server, or with `images` the first engine of
    IMAGE_SERVE_ENGINES that runs there (one message when none does)."""
    if task == "train":
        return get_engine(DEFAULT_TRAIN_ENGINE)
    if images:
        return image_serve_engine(backend)
    vllm = get_engine("vllm")
    backends = vllm.allowed("backend", backend)
    return vllm if backends is None or backend in backends else get_engine("builtin")


def image_serve_engine(backend: str) -> Engine:
    """The first serving engine swiftplan launches that serves a vision-language plan's images on `backend`."""
    needs = Requirements(backend=backend, vision=True)
    for engine in list_engines("serve", runnable=True):
        if serves_images(engine) and not engine_reasons(engine, needs):
            return engine
    raise SwiftplanError(
        f"No engine swiftplan launches serves a vision-language model's images on {backend} devices "
        f"({image_serve_engines_text()} do, where they run; the built-in server serves text only).",
        hint="Drop the image options to plan the text alone, or plan for a device those engines run on.",
    )


def engine_reasons(engine: Engine, needs: Requirements) -> list[str]:
    """Every setting of the plan this engine cannot run, one sentence each naming it; empty when it can."""
    backend = needs.backend
    reasons: list[str] = []
    backends = engine.allowed("backend", backend)
    if backends is not None and backend not in backends:
        return [f"{engine.label} does not run on {backend} devices (it runs on {', '.join(backends)})."]
    for option in ("objective", "method", "quant", "optimizer", "zero", "offload", "kv_dtype", "zero3_quant"):
        value = getattr(needs, option)
        allowed = engine.allowed(option, backend)
        if value is None or allowed is None or value in allowed:
            continue
        reasons.append(
            f"{_OPTION_LABELS[option]} {value!r} is not available on {engine.name} with {backend} "
            f"({engine.why(option, backend)}; it allows {', '.join(map(str, allowed))})."
        )
    if needs.vision and engine.task == "train" and not trains_images(engine):
        reasons.append(
            f"{engine.name} does not train a vision-language model on its images: only {image_engines_text()} are "
            "given a plan's pixel budget per image and what trains (tower, aligner)."
        )
    if needs.vision and engine.task == "serve" and not serves_images(engine):
        reasons.append(
            f"{engine.name} does not serve a vision-language model's images as planned: only "
            f"{image_serve_engines_text()} are given a plan's images per request and its pixel bound per image."
        )
    if engine.task == "serve" and needs.accelerator is not None and needs.quant is not None:
        reasons += check(needs.accelerator, quant=needs.quant, serve_runtime=engine.runtime)
    reasons += _knob_reasons(engine, needs)
    for option, value in (("tp_max", needs.tp), ("pp_max", needs.pp), ("gpus_max", needs.gpus)):
        bound = engine.bound(option, backend)
        if bound is not None and value > bound:
            what = _OPTION_LABELS[option]
            reasons.append(
                f"{value} {what} is more than {engine.name} uses on {backend} (at most {bound}: {engine.why(option, backend)})."
                if option == "gpus_max"
                else f"{what} of degree {value} is not available on {engine.name} ({engine.why(option, backend)})."
            )
    return reasons


def refused_knobs(engine: Engine, needs: Requirements) -> list[tuple[str, Any]]:
    """(RuntimeKnobs field, value) for each runtime setting of the plan the engine does not implement."""
    refused = []
    for option in _KNOB_OPTIONS:
        value = getattr(needs, option)
        allowed = engine.allowed(option, needs.backend)
        if value is None or allowed is None:
            continue
        refused += [
            (option, v) for v in (value if option == "modules_to_save" else (value,)) if v not in allowed
        ]
    return refused


def _knob_reasons(engine: Engine, needs: Requirements) -> list[str]:
    """The runtime settings of the plan the engine does not implement, in one sentence per reason, naming
    the runtime they came from."""
    backend = needs.backend
    unmet: dict[str, list[str]] = {}
    for option, v in refused_knobs(engine, needs):
        shown = str(v).lower() if isinstance(v, bool) else repr(v)
        unmet.setdefault(engine.why(option, backend), []).append(f"{_OPTION_LABELS[option]} {shown}")
    planned = f" (in a plan made for runtime {needs.runtime!r})" if needs.runtime else ""
    return [
        f"{engine.name} does not run {', '.join(settings)}{planned}: {why}."
        for why, settings in unmet.items()
    ]


def engines_that_run(needs: Requirements, task: EngineTask) -> tuple[Engine, ...]:
    """Every engine of `task` in the table (runnable or not) that could run a plan with these needs."""
    return tuple(e for e in list_engines(task) if not engine_reasons(e, needs))


def require_engine(engine: Engine, needs: Requirements, *, plan: str = "PLAN") -> None:
    """Raise one SwiftplanError when `engine` cannot run a plan with these needs: the message names every
    setting it cannot run, the hint the engines swiftplan launches that can (their command, for `plan`)."""
    reasons = engine_reasons(engine, needs)
    if not reasons:
        return
    others = [e for e in engines_that_run(needs, engine.task) if e.runnable and e.name != engine.name]
    can = "; ".join(f"{e.label.split(' (')[0]} can: {e.command.replace('PLAN', plan)}" for e in others)
    task = "serve" if engine.task == "serve" else "sft"  # fit's --task names training 'sft'
    replan = f"re-plan for {engine.name}: swiftplan fit MODEL --task {task} --engine {engine.name}"
    raise SwiftplanError(
        f"The {engine.name} engine cannot run this plan: {' '.join(reasons)}",
        hint=f"{can}; or {replan}." if can else f"No engine swiftplan launches runs it as planned; {replan}.",
    )
