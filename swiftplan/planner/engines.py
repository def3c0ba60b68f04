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
from swiftplan.planner.dtypes import BNB_QUANTS
from swiftplan.planner.hardware import Backend
from swiftplan.planner.setup import RuntimeKnobs, ServeSetup, TrainSetup

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Requirements:
    """What a plan asks of an engine, option by option (None = not applicable)."""

    backend: str
    """Device backend."""
    method: str | None = None
    objective: str | None = None
    quant: str | None = None
    optimizer: str | None = None
    zero: int | None = None
    offload: str | None = None
    kv_dtype: str | None = None
    zero3_quant: str | None = None
    """Training under DeepSpeed ZeRO-3: the base's quantization, which ZeRO-3 partitions too (None otherwise)."""
    tp: int = 1
    pp: int = 1
    gpus: int = 1
    loss: str | None = None
    optimizer_impl: str | None = None
    fsdp: str | None = None
    modules_to_save: tuple[str, ...] = ()
    optimizer_in_backward: bool | None = None
    ckpt_every: int | None = None
    activation_offload: bool | None = None
    fsdp_cpu_offload: bool | None = None
    float8: bool | None = None
    adapter_dtype: str | None = None
    """LoRA adapters' dtype (fp32, model or kbit-bf16); None when nothing trains adapters."""
    keep_output: bool | None = None
    padding: str | None = None
    runtime: str | None = None
    """The runtime profile the plan was made for (named in the reasons for its knobs)."""
    vision: bool = False
    """The plan trains a vision-language model on its images/video (`TrainSetup.vision`), or serves one requests
    with images/video (`ServeSetup.vision`)."""


IMAGE_TRAIN_ENGINES: Mapping[str, str] = MappingProxyType(
    {
        "ms-swift": "executors/train_engines/ms_swift.py render_ms_swift: --freeze_vit, --freeze_aligner, "
        "--max_pixels and MAX_PIXELS/VIDEO_MAX_PIXELS (train_engines/vision.py ms_swift_args, ms_swift_env)",
        "megatron-swift": "executors/train_engines/megatron_swift.py render_megatron_swift: ms-swift's vision "
        "arguments and environment (train_engines/vision.py)",
        "llamafactory": "executors/train_engines/llamafactory.py render_llamafactory: freeze_vision_tower, "
        "freeze_multi_modal_projector, image_max_pixels, video_max_pixels/video_maxlen (train_engines/vision.py "
        "llamafactory_keys)",
    }
)
"""The training engines that train a vision-language model on its images as planned, each with where its renderer
sets what trains and the pixel budget per image. No other does: TRL and axolotl are rendered text-only and refuse a
vision plan (train_engines/vision.py refuse_vision), and swiftplan's own loop loads the language model with
AutoModelForCausalLM and feeds it text alone (executors/train/model.py, data.py)."""


def trains_images(engine: Engine) -> bool:
    """Whether `engine` trains a vision-language model on its images (IMAGE_TRAIN_ENGINES)."""
    return engine.task == "train" and engine.name in IMAGE_TRAIN_ENGINES


def image_engines_text() -> str:
    """The engines that train on images, for a message: 'ms-swift, megatron-swift and llamafactory'."""
    names = list(IMAGE_TRAIN_ENGINES)
    return ", ".join(names[:-1]) + f" and {names[-1]}"


IMAGE_SERVE_ENGINES: Mapping[str, str] = MappingProxyType(
    {
        "vllm": "executors/serve/vllm_cmd.py render_vllm: --limit-mm-per-prompt with the plan's images (and video) per "
        "request, --mm-processor-kwargs with its pixel bound per image or tile count (executors/serve/images.py)",
        "sglang": "executors/serve/sglang_cmd.py render_sglang: --limit-mm-data-per-request and --mm-process-config "
        "with the plan's pixel bound (executors/serve/images.py; an InternVL plan of fewer tiles than the model's most "
        "is refused there)",
    }
)
"""The serving engines given a vision-language plan's images per request and its bound per image, each with where
its renderer sets them. No other serves images as planned: LMDeploy takes the pixel bound and tile count only per
request (executors/serve/images.py), and the built-in server loads the language model with AutoModelForCausalLM and
takes text alone (executors/serve/loading.py, app.py)."""


def serves_images(engine: Engine) -> bool:
    """Whether `engine` serves a vision-language plan's images as planned (IMAGE_SERVE_ENGINES)."""
    return engine.task == "serve" and engine.name in IMAGE_SERVE_ENGINES


def image_serve_engines_text() -> str:
    """The engines that serve images, for a message: 'vllm and sglang'."""
    names = list(IMAGE_SERVE_ENGINES)
    return ", ".join(names[:-1]) + f" and {names[-1]}"


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


def train_requirements(setup: TrainSetup, *, backend: str, gpus: int) -> Requirements:
    """What a training set-up on `gpus` devices of `backend` asks of an engine."""
    return Requirements(
        backend=backend,
        objective=setup.objective.kind,
        method=setup.method,
        quant=setup.quant,
        optimizer=setup.optimizer,
        zero=setup.parallel.zero,
        offload=setup.parallel.offload,
        zero3_quant=setup.quant if setup.parallel.zero == 3 and setup.runtime.fsdp == "none" else None,
        tp=setup.parallel.tp,
        pp=setup.parallel.pp,
        gpus=gpus,
        vision=setup.vision is not None,
        **knob_requirements(
            setup.runtime,
            grad_ckpt=setup.grad_ckpt,
            trains_adapters=setup.trains_adapters,
            quant=setup.quant,
            variable_lengths=setup.variable_lengths,
        ),
    )


def knob_requirements(
    knobs: RuntimeKnobs,
    *,
    grad_ckpt: bool = True,
    trains_adapters: bool = True,
    quant: str | None = None,
    variable_lengths: bool = False,
) -> dict[str, Any]:
    """The `Requirements` fields of a runtime's knobs (checkpointing every k-th block only counts with
    checkpointing on, the adapter dtype only when LoRA adapters train, the padding only when samples vary in
    length; kbit-bf16 on a known base that bitsandbytes does not quantize is peft's fp32)."""
    adapters = knobs.adapter_dtype
    if adapters == "kbit-bf16" and quant is not None and quant not in BNB_QUANTS:
        adapters = "fp32"
    return {
        "loss": knobs.loss,
        "optimizer_impl": knobs.optimizer_impl,
        "fsdp": knobs.fsdp,
        "modules_to_save": knobs.modules_to_save,
        "optimizer_in_backward": knobs.optimizer_in_backward,
        "ckpt_every": knobs.ckpt_every if grad_ckpt else 1,
        "activation_offload": knobs.activation_offload,
        "fsdp_cpu_offload": knobs.fsdp_cpu_offload,
        "float8": knobs.float8,
        "adapter_dtype": adapters if trains_adapters else None,
        "keep_output": knobs.keep_output,
        "padding": knobs.padding if variable_lengths else None,
        "runtime": knobs.name,
    }


def serve_requirements(setup: ServeSetup, *, backend: str, gpus: int) -> Requirements:
    """What a serving set-up on `gpus` devices of `backend` asks of an engine."""
    return Requirements(backend=backend, quant=setup.quant, kv_dtype=setup.kv_dtype, tp=setup.tp, gpus=gpus,
                        vision=setup.vision is not None)  # fmt: skip


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
