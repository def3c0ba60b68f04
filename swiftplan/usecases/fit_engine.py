"""Which engine and runtime a fit plans for: the one asked for (checked against the runtime asked for), the
objective's default, the first that trains on images for a job with images, or the one the runtime implies; and
the cluster that engine can use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import Engine, EngineTask, default_engine, get_engine, runtime_engine
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.runtime import DEFAULT_TRAIN_RUNTIME, RuntimeChoice, choose_runtime

if TYPE_CHECKING:
    from swiftplan.usecases.fit_request import FitRequest, FitTask


def choose_runtime_engine(request: FitRequest, cluster: Cluster, notes: list[str]) -> tuple[Engine, RuntimeChoice | None]:  # fmt: skip
    """The engine and the runtime profile to plan for. Planning for a runtime means the plan runs on it:
    --runtime alone picks that framework's engine (engines.json `runtime`), which may be one swiftplan
    cannot launch yet (said in a note); --engine alone plans with that engine's runtime; both must agree
    on what the engine runs."""
    task = request.task
    if (
        task == "train"
        and request.training.kind != "sft"
        and request.engine is None
        and request.runtime is None
    ):
        request = replace(request, engine=objective_engine(request.training.kind, cluster).name)
        notes.append(f"--task {request.training.kind}: planned for {request.engine}, the first engine swiftplan "
                     "launches that runs it (pass --engine to choose another).")  # fmt: skip
    if task == "train" and request.vision is not None and request.engine is None and request.runtime is None:
        request = replace(request, engine=image_engine(cluster).name)
        notes.append(f"images: planned for {request.engine}, the first engine swiftplan launches that trains a "
                     "vision-language model on its images (swiftplan's own loop trains text only; pass --engine "
                     "to choose another).")  # fmt: skip
    if task == "serve" and request.vision is not None:
        from swiftplan.usecases.fit_vision import serve_image_engine

        request = serve_image_engine(request, cluster, notes)
    if request.runtime is None or request.engine is not None:
        engine = choose_engine(request.engine, task, cluster, launchable=request.runtime is None)
        if task == "serve" and request.runtime is not None:
            _check_serve_runtime(engine, request.runtime)
        elif request.runtime is not None:
            _check_train_runtime(engine, request.runtime)
    else:
        own = runtime_engine(request.runtime, task)
        if own is None:
            from swiftplan.planner.runtime import get_runtime

            label = get_runtime(request.runtime, task).label
            raise SwiftplanError(
                f"No engine in swiftplan's table (profiles/engines.json) runs {label} (--runtime {request.runtime}) yet, "
                "so fit cannot make a plan that runs on it.",
                hint=f"`swiftplan estimate MODEL --runtime {request.runtime} ...` sizes one set-up under its defaults.",
            )
        engine = choose_engine(own.name, task, cluster, launchable=False)
        if not engine.runnable:
            notes.append(
                f"planned for {engine.label}: swiftplan cannot launch it yet; run it with `{engine.command}`."
            )
    if task == "train" and request.vision is not None:
        require_image_engine(engine, runtime=request.runtime, engine_named=request.engine is not None)
    if task == "serve" and request.vision is not None:
        from swiftplan.usecases.fit_vision import require_serve_image_engine

        require_serve_image_engine(engine, runtime=request.runtime, engine_named=request.engine is not None)
    if task == "serve" and request.runtime is None:
        return engine, None
    name = request.runtime or engine.runtime or DEFAULT_TRAIN_RUNTIME
    runtime = choose_runtime(name, task, dict(request.runtime_options))
    if task == "train":
        from swiftplan.planner.engines import Requirements, engine_reasons, knob_requirements, refused_knobs
        from swiftplan.planner.runtime import KNOB_FLAGS

        knobs = runtime.knobs()
        needs = Requirements(
            backend=cluster.accelerator.backend,
            **knob_requirements(knobs, variable_lengths=request.samples_vary),
        )
        if reasons := engine_reasons(engine, needs):
            own = runtime_engine(name, task)
            flags = ", ".join(dict.fromkeys(KNOB_FLAGS[option] for option, _ in refused_knobs(engine, needs)))
            raise SwiftplanError(
                f"{engine.label} cannot run what runtime {name} sets: {' '.join(reasons)}",
                hint=(
                    f"Plan for {own.name} (--runtime {name} without --engine)"
                    if own
                    else "Pick another --runtime"
                )
                + f", or override those settings with their flags ({flags or '--loss, --optimizer-impl, --fsdp, ...'}).",
            )
    return engine, runtime


def _check_serve_runtime(engine: Engine, runtime: str) -> None:
    """A serving plan is timed for the engine that serves it: --runtime must be a serving runtime and, with
    --engine, the one that engine runs."""
    from swiftplan.planner.runtime import get_runtime

    get_runtime(runtime, "serve")  # an unknown name: one error listing the serving runtimes
    if engine.runtime != runtime:
        own = runtime_engine(runtime, "serve")
        raise SwiftplanError(
            f"--engine {engine.name} and --runtime {runtime} disagree: a serving plan's decode speed is computed "
            f"for the engine that serves it, and {engine.name} runs "
            f"{'runtime ' + engine.runtime if engine.runtime else 'no runtime profile'}, not {runtime}.",
            hint=f"Drop --runtime to plan for {engine.name}"
            + (f", or drop --engine to plan for {own.name}." if own else "."),
        )


def _check_train_runtime(engine: Engine, runtime: str) -> None:
    """A training plan carries its runtime's terms (loss kernel, optimizer implementation, padding…): with
    --engine, --runtime must be the one that engine runs (engines.json `runtime`; swiftplan's loop when it names
    none), or the plan would count another framework's memory for a run the engine launches its own way."""
    from swiftplan.planner.runtime import get_runtime

    get_runtime(runtime, "train")  # an unknown name: one error listing the training runtimes
    own = engine.runtime or DEFAULT_TRAIN_RUNTIME
    if runtime != own:
        other = runtime_engine(runtime, "train")
        raise SwiftplanError(
            f"--engine {engine.name} and --runtime {runtime} disagree: {engine.name} runs runtime {own}, not "
            f"{runtime}, and a plan's memory and speed are counted under the defaults of the runtime that trains it.",
            hint=f"Drop --runtime to plan for {engine.name} (override single settings with --loss, --optimizer-impl, "
            "--padding, ...)"
            + (f", or drop --engine to plan for {other.name}, which runs {runtime}." if other else "."),
        )


