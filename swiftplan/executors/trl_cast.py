"""TRL's bf16 cast of a bitsandbytes base's trainable parameters, as the executor and the tracer run it.

Every TRL 1.16 trainer, on a model loaded in 4 or 8 bit, casts each trainable parameter but DoRA's magnitude to
bf16 once LoRA wraps it (trl/trainer/sft_trainer.py:904-911, dpo_trainer.py:722-729, and the KTO, GRPO, RLOO and
reward trainers), citing peft issue 2889. The planner counts it as `--adapter-dtype kbit-bf16`
(`planner.dtypes.kbit_cast`).
"""

from __future__ import annotations

from typing import Any

DORA_MAGNITUDE = "lora_magnitude_vector"
"""peft's DoRA magnitude parameters, which TRL leaves in their dtype."""


def cast_trainable_to_bf16(net: Any) -> int:
    """Cast `net`'s trainable parameters (DoRA's magnitude excepted) to bf16 in place; returns how many."""
    import torch

    cast = 0
    for name, param in net.named_parameters():
        if param.requires_grad and DORA_MAGNITUDE not in name:
            param.data = param.data.to(torch.bfloat16)
            cast += 1
    return cast
