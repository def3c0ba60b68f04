"""Runtime features the tracer runs on the real model: selective activation checkpointing and activation
offloading (planner/runtime_features.py models both).

- `checkpoint_every_n_layers`: transformers' own `every_n_layers` (the first block of each k);
- `checkpoint_every`: torchtune's selective layer checkpointing — every k-th decoder block (1-based position
  a multiple of k) wrapped in torch's own `checkpoint_wrapper` (NO_REENTRANT, the wrapper torchtune uses;
  pytorch/torchtune @ bd2a0fc torchtune/training/activations.py), the others left as they are.
- `offload_saved_tensors`: torchtune's OffloadActivations rule (pytorch/torchtune @ bd2a0fc
  torchtune/training/_activation_offloading.py: tensors of at least 1024 bytes that are not parameters,
  the last 5 kept on the device until backward starts, and in backward a node's tensors kept until the
  next node's are brought back) with torch's own host copy (`torch.autograd.graph.save_on_cpu`'s pack and
  unpack). The trace runs on the CPU, so the host copies are taken out of the count (`MemoryTracker.forget`)
  and each tensor brought back is a fresh device copy.
- `OptimizerInBackward`: torchtune's optimizer step fused into backward (pytorch/torchtune @ bd2a0fc
  torchtune/modules/optim.py OptimizerInBackward, used by recipes/full_finetune_single_device.py when
  optimizer_in_bwd: True): one optimizer per parameter, stepped from torch's post-accumulate-grad hook, which
  then sets the gradient to None, so one gradient is alive at a time; `step()` after backward does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swiftplan.executors.trace_memory import MemoryTracker

MIN_OFFLOAD_BYTES = 1024
"""torchtune OffloadActivations(min_offload_size=1024)."""
FWD_STASH = 5
"""torchtune OffloadActivations(max_fwd_stash_size=5)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceFeatures:
    """Runtime features the traced steps run (the RuntimeKnobs of the same names)."""

    ckpt_every: int = 1
    """With checkpointing: every k-th block only."""
    ckpt_position: str = "first"
    """first: transformers' every_n_layers; last: torchtune's rule."""
    activation_offload: bool = False
    """The decoder's saved tensors to host memory."""
    adapter_dtype: str = "fp32"
    """LoRA adapters in fp32 (peft's default upcast), in the model dtype (autocast_adapter_dtype=False), or
    kbit-bf16: fp32, cast to bf16 after LoRA on a bitsandbytes base (`trace_quant.QuantBase.cast_trainable`)."""
    optimizer_in_backward: bool = False
    """Each parameter stepped and its gradient freed in backward (`OptimizerInBackward`)."""
    modules_to_save: tuple[str, ...] = ()
    """LoRA: modules peft trains in full beside the adapters (LoraConfig(modules_to_save=...))."""


def checkpoint_selected(model: Any, features: TraceFeatures, notes: list[str], *, after_lora: bool) -> None:
    """Selective checkpointing where it applies: transformers' every_n_layers on the transformers model
    before peft wraps it, torchtune's rule on the blocks after."""
    if features.ckpt_every == 1:
        return
    if features.ckpt_position == "first" and not after_lora:
        checkpoint_every_n_layers(model, features.ckpt_every, notes)
    elif features.ckpt_position == "last" and after_lora:
        checkpoint_every(model, features.ckpt_every, notes)


def _layers_name(model: nn.Module) -> str:
    """The qualified name of the transformers model's list of decoder blocks (`...model.layers`)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module):
            return name
    raise ValueError("no decoder layer list (a ModuleList named 'layers') in the model")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformers model's list of decoder blocks (under peft too)."""
    layers = model.get_submodule(_layers_name(model))
    assert isinstance(layers, nn.ModuleList)
    return layers


def offload_decoder(model: nn.Module, tracker: MemoryTracker, notes: list[str]) -> None:
    """Offload what the decoder (embedding, blocks, final norm) saves, as torchtune's recipes do: the
    context covers the model, and the output head runs under a NoOpManager, the loss outside it."""
    decoder = model.get_submodule(_layers_name(model).rsplit(".", 1)[0])
    active: list[contextlib.ExitStack] = []

    def enter(*_: Any) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(offload_saved_tensors(tracker))
        active.append(stack)

    def leave(*_: Any) -> None:
        active.pop().close()

    decoder.register_forward_pre_hook(enter)
    decoder.register_forward_hook(leave, always_call=True)
    notes.append(
        "activation offloading: the decoder's saved tensors >= 1024 B (not parameters) copied to host memory "
        "(torch save_on_cpu), the last 5 kept until backward, brought back one autograd node at a time"
    )


