"""--runtime and the knob flags on estimate/fit: profiles applied with their sources, bad values refused
naming the flag, knobs carried through the search and plan files, and engines that do not run a
runtime's settings refusing the plan."""

from __future__ import annotations

import json

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.plan_file import load_plan, plan_yaml, save_plan
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.usecases.estimate import estimate_plan_file, plan_for_setup
from tests.bad_input_support import assert_refused, run_cli

M = "Qwen/Qwen2.5-7B"


def _estimate_json(*args: str) -> dict:
    result = run_cli("estimate", M, "--gpus", "rtx4090", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_default_runtime_is_swiftplan_and_changes_no_number() -> None:
    default = _estimate_json()
    named = _estimate_json("--runtime", "swiftplan")
    assert default["runtime"]["name"] == "swiftplan"
    assert default["per_device"] == named["per_device"]
    assert default["engine"]["name"] == "swiftplan" and default["engine"]["runs"]


def test_runtime_json_names_each_default_applied_and_its_source() -> None:
    hf = _estimate_json("--runtime", "hf")
    applied = {d["option"]: d for d in hf["runtime"]["applied"]}
    assert applied["loss"]["value"] == "fused_head"
    assert "trl" in applied["loss"]["source"] and "add_fused_lm_head" in applied["loss"]["source"]
    assert hf["engine"]["name"] == "trl"  # planning for HF means checking against TRL's engine
    # a flag wins over the profile and is listed as overridden
    full = _estimate_json("--runtime", "hf", "--loss", "full")
    assert "loss" in full["runtime"]["overridden"]
    assert "loss" not in {d["option"] for d in full["runtime"]["applied"]}
    # TRL's fused head holds no full logits: less memory than the same run with the full loss
    assert hf["per_device"]["logits"] < full["per_device"]["logits"]


def test_knob_flags_change_the_terms_they_name() -> None:
    base = _estimate_json("--method", "full", "--gpus", "H100")
    foreach = _estimate_json("--method", "full", "--gpus", "H100", "--optimizer-impl", "foreach")
    assert foreach["per_device"]["peak_allocated"] > base["per_device"]["peak_allocated"]
    assert not foreach["engine"]["runs"]  # our loop runs fused AdamW only
    assert "optimizer implementation 'foreach'" in foreach["engine"]["reasons"][0]


def test_text_output_names_the_runtime() -> None:
    result = run_cli("estimate", M, "--gpus", "rtx4090", "--runtime", "torchtune")
    assert result.exit_code == 0, result.output
    assert "runtime torchtune (its defaults: loss chunked" in " ".join(result.output.split())
    assert "no engine in swiftplan's table" in " ".join(result.output.split())


BAD = [
    (("--loss", "magic"), ["--loss", "'magic'", "full, chunked, fused_linear"]),
    (("--optimizer-impl", "turbo"), ["--optimizer-impl", "'turbo'", "fused, foreach, for_loop"]),
    (("--modules-to-save", "lm_head,wte"), ["--modules-to-save", "'wte'", "embed_tokens, lm_head"]),
    (("--fsdp", "fsdp3"), ["--fsdp", "'fsdp3'", "fsdp1, fsdp2"]),
    (("--fsdp-sharding", "all"), ["--fsdp-sharding", "'all'", "hybrid_shard"]),
    (("--loss-chunks", "0"), ["--loss-chunks must be at least 1"]),
    (("--fsdp-shard-group", "-1"), ["--fsdp-shard-group must be at least 0"]),
    (("--runtime", "vllm"), ["--runtime vllm is a serving runtime", "training runtimes", "torchtune"]),
    (("--runtime", "nemo"), ["--runtime", "'nemo'", "hf"]),
    (
        ("--task", "serve", "--runtime", "hf"),
        ["--runtime hf is a training runtime", "serving", "sglang, vllm"],
    ),
    (("--task", "serve", "--loss", "chunked"), ["--loss", "does not apply to --task serve"]),
    (("--fsdp", "fsdp2", "--zero", "2"), ["FSDP", "--zero 2"]),
    (("--optimizer-in-backward", "--grad-accum", "4"), ["--grad-accum 1 with --optimizer-in-backward"]),
    (("--method", "full", "--modules-to-save", "lm_head"), ["--modules-to-save", "full fine-tuning"]),
]


@pytest.mark.parametrize(("args", "fragments"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_runtime_flags_are_refused_naming_the_flag(args: tuple[str, ...], fragments: list[str]) -> None:
    assert_refused(run_cli("estimate", M, "--gpus", "rtx4090", *args), *fragments)


def test_serving_runtime_applies_its_memory_fraction_only_when_named() -> None:
    default = _estimate_json("--task", "serve")
    vllm = _estimate_json("--task", "serve", "--runtime", "vllm")
    typed = _estimate_json("--task", "serve", "--runtime", "vllm", "--gpu-memory-utilization", "0.8")
    assert "runtime" not in default  # serving without --runtime stays as it was
    assert vllm["max_concurrency"] > default["max_concurrency"]  # vLLM's 0.92 over the 0.9 default
    assert typed["max_concurrency"] < default["max_concurrency"]
    assert "gpu_memory_utilization" in typed["runtime"]["overridden"]


KNOBS = RuntimeKnobs(name="axolotl", loss="fused_linear", optimizer_impl="foreach",
                     modules_to_save=("embed_tokens", "lm_head"), fsdp="fsdp2", fsdp_cpu_offload=True,
                     ds_buckets=True, reduce_bucket_elements=1000)  # fmt: skip
"""Non-default knobs axolotl runs (Liger, adamw_torch, modules_to_save, FSDP2 with CPU offload)."""


def test_plan_files_keep_the_runtime_and_non_default_knobs(tmp_path) -> None:
    setup = TrainSetup(method="qlora", lora=LoraSetup(rank=8), runtime=KNOBS)
    plan = plan_for_setup(M, parse_cluster("2xrtx4090"), setup, engine="axolotl")
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    loaded = load_plan(path)
    assert loaded == plan and loaded.setup.runtime == KNOBS  # type: ignore[union-attr]
    assert plan_yaml(loaded) == path.read_text()
    check = estimate_plan_file(path)
    assert check.changed == () and check.runtime is not None and check.runtime.profile.name == "axolotl"


def test_plan_files_without_a_runtime_load_with_swiftplans_defaults(tmp_path) -> None:
    plan = plan_for_setup(M, parse_cluster("rtx4090"), TrainSetup(method="qlora"))
    path = tmp_path / "plan.yaml"
    text = plan_yaml(plan)
    start = text.index("  runtime:\n")
    end = text.index("serve: null")
    path.write_text(text[:start] + text[end:])  # a file written before runtimes
    loaded = load_plan(path)
    assert loaded.setup.runtime == RuntimeKnobs()  # type: ignore[union-attr]
    assert estimate_plan_file(path).changed == ()
    path.write_text(text.replace("    name: swiftplan\n", "    name: nemo\n"))
    with pytest.raises(SwiftplanError, match="train.runtime.name.*'nemo'"):
        load_plan(path)


def test_swiftplans_loop_refuses_a_plan_whose_runtime_settings_it_does_not_run() -> None:
    from swiftplan.executors.engines import require_runnable

    setup = TrainSetup(method="lora", runtime=RuntimeKnobs(name="axolotl", loss="fused_linear"),
                       parallel=Parallelism())  # fmt: skip
    plan = plan_for_setup(M, parse_cluster("rtx4090"), setup, engine="axolotl")  # Liger: axolotl runs it
    with pytest.raises(SwiftplanError) as refused:
        require_runnable("swiftplan", plan)
    message = refused.value.message
    assert "loss implementation 'fused_linear'" in message and "runtime 'axolotl'" in message
    with pytest.raises(SwiftplanError, match="loss implementation 'fused_linear'"):
        plan_for_setup(M, parse_cluster("rtx4090"), setup, engine="swiftplan")


def test_fit_plans_under_the_runtime_and_for_its_engine() -> None:
    from swiftplan.usecases.fit import FitRequest, plan_fit

    request = FitRequest(
        model=M, gpus="rtx4090", runtime="hf", compare_engines=False, trials=8, dataset_tokens=10**6
    )
    outcome = plan_fit(request)
    assert outcome.plan is not None
    assert outcome.plan.engine == "trl"
    assert outcome.plan.setup.runtime.name == "hf"  # type: ignore[union-attr]
    assert outcome.plan.setup.runtime.loss == "fused_head"  # type: ignore[union-attr]
    launchable = outcome.problem.engine.runnable  # else fit says so and names the framework's command
    assert any("cannot launch" in n for n in outcome.problem.notes) is not launchable
    overridden = plan_fit(FitRequest(model=M, gpus="rtx4090", runtime="hf", runtime_options={"loss": "full"},
                                     compare_engines=False, trials=8, dataset_tokens=10**6))  # fmt: skip
    assert overridden.plan is not None and overridden.plan.setup.runtime.loss == "full"  # type: ignore[union-attr]


def test_fit_refuses_an_engine_that_does_not_run_the_runtime_or_a_runtime_without_engine() -> None:
    assert_refused(  # the engine runs its own runtime: the plan would count another framework's terms
        run_cli("fit", M, "--gpus", "rtx4090", "--engine", "swiftplan", "--runtime", "hf"),
        "--engine swiftplan and --runtime hf disagree",
        "drop --engine to plan for trl",
    )
    assert_refused(run_cli("fit", M, "--gpus", "rtx4090", "--runtime", "torchtune"),
                   "No engine", "torchtune", "swiftplan estimate")  # fmt: skip
    assert_refused(run_cli("fit", M, "--gpus", "rtx4090", "--runtime", "torch", "--optimizer-impl", "x"),
                   "--optimizer-impl", "'x'")  # fmt: skip
