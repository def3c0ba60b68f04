"""Runtime features (planner/runtime_features.py): selective checkpointing, activation offloading, FSDP CPU
offload, torchao float8 and torchao NF4 — each term by hand, its refusals, its flag, its source in the
breakdown, and its trip through plan files. The traces of the real code are tests/test_runtime_features_trace.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner import activations as act
from swiftplan.planner.architecture import embedding_params, final_norm_params, layer_params, lm_head_params
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.runtime_features import (
    OFFLOAD_STASH_TENSORS,
    checkpointed_blocks,
    float8_linear_backward_bytes,
    offloaded_saved,
    selective_saved,
)
from swiftplan.planner.setup import LoraSetup, RuntimeKnobs, ServeSetup, TrainSetup
from swiftplan.planner.train_memory import train_memory
from swiftplan.planner.weights import torchao_nf4_bytes
from tests.bad_input_support import assert_refused, run_cli

QWEN7B = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
LLAMA8B = catalog_spec("meta-llama/Llama-3.1-8B")
M = "Qwen/Qwen2.5-7B"


def _lora(**knobs: object) -> TrainSetup:
    return TrainSetup(method="lora", lora=LoraSetup(rank=16), seq_len=4096, runtime=RuntimeKnobs(**knobs))  # type: ignore[arg-type]


# -- selective checkpointing -------------------------------------------------------------------------


def test_selective_saved_follows_torchtunes_every_kth_rule() -> None:
    """torchtune: blocks 2 and 4 (1-based) of five are wrapped with every=2: they keep their input, 1, 3, 5
    their tensors."""
    blocks = [100, 100, 100, 100, 100]
    assert checkpointed_blocks(5, every=2, position="last") == [1, 3]
    saved = selective_saved(blocks, every=2, block_input=10, working=7, position="last")
    assert saved.at_loss == 2 * 10 + 3 * 100
    # recomputing block 4 (index 3): both inputs, the plain blocks below it (1 and 3), block 4, temporaries
    assert saved.in_backward == 2 * 10 + 2 * 100 + 100 + 7
    assert saved.below_first == 100  # block 1 sits below the first wrapped block
    assert selective_saved(blocks, every=9, block_input=10, working=7, position="last").at_loss == 500


def test_selective_saved_follows_transformers_every_n_layers() -> None:
    """transformers: layers 0, 2, 4 of five are wrapped with every_n_layers=2 (ceil(5 / 2) of them)."""
    blocks = [100, 100, 100, 100, 100]
    assert checkpointed_blocks(5, every=2) == [0, 2, 4]
    saved = selective_saved(blocks, every=2, block_input=10, working=7)
    assert saved.at_loss == 3 * 10 + 2 * 100
    assert saved.in_backward == 3 * 10 + 2 * 100 + 100 + 7  # block 4 recomputed, blocks 1 and 3 kept
    assert saved.below_first == 0


def test_ckpt_every_one_is_todays_checkpointing_and_k_sits_between() -> None:
    every = train_memory(QWEN7B, _lora()).device
    assert train_memory(QWEN7B, _lora(ckpt_every=1)).device == every
    second = train_memory(QWEN7B, _lora(ckpt_every=2)).device
    fourth = train_memory(QWEN7B, _lora(ckpt_every=4)).device
    none = train_memory(QWEN7B, dataclasses.replace(_lora(), grad_ckpt=False)).device
    assert every.activations < second.activations < fourth.activations < none.activations
    # 28 blocks, every 2nd wrapped: 14 block inputs and 14 blocks' saved tensors at the loss
    setup = _lora(ckpt_every=2)
    tokens = setup.micro_batch * setup.seq_len
    block = act.layer_activation_bytes(QWEN7B, setup, 0, tokens, setup.seq_len).total
    phases = act.activation_phases(QWEN7B, setup)
    assert phases.at_loss == phases.shared + 14 * act.block_input_bytes(QWEN7B, setup, tokens) + 14 * block


def test_ckpt_every_needs_checkpointing() -> None:
    with pytest.raises(SwiftplanError, match="--ckpt-every 2 .* needs --grad-ckpt"):
        TrainSetup(grad_ckpt=False, runtime=RuntimeKnobs(ckpt_every=2))
    with pytest.raises(SwiftplanError, match="--ckpt-every must be a positive integer"):
        RuntimeKnobs(ckpt_every=0)


# -- activation offloading ---------------------------------------------------------------------------


def test_offloading_keeps_the_stash_and_moves_the_rest_to_host() -> None:
    plain = train_memory(QWEN7B, _lora())
    offloaded = train_memory(QWEN7B, _lora(activation_offload=True))
    setup = _lora()
    tokens = setup.micro_batch * setup.seq_len
    block_input = act.block_input_bytes(QWEN7B, setup, tokens)
    phases = act.activation_phases(QWEN7B, _lora(activation_offload=True))
    assert phases.at_loss == phases.shared + OFFLOAD_STASH_TENSORS * block_input
    assert phases.offloaded == (28 - OFFLOAD_STASH_TENSORS) * block_input
    assert offloaded.host_bytes == phases.offloaded
    assert offloaded.device.peak_allocated < plain.device.peak_allocated
    without_ckpt = dataclasses.replace(_lora(activation_offload=True), grad_ckpt=False)
    assert train_memory(QWEN7B, without_ckpt).device.activations < plain.device.activations


def test_offloaded_saved_without_checkpointing_brings_back_one_block() -> None:
    saved = selective_saved([100] * 4, every=0, block_input=0, working=7)
    off = offloaded_saved(saved, largest=100, every=0, count=4, working=7)
    assert (off.at_loss, off.in_backward, off.offloaded) == (100, 107, 300)


# -- FSDP CPU offload --------------------------------------------------------------------------------


def test_fsdp_cpu_offload_keeps_only_gathered_units_and_one_units_gradient() -> None:
    setup = TrainSetup(method="full", seq_len=2048, runtime=RuntimeKnobs(fsdp="fsdp2"))
    sharded = train_memory(LLAMA8B, setup, world_size=8)
    offloaded = train_memory(
        LLAMA8B,
        dataclasses.replace(setup, runtime=RuntimeKnobs(fsdp="fsdp2", fsdp_cpu_offload=True)),
        world_size=8,
    )
    d = offloaded.device
    assert (d.weights, d.optimizer, d.master_weights) == (0, 0, 0)
    root = embedding_params(LLAMA8B) + lm_head_params(LLAMA8B) + final_norm_params(LLAMA8B)
    assert d.gradients == (layer_params(LLAMA8B, 0) + root) * 2  # one block's and the root's bf16 gradients
    # the host holds every rank's parameter, gradient and optimizer shards
    s = sharded.device
    assert offloaded.host_bytes == (s.weights + s.gradients + s.optimizer + s.master_weights) * 8
    assert d.peak_allocated < s.peak_allocated


def test_fsdp_full_shard_counts_the_root_unit_gathered() -> None:
    setup = TrainSetup(method="qlora", seq_len=1024, runtime=RuntimeKnobs(fsdp="fsdp2"))
    memory = train_memory(QWEN7B, setup, world_size=4).device
    outer = (embedding_params(QWEN7B) + lm_head_params(QWEN7B) + final_norm_params(QWEN7B)) * 2
    assert memory.transient >= outer
    assert "root unit" in next(t.formula for t in memory.terms if t.name == "transient")


def test_fsdp_cpu_offload_needs_fsdp() -> None:
    with pytest.raises(SwiftplanError, match="--fsdp-cpu-offload .* needs --fsdp"):
        TrainSetup(runtime=RuntimeKnobs(fsdp_cpu_offload=True))


# -- float8 ------------------------------------------------------------------------------------------


def test_float8_adds_backward_casts_and_gathers_fp8_under_fsdp() -> None:
    setup = TrainSetup(method="full", seq_len=2048, runtime=RuntimeKnobs(fsdp="fsdp2"))
    bf16 = train_memory(LLAMA8B, setup, world_size=8).device
    fp8 = train_memory(
        LLAMA8B, dataclasses.replace(setup, runtime=RuntimeKnobs(fsdp="fsdp2", float8=True)), world_size=8
    ).device
    assert fp8.activations > bf16.activations  # the widest Linear's fp8 casts in a block's backward
    assert fp8.transient < bf16.transient  # two blocks gathered in fp8 instead of bf16
    # T × (2 out + in) + in × out fp8 copies plus 9 B per element of the largest cast (torchao)
    assert float8_linear_backward_bytes(1024, 512, 2048) == 1024 * (4096 + 512) + 512 * 2048 + 9 * 1024 * 2048


def test_float8_needs_full_bf16_and_fp8_hardware() -> None:
    with pytest.raises(SwiftplanError, match="--float8 .* needs --method full --precision bf16"):
        TrainSetup(method="lora", runtime=RuntimeKnobs(float8=True))
    assert_refused(run_cli("estimate", M, "--method", "full", "--float8", "--gpus", "a100"), "fp8")


# -- torchao NF4 -------------------------------------------------------------------------------------


def test_torchao_nf4_bytes_by_hand() -> None:
    # 4096 × 4096: codes n/2, int8 scalers n/64, n/16384 bf16 factors, a bf16 mean, a 16-entry bf16 table
    n = 4096 * 4096
    assert torchao_nf4_bytes(n) == n // 2 + n // 64 + (n // 16384 + 1 + 16) * 2


def test_nf4_torchao_is_a_qlora_base_sharded_by_fsdp_but_not_served() -> None:
    qlora = TrainSetup(method="qlora", quant="nf4-torchao", seq_len=1024)
    bnb = train_memory(QWEN7B, TrainSetup(method="qlora", quant="nf4", seq_len=1024)).device.weights
    torchao = train_memory(QWEN7B, qlora).device
    assert torchao.weights == pytest.approx(bnb, rel=0.01)  # both ≈ 0.516 B per quantized weight
    weights_term = next(t for t in torchao.terms if t.name == "weights")
    assert "pytorch/ao @ 36027d8" in weights_term.source
    sharded = train_memory(
        QWEN7B, dataclasses.replace(qlora, runtime=RuntimeKnobs(fsdp="fsdp2")), world_size=4
    )
    assert sharded.device.weights < torchao.weights / 3
    with pytest.raises(SwiftplanError, match="nf4-torchao .* no serving engine"):
        ServeSetup(quant="nf4-torchao")
    with pytest.raises(SwiftplanError, match="--kbit-upcast"):
        TrainSetup(method="qlora", quant="nf4-torchao", kbit_upcast=True)


# -- terms, flags, profiles, plans -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "term", "source"),
    [
        ({"ckpt_every": 2}, "activations", "torchtune/training/activations.py"),
        ({"ckpt_every": 2}, "activations", "every_n_layers"),
        ({"activation_offload": True}, "activations", "torchtune/training/_activation_offloading.py"),
        ({"fsdp": "fsdp2", "fsdp_cpu_offload": True}, "optimizer", "CPUOffloadPolicy"),
        ({"fsdp": "fsdp2", "fsdp_cpu_offload": True}, "gradients", "_fsdp_collectives.py"),
    ],
)
def test_each_feature_names_its_source_in_the_breakdown(knobs: dict, term: str, source: str) -> None:
    memory = train_memory(QWEN7B, _lora(**knobs), world_size=2).device
    found = next(t for t in memory.terms if t.name == term)
    assert source in found.source and found.formula


def _estimate(*args: str) -> dict:
    result = run_cli("estimate", M, "--gpus", "H100", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_flags_reach_the_estimate_and_the_engine_check() -> None:
    base = _estimate("--method", "lora")
    offload = _estimate("--method", "lora", "--activation-offload")
    assert offload["per_device"]["activations"] < base["per_device"]["activations"]
    assert offload["host_bytes"] > 0
    assert any("activation offloading true" in r for r in offload["engine"]["reasons"])  # our loop does not
    selective = _estimate("--method", "lora", "--ckpt-every", "2")
    assert selective["per_device"]["activations"] > base["per_device"]["activations"]
    fsdp = _estimate("--method", "full", "--gpus", "8xH100", "--fsdp", "fsdp2", "--fsdp-cpu-offload")
    assert fsdp["per_device"]["optimizer"] == 0 and fsdp["host_bytes"] > 0
    fp8 = _estimate("--method", "full", "--gpus", "8xH100", "--fsdp", "fsdp2", "--float8")
    assert any("fp8" in t["formula"] for t in fp8["terms"])
    torchao = _estimate("--method", "qlora", "--quant", "nf4-torchao", "--runtime", "torchtune")
    assert torchao["runtime"]["name"] == "torchtune"


def test_unsloth_offloads_its_checkpointed_inputs_by_default() -> None:
    unsloth = _estimate("--runtime", "unsloth")
    applied = {d["option"]: d for d in unsloth["runtime"]["applied"]}
    assert applied["activation_offload"]["value"] is True
    assert "unsloth-zoo@ce232d6" in applied["activation_offload"]["source"]
    kept = _estimate("--runtime", "unsloth", "--no-activation-offload")
    assert "activation_offload" in kept["runtime"]["overridden"]
    assert kept["per_device"]["activations"] > unsloth["per_device"]["activations"]


def test_estimate_packing_is_one_shape() -> None:
    packed = _estimate("--packing")
    assert packed["allocator"]["packing"] is True and packed["allocator"]["variable_lengths"] is False
    assert packed["per_device"] == _estimate()["per_device"]  # estimate sizes full --seq rows already
    varied = _estimate("--variable-lengths")
    assert varied["per_device"]["peak_reserved"] > packed["per_device"]["peak_reserved"]


def test_plan_files_keep_the_feature_knobs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from swiftplan.plan_file import load_plan, save_plan
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.usecases.estimate import plan_for_setup

    knobs = RuntimeKnobs(
        name="torchtune", fsdp="fsdp2", fsdp_cpu_offload=True, activation_offload=True, ckpt_every=2
    )
    plan = plan_for_setup(
        M, parse_cluster("2xrtx4090"), TrainSetup(method="qlora", runtime=knobs), engine="axolotl"
    )
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    assert load_plan(path).setup.runtime == knobs  # type: ignore[union-attr]
    path.write_text(path.read_text().replace("ckpt_every: 2", "ckpt_every: 0"))
    with pytest.raises(SwiftplanError, match="ckpt_every"):
        load_plan(path)
