"""bitsandbytes bases (NF4/FP4, int8) for the tracer: the real quantizer, LoRA layers and autograd, over fake tensors.

A QLoRA base is built as a real run builds it: transformers' own bitsandbytes quantizer swaps every quantizable
`nn.Linear` for `bnb.nn.Linear4bit` (the LM head stays unquantized), peft's `prepare_model_for_kbit_training`
upcasts the rest when the recipe calls it, and peft wraps the 4-bit layers in its `lora.bnb.Linear4bit`. Each
weight is then quantized by bitsandbytes' own `quantize_4bit` on its fake full-precision tensor, so the packed
storage, the absmax statistics (nested or not) and the `QuantState` are bitsandbytes' own shapes. Forward and
backward run bitsandbytes' `MatMul4Bit`; its ops have fake kernels, so they allocate what they return.

What a fake kernel cannot show is the inside of the fused `gemm_4bit` op. `CudaDequantizingGemm` runs it as
the CUDA backend's unfused path does (bitsandbytes 0.50.2 backends/cuda/ops.py `_dequant_linear_fallback`: the
nested absmax dequantized, the weight dequantized to the input's dtype, then `F.linear`), which is what CUDA
runs past 1,536 tokens per call and what every bitsandbytes before 0.50 ran at any size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:
    from swiftplan.planner.setup import TrainSetup

from swiftplan.executors.trace_patches import patched
from swiftplan.planner.dtypes import kbit_cast

QuantType = Literal["nf4", "fp4", "int8"]

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
"""bitsandbytes warns at import (peft imports it) that it could not fetch an AVX-512 CPU kernel from the Hub;
fake tensors never run a CPU kernel, so the tracer keeps that line out of verify's output."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantBase:
    """A bitsandbytes base (4-bit or int8) as the set-up plans it."""

    quant_type: QuantType
    double_quant: bool = False
    """bnb_4bit_use_double_quant: the absmax statistics quantized again to 8 bits (blocks of 256)."""
    kbit_upcast: bool = False
    """peft's prepare_model_for_kbit_training runs: every non-quantized fp16/bf16 parameter becomes fp32."""
    trainable_bf16: bool = False
    """The trainer casts every trainable parameter but DoRA's magnitude to bf16 once LoRA wraps the model (TRL
    1.16's trainers on a bitsandbytes base: `dtypes.kbit_cast`)."""

    @classmethod
    def of(cls, setup: TrainSetup) -> QuantBase | None:
        """The set-up's bitsandbytes base, or None for any other (unquantized, GPTQ, AWQ, fp8, torchao)."""
        if setup.quant not in get_args(QuantType):
            return None
        return cls(quant_type=setup.quant, double_quant=setup.double_quant, kbit_upcast=setup.kbit_upcast,  # type: ignore[arg-type]
                   trainable_bf16=kbit_cast(setup))  # fmt: skip

    def cast_trainable(self, model: Any, notes: list[str]) -> None:
        """With `trainable_bf16`, the trainer's cast of the LoRA-wrapped model's trainable parameters (the loop
        of trl/trainer/sft_trainer.py:908-911, run on the meta model before it is made fake)."""
        if not self.trainable_bf16:
            return
        from swiftplan.executors.trl_cast import cast_trainable_to_bf16

        cast = cast_trainable_to_bf16(model)
        notes.append(f"trainable parameters cast to bf16 after LoRA ({cast} tensors), as TRL 1.16's trainers do "
                     "on a bitsandbytes base")  # fmt: skip

    @staticmethod
    def require_lora(method: str) -> None:
        """A quantized base is frozen: only LoRA trains over it (ValueError otherwise)."""
        if method != "lora":
            raise ValueError(
                f"a bitsandbytes base is trained with LoRA: method must be 'lora', got {method!r}"
            )


def quantize_meta_model(model: Any, base: QuantBase, *, compute_dtype: torch.dtype, notes: list[str]) -> None:
    """Swap the meta model's linear layers for bitsandbytes 4-bit or int8 ones with transformers' own quantizer (the
    modules it keeps unquantized, the LM head among them, stay as they are), then run peft's k-bit preparation
    when `base.kbit_upcast` (checkpointing is enabled by the caller, as for any model)."""
    from transformers import BitsAndBytesConfig
    from transformers.quantizers.auto import AutoHfQuantizer

    if base.quant_type == "int8":
        # llm_int8_threshold 0: the outlier columns LLM.int8 splits off are data (a dynamic shape a fake tensor
        # cannot take); their fp16 copy is the only tensor the default threshold of 6.0 adds
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=base.quant_type,
            bnb_4bit_use_double_quant=base.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    quantizer = AutoHfQuantizer.from_config(config)
    quantizer.preprocess_model(model, device_map=None)
    quantizer.postprocess_model(model)  # marks the model loaded in 4/8 bit, as from_pretrained leaves it
    linears = sum(1 for m in model.modules() if _is_bnb_linear(m))
    kind = (
        "bitsandbytes int8 (LLM.int8 without the outlier split: threshold 0)"
        if base.quant_type == "int8"
        else f"bitsandbytes 4-bit ({base.quant_type}{', double quantization' if base.double_quant else ''}; "
        f"compute dtype {str(compute_dtype).removeprefix('torch.')})"
    )
    notes.append(
        f"base: {linears} linear layers in {kind}, quantized by bitsandbytes' own code over fake tensors"
    )
    if base.kbit_upcast:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        notes.append(
            "peft prepare_model_for_kbit_training: every non-quantized fp16/bf16 parameter upcast to fp32 "
            "(checkpointing enabled separately, non-reentrant, so no input-gradient hook)"
        )


