"""DoRA (planner/dora.py, dora_moments.py) against a fake-tensor trace of peft 0.21.2's own DoRA layers on two blocks of
Llama-3.1-8B (TRL's fused LM head so the loss is small, SGD so no optimizer state): without checkpointing the peak to
within 0.05 %, at the moment a DoRA Linear rebuilds its adapted weight (identity, LoRA weight, base-weight copy, norm)
or combines it; with checkpointing the recompute moment is an upper bound within 2 %."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from swiftplan.planner.dora import dora_forward_bytes, dora_linears, dora_saved_bytes
from swiftplan.planner.dora_moments import DORA_FORWARD
from swiftplan.planner.model_catalog import catalog_spec, spec_from_hf_config
from swiftplan.planner.runtime import apply_defaults, get_runtime, train_knobs
from swiftplan.planner.setup import LoraSetup, TrainSetup
from swiftplan.planner.train_memory import train_memory

LLAMA = "meta-llama/Llama-3.1-8B"
EXACT = {
    # no dropout: the base output and lora_B's output kept per Linear; down_proj's 14,336² identity sets the peak
    "fp32 adapters": dict(adapter="fp32", dropout=0.0, seq=1024),
    # dropout: DoRA multiplies the dropped input by an fp32 copy of the base weight, which it keeps (not in block 0)
    "fp32 adapters, dropout": dict(adapter="fp32", dropout=0.05, seq=1024),
    # adapters in the model dtype: no input cast, no weight copy
    "bf16 adapters, dropout": dict(adapter="model", dropout=0.1, seq=2048),
    # long sequences: the combination's three T × out products outweigh the norm; up_proj's moment bounds gate_proj's
    "fp32 adapters, dropout, 8k tokens": dict(adapter="fp32", dropout=0.1, seq=4096),
    # QDoRA: DoRA dequantizes the 4-bit weight (bitsandbytes' own dequantize_4bit) before casting it
    "nf4": dict(quant="nf4", adapter="fp32", dropout=0.0, seq=1024),
    "nf4, dropout": dict(quant="nf4", adapter="fp32", dropout=0.05, seq=2048),
    "nf4, TRL's bf16 adapters": dict(quant="nf4", adapter="kbit-bf16", dropout=0.0, seq=1024),
    "int8": dict(quant="int8", adapter="fp32", dropout=0.0, seq=1024),
}
CHECKPOINTED = {
    "fp32 adapters": dict(adapter="fp32", dropout=0.0, seq=1024),
    "fp32 adapters, dropout, 8k tokens": dict(adapter="fp32", dropout=0.05, seq=4096),
    "nf4, dropout": dict(quant="nf4", adapter="fp32", dropout=0.05, seq=2048),
    "nf4, TRL's bf16 adapters, dropout": dict(quant="nf4", adapter="kbit-bf16", dropout=0.1, seq=1024),
}


def _setup(
    *, adapter: str, dropout: float, seq: int, quant: str = "none", ckpt: bool = False, dora: bool = True
) -> TrainSetup:
    profile = get_runtime("hf", "train")
    knobs = replace(train_knobs(profile, apply_defaults(profile, {})[0]), adapter_dtype=adapter)  # type: ignore[arg-type]
    method = "qlora" if quant == "nf4" else "lora"
    lora = LoraSetup(rank=16, dropout=dropout, targets=("all-linear",), dora=dora)
    return TrainSetup(runtime=knobs, method=method, quant=quant, lora=lora, micro_batch=2, seq_len=seq,  # type: ignore[arg-type]
                      grad_ckpt=ckpt, optimizer="sgd")  # fmt: skip


def _two_blocks():  # type: ignore[no-untyped-def]
    config = dict(catalog_spec(LLAMA).hf_config) | {"num_hidden_layers": 2}
    return spec_from_hf_config(config, name=LLAMA)


def _peak(setup: TrainSetup):  # type: ignore[no-untyped-def]
    from swiftplan.executors.verify import verify_training

    comparison = verify_training(_two_blocks(), setup)
    return comparison, next(row for row in comparison.rows if row.name == "peak_allocated")


@pytest.mark.parametrize("case", list(EXACT))
def test_without_checkpointing_the_dora_forward_peak_matches_the_trace(case: str) -> None:
    pytest.importorskip("peft")
    comparison, peak = _peak(_setup(**EXACT[case]))  # type: ignore[arg-type]
    assert peak.estimate == pytest.approx(peak.traced, rel=5e-4)
    assert comparison.estimate_phase == DORA_FORWARD


@pytest.mark.parametrize("case", list(CHECKPOINTED))
def test_with_checkpointing_the_recompute_bounds_the_trace_within_two_percent(case: str) -> None:
    pytest.importorskip("peft")
    comparison, peak = _peak(_setup(**CHECKPOINTED[case], ckpt=True))  # type: ignore[arg-type]
    assert -0.005 <= peak.estimate / peak.traced - 1 <= 0.02
    assert comparison.estimate_phase == "recomputation in backward"


def test_dora_keeps_two_outputs_per_wrapped_linear_and_more_with_dropout() -> None:
    spec, tokens = catalog_spec(LLAMA), 2048
    plain = _setup(adapter="fp32", dropout=0.0, seq=1024)
    wrapped = dora_linears(spec, plain, 0)
    assert {lin.name for lin in wrapped} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    outputs = sum(lin.out_features for lin in wrapped)
    # bf16 base output + fp32 lora_B output
    assert dora_saved_bytes(spec, plain, 0, tokens) == tokens * outputs * (2 + 4)
    # dropout: both outputs fp32, and an fp32 copy of every wrapped weight
    dropped = _setup(adapter="fp32", dropout=0.05, seq=1024)
    weights = sum(lin.in_features * lin.out_features for lin in wrapped)
    assert dora_saved_bytes(spec, dropped, 0, tokens) == tokens * outputs * 8 + weights * 4
    assert dora_saved_bytes(spec, _setup(adapter="fp32", dropout=0.0, seq=1024, dora=False), 0, tokens) == 0


def test_down_proj_rebuilds_a_full_identity_whatever_the_tokens() -> None:
    spec = catalog_spec(LLAMA)
    setup = _setup(adapter="fp32", dropout=0.0, seq=1024)
    down = next(lin for lin in dora_linears(spec, setup, 0) if lin.name == "down_proj")
    few = dora_forward_bytes(down, setup, 16)
    identity = 14336 * 14336 * 4
    assert few > identity  # 784 MiB for one Linear's eye(14336) in fp32, before any token
    # the identity, lora_A's output, then four weight-sized fp32 matrices (the LoRA weight, the base weight's copy,
    # the scaled LoRA weight and the sum), less lora_B's output, which does not exist yet
    assert few == identity + 14336 * 16 * 4 + 4 * 4096 * 14336 * 4 - 16 * 4096 * 4


def test_dora_raises_the_planned_peak_and_the_breakdown_says_where() -> None:
    spec = catalog_spec(LLAMA)
    lora = train_memory(spec, _setup(adapter="fp32", dropout=0.05, seq=2048, dora=False))
    dora = train_memory(spec, _setup(adapter="fp32", dropout=0.05, seq=2048))
    assert dora.device.peak_allocated > 1.5 * lora.device.peak_allocated
    assert dora.device.peak_phase == DORA_FORWARD


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from swiftplan.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=60, env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"})  # fmt: skip


def test_estimate_takes_dora_and_refuses_it_without_adapters() -> None:
    args = ("estimate", LLAMA, "--method", "lora", "--targets", "all-linear", "--no-grad-ckpt", "--batch", "2",
            "--seq", "2048", "--gpus", "h100", "--json")  # fmt: skip
    plain, dora = _cli(*args), _cli(*args, "--dora")
    assert plain.returncode == 0 and dora.returncode == 0, dora.stderr
    lora_peak = json.loads(plain.stdout)["per_device"]["peak_allocated"]
    assert json.loads(dora.stdout)["per_device"]["peak_allocated"] > 1.5 * lora_peak
    refused = _cli("estimate", LLAMA, "--method", "full", "--dora")
    assert refused.returncode != 0
    assert "--dora decomposes LoRA adapters" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


def test_fit_plans_dora_and_the_plan_file_carries_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = tmp_path / "plan.yaml"
    fit = _cli("fit", LLAMA, "--gpus", "rtx4090", "--dora", "-o", str(plan))
    assert fit.returncode == 0, fit.stderr
    assert "DoRA r16" in fit.stdout
    text = plan.read_text()
    assert "dora: true" in text  # the set-up's adapters and the workload
    check = _cli("estimate", str(plan))
    assert check.returncode == 0, check.stderr
    assert "matches the plan file's prediction" in check.stdout
    without = _cli("fit", LLAMA, "--gpus", "rtx4090", "--json")
    with_dora = _cli("fit", LLAMA, "--gpus", "rtx4090", "--dora", "--json")
    assert (
        json.loads(with_dora.stdout)["best"]["tokens_per_s"]
        < json.loads(without.stdout)["best"]["tokens_per_s"]
    )


def test_a_plan_file_whose_workload_and_adapters_disagree_on_dora_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = tmp_path / "plan.yaml"
    assert _cli("fit", LLAMA, "--gpus", "rtx4090", "--dora", "-o", str(plan)).returncode == 0
    edited = tmp_path / "edited.yaml"
    edited.write_text(plan.read_text().replace("  dora: true\n", "  dora: false\n", 1))
    result = _cli("estimate", str(edited))
    assert result.returncode != 0
    assert "dora" in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--method", "full"), "--dora decomposes LoRA adapters"),
        (("--method", "full,lora"), "includes full fine-tuning"),
    ],
)
def test_fit_refuses_dora_beside_full_fine_tuning(args: tuple[str, ...], says: str) -> None:
    result = _cli("fit", LLAMA, "--gpus", "rtx4090", "--dora", *args)
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_dora_on_fused_moe_experts_is_refused_and_attention_targets_are_not() -> None:
    refused = _cli("estimate", "Qwen/Qwen3-30B-A3B", "--method", "lora", "--targets", "all-linear", "--dora",
                   "--gpus", "8xh100")  # fmt: skip
    assert refused.returncode != 0
    assert "fused MoE parameters" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    allowed = _cli("estimate", "Qwen/Qwen3-30B-A3B", "--method", "lora", "--targets", "q_proj,v_proj", "--dora",
                   "--gpus", "8xh100")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_dora_costs_time_its_weight_rebuild_and_with_dropout_a_second_base_matmul() -> None:
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.speed import train_flops_per_token, train_speed

    spec = catalog_spec(LLAMA)
    cluster = parse_cluster("h100")
    lora, dora = (
        _setup(adapter="fp32", dropout=0.0, seq=2048, dora=False),
        _setup(adapter="fp32", dropout=0.0, seq=2048),
    )
    dropped = _setup(adapter="fp32", dropout=0.05, seq=2048)
    # no matmul of its own per token without dropout (the magnitudes, counted with the adapters, add 0.03 %)
    assert train_flops_per_token(spec, dora) == pytest.approx(train_flops_per_token(spec, lora), rel=1e-3)
    # forward and the frozen input gradient each multiply by every wrapped weight once more
    wrapped = sum(lin.params for i in range(spec.num_layers) for lin in dora_linears(spec, dropped, i))
    assert train_flops_per_token(spec, dropped) == pytest.approx(
        train_flops_per_token(spec, dora) + 2 * 2 * wrapped, rel=1e-6
    )
    plain = train_speed(spec, lora, cluster, trainable_params=1)
    rebuilt = train_speed(spec, dora, cluster, trainable_params=1)
    assert "dora" not in plain.breakdown_s and rebuilt.breakdown_s["dora"] > 0
    assert rebuilt.step_time_s == pytest.approx(plain.step_time_s + rebuilt.breakdown_s["dora"], rel=1e-3)


def test_size_sizes_dora_and_its_next_fit_keeps_it() -> None:
    args = ("size", LLAMA, "--dataset-tokens", "10M", "--accelerators", "rtx4090,h100-sxm", "--json")
    plain, dora = _cli(*args), _cli(*args, "--dora")
    assert plain.returncode == 0 and dora.returncode == 0, dora.stderr
    sized = json.loads(dora.stdout)
    assert sized["workload"]["dora"] is True and "--dora" in sized["next"]
    refused = _cli("size", LLAMA, "--dora", "--method", "full")
    assert refused.returncode != 0 and "includes full fine-tuning" in refused.stdout + refused.stderr
    moe = _cli("size", "Qwen/Qwen3-30B-A3B", "--dora")
    assert moe.returncode != 0 and "fused MoE parameters" in moe.stdout + moe.stderr


def test_a_dora_plan_trains_on_cpu_with_peft_dora_layers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """swiftplan's own loop runs a DoRA plan as planned: peft's DoRA magnitudes are in the saved adapter, and the
    loss falls (a tiny Llama from its config, random init, the shipped chat data)."""
    pytest.importorskip("peft")
    from safetensors import safe_open
    from train_support import FIXTURES, cli, train_args, write_plan

    plan = write_plan(
        tmp_path / "plan.yaml", lora=LoraSetup(rank=8, targets=("all-linear",), dropout=0.0, dora=True)
    )
    assert "dora: true" in plan.read_text()
    result = cli(*train_args(plan, FIXTURES / "chat.jsonl", tmp_path / "run"), "--max-steps", "8", "--lr", "5e-3",
                 "--lr-scheduler", "constant", "--seed", "7", "--json")  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.output[result.output.index("{") :])
    losses = report["loss"]["by_step"]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    with safe_open(str(tmp_path / "run" / "final" / "adapter_model.safetensors"), "pt") as saved:
        magnitudes = [key for key in saved.keys() if "lora_magnitude_vector" in key]  # noqa: SIM118
    assert magnitudes  # peft's DoRA layers, not plain LoRA
    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert config["use_dora"] is True


# What each engine's own configuration calls DoRA (the engines' argument names: ms-swift --use_dora, LLaMA-Factory
# use_dora, TRL's ModelConfig use_dora, axolotl peft_use_dora).
DORA_SPELLING = {
    "ms-swift": "--use_dora true",
    "llamafactory": "use_dora: true",
    "trl": "use_dora: true",
    "axolotl": "peft_use_dora: true",
}


@pytest.mark.parametrize("engine", list(DORA_SPELLING))
def test_each_engine_renders_the_plans_dora(engine: str) -> None:
    from swiftplan.executors.engines import engine_for
    from swiftplan.usecases.fit import FitRequest, plan_fit

    plan = plan_fit(
        FitRequest(model="Qwen/Qwen2.5-7B", gpus="h100", engine=engine, dora=True, compare_engines=False)
    ).plan
    assert plan is not None and plan.setup.lora is not None and plan.setup.lora.dora  # type: ignore[union-attr]
    rendered = engine_for(plan).render(plan)
    text = " ".join(" ".join(c) for c in rendered.commands) + "\n".join(rendered.files.values())
    assert DORA_SPELLING[engine] in text


def test_fit_refuses_the_training_switches_for_serving() -> None:
    for switch in ("--dora", "--packing"):
        result = _cli("fit", LLAMA, "--gpus", "h100", "--task", "serve", switch)
        assert (
            result.returncode == 2 and f"{switch} only applies to training" in result.stdout + result.stderr
        )


def test_the_rebuild_traffic_counts_each_wrapped_linear_once_per_pass() -> None:
    """Per DoRA Linear: the identity written and read (2 in² fp32), eight fp32 passes over out × in and one read of
    the bf16 stored weight; nothing without DoRA."""
    from swiftplan.planner.dora import dora_rebuild_traffic_bytes

    spec = catalog_spec(LLAMA)
    dora = _setup(adapter="fp32", dropout=0.0, seq=1024)
    per_block = sum(2 * lin.in_features**2 * 4 + lin.out_features * lin.in_features * (8 * 4 + 2)
                    for lin in dora_linears(spec, dora, 0))  # fmt: skip
    assert dora_rebuild_traffic_bytes(spec, dora) == spec.num_layers * per_block
    assert dora_rebuild_traffic_bytes(spec, _setup(adapter="fp32", dropout=0.0, seq=1024, dora=False)) == 0
