"""Plan files: the versioned YAML form of a `Plan` (`swiftplan fit -o plan.yaml` writes it, every other
verb reads it).

Schema version 2 serialises the typed `Plan` exactly: model, task, engine, the hardware snapshot (the
accelerator's figures as planned, nodes × GPUs per node used, usable memory, interconnect), the layout,
the workload, the set-up (with its objective: SFT, a preference method, reward modelling or RL with its
rollout settings; a file without one trains SFT) and the prediction, so a plan never needs the catalog
to be read back. Version 1 files (no snapshot, a `cluster` string) still load, through the catalog.
Validation is pydantic with unknown keys forbidden; the set-up is rebuilt through `TrainSetup` /
`ServeSetup`, so their cross-field checks apply to files too. Every problem is one `SwiftplanError`
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swiftplan import __version__
from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Accelerator, Cluster
from swiftplan.planner.layout import Layout
from swiftplan.planner.objective import (
    Objective,
    ObjectiveSetup,
    Reference,
    RolloutEngine,
    RolloutPlacement,
    RolloutSetup,
)
from swiftplan.planner.plan import Plan, Prediction
from swiftplan.planner.setup import (
    AdapterDtype,
    AttentionImpl,
    CkptPosition,
    Fsdp,
    FsdpSharding,
    KvDtype,
    LoraSetup,
    LossImpl,
    Method,
    Offload,
    Optimizer,
    OptimizerImpl,
    Padding,
    Parallelism,
    Precision,
    Quant,
    RuntimeKnobs,
    SavedModule,
    ServeRuntime,
    ServeSetup,
    TrainSetup,
)
from swiftplan.planner.vision import VisionInputs
from swiftplan.planner.workload import ServeWorkload, TrainWorkload, replica_concurrency

SCHEMA_VERSION: Final = 2
_WITH_SETUP = ("runtime", "objective", "eager", "variable_lengths", "vision")
"""Workload fields stored once, with the set-up."""
READABLE_VERSIONS = (1, 2)
_HINT = 'Plan files are written by `swiftplan fit ... -o plan.yaml`; the README section "Plan files" lists every field.'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    """Unknown keys refused; .inf and .nan refused in every number a plan is made from."""


class LoraFields(_Strict):
    """`LoraSetup`."""

    rank: int = Field(strict=True, gt=0)
    alpha: int | None = Field(strict=True, default=None, gt=0)
    targets: list[str] = Field(min_length=1)
    dropout: float = Field(strict=True, ge=0, lt=1)
    dora: bool = False


class ParallelFields(_Strict):
    """`Parallelism`."""

    tp: int = Field(strict=True, gt=0)
    pp: int = Field(strict=True, gt=0)
    zero: Literal[0, 1, 2, 3]
    offload: Offload


class RuntimeFields(_Strict):
    """`RuntimeKnobs`: the runtime profile the plan was made for and its settings (absent in files
    written before runtimes: swiftplan's own loop, the defaults)."""

    name: str
    loss: LossImpl = "full"
    loss_chunks: int = Field(strict=True, default=8, gt=0)
    loss_chunk_tokens: int = Field(strict=True, default=0, ge=0)
    optimizer_impl: OptimizerImpl = "fused"
    modules_to_save: list[SavedModule] = []
    optimizer_in_backward: bool = False
    fsdp: Fsdp = "none"
    fsdp_sharding: FsdpSharding = "full_shard"
    fsdp_shard_group: int = Field(strict=True, default=0, ge=0)
    ds_buckets: bool = False
    reduce_bucket_elements: int = Field(strict=True, default=500_000_000, ge=0)
    prefetch_bucket_elements: int = Field(strict=True, default=50_000_000, ge=0)
    max_live_parameters: int = Field(strict=True, default=1_000_000_000, ge=0)
    max_reuse_distance: int = Field(strict=True, default=1_000_000_000, ge=0)
    ds_auto_buckets: bool = False
    ds_overlap_comm: bool = True
    ckpt_every: int = Field(strict=True, default=1, ge=1)
    ckpt_position: CkptPosition = "first"
    activation_offload: bool = False
    fsdp_cpu_offload: bool = False
    float8: bool = False
    adapter_dtype: AdapterDtype = "fp32"
    keep_output: bool = False
    expandable_segments: bool = False  # absent before it was a knob: the default allocator
    padding: Padding = "longest"  # absent from plan files written before padding masks were planned


class RolloutFields(_Strict):
    """`RolloutSetup`: how GRPO/PPO generate completions."""

    num_generations: int = Field(strict=True, ge=2)
    prompt_len: int = Field(strict=True, gt=0)
    completion_len: int = Field(strict=True, gt=0)
    engine: RolloutEngine
    placement: RolloutPlacement
    gpus: int = Field(strict=True, ge=0)
    memory_fraction: float = Field(ge=0.05, le=0.95)
    sleep: bool
    tp: int = Field(strict=True, gt=0)


class ObjectiveFields(_Strict):
    """`ObjectiveSetup` (absent in files written before objectives: supervised fine-tuning)."""

    kind: Objective = "sft"
    reference: Reference = "auto"
    prompt_len: int = Field(strict=True, default=0, ge=0)
    rollout: RolloutFields | None = None
    kl: bool = False


class VisionFields(_Strict):
    """`VisionInputs`: a vision-language model's images/video per sample and what trains (absent: text only)."""

    images_per_sample: int = Field(strict=True, default=1, ge=0)
    image_width: int = Field(strict=True, default=0, ge=0)
    image_height: int = Field(strict=True, default=0, ge=0)
    image_tokens: int = Field(strict=True, default=0, ge=0)
    video_frames: int = Field(strict=True, default=0, ge=0)
    freeze_vit: bool = True
    freeze_aligner: bool = True


class TrainFields(_Strict):
    """`TrainSetup`."""

    method: Method
    precision: Precision
    quant: Quant
    double_quant: bool
    lora: LoraFields | None
    optimizer: Optimizer
    micro_batch: int = Field(strict=True, gt=0)
    seq_len: int = Field(strict=True, gt=0)
    grad_accum: int = Field(strict=True, gt=0)
    grad_ckpt: bool
    attention: AttentionImpl
    kbit_upcast: bool = False
    variable_lengths: bool = False  # absent from plan files written before padding masks were planned
    parallel: ParallelFields
    runtime: RuntimeFields | None = None
    objective: ObjectiveFields | None = None
    vision: VisionFields | None = None


class ServeFields(_Strict):
    """`ServeSetup`."""

    dtype: Literal["bf16", "fp16", "fp32"]
    quant: Quant
    kv_dtype: KvDtype
    context: int = Field(strict=True, gt=0)
    concurrency: int = Field(strict=True, gt=0)
    prefill_chunk: int = Field(strict=True, gt=0)
    tp: int = Field(strict=True, gt=0)
    gpu_memory_utilization: float = Field(strict=True, ge=0.05, le=1.0)
    max_loras: int = Field(strict=True, ge=0)
    max_lora_rank: int = Field(strict=True, gt=0)
    vision: VisionFields | None = None
    runtime: ServeRuntime = "vllm"  # absent from plan files written before the serving engine was planned
    eager: bool = Field(strict=True, default=False)  # absent from plan files written before eager decode


class TrainWorkloadFields(_Strict):
    """`TrainWorkload`."""

    seq_len: int = Field(strict=True, gt=0)
    global_batch: int = Field(strict=True, gt=0)
    dataset_tokens: int = Field(strict=True, gt=0)
    dataset_image_tokens: int = Field(strict=True, default=0, ge=0)  # absent before fit took images
    epochs: float = Field(strict=True, gt=0)
    attention: str
    lora_dropout: float = Field(strict=True, ge=0, lt=1)
    dora: bool = Field(strict=True, default=False)  # absent before fit took --dora


class ServeWorkloadFields(_Strict):
    """`ServeWorkload`."""

    context: int = Field(strict=True, gt=0)
    concurrency: int | None = Field(strict=True, default=None, gt=0)
    ttft_s: float | None = Field(strict=True, default=None, gt=0)
    decode_tps: float | None = Field(strict=True, default=None, gt=0)
    gpu_memory_utilization: float = Field(strict=True, ge=0.05, le=1.0)


class HardwareFields(_Strict):
    """The GPUs a plan uses (`Cluster`), with the accelerator's figures as planned."""

    offered: str
    nodes: int = Field(strict=True, gt=0)
    gpus_per_node: int = Field(strict=True, gt=0)
    usable_memory_bytes: int | None = Field(strict=True, default=None, gt=0)
    inter_node_bytes_per_s: float = Field(strict=True, gt=0)
    notes: list[str] = []
    accelerator: dict[str, Any]


class LayoutFields(_Strict):
    """`Layout` (dp is derived and written for the reader)."""

    gpus: int = Field(strict=True, gt=0)
    tp: int = Field(strict=True, gt=0)
    pp: int = Field(strict=True, gt=0)
    dp: int = Field(strict=True, gt=0)


class PredictionFields(_Strict):
    """`Prediction`."""

    model_config = ConfigDict(allow_inf_nan=True)  # what the planner answered, overflow included

    per_device_bytes: dict[str, int]
    peak_phase: str
    device_memory_bytes: int
    fits: bool
    host_bytes_per_node: int
    tokens_per_s: float | None
    step_time_s: float | None
    bound: str
    time_to_train_s: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None
    ttft_s: float | None = None
    prefill_tokens_per_s: float | None = None
    per_user_decode_tokens_per_s: float | None = None
    max_concurrency: int | None = None
    max_context: int | None = None


class PlanFields(_Strict):
    """A schema-version-2 plan file."""

    schema_version: Literal[2]
    swiftplan_version: str
    created: dt.datetime
    model: str
    model_source: str
    task: Literal["train", "serve"]
    engine: str
    objective: str
    hardware: HardwareFields
    layout: LayoutFields
    workload: dict[str, Any]
    train: TrainFields | None = None
    serve: ServeFields | None = None
    prediction: PredictionFields

    @model_validator(mode="after")
    def _one_setup(self) -> PlanFields:
        if (self.task == "train") != (self.train is not None) or (self.task == "serve") != (
            self.serve is not None
        ):
            raise ValueError(
                f"task {self.task!r} needs exactly the '{self.task}' section (and not the other)"
            )
        if self.layout.dp * self.layout.tp * self.layout.pp != self.layout.gpus:
            lay = self.layout
            raise ValueError(
                f"layout.tp {lay.tp} × layout.pp {lay.pp} × layout.dp {lay.dp} = {lay.tp * lay.pp * lay.dp} "
                f"must equal layout.gpus {lay.gpus}"
            )
        batch = self.workload.get("global_batch")
        if (
            self.train is not None and isinstance(batch, int) and batch > 0
        ):  # a bad value: the workload's own error
            step = self.train.micro_batch * self.train.grad_accum * self.layout.dp
            if step != batch:
                raise ValueError(
                    f"train.micro_batch {self.train.micro_batch} × train.grad_accum {self.train.grad_accum} × "
                    f"layout.dp {self.layout.dp} = {step} sequences a step, but workload.global_batch is {batch} "
                    f"(fit before 2026-12-07 rounded a step up this way: set workload.global_batch to {step} to keep the "
                    f"plan as it runs, or plan again with swiftplan fit)"
                )
        self._check_against_workload()
        self._check_launch_values()
        self._check_offered()
        rollout = self.train.objective.rollout if self.train and self.train.objective else None
        server = rollout.gpus if rollout is not None and rollout.placement == "server" else 0
        if self.layout.gpus + server != self.hardware.nodes * self.hardware.gpus_per_node:
            hw = self.hardware
            raise ValueError(
                f"layout.gpus {self.layout.gpus}"
                + (f" + the rollout server's {server} gpus" if server else "")
                + f" must equal hardware.nodes {hw.nodes} × hardware.gpus_per_node {hw.gpus_per_node} = "
                f"{hw.nodes * hw.gpus_per_node}"
            )
        return self

    def _check_against_workload(self) -> None:
        """The set-up plans the workload's sequences: the fields both hold must agree (a hand edit of one
        of them would plan one length and predict for another)."""
        pairs: list[tuple[str, Any, str]] = []
        if self.train is not None:
            pairs += [("train.seq_len", self.train.seq_len, "seq_len"),
                      ("train.attention", self.train.attention, "attention")]  # fmt: skip
            if self.train.lora is not None:
                pairs.append(("train.lora.dropout", self.train.lora.dropout, "lora_dropout"))
                pairs.append(("train.lora.dora", self.train.lora.dora, "dora"))
        if self.serve is not None:
            pairs.append(("serve.context", self.serve.context, "context"))
        for name, value, key in pairs:
            other = self.workload.get(key)
            if type(other) is type(value) and other != value:  # a malformed value: the workload's own error
                raise ValueError(
                    f"{name} {value} and workload.{key} {other} must be the same: the set-up plans the "
                    "workload's sequences (edit both, or re-create the plan with swiftplan fit)"
                )
        images = self.workload.get("dataset_image_tokens")
        if self.train is not None and self.train.vision is None and isinstance(images, int) and images > 0:
            raise ValueError(
                f"workload.dataset_image_tokens {images} counts images, but train.vision is absent (text only): add "
                "the images to train.vision, or set workload.dataset_image_tokens to 0 (or re-create the plan with swiftplan fit)"
            )

    def _check_launch_values(self) -> None:
        """The values an engine is launched with agree with what the plan sized: the set-up's tensor (and
        pipeline) degree with the layout's, and a serving set-up's per-replica concurrency and memory share
        with the workload's and with the most sequences the prediction found fit. A hand edit of one of them
        would launch a layout or a load that was never checked against the device."""
        lay = self.layout
        if self.train is not None:
            for name, value, sized in (
                ("tp", self.train.parallel.tp, lay.tp),
                ("pp", self.train.parallel.pp, lay.pp),
            ):
                if value != sized:
                    raise ValueError(
                        f"train.parallel.{name} {value} and layout.{name} {sized} must be the same: the engine "
                        f"would launch {name} {value}, but the plan sized each GPU's share for {name} {sized} "
                        "(edit both, or re-create the plan with swiftplan fit)"
                    )
            return
        serve = self.serve
        if serve is None:
            return
        if serve.tp != lay.tp:
            raise ValueError(
                f"serve.tp {serve.tp} and layout.tp {lay.tp} must be the same: the engine would shard the model "
                f"over {serve.tp} GPUs, but the plan sized each replica on {lay.tp} (edit both, or re-create the "
                "plan with swiftplan fit --task serve)"
            )
        replicas = max(1, lay.gpus // serve.tp)
        planned = self.workload.get("concurrency")
        each = replica_concurrency(planned, replicas) if type(planned) is int and planned > 0 else None
        if each is not None and serve.concurrency != each:
            raise ValueError(
                f"serve.concurrency {serve.concurrency} is not workload.concurrency {planned} split over the plan's "
                f"{replicas} replica(s) ({each} each): the prediction is for the workload's (edit both, or "
                "re-create the plan with swiftplan fit --task serve)"
            )
        share = self.workload.get("gpu_memory_utilization")
        if type(share) is float and serve.gpu_memory_utilization != share:
            raise ValueError(
                f"serve.gpu_memory_utilization {serve.gpu_memory_utilization} and workload.gpu_memory_utilization "
                f"{share} must be the same: the prediction is for the workload's (edit both, or re-create the plan "
                "with swiftplan fit --task serve)"
            )
        most = self.prediction.max_concurrency
        if self.prediction.fits and most and serve.concurrency > most:
            raise ValueError(
                f"serve.concurrency {serve.concurrency:,} is more than the {most:,} sequences of {serve.context:,} "
                "tokens the plan found fit in one replica's KV cache (prediction.max_concurrency): give "
                f"{most:,} or less, or re-plan with swiftplan fit --task serve --concurrency {serve.concurrency}"
            )

    def _check_offered(self) -> None:
        """hardware.offered (the --gpus text) names the accelerator whose figures hardware.accelerator holds."""
        from swiftplan.planner.hardware import get_accelerator

        acc_id = self.hardware.accelerator.get("id")
        named = _OFFERED.match(self.hardware.offered)
        name = named.group(1) if named else self.hardware.offered
        if not isinstance(acc_id, str) or name == acc_id:
            return  # a missing or malformed id is the accelerator's own error
        try:
            resolved = get_accelerator(name).id
        except SwiftplanError:
            resolved = None
        if resolved != acc_id:
            names = f"is {resolved}" if resolved is not None else "names no accelerator swiftplan knows"
            raise ValueError(
                f"hardware.offered {self.hardware.offered!r} {names}, but hardware.accelerator.id is "
                f"{acc_id!r}: a plan's GPUs are the accelerator its figures describe (edit both, or re-create "
                "the plan with swiftplan fit --gpus)"
            )


_OFFERED = re.compile(r"^\s*(?:\d+\s*[x×*]\s*){0,2}(.*?)\s*(?:@.*)?$", re.IGNORECASE)
"""A --gpus text: node and GPU counts, the accelerator's name, an optional @network suffix."""


# --- Plan → file ------------------------------------------------------------------------------------


def _setup_fields(setup: TrainSetup | ServeSetup) -> TrainFields | ServeFields:
    vision = None if setup.vision is None else dataclasses.asdict(setup.vision)
    if isinstance(setup, ServeSetup):
        return ServeFields.model_validate(
            {name: getattr(setup, name) for name in ServeFields.model_fields} | {"vision": vision}
        )
    fields = {name: getattr(setup, name) for name in TrainFields.model_fields} | {"vision": vision}
    fields["parallel"] = {name: getattr(setup.parallel, name) for name in ParallelFields.model_fields}
    fields["runtime"] = {name: getattr(setup.runtime, name) for name in RuntimeFields.model_fields} | {
        "modules_to_save": list(setup.runtime.modules_to_save)
    }
    fields["objective"] = dataclasses.asdict(setup.objective)
    lora = setup.lora if setup.trains_adapters else None
    fields["lora"] = (
        None
        if lora is None
        else {name: getattr(lora, name) for name in LoraFields.model_fields} | {"targets": list(lora.targets)}
    )
    return TrainFields.model_validate(fields)


def _accelerator_fields(accelerator: Accelerator) -> dict[str, Any]:
    data = dataclasses.asdict(accelerator)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (what the YAML file and `fit --json` hold)."""
    hardware = plan.hardware
    setup = _setup_fields(plan.setup)
    fields = PlanFields(
        schema_version=SCHEMA_VERSION,
        swiftplan_version=plan.swiftplan_version,
        created=plan.created,
        model=plan.model,
        model_source=plan.model_source,
        task=plan.task,
        engine=plan.engine,
        objective=plan.objective,
        hardware=HardwareFields(
            offered=plan.offered,
            nodes=hardware.nodes,
            gpus_per_node=hardware.gpus_per_node,
            usable_memory_bytes=hardware.usable_memory_bytes,
            inter_node_bytes_per_s=hardware.inter_node_bytes_per_s,
            notes=list(hardware.notes),
            accelerator=_accelerator_fields(hardware.accelerator),
        ),
        layout=LayoutFields(gpus=plan.layout.gpus, tp=plan.layout.tp, pp=plan.layout.pp, dp=plan.layout.dp),
        workload={k: v for k, v in dataclasses.asdict(plan.workload).items() if k not in _WITH_SETUP},
        prediction=PredictionFields(
            **{f.name: getattr(plan.prediction, f.name) for f in dataclasses.fields(Prediction)}
        ),
        train=setup if isinstance(setup, TrainFields) else None,
        serve=setup if isinstance(setup, ServeFields) else None,
    )
    return fields.model_dump(mode="json")


def plan_yaml(plan: Plan) -> str:
    """The plan file's text."""
    text = yaml.safe_dump(plan_dict(plan), sort_keys=False, allow_unicode=True)
    return f"# swiftplan plan file (schema_version {SCHEMA_VERSION})\n" + text


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write `plan` as YAML."""
    try:
        Path(path).write_text(plan_yaml(plan), encoding="utf-8")
    except OSError as error:
        raise SwiftplanError(f"Cannot write plan file {path}: {error.strerror or error}.") from error


# --- file → Plan ------------------------------------------------------------------------------------


def is_plan_path(text: str) -> bool:
    """Whether a MODEL argument names a plan file (a .yaml/.yml path)."""
    return text.lower().endswith((".yaml", ".yml"))


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(parts) or "(top level)"


def _validation_error(path: Path, error: ValidationError, prefix: str = "") -> SwiftplanError:
    first = error.errors()[0]
    field = prefix + _field_name(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        problem = f"unknown field '{field}'"
    elif first["type"] == "missing":
        problem = f"missing field '{field}'"
    else:  # a model validator's own sentence, without pydantic's "Value error, " in front
        problem = f"field '{field}': {first['msg'].removeprefix('Value error, ').rstrip('.')}"
        if field == "(top level)":
            problem = first["msg"].removeprefix("Value error, ").rstrip(".")
        if not isinstance(first["input"], (dict, list)):
            problem += f" (got {first['input']!r})"
    more = f" ({error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return SwiftplanError(f"Plan file {path}: {problem}{more}.", hint=_HINT)


def _setup(
    path: Path, task: str, train: TrainFields | None, serve: ServeFields | None
) -> TrainSetup | ServeSetup:
    try:
        if train is not None:
            data = train.model_dump()
            lora = data.pop("lora")
            objective = _objective(data.pop("objective"))
            vision = data.pop("vision")
            runtime = data.pop("runtime") or {"name": "swiftplan"}
            if runtime["name"] not in _train_runtimes():
                raise SwiftplanError(
                    f"field 'train.runtime.name': unknown runtime {runtime['name']!r}; "
                    f"valid values are: {', '.join(_train_runtimes())}"
                )
            return TrainSetup(
                **{
                    **data,
                    "lora": None
                    if lora is None
                    else LoraSetup(**{**lora, "targets": tuple(lora["targets"])}),
                    "parallel": Parallelism(**data["parallel"]),
                    "runtime": RuntimeKnobs(
                        **{**runtime, "modules_to_save": tuple(runtime.get("modules_to_save", ()))}
                    ),
                    "objective": objective,
                    "vision": None if vision is None else VisionInputs(**vision),
                },
            )
        assert serve is not None
        data = serve.model_dump()
        vision = data.pop("vision")
        return ServeSetup(**data, vision=None if vision is None else VisionInputs(**vision))
    except SwiftplanError as error:
        message = error.message  # the set-up names command-line flags; a plan file has fields
        for flag, field in _FIELD_OF_FLAG.items():
            message = message.replace(f"({flag})", f"({task}.{field})")
        raise SwiftplanError(
            f"Plan file {path}: the {task} set-up is not valid: {message}", hint=_HINT
        ) from error


_FIELD_OF_FLAG = {"--tp": "parallel.tp", "--pp": "parallel.pp", "--batch": "micro_batch", "--seq": "seq_len",
                  "--context": "context", "--concurrency": "concurrency"}  # fmt: skip
"""The flags `TrainSetup`/`ServeSetup` name in parentheses, as the plan-file fields that hold them."""


def _objective(data: dict[str, Any] | None) -> ObjectiveSetup:
    """The objective as written (a file without one trains SFT); its cross-field checks apply."""
    if data is None:
        return ObjectiveSetup()
    rollout = data.pop("rollout")
    return ObjectiveSetup(**data, rollout=None if rollout is None else RolloutSetup(**rollout))


def _train_runtimes() -> list[str]:
    from swiftplan.planner.runtime import runtime_profiles

    return [n for n, p in runtime_profiles().items() if p.task == "train"]


def _workload(
    path: Path, task: str, data: dict[str, Any], setup: TrainSetup | ServeSetup | None = None
) -> TrainWorkload | ServeWorkload:
    model: type[_Strict] = TrainWorkloadFields if task == "train" else ServeWorkloadFields
    try:
        fields = model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(path, error, "workload.") from error
    if task == "train":  # the runtime and the objective are stored once, with the set-up
        train = setup if isinstance(setup, TrainSetup) else TrainSetup()
        return TrainWorkload(**fields.model_dump(), runtime=train.runtime, objective=train.objective,
                             variable_lengths=train.variable_lengths, vision=train.vision)  # fmt: skip
    serve = setup if isinstance(setup, ServeSetup) else ServeSetup()
    return ServeWorkload(**fields.model_dump(), runtime=serve.runtime, eager=serve.eager, vision=serve.vision)


def _accelerator(path: Path, data: dict[str, Any]) -> Accelerator:
    names = {f.name for f in dataclasses.fields(Accelerator)}
    if unknown := sorted(set(data) - names):
        raise SwiftplanError(
            f"Plan file {path}: unknown field 'hardware.accelerator.{unknown[0]}'.", hint=_HINT
        )
    values: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in data.items()
    }
    from swiftplan.plan_file_values import value_problem

    if problem := value_problem(Accelerator, values):
        raise SwiftplanError(f"Plan file {path}: field 'hardware.accelerator.{problem[1:]}.", hint=_HINT)
    try:
        return Accelerator(**values)
    except (TypeError, ValueError) as error:
        raise SwiftplanError(
            f"Plan file {path}: field 'hardware.accelerator': {error}.", hint=_HINT
        ) from error


def _from_v2(path: Path, data: dict[str, Any]) -> Plan:
    try:
        fields = PlanFields.model_validate(data)
    except ValidationError as error:
        raise _validation_error(path, error) from error
    hw = fields.hardware
    accelerator = _accelerator(path, hw.accelerator)  # its own message, naming hardware.accelerator
    try:
        hardware = Cluster(
            accelerator=accelerator,
            nodes=hw.nodes,
            gpus_per_node=hw.gpus_per_node,
            usable_memory_bytes=hw.usable_memory_bytes,
            inter_node_bytes_per_s=hw.inter_node_bytes_per_s,
            notes=tuple(hw.notes),
        )
    except SwiftplanError as error:
        raise SwiftplanError(f"Plan file {path}: field 'hardware': {error.message}", hint=_HINT) from error
    setup = _setup(path, fields.task, fields.train, fields.serve)
    return Plan(
        model=fields.model,
        model_source=fields.model_source,
        task=fields.task,
        engine=fields.engine,
        objective=fields.objective,
        offered=hw.offered,
        hardware=hardware,
        layout=Layout(gpus=fields.layout.gpus, tp=fields.layout.tp, pp=fields.layout.pp),
        setup=setup,
        workload=_workload(path, fields.task, fields.workload, setup),
        prediction=Prediction(**fields.prediction.model_dump()),
        created=fields.created,
        swiftplan_version=fields.swiftplan_version,
    )


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file (schema version 1 or 2); every problem is one SwiftplanError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SwiftplanError(f"Cannot read plan file {path}: {error.strerror or error}.") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise SwiftplanError(f"Plan file {path} is not valid YAML{at}.", hint=_HINT) from error
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SwiftplanError(
            f"{path} is not a swiftplan plan file (no schema_version at the top level).", hint=_HINT
        )
    version = data["schema_version"]
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise SwiftplanError(
            f"Plan file {path} has schema_version {version!r}; this swiftplan ({__version__}) reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}.",
            hint="Re-create the plan with this version of swiftplan.",
        )
    if version == 1:
        from swiftplan.plan_file_v1 import plan_from_v1

        return plan_from_v1(path, data)
    return _from_v2(path, data)