def objective_engine(kind: str, cluster: Cluster) -> Engine:
    """The first training engine swiftplan launches that runs objective `kind` on this cluster's devices."""
    from swiftplan.planner.engines import Requirements, engine_reasons, list_engines

    needs = Requirements(backend=cluster.accelerator.backend, objective=kind)
    for engine in list_engines("train", runnable=True):
        if not engine_reasons(engine, needs):
            return engine
    raise SwiftplanError(
        f"No engine swiftplan launches runs --task {kind} on {cluster.accelerator.backend} devices."
    )


def image_engine(cluster: Cluster) -> Engine:
    """The first training engine swiftplan launches that trains a vision-language model on its images on this
    cluster's devices."""
    from swiftplan.planner.engines import Requirements, engine_reasons, image_engines_text, list_engines

    needs = Requirements(backend=cluster.accelerator.backend, objective="sft", vision=True)
    for engine in list_engines("train", runnable=True):
        if not engine_reasons(engine, needs):
            return engine
    raise SwiftplanError(
        f"No engine swiftplan launches trains a vision-language model on its images on "
        f"{cluster.accelerator.backend} devices ({image_engines_text()} do, where they run).",
        hint="Drop the image options to plan the text alone, or plan for a device those engines run on.",
    )


def image_engine_choices(
    engine: Engine,
    names: Iterable[str],
    task: EngineTask,
    *,
    runtime: str | None,
    engine_named: bool,
    takes_engine: bool = True,
) -> tuple[str, list[str]]:
    """For a refusal of images on `engine`: how the user chose it ('--engine X', or '--runtime R plans for X,
    which'), and the options that choose each engine of `names` instead (its --runtime when the runtime chose, or
    when the command has no --engine)."""
    by_runtime = runtime is not None and not engine_named
    ways = []
    for name in names:
        own = get_engine(name, task).runtime
        if (by_runtime or not takes_engine) and own:
            ways.append(f"--runtime {own}")
        elif takes_engine:
            ways.append(f"--engine {name}" + (" without --runtime" if by_runtime and task == "train" else ""))
    chosen = (
        f"--runtime {runtime} plans for {engine.name}, which" if by_runtime else f"--engine {engine.name}"
    )
    return chosen, ways


