"""One contract, every engine swiftplan launches (as optuna runs its storage tests over every storage):
each runnable engine in profiles/engines.json has an implementation; it renders the plans `fit` makes
for it, purely; and it refuses a plan its capability entry excludes, naming the setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.engines import SERVE_ENGINES, TRAIN_ENGINES, engine_for
from swiftplan.planner.engines import list_engines
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.layout import Layout
from swiftplan.planner.setup import Parallelism, ServeSetup, TrainSetup
from swiftplan.usecases.estimate import plan_for_setup
from swiftplan.usecases.fit import FitRequest, plan_fit

ENGINES = [("train", name) for name in TRAIN_ENGINES] + [("serve", name) for name in SERVE_ENGINES]


def test_every_runnable_engine_has_an_implementation_and_no_other():
    assert set(TRAIN_ENGINES) == {e.name for e in list_engines("train", runnable=True)}
    assert set(SERVE_ENGINES) == {e.name for e in list_engines("serve", runnable=True)}


def _fitted(task: str, engine: str, gpus: str = "2xh100"):
    request = FitRequest(model="Qwen/Qwen2.5-7B", gpus=gpus, task=task, engine=engine, compare_engines=False)  # type: ignore[arg-type]
    plan = plan_fit(request).plan
    assert plan is not None and plan.engine == engine
    return plan


@pytest.mark.parametrize("task, name", ENGINES)
def test_it_renders_the_plans_fit_makes_for_it_and_rendering_is_pure(task, name):
    plan = _fitted(task, name)
    engine = engine_for(plan)
    assert engine.name == name
    first, again = engine.render(plan), engine.render(plan)
    assert first == again and first.engine == name
    assert len(first.commands) == (plan.nodes if task == "train" else 1) and all(first.commands)


# A set-up each engine's capability entry excludes, and the setting its refusal must name.
REFUSED = {
    "swiftplan": (TrainSetup(method="lora", parallel=Parallelism(tp=2)), "tensor parallelism"),
    "vllm": (ServeSetup(quant="nf4"), "quantization 'nf4'"),  # on the CPU backend below: no bitsandbytes
    "builtin": (ServeSetup(kv_dtype="fp8"), "KV-cache dtype 'fp8'"),
    "sglang": (ServeSetup(quant="fp4"), "quantization 'fp4'"),
    "ms-swift": (TrainSetup(method="lora", parallel=Parallelism(tp=2)), "tensor parallelism"),
    "llamafactory": (TrainSetup(method="lora", parallel=Parallelism(pp=2)), "pipeline parallelism"),
    "megatron-swift": (TrainSetup(method="qlora"), "method 'qlora'"),
    "trl": (TrainSetup(method="lora", quant="gptq"), "quantization 'gptq'"),
    "axolotl": (TrainSetup(method="lora", parallel=Parallelism(pp=2)), "pipeline parallelism"),
    "lmdeploy": (ServeSetup(quant="nf4"), "quantization 'nf4'"),  # no bitsandbytes in LMDeploy
}


@pytest.mark.parametrize("task, name", ENGINES)
def test_it_refuses_a_plan_it_cannot_run_naming_the_setting(task, name):
    setup, setting = REFUSED[name]
    plan = _fitted(task, name)
    hardware = plan.hardware
    if name == "vllm":  # vLLM's CPU build has no bitsandbytes
        cpu = replace(hardware.accelerator, backend="cpu")
        hardware = replace(hardware, accelerator=cpu)
    layout = Layout(gpus=plan.layout.gpus, tp=2) if name == "swiftplan" else plan.layout
    bad = replace(plan, setup=setup, hardware=hardware, layout=layout)
    with pytest.raises(SwiftplanError) as error:
        engine_for(bad).render(bad)
    assert setting in error.value.message and "cannot run this plan" in error.value.message


def test_a_plan_for_one_engine_is_rendered_by_another_only_when_it_can_run_it():
    plan = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("h100"), ServeSetup(quant="fp8"), engine="vllm")
    assert engine_for(plan, "vllm").render(plan).commands
    with pytest.raises(SwiftplanError, match="quantization 'fp8'"):
        engine_for(plan, "builtin").render(plan)
    with pytest.raises(SwiftplanError, match="cannot launch engine 'megatron-swift'"):
        engine_for(plan, "megatron-swift")
