"""Plan files: the versioned YAML `swiftplan fit -o plan.yaml` writes and `swiftplan estimate plan.yaml` reads.

The schema is pydantic with unknown keys forbidden, so a typo or a hand edit that does not match
is reported naming the file and the field instead of being silently ignored. The set-up fields are
exactly `TrainSetup` / `ServeSetup`; after schema validation the set-up is rebuilt through those
classes, so their cross-field checks (QLoRA needs a 4-bit base, ...) apply to files too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swiftplan import __version__
from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import (
    AttentionImpl,
    KvDtype,
    LoraSetup,
    Method,
    Offload,
    Optimizer,
    Parallelism,
    Precision,
    Quant,
    ServeSetup,
    TrainSetup,
)

SCHEMA_VERSION = 1
_HINT = 'Plan files are written by `swiftplan fit ... -o plan.yaml`; the README section "Plan files" lists every field.'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraFields(_Strict):
    """`LoraSetup`."""

    rank: int = Field(gt=0)
    alpha: int | None = None
    targets: list[str] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    dora: bool = False


class ParallelFields(_Strict):
    """`Parallelism`."""

    tp: int = Field(gt=0)
    pp: int = Field(gt=0)
    zero: Literal[0, 1, 2, 3]
    offload: Offload


class TrainFields(_Strict):
    """`TrainSetup`."""

    method: Method
    precision: Precision
    quant: Quant
    double_quant: bool
    lora: LoraFields | None
    optimizer: Optimizer
    micro_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    grad_accum: int = Field(gt=0)
    grad_ckpt: bool
    attention: AttentionImpl
    kbit_upcast: bool = False
    parallel: ParallelFields


class ServeFields(_Strict):
    """`ServeSetup`."""

    dtype: Literal["bf16", "fp16", "fp32"]
    quant: Quant
    kv_dtype: KvDtype
    context: int = Field(gt=0)
    concurrency: int = Field(gt=0)
    prefill_chunk: int = Field(gt=0)
    tp: int = Field(gt=0)
    gpu_memory_utilization: float = Field(ge=0.05, le=1.0)
    max_loras: int = Field(ge=0)
    max_lora_rank: int = Field(gt=0)


class Prediction(_Strict):
    """What the estimator predicted for the plan when it was written."""

    per_device: dict[str, int]
    peak_phase: str
    device_memory_bytes: int
    host_bytes_per_node: int
    speed: dict[str, Any]
    time_to_train_s: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None


class PlanFile(_Strict):
    """A plan: what to run, where, and what swiftplan predicted for it."""

    schema_version: Literal[1]
    swiftplan_version: str
    created: dt.datetime
    model: str
    model_source: str
    cluster: str
    gpus_used: int = Field(gt=0)
    usable_memory_bytes: int | None = None
    task: Literal["train", "serve"]
    objective: str
    workload: dict[str, Any]
    train: TrainFields | None = None
    serve: ServeFields | None = None
    prediction: Prediction

    @model_validator(mode="after")
    def _one_setup(self) -> PlanFile:
        if (self.task == "train") != (self.train is not None) or (self.task == "serve") != (
            self.serve is not None
        ):
            raise ValueError(
                f"task {self.task!r} needs exactly the '{self.task}' section (and not the other)"
            )
        return self

    def setup(self) -> TrainSetup | ServeSetup:
        """The set-up, validated by the planner's own classes."""
        if self.train is not None:
            data = self.train.model_dump()
            lora = data.pop("lora")
            return TrainSetup(
                **{
                    **data,
                    "lora": None
                    if lora is None
                    else LoraSetup(**{**lora, "targets": tuple(lora["targets"])}),
                    "parallel": Parallelism(**data["parallel"]),
                },
            )
        assert self.serve is not None
        return ServeSetup(**self.serve.model_dump())


def _setup_fields(setup: TrainSetup | ServeSetup) -> dict[str, Any]:
    if isinstance(setup, ServeSetup):
        return {name: getattr(setup, name) for name in ServeFields.model_fields}
    fields = {name: getattr(setup, name) for name in TrainFields.model_fields}
    fields["parallel"] = {name: getattr(setup.parallel, name) for name in ParallelFields.model_fields}
    lora = setup.lora if setup.trains_adapters else None
    fields["lora"] = (
        None
        if lora is None
        else {name: getattr(lora, name) for name in LoraFields.model_fields} | {"targets": list(lora.targets)}
    )
    return fields


