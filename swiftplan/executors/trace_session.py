"""Shared machinery of the tracer: the fake session, category hooks on the model, and the notes.

The hooks put storages in categories by where they are created: parameters are "weights" or
"adapters"; everything from the LM head's input to the end of the model's forward (and, in backward,
until the LM head's input gradient exists) is "logits"; the cache's tensors are "kv_cache"; `.grad`
tensors become "gradients" when autograd accumulates them (see `trace.training_rig`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from swiftplan.executors.trace_memory import CUDA_BLOCK_BYTES, MemoryTracker
from swiftplan.executors.trace_model import is_adapter_param, to_fake
from swiftplan.executors.trace_patches import cuda_like_kernels, fake_safe_optimizers, unpacked_inputs
from swiftplan.executors.trace_quant import bnb_kernels, fake_quantize

TRACE_DEVICE = "cpu"
"""Fake tensors claim this device. Autograd cannot run on fake "cuda" tensors in a CPU-only build (its
engine asks for the CUDA device guard, which is not linked), so the trace runs with CPU dispatch rules."""


def base_notes(round_bytes: int) -> list[str]:
    rounding = (
        f"rounded up to {round_bytes} B like the CUDA caching allocator"
        if round_bytes == CUDA_BLOCK_BYTES
        else (f"rounded up to {round_bytes} B" if round_bytes > 1 else "not rounded")
    )
    return [
        "traced with fake CPU tensors (no real memory): sizes are exact; kernels follow CPU dispatch except "
        "where the attention notes say CUDA's choice was substituted",
        f"each storage counted once, {rounding}; the CUDA context, cuBLAS/cuDNN workspaces and "
        "allocator fragmentation are not tensors and are not counted",
        "8-bit optimizers (bitsandbytes) are not traceable",
    ]


def _causal_lm_of(model: nn.Module) -> Any:
    """The transformers model inside a peft wrapper (or the model itself): a PreTrainedModel."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def register_model(tracker: MemoryTracker, model: nn.Module) -> None:
    """Put existing parameters and buffers in their categories before anything runs."""
    for name, p in model.named_parameters(remove_duplicate=True):
        tracker.classify([p], "adapters" if is_adapter_param(name) else "weights")
    for b in model.buffers():
        tracker.track(b)  # rotary inv_freq etc.: tiny, counted as "activations"


def hook_logits(tracker: MemoryTracker, model: nn.Module) -> None:
    """Everything allocated from the LM head's input to the end of the model's forward is "logits".

    That covers the logits, softcapping, and `ForCausalLMLoss` (fp32 upcast, log_softmax, nll_loss);
    a cast of the LM head's weight (autocast) stays "activations" (see `MemoryTracker`).
    In backward, the region lasts from the start (set by the caller) until the gradient of the LM head's
    input exists; that gradient itself is a hidden-state tensor and goes back to "activations".
    """
    lm = _causal_lm_of(model)
    head = lm.get_output_embeddings()

    def before_head(_module: nn.Module, args: tuple[Any, ...]) -> None:
        tracker.context_category = "logits"
        hidden = args[0] if args else None
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:

            def grad_hook(grad: torch.Tensor) -> None:
                tracker.classify([grad], "activations")
                tracker.context_category = "activations"

            hidden.register_hook(grad_hook)

    def after_model(_module: nn.Module, _args: Any, _output: Any) -> None:
        tracker.context_category = "activations"

    head.register_forward_pre_hook(before_head)
    lm.register_forward_hook(after_model)


def make_fake(model: nn.Module, mode: FakeTensorMode) -> list[torch.Tensor]:
    """Make `model` fake on the trace device, outside the modes (conversion is not an op): bitsandbytes layers
    quantized first by their own code (`trace_quant.fake_quantize`), then every other parameter and buffer.
    Returns the quantized layers' weight tensors that are no parameters (for the "weights" category)."""
    device = torch.device(TRACE_DEVICE)
    quant_state = fake_quantize(model, mode, device)
    to_fake(model, mode, device)
    return quant_state


@contextlib.contextmanager
def fake_session(model: nn.Module, round_bytes: int, calls: Counter[str]) -> Iterator[MemoryTracker]:
    """Make `model` fake, then run the block under fake mode, tracking and the CUDA-path patches."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    quant_state = make_fake(model, mode)
    tracker = MemoryTracker(round_bytes=round_bytes)
    with (
        torch_linear(),
        mode,
        tracker,
        bnb_kernels(quant_state),
        fake_safe_optimizers(),
        unpacked_inputs(),
        cuda_like_kernels(calls),
    ):
        register_model(tracker, model)
        tracker.classify(quant_state, "weights")
        hook_logits(tracker, model)
        yield tracker


@contextlib.contextmanager
def torch_linear() -> Iterator[None]:
    """torch's own F.linear for the block: DeepSpeed's ZeRO-3 Init replaces it process-wide with an autograd
    function that keeps every input ("This will persist unless manually reset",
    deepspeed/runtime/zero/partition_parameters.py), which a run without ZeRO-3 does not do."""
    original = torch.nn.functional.linear
    torch.nn.functional.linear = torch._C._nn.linear
    try:
        yield
    finally:
        torch.nn.functional.linear = original


def attention_notes(calls: Counter[str], ops: set[Any]) -> list[str]:
    notes = []
    if calls["flash-cpu"]:
        notes.append(
            "attention: SDPA flash kernel (aten._scaled_dot_product_flash_attention_for_cpu); it saves "
            "out + an fp32 logsumexp per head and token, as CUDA flash/cuDNN/memory-efficient do; no S x S scores"
        )
    if calls["efficient"] or calls["efficient-gqa-repeat"]:
        notes.append(
            "attention: q and v head dims differ, CPU has no fused kernel for that: traced with "
            "aten._scaled_dot_product_efficient_attention, the kernel CUDA picks"
        )
    if calls["efficient-gqa-repeat"]:
        notes.append("attention: KV heads repeated for the memory-efficient op (CUDA would not copy them)")
    names = {str(op) for op in ops}
    if any("_scaled_dot_product_attention_math" in n for n in names):
        notes.append("attention: some SDPA calls took the math path: S x S scores materialised")
    return notes


def hook_cache(tracker: MemoryTracker, cache: Any) -> None:
    """Storages created by, or held by, the cache after `update` are "kv_cache"."""
    original = cache.update

    def update(
        key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> Any:
        with tracker.category("kv_cache"):
            out = original(key_states, value_states, layer_idx, *args, **kwargs)
        layer = cache.layers[layer_idx]
        tracker.classify([getattr(layer, "keys", None), getattr(layer, "values", None)], "kv_cache")
        return out

    cache.update = update
