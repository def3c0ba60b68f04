"""What a trainable Linear or a LoRA wrapper keeps for backward, per module (the block's sums: planner/activations.py)."""

from __future__ import annotations

from swiftplan.planner.adapters import is_targeted
from swiftplan.planner.architecture import Linear
from swiftplan.planner.dtypes import adapter_dtype, dtype_bytes
from swiftplan.planner.setup import TrainSetup

BOOL = 1


def linear_saves(linear: Linear, setup: TrainSetup, tokens: int, cb: int, model_type: str) -> tuple[int, int]:
    """(bytes saved as a trainable Linear input, bytes saved by a LoRA wrapper) for one module.

    Under autocast (amp) the residual stream is fp32, so each Linear reading it makes its own
    low-precision copy of the input (q, k and v each: not shared), and lora_A's input and output
    are in the autocast dtype rather than fp32. Otherwise they are in the adapter dtype
    (`dtypes.adapter_dtype`: fp32, the model dtype with --adapter-dtype model, or bf16 on a bitsandbytes base
    with kbit-bf16).
    """
    amp = setup.precision.startswith("amp-")
    if setup.trains_adapters:
        assert setup.lora is not None
        if not is_targeted(linear, setup.lora, model_type):
            return 0, 0
        width = linear.in_features
        mask = BOOL * width if setup.lora.dropout > 0 else 0
        ab = cb if amp else dtype_bytes(adapter_dtype(setup))
        return 0, tokens * (ab * width + mask + ab * setup.lora.rank)
    return tokens * linear.in_features * cb, 0