def _is_bnb(module: nn.Module, class_name: str) -> bool:
    """An instance of bitsandbytes' `nn.<class_name>` (checked by name first, so that a model without one never
    imports bitsandbytes)."""
    if not any(cls.__name__ == class_name for cls in type(module).__mro__):
        return False
    import bitsandbytes as bnb

    return isinstance(module, getattr(bnb.nn, class_name))


def _is_bnb_linear(module: nn.Module) -> bool:
    return _is_bnb(module, "Linear4bit") or _is_bnb(module, "Linear8bitLt")


@contextlib.contextmanager
def _fake_dynamic_map(mode: FakeTensorMode) -> Iterator[None]:
    """bitsandbytes builds its 8-bit dynamic code table from data the first time it quantizes blockwise (the
    nested absmax); that cannot run on fake tensors, so the table is built for real and handed over as a fake
    tensor for the block, and bitsandbytes' cache is left as it was."""
    import bitsandbytes.functional as bnb_functional

    cache = bnb_functional.name2qmap
    previous = cache.get("dynamic")
    cache["dynamic"] = mode.fake_tensor_converter.from_real_tensor(mode, bnb_functional.create_dynamic_map())
    try:
        yield
    finally:
        if previous is None:
            cache.pop("dynamic", None)
        else:
            cache["dynamic"] = previous


def fake_quantize(model: nn.Module, mode: FakeTensorMode, device: torch.device) -> list[torch.Tensor]:
    """Quantize every bitsandbytes layer's meta weight with bitsandbytes' own code on a fake full-precision copy
    under `mode` and install the result as its parameter class leaves it, before the rest of the model is made
    fake (`trace_model.to_fake` keeps it); returns the tensors that are weights but no parameters (absmax, codes,
    nested statistics, int8 row scales). A model without bitsandbytes layers imports nothing."""
    four = [m for m in model.modules() if _is_bnb(m, "Linear4bit")]
    eight = [m for m in model.modules() if _is_bnb(m, "Linear8bitLt")]
    return _quantize_4bit(four, mode, device) + _quantize_int8(eight, mode, device)