def require_image_engine(
    engine: Engine, *, runtime: str | None, engine_named: bool, takes_engine: bool = True
) -> None:
    """A plan with images is made only for an engine that trains on them (planner/engines.py IMAGE_TRAIN_ENGINES):
    one message naming the engine, what it lacks and the engines that can (as --engine, or as --runtime when the
    command has no --engine, like size), before anything is searched."""
    from swiftplan.planner.engines import IMAGE_TRAIN_ENGINES, image_engines_text, trains_images

    if trains_images(engine):
        return
    chosen, ways = image_engine_choices(engine, IMAGE_TRAIN_ENGINES, "train", runtime=runtime,
                                        engine_named=engine_named, takes_engine=takes_engine)  # fmt: skip
    raise SwiftplanError(
        f"{chosen} does not train a vision-language model on its images, so no plan with the image options runs on "
        f"it: only {image_engines_text()} are given a plan's pixel budget per image and what trains (tower, aligner).",
        hint=f"Use one that does ({', '.join(ways)}), or drop the image options to plan the text alone.",
    )


def require_image_runtime(runtime: str) -> None:
    """--runtime with image options in a command that has no --engine (size): the engine that runs it must train on
    images (`require_image_engine`), and a runtime no engine runs yet is refused with the runtimes that do."""
    from swiftplan.planner.engines import IMAGE_TRAIN_ENGINES, get_engine, image_engines_text

    engine = runtime_engine(runtime, "train")
    if engine is not None:
        require_image_engine(engine, runtime=runtime, engine_named=False, takes_engine=False)
        return
    own = (get_engine(name, "train").runtime for name in IMAGE_TRAIN_ENGINES)
    raise SwiftplanError(
        f"No engine in swiftplan's table (profiles/engines.json) runs --runtime {runtime} yet, so no plan with the "
        f"image options runs under it: swiftplan trains on images with {image_engines_text()} only.",
        hint=f"Use one of them ({', '.join(f'--runtime {name}' for name in own if name)}), or drop the image options "
        "to plan the text alone.",
    )


def choose_engine(name: str | None, task: FitTask, cluster: Cluster, *, launchable: bool = True) -> Engine:
    """The engine to plan for: the one named (it must be one swiftplan can launch unless `launchable` is
    off), else the default."""
    if name is None:
        return default_engine(task, cluster.accelerator.backend)
    engine = get_engine(name, task)
    if launchable and not engine.runnable:
        from swiftplan.planner.engines import list_engines

        valid = ", ".join(e.name for e in list_engines(task, runnable=True))
        raise SwiftplanError(
            f"swiftplan cannot launch {engine.label} yet, so it does not plan for it; --engine takes {valid}.",
            hint="Plan for the default engine: fit names another engine when it would run a better plan.",
        )
    backends = engine.allowed("backend", cluster.accelerator.backend)
    if backends is not None and cluster.accelerator.backend not in backends:
        raise SwiftplanError(
            f"{engine.label} does not run on {cluster.accelerator.display_name} ({cluster.accelerator.backend}).",
            hint=f"It runs on {', '.join(backends)} devices.",
        )
    return engine


def engine_cluster(engine: Engine, cluster: Cluster, notes: list[str]) -> Cluster:
    """The part of the cluster the engine can use (the built-in server: one device)."""
    most = engine.bound("gpus_max", cluster.accelerator.backend)
    if most is None or cluster.world_size <= most:
        return cluster
    notes.append(
        f"{engine.name} uses {most} GPU(s) of {cluster.world_size}: {engine.why('gpus_max', cluster.accelerator.backend)}."
    )
    return replace(cluster, nodes=1, gpus_per_node=most)
