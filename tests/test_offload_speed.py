"""Host-link time of activation offloading and FSDP CPU offload (swiftplan/planner/offload_speed.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.planner.activations import activation_phases
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.offload_speed import activation_offload_s, fsdp_cpu_offload_s
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, TrainSetup
from swiftplan.planner.speed import train_speed

SPEC = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
SPEC_PARAMS = 7_615_616_512
"""total_params of Qwen2.5-7B (planner/architecture.py over its catalog config)."""
PCIE = 25e9


def _setup(**knobs: object) -> TrainSetup:
    return TrainSetup(method="full", micro_batch=1, seq_len=4096, grad_accum=2, runtime=RuntimeKnobs(**knobs))  # type: ignore[arg-type]


def test_activation_offload_copies_hide_behind_compute():
    setup = _setup(activation_offload=True)
    offloaded = activation_phases(SPEC, setup).offloaded
    assert offloaded > 0
    copies_s = 2 * 2 * offloaded / PCIE  # grad_accum 2 × (out in forward + back in backward)
    assert activation_offload_s(SPEC, setup, pcie_bytes_per_s=PCIE, compute_s=0.0) == pytest.approx(copies_s)
    assert activation_offload_s(SPEC, setup, pcie_bytes_per_s=PCIE, compute_s=copies_s / 4) == pytest.approx(
        copies_s * 3 / 4
    )
    assert activation_offload_s(SPEC, setup, pcie_bytes_per_s=PCIE, compute_s=copies_s * 2) == 0.0
    assert activation_offload_s(SPEC, _setup(), pcie_bytes_per_s=PCIE, compute_s=0.0) == 0.0


def test_fsdp_cpu_offload_streams_each_shard_twice_per_micro_step():
    setup = _setup(fsdp="fsdp2", fsdp_cpu_offload=True)
    trainable = SPEC_PARAMS
    one = fsdp_cpu_offload_s(SPEC, setup, pcie_bytes_per_s=PCIE, trainable_params=trainable, shards=1)
    four = fsdp_cpu_offload_s(SPEC, setup, pcie_bytes_per_s=PCIE, trainable_params=trainable, shards=4)
    assert four == pytest.approx(one / 4)
    # bf16 module: 2 copies of the whole model up + one gradient down = 3 × 2 B per parameter, × grad_accum 2
    assert one == pytest.approx(2 * 3 * 2 * trainable / PCIE, rel=0.01)
    single = replace(setup, grad_accum=1)
    assert fsdp_cpu_offload_s(SPEC, single, pcie_bytes_per_s=PCIE, trainable_params=trainable, shards=1) == (
        pytest.approx(one / 2)
    )
    off = _setup(fsdp="fsdp2")
    assert fsdp_cpu_offload_s(SPEC, off, pcie_bytes_per_s=PCIE, trainable_params=trainable, shards=1) == 0.0


def test_lora_under_fsdp_cpu_offload_moves_the_frozen_base_but_only_adapter_gradients():
    lora = TrainSetup(
        method="lora",
        lora=LoraSetup(rank=16, targets=("q_proj", "v_proj")),
        runtime=RuntimeKnobs(fsdp="fsdp2", fsdp_cpu_offload=True),
    )
    full_s = fsdp_cpu_offload_s(
        SPEC,
        _setup(fsdp="fsdp2", fsdp_cpu_offload=True),
        pcie_bytes_per_s=PCIE,
        trainable_params=SPEC_PARAMS,
        shards=1,
    )
    lora_s = fsdp_cpu_offload_s(SPEC, lora, pcie_bytes_per_s=PCIE, trainable_params=10_000_000, shards=1)
    # LoRA: grad_accum 1 and no full-size gradient, so about a third of full's per-micro-step traffic, halved
    assert lora_s == pytest.approx(full_s / 2 * 2 / 3, rel=0.02)


def test_offload_time_is_in_the_step_breakdown():
    cluster = parse_cluster("4xA100-80G")
    base = _setup(fsdp="fsdp2")
    offloaded = _setup(fsdp="fsdp2", fsdp_cpu_offload=True)
    plain = train_speed(SPEC, base, cluster, trainable_params=SPEC_PARAMS)
    moved = train_speed(SPEC, offloaded, cluster, trainable_params=SPEC_PARAMS)
    assert plain.breakdown_s["offload"] == 0.0
    assert moved.breakdown_s["offload"] > 0.0
    assert moved.step_time_s == pytest.approx(plain.step_time_s + moved.breakdown_s["offload"])
