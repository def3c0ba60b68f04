"""Per-parameter training state: gradients, optimizer moments and fp32 master weights.

Each function returns bytes for `params` trainable parameters before any sharding; the
caller divides by the data-parallel degree where ZeRO shards the term.
"""

from __future__ import annotations

from swiftplan.planner.setup import Optimizer

BNB_8BIT_OPTIMIZER_BLOCK = 256
"""bitsandbytes blockwise 8-bit optimizers keep one fp32 absmax per 256 state values (Dettmers et al. 2022)."""
BNB_MIN_8BIT_SIZE = 4096
"""Tensors with fewer elements than this keep 32-bit state in bitsandbytes (`min_8bit_size`)."""


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


def master_weight_bytes(params: int) -> int:
    """fp32 master copy DeepSpeed keeps for bf16/fp16 training with ZeRO: 4 B per trainable parameter."""
    return 4 * params
