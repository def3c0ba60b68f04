"""DeepSpeed ZeRO's optimizer step, per rank: what `train_memory` counts as the step's temporaries is what
DeepSpeed allocates while it steps.

DeepSpeed (0.19.8, its CPU accelerator with gloo, one process) runs a real step of the train executor's
engine on a tiny model while `MemoryTracker` counts every storage created inside `optimizer.step()` (the
persistent states are forgotten first): the peak is one flat partition's 16-bit flatten + fp32 gradient
copy, plus foreach AdamW's sqrt of that partition — per param group at ZeRO-1/2, per sub-group at
ZeRO-3 (deepspeed/runtime/zero/stage3.py `step`, stage_1_and_2.py `step`). The planner-level tests check
the rule on Qwen2.5-7B under ZeRO-3 over 4 ranks, the set-up of ms-swift's published rows ms-114/129/153.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import socket
import sys

import pytest
from train_support import TINY_MODEL

from swiftplan.planner.architecture import largest_param_elements
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.runtime_terms import (
    DEEPSPEED_SUB_GROUP_ELEMENTS,
    adamw_impl_temporary_bytes,
    zero_step_group_elements,
    zero_step_temporary_bytes,
)
from swiftplan.planner.setup import Parallelism, RuntimeKnobs, TrainSetup
from swiftplan.planner.train_memory import train_memory

QWEN7B = catalog_spec("Qwen/Qwen2.5-7B-Instruct")


pytestmark = pytest.mark.usefixtures("release_process_group")


TINY_SUB_GROUP = 40_000
"""Small enough that the tiny model's 139,584 parameters split into three ZeRO-3 sub-groups."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _measured_step(zero: int, impl: str, monkeypatch) -> tuple[int, list[int], int]:  # type: ignore[no-untyped-def]
    """(peak bytes created inside the second ZeRO step, fp32 partition sizes, largest parameter)."""
    torch = pytest.importorskip("torch")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401

    monkeypatch.setattr(sys.modules["deepspeed.comm.torch"], "build_shm_op", lambda: None)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    from swiftplan.executors.trace_memory import MemoryTracker
    from swiftplan.executors.train.engine import DeepSpeedEngine
    from swiftplan.executors.train.launch import deepspeed_config
    from swiftplan.executors.train.model import load_model, trainable_parameters

    setup = TrainSetup(method="full", precision="bf16", micro_batch=2, grad_ckpt=False,
                       parallel=Parallelism(zero=zero))  # fmt: skip
    config = deepspeed_config(setup, world_size=1, lr=1e-3, weight_decay=0.0, max_grad_norm=1.0)
    config.pop("optimizer")  # the client optimizer (DeepSpeed's CPU Adam would JIT-compile)
    config["zero_force_ds_cpu_optimizer"] = False
    if zero == 3:
        config["zero_optimization"]["sub_group_size"] = TINY_SUB_GROUP
    model = load_model(str(TINY_MODEL), setup, device=torch.device("cpu"), random_init=True, seed=0,
                       vocab_size=128)  # fmt: skip
    largest = max(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3, foreach=impl == "foreach",
                                  fused=True if impl == "fused" else None)  # fmt: skip
    engine = DeepSpeedEngine(model, optimizer, None, config=config, device=torch.device("cpu"))
    zero_optimizer = engine.engine.optimizer
    real_step, measured = zero_optimizer.step, {}

    def step(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not measured.get("armed"):
            return real_step(
                *args, **kwargs
            )  # the first step creates the Adam moments (state, not temporaries)
        gc.collect()
        with MemoryTracker(round_bytes=1) as tracker:
            tracker.forget(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
            tracker.start_measuring()
            out = real_step(*args, **kwargs)
            measured["peak"] = tracker.peak_bytes
        return out

    monkeypatch.setattr(zero_optimizer, "step", step)
    ids = torch.randint(0, 128, (2, 16))
    for armed in (False, True):
        measured["armed"] = armed
        engine.micro_step({"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)},
                          last=True, num_items=2 * 15)  # fmt: skip
    flat = (
        getattr(zero_optimizer, "single_partition_of_fp32_groups", None)
        or zero_optimizer.fp32_partitioned_groups_flat
    )
    return measured["peak"], [t.numel() for t in flat], largest


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed==0.19.8)"
)
@pytest.mark.parametrize("impl", ["fused", "foreach"])
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_zero_step_temporaries_are_one_partitions(zero: int, impl: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    peak, groups, largest = _measured_step(zero, impl, monkeypatch)
    if zero == 3:  # sub-groups: several, each below sub_group_size + one parameter
        assert len(groups) > 1
        bound = zero_step_group_elements(stage=3, partition=sum(groups), largest_partition=largest,
                                         sub_group=TINY_SUB_GROUP)  # fmt: skip
        assert max(groups) <= bound < sum(groups)
    group = max(groups)
    knobs = RuntimeKnobs(optimizer_impl=impl)
    planned = zero_step_temporary_bytes(
        group=group, grad_bytes=2, master_bytes=4,
        optimizer_temp=adamw_impl_temporary_bytes(knobs, trainable=group, largest=group, state_bytes=4),
    )  # fmt: skip
    assert planned == group * (8 if impl == "foreach" else 6)
    # the rest are 0-d scalars of the norm and clip (a few bytes each)
    assert planned <= peak <= planned + 64


def _zero3(seq_len: int, impl: str = "foreach", dp: int = 4) -> TrainSetup:
    return TrainSetup(method="full", precision="bf16", seq_len=seq_len, grad_ckpt=True, attention="flash",
                      parallel=Parallelism(zero=3),
                      runtime=RuntimeKnobs(optimizer_impl=impl, loss="fused_linear", ds_buckets=True))  # fmt: skip


def test_zero3_step_counts_one_sub_group_per_rank_not_the_model() -> None:
    """Qwen2.5-7B, ZeRO-3 over 4 ranks, foreach AdamW (ms-swift's rows ms-114/129/153): the step holds
    8 B × one sub-group (the flat copy's fp32 gradient and foreach's sqrt), ~9.1 GB, where the model
    once counted 4 B × all 7.6 B parameters (30.5 GB) on every rank."""
    memory = train_memory(QWEN7B, _zero3(8192), world_size=4)
    n = memory.trainable_params
    group = min(-(-n // 4), DEEPSPEED_SUB_GROUP_ELEMENTS + -(-largest_param_elements(QWEN7B) // 4))
    assert memory.device.peak_phase == "optimizer step"
    assert memory.device.transient == 8 * group < 4 * n // 3


def test_zero_step_temporaries_shrink_with_dp() -> None:
    """ZeRO-1/2 step the rank's partition: its temporaries divide by dp (fused: 6 B × N / dp)."""
    spec = catalog_spec("Qwen/Qwen2.5-0.5B")
    for stage in (1, 2):
        setup = dataclasses.replace(_zero3(512, "fused"), parallel=Parallelism(zero=stage))
        one, four = (train_memory(spec, setup, world_size=w) for w in (1, 4))
        n = one.trainable_params
        assert one.device.transient == 6 * n or one.device.peak_phase != "optimizer step"
        assert zero_step_group_elements(stage=stage, partition=-(-n // 4), largest_partition=0) == -(-n // 4)
        assert four.device.peak_allocated < one.device.peak_allocated
