"""The engines swiftplan launches, behind one Protocol: render a `Plan` (pure), then run it elsewhere.

Every runnable engine in `profiles/engines.json` has an implementation here, and each one refuses a
plan its capability entry excludes before rendering anything, naming the setting (the same
`engine_reasons` the search narrows its space with). `tests/test_engine_contract.py` runs one contract
suite over every implementation, as optuna runs its storage tests over every storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import (
    engine_reasons,
    engines_that_run,
    get_engine,
    serve_requirements,
    train_requirements,
)
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ServeSetup, TrainSetup

if TYPE_CHECKING:
    from swiftplan.executors.serve.memory_fraction import ServeMemory


@dataclass(frozen=True, kw_only=True, slots=True)
class Rendered:
    """What an engine would run for a plan: a command per node, environment, config files, notes."""

    engine: str
    """Engine name."""
    commands: tuple[tuple[str, ...], ...]
    """argv of each node's command (one entry on a single machine)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to the environment (secrets masked)."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Config files the command reads (name → text)."""
    notes: tuple[str, ...] = ()
    """Choices made while rendering the user should know about."""


class PlanEngine(Protocol):
    """An engine that carries out plans: it says what it would run (pure) for a plan it can run."""

    name: str
    """Its name in profiles/engines.json."""

    def render(self, plan: Plan) -> Rendered:
        """The commands, environment and files for `plan` (raises SwiftplanError for a plan it cannot run)."""
        ...


def require_runnable(engine_name: str, plan: Plan) -> None:
    """Raise one SwiftplanError naming every setting of `plan` the engine's capability entry excludes."""
    engine = get_engine(engine_name, plan.task)
    backend = plan.hardware.accelerator.backend
    if isinstance(plan.setup, ServeSetup):
        needs = serve_requirements(plan.setup, backend=backend, gpus=plan.layout.tp,
                                   accelerator=plan.hardware.accelerator)  # fmt: skip
    else:
        needs = train_requirements(plan.setup, backend=backend, gpus=plan.layout.gpus)
    if reasons := engine_reasons(engine, needs):
        others = [e.name for e in engines_that_run(needs, plan.task) if e.name != engine.name]
        replan = f"swiftplan fit ... --engine {engine.name} never returns such a plan"
        raise SwiftplanError(
            f"{engine.label} cannot run this plan: {' '.join(reasons)}",
            hint=f"Engines that can run it: {', '.join(others)} (--engine NAME); or re-plan for {engine.name}: {replan}."
            if others
            else f"Re-plan for it: {replan}.",
        )


class SwiftplanTrain:
    """swiftplan's own training loop: torchrun per node (DDP or DeepSpeed ZeRO) or one process."""

    name = "swiftplan"

    def __init__(self, run_dir: str | Path = "runs/RUN") -> None:
        self.run_dir = Path(run_dir)

    def render(self, plan: Plan) -> Rendered:
        from swiftplan.executors.train.prepare import RunRequest, render_plan

        require_runnable(self.name, plan)
        assert isinstance(plan.setup, TrainSetup)
        launches = render_plan(plan, RunRequest(plan_path=Path("plan.yaml"), data=None), run_dir=self.run_dir)
        return Rendered(engine=self.name, commands=tuple(launch.argv for launch in launches),
                        env=launches[0].env, files=launches[0].files)  # fmt: skip


