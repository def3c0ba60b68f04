"""TRL 1.16 on fake tensors: its loss kernels on their CUDA paths, and trainer objects that run only the loss.

`cuda_like_trl` makes TRL's own kernels take the branch a CUDA run with Triton takes, where the fake CPU
trace would take the torch fallback (which allocates fp32 copies of every logits tile the Triton kernels
never make). Each patch replaces one decision, nothing else:

- `add_fused_lm_head` (trl/trainer/utils.py:1548-1698) scores only the labelled positions
  (`compact = _use_triton(device)`, utils.py:1641) and `ChunkedLogProbFunction`
  (trl/kernels/chunked_logprob.py:305-465) folds each `[4096, 32768]` logits tile with
  `_forward_kernel`/`_backward_kernel` (chunked_logprob.py:351, 427): Triton kernels that only write into
  buffers TRL allocated, so the trace runs them as no-ops; `_addmm_fp32` (chunked_logprob.py:55-65)
  accumulates with `torch.addmm(..., out_dtype=float32, out=acc)` as on CUDA;
- `selective_log_softmax` (utils.py:538-601) takes TRL's Triton log-prob kernel
  (trl/kernels/logprob_entropy.py `_LogProbEntropyFunction`: four fp32 per-row outputs, the logits saved,
  one logits-sized gradient in backward) when `_supports_trl_loss_kernel` (utils.py:510-535) accepts the
  tensors; the trace asks that check as if the tensors were on CUDA.

`TrainerShell` builds a trainer instance without its `__init__` (which needs datasets, a tokenizer and
an accelerator) and sets the attributes the loss method reads, each from the trainer's config defaults
the way that `__init__` maps them (file:line in each builder). The loss methods that run are TRL's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from swiftplan.executors.trace_session import TRACE_DEVICE


class _InPlaceKernel:
    """A Triton kernel launch `kernel[grid](...)`: TRL's kernels write only into tensors TRL allocated
    (nothing for the trace to do: fake tensors hold no data)."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _triton_stub() -> types.ModuleType:
    """Just enough of `triton` to import TRL's Triton kernel module and launch its kernels as no-ops."""
    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    language.__getattr__ = lambda name: object  # type: ignore[method-assign]  # tl.constexpr, tl.float32, ...
    triton.language = language  # type: ignore[attr-defined]
    triton.jit = lambda fn=None, **kwargs: _InPlaceKernel()  # type: ignore[attr-defined]
    triton.cdiv = lambda a, b: -(-a // b)  # type: ignore[attr-defined]
    return triton


def _load_logprob_entropy() -> types.ModuleType:
    """trl/kernels/logprob_entropy.py imported against the triton stub, under a private module name."""
    import trl.kernels

    path = f"{trl.kernels.__path__[0]}/logprob_entropy.py"
    spec = importlib.util.spec_from_file_location("_swiftplan_trl_logprob_entropy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = {name: sys.modules.get(name) for name in ("triton", "triton.language")}
    stub = _triton_stub()
    sys.modules.update({"triton": stub, "triton.language": stub.language})
    try:
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


class _OnCuda:
    """A tensor seen from a CUDA device: TRL's kernel-eligibility check reads only metadata."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor
        self.device = torch.device("cuda")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tensor, name)


def _addmm_fp32_cuda(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """trl/kernels/chunked_logprob.py:55-65 `_addmm_fp32` on CUDA (torch >= 2.8): 16-bit inputs are
    multiplied into the fp32 accumulator without copies; fp32 inputs take TRL's other branch."""
    if a.dtype in (torch.float16, torch.bfloat16):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


@contextlib.contextmanager
def cuda_like_trl() -> Iterator[None]:
    """TRL's kernels on the paths a CUDA run with Triton takes (module docstring); undone on exit."""
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as utils

    original_check = utils._supports_trl_loss_kernel
    logprob_entropy = _load_logprob_entropy()

    def supports(logits: torch.Tensor, index: Any = None, row_mask: Any = None) -> bool:
        wrap = lambda t: None if t is None else _OnCuda(t)  # noqa: E731
        return bool(original_check(_OnCuda(logits), wrap(index), wrap(row_mask)))  # type: ignore[arg-type]

    def on_device(device: torch.device) -> bool:
        return device.type in ("cuda", "xpu", TRACE_DEVICE)

    patches = [
        (chunked, "_use_triton", on_device),
        (utils, "_use_triton", on_device),
        (chunked, "_forward_kernel", _InPlaceKernel()),
        (chunked, "_backward_kernel", _InPlaceKernel()),
        (chunked, "triton", _triton_stub()),
        (chunked, "_addmm_fp32", _addmm_fp32_cuda),
        (utils, "is_triton_available", lambda: True),
        (utils, "_supports_trl_loss_kernel", supports),
        (utils, "_fused_logprob_entropy", logprob_entropy.selective_log_softmax_and_entropy),
    ]
    missing = object()
    saved = [(obj, name, vars(obj).get(name, missing)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


# -- trainers without their __init__ ---------------------------------------------------------------


class TraceAccelerator:
    """The accelerate calls TRL's loss methods make, for one process."""

    device = torch.device(TRACE_DEVICE)
    num_processes = 1
    sync_gradients = True
    is_main_process = True

    def __init__(self, autocast_dtype: torch.dtype | None = None) -> None:
        self.autocast_dtype = autocast_dtype

    def unwrap_model(self, model: Any) -> Any:
        return model

    def gather_for_metrics(self, x: Any) -> Any:
        return x

    gather = gather_for_metrics

    def reduce(self, x: Any, reduction: str = "sum") -> Any:
        return x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(TRACE_DEVICE, dtype=self.autocast_dtype)


def trainer_config(config_class: type, **overrides: Any) -> Any:
    """A TRL config with its defaults (bf16 off: the trace has no GPU; precision is the model's own)."""
    return config_class(output_dir=tempfile.gettempdir(), report_to="none", bf16=False, **overrides)


def shell(trainer_class: type, model: Any, args: Any, accelerator: TraceAccelerator, **attrs: Any) -> Any:
    """A `trainer_class` instance without `__init__`: `model`, `args`, `accelerator`, the metric stores
    every TRL trainer keeps, and `attrs`."""
    instance: Any = object.__new__(trainer_class)
    common = {
        "model": model,
        "args": args,
        "accelerator": accelerator,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "_stored_metrics": defaultdict(lambda: defaultdict(list)),
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    vars(instance).update(common | attrs)
    return instance


def aux_loss_attrs(model: Any, args: Any) -> dict[str, Any]:
    """MoE load-balancing loss switches as DPO/KTO/GRPO set them (trl/trainer/dpo_trainer.py:895-905,
    kto_trainer.py:905-916, grpo_trainer.py:822-832)."""
    text_config = model.config.get_text_config()
    coef = getattr(args, "router_aux_loss_coef", None)
    router_coef = getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef
    return {
        "router_aux_loss_coef": router_coef,
        "aux_loss_enabled": hasattr(text_config, "output_router_logits") and router_coef != 0.0,
    }
