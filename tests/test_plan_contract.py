"""The plan is the contract: every plan `fit` returns is one its engine accepts (`train --dry-run`,
`serve --dry-run`), on the search-quality benchmark's clusters and on random requests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftplan.executors.train.prepare import RunRequest, dry_run
from swiftplan.plan_file import save_plan
from swiftplan.planner.engines import engine_reasons, get_engine, serve_requirements, train_requirements
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.usecases.fit import FitRequest, plan_fit

ROOT = Path(__file__).parents[1]


def _benchmark_cases() -> list:
    spec = importlib.util.spec_from_file_location("search_quality", ROOT / "benchmarks" / "search_quality.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["search_quality"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    seen, cases = set(), []
    for case in module.CASES:  # one case per (model, cluster, task): the default options
        if (case.model, case.gpus, case.task) not in seen:
            seen.add((case.model, case.gpus, case.task))
            cases.append(case)
    return cases


CASES = _benchmark_cases()


def _swiftplan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWIFTPLAN_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "swiftplan", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env=env)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_fit_on_every_benchmark_cluster_returns_a_plan_its_engine_accepts(tmp_path, case):
    task = "serve" if case.task == "serve" else "sft"
    fit = _swiftplan(
        "fit", case.model, "--gpus", case.gpus, "--task", task, "-o", "plan.yaml", "--json", cwd=tmp_path
    )
    assert fit.returncode == 0, fit.stderr
    engine = json.loads(fit.stdout)["engine"]
    verb = (
        ("serve", "plan.yaml", "--dry-run", "--json")
        if case.task == "serve"
        else ("train", "plan.yaml", "--dry-run", "--json")
    )
    run = _swiftplan(*verb, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rendered = json.loads(run.stdout)
    if case.task == "serve":
        assert rendered.get("engine", "builtin") == engine
    else:
        assert engine == "swiftplan" and len(rendered["launches"]) == rendered["nodes"]


def _accepted(plan, tmp_path: Path) -> None:
    """What `train --dry-run` / `serve --dry-run` check, in process."""
    backend = plan.hardware.accelerator.backend
    engine = get_engine(plan.engine, plan.task)
    if isinstance(plan.setup, ServeSetup):
        assert not engine_reasons(
            engine, serve_requirements(plan.setup, backend=backend, gpus=plan.layout.tp)
        )
        if plan.engine == "vllm":
            from swiftplan.executors.serve.vllm_cmd import render_vllm

            render_vllm(plan.setup, model=plan.model, served_name=plan.model, host="127.0.0.1", port=8000, loras=(),
                        api_key=None)  # fmt: skip
        return
    assert isinstance(plan.setup, TrainSetup)
    assert not engine_reasons(engine, train_requirements(plan.setup, backend=backend, gpus=plan.layout.gpus))
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    result = dry_run(RunRequest(plan_path=path, data=None, output_dir=tmp_path / "run"))
    assert len(result.launches) == plan.nodes


MODELS = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B", "mistralai/Mixtral-8x7B-v0.1",
          "Qwen/Qwen3-30B-A3B", "google/gemma-2-9b")  # fmt: skip
GPUS = ("rtx3060", "rtx4090", "t4", "a100-80g", "h100", "l40s", "mi300x", "m2-max", "ascend910b")
COUNTS = ("", "2x", "4x", "8x", "2x8x")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(MODELS),
    gpu=st.sampled_from(GPUS),
    count=st.sampled_from(COUNTS),
    task=st.sampled_from(("train", "train", "serve")),
    method=st.sampled_from((None, ("full",), ("lora",), ("qlora",), ("lora", "qlora"))),
    seq=st.sampled_from((512, 2048, 8192)),
)
def test_every_plan_fit_returns_is_accepted_by_its_engine(tmp_path, model, gpu, count, task, method, seq):
    from swiftplan.errors import SwiftplanError

    pins = Pins(methods=method) if task == "train" else Pins()
    request = FitRequest(model=model, gpus=count + gpu, task=task, pins=pins, seq_len=seq, context=seq,
                         host_ram_bytes=64 * 2**30, compare_engines=False)  # fmt: skip
    try:
        outcome = plan_fit(request)
    except SwiftplanError:
        return  # pins the hardware or engine cannot run are refused as bad input: never a plan
    if outcome.plan is not None:
        _accepted(outcome.plan, tmp_path)
