"""Reading schema-version-1 plan files (swiftplan 0.1 before the typed Plan) into a `Plan`.

Version 1 named its hardware by a --gpus string of catalog ids and the number of GPUs used, so the
snapshot is rebuilt from the catalog (the only time a plan reads it), and its layout from the
set-up's tp/pp. Its prediction kept the estimate's speed as a dict; the fields map one to one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from swiftplan.errors import SwiftplanError
from swiftplan.plan_file import (
    _HINT,
    ServeFields,
    TrainFields,
    _setup,
    _Strict,
    _validation_error,
    _workload,
)
from swiftplan.planner.engines import DEFAULT_TRAIN_ENGINE, default_engine
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.layout import Layout
from swiftplan.planner.plan import Plan, Prediction
from swiftplan.planner.setup import ServeSetup


class _PredictionV1(_Strict):
    per_device: dict[str, int]
    peak_phase: str
    device_memory_bytes: int
    host_bytes_per_node: int
    speed: dict[str, Any]
    time_to_train_s: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None


class PlanFileV1(_Strict):
    """A schema-version-1 plan file."""

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
    prediction: _PredictionV1

    @model_validator(mode="after")
    def _one_setup(self) -> PlanFileV1:
        if (self.task == "train") != (self.train is not None) or (self.task == "serve") != (
            self.serve is not None
        ):
            raise ValueError(
                f"task {self.task!r} needs exactly the '{self.task}' section (and not the other)"
            )
        return self


def _prediction(old: _PredictionV1, replicas: int) -> Prediction:
    speed = old.speed
    serve = "ttft_s" in speed
    tokens = speed.get("tokens_per_s")
    return Prediction(
        per_device_bytes=old.per_device,
        peak_phase=old.peak_phase,
        device_memory_bytes=old.device_memory_bytes,
        fits=old.per_device.get("device_total", 0) <= old.device_memory_bytes,
        host_bytes_per_node=old.host_bytes_per_node,
        tokens_per_s=None if tokens is None else tokens * (replicas if serve else 1),
        step_time_s=speed.get("step_time_s"),
        bound=speed.get("bound", "unknown"),
        time_to_train_s=old.time_to_train_s,
        gpu_hours=old.gpu_hours,
        cost_usd=old.cost_usd,
        ttft_s=speed.get("ttft_s"),
        prefill_tokens_per_s=speed.get("prefill_tokens_per_s"),
        per_user_decode_tokens_per_s=speed.get("per_user_decode_tokens_per_s"),
    )


def plan_from_v1(path: Path, data: dict[str, Any]) -> Plan:
    """The `Plan` a version-1 file describes (hardware from the catalog)."""
    try:
        old = PlanFileV1.model_validate(data)
    except ValidationError as error:
        raise _validation_error(path, error) from error
    setup = _setup(path, old.task, old.train, old.serve)
    try:
        cluster = parse_cluster(old.cluster)
    except SwiftplanError as error:
        raise SwiftplanError(f"Plan file {path}: field 'cluster': {error.message}", hint=_HINT) from error
    if old.usable_memory_bytes is not None:
        cluster = replace(cluster, usable_memory_bytes=old.usable_memory_bytes)
    if old.gpus_used > cluster.world_size:
        raise SwiftplanError(
            f"Plan file {path}: field 'gpus_used' is {old.gpus_used}, more than the {cluster.world_size} GPUs of '{old.cluster}'.",
            hint=_HINT,
        )
    if isinstance(setup, ServeSetup):
        layout = Layout(gpus=cluster.world_size, tp=setup.tp)
        engine = default_engine("serve", cluster.accelerator.backend).name
    else:
        layout = Layout(gpus=old.gpus_used, tp=setup.parallel.tp, pp=setup.parallel.pp)
        engine = DEFAULT_TRAIN_ENGINE
    workload = _workload(path, old.task, _v1_workload(old.task, old.workload, setup))
    return Plan(
        model=old.model,
        model_source=old.model_source,
        task=old.task,
        engine=engine,
        objective=old.objective,
        offered=old.cluster,
        hardware=layout.sub_cluster(cluster),
        layout=layout,
        setup=setup,
        workload=workload,
        prediction=_prediction(old.prediction, layout.gpus // layout.tp if old.task == "serve" else 1),
        created=old.created,
        swiftplan_version=old.swiftplan_version,
    )


def _v1_workload(task: str, workload: dict[str, Any], setup: Any) -> dict[str, Any]:
    """Version 1 wrote `asdict(workload)`; hand-made files may hold a subset, completed from the set-up."""
    if task == "train":
        defaults = {"seq_len": setup.seq_len, "global_batch": setup.micro_batch * setup.grad_accum,
                    "dataset_tokens": 100_000_000, "epochs": 1.0, "attention": setup.attention,
                    "lora_dropout": setup.lora.dropout if setup.lora else 0.05}  # fmt: skip
    else:
        defaults = {"context": setup.context, "concurrency": None, "ttft_s": None, "decode_tps": None,
                    "gpu_memory_utilization": setup.gpu_memory_utilization}  # fmt: skip
    return defaults | workload
