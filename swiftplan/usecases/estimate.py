"""The estimate use case: one set-up (or a plan file) → its estimate, and whether its engine can run it.

For a plan file the set-up is estimated again on the plan's own hardware snapshot (no catalog) and the
prediction compared with the one the file holds, field by field: they agree to the byte unless the
file was edited by hand, or the model's config or swiftplan's formulas changed since it was written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace
from pathlib import Path

from swiftplan.errors import SwiftplanError
from swiftplan.planner import model_limits
from swiftplan.planner.allocator import AllocatorSettings
from swiftplan.planner.engines import (
    Engine,
    default_engine,
    engine_reasons,
    engines_that_run,
    get_engine,
    runtime_engine,
    serve_requirements,
    train_requirements,
)
from swiftplan.planner.estimate import Estimate, estimate_serving, estimate_training
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.layout import Layout, cluster_text
from swiftplan.planner.plan import Plan, Prediction, predict
from swiftplan.planner.runtime import RuntimeChoice, setup_choice
from swiftplan.planner.setup import ServeSetup, Task, TrainSetup
from swiftplan.planner.workload import ServeWorkload, TrainWorkload
from swiftplan.usecases import inputs


@dataclass(frozen=True, kw_only=True, slots=True)
class EstimateOutcome:
    """An estimate and what it means for running it."""

    estimate: Estimate
    """Memory and speed."""
    engine: Engine
    """The engine it was checked against."""
    engine_reasons: tuple[str, ...]
    """Why that engine cannot run it (empty: it can)."""
    other_engines: tuple[Engine, ...]
    """Engines in the table that could run it (when `engine` cannot)."""
    plan: Plan | None = None
    """The plan file's plan, when one was estimated."""
    prediction: Prediction | None = None
    """For a plan file: the prediction made again today."""
    changed: tuple[str, ...] = ()
    """For a plan file: prediction fields that differ from the file's."""
    runtime: RuntimeChoice | None = None
    """The runtime profile planned for and the defaults it applied (None: serving without --runtime)."""

    @property
    def runs(self) -> bool:
        """Fits and its engine can run it."""
        return self.estimate.fits and not self.engine_reasons


def _engine_check(setup: TrainSetup | ServeSetup, cluster: Cluster, engine: Engine, gpus: int) -> tuple[tuple[str, ...], tuple[Engine, ...]]:  # fmt: skip
    backend = cluster.accelerator.backend
    if isinstance(setup, ServeSetup):
        needs = serve_requirements(setup, backend=backend, gpus=gpus, accelerator=cluster.accelerator)
    else:
        needs = train_requirements(setup, backend=backend, gpus=gpus)
    reasons = tuple(engine_reasons(engine, needs))
    others = engines_that_run(needs, engine.task) if reasons else ()
    return reasons, others


def engine_for_runtime(
    engine: str | None, runtime: RuntimeChoice | None, task: Task, cluster: Cluster
) -> tuple[Engine, tuple[str, ...]]:
    """The engine a set-up is checked against, and a note when the runtime has none: the one named, else
    the runtime's own (engines.json `runtime`), else the task's default."""
    if engine:
        return get_engine(engine, task), ()
    default = default_engine(task, cluster.accelerator.backend)
    if runtime is None or runtime.profile.name == default.runtime:
        return default, ()
    own = runtime_engine(runtime.profile.name, task)
    if own is not None:
        return own, ()
    return default, (
        f"runtime {runtime.profile.name}: no engine in swiftplan's table (profiles/engines.json) runs "
        f"{runtime.profile.label} yet, so swiftplan cannot launch this plan; it is checked against {default.name}.",
    )


def estimate_setup(
    model: str,
    cluster: Cluster,
    setup: TrainSetup | ServeSetup,
    engine: str | None = None,
    allocator: AllocatorSettings | None = None,
    runtime: RuntimeChoice | None = None,
) -> EstimateOutcome:
    """Estimate one set-up of `model` on `cluster` and check it against `engine` (default: the runtime's
    engine, else the task's); `allocator`: how the run drives PyTorch's caching allocator (reserved
    memory); `runtime`: the profile the set-up's defaults came from."""
    if isinstance(setup, TrainSetup):
        require_whole_prompts(setup, cluster)
    spec = inputs.resolve_model(model)
    warnings = model_limits.check_setup(spec, setup)
    task: Task = "serve" if isinstance(setup, ServeSetup) else "train"
    chosen, engine_notes = engine_for_runtime(engine, runtime, task, cluster)
    warnings = warnings + engine_notes
    if isinstance(setup, ServeSetup):
        estimate = estimate_serving(spec, setup, cluster, allocator=allocator)
        gpus = setup.tp
    else:
        estimate = estimate_training(spec, setup, cluster, allocator=allocator)
        gpus = cluster.world_size
    estimate = replace(estimate, notes=estimate.notes + warnings)
    reasons, others = _engine_check(setup, cluster, chosen, gpus)
    return EstimateOutcome(
        estimate=estimate, engine=chosen, engine_reasons=reasons, other_engines=others, runtime=runtime
    )


