"""Running DeepSpeed ZeRO-3 itself (0.19.8, its CPU accelerator with gloo, one process) on a tiny Llama and recording
what it holds gathered after every fetch of the third step (the first records DeepSpeed's trace): the parameters
`ZeroParamStatus.AVAILABLE` or `INFLIGHT` (prefetched: their gathered buffer is allocated when the all-gather is
launched), those below the persistence threshold left out, as they are never partitioned."""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from train_support import TINY_MODEL

from swiftplan.planner.setup import TrainSetup

PERSISTENCE = 100
"""stage3_param_persistence_threshold: the norms (64 elements) stay whole, every projection and adapter is
partitioned."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Gathered:
    """The most DeepSpeed held gathered at one fetch of a step, in elements."""

    base: int
    """Of the model's own weights (everything but lora_A/lora_B)."""
    total: int
    """Of every partitioned parameter, adapters included (the largest sum over the fetches)."""
    moment: str
    """Where `base` was first reached: forward, recompute (a forward fetch once backward began) or backward, and
    the module fetched, named as the planner names it (peft's base_model.model. prefix and .default dropped)."""


def tiny_config(
    tmp_path: Path, *, vocab: int, intermediate: int, layers: int = 2
) -> tuple[str, dict[str, Any]]:
    """The tiny Llama fixture with its vocabulary, MLP width and depth replaced, written to `tmp_path`."""
    config = json.loads(TINY_MODEL.read_text()) | {
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "num_hidden_layers": layers,
    }
    path = tmp_path / f"config_{vocab}_{intermediate}_{layers}.json"
    path.write_text(json.dumps(config))
    return str(path), config


def _module_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".default", "")


def deepspeed_gathered(path: str, setup: TrainSetup, monkeypatch, *, vocab: int, reuse: int = 0,  # type: ignore[no-untyped-def]
                       reentrant: bool = False, prefetch: int = 0, max_live: int = 1_000_000_000) -> Gathered:  # fmt: skip
    """Train three steps of `setup` under ZeRO-3 with `reuse` as stage3_max_reuse_distance, `prefetch` as
    stage3_prefetch_bucket_size (0: none) and `max_live` as stage3_max_live_parameters; what the third step held
    gathered or in flight at most (`reentrant`: checkpointing as the HF Trainer did before transformers 5)."""
    torch = pytest.importorskip("torch")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = (ZeroParamStatus.AVAILABLE, ZeroParamStatus.INFLIGHT)

    monkeypatch.setattr(sys.modules["deepspeed.comm.torch"], "build_shm_op", lambda: None)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    from swiftplan.executors.train.model import load_model, trainable_parameters

    model = load_model(path, setup, device=torch.device("cpu"), random_init=True, seed=0, vocab_size=vocab)
    if reentrant and setup.grad_ckpt:  # the HF Trainer's default before transformers 5 (LLaMA-Factory's too)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    zero = {"stage": 3, "stage3_param_persistence_threshold": PERSISTENCE, "stage3_max_reuse_distance": reuse,
            "stage3_prefetch_bucket_size": prefetch, "stage3_max_live_parameters": max_live}  # fmt: skip
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": zero, "zero_force_ds_cpu_optimizer": False}  # fmt: skip
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable_parameters(model),
                                      optimizer=optimizer, config=config)  # fmt: skip
    params = [(name, p) for name, p in engine.module.named_parameters() if not p.ds_persist]
    modules = {id(module): _module_name(name) for name, module in engine.module.named_modules()}
    coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
    fetch = coordinator.fetch_sub_module
    seen: dict[str, Any] = {"on": False, "backward": False, "base": 0, "total": 0, "moment": ""}

    def counting_fetch(module, forward):  # type: ignore[no-untyped-def]
        out = fetch(module, forward)
        if seen["on"]:
            seen["backward"] = seen["backward"] or not forward
            held = [(name, p.ds_numel) for name, p in params if p.ds_status in gathered]
            base = sum(numel for name, numel in held if ".lora_" not in name)
            seen["total"] = max(seen["total"], sum(numel for _, numel in held))
            if base > seen["base"]:
                where = "backward" if not forward else "recompute" if seen["backward"] else "forward"
                seen["base"], seen["moment"] = base, f"{where} {modules[id(module)]}"
        return out

    monkeypatch.setattr(coordinator, "fetch_sub_module", counting_fetch)
    ids = torch.randint(0, vocab, (2, 16))
    for step in range(3):
        seen["on"] = step == 2
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    engine.destroy()
    return Gathered(base=seen["base"], total=seen["total"], moment=seen["moment"])