def make_plan(
    *,
    model: str,
    model_source: str,
    cluster: str,
    gpus_used: int,
    usable_memory_bytes: int | None,
    objective: str,
    workload: dict[str, Any],
    setup: TrainSetup | ServeSetup,
    estimate_json: dict[str, Any],
    host_bytes_per_node: int,
    time_to_train_s: float | None = None,
    gpu_hours: float | None = None,
    cost_usd: float | None = None,
) -> PlanFile:
    """A plan file object for a chosen set-up and its estimate (`Estimate.to_json()`)."""
    task = "serve" if isinstance(setup, ServeSetup) else "train"
    prediction = Prediction(
        per_device=estimate_json["per_device"],
        peak_phase=estimate_json["peak_phase"],
        device_memory_bytes=estimate_json["device_memory_bytes"],
        host_bytes_per_node=host_bytes_per_node,
        speed=estimate_json["speed"],
        time_to_train_s=time_to_train_s,
        gpu_hours=gpu_hours,
        cost_usd=cost_usd,
    )
    return PlanFile(
        schema_version=SCHEMA_VERSION,
        swiftplan_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        model=model,
        model_source=model_source,
        cluster=cluster,
        gpus_used=gpus_used,
        usable_memory_bytes=usable_memory_bytes,
        task=task,
        objective=objective,
        workload=workload,
        prediction=prediction,
        **{task: _setup_fields(setup)},
    )


def plan_dict(plan: PlanFile) -> dict[str, Any]:
    """JSON/YAML-ready form (the created date as ISO 8601 text)."""
    return plan.model_dump(mode="json")


def save_plan(plan: PlanFile, path: str | Path) -> None:
    """Write `plan` as YAML."""
    text = yaml.safe_dump(plan_dict(plan), sort_keys=False, allow_unicode=True)
    try:
        Path(path).write_text(
            f"# swiftplan plan file (schema_version {SCHEMA_VERSION})\n" + text, encoding="utf-8"
        )
    except OSError as error:
        raise SwiftplanError(f"Cannot write plan file {path}: {error.strerror or error}.") from error


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(parts) or "(top level)"


def is_plan_path(text: str) -> bool:
    """Whether a MODEL argument names a plan file (a .yaml/.yml path)."""
    return text.lower().endswith((".yaml", ".yml"))


def load_plan(path: str | Path) -> tuple[PlanFile, TrainSetup | ServeSetup]:
    """Read and validate a plan file; every problem is one SwiftplanError naming the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SwiftplanError(f"Cannot read plan file {path}: {error.strerror or error}.") from error
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise SwiftplanError(f"Plan file {path} is not valid YAML{at}.", hint=_HINT) from error
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SwiftplanError(
            f"{path} is not a swiftplan plan file (no schema_version at the top level).", hint=_HINT
        )
    if data["schema_version"] != SCHEMA_VERSION:
        raise SwiftplanError(
            f"Plan file {path} has schema_version {data['schema_version']!r}; this swiftplan ({__version__}) reads version {SCHEMA_VERSION}.",
            hint="Re-create the plan with this version of swiftplan.",
        )
    try:
        plan = PlanFile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_name(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            problem = f"unknown field '{field}'"
        elif first["type"] == "missing":
            problem = f"missing field '{field}'"
        else:
            problem = f"field '{field}': {first['msg'].rstrip('.')}"
            if not isinstance(first["input"], (dict, list)):
                problem += f" (got {first['input']!r})"
        more = f" ({error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
        raise SwiftplanError(f"Plan file {path}: {problem}{more}.", hint=_HINT) from error
    try:
        setup = plan.setup()
    except SwiftplanError as error:
        raise SwiftplanError(
            f"Plan file {path}: the {plan.task} set-up is not valid: {error.message}", hint=_HINT
        ) from error
    return plan, setup


def estimate_plan(path: str | Path) -> Any:
    """Re-estimate a plan file: its model, the GPUs it uses and its set-up (an `Estimate`)."""
    from dataclasses import replace

    from swiftplan.executors.model_source import resolve_model
    from swiftplan.planner.estimate import estimate_serving, estimate_training
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.search.candidate import Layout

    plan, setup = load_plan(path)
    spec = resolve_model(plan.model)
    try:
        cluster = parse_cluster(plan.cluster)
    except SwiftplanError as error:
        raise SwiftplanError(f"Plan file {path}: field 'cluster': {error.message}", hint=_HINT) from error
    if plan.usable_memory_bytes is not None:
        cluster = replace(cluster, usable_memory_bytes=plan.usable_memory_bytes)
    if plan.gpus_used > cluster.world_size:
        raise SwiftplanError(
            f"Plan file {path}: field 'gpus_used' is {plan.gpus_used}, more than the {cluster.world_size} GPUs of '{plan.cluster}'.",
            hint=_HINT,
        )
    if isinstance(setup, ServeSetup):
        return estimate_serving(spec, setup, cluster)
    return estimate_training(spec, setup, Layout(gpus=plan.gpus_used).sub_cluster(cluster))
