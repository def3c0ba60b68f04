"""Bytes per element of each numeric format, and which dtypes a precision mode uses."""

from __future__ import annotations

from swiftplan.planner.setup import Precision, TrainSetup

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def param_dtype(precision: Precision) -> str:
    """dtype the model's parameters are held in: the pure dtype, or fp32 under autocast (amp-*)."""
    return "fp32" if precision in ("fp32", "amp-bf16", "amp-fp16") else precision


def compute_dtype(precision: Precision) -> str:
    """dtype matmuls and saved activations use: the autocast target under amp-*, else the pure dtype."""
    return {"amp-bf16": "bf16", "amp-fp16": "fp16"}.get(precision, precision)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype`."""
    return DTYPE_BYTES[dtype]


def deepspeed_mixed(setup: TrainSetup) -> bool:
    """ZeRO through DeepSpeed with bf16 or fp16 enabled (every precision but fp32): DeepSpeed casts the
    whole module, adapters and peft's fp32 upcast included, to that dtype and keeps an fp32 master copy
    and fp32 optimizer state of the trainable parameters (measured, see `states.state_dtypes`)."""
    return setup.parallel.zero > 0 and setup.precision != "fp32"


BNB_QUANTS = ("nf4", "fp4", "int8")
"""Bases bitsandbytes quantizes (transformers' is_loaded_in_4bit / is_loaded_in_8bit)."""
KBIT_CAST_DTYPE = "bf16"
"""What TRL 1.16's trainers cast a bitsandbytes base's trainable parameters to (trl/trainer/sft_trainer.py:904-911,
dpo_trainer.py:722-729, grpo_trainer.py, kto_trainer.py, reward_trainer.py, rloo_trainer.py: `if
_is_quantized_model: param.data = param.data.to(torch.bfloat16)`, citing peft issue 2889)."""


def kbit_cast(setup: TrainSetup) -> bool:
    """The runtime casts the trainable parameters of this set-up's bitsandbytes base to bf16
    (`runtime.adapter_dtype` kbit-bf16 on an nf4, fp4 or int8 base)."""
    return setup.runtime.adapter_dtype == "kbit-bf16" and setup.quant in BNB_QUANTS


def adapter_dtype(setup: TrainSetup) -> str:
    """dtype LoRA adapters are created and computed in, before any DeepSpeed cast (`states.state_dtypes`):
    fp32 with peft's default `get_peft_model(..., autocast_adapter_dtype=True)` (peft 0.21
    tuners_utils.py cast_adapter_dtype), or with `runtime.adapter_dtype` "model" the base layer's dtype,
    which peft's `_move_adapter_to_device_of_base_layer` takes from the weight or a bitsandbytes 4-bit
    layer's compute_dtype: the parameter dtype here (fp32 under amp; QLoRA's compute dtype is the precision);
    with "kbit-bf16", bf16 on a bitsandbytes base (TRL's cast, `kbit_cast`) and fp32 on any other."""
    if kbit_cast(setup):
        return KBIT_CAST_DTYPE
    return param_dtype(setup.precision) if setup.runtime.adapter_dtype == "model" else "fp32"


def module_dtype(setup: TrainSetup) -> str:
    """dtype the module's (non-quantized) parameters are held in while training."""
    if deepspeed_mixed(setup):
        return compute_dtype(setup.precision)
    return "fp32" if setup.kbit_upcast else param_dtype(setup.precision)


def saved_module_dtype(setup: TrainSetup) -> str:
    """dtype of peft's modules_to_save copies (trainable embeddings / LM head beside LoRA) outside DeepSpeed's
    mixed precision (which casts them to its half dtype, `states.state_dtypes`): the module dtype, or bf16 where
    the runtime casts a bitsandbytes base's trainable parameters (`kbit_cast`)."""
    return KBIT_CAST_DTYPE if kbit_cast(setup) else module_dtype(setup)


def activation_dtype(setup: TrainSetup) -> str:
    """dtype of saved activations: the compute dtype, or fp32 when a k-bit base was prepared with peft's fp32
    upcast (its fp32 norms and embeddings make the whole stream fp32)."""
    return "fp32" if setup.kbit_upcast and not deepspeed_mixed(setup) else compute_dtype(setup.precision)


def activation_dtype_bytes(setup: TrainSetup) -> int:
    """Bytes per element of saved activations (`activation_dtype`)."""
    return dtype_bytes(activation_dtype(setup))


def adapters_read_the_stream(setup: TrainSetup) -> bool:
    """peft's cast of a LoRA input to the adapters' dtype is a no-op: the adapters are in the stream's own dtype
    (fp32 with fp32 adapters, or the model dtype; bf16 adapters under an fp16 stream still copy)."""
    return adapter_dtype(setup) == activation_dtype(setup)
