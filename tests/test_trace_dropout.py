"""The tracer's dropout is CUDA's fused native_dropout: the same output and gradient as the CPU op for a given
mask, a bool mask saved, and no intermediate product alive beside the input and output (what the CPU spelling
`input * mask * scale` would add)."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from swiftplan.executors.trace_memory import MemoryTracker
from swiftplan.executors.trace_patches import _CudaDropout, cuda_like_kernels


def test_the_fused_dropout_computes_what_dropout_computes() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    out = _CudaDropout.apply(x, 0.25)
    mask = out != 0
    assert torch.allclose(out, x * mask / 0.75)
    grad = torch.randn(64, 32)
    out.backward(grad)
    assert torch.allclose(x.grad, grad * mask / 0.75)


def test_the_traced_dropout_holds_its_input_output_and_mask_only() -> None:
    tokens, width = 1024, 4096
    with FakeTensorMode():
        x = torch.randn(tokens, width, dtype=torch.float32, requires_grad=True)
        with cuda_like_kernels(Counter()), MemoryTracker(round_bytes=1) as tracker:
            tracker.start_measuring()
            y = F.dropout(x, 0.1, training=True)
            forward_peak = tracker.peak_bytes
            tracker.peak_bytes = 0
            y.backward(torch.ones_like(y))
            backward_peak = tracker.peak_bytes
    elements = tokens * width
    assert forward_peak == elements * (4 + 1)  # the output and the bool mask (the input is not tracked here)
    # the incoming gradient, the saved mask, the input gradient (and the output still referenced)
    assert backward_peak == elements * (4 + 1 + 4 + 4)


def test_no_dropout_is_left_to_torch() -> None:
    x = torch.randn(8, 8, requires_grad=True)
    with cuda_like_kernels(Counter()):
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
        assert torch.equal(F.dropout(x, 0.5, training=False), x)
