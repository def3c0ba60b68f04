"""--runtime on size, verify and the dashboard: every cluster sized under the runtime's knobs, the trace
running the runtime's loss and AdamW implementation (and refusing what it cannot run), the job form's
runtime reaching the fit use case, and fit's next command naming the plan's engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import RuntimeKnobs, TrainSetup
from swiftplan.usecases.describe import fit_command_line, next_command
from swiftplan.usecases.estimate import plan_for_setup
from swiftplan.usecases.fit import FitRequest
from tests.bad_input_support import assert_refused, run_cli

M = "Qwen/Qwen2.5-7B"
SIZE = ("size", M, "--method", "full", "--accelerators", "h100-sxm", "--json")


def _size(*args: str) -> dict:
    result = run_cli(*SIZE, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _headroom_by_plan(payload: dict) -> dict[tuple[int, str], int]:
    """Headroom per (GPUs, every plan field): the label leaves out the optimizer, which a runtime can change."""
    return {
        (o["gpus"], json.dumps(o["plan_fields"], sort_keys=True)): o["headroom_bytes"]
        for o in payload["options"]
    }


# --- size ------------------------------------------------------------------------------------------


def test_size_plans_every_cluster_under_the_runtime_and_its_json_names_the_profile() -> None:
    ours, torch_loop = _size(), _size("--runtime", "torch")
    assert ours["runtime"]["name"] == "swiftplan" and torch_loop["runtime"]["name"] == "torch"
    applied = {d["option"]: d for d in torch_loop["runtime"]["applied"]}
    assert (
        applied["optimizer_impl"]["value"] == "foreach"
        and "torch/optim" in applied["optimizer_impl"]["source"]
    )
    assert torch_loop["workload"]["runtime"] == "torch"
    # foreach AdamW holds one trainable-sized temporary at the step: never more room on the same plan,
    # strictly less where the step is the peak
    fused, foreach = _headroom_by_plan(ours), _headroom_by_plan(torch_loop)
    same = fused.keys() & foreach.keys()
    assert same and all(foreach[k] <= fused[k] for k in same)
    # where the step is the peak (full AdamW without sharding), the temporary costs room or AdamW itself
    optimizers = {
        name: {o["gpus"]: o["plan_fields"]["optimizer"] for o in payload["options"]}
        for name, payload in (("fused", ours), ("foreach", torch_loop))
    }
    swapped = {g for g, opt in optimizers["fused"].items() if opt == "adamw" != optimizers["foreach"].get(g)}
    assert any(foreach[k] < fused[k] for k in same) or swapped
    # the knob flag wins over the profile: torch with the fused kernel sizes as swiftplan's loop does
    assert _headroom_by_plan(_size("--runtime", "torch", "--optimizer-impl", "fused")) == fused


def test_size_under_hf_uses_its_loss_and_plans_for_its_engine() -> None:
    ours, hf = _size(), _size("--runtime", "hf")
    assert hf["runtime"]["name"] == "hf"
    assert {d["option"]: d["value"] for d in hf["runtime"]["applied"]}["loss"] == "fused_head"
    assert _headroom_by_plan(hf) != _headroom_by_plan(ours)  # no full fp32 logits under TRL's fused LM head
    assert "--runtime hf" in hf["next"]  # fit plans the recommended option under the same runtime
    assert any("TRL" in n or "trl" in n for n in hf["notes"])


def test_size_next_command_carries_the_knob_flags_and_leaves_out_a_runtime_no_engine_runs() -> None:
    request = FitRequest(model=M, gpus="h100-sxm", runtime="hf",
                         runtime_options={"loss": "full", "modules_to_save": ("lm_head",), "ds_buckets": False})  # fmt: skip
    line = fit_command_line(request)
    assert "--runtime hf" in line and "--loss full" in line
    assert "--modules-to-save lm_head" in line and "--no-ds-buckets" in line
    torch_loop = _size("--runtime", "torch")
    assert "--runtime" not in torch_loop["next"]
    assert any("no engine in swiftplan's table" in n for n in torch_loop["notes"])


SIZE_BAD = [
    (("--loss", "magic"), ["--loss", "'magic'", "full, chunked, fused_linear"]),
    (("--runtime", "vllm"), ["--runtime vllm is a serving runtime", "training runtimes"]),
    (("--optimizer-impl", "turbo"), ["--optimizer-impl", "'turbo'"]),
    (("--loss-chunks", "0"), ["--loss-chunks must be at least 1"]),
    (
        ("--task", "serve", "--concurrency", "8", "--loss", "chunked"),
        ["--loss", "does not apply to --task serve"],
    ),
    (
        ("--task", "serve", "--concurrency", "8", "--runtime", "hf"),
        ["--runtime hf is a training runtime", "serving"],
    ),
]


@pytest.mark.parametrize(("args", "fragments"), SIZE_BAD, ids=[" ".join(a) for a, _ in SIZE_BAD])
def test_size_refuses_bad_runtime_flags_naming_the_flag(args: tuple[str, ...], fragments: list[str]) -> None:
    assert_refused(run_cli("size", M, *args), *fragments)


def test_size_serving_runtime_applies_its_memory_fraction_unless_typed() -> None:
    base = ("size", M, "--task", "serve", "--concurrency", "8", "--accelerators", "h100-sxm", "--json")
    vllm = json.loads(run_cli(*base, "--runtime", "vllm").output)
    typed = json.loads(run_cli(*base, "--runtime", "vllm", "--gpu-memory-utilization", "0.8").output)
    assert vllm["workload"]["gpu_memory_utilization"] == 0.92  # vLLM's own default
    assert typed["workload"]["gpu_memory_utilization"] == 0.8
    assert "gpu_memory_utilization" in typed["runtime"]["overridden"]


# --- verify ----------------------------------------------------------------------------------------

VERIFY = ("verify", "Qwen/Qwen2.5-0.5B", "--method", "full", "--seq", "512", "--json")
MAX_ABS_ERROR = 0.02  # as tests/test_accuracy_quick.py: the estimate within 2 % of the trace


def _verify(*args: str) -> dict:
    pytest.importorskip("transformers")
    result = run_cli(*VERIFY, *args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    return payload | {"by_term": {t["name"]: t for t in payload["terms"]}}


def test_verify_under_torch_shows_the_foreach_temporary_in_the_estimate_and_the_trace() -> None:
    from swiftplan.planner.model_catalog import catalog_spec
    from swiftplan.planner.train_memory import train_memory

    fused, foreach = _verify(), _verify("--runtime", "torch")
    assert foreach["runtime"]["name"] == "torch"
    for payload in (fused, foreach):
        peak = payload["by_term"]["peak_allocated"]
        assert abs(peak["error"]) <= MAX_ABS_ERROR, payload["terms"]
    # foreach moves the peak to the step, where one bf16 temporary the size of every trainable parameter
    # is alive (the trace counts it as activations), on both sides
    assert foreach["estimate_peak_phase"] == "optimizer step"
    trainable = train_memory(catalog_spec("Qwen/Qwen2.5-0.5B"), TrainSetup(method="full")).trainable_params
    for side in ("estimate", "traced"):
        assert foreach["by_term"]["activations"][side] == pytest.approx(trainable * 2, rel=MAX_ABS_ERROR), (
            side
        )
        assert foreach["by_term"]["peak_allocated"][side] > fused["by_term"]["peak_allocated"][side], side
    assert any("AdamW foreach" in n for n in foreach["notes"])


def test_verify_runs_torchtunes_chunked_loss() -> None:
    full, chunked = (
        _verify("--method", "lora"),
        _verify("--method", "lora", "--runtime", "torchtune", "--no-grad-ckpt"),
    )
    logits = chunked["by_term"]["logits"]
    assert abs(logits["error"]) <= MAX_ABS_ERROR, chunked["terms"]
    assert logits["traced"] < full["by_term"]["logits"]["traced"]
    assert abs(chunked["by_term"]["peak_allocated"]["error"]) <= MAX_ABS_ERROR
    assert any("chunked cross-entropy over 8 pieces" in n for n in chunked["notes"])


VERIFY_BAD = [
    (("--runtime", "hf", "--loss", "fused_linear"), ["--loss fused_linear", "runtime hf"]),
    (("--runtime", "hf", "--fsdp", "fsdp2", "--gpus", "2xH100"), ["--loss fused_head with --fsdp fsdp2"]),
    (("--fsdp", "fsdp2"), ["--fsdp fsdp2"]),
    (
        ("--task", "dpo", "--method", "lora", "--modules-to-save", "lm_head"),
        ["--modules-to-save lm_head with --task dpo"],
    ),
    (
        ("--optimizer-in-backward", "--fsdp", "fsdp2", "--gpus", "2xH100"),
        ["--optimizer-in-backward with --fsdp fsdp2"],
    ),
    (("--loss", "magic"), ["--loss", "'magic'"]),
    (("--runtime", "nemo"), ["--runtime", "'nemo'"]),
    (("--task", "serve", "--runtime", "vllm"), ["--runtime does not apply"]),
]


@pytest.mark.parametrize(("args", "fragments"), VERIFY_BAD, ids=[" ".join(a) for a, _ in VERIFY_BAD])
def test_verify_refuses_what_the_tracer_cannot_run_naming_the_setting(args: tuple[str, ...], fragments: list[str]) -> None:  # fmt: skip
    assert_refused(run_cli("verify", "Qwen/Qwen2.5-0.5B", *args), *fragments)


# --- fit's next command ----------------------------------------------------------------------------


def test_next_command_runs_the_plan_on_its_engine() -> None:
    cluster = parse_cluster("rtx4090")
    trl = plan_for_setup(M, cluster, TrainSetup(method="qlora", runtime=RuntimeKnobs(name="hf", loss="fused_linear")),
                         engine="trl")  # fmt: skip
    assert next_command(trl, "plan.yaml") == "swiftplan train plan.yaml --engine trl --data train.jsonl"
    ours = plan_for_setup(M, cluster, TrainSetup(method="qlora"))
    assert next_command(ours, "my plan.yaml") == "swiftplan train 'my plan.yaml' --data train.jsonl"


# --- dashboard -------------------------------------------------------------------------------------


def test_job_form_runtime_reaches_the_fit_request() -> None:
    from swiftplan.errors import SwiftplanError
    from swiftplan.tui.job import parse_job, runtime_choices
    from swiftplan.tui.search import fit_request

    assert runtime_choices()[0] == "swiftplan" and "hf" in runtime_choices()
    assert "torch" not in runtime_choices()  # fit cannot plan for a runtime no engine runs
    job = parse_job({"model": M, "runtime": "hf"})
    assert fit_request(job, host_ram_bytes=2**36).runtime == "hf"
    assert (
        fit_request(parse_job({"model": M, "task": "serve", "runtime": "hf"}), host_ram_bytes=2**36).runtime
        is None
    )
    with pytest.raises(SwiftplanError, match="Runtime must be one of"):
        parse_job({"model": M, "runtime": "torch"})


def test_picking_hf_in_the_job_form_plans_under_hf() -> None:
    pytest.importorskip("textual")
    from dash_support import search, settle

    from swiftplan.tui.app import make_app
    from swiftplan.tui.panes.job import JobPane

    async def flow() -> None:
        app = make_app(gpus="rtx4090", cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("2")
            form = app.query_one(JobPane)
            assert form.values()["runtime"] == "swiftplan"
            await search(pilot, model="Qwen/Qwen2.5-0.5B", runtime="hf", trials="8")
            outcome = app.outcome
            assert outcome is not None and outcome.choices
            plan = outcome.choices[0].plan
            assert plan.engine == "trl"
            assert plan.setup.runtime.name == "hf" and plan.setup.runtime.loss == "fused_head"  # type: ignore[union-attr]

    asyncio.run(flow())


def test_deepspeed_bucket_flags_override_the_profile() -> None:
    """LLaMA-Factory's ZeRO-3 configs say "auto" for the reduce bucket, which the transformers Trainer fills with
    hidden_size² (4096² for Llama-3-8B); --no-ds-auto-buckets plans DeepSpeed's 5e8 instead, and
    --reduce-bucket-elements sets that size."""
    base = ("estimate", "meta-llama/Meta-Llama-3-8B", "--method", "full", "--gpus", "8xrtx3090", "--zero", "3",
            "--seq", "1024", "--runtime", "llamafactory", "--json")  # fmt: skip
    runs = {
        "auto": json.loads(run_cli(*base).output),
        "deepspeed": json.loads(run_cli(*base, "--no-ds-auto-buckets").output),
        "set": json.loads(
            run_cli(*base, "--no-ds-auto-buckets", "--reduce-bucket-elements", "1000000").output
        ),
    }
    grads = {name: next(t for t in p["terms"] if t["name"] == "gradients") for name, p in runs.items()}
    assert grads["deepspeed"]["bytes"] - grads["auto"]["bytes"] == (500_000_000 - 4096 * 4096) * 2
    assert grads["deepspeed"]["bytes"] - grads["set"]["bytes"] == (500_000_000 - 1_000_000) * 2
    assert "16,777,216 elements (auto: hidden²)" in grads["auto"]["formula"]
    assert "1 × 1,000,000 elements" in grads["set"]["formula"]
    applied = {d["option"] for d in runs["auto"]["runtime"]["applied"]}
    assert {"ds_auto_buckets", "ds_overlap_comm"} <= applied
    assert "ds_auto_buckets" in runs["deepspeed"]["runtime"]["overridden"]
