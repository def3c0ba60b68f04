"""A fit request resolved into the problem a search runs (`FitProblem`): the model, the offered and the searched
hardware, the engine and runtime, the workload, the evaluator and the search settings. `prepare_fit` does it all
before any candidate is evaluated, so every refusal comes before the search.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner import model_limits
from swiftplan.planner.engines import Engine
from swiftplan.planner.estimate import check_rollout_tp, training_world_size
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.idle_knobs import knob_dict, refuse_idle_knobs
from swiftplan.planner.layout import cluster_text
from swiftplan.planner.lengths import LengthStats
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime import RuntimeChoice
from swiftplan.planner.search.evaluate import ServeEvaluator, TrainEvaluator
from swiftplan.planner.search.optimize import SearchSettings
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import engine_runtime
from swiftplan.planner.vision_tokens import language_tokens
from swiftplan.planner.workload import ServeWorkload, TrainWorkload
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_engine import (
    choose_runtime_engine,
    engine_cluster,
)
from swiftplan.usecases.fit_request import (
    FitRequest,
    FitTask,
    _check_against_model,
    _check_request,
    _check_rollout_lengths,
    _check_targets,
    _dora_methods,
)
from swiftplan.usecases.fit_vision import check_vision
from swiftplan.usecases.fit_workload import _length_stats, _rollout_batch, _split_default_batch, _workload


@dataclass(frozen=True, kw_only=True, slots=True)
class FitProblem:
    """A request resolved: model, hardware, engine, workload, evaluator and search settings."""

    request: FitRequest
    model: str
    """The model reference a plan stores (local paths absolute)."""
    spec: ModelSpec
    cluster: Cluster
    """The hardware searched (for the built-in server: one of the offered GPUs)."""
    offered: str
    """The hardware as offered (--gpus text, or the probed cluster's catalog form)."""
    offered_cluster: Cluster
    """The hardware as offered (the engine may use part of it)."""
    engine: Engine
    workload: TrainWorkload | ServeWorkload
    pins: Pins
    evaluator: Any
    """`TrainEvaluator` or `ServeEvaluator`."""
    settings: SearchSettings
    notes: tuple[str, ...]
    """Workload, host RAM, cluster and price notes shown with the result."""
    lengths: LengthStats | None = None
    """The data's per-sample token lengths against --seq, when --data or --lengths was given."""
    runtime: RuntimeChoice | None = None
    """The runtime profile planned for and the defaults it applied (serving without --runtime: None)."""

    @property
    def task(self) -> FitTask:
        return self.request.task

    @property
    def title(self) -> str:
        """'Qwen/Qwen2.5-7B on 1 × NVIDIA GeForce RTX 4090 (train on swiftplan, objective: time)'."""
        mode = "Pareto front" if self.settings.pareto else f"objective: {self.settings.objective}"
        return f"{self.spec.name} on {self.cluster.describe()} ({self.task} on {self.engine.name}, {mode})"


def fingerprint(*parts: Any) -> str:
    """Short hash identifying a search problem (for resuming stored studies)."""
    return hashlib.sha1("|".join(repr(part) for part in parts).encode()).hexdigest()[:12]


def _evaluator(spec: ModelSpec, cluster: Cluster, workload: Any, pins: Pins, engine: Engine | None,
               request: FitRequest, host_bytes: int) -> Any:  # fmt: skip
    from swiftplan.planner.search.serve_space import build_serve_space
    from swiftplan.planner.search.space import build_train_space

    if isinstance(workload, TrainWorkload):
        train_space = build_train_space(spec, cluster, pins, engine, global_batch=workload.global_batch)
        return TrainEvaluator(
            spec, cluster, workload, train_space, headroom=request.headroom, host_ram_bytes=host_bytes
        )
    serve_space = build_serve_space(spec, cluster, pins, engine)
    return ServeEvaluator(spec, cluster, workload, serve_space, headroom=request.headroom)


def prepare_fit(request: FitRequest, *, cluster: Cluster | None = None) -> FitProblem:
    """Resolve and check the request and build the evaluator (no search yet). `cluster` skips resolving --gpus."""
    _check_request(request)
    model = inputs.model_reference(request.model)
    spec = inputs.resolve_model(model)
    check_vision(request, spec)
    offered_cluster = cluster or inputs.resolve_cluster(request.gpus)
    notes = [f"cluster note: {n}" for n in offered_cluster.notes]
    engine, runtime = choose_runtime_engine(request, offered_cluster, notes)
    searched = engine_cluster(engine, offered_cluster, notes)
    host = inputs.host_ram(request.host_ram_bytes, request.gpus)
    if request.task == "train":
        # a rollout server must leave GPUs to train on; a colocated rollout's tp must divide them
        check_rollout_tp(spec, request.training, train_world=training_world_size(request.training, searched))
        _check_rollout_lengths(request)
        request = _split_default_batch(request, training_world_size(request.training, searched), notes)
        request = _rollout_batch(request, notes)
        _check_targets(spec, request.pins, dora=request.dora)
        request = _dora_methods(request)
        request = _check_against_model(request, spec)
        from swiftplan.planner.capabilities import check

        if reasons := check(searched.accelerator, attention=request.attention):
            raise SwiftplanError(" ".join(reasons), hint="Use --attention sdpa.")
    length, flag = (request.seq_len, "--seq") if request.task == "train" else (request.context, "--context")
    if request.task == "train" and request.vision is not None:  # the images join each sequence
        length, flag = (
            length + language_tokens(spec, request.vision),
            "the sequence (--seq and the image tokens)",
        )
    if problem := model_limits.length_problem(spec, length, flag):
        notes.append(f"warning: {problem}")
    lengths = _length_stats(request, spec, model, notes)
    padding = runtime.knobs().padding if runtime is not None and request.task == "train" else "max_length"
    workload = _workload(request, spec, model, notes, host, lengths, padding=padding)
    if runtime is not None and isinstance(workload, TrainWorkload):
        # knob flags typed for a runtime whose own knobs leave them idle (--loss-chunks beside its full loss)
        refuse_idle_knobs(request.runtime_options, [knob_dict(runtime.knobs())])
        workload = replace(workload, runtime=runtime.knobs(), objective=request.training)
        if runtime.knobs().fsdp != "none":  # FSDP shards instead of ZeRO
            if request.pins.zero not in (None, (0,)) or request.pins.max_offload not in (None, "none"):
                raise SwiftplanError(
                    f"--fsdp {runtime.knobs().fsdp} shards instead of DeepSpeed ZeRO; --zero and --offload cannot apply with it."
                )
            request = replace(request, pins=replace(request.pins, zero=(0,), max_offload="none"))
    elif isinstance(workload, ServeWorkload):  # timed for the engine that serves it
        options = {} if runtime is None else runtime.setup_options()
        workload = replace(
            workload,
            runtime=engine_runtime(engine),
            **{k: v for k, v in options.items() if k == "gpu_memory_utilization"},
        )
    evaluator = _evaluator(spec, searched, workload, request.pins, engine, request, host[0])
    if searched.accelerator.price_usd_per_hour is None:
        notes.append(f"cost unknown: the catalog has no price for {searched.accelerator.display_name}; cost is shown in GPU-hours.")  # fmt: skip
    key = fingerprint(spec.name, cluster_text(searched), request.task, engine.name, workload, request.pins,
                      request.goal, request.pareto, request.headroom, host[0])  # fmt: skip
    settings = SearchSettings(
        objective=request.goal,
        pareto=request.pareto,
        seed=request.seed,
        trials=request.trials,
        storage=request.storage,
        study_name=request.study_name or (f"fit-{key}" if request.storage else None),
        fingerprint=f"{spec.name} on {cluster_text(searched)} ({request.task}) {key}",
    )
    offered = cluster_text(offered_cluster)
    return FitProblem(request=request, model=model, spec=spec, cluster=searched, offered=offered,
                      offered_cluster=offered_cluster, engine=engine,
                      workload=workload, pins=request.pins, evaluator=evaluator, settings=settings, notes=tuple(notes),
                      lengths=lengths, runtime=runtime)  # fmt: skip
