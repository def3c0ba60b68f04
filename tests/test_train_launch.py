"""Rendered launches (command, environment, DeepSpeed JSON) against committed snapshots.

Regenerate after an intended change with: UPDATE_SNAPSHOTS=1 python -m pytest tests/test_train_launch.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.launch import LaunchOptions, deepspeed_config, format_launch, render
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup

SNAPSHOTS = Path(__file__).parent / "snapshots" / "train_launch"
RUN = "runs/model-20250101-000000"

CASES = {
    "single_gpu_lora": (TrainSetup(method="lora", precision="bf16"), LaunchOptions(device="cuda")),
    "ddp_4gpu_lora": (TrainSetup(method="lora", lora=LoraSetup(rank=64, targets=("all-linear",))),
                      LaunchOptions(device="cuda", nproc_per_node=4, master_port=29511)),
    "zero3_offload_2x8_full": (
        TrainSetup(method="full", precision="bf16", micro_batch=2, grad_accum=8,
                   parallel=Parallelism(zero=3, offload="optimizer+params")),
        LaunchOptions(device="cuda", nproc_per_node=8, nnodes=2, node_rank=1, master_addr="10.0.0.1"),
    ),
    "zero2_qlora_paged_adamw": (
        TrainSetup(method="qlora", precision="fp16", optimizer="paged-adamw-8bit", parallel=Parallelism(zero=2)),
        LaunchOptions(device="cuda", nproc_per_node=2, master_port=29512),
    ),
    "cpu_gloo_2proc": (TrainSetup(method="lora", precision="fp32"), LaunchOptions(device="cpu", nproc_per_node=2, master_port=29513)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_launch_matches_snapshot(name):
    setup, options = CASES[name]
    text = format_launch(render(setup, options, run_dir=RUN, python="python", lr=1e-4))
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; UPDATE_SNAPSHOTS=1 regenerates it"


def test_render_is_pure():
    setup, options = CASES["zero3_offload_2x8_full"]
    assert render(setup, options, run_dir=RUN) == render(setup, options, run_dir=RUN)


def test_single_process_runs_in_process_and_zero_always_uses_torchrun():
    assert render(TrainSetup(), LaunchOptions(device="cuda"), run_dir=RUN).mode == "single"
    zero = TrainSetup(method="full", parallel=Parallelism(zero=2))
    launch = render(zero, LaunchOptions(device="cuda"), run_dir=RUN)
    assert launch.mode == "torchrun" and "ds_config.json" in launch.files


def test_deepspeed_config_follows_the_plan():
    setup = TrainSetup(method="full", precision="amp-bf16", micro_batch=2, grad_accum=4,
                       parallel=Parallelism(zero=2, offload="optimizer"))  # fmt: skip
    config = deepspeed_config(setup, world_size=8, lr=1e-5, weight_decay=0.1, max_grad_norm=1.0)
    assert config["train_batch_size"] == 2 * 4 * 8
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in config["zero_optimization"]
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["weight_decay"] == 0.1
    json.dumps(config)  # serialisable


def test_launch_options_are_checked():
    with pytest.raises(SwiftplanError, match="--node-rank 2 is outside 0..1"):
        LaunchOptions(device="cuda", nnodes=2, node_rank=2)
