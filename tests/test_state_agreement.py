"""Planner and executor agree term by term: the train executor's real objects (the model it loads, the
optimizer it builds, the DeepSpeed engine it initialises from the rendered ds_config.json) hold each
per-parameter state in the dtype `states.state_dtypes` says, which is what `train_memory` counts.

The torch path runs here for every precision × method × optimizer the executor runs on CPU. The
DeepSpeed path needs `deepspeed` (pip install deepspeed==0.19.8; its ZeRO optimizers run on the CPU
accelerator with gloo) and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import os
import socket

import pytest
from train_support import TINY_MODEL

from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.planner.states import state_dtypes

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("release_process_group")


DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _model(setup: TrainSetup):
    from swiftplan.executors.train.model import load_model

    return load_model(
        str(TINY_MODEL), setup, device=torch.device("cpu"), random_init=True, seed=0, vocab_size=128
    )


def _one_step(model, optimizer) -> None:
    ids = torch.randint(0, 128, (2, 16))
    model(input_ids=ids, labels=ids).loss.float().backward()
    optimizer.step()


def _dtypes(tensors) -> set:
    return {t.dtype for t in tensors}


TORCH_SETUPS = [
    TrainSetup(method=method, precision=precision, optimizer=optimizer, grad_ckpt=False,
               lora=LoraSetup(rank=4, targets=("all-linear",), dropout=0.0) if method == "lora" else None)
    for method in ("full", "lora")
    for precision in ("bf16", "fp32", "amp-bf16")
    for optimizer in ("adamw", "sgd")
]  # fmt: skip


@pytest.mark.parametrize("setup", TORCH_SETUPS, ids=lambda s: f"{s.method}-{s.precision}-{s.optimizer}")
def test_plain_torch_holds_the_states_the_plan_counts(setup):
    from swiftplan.executors.train.model import build_optimizer, trainable_parameters

    planned = state_dtypes(setup)
    model = _model(setup)
    trainable = trainable_parameters(model)
    optimizer = build_optimizer(setup, trainable, lr=1e-3, weight_decay=0.0, device_type="cpu")
    _one_step(model, optimizer)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if setup.trains_adapters:
        assert _dtypes(trainable) == {DTYPE[planned.adapters]}
        assert _dtypes(frozen) == {DTYPE[planned.weights]}
    else:
        assert _dtypes(trainable) == {DTYPE[planned.weights]}
    assert _dtypes(p.grad for p in trainable) == {DTYPE[planned.gradients]}
    moments = [
        t for state in optimizer.state.values() for name, t in state.items() if name.startswith("exp_avg")
    ]
    if setup.optimizer == "adamw":
        assert moments and _dtypes(moments) == {DTYPE[planned.optimizer]}
    else:
        assert not moments  # SGD without momentum keeps no state
    assert planned.master is None  # plain torch keeps no master copy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ZERO_SETUPS = [
    TrainSetup(method=method, precision=precision, micro_batch=2, grad_accum=2, grad_ckpt=False,
               lora=LoraSetup(rank=4, targets=("all-linear",), dropout=0.0) if method == "lora" else None,
               parallel=Parallelism(zero=zero))
    for method in ("full", "lora")
    for precision in ("bf16", "amp-bf16")
    for zero in (1, 2, 3)
]  # fmt: skip


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed==0.19.8)"
)
@pytest.mark.parametrize(
    "setup", ZERO_SETUPS, ids=lambda s: f"{s.method}-{s.precision}-zero{s.parallel.zero}"
)
def test_deepspeed_holds_the_states_the_plan_counts(setup, monkeypatch):
    """The rendered ds_config.json, initialised by the executor's own DeepSpeedEngine, one process on CPU."""
    from swiftplan.executors.train.engine import DeepSpeedEngine
    from swiftplan.executors.train.launch import deepspeed_config
    from swiftplan.executors.train.model import build_optimizer, trainable_parameters

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import sys

    import deepspeed
    import deepspeed.comm.torch  # noqa: F401

    # its shared-memory collectives are a C++ extension built on first use (~1 min); one process needs none
    monkeypatch.setattr(sys.modules["deepspeed.comm.torch"], "build_shm_op", lambda: None)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    planned = state_dtypes(setup)
    config = deepspeed_config(setup, world_size=1, lr=1e-3, weight_decay=0.0, max_grad_norm=1.0)
    config.pop(
        "optimizer"
    )  # the client optimizer: DeepSpeed's CPU Adam would JIT-compile; dtypes are the same
    config["zero_force_ds_cpu_optimizer"] = False
    model = _model(setup)
    optimizer = build_optimizer(
        setup, trainable_parameters(model), lr=1e-3, weight_decay=0.0, device_type="cpu"
    )
    engine = DeepSpeedEngine(model, optimizer, None, config=config, device=torch.device("cpu"))
    ids = torch.randint(0, 128, (2, 16))
    for last in (False, True):
        engine.micro_step(
            {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)},
            last=last,
            num_items=2 * 15 * 2,
        )
    module_params = list(engine.module.parameters())
    held = [getattr(p, "ds_tensor", p) for p in module_params]
    assert _dtypes(held) == {
        DTYPE[planned.weights]
    }  # the whole module, adapters included, cast to the half dtype
    zero = engine.engine.optimizer
    masters = getattr(zero, "single_partition_of_fp32_groups", None) or zero.fp32_partitioned_groups_flat
    assert planned.master is not None and _dtypes(masters) == {DTYPE[planned.master]}
    inner = zero.optimizer
    moments = [t for state in inner.state.values() for name, t in state.items() if name.startswith("exp_avg")]
    assert moments and _dtypes(moments) == {DTYPE[planned.optimizer]}
    os.environ.pop("DS_ACCELERATOR", None)
