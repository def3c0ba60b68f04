"""The typed `Plan`: the one thing the planner hands to executors, and what a plan file holds.

A plan carries everything needed to run and to check it without the catalog: the model, the
hardware it was planned for (a snapshot of the accelerator's figures, the nodes and GPUs per node it
uses, usable memory, interconnect), the layout (tp × pp × dp), the set-up, the workload, the engine
it is meant for and what the estimator predicted. `predict` turns an estimate into that prediction,
the same way for `fit` and for re-estimating a plan file, so the two agree to the byte. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace

from swiftplan.planner.estimate import Estimate, estimate_serving, estimate_training
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.layout import Layout
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup, Task, TrainSetup
from swiftplan.planner.speed import ServeSpeed, TrainSpeed
from swiftplan.planner.workload import ServeWorkload, TrainWorkload


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """What the estimator predicted for a plan (per device, per node, and for the whole job)."""

    per_device_bytes: Mapping[str, int]
    """The breakdown of the most loaded device, term → bytes (`MemoryBreakdown.as_dict`)."""
    peak_phase: str
    """When the peak happens."""
    device_memory_bytes: int
    """Memory one device offers the plan."""
    fits: bool
    """Whether the device total stays within it (serving: the KV budget holds the load)."""
    host_bytes_per_node: int
    """Host RAM per node for offloaded state."""
    tokens_per_s: float | None
    """Training tokens/s over the plan's GPUs; serving: generated tokens/s over all replicas."""
    step_time_s: float | None
    """Training: seconds per optimizer step; serving: seconds per generated token for one user."""
    bound: str
    """What limits the speed: compute, memory, communication, offload, or unknown."""
    time_to_train_s: float | None = None
    """Training: dataset tokens × epochs / tokens per second."""
    gpu_hours: float | None = None
    """Training: GPU-hours to train; serving: GPU-hours per million generated tokens."""
    cost_usd: float | None = None
    """gpu_hours × the accelerator's price; None without a price."""
    ttft_s: float | None = None
    """Serving: time to first token."""
    prefill_tokens_per_s: float | None = None
    """Serving: prompt tokens per second."""
    per_user_decode_tokens_per_s: float | None = None
    """Serving: decode speed one user sees."""
    max_concurrency: int | None = None
    """Serving: sequences of the planned context that fit one replica."""
    max_context: int | None = None
    """Serving: longest context that fits at the planned concurrency."""

    @property
    def peak_allocated_bytes(self) -> int:
        """Live tensor bytes at the peak (torch.cuda.max_memory_allocated)."""
        return self.per_device_bytes["peak_allocated"]

    @property
    def device_total_bytes(self) -> int:
        """What the device shows in use at the peak (nvidia-smi)."""
        return self.per_device_bytes["device_total"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """A plan: what to run, on which hardware and engine, split how, and what it will cost."""

    model: str
    """The model as the user named it: catalog name, hub id, or an absolute local path."""
    model_source: str
    """Where its architecture was read (catalog entry, config.json path, hub URL)."""
    task: Task
    """Fine-tuning or serving."""
    engine: str
    """The engine it is planned for and checked against (`profiles/engines.json`)."""
    objective: str
    """What the search minimised (time, cost, throughput), or 'given' for a hand-written set-up."""
    offered: str
    """The --gpus the plan was searched on (its hardware may be a part of it)."""
    hardware: Cluster
    """The GPUs the plan uses (nodes × GPUs per node), with the accelerator's figures as planned."""
    layout: Layout
    """GPUs used and their tensor × pipeline × data-parallel split (serving: replicas × tp)."""
    setup: TrainSetup | ServeSetup
    """The configuration."""
    workload: TrainWorkload | ServeWorkload
    """What the job must do."""
    prediction: Prediction
    """The estimate when the plan was made."""
    created: dt.datetime
    """When the plan was made (UTC)."""
    swiftplan_version: str
    """Which swiftplan made it."""

    @property
    def nodes(self) -> int:
        """Machines the plan runs on."""
        return self.hardware.nodes

    @property
    def gpus_per_node(self) -> int:
        """Processes (devices) per machine."""
        return self.hardware.gpus_per_node

    @property
    def replicas(self) -> int:
        """Serving: independent copies of the model (GPUs / tp); training: 1."""
        return self.layout.gpus // self.layout.tp if self.task == "serve" else 1


def training_economics(
    workload: TrainWorkload, tokens_per_s: float, *, gpus: int, price_usd_per_hour: float | None
) -> tuple[float, float, float | None]:
    """(time to train s, GPU-hours, cost USD or None) of a training job at `tokens_per_s` on `gpus`."""
    time_s = workload.total_tokens / tokens_per_s
    gpu_hours = time_s / 3600 * gpus
    return time_s, gpu_hours, None if price_usd_per_hour is None else gpu_hours * price_usd_per_hour


def serving_economics(
    tokens_per_s: float, *, gpus: int, price_usd_per_hour: float | None
) -> tuple[float, float | None]:
    """(GPU-hours, cost USD or None) per million tokens generated at `tokens_per_s` over `gpus`."""
    gpu_hours = gpus / 3600 / tokens_per_s * 1e6
    return gpu_hours, None if price_usd_per_hour is None else gpu_hours * price_usd_per_hour


def host_bytes_per_node(estimate: Estimate, layout: Layout, nodes: int) -> int:
    """Offloaded host RAM per node: every model-parallel rank's share, over the nodes."""
    return estimate.host_bytes * layout.tp * layout.pp // nodes


def predict(
    estimate: Estimate, *, workload: TrainWorkload | ServeWorkload, layout: Layout, hardware: Cluster
) -> Prediction:
    """The plan's prediction from its estimate: memory, speed and, for the whole job, time and cost."""
    memory = estimate.memory
    unknown_speed = Prediction(
        per_device_bytes=memory.as_dict(),
        peak_phase=memory.peak_phase,
        device_memory_bytes=estimate.device_memory_bytes,
        fits=estimate.fits,
        host_bytes_per_node=host_bytes_per_node(estimate, layout, hardware.nodes)
        if estimate.task == "train"
        else 0,
        tokens_per_s=None,
        step_time_s=None,
        bound="unknown",
        max_concurrency=estimate.max_concurrency,
        max_context=estimate.max_context,
    )
    price = hardware.accelerator.price_usd_per_hour
    speed = estimate.speed
    if isinstance(speed, TrainSpeed):
        assert isinstance(workload, TrainWorkload)
        time_s, gpu_hours, cost = training_economics(
            workload, speed.tokens_per_s, gpus=hardware.world_size, price_usd_per_hour=price
        )
        return replace(
            unknown_speed,
            tokens_per_s=speed.tokens_per_s,
            step_time_s=speed.step_time_s,
            bound=speed.bound,
            time_to_train_s=time_s,
            gpu_hours=gpu_hours,
            cost_usd=cost,
            max_concurrency=None,
            max_context=None,
        )
    if isinstance(speed, ServeSpeed):
        total = speed.decode_tokens_per_s * (layout.gpus // layout.tp)
        gpu_hours, cost = serving_economics(total, gpus=layout.gpus, price_usd_per_hour=price)
        return replace(
            unknown_speed,
            tokens_per_s=total,
            step_time_s=1 / speed.per_user_decode_tokens_per_s,
            bound=speed.bound,
            gpu_hours=gpu_hours,
            cost_usd=cost,
            ttft_s=speed.ttft_s,
            prefill_tokens_per_s=speed.prefill_tokens_per_s,
            per_user_decode_tokens_per_s=speed.per_user_decode_tokens_per_s,
        )
    return unknown_speed


def reestimate(plan: Plan, spec: ModelSpec) -> Estimate:
    """The plan's set-up estimated again on its own hardware snapshot (no catalog needed)."""
    if isinstance(plan.setup, ServeSetup):
        return estimate_serving(spec, plan.setup, plan.hardware)
    return estimate_training(spec, plan.setup, plan.hardware)


def repredict(plan: Plan, spec: ModelSpec) -> Prediction:
    """What the estimator predicts for the plan today (equal to `plan.prediction` when nothing changed)."""
    return predict(reestimate(plan, spec), workload=plan.workload, layout=plan.layout, hardware=plan.hardware)


def with_engine(plan: Plan, engine: str) -> Plan:
    """The same plan meant for another engine."""
    return replace(plan, engine=engine)
