"""ZeRO-3's stage3_max_reuse_distance, measured on DeepSpeed itself (0.19.8, its CPU accelerator with gloo, one
process; `zero3_support.deepspeed_gathered`): DeepSpeed keeps a parameter gathered from one use to the next when the
trace uses it again within that many elements, so around the loss the LM head and, when two LM heads and a block fit
in the distance, the last block(s) stay gathered beside it. The planner's `zero3_gathered` lays out the step's
fetches and applies the same release rule; it must equal what DeepSpeed held at most, and where.

Three tiny Llamas show the regimes: a block heavier than the LM head (2 blocks of 110,592 projection elements,
LM head 32,768), blocks about the LM head's size (4 blocks of 36,864), and an LM head much heavier than a block
(262,144 against 36,864), where nothing beyond the LM head stays until the distance passes two LM heads. The
distances: 0 (axolotl's configs), 40,000 (about one small block), 120,000 (about one heavy block), 200,000 (two LM
heads and a block or two) and 1e9 (LLaMA-Factory's and ms-swift's, DeepSpeed's default: these models whole).

The most base elements (adapters left out) DeepSpeed held at one fetch, over the whole grid (rank-4 all-linear LoRA,
checkpointing non-reentrant); the cases below run a part of it:

    distance               0       40,000  120,000  200,000      1e9
    block-heavy full       32,768  32,768   65,536  131,072  286,720   LM head + down_proj, + up_proj; all
    block-heavy full-ckpt  65,536  65,536   98,304  131,072  286,720   recompute: down_proj + gate/up_proj
    block-heavy lora       32,768  32,768   65,536   98,304  245,760   (layer 0's q/k/v and the embedding unused)
    block-heavy lora-ckpt 110,592 110,592  110,592  143,360  286,720   recompute's block; LM head + last block
    four-blocks full       32,768  32,768   61,440  100,352  212,992
    four-blocks full-ckpt  32,768  32,768   69,632   77,824  212,992
    four-blocks lora       32,768  32,768   57,344   94,208  172,032
    four-blocks lora-ckpt  36,864  36,864   69,632   69,632  212,992
    head-heavy (any)      262,144 262,144  262,144  262,144  598,016   (LoRA without checkpointing: 327,680)

The most is reached at the LM head's forward fetch once the window keeps anything beyond it, else at the embedding
or LM head, or in the last block's recompute (down_proj's base_layer for LoRA, the second MLP projection for full
fine-tuning, whose down_proj is fetched for backward before the recompute)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
from zero3_support import PERSISTENCE, deepspeed_gathered, tiny_config

from swiftplan.planner.architecture import layer_linears, lm_head_params
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.planner.zero3_trace import zero3_gathered

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed==0.19.8)"
)
RANK = 4
MODELS = {  # name: (vocabulary, MLP width, blocks)
    "block-heavy": (512, 512, 2),
    "four-blocks": (512, 128, 4),
    "head-heavy": (4096, 128, 2),
}
SETUPS = {  # name: (method, checkpointing)
    "full": ("full", False),
    "full-ckpt": ("full", True),
    "lora": ("lora", False),
    "lora-ckpt": ("lora", True),
}
CASES = {  # (model, set-up): distances
    **{("block-heavy", name): (0, 120_000, 200_000, 1_000_000_000) for name in SETUPS},
    **{("four-blocks", name): (120_000,) for name in SETUPS},
    ("head-heavy", "full"): (200_000, 1_000_000_000),
    ("head-heavy", "lora-ckpt"): (200_000, 1_000_000_000),
}
QUICK = {("block-heavy", "lora-ckpt", 200_000), ("block-heavy", "full-ckpt", 120_000), ("four-blocks", "full", 120_000),
         ("four-blocks", "lora", 120_000), ("head-heavy", "lora-ckpt", 200_000), ("block-heavy", "lora-ckpt", 1_000_000_000)}  # fmt: skip
"""Cases the fast tier runs; the others are marked slow."""


def _setup(method: str, grad_ckpt: bool) -> TrainSetup:
    lora = LoraSetup(rank=RANK, targets=("all-linear",)) if method == "lora" else None
    return TrainSetup(method=method, precision="fp32", micro_batch=2, grad_ckpt=grad_ckpt, lora=lora,
                      parallel=Parallelism(zero=3))  # fmt: skip


def _cases() -> list[object]:
    return [
        pytest.param(
            model,
            name,
            reuse,
            id=f"{model}-{name}-{reuse:g}",
            marks=() if (model, name, reuse) in QUICK else (pytest.mark.slow,),
        )  # fmt: skip
        for (model, name), distances in CASES.items()
        for reuse in distances
    ]


@needs_deepspeed
@pytest.mark.usefixtures("release_process_group")
@pytest.mark.parametrize(("model", "name", "reuse"), _cases())
def test_the_planner_holds_what_deepspeed_holds_at_most(model, name, reuse, tmp_path, monkeypatch):
    vocab, intermediate, layers = MODELS[model]
    path, config = tiny_config(tmp_path, vocab=vocab, intermediate=intermediate, layers=layers)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(*SETUPS[name])
    planned = zero3_gathered(spec, setup, reuse=reuse, persistence=PERSISTENCE, prefetch=0)
    measured = deepspeed_gathered(path, setup, monkeypatch, vocab=vocab, reuse=reuse)
    assert (planned.base, planned.total, planned.moment) == (measured.base, measured.total, measured.moment)


@needs_deepspeed
@pytest.mark.usefixtures("release_process_group")
def test_reentrant_checkpointing_holds_the_same_base(tmp_path, monkeypatch):
    """Reentrant checkpointing (LLaMA-Factory's use_reentrant_gc) gives the recompute's frozen weights to the
    block, not to down_proj's lora_B, so they stay through the block's backward; at the largest moment the base
    gathered is the same (the planner models non-reentrant checkpointing)."""
    path, config = tiny_config(tmp_path, vocab=512, intermediate=512)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup("lora", True)
    planned = zero3_gathered(spec, setup, reuse=200_000, persistence=PERSISTENCE, prefetch=0)
    measured = deepspeed_gathered(path, setup, monkeypatch, vocab=512, reuse=200_000, reentrant=True)
    assert (planned.base, planned.moment) == (measured.base, measured.moment)


def _tiny(vocab: int, intermediate: int, layers: int = 2):  # type: ignore[no-untyped-def]
    config = {"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": intermediate,
              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
    return spec_from_hf_config(config, name="tiny")


def _block(spec) -> int:  # type: ignore[no-untyped-def]
    return sum(lin.count * lin.in_features * lin.out_features for lin in layer_linears(spec, 0))


def test_the_window_keeps_the_last_block_beside_the_lm_head():
    """LoRA with checkpointing: without a window the recompute holds a block; once the distance covers two LM
    heads and the rest of the last block, that block stays gathered from its forward to its recompute, beside
    the LM head at the loss."""
    spec, setup = _tiny(512, 512), _setup("lora", True)
    block, head = _block(spec), lm_head_params(spec)
    assert zero3_gathered(spec, setup, reuse=0, persistence=PERSISTENCE, prefetch=0).base == block
    kept = zero3_gathered(spec, setup, reuse=200_000, persistence=PERSISTENCE, prefetch=0)
    assert (kept.base, kept.moment) == (head + block, "forward lm_head")


def test_a_large_vocabulary_keeps_nothing_beyond_the_lm_head_under_two_lm_heads():
    spec, setup = _tiny(4096, 128), _setup("full", False)
    head = lm_head_params(spec)
    for reuse in (0, 2 * head):
        assert (
            zero3_gathered(spec, setup, reuse=reuse, persistence=PERSISTENCE, prefetch=0).base == head
        )  # the embedding's size
    assert zero3_gathered(spec, setup, reuse=2 * head + 200, persistence=PERSISTENCE, prefetch=0).base > head


def test_the_default_distance_keeps_published_models_last_blocks():
    """DeepSpeed's 1e9 against real shapes: Llama-2-7B LoRA keeps its last block beside the LM head at the loss;
    Llama-3.1-8B's LM head (525M elements) is over half the distance, so nothing else stays; a 4-bit 70B block is a
    quarter of its elements, so the last one stays beside the LM head (peft's 70B QLoRA, pm-29)."""
    setup = replace(_setup("lora", True), precision="bf16")
    llama7 = catalog_spec("meta-llama/Llama-2-7b-hf")
    assert zero3_gathered(llama7, setup, prefetch=0).base == lm_head_params(llama7) + _block(llama7)
    llama8 = catalog_spec("meta-llama/Llama-3.1-8B")
    assert zero3_gathered(llama8, setup, prefetch=0).base == lm_head_params(llama8)
    llama70 = catalog_spec("meta-llama/Llama-2-70b-hf")
    qlora = replace(setup, method="qlora", quant="nf4")
    assert zero3_gathered(llama70, qlora, prefetch=0).base == lm_head_params(llama70) + _block(llama70) // 4
    assert zero3_gathered(llama70, qlora, reuse=0, prefetch=0).base == lm_head_params(
        llama70
    )  # the LM head outweighs a 4-bit block


def test_the_plan_counts_the_distance_its_runtime_sets():
    """The set-up's max_reuse_distance is the window the states count: axolotl's 0 gathers Llama-2-7B's LM head at
    most, DeepSpeed's default also its last block (bf16: 2 bytes an element)."""
    from swiftplan.planner.device_states import device_states
    from swiftplan.planner.setup import RuntimeKnobs

    spec = catalog_spec("meta-llama/Llama-2-7b-hf")
    setup = replace(_setup("full", False), precision="bf16")
    none_ahead = RuntimeKnobs(max_live_parameters=0, ds_auto_buckets=False)  # no prefetch beside the window
    setups = {
        reuse: replace(setup, runtime=replace(none_ahead, max_reuse_distance=reuse)) for reuse in (0, 10**9)
    }
    gathered = {
        reuse: device_states(spec, s, range(spec.num_layers), dp=2).gathered for reuse, s in setups.items()
    }
    assert gathered[0] == 2 * lm_head_params(spec)
    kept = zero3_gathered(spec, setups[10**9]).base
    assert (
        gathered[10**9] == 2 * kept > 2 * (lm_head_params(spec) + _block(spec))
    )  # and part of the block before