def _completions_per_accum(setup: TrainSetup, cluster: Cluster) -> int:
    """Completions one accumulation step generates over the data-parallel ranks: micro-batch × ranks."""
    from swiftplan.planner.estimate import training_world_size

    ranks = max(1, training_world_size(setup.objective, cluster) // (setup.parallel.tp * setup.parallel.pp))
    return setup.micro_batch * ranks


def whole_prompt_accum(setup: TrainSetup, cluster: Cluster) -> int:
    """The smallest --grad-accum, at least the set-up's, for which a GRPO step (micro-batch × accumulation ×
    data-parallel ranks completions) is whole prompts of --num-generations (what TRL and ms-swift require:
    `require_whole_prompts`); the set-up's own for other objectives."""
    from swiftplan.planner.objective import step_generations

    step = _whole_prompt_multiple(_completions_per_accum(setup, cluster), step_generations(setup.objective))
    return -(-setup.grad_accum // step) * step


def _whole_prompt_multiple(completions: int, generations: int) -> int:
    """The smallest count n for which n × `completions` is whole prompts of `generations` completions each."""
    import math

    return generations // math.gcd(completions, generations)


def require_whole_prompts(setup: TrainSetup, cluster: Cluster) -> None:
    """GRPO groups a step's completions by prompt: micro-batch × accumulation × data-parallel ranks must be a whole
    number of groups of --num-generations. TRL refuses anything else at start-up: `GRPOConfig.__post_init__` raises
    "generation_batch_size (…) must be divisible by num_generations (…)", where generation_batch_size is
    per_device_train_batch_size × processes × gradient_accumulation_steps by default (huggingface/trl
    trl/trainer/grpo_config.py, line 1110 at commit f2cd57710ae3, line 1131 in trl 1.16.0), and ms-swift
    (_init_generation_batch_params) likewise. So a typed batch that is not whole prompts is refused, naming the
    smallest --grad-accum and --batch that are (an untyped --grad-accum is raised to `whole_prompt_accum`)."""
    accum, rollout = whole_prompt_accum(setup, cluster), setup.objective.rollout
    if accum == setup.grad_accum or rollout is None:
        return
    per_accum = _completions_per_accum(setup, cluster)
    ranks, groups = per_accum // setup.micro_batch, rollout.num_generations
    batch = per_accum * setup.grad_accum
    accum_step = _whole_prompt_multiple(per_accum, groups)
    batch_step = _whole_prompt_multiple(ranks * setup.grad_accum, groups)
    micro = -(-setup.micro_batch // batch_step) * batch_step
    raise SwiftplanError(
        f"--task grpo: a step generates --batch {setup.micro_batch} × --grad-accum {setup.grad_accum} × {ranks} "
        f"data-parallel rank(s) = {batch} completion(s), not whole prompts of --num-generations {groups}; TRL refuses "
        f"that at start-up (GRPOConfig: generation_batch_size ({batch}) must be divisible by num_generations "
        f"({groups})), and ms-swift does too.",
        hint=f"Use --grad-accum {accum} ({per_accum * accum} completions, {per_accum * accum // groups} prompt(s) a "
        f"step, the same memory per device; any multiple of {accum_step} makes whole prompts), or --batch {micro} "
        f"with --grad-accum {setup.grad_accum} (more memory per device), or leave --grad-accum out to have it "
        "chosen.",
    )


WHY_DIFFERS = (
    "a hand edit of the file changes the prediction, and so does a change to the model config or swiftplan's "
    "formulas since it was written"
)
"""Why today's estimate of a plan file can differ from the prediction it holds (shown beside the fields)."""


def estimate_plan_file(path: str | Path) -> EstimateOutcome:
    """Re-estimate a plan file on its own hardware snapshot and compare with the prediction it holds."""
    from swiftplan.plan_file import load_plan

    plan = load_plan(path)
    try:
        spec = inputs.resolve_model(plan.model)
    except SwiftplanError as error:
        raise SwiftplanError(f"Plan file {path}: field 'model': {error.message}", hint=error.hint) from error
    warnings = model_limits.check_setup(spec, plan.setup, f"Plan file {path}")
    model_limits.check_plan_shape(spec, plan.setup, f"Plan file {path}")
    if isinstance(plan.setup, ServeSetup):
        estimate = estimate_serving(spec, plan.setup, plan.hardware)
    else:
        estimate = estimate_training(spec, plan.setup, plan.hardware)
    estimate = replace(estimate, notes=estimate.notes + warnings)
    prediction = predict(estimate, workload=plan.workload, layout=plan.layout, hardware=plan.hardware)
    changed = tuple(
        f.name for f in fields(Prediction) if getattr(prediction, f.name) != getattr(plan.prediction, f.name)
    )
    engine = get_engine(plan.engine, plan.task)
    gpus = plan.layout.tp if plan.task == "serve" else plan.layout.gpus
    reasons, others = _engine_check(plan.setup, plan.hardware, engine, gpus)
    runtime = setup_choice(plan.setup) if isinstance(plan.setup, TrainSetup) else None
    return EstimateOutcome(estimate=estimate, engine=engine, engine_reasons=reasons, other_engines=others,
                           plan=plan, prediction=prediction, changed=changed, runtime=runtime)  # fmt: skip


def plan_for_setup(
    model: str, cluster: Cluster, setup: TrainSetup | ServeSetup, *, gpus: int | None = None,
    engine: str | None = None, workload: TrainWorkload | ServeWorkload | None = None,
) -> Plan:  # fmt: skip
    """A `Plan` for a set-up chosen by hand (not searched) on `gpus` of `cluster` (default: all of them).

    The engine must be able to run it; the workload defaults to one step's worth (global batch =
    micro-batch × accumulation × dp, or the served load)."""
    from swiftplan import __version__

    spec = inputs.resolve_model(model)
    model_limits.check_setup(spec, setup)
    gpus = gpus or cluster.world_size
    task: Task = "serve" if isinstance(setup, ServeSetup) else "train"
    chosen = get_engine(engine, task) if engine else default_engine(task, cluster.accelerator.backend)
    if isinstance(setup, ServeSetup):
        layout = Layout(gpus=gpus, tp=setup.tp)
        replicas = gpus // setup.tp
        workload = workload or ServeWorkload(context=setup.context, concurrency=setup.concurrency * replicas,
                                             gpu_memory_utilization=setup.gpu_memory_utilization,
                                             runtime=setup.runtime, eager=setup.eager)  # fmt: skip
    else:
        layout = Layout(
            gpus=max(1, gpus - setup.objective.server_gpus), tp=setup.parallel.tp, pp=setup.parallel.pp
        )
        workload = workload or TrainWorkload(
            seq_len=setup.seq_len, global_batch=setup.micro_batch * setup.grad_accum * layout.dp,
            attention=setup.attention, lora_dropout=setup.lora.dropout if setup.lora else 0.05,
            dora=setup.lora.dora if setup.lora else False,
            variable_lengths=setup.variable_lengths, runtime=setup.runtime, objective=setup.objective,
        )  # fmt: skip
    hardware = replace(layout, gpus=gpus).sub_cluster(cluster) if task == "train" else cluster
    reasons, _ = _engine_check(setup, hardware, chosen, setup.tp if isinstance(setup, ServeSetup) else gpus)
    if reasons:
        raise SwiftplanError(f"{chosen.label} cannot run this set-up: {' '.join(reasons)}")
    estimate = (
        estimate_serving(spec, setup, hardware)
        if isinstance(setup, ServeSetup)
        else estimate_training(spec, setup, hardware)
    )
    return Plan(
        model=inputs.model_reference(model), model_source=spec.source or spec.name, task=task, engine=chosen.name,
        objective="given", offered=cluster_text(cluster), hardware=hardware, layout=layout, setup=setup,
        workload=workload, prediction=predict(estimate, workload=workload, layout=layout, hardware=hardware),
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0), swiftplan_version=__version__,
    )  # fmt: skip
