"""What a plan asks of an engine (`Requirements`), read off a training or serving set-up: the options the
capability table (`engines.py`) checks, one field each. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftplan.planner.dtypes import BNB_QUANTS
from swiftplan.planner.hardware import Accelerator
from swiftplan.planner.setup import RuntimeKnobs, ServeSetup, TrainSetup


@dataclass(frozen=True, kw_only=True, slots=True)
class Requirements:
    """What a plan asks of an engine, option by option (None = not applicable)."""

    backend: str
    """Device backend."""
    method: str | None = None
    objective: str | None = None
    quant: str | None = None
    optimizer: str | None = None
    zero: int | None = None
    offload: str | None = None
    kv_dtype: str | None = None
    zero3_quant: str | None = None
    """Training under DeepSpeed ZeRO-3: the base's quantization, which ZeRO-3 partitions too (None otherwise)."""
    tp: int = 1
    pp: int = 1
    gpus: int = 1
    loss: str | None = None
    optimizer_impl: str | None = None
    fsdp: str | None = None
    modules_to_save: tuple[str, ...] = ()
    optimizer_in_backward: bool | None = None
    ckpt_every: int | None = None
    activation_offload: bool | None = None
    fsdp_cpu_offload: bool | None = None
    float8: bool | None = None
    adapter_dtype: str | None = None
    """LoRA adapters' dtype (fp32, model or kbit-bf16); None when nothing trains adapters."""
    keep_output: bool | None = None
    padding: str | None = None
    runtime: str | None = None
    """The runtime profile the plan was made for (named in the reasons for its knobs)."""
    vision: bool = False
    """The plan trains a vision-language model on its images/video (`TrainSetup.vision`), or serves one requests
    with images/video (`ServeSetup.vision`)."""
    accelerator: Accelerator | None = None
    """Serving: the plan's device, whose math decides which engines' kernels run its weights (vLLM serves fp8
    weights with 16-bit math where the device has no FP8 math; capabilities.json). None: not checked."""


def train_requirements(setup: TrainSetup, *, backend: str, gpus: int) -> Requirements:
    """What a training set-up on `gpus` devices of `backend` asks of an engine."""
    return Requirements(
        backend=backend,
        objective=setup.objective.kind,
        method=setup.method,
        quant=setup.quant,
        optimizer=setup.optimizer,
        zero=setup.parallel.zero,
        offload=setup.parallel.offload,
        zero3_quant=setup.quant if setup.parallel.zero == 3 and setup.runtime.fsdp == "none" else None,
        tp=setup.parallel.tp,
        pp=setup.parallel.pp,
        gpus=gpus,
        vision=setup.vision is not None,
        **knob_requirements(
            setup.runtime,
            grad_ckpt=setup.grad_ckpt,
            trains_adapters=setup.trains_adapters,
            quant=setup.quant,
            variable_lengths=setup.variable_lengths,
        ),
    )


def knob_requirements(
    knobs: RuntimeKnobs,
    *,
    grad_ckpt: bool = True,
    trains_adapters: bool = True,
    quant: str | None = None,
    variable_lengths: bool = False,
) -> dict[str, Any]:
    """The `Requirements` fields of a runtime's knobs (checkpointing every k-th block only counts with
    checkpointing on, the adapter dtype only when LoRA adapters train, the padding only when samples vary in
    length; kbit-bf16 on a known base that bitsandbytes does not quantize is peft's fp32)."""
    adapters = knobs.adapter_dtype
    if adapters == "kbit-bf16" and quant is not None and quant not in BNB_QUANTS:
        adapters = "fp32"
    return {
        "loss": knobs.loss,
        "optimizer_impl": knobs.optimizer_impl,
        "fsdp": knobs.fsdp,
        "modules_to_save": knobs.modules_to_save,
        "optimizer_in_backward": knobs.optimizer_in_backward,
        "ckpt_every": knobs.ckpt_every if grad_ckpt else 1,
        "activation_offload": knobs.activation_offload,
        "fsdp_cpu_offload": knobs.fsdp_cpu_offload,
        "float8": knobs.float8,
        "adapter_dtype": adapters if trains_adapters else None,
        "keep_output": knobs.keep_output,
        "padding": knobs.padding if variable_lengths else None,
        "runtime": knobs.name,
    }


def serve_requirements(
    setup: ServeSetup, *, backend: str, gpus: int, accelerator: Accelerator | None = None
) -> Requirements:
    """What a serving set-up on `gpus` devices of `backend` (of `accelerator`, when known) asks of an engine."""
    return Requirements(backend=backend, quant=setup.quant, kv_dtype=setup.kv_dtype, tp=setup.tp, gpus=gpus,
                        vision=setup.vision is not None, accelerator=accelerator)  # fmt: skip
