"""Run-time patches that make the fake-tensor trace take the code paths a real CUDA run takes.

Each patch replaces one decision that fake CPU tensors would get wrong -- because the data is missing,
or because the CPU kernel set differs from CUDA's -- and nothing else. All are undone on exit.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor


@contextlib.contextmanager
def unpacked_inputs() -> Iterator[None]:
    """Tell transformers' mask code that the batch holds one sequence per row, as it finds out itself
    on real tensors.

    `find_packed_sequence_indices` reads position ids to detect packed sequences; on fake tensors it
    cannot, assumes packing, and builds a B x 1 x S x S mask, which also makes SDPA repeat the KV heads
    (no `enable_gqa` with a mask). A real run with `attention_mask=None` gets no mask and `is_causal=True`.
    """
    from transformers import masking_utils

    with patched([(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)]):
        yield


@contextlib.contextmanager
def fake_safe_optimizers() -> Iterator[None]:
    """Let torch/transformers optimizers step over fake tensors.

    Adam(W) turns its step counter into a Python float with `.item()` for the bias correction, and
    transformers' Adafactor compares a tensor RMS with a float to pick its learning rate; both need data
    that fake tensors do not have. Only these scalar look-ups are replaced (by 1.0-like values), so every
    tensor the optimizer allocates is still allocated.
    """
    import torch.optim.adam as adam_module

    patches: list[tuple[Any, str, Any]] = []

    def get_value(x: Any) -> Any:
        if isinstance(x, FakeTensor):
            return 1.0
        return x.item() if isinstance(x, torch.Tensor) else x

    patches.append((adam_module, "_get_value", get_value))
    try:
        from transformers.optimization import Adafactor

        original_get_lr = Adafactor._get_lr

        def get_lr(param_group: dict[str, Any], param_state: dict[str, Any]) -> float:
            state = dict(param_state)
            if isinstance(state.get("RMS"), torch.Tensor):
                state["RMS"] = 1.0
            return original_get_lr(param_group, state)

        patches.append((Adafactor, "_get_lr", staticmethod(get_lr)))
    except ImportError:  # pragma: no cover - transformers is a hard requirement of the tracer
        pass
    with patched(patches):
        yield


@contextlib.contextmanager
def cuda_like_kernels(calls: Counter[str]) -> Iterator[None]:
    """Pick the attention and MoE kernels CUDA would pick where the CPU would pick another.

    SDPA: on CPU there is only flash (equal q/k/v head dims) or the math path, which materialises the
    S x S scores. CUDA (sm80+) runs flash, cuDNN or memory-efficient attention for every LLM shape: the
    memory-efficient kernel takes fp32, masks and a value head dim different from the query's (MLA
    models). When the head dims differ the trace calls `aten._scaled_dot_product_efficient_attention`
    (it saves out + an fp32 logsumexp, like CUDA); KV heads are repeated first for GQA, because that
    op's autograd formula does not reduce grouped heads (a small overcount, noted by the caller).
    `calls` counts the path taken ("flash-cpu", "efficient", "efficient-gqa-repeat").

    Dropout: CUDA keeps a bool mask, the CPU kernel a float one; the patch keeps a bool mask.

    MoE: `torch._grouped_mm` is bf16-only on CUDA (its meta kernel checks that), so for other dtypes
    transformers' own fallback op is used, as it is for dtypes the kernel cannot take.
    """
    with patched([_sdpa_patch(calls), _dropout_patch(calls), *_grouped_mm_patch()]):
        yield


def _sdpa_patch(calls: Counter[str]) -> tuple[Any, str, Any]:
    """SDPA that takes CUDA's memory-efficient kernel where the CPU has no flash path (see above)."""
    import torch.nn.functional as F

    original_sdpa = F.scaled_dot_product_attention

    def sdpa(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        if query.size(-1) == value.size(-1) == key.size(-1):
            calls["flash-cpu"] += 1
            return original_sdpa(
                query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
            )
        if key.size(-3) != query.size(-3):
            repeat = query.size(-3) // key.size(-3)
            key = key.repeat_interleave(repeat, dim=-3)
            value = value.repeat_interleave(repeat, dim=-3)
            calls["efficient-gqa-repeat"] += 1
        else:
            calls["efficient"] += 1
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, float("-inf"))
        needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        out = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, needs_lse, dropout_p, is_causal, scale=scale
        )
        return out[0]

    return (F, "scaled_dot_product_attention", sdpa)


class _CudaDropout(torch.autograd.Function):
    """CUDA's fused dropout: native_dropout writes the output and a bool mask (1 byte per element) in one
    kernel and saves the mask; native_dropout_backward writes the input gradient in one kernel
    (aten/src/ATen/native/cuda/Dropout.cu). The CPU kernel keeps a float mask, and spelling it as
    `input * mask * scale` would hold an intermediate product CUDA never makes: same tensors as CUDA here."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, p: float) -> torch.Tensor:
        out, mask = _fused_dropout(input, p)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return _masked_scaled(grad, mask, ctx.scale), None


def _masked_scaled(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """x × mask × scale written into one new tensor, as CUDA's dropout kernels write it."""
    out = torch.empty_like(x)
    torch.mul(x, mask, out=out)
    return out.mul_(scale)


def _fused_dropout(input: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """native_dropout's output and its bool mask."""
    mask = torch.empty(input.shape, dtype=torch.bool, device=input.device).bernoulli_(1.0 - p)
    return _masked_scaled(input, mask, 1.0 / (1.0 - p)), mask


def _dropout_patch(calls: Counter[str]) -> tuple[Any, str, Any]:
    """Dropout as CUDA's native_dropout runs it (`_CudaDropout`)."""
    import torch.nn.functional as F

    original_dropout = F.dropout

    def dropout(
        input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        """Same output and saved bytes as CUDA's native_dropout, no intermediate product."""
        if not training or p == 0.0 or not isinstance(input, torch.Tensor):
            return original_dropout(input, p, training, inplace)
        calls["dropout-bool-mask"] += 1
        if not torch.is_grad_enabled() or not input.requires_grad:
            return _fused_dropout(input, p)[0]
        return _CudaDropout.apply(input, p)

    return (F, "dropout", dropout)


def _grouped_mm_patch() -> list[tuple[Any, str, Any]]:
    """transformers' MoE check for `torch._grouped_mm`, limited to bf16 as on CUDA (none on older versions)."""
    try:
        from transformers.integrations import moe

        original_can_use = moe._can_use_grouped_mm
    except (ImportError, AttributeError):  # older transformers: no grouped_mm experts
        return []

    def can_use_grouped_mm(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> bool:
        return weight.dtype == torch.bfloat16 and original_can_use(input, weight, offs)

    return [(moe, "_can_use_grouped_mm", can_use_grouped_mm)]


@contextlib.contextmanager
def patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Each (object, attribute, value) set for the block and put back after it."""
    # vars(), not getattr(): a staticmethod must be put back as the staticmethod object
    saved = [(obj, name, vars(obj)[name]) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
