"""Bad plans and bad data stop `swiftplan train` before any model is loaded, with one clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_support import FIXTURES, TINY_MODEL, cli, train_args, write_plan

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.device import DeviceInfo, cpu_accelerator, preflight
from swiftplan.planner.setup import Parallelism, TrainSetup

CPU = DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1)


@pytest.mark.parametrize(
    "setup,expected",
    [
        (
            TrainSetup(method="qlora"),
            "quantization 'nf4' is not available on swiftplan with cpu (the loop loads bitsandbytes",
        ),
        (
            TrainSetup(method="lora", quant="int8"),
            "quantization 'int8' is not available on swiftplan with cpu",
        ),
        (TrainSetup(optimizer="adamw-8bit"), "optimizer adamw-8bit is not possible on host CPU"),
        (
            TrainSetup(method="full", parallel=Parallelism(zero=2)),
            "ZeRO runs through DeepSpeed, which the loop drives on CUDA/ROCm/Ascend only",
        ),
        (
            TrainSetup(parallel=Parallelism(tp=2)),
            "tensor parallelism of degree 2 is not available on swiftplan",
        ),
        (TrainSetup(attention="flash"), "attention flash is not possible on host CPU"),
    ],
)
def test_preflight_refuses_what_the_cpu_cannot_run(setup, expected):
    reasons = preflight(setup, CPU, processes_per_node=1, random_init=False)
    assert any(expected in reason for reason in reasons), reasons


def test_preflight_accepts_cpu_lora_and_refuses_quantized_random_init():
    assert (
        preflight(
            TrainSetup(method="lora", precision="amp-bf16"), CPU, processes_per_node=2, random_init=True
        )
        == []
    )
    reasons = preflight(TrainSetup(method="lora", quant="gptq"), CPU, processes_per_node=1, random_init=True)
    assert any("needs a checkpoint already quantized" in r for r in reasons)


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("swiftplan.executors.train.model.load_model", refuse)


def _error(result) -> SwiftplanError:
    assert isinstance(result.exception, SwiftplanError), result.output
    return result.exception


def test_bad_row_stops_before_the_model(tmp_path, no_model_loading):
    plan = write_plan(tmp_path / "plan.yaml")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine"}\n{"text": 5}\n')
    error = _error(cli(*train_args(plan, data, tmp_path / "run")))
    assert error.message == "data.jsonl line 2: 'text' must be a string, got int."
    assert not (tmp_path / "run").exists()


def test_qlora_plan_on_cpu_stops_before_the_data_and_model(tmp_path, no_model_loading):
    plan = write_plan(tmp_path / "plan.yaml", method="qlora", precision="bf16")
    error = _error(cli(*train_args(plan, tmp_path / "missing.jsonl", tmp_path / "run")))
    assert "cannot train on host CPU" in error.message and "on CUDA/ROCm only" in error.message


def test_too_little_data_for_one_step(tmp_path, no_model_loading):
    plan = write_plan(tmp_path / "plan.yaml", micro_batch=8, grad_accum=8)
    error = _error(cli(*train_args(plan, FIXTURES / "text.jsonl", tmp_path / "run")))
    assert "one optimizer step needs 64 (micro-batch 8 × grad-accum 8 × 1 process(es))" in error.message


def test_serving_plan_and_resume_without_checkpoint(tmp_path, no_model_loading):
    from swiftplan.plan_file import save_plan
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.setup import ServeSetup
    from swiftplan.usecases.estimate import plan_for_setup

    plan = write_plan(tmp_path / "plan.yaml")
    save_plan(
        plan_for_setup(str(TINY_MODEL), parse_cluster("rtx4090"), ServeSetup()), tmp_path / "serve.yaml"
    )
    error = _error(cli(*train_args(tmp_path / "serve.yaml", FIXTURES / "text.jsonl", tmp_path / "run")))
    assert "is a serving plan" in error.message
    error = _error(cli(*train_args(plan, FIXTURES / "text.jsonl", tmp_path / "run"), "--resume"))
    assert "has no complete checkpoint to resume from" in error.message


def test_dry_run_prints_the_command_and_creates_nothing(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", cluster="2xrtx4090", gpus=2)
    result = cli(
        *train_args(plan, FIXTURES / "chat.jsonl", tmp_path / "run"), "--nproc-per-node", "2", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "torch.distributed.run --nnodes 1 --node-rank 0 --nproc-per-node 2" in result.output
    assert not (tmp_path / "run").exists()


def test_console_script_prints_one_paragraph_and_exits_2(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml")
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"messages": []}\n')
    result = subprocess.run([sys.executable, "-c", "from swiftplan.cli import main; main()",
                             *train_args(plan, data, tmp_path / "run")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    stderr = " ".join(result.stderr.split())
    assert (
        "error: bad.jsonl line 2: expected a alpaca record like the first one, found keys: messages."
        in stderr
    )
    assert "Traceback" not in result.stderr


def test_cli_import_stays_light():
    code = (
        "import sys, swiftplan.cli.train, swiftplan.cli.export, swiftplan.executors.train.prepare\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'deepspeed', 'bitsandbytes') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
