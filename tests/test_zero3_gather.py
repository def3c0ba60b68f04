"""ZeRO-3's gathered parameters over a LoRA step, measured on DeepSpeed itself (0.19.8, its CPU accelerator
with gloo, one process): with checkpointing, a block's frozen base stays gathered through its recompute until
the block's backward, so the most gathered at once is the whole block (`zero3_recompute_held_elements`), not
the largest single tensor; without checkpointing each projection is freed after use.

The tiny Llama has an MLP wide enough that a block outweighs the LM head, and sets no prefetch and no reuse
distance, so the count is the recompute's alone: the parameters `ZeroParamStatus.AVAILABLE` after every fetch
of the third step (the first records DeepSpeed's trace), vectors below the persistence threshold left out.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from dataclasses import replace

import pytest
from train_support import TINY_MODEL

from swiftplan.planner.architecture import largest_param_elements, layer_linears
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.runtime_terms import zero3_live_parameter_bytes, zero3_recompute_held_elements
from swiftplan.planner.setup import LoraSetup, Parallelism, RuntimeKnobs, TrainSetup

pytestmark = [
    pytest.mark.usefixtures("release_process_group"),
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="needs deepspeed (pip install deepspeed==0.19.8)",
    ),
]
RANK = 4
VOCAB = 512
PERSISTENCE = 100
"""stage3_param_persistence_threshold: the norms (64 elements) stay whole, every projection is partitioned."""


def _config(tmp_path) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    config = json.loads(TINY_MODEL.read_text()) | {"intermediate_size": 512, "vocab_size": VOCAB}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path), config


def _setup(grad_ckpt: bool) -> TrainSetup:
    return TrainSetup(method="lora", precision="fp32", micro_batch=2, grad_ckpt=grad_ckpt,
                      lora=LoraSetup(rank=RANK, targets=("all-linear",)), parallel=Parallelism(zero=3))  # fmt: skip


def _most_gathered(path: str, setup: TrainSetup, monkeypatch, *, reentrant: bool = False) -> int:  # type: ignore[no-untyped-def]
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

    monkeypatch.setattr(sys.modules["deepspeed.comm.torch"], "build_shm_op", lambda: None)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    from swiftplan.executors.train.model import load_model, trainable_parameters

    model = load_model(path, setup, device=torch.device("cpu"), random_init=True, seed=0, vocab_size=VOCAB)
    if reentrant and setup.grad_ckpt:  # the HF Trainer's default before transformers 5 (LLaMA-Factory's too)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    zero = {"stage": 3, "stage3_param_persistence_threshold": PERSISTENCE, "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 0, "stage3_max_live_parameters": 1_000_000_000}  # fmt: skip
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": zero, "zero_force_ds_cpu_optimizer": False}  # fmt: skip
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable_parameters(model),
                                      optimizer=optimizer, config=config)  # fmt: skip
    params = list(engine.module.parameters())
    coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
    fetch, seen = coordinator.fetch_sub_module, {"on": False, "most": 0}

    def counting_fetch(module, forward):  # type: ignore[no-untyped-def]
        out = fetch(module, forward)
        if seen["on"]:
            gathered = sum(
                p.ds_numel for p in params if p.ds_status == ZeroParamStatus.AVAILABLE and not p.ds_persist
            )
            seen["most"] = max(seen["most"], gathered)
        return out

    monkeypatch.setattr(coordinator, "fetch_sub_module", counting_fetch)
    ids = torch.randint(0, VOCAB, (2, 16))
    for step in range(3):
        seen["on"] = step == 2
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    return int(seen["most"])


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_a_checkpointed_lora_block_is_gathered_whole_through_its_recompute(reentrant, tmp_path, monkeypatch):
    path, config = _config(tmp_path)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(grad_ckpt=True)
    held = zero3_recompute_held_elements(spec, setup, range(spec.num_layers))
    assert held == sum(lin.in_features * lin.out_features for lin in layer_linears(spec, 0))
    assert held > largest_param_elements(spec)  # the block outweighs the LM head here
    measured = _most_gathered(path, setup, monkeypatch, reentrant=reentrant)
    down = layer_linears(spec, 0)[-1]  # the recompute ends on down_proj, whose adapters are gathered then too
    assert measured == held + RANK * (down.in_features + down.out_features)
    planned = zero3_live_parameter_bytes(spec, RuntimeKnobs(prefetch_bucket_elements=0, ds_auto_buckets=False), weight_bytes=1, tp=1,
                                         held_elements=held)  # fmt: skip
    assert planned == held


def test_without_checkpointing_each_projection_is_freed_after_use(tmp_path, monkeypatch):
    path, config = _config(tmp_path)
    spec, setup = spec_from_hf_config(config, name="tiny"), _setup(grad_ckpt=False)
    assert zero3_recompute_held_elements(spec, setup, range(spec.num_layers)) == 0
    measured = _most_gathered(path, setup, monkeypatch)
    largest = largest_param_elements(spec)
    assert largest <= measured <= largest + RANK * (512 + 64)  # one tensor and an adapter pair


def test_the_held_block_counts_a_4bit_base_packed_and_only_under_deepspeed_zero3():
    from swiftplan.planner.model_catalog import catalog_spec

    spec = catalog_spec("meta-llama/Llama-2-70b-hf")
    lora = replace(_setup(grad_ckpt=True), precision="bf16")
    full = sum(lin.count * lin.in_features * lin.out_features for lin in layer_linears(spec, 0))
    layers = range(spec.num_layers)
    assert zero3_recompute_held_elements(spec, lora, layers) == full
    qlora = replace(lora, method="qlora", quant="nf4")
    assert zero3_recompute_held_elements(spec, qlora, layers) == full // 4
    for other in (replace(lora, parallel=Parallelism(zero=2)), replace(lora, method="full", lora=None),
                  replace(lora, parallel=Parallelism(), runtime=RuntimeKnobs(fsdp="fsdp2"))):  # fmt: skip
        assert zero3_recompute_held_elements(spec, other, layers) == 0
