"""ZeRO-3's gathered parameters over a LoRA step, measured on DeepSpeed itself (0.19.8, its CPU accelerator
with gloo, one process; `zero3_support.deepspeed_gathered`): with checkpointing, a block's frozen base stays
gathered through its recompute until the block's backward, so the most gathered at once is the whole block, not
the largest single tensor; without checkpointing each projection is freed after use. The planner's
`zero3_gathered` counts both (`tests/test_zero3_reuse.py` adds the reuse window).

The tiny Llama has an MLP wide enough that a block outweighs the LM head, and sets no prefetch and no reuse
distance, so the count is the recompute's alone: the parameters `ZeroParamStatus.AVAILABLE` after every fetch
of the third step (the first records DeepSpeed's trace), vectors below the persistence threshold left out.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
from zero3_support import PERSISTENCE, deepspeed_gathered, tiny_config

from swiftplan.planner.architecture import largest_param_elements, layer_linears, lm_head_params
from swiftplan.planner.device_states import device_states
from swiftplan.planner.fsdp_memory import fsdp_gathered_bytes
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.runtime_terms import zero3_live_parameter_bytes
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.zero3_trace import zero3_gathered

pytestmark = [
    pytest.mark.usefixtures("release_process_group"),
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="needs deepspeed (pip install deepspeed==0.19.8)",
    ),
]
RANK = 4
VOCAB = 512


def _setup(grad_ckpt: bool) -> TrainSetup:
    return TrainSetup(method="lora", precision="fp32", micro_batch=2, grad_ckpt=grad_ckpt,
                      lora=LoraSetup(rank=RANK, targets=("all-linear",)), parallel=Parallelism(zero=3))  # fmt: skip


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_a_checkpointed_lora_block_is_gathered_whole_through_its_recompute(reentrant, tmp_path, monkeypatch):
    path, config = tiny_config(tmp_path, vocab=VOCAB, intermediate=512)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(grad_ckpt=True)
    held = zero3_gathered(spec, setup, reuse=0, persistence=PERSISTENCE, prefetch=0).base
    assert held == sum(lin.in_features * lin.out_features for lin in layer_linears(spec, 0))
    assert held > largest_param_elements(spec)  # the block outweighs the LM head here
    measured = deepspeed_gathered(path, setup, monkeypatch, vocab=VOCAB, reentrant=reentrant)
    down = layer_linears(spec, 0)[-1]  # the recompute ends on down_proj, whose adapters are gathered then too
    assert (measured.base, measured.total) == (held, held + RANK * (down.in_features + down.out_features))
    planned = zero3_live_parameter_bytes(spec, RuntimeKnobs(prefetch_bucket_elements=0, ds_auto_buckets=False), weight_bytes=1, tp=1,
                                         held_elements=held)  # fmt: skip
    assert planned == held


def test_without_checkpointing_each_projection_is_freed_after_use(tmp_path, monkeypatch):
    path, config = tiny_config(tmp_path, vocab=VOCAB, intermediate=512)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(grad_ckpt=False)
    largest = largest_param_elements(spec)
    assert zero3_gathered(spec, setup, reuse=0, persistence=PERSISTENCE, prefetch=0).base == largest
    measured = deepspeed_gathered(path, setup, monkeypatch, vocab=VOCAB)
    assert measured.base == largest
    assert measured.total <= largest + RANK * (512 + 64)  # one tensor and an adapter pair


def test_the_held_block_counts_a_4bit_base_packed_and_only_under_deepspeed_zero3():
    """Llama-2-70B: a LoRA recompute holds a block (the LM head is lighter); a 4-bit block holds a quarter of its
    elements, lighter than the LM head, which the reuse window keeps beside it; nothing is gathered below ZeRO-3,
    and FSDP counts its own units (fsdp_memory)."""
    from swiftplan.planner.model_catalog import catalog_spec

    spec = catalog_spec("meta-llama/Llama-2-70b-hf")
    lora = replace(_setup(grad_ckpt=True), precision="bf16")
    full = sum(lin.count * lin.in_features * lin.out_features for lin in layer_linears(spec, 0))
    assert zero3_gathered(spec, lora, reuse=0, prefetch=0).base == full
    qlora = replace(lora, method="qlora", quant="nf4")
    assert zero3_gathered(spec, qlora, reuse=0, prefetch=0).base == lm_head_params(spec) > full // 4
    assert zero3_gathered(spec, qlora, prefetch=0).base == lm_head_params(spec) + full // 4
    layers = range(spec.num_layers)
    assert device_states(spec, replace(lora, parallel=Parallelism(zero=2)), layers, dp=2).gathered == 0
    fsdp = replace(lora, parallel=Parallelism(), runtime=RuntimeKnobs(fsdp="fsdp2"))
    assert device_states(spec, fsdp, layers, dp=2).gathered == fsdp_gathered_bytes(spec, fsdp, layers, 2)