def checkpoint_every_n_layers(model: Any, every: int, notes: list[str]) -> None:
    """transformers' own selective checkpointing: `activation_checkpointing_enable(every_n_layers=k)` wraps
    the decoder layers at 0-based indices 0, k, 2k, ... (transformers 5.25 modeling_utils.py)."""
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every
    )
    notes.append(f"selective checkpointing: transformers every_n_layers={every} (blocks 0, {every}, ...)")


def checkpoint_every(model: nn.Module, every: int, notes: list[str]) -> int:
    """Wrap every `every`-th block (1-based position a multiple of `every`) in torch's non-reentrant
    `checkpoint_wrapper`, as torchtune's selective checkpointing does; return how many were wrapped."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = decoder_layers(model)
    wrapped = 0
    for i, block in enumerate(layers):
        if (i + 1) % every == 0:
            layers[i] = checkpoint_wrapper(
                block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, preserve_rng_state=False
            )
            wrapped += 1
    notes.append(
        f"selective checkpointing: {wrapped} of {len(layers)} blocks wrapped (every {every}th, torch checkpoint_wrapper)"
    )
    return wrapped


@contextlib.contextmanager
def offload_saved_tensors(tracker: MemoryTracker) -> Iterator[None]:
    """Saved tensors moved to host memory in forward and brought back in backward (see the module docstring)."""
    from torch.autograd.graph import save_on_cpu

    host = save_on_cpu(pin_memory=True)  # the pinned path copies (empty + copy_), as torchtune does
    stash: list[torch.Tensor] = []
    backward: dict[str, Any] = {"started": False, "node": None, "kept": []}

    def pack(tensor: torch.Tensor) -> Any:
        if isinstance(tensor, nn.Parameter) or tensor.untyped_storage().nbytes() < MIN_OFFLOAD_BYTES:
            return ("kept", tensor)
        packed = host.pack_hook(tensor)
        tracker.forget([packed[1]])
        stash.append(tensor)  # stays on the device until FWD_STASH newer ones are offloaded
        del stash[:-FWD_STASH]
        return ("host", packed)

    def unpack(item: Any) -> torch.Tensor:
        kind, value = item
        if kind == "kept":
            return value
        if not backward["started"]:  # backward started: the forward stash goes, the rest when it ends
            backward["started"] = True
            stash.clear()
            reset: dict[str, Any] = {"started": False, "node": None, "kept": []}
            torch.autograd.Variable._execution_engine.queue_callback(lambda: backward.update(reset))
        node = torch._C._current_autograd_node()
        if node is not backward["node"]:  # the previous node's tensors go once a new node's come in
            backward["node"], backward["kept"] = node, []
        with tracker.category("activations"):
            tensor = host.unpack_hook(value).clone()  # the host-to-device copy
        backward["kept"].append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield  # the stash outlives the context (torchtune frees it in backward)


class OptimizerInBackward(torch.optim.Optimizer):
    """torchtune's OptimizerInBackward: `make([p])` builds one optimizer per trainable parameter, stepped by
    the parameter's post-accumulate-grad hook (registered after the tracer's own, which classifies the
    gradient) and zeroed right after (set_to_none); its step temporaries are "activations", its state is handed
    to `after_step`. `step()` and `zero_grad()` after backward are no-ops, as in the recipe."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        make: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        *,
        tracker: MemoryTracker,
        after_step: Callable[[torch.optim.Optimizer], None],
    ) -> None:
        params = list(params)
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        for p in params:
            if p.requires_grad:
                self.optimizers[id(p)] = make([p])
                p.register_post_accumulate_grad_hook(self._step_and_clear)
        self._tracker, self._after_step = tracker, after_step
        super().__init__(params, {})

    def _step_and_clear(self, param: torch.Tensor) -> None:
        optimizer = self.optimizers[id(param)]
        with self._tracker.category("activations"):
            optimizer.step()
        self._after_step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Nothing: every parameter was stepped in backward."""
        if closure is not None:
            raise RuntimeError("OptimizerInBackward does not support closures.")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)
