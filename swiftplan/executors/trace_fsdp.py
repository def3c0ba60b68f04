"""FSDP2 on a fake process group: torch's own `fully_shard` runs one rank of N over the tracer's fake tensors.

torch's fake process group (`torch.testing._internal.distributed.fake_pg`, backend "fake") lets one process
play rank 0 of N: every collective returns at once without communicating, so all-gather outputs are
allocated but not filled, which is all a memory trace needs. The model is built as `trace.training_rig`
builds it (meta device, then fake tensors; LoRA through peft), then sharded as torchtune's `shard_model`
does (pytorch/torchtune @ bd2a0fc torchtune/training/_distributed.py): `fully_shard` on every decoder block,
then on the root (embedding, final norm, LM head) — full_shard reshards a block after its forward,
shard_grad_op keeps it gathered until its backward (reshard_after_forward=False), hybrid_shard shards over a
group of `shard_group` ranks and replicates across groups (a 2-D mesh, HSDP); FSDP2 itself keeps the root
gathered from forward to backward (torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_state.py
`_lazy_init`). CPU offload is `CPUOffloadPolicy`.

What the plain tracker would get wrong here, and what `FsdpTracker` does instead:

- parameters, gradients and optimizer state are DTensors, wrappers without storage of their own: their
  local shard is counted;
- FSDP2 frees and re-allocates a gathered parameter by resizing its storage (`_fsdp_param.free_storage`,
  `alloc_storage`), which no op reports: both are patched to report the new size, and these storages and the
  all-gather buffers are counted as "gathered" (the planner's FSDP gathered units), not activations;
- a unit's whole gradients and the reduce-scatter input they are copied to are "gradients" (with the shards);
- with CPU offload the trace still runs on the CPU, where FSDP's host-to-device and device-to-host copies
  are no-ops: the shards, their gradients and the optimizer step are taken out of the count (host memory),
  and each shard's copy to the device before its all-gather is made a fresh tensor, as on a GPU.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from swiftplan.executors.trace import (
    LossName,
    Method,
    OptimizerName,
    Precision,
    TraceResult,
    TrainingRig,
    _build_model,
    _classify_optimizer_state,
    _make_optimizer,
    _numerics_notes,
    _result,
)
from swiftplan.executors.trace_features import TraceFeatures, decoder_layers, offload_decoder
from swiftplan.executors.trace_fsdp_tracker import GATHERED, FsdpTracker
from swiftplan.executors.trace_memory import CUDA_BLOCK_BYTES
from swiftplan.executors.trace_model import DTYPES, lora_options, to_fake
from swiftplan.executors.trace_patches import cuda_like_kernels, fake_safe_optimizers, unpacked_inputs
from swiftplan.executors.trace_session import TRACE_DEVICE, hook_logits, register_model, torch_linear

Sharding = Literal["full_shard", "shard_grad_op", "hybrid_shard"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FsdpLayout:
    """How the traced rank's model is sharded."""

    world_size: int
    """Ranks of the fake process group (the traced one is rank 0)."""
    sharding: Sharding = "full_shard"
    """full_shard | shard_grad_op (reshard_after_forward=False) | hybrid_shard (HSDP)."""
    shard_group: int = 0
    """hybrid_shard: ranks per shard group (0: all of them, as the planner reads it)."""
    cpu_offload: bool = False
    """CPUOffloadPolicy: shards, gradients and optimizer state in host memory, stepped on the CPU."""

    def __post_init__(self) -> None:
        if self.world_size < 2:
            raise ValueError(f"FSDP needs a world size of at least 2, got {self.world_size}")
        if self.sharding not in ("full_shard", "shard_grad_op", "hybrid_shard"):
            raise ValueError(f"unknown FSDP sharding {self.sharding!r}")
        if self.world_size % self.shard_ranks:
            raise ValueError(
                f"hybrid_shard: the shard group ({self.shard_ranks}) must divide the world size ({self.world_size})"
            )

    @property
    def shard_ranks(self) -> int:
        """Ranks a parameter is sharded over."""
        if self.sharding == "hybrid_shard" and self.shard_group:
            return min(self.shard_group, self.world_size)
        return self.world_size


@dataclass(frozen=True, kw_only=True, slots=True)
class FsdpTraceResult:
    """One traced FSDP training step of rank 0."""

    trace: TraceResult
    """The step as the other tracers report it; gathered parameters are not in its `at_peak`."""
    gathered_at_peak: int
    """Bytes of gathered (unsharded) parameters alive at the peak."""
    phase_gathered: dict[str, int]
    """Gathered bytes alive at each phase's peak."""


