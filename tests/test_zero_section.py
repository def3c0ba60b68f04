"""One `zero_optimization` section for every DeepSpeed JSON swiftplan renders (its own launch and the
HF-Trainer engines), carrying the bucket sizes the plan counted when it counts them."""

from __future__ import annotations

from dataclasses import replace

from swiftplan.executors.train.launch import deepspeed_config, fill_auto_sizes
from swiftplan.executors.train_engines.common import hf_deepspeed_config
from swiftplan.planner.setup import Parallelism, RuntimeKnobs, TrainSetup


def test_the_launch_and_the_engines_render_the_same_zero_section():
    for zero, offload, buckets in ((1, "none", False), (2, "optimizer", True), (3, "optimizer+params", True)):
        setup = TrainSetup(
            parallel=Parallelism(zero=zero, offload=offload), runtime=RuntimeKnobs(ds_buckets=buckets)
        )
        ours = deepspeed_config(setup, world_size=2, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)
        theirs = hf_deepspeed_config(setup)
        assert theirs is not None and ours["zero_optimization"] == theirs["zero_optimization"]
        assert ("reduce_bucket_size" in ours["zero_optimization"]) is buckets
    uncounted = replace(TrainSetup(runtime=RuntimeKnobs(ds_buckets=False)), parallel=Parallelism(zero=3))
    assert (
        "stage3_prefetch_bucket_size"
        not in deepspeed_config(uncounted, world_size=2, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)[
            "zero_optimization"
        ]
    )
    default = deepspeed_config(replace(TrainSetup(), parallel=Parallelism(zero=3)), world_size=2, lr=1e-4,
                               weight_decay=0.0, max_grad_norm=1.0)["zero_optimization"]  # fmt: skip
    assert default["stage3_prefetch_bucket_size"] == "auto"  # what the plan counted, filled by the worker


def test_auto_zero3_sizes_are_left_to_the_trainer_and_filled_as_it_fills_them():
    """A plan with ds_auto_buckets writes "auto" as LLaMA-Factory's ds_z3_config.json does; swiftplan's own
    worker fills them as transformers' HfTrainerDeepSpeedConfig does, and DeepSpeed's own config model
    accepts the result."""
    from types import SimpleNamespace

    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import LlamaConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    knobs = RuntimeKnobs(ds_buckets=True, ds_auto_buckets=True, ds_overlap_comm=False)
    setup = TrainSetup(parallel=Parallelism(zero=3), runtime=knobs)
    config = hf_deepspeed_config(setup)
    assert config is not None
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == "auto"
    assert zero["overlap_comm"] is False
    theirs = HfTrainerDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": dict(zero)})
    theirs.trainer_config_finalize(SimpleNamespace(get_warmup_steps=lambda steps: 0),
                                   SimpleNamespace(config=LlamaConfig(hidden_size=96)), 10)  # fmt: skip
    ours = fill_auto_sizes({"zero_optimization": zero}, 96)["zero_optimization"]
    assert ours == theirs.config["zero_optimization"]
    parsed = DeepSpeedZeroConfig(**ours)
    assert (parsed.reduce_bucket_size, parsed.prefetch_bucket_size) == (96 * 96, int(0.9 * 96 * 96))
    zero2 = replace(setup, parallel=Parallelism(zero=2))
    assert deepspeed_config(zero2, world_size=2, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)[
        "zero_optimization"]["reduce_bucket_size"] == 500_000_000  # fmt: skip


def test_the_planned_reuse_distance_is_the_one_deepspeed_reads():
    """stage3_max_reuse_distance is rendered as planned (axolotl's 0; DeepSpeed's 1e9, which LLaMA-Factory's and
    ms-swift's ZeRO-3 configs also set), by the launch and the engines alike, and DeepSpeed's own config model
    reads back the distance the planner's window used (`planner/zero3_trace.py`)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for reuse in (0, 1_000_000_000):
        setup = TrainSetup(parallel=Parallelism(zero=3), runtime=RuntimeKnobs(max_reuse_distance=reuse))
        ours = deepspeed_config(setup, world_size=2, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)
        theirs = hf_deepspeed_config(setup)
        assert theirs is not None and ours["zero_optimization"] == theirs["zero_optimization"]
        filled = fill_auto_sizes(ours, 96)["zero_optimization"]
        assert DeepSpeedZeroConfig(**filled).max_reuse_distance == reuse