def _fake_loaded(mode: FakeTensorMode, device: torch.device, shape: Any, dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint weight as from_pretrained hands it to bitsandbytes to quantize, as a fake tensor."""
    return mode.fake_tensor_converter.from_meta_and_device(
        mode, torch.empty(shape, dtype=dtype, device="meta"), device
    )


def _quantize_4bit(layers: list[Any], mode: FakeTensorMode, device: torch.device) -> list[torch.Tensor]:
    """Linear4bit weights through quantize_4bit (loaded in the compute dtype), installed as `Params4bit` leaves
    them (packed storage with its QuantState); returns the QuantStates' tensors."""
    if not layers:
        return []
    from bitsandbytes.functional import quantize_4bit

    state_tensors: list[torch.Tensor] = []
    with _fake_dynamic_map(mode):
        for layer in layers:
            weight = layer.weight
            full = _fake_loaded(mode, device, weight.shape, layer.compute_dtype)
            with mode:
                packed, state = quantize_4bit(
                    full,
                    blocksize=weight.blocksize,
                    compress_statistics=weight.compress_statistics,
                    quant_type=weight.quant_type,
                    quant_storage=weight.quant_storage,
                )
            param = nn.Parameter(packed, requires_grad=False)  # a fake tensor flagged as a parameter
            for name in ("blocksize", "compress_statistics", "quant_type", "quant_storage"):
                setattr(param, name, getattr(weight, name))
            param.quant_state, param.bnb_quantized, param.module = state, True, layer  # type: ignore[attr-defined]
            layer._parameters["weight"] = param
            layer.quant_state = state
            state_tensors += _state_tensors(state)
    return state_tensors


def _quantize_int8(layers: list[Any], mode: FakeTensorMode, device: torch.device) -> list[torch.Tensor]:
    """Linear8bitLt weights quantized as `Int8Params._quantize` does (int8_vectorwise_quant of the fp16 weight:
    int8 rows and their fp32 scales), installed as Int8Params leaves them; returns the scales."""
    if not layers:
        return []
    from bitsandbytes.functional import int8_vectorwise_quant

    scales: list[torch.Tensor] = []
    for layer in layers:
        full = _fake_loaded(mode, device, layer.weight.shape, torch.float16)
        with mode:
            rows, row_scales, _ = int8_vectorwise_quant(full)
        param = nn.Parameter(rows, requires_grad=False)  # a fake tensor flagged as a parameter
        param.CB, param.SCB, param.has_fp16_weights = rows, row_scales, False  # type: ignore[attr-defined]
        layer._parameters["weight"] = param
        scales.append(row_scales)
    return scales


def _state_tensors(state: Any) -> list[torch.Tensor]:
    tensors = [state.absmax, state.code, state.offset]
    if state.state2 is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def cuda_int8_matmul() -> Iterator[None]:
    """bitsandbytes' `matmul` trains an int8 layer with `MatMul8bitFp` on a CPU tensor (dequantize, then
    F.linear) and with `MatMul8bitLt` on CUDA (the input quantized to int8, an int8 matmul, and the input
    itself kept on the autograd context); the fake tensors are CPU ones, so the CUDA function stands in for
    the block (bitsandbytes 0.50.2 autograd/_functions.py `matmul`)."""
    from bitsandbytes.autograd import _functions

    cpu_path = _functions.MatMul8bitFp
    log = logging.getLogger(_functions.__name__)  # "inputs will be cast ... to float16", once per matmul
    level = log.level
    _functions.MatMul8bitFp = _functions.MatMul8bitLt  # type: ignore[misc, assignment]
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        _functions.MatMul8bitFp = cpu_path  # type: ignore[misc]
        log.setLevel(level)


@contextlib.contextmanager
def bnb_kernels(state_tensors: list[torch.Tensor]) -> Iterator[None]:
    """The CUDA paths of a bitsandbytes base's kernels for the block (`cuda_int8_matmul`, then
    `CudaDequantizingGemm` on top of the modes already active), or nothing when the model has no bitsandbytes
    layer (`state_tensors` empty)."""
    if not state_tensors:
        yield
        return
    with cuda_int8_matmul(), CudaDequantizingGemm(), _dora_dequantizes_fake_4bit():
        yield


@contextlib.contextmanager
def _dora_dequantizes_fake_4bit() -> Iterator[None]:
    """peft's DoRA dequantizes a 4-bit base weight with `dequantize_module_weight`, which recognises bitsandbytes'
    `Params4bit` by class name (peft 0.21.2 utils/integrations.py); the tracer's packed weights are plain fake
    parameters carrying the QuantState (`_quantize_4bit`), so inside this block DoRA's dequantization of such a
    weight runs bitsandbytes' own `dequantize_4bit` on it, as it would on the real `Params4bit`."""
    from peft.tuners.lora import dora

    original = dora.dequantize_module_weight

    def dequantize_module_weight(module: nn.Module) -> Any:
        weight: Any = module.weight
        state = getattr(weight, "quant_state", None)
        if state is None or not getattr(weight, "bnb_quantized", False):
            return original(module)
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(weight.data, state)

    with patched([(dora, "dequantize_module_weight", dequantize_module_weight)]):
        yield


class CudaDequantizingGemm(TorchDispatchMode):
    """Runs bitsandbytes' fused `gemm_4bit` op as the CUDA backend's unfused path: the weight dequantized to a
    temporary of the input's dtype (and, when nested, the absmax first), then `F.linear` (module docstring)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not torch.ops.bitsandbytes.gemm_4bit.default:
            return func(*args, **kwargs)
        return _dequant_linear(*args, **kwargs)


def _dequant_linear(
    A: torch.Tensor, B: torch.Tensor, shapeB: Any, absmax: torch.Tensor, blocksize: int, quant_type: str,
    bias: torch.Tensor | None = None, absmax_8bit: torch.Tensor | None = None,
    absmax_code: torch.Tensor | None = None, absmax_offset: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """gemm_4bit's arguments (bitsandbytes/_ops.py), computed the unfused way."""
    ops = torch.ops.bitsandbytes
    if absmax_8bit is not None:  # nested: `absmax` is state2's, the 8-bit codes are absmax_8bit
        assert absmax_offset is not None  # MatMul4Bit passes the QuantState's offset with the nested codes
        absmax = ops.dequantize_blockwise.default(absmax_8bit, absmax, absmax_code, 256, torch.float32)
        absmax = absmax + absmax_offset
    weight = ops.dequantize_4bit.default(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
    return torch.nn.functional.linear(A, weight, bias)