# -- FSDP on the fake process group --------------------------------------------------------------------


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """This process as rank 0 of `world_size` on torch's fake process group (collectives do nothing)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError(
            "a default process group already exists in this process; FSDP cannot be traced here"
        )
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _mesh(layout: FsdpLayout) -> Any:
    """The device mesh: 1-D over all ranks, or (replicate, shard) for hybrid_shard. Built outside the fake
    mode (the mesh reads its rank map)."""
    from torch.distributed.device_mesh import init_device_mesh

    if layout.sharding == "hybrid_shard":
        shape = (layout.world_size // layout.shard_ranks, layout.shard_ranks)
        return init_device_mesh(TRACE_DEVICE, shape, mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(TRACE_DEVICE, (layout.world_size,))


def shard_model(model: nn.Module, layout: FsdpLayout, mesh: Any, notes: list[str]) -> None:
    """`fully_shard` every decoder block, then the root, as torchtune's shard_model does."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    offload = CPUOffloadPolicy(pin_memory=False) if layout.cpu_offload else OffloadPolicy()
    reshard = layout.sharding != "shard_grad_op"
    layers = decoder_layers(model)
    for block in layers:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
    fully_shard(model, mesh=mesh, offload_policy=offload)
    how = {
        "full_shard": "resharded after forward",
        "shard_grad_op": "kept gathered from forward to backward (reshard_after_forward=False)",
        "hybrid_shard": f"HSDP: sharded over {layout.shard_ranks} ranks, replicated across "
        f"{layout.world_size // layout.shard_ranks} groups",
    }[layout.sharding]
    notes.append(
        f"FSDP2 fully_shard on a fake process group, rank 0 of {layout.world_size}: {len(layers)} decoder "
        f"blocks and the root (embedding, final norm, LM head; gathered from forward to backward); blocks {how}"
        + ("; CPUOffloadPolicy: shards, gradients and optimizer step in host memory (not counted)" if layout.cpu_offload else "")
    )  # fmt: skip


