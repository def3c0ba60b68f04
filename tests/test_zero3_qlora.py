"""QLoRA under DeepSpeed ZeRO-3: the 4-bit base partitioned like any weight (stored in the compute dtype), its
bitsandbytes constants whole on every rank; planned, searched and rendered only where the engine runs it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import engine_reasons, get_engine, train_requirements
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.space import build_train_space
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.planner.train_memory import train_memory
from swiftplan.planner.weights import bnb_quant_state_bytes

LLAMA70B = catalog_spec("meta-llama/Llama-2-70b-hf")
QLORA = TrainSetup(method="qlora", quant="nf4", lora=LoraSetup(rank=8, targets=("all-linear",)), micro_batch=1,
                   seq_len=2048)  # fmt: skip


def _zero(setup: TrainSetup, stage: int) -> TrainSetup:
    return replace(setup, parallel=Parallelism(zero=stage))


@pytest.mark.parametrize("double_quant", [False, True])
def test_zero3_partitions_the_packed_weights_and_keeps_the_constants_whole(double_quant):
    setup = replace(QLORA, double_quant=double_quant)
    whole = train_memory(LLAMA70B, _zero(setup, 2), world_size=2).device.weights
    constants = bnb_quant_state_bytes(
        LLAMA70B, range(LLAMA70B.num_layers), quant="nf4", double_quant=double_quant
    )
    assert constants > 0
    for ranks in (2, 4, 8):
        sharded = train_memory(LLAMA70B, _zero(setup, 3), world_size=ranks).device.weights
        assert sharded == (whole - constants) // ranks + constants


def test_zero3_qlora_shards_the_adapters_and_lowers_the_peak():
    zero2 = train_memory(LLAMA70B, _zero(QLORA, 2), world_size=4)
    zero3 = train_memory(LLAMA70B, _zero(QLORA, 3), world_size=4)
    assert zero3.device.adapters == zero2.device.adapters // 4
    saved = zero2.device.weights - zero3.device.weights
    assert 0 < zero2.device.peak_allocated - zero3.device.peak_allocated < saved + zero2.device.adapters


@pytest.mark.parametrize("quant, method", [("int8", "lora"), ("gptq", "lora"), ("fp8", "lora")])
def test_zero3_refuses_a_base_it_cannot_partition_naming_it(quant, method):
    with pytest.raises(SwiftplanError) as error:
        TrainSetup(method=method, quant=quant, parallel=Parallelism(zero=3))
    assert f"--quant {quant}" in error.value.message and "nf4 or fp4" in (error.value.hint or "")


def test_only_engines_that_store_the_base_in_the_compute_dtype_run_it():
    needs = train_requirements(_zero(QLORA, 3), backend="cuda", gpus=2)
    refusal = engine_reasons(get_engine("swiftplan"), needs)
    assert len(refusal) == 1 and "ZeRO-3" in refusal[0] and "'nf4'" in refusal[0]
    for engine in ("trl", "ms-swift", "llamafactory", "axolotl"):
        assert engine_reasons(get_engine(engine), needs) == [], engine
    # ZeRO-2 over the same base, or ZeRO-3 over an unquantized one, is the loop's to run
    assert (
        engine_reasons(get_engine("swiftplan"), train_requirements(_zero(QLORA, 2), backend="cuda", gpus=2))
        == []
    )


@pytest.mark.parametrize("engine, searched", [("swiftplan", False), ("trl", True)])
def test_the_search_proposes_zero3_qlora_only_for_an_engine_that_runs_it(engine, searched):
    space = build_train_space(
        LLAMA70B, parse_cluster("2xa100-40gb"), Pins(methods=("qlora",)), get_engine(engine)
    )
    zero3 = {c.quant for c in space.candidates() if c.zero == 3}
    assert bool(zero3) is searched
    assert zero3 <= {"nf4", "nf4-dq"}


def test_zero3_parameter_offload_of_a_4bit_base_is_refused_and_never_searched():
    with pytest.raises(SwiftplanError) as error:
        replace(QLORA, parallel=Parallelism(zero=3, offload="optimizer+params"))
    assert "--quant nf4" in error.value.message and "--offload optimizer" in (error.value.hint or "")
    space = build_train_space(
        LLAMA70B, parse_cluster("2xa100-40gb"), Pins(methods=("qlora",)), get_engine("trl")
    )
    assert {(c.zero, c.offload) for c in space.candidates()} >= {(3, "none"), (3, "optimizer")}
    assert (3, "optimizer+params") not in {(c.zero, c.offload) for c in space.candidates()}
