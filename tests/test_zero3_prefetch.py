"""ZeRO-3's prefetching, measured on DeepSpeed itself (0.19.8, its CPU accelerator with gloo, one process;
`zero3_support.deepspeed_gathered`, which counts what is gathered or in flight): after every module's fetch
DeepSpeed pops the parameter trace ahead of it and all-gathers up to stage3_prefetch_bucket_size elements, while
fewer than stage3_max_live_parameters are gathered, so with a bucket of any size it runs ahead, fetch after fetch,
until the limit is reached. The planner's `zero3_gathered` replays that queue over its layout of the step (the hooks
of modules without parameters included: they count as steps of the trace) and must equal what DeepSpeed held at
most, with adapters, and where.

Two tiny Llamas (`test_zero3_reuse.py`: 2 blocks of 110,592 projection elements, or 4 of 36,864, LM head 32,768;
the whole model 286,720 or 212,992 partitioned elements), buckets of 5,000 (about one attention projection),
50,000 (about a block) and 1e6 (more than the model), under max_live 0 (axolotl's: no prefetch), 100,000 and 1e9
(DeepSpeed's default), for full fine-tuning and LoRA with and without checkpointing; reuse distances 0 and 1e9."""

from __future__ import annotations

import importlib.util

import pytest
from zero3_support import PERSISTENCE, deepspeed_gathered, tiny_config

from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.planner.zero3_trace import zero3_gathered

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed==0.19.8)"
)
MODELS = {"block-heavy": (512, 512, 2), "four-blocks": (512, 128, 4)}  # name: (vocabulary, MLP width, blocks)
SETUPS = {
    "full": ("full", False),
    "full-ckpt": ("full", True),
    "lora": ("lora", False),
    "lora-ckpt": ("lora", True),
}
BUCKETS = (5_000, 50_000, 1_000_000)
MAX_LIVE = (0, 100_000, 1_000_000_000)
QUICK = {
    ("block-heavy", "full", 5_000, 100_000, 0),
    ("block-heavy", "lora-ckpt", 5_000, 1_000_000_000, 0),
    ("four-blocks", "full-ckpt", 50_000, 100_000, 0),
    ("four-blocks", "lora", 50_000, 1_000_000_000, 1_000_000_000),
}
"""Cases the fast tier runs; the others are marked slow."""


def _setup(method: str, grad_ckpt: bool) -> TrainSetup:
    lora = LoraSetup(rank=4, targets=("all-linear",)) if method == "lora" else None
    return TrainSetup(method=method, precision="fp32", micro_batch=2, grad_ckpt=grad_ckpt, lora=lora,
                      parallel=Parallelism(zero=3))  # fmt: skip


def _cases() -> list[object]:
    cases = [
        (model, name, bucket, live, reuse)
        for model in MODELS
        for name in SETUPS
        for bucket in BUCKETS
        for live in MAX_LIVE
        for reuse in ((0, 1_000_000_000) if model == "block-heavy" and bucket == 5_000 else (0,))
        if live or bucket == 5_000  # max_live 0 turns any bucket off
    ]
    return [
        pytest.param(
            *case,
            id="-".join(f"{v:g}" if isinstance(v, int) else v for v in case),
            marks=() if case in QUICK else (pytest.mark.slow,),
        )  # fmt: skip
        for case in cases
    ]


@needs_deepspeed
@pytest.mark.usefixtures("release_process_group")
@pytest.mark.parametrize(("model", "name", "bucket", "live", "reuse"), _cases())
def test_the_planner_prefetches_what_deepspeed_prefetches(
    model, name, bucket, live, reuse, tmp_path, monkeypatch
):
    vocab, intermediate, layers = MODELS[model]
    path, config = tiny_config(tmp_path, vocab=vocab, intermediate=intermediate, layers=layers)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(*SETUPS[name])
    planned = zero3_gathered(
        spec, setup, reuse=reuse, persistence=PERSISTENCE, prefetch=bucket, max_live=live
    )
    measured = deepspeed_gathered(path, setup, monkeypatch, vocab=vocab, reuse=reuse, prefetch=bucket,
                                  max_live=live)  # fmt: skip
    assert (planned.base, planned.total, planned.moment) == (measured.base, measured.total, measured.moment)


def test_max_live_zero_prefetches_nothing_and_the_default_runs_ahead_to_it():
    """Real shapes, no DeepSpeed: axolotl's max live 0 holds what prefetching off holds; DeepSpeed's defaults
    (bucket 5e7, max live 1e9) hold at least the limit, and at most the limit, the largest module and one
    overshooting parameter (each prefetch launches whole parameters until the bucket is reached)."""
    from dataclasses import replace

    from swiftplan.planner.architecture import largest_param_elements
    from swiftplan.planner.model_catalog import catalog_spec
    from swiftplan.planner.setup import RuntimeKnobs

    spec = catalog_spec("meta-llama/Llama-2-7b-hf")
    setup = replace(_setup("lora", True), precision="bf16", lora=LoraSetup(rank=16, targets=("all-linear",)))
    setup = replace(setup, runtime=RuntimeKnobs(ds_auto_buckets=False))
    off = zero3_gathered(spec, setup, prefetch=0)
    assert zero3_gathered(spec, setup, max_live=0) == off
    ahead = zero3_gathered(spec, setup)
    largest = largest_param_elements(spec)
    assert 1_000_000_000 <= ahead.base <= 1_000_000_000 + 50_000_000 + 2 * largest
    assert ahead.base > off.base + 50_000_000  # more than the one bucket counted before


def test_the_plan_counts_the_prefetch_once():
    """device_states takes the trace's most (prefetching included) as the gathered bytes, with no bucket beside
    it: bf16, 2 bytes an element, over two ranks."""
    from dataclasses import replace

    from swiftplan.planner.device_states import device_states
    from swiftplan.planner.model_catalog import catalog_spec
    from swiftplan.planner.setup import RuntimeKnobs

    spec = catalog_spec("meta-llama/Llama-2-7b-hf")
    setup = replace(_setup("full", True), precision="bf16", runtime=RuntimeKnobs(ds_auto_buckets=False))
    gathered = device_states(spec, setup, range(spec.num_layers), dp=2).gathered
    assert gathered == 2 * zero3_gathered(spec, setup).base
