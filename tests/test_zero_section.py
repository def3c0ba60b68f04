"""One `zero_optimization` section for every DeepSpeed JSON swiftplan renders (its own launch and the
HF-Trainer engines), carrying the bucket sizes the plan counted when it counts them."""

from __future__ import annotations

from dataclasses import replace

from swiftplan.executors.train.launch import deepspeed_config
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
    plain = replace(TrainSetup(), parallel=Parallelism(zero=3))
    assert (
        "stage3_prefetch_bucket_size"
        not in deepspeed_config(plain, world_size=2, lr=1e-4, weight_decay=0.0, max_grad_norm=1.0)[
            "zero_optimization"
        ]
    )
