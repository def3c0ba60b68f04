"""The serving engine reaches the serving search: `fit --task serve` and `size --task serve` time every
candidate with the per-step decode cost of the engine that serves it (--runtime, or --engine's runtime),
the plan records that runtime, and plan files keep it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from bad_input_support import assert_refused, run_cli

from swiftplan.errors import SwiftplanError
from swiftplan.plan_file import load_plan, plan_yaml, save_plan
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.sizing.serve_sizing import ServeLoad
from swiftplan.planner.speed import decode_step_overhead_s, serve_efficiency
from swiftplan.planner.workload import ServeWorkload
from swiftplan.usecases.fit import FitRequest, plan_fit

M = "Qwen/Qwen2.5-0.5B"
"""Small enough that the per-step host cost is a large part of its decode step on an H100."""
FIT = ("fit", M, "--gpus", "h100-sxm", "--task", "serve", "--concurrency", "8", "--quant", "none", "--json")
SIZE = ("size", M, "--task", "serve", "--concurrency", "8", "--accelerators", "h100-sxm", "--quant", "none", "--json")  # fmt: skip


def _overhead_s(runtime: str) -> float:
    """The calibrated per-step decode cost (profiles/calibration.json serving_efficiency)."""
    return decode_step_overhead_s(runtime, serve_efficiency())


def _fit_json(*extra: str) -> dict:
    result = run_cli(*FIT, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _request(**changes: object) -> FitRequest:
    base = FitRequest(model=M, gpus="h100-sxm", task="serve", concurrency=8,
                      pins=Pins(quants=("none",), kv_dtypes=("auto",)), compare_engines=False)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_fit_times_the_plan_for_the_runtime_asked_and_records_it() -> None:
    vllm, lmdeploy = _fit_json("--runtime", "vllm"), _fit_json("--runtime", "lmdeploy")
    for payload, name in ((vllm, "vllm"), (lmdeploy, "lmdeploy")):
        assert payload["plan"]["engine"] == name
        assert payload["plan"]["serve"]["runtime"] == name
    assert vllm["plan"]["serve"]["quant"] == lmdeploy["plan"]["serve"]["quant"] == "none"
    fast = lmdeploy["plan"]["prediction"]["per_user_decode_tokens_per_s"]
    slow = vllm["plan"]["prediction"]["per_user_decode_tokens_per_s"]
    assert (
        fast > 2 * slow
    )  # vLLM's 4 ms per step is most of a 0.5B model's decode step on an H100, LMDeploy's 0.9
    # the same set-up, so the decode steps differ by exactly the two engines' per-step costs
    assert 1 / slow - 1 / fast == pytest.approx(_overhead_s("vllm") - _overhead_s("lmdeploy"), rel=1e-6)


def test_fit_without_runtime_still_plans_for_vllm_with_its_cost() -> None:
    plan = plan_fit(_request()).plan
    asked = plan_fit(_request(runtime="vllm")).plan
    assert plan is not None and asked is not None
    assert plan.engine == "vllm" and plan.setup.runtime == "vllm" and plan.workload.runtime == "vllm"  # type: ignore[union-attr]
    assert plan.prediction.per_user_decode_tokens_per_s == asked.prediction.per_user_decode_tokens_per_s


def test_naming_the_engine_plans_with_its_runtime() -> None:
    by_engine, by_runtime = (
        plan_fit(_request(engine="sglang")).plan,
        plan_fit(_request(runtime="sglang")).plan,
    )
    lmdeploy = plan_fit(_request(engine="lmdeploy")).plan
    assert by_engine is not None and by_runtime is not None and lmdeploy is not None
    assert by_engine.engine == "sglang" and by_engine.setup.runtime == "sglang"  # type: ignore[union-attr]
    assert (
        by_engine.prediction.per_user_decode_tokens_per_s
        == by_runtime.prediction.per_user_decode_tokens_per_s
    )
    assert lmdeploy.engine == "lmdeploy" and lmdeploy.setup.runtime == "lmdeploy"  # type: ignore[union-attr]
    # LMDeploy's fitted per-step cost is below vLLM's; SGLang's prior is vLLM's (no SGLang row measured)
    assert (
        lmdeploy.prediction.per_user_decode_tokens_per_s
        > by_engine.prediction.per_user_decode_tokens_per_s
        == plan_fit(_request()).plan.prediction.per_user_decode_tokens_per_s  # type: ignore[union-attr]
    )
    payload = _fit_json("--engine", "sglang")
    assert payload["plan"]["serve"]["runtime"] == "sglang"


def test_the_engine_comparison_times_each_engine_with_its_own_runtime() -> None:
    outcome = plan_fit(_request(compare_engines=True))
    assert outcome.plan is not None and outcome.alternative is not None
    other = outcome.alternative.evaluation
    assert [e.name for e in outcome.alternative.engines] == ["lmdeploy"]  # the smallest fitted per-step cost
    assert other.estimate is not None and other.estimate.setup.runtime == "lmdeploy"  # type: ignore[union-attr]
    speed = other.estimate.serving_speed.per_user_decode_tokens_per_s
    assert speed > outcome.plan.prediction.per_user_decode_tokens_per_s  # type: ignore[operator]
    # planned for lmdeploy, every other engine's plan pays a larger per-step cost: nothing to mention
    assert plan_fit(_request(engine="lmdeploy", compare_engines=True)).alternative is None


def test_size_sizes_for_the_runtime_asked() -> None:
    payloads = {}
    for name in ("vllm", "lmdeploy"):
        result = run_cli(*SIZE, "--runtime", name)
        assert result.exit_code == 0, result.output
        payloads[name] = json.loads(result.output)
        assert any(f"sized for {name}" in note for note in payloads[name]["notes"])
    vllm, lmdeploy = (payloads[n]["options"][0] for n in ("vllm", "lmdeploy"))
    assert vllm["plan"] == lmdeploy["plan"]  # the same deployment, timed for two engines
    slow, fast = vllm["per_user_decode_tokens_per_s"], lmdeploy["per_user_decode_tokens_per_s"]
    assert 1 / slow - 1 / fast == pytest.approx(_overhead_s("vllm") - _overhead_s("lmdeploy"), rel=1e-6)
    plain = json.loads(run_cli(*SIZE).output)["options"][0]
    assert plain["per_user_decode_tokens_per_s"] == slow  # no --runtime: vLLM, as before


def test_a_plan_file_keeps_the_serving_runtime(tmp_path) -> None:
    plan = plan_fit(_request(runtime="sglang")).plan
    assert plan is not None
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    loaded = load_plan(path)
    assert loaded == plan
    assert loaded.setup.runtime == "sglang" and loaded.workload.runtime == "sglang"  # type: ignore[union-attr]
    # files written before the serving engine was planned have no serve.runtime: vLLM's
    old = tmp_path / "old.yaml"
    text = plan_yaml(plan)
    assert text.count("  runtime: sglang\n") == 1
    old.write_text(text.replace("  runtime: sglang\n", ""), encoding="utf-8")
    before = load_plan(old)
    assert before.setup.runtime == "vllm" and before.workload.runtime == "vllm"  # type: ignore[union-attr]


def test_fit_o_writes_the_runtime(tmp_path) -> None:
    path = tmp_path / "plan.yaml"
    result = run_cli(*FIT, "--engine", "lmdeploy", "-o", str(path))
    assert result.exit_code == 0, result.output
    loaded = load_plan(path)
    assert loaded.engine == "lmdeploy" and loaded.setup.runtime == "lmdeploy"  # type: ignore[union-attr]


REFUSED = [
    (("--runtime", "tgi"), ["--runtime", "'tgi'", "lmdeploy, sglang, vllm"]),
    (("--engine", "vllm", "--runtime", "sglang"), ["--engine vllm", "--runtime sglang", "drop --runtime"]),
    (("--engine", "builtin", "--runtime", "vllm"), ["--engine builtin", "--runtime vllm"]),
]


@pytest.mark.parametrize(("args", "fragments"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_fit_refuses_a_runtime_the_serving_engine_does_not_run(args: tuple[str, ...], fragments: list[str]) -> None:  # fmt: skip
    assert_refused(run_cli(*FIT, *args), *fragments)


def test_size_refuses_an_unknown_serving_runtime() -> None:
    assert_refused(run_cli(*SIZE, "--runtime", "tgi"), "'tgi'", "lmdeploy, sglang, vllm")


def test_the_planner_refuses_an_unknown_runtime_naming_the_valid_ones() -> None:
    with pytest.raises(
        SwiftplanError, match=r"serving runtime 'tgi'; valid values are: vllm, sglang, lmdeploy"
    ):
        ServeWorkload(runtime="tgi")  # type: ignore[arg-type]
    with pytest.raises(SwiftplanError, match=r"serving runtime 'tgi'; valid values are: vllm, sglang"):
        ServeLoad(concurrency=8, runtime="tgi")  # type: ignore[arg-type]
    with pytest.raises(SwiftplanError, match=r"Unknown serve runtime 'tgi'; valid runtimes are: lmdeploy"):
        plan_fit(_request(runtime="tgi"))


def test_the_dashboards_serving_job_passes_the_runtime() -> None:
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.tui.job import parse_job
    from swiftplan.tui.search import fit_request, prepare

    job = parse_job({"model": M, "task": "serve", "runtime": "sglang", "concurrency": "8"})
    assert fit_request(job, host_ram_bytes=2**36).runtime == "sglang"
    problem = prepare(job, parse_cluster("h100-sxm"), host_ram_bytes=2**36)
    assert problem.engine.name == "sglang" and problem.workload.runtime == "sglang"  # type: ignore[union-attr]
    default = parse_job({"model": M, "task": "serve"})  # the form's training runtime: the default engine
    assert fit_request(default, host_ram_bytes=2**36).runtime is None
    with pytest.raises(
        SwiftplanError, match="Runtime for serving must be one of vllm, lmdeploy, sglang.*'tgi'"
    ):
        parse_job({"model": M, "task": "serve", "runtime": "tgi"})
