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


def activation_dtype_bytes(setup: TrainSetup) -> int:
    """Bytes per element of saved activations: the compute dtype, or fp32 when a k-bit base was
    prepared with peft's fp32 upcast (its fp32 norms and embeddings make the whole stream fp32)."""
    return 4 if setup.kbit_upcast else dtype_bytes(compute_dtype(setup.precision))
