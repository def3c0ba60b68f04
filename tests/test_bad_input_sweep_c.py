"""Bad input the sweep found accepted or badly worded (estimate, verify, option handling, plan-file messages).

Real command lines through the console entry point (tests/bad_input_support.py). Each row: the arguments,
then fragments the one-paragraph refusal must hold (the bad value or flag, and what would be valid).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli, write_tiny_plans

M = "Qwen/Qwen2.5-0.5B"
EST = ("estimate", M, "--gpus", "a100")
SERVE = (*EST, "--task", "serve")

REFUSED = [
    # 3.1: training options with --task serve
    ("serve-training-options", (*SERVE, "--method", "qlora", "--rank", "64", "--no-grad-ckpt"),
     ["--method, --rank, --no-grad-ckpt", "training job", "--task serve"]),
    ("serve-batch", (*SERVE, "--batch", "8"), ["--batch describes a training job"]),
    ("serve-zero-pp", ("estimate", M, "--gpus", "2xa100", "--task", "serve", "--zero", "3", "--pp", "2"),
     ["--zero, --pp", "training job"]),
    ("serve-amp", (*SERVE, "--precision", "amp-bf16"), ["--precision amp-bf16", "bf16, fp16 or fp32"]),
    ("serve-variable-lengths", (*SERVE, "--variable-lengths"), ["--variable-lengths"]),
    # 2.5: an explicit --quant none is not replaced by nf4
    ("qlora-quant-none", (*EST, "--method", "qlora", "--quant", "none"), ["--method qlora", "--quant none", "nf4"]),
    # section 4: messages
    ("train-with-serving-runtime", (*EST, "--runtime", "vllm"),
     ["--runtime vllm is a serving runtime", "--task serve", "swiftplan, torch"]),
    ("serve-with-training-runtime", (*SERVE, "--runtime", "hf"),
     ["--runtime hf is a training runtime", "lmdeploy, sglang, vllm"]),
    ("serve-tp-over-devices", (*SERVE, "--tp", "2"), ["--tp 2", "1 serving device", "valid tensor-parallel degrees here: 1"]),
    ("serve-one-knob-grammar", (*SERVE, "--loss", "chunked"), ["--loss describes how", "it does not apply"]),
    ("missing-plan-file", ("estimate", "nope.yaml", "--gpus", "a100"), ["nope.yaml does not exist"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(args: tuple[str, ...], fragments: list[str], tmp_path: Path) -> None:
    assert_refused(run_cli(*args, cwd=tmp_path), *fragments)


def test_serving_without_training_options_still_estimates() -> None:
    done = run_cli(*SERVE, "--precision", "bf16", "--runtime", "vllm", "--json")
    assert done.exit_code == 0, done.output


def test_qlora_without_quant_still_defaults_to_nf4() -> None:
    done = run_cli(*EST, "--method", "qlora")
    assert done.exit_code == 0 and "nf4" in done.output, done.output


def test_the_utilization_help_names_the_runtime_default() -> None:
    text = " ".join(run_cli("estimate", "--help").output.split())
    assert "0.92 for vllm" in text and "[default: 0.9]" not in text


@pytest.fixture
def plans(tmp_path: Path) -> Path:
    return write_tiny_plans(tmp_path)