class VllmServe:
    """vLLM's OpenAI-compatible server (`vllm serve`)."""

    name = "vllm"

    def __init__(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.host, self.port = host, port

    def render(self, plan: Plan) -> Rendered:
        from swiftplan.executors.serve.vllm_cmd import render_vllm

        require_runnable(self.name, plan)
        assert isinstance(plan.setup, ServeSetup)
        spec = render_vllm(
            plan.setup, model=plan.model, served_name=plan.model, host=self.host, port=self.port
        )
        return Rendered(
            engine=self.name, commands=(spec.argv,), env={k: "***" for k in spec.env}, notes=spec.notes
        )


class BuiltinServe:
    """swiftplan's built-in server (transformers, one device)."""

    name = "builtin"

    def __init__(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.host, self.port = host, port

    def render(self, plan: Plan) -> Rendered:
        require_runnable(self.name, plan)
        assert isinstance(plan.setup, ServeSetup)
        setup = plan.setup
        argv = (
            "swiftplan",
            "serve",
            "PLAN",
            "--engine",
            "builtin",
            "--host",
            self.host,
            "--port",
            str(self.port),
        )
        notes = (
            f"one {setup.dtype} model on one device, {setup.concurrency} sequence slot(s) of {setup.context} tokens",
        )
        return Rendered(engine=self.name, commands=(argv,), notes=notes)


def _serve_memory(plan: Plan) -> ServeMemory:
    """The plan's per-device memory, for engines whose memory knob means something other than vLLM's."""
    from swiftplan.executors.serve.memory_fraction import ServeMemory

    return ServeMemory.from_breakdown(plan.prediction.per_device_bytes, plan.prediction.device_memory_bytes)


class SglangServe:
    """SGLang's OpenAI-compatible server (`python -m sglang.launch_server`)."""

    name = "sglang"

    def __init__(self, host: str = "127.0.0.1", port: int = 30000) -> None:
        self.host, self.port = host, port

    def render(self, plan: Plan) -> Rendered:
        from swiftplan.executors.serve.sglang_cmd import render_sglang

        require_runnable(self.name, plan)
        assert isinstance(plan.setup, ServeSetup)
        spec = render_sglang(plan.setup, model=plan.model, served_name=plan.model, host=self.host,
                             port=self.port, memory=_serve_memory(plan),
                             backend=plan.hardware.accelerator.backend)  # fmt: skip
        return Rendered(engine=self.name, commands=(spec.argv,), notes=spec.notes)


class LmdeployServe:
    """LMDeploy's OpenAI-compatible server (`lmdeploy serve api_server`)."""

    name = "lmdeploy"

    def __init__(self, host: str = "127.0.0.1", port: int = 23333) -> None:
        self.host, self.port = host, port

    def render(self, plan: Plan) -> Rendered:
        from swiftplan.executors.serve.lmdeploy_cmd import render_lmdeploy

        require_runnable(self.name, plan)
        assert isinstance(plan.setup, ServeSetup)
        spec = render_lmdeploy(plan.setup, model=plan.model, served_name=plan.model, host=self.host,
                               port=self.port, memory=_serve_memory(plan),
                               backend=plan.hardware.accelerator.backend)  # fmt: skip
        return Rendered(engine=self.name, commands=(spec.argv,), notes=spec.notes)


class _ExternalTrain:
    """A training framework swiftplan renders the plan for (executors/train_engines) and launches."""

    name = ""

    def render(self, plan: Plan) -> Rendered:
        from swiftplan.executors.train_engines.common import DEFAULT_OPTIONS
        from swiftplan.executors.train_engines.registry import render_for

        require_runnable(self.name, plan)
        out = render_for(self.name, plan, DEFAULT_OPTIONS)
        return Rendered(engine=self.name, commands=out.commands, env=dict(out.env), files=dict(out.files),
                        notes=out.notes)  # fmt: skip


class MsSwiftTrain(_ExternalTrain):
    """ms-swift (`swift sft`)."""

    name = "ms-swift"


class MegatronSwiftTrain(_ExternalTrain):
    """Megatron-SWIFT (`megatron sft`: tensor / pipeline parallel plans)."""

    name = "megatron-swift"


class LlamaFactoryTrain(_ExternalTrain):
    """LLaMA-Factory (`llamafactory-cli train CONFIG.yaml`)."""

    name = "llamafactory"


class TrlTrain(_ExternalTrain):
    """TRL (`trl sft --config CONFIG.yaml`)."""

    name = "trl"


class AxolotlTrain(_ExternalTrain):
    """axolotl (`axolotl train CONFIG.yaml`)."""

    name = "axolotl"


TRAIN_ENGINES: Mapping[str, type] = {
    "swiftplan": SwiftplanTrain,
    "ms-swift": MsSwiftTrain,
    "megatron-swift": MegatronSwiftTrain,
    "llamafactory": LlamaFactoryTrain,
    "trl": TrlTrain,
    "axolotl": AxolotlTrain,
}
"""Training engines swiftplan launches, by name."""
SERVE_ENGINES: Mapping[str, type] = {
    "vllm": VllmServe,
    "sglang": SglangServe,
    "lmdeploy": LmdeployServe,
    "builtin": BuiltinServe,
}
"""Serving engines swiftplan launches, by name."""


def engine_for(plan: Plan, name: str | None = None) -> PlanEngine:
    """The implementation of `name` (default: the plan's own engine) for the plan's task."""
    table = TRAIN_ENGINES if plan.task == "train" else SERVE_ENGINES
    chosen = name or plan.engine
    if chosen not in table:
        raise SwiftplanError(
            f"swiftplan cannot launch engine {chosen!r} for {plan.task} plans; it launches {', '.join(table)}."
        )
    engine: PlanEngine = table[chosen]()
    return engine