@contextlib.contextmanager
def _fsdp_patches(tracker: FsdpTracker, *, cpu_offload: bool) -> Iterator[None]:
    """FSDP2's storage resizes reported to the tracker, its all-gather buffers "gathered", the gradients it
    reduces (whole, then copied to the reduce-scatter input) "gradients"; with CPU offload, each shard's
    host-to-device copy a fresh tensor (on the CPU `.to(device)` returns the shard itself)."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage
    inputs: Any = _fsdp_param.FSDPParam.__dict__["all_gather_inputs"]  # the property
    gather, reduce = _fsdp_param_group.foreach_all_gather, _fsdp_param_group.foreach_reduce

    def alloc_storage(tensor: torch.Tensor) -> None:
        alloc(tensor)
        tracker.resized(tensor, gathered=True)

    def free_storage(tensor: torch.Tensor) -> None:
        free(tensor)
        tracker.resized(tensor, gathered=True)

    def foreach_all_gather(*args: Any, **kwargs: Any) -> Any:
        with tracker.category(GATHERED):  # the flat buffer the collective fills (offloaded: the copies in)
            return gather(*args, **kwargs)

    def foreach_reduce(
        fsdp_params: Any, unsharded_grads: list[torch.Tensor], *args: Any, **kwargs: Any
    ) -> Any:
        tracker.classify(
            unsharded_grads, "gradients"
        )  # a unit's whole gradients, and their reduce-scatter input
        with tracker.category("gradients"):
            return reduce(fsdp_params, unsharded_grads, *args, **kwargs)

    def all_gather_inputs(self: Any) -> list[torch.Tensor]:
        tensors = inputs.fget(self)
        if self.offload_to_cpu and self.sharded_state == _fsdp_param.ShardedState.SHARDED:
            return [t.clone() for t in tensors]  # the copy to the device
        return tensors

    patches: list[tuple[Any, str, Any]] = [
        (_fsdp_param, "alloc_storage", alloc_storage),
        (_fsdp_param_group, "alloc_storage", alloc_storage),
        (_fsdp_param, "free_storage", free_storage),
        (_fsdp_param_group, "foreach_all_gather", foreach_all_gather),
        (_fsdp_param_group, "foreach_reduce", foreach_reduce),
    ]
    if cpu_offload:
        patches.append((_fsdp_param.FSDPParam, "all_gather_inputs", property(all_gather_inputs)))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


# -- the traced step -----------------------------------------------------------------------------------


def _step(rig: TrainingRig, tracker: FsdpTracker, *, cpu_offload: bool) -> None:
    """One training step, each part in its phase (`TrainingRig.step`); offloaded, the step runs on the host."""
    with tracker.in_phase("forward"):
        loss = rig.forward()
    with tracker.in_phase("backward"), tracker.category("logits"):
        loss.backward()
    del loss
    host = tracker.on_host() if cpu_offload else contextlib.nullcontext()
    with tracker.in_phase("optimizer"), host:
        rig.optimizer.step()
        _classify_optimizer_state(tracker, rig.optimizer)
        rig.optimizer.zero_grad(set_to_none=True)


def _gradient_hook(tracker: FsdpTracker, *, cpu_offload: bool) -> Any:
    """FSDP2 runs a sharded parameter's post-accumulate-grad hooks once its reduce-scattered gradient is
    set: "gradients" on the device, or copied to the host (offload) and no longer counted."""

    def hook(p: torch.Tensor) -> None:
        if cpu_offload:
            tracker.forget([p.grad])
        else:
            tracker.classify([p.grad], "gradients")

    return hook


def _hook_unsharded_gradients(model: nn.Module, tracker: FsdpTracker) -> None:
    """Autograd accumulates into the unsharded parameters FSDP computes with: their `.grad` is "gradients"
    (the LM head's is held whole until the root unit reduces at the end of backward)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if isinstance(module, FSDPModule) else None
        for fsdp_param in group.fsdp_params if group else ():
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if unsharded is not None and unsharded.requires_grad:
                unsharded.register_post_accumulate_grad_hook(
                    lambda p: tracker.classify([p.grad], "gradients")
                )


def trace_fsdp_training(
    hf_config: dict[str, Any],
    *,
    layout: FsdpLayout,
    method: Method,
    precision: Precision,
    lora_rank: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] | Literal["all-linear"] = ("q_proj", "v_proj"),
    lora_dora: bool = False,
    optimizer: OptimizerName = "adamw",
    batch: int = 1,
    seq: int = 512,
    grad_ckpt: bool = False,
    attn_implementation: str = "sdpa",
    steps: int = 2,
    round_bytes: int = CUDA_BLOCK_BYTES,
    loss: LossName = "full",
    loss_chunks: int = 8,
    features: TraceFeatures | None = None,
    padded: bool = False,
) -> FsdpTraceResult:
    """Trace `steps` training steps of rank 0 under FSDP2 (`layout`) and measure the last one.

    The set-up's arguments mean what they mean for `trace.trace_training`; the precision is the model's
    (bf16, fp16 or fp32: FSDP2's MixedPrecisionPolicy is not traced, so AMP is refused).
    """
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(
            f"FSDP is traced with a bf16, fp16 or fp32 model, not {precision!r} (no MixedPrecisionPolicy)"
        )
    if steps < 1 or batch < 1 or seq < 2:
        raise ValueError("steps >= 1, batch >= 1 and seq >= 2 are required")
    started = time.perf_counter()
    features = features or TraceFeatures()
    notes: list[str] = []
    lora = lora_options(
        rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets, dora=lora_dora
    )
    model = _build_model(hf_config, method=method, dtype=DTYPES[precision], lora=lora, grad_ckpt=grad_ckpt,
                         attn_implementation=attn_implementation, features=features, notes=notes)  # fmt: skip
    notes += _numerics_notes(precision, optimizer)
    calls: Counter[str] = Counter()
    tracker = FsdpTracker(round_bytes=round_bytes)
    with _sharded_session(model, layout, tracker, calls, notes):
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.register_post_accumulate_grad_hook(_gradient_hook(tracker, cpu_offload=layout.cpu_offload))
        if features.activation_offload:
            offload_decoder(model, tracker, notes)
        rig = TrainingRig(model=model, tracker=tracker, optimizer=_make_optimizer(optimizer, trainable), batch=batch,
                          seq=seq, autocast_dtype=None, notes=notes, calls=calls, loss=loss, loss_chunks=loss_chunks,
                          padded=padded)  # fmt: skip
        for step in range(steps):
            if step == 1:  # FSDP made its unsharded parameters in the first step and keeps them
                _hook_unsharded_gradients(model, tracker)
            if step == steps - 1:
                tracker.start_measuring()
            _step(rig, tracker, cpu_offload=layout.cpu_offload)
        tracker.stop_measuring()
    trace = _result(tracker, model, started, notes, calls, training=True)
    return FsdpTraceResult(
        trace=trace, gathered_at_peak=tracker.gathered_at_peak(), phase_gathered=tracker.phase_gathered()
    )


@contextlib.contextmanager
def _sharded_session(
    model: nn.Module, layout: FsdpLayout, tracker: FsdpTracker, calls: Counter[str], notes: list[str]
) -> Iterator[None]:
    """`trace_session.fake_session` for FSDP: the meta model made fake and sharded on the fake process group
    (before tracking: the unsharded originals are gone when it starts), then the block under fake mode,
    tracking, the CUDA-path patches and FSDP's; offloaded shards are host memory."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    to_fake(model, mode, torch.device(TRACE_DEVICE))
    with fake_process_group(layout.world_size):
        mesh = _mesh(layout)
        with mode:
            shard_model(model, layout, mesh, notes)
        with torch_linear(), mode, tracker, fake_safe_optimizers(), unpacked_inputs(), cuda_like_kernels(calls), \
                _fsdp_patches(tracker, cpu_offload=layout.cpu_offload):  # fmt: skip
            register_model(tracker, model)
            if layout.cpu_offload:
                tracker.forget(model.parameters())
            hook_logits(tracker, model)
            model.train()
            yield
