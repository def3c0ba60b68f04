"""Per-parameter training state: gradients, optimizer moments and fp32 master weights.

Each function returns bytes for `params` trainable parameters before any sharding; the
caller divides by the data-parallel degree where ZeRO shards the term.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.dtypes import (
    adapter_dtype,
    compute_dtype,
    deepspeed_mixed,
    module_dtype,
    param_dtype,
    saved_module_dtype,
)
from swiftplan.planner.setup import Optimizer, TrainSetup

BNB_8BIT_OPTIMIZER_BLOCK = 256
"""bitsandbytes blockwise 8-bit optimizers keep one fp32 absmax per 256 state values (Dettmers et al. 2022)."""
BNB_MIN_8BIT_SIZE = 4096
"""Tensors with fewer elements than this keep 32-bit state in bitsandbytes (`min_8bit_size`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StateDtypes:
    """The dtype of each per-parameter state the train executor holds: what `train_memory` counts, and
    what `tests/test_state_agreement.py` checks against the real torch and DeepSpeed objects."""

    weights: str
    """Module parameters that are not quantized (frozen and, for full fine-tuning, trainable)."""
    adapters: str
    """LoRA parameters."""
    gradients: str
    """Gradients as held across accumulation (.grad, or DeepSpeed's gradient partitions)."""
    optimizer: str
    """Each optimizer moment (8-bit optimizers keep their own format whatever this says)."""
    master: str | None
    """A separate master copy of the trainable parameters, or None."""
    saved: str
    """peft's modules_to_save copies (trainable embeddings / LM head beside LoRA), their gradients and moments."""


def state_dtypes(setup: TrainSetup) -> StateDtypes:
    """Per-parameter state dtypes for `setup` as the executor runs it.

    Plain torch (no ZeRO): parameters in the precision's parameter dtype (fp32 under amp); peft keeps
    LoRA adapters in fp32 (`autocast_adapter_dtype`), or in the model dtype with the runtime's
    `adapter_dtype` "model", or bf16 on a bitsandbytes base with "kbit-bf16" (TRL's cast; modules_to_save copies
    too, `dtypes.saved_module_dtype`) (`dtypes.adapter_dtype`); gradients and AdamW moments follow the trainable
    parameters; no master copy. DeepSpeed ZeRO with bf16/fp16 (every precision but fp32): the engine
    casts the module, adapters included, to the half dtype (`module.bfloat16()`), keeps gradients in it
    across accumulation (`averaged_gradients`), and an fp32 master partition with fp32 optimizer state
    for the trainable parameters (`single_partition_of_fp32_groups` / `fp32_partitioned_groups_flat`);
    measured with DeepSpeed 0.19.8 on CPU for stages 1-3, full and LoRA, with and without optimizer
    offload (tests/test_state_agreement.py repeats it).
    """
    if deepspeed_mixed(setup):
        half = compute_dtype(setup.precision)
        return StateDtypes(
            weights=half, adapters=half, gradients=half, optimizer="fp32", master="fp32", saved=half
        )
    adapters = adapter_dtype(setup)
    trainable = adapters if setup.trains_adapters else param_dtype(setup.precision)
    return StateDtypes(
        weights=module_dtype(setup),
        adapters=adapters,
        gradients=trainable,
        optimizer=trainable,
        master=None,
        saved=saved_module_dtype(setup),
    )


def gradient_bytes(params: int, grad_dtype_bytes: int) -> int:
    """One gradient per trainable parameter, in the parameter's dtype (PyTorch `.grad`)."""
    return params * grad_dtype_bytes


def optimizer_state_bytes(
    params: int, optimizer: Optimizer, state_dtype_bytes: int, *, matrix_shape_sum: int = 0
) -> int:
    """Optimizer state for `params` trainable parameters.

    - adamw: exp_avg + exp_avg_sq in the parameter dtype (torch.optim.AdamW, fused), 2 × dtype bytes.
    - adamw-8bit / paged-adamw-8bit: two uint8 moments + fp32 absmax per 256 values
      (2 + 8/256 B per parameter). Paged state lives in CUDA managed memory: it is resident
      on the device until evicted but is not counted by torch.cuda.max_memory_allocated().
    - sgd: no state (momentum 0, the HF default).
    - adafactor: factored second moment, one row and one column vector per matrix in fp32
      (`matrix_shape_sum` = Σ (rows + cols)), no first moment (beta1=None, HF default).
    """
    if optimizer == "adamw":
        return 2 * params * state_dtype_bytes
    if optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        return 2 * params + 2 * 4 * -(-params // BNB_8BIT_OPTIMIZER_BLOCK)
    if optimizer == "sgd":
        return 0
    if optimizer == "adafactor":
        return 4 * matrix_shape_sum
    raise ValueError(f"unknown optimizer {optimizer}")


def master_weight_bytes(params: int, dtype_bytes: int = 4) -> int:
    """Master copy DeepSpeed keeps for bf16/fp16 training with ZeRO: `dtype_bytes` (fp32: 4) per trainable parameter."""
    return dtype_bytes * params
