"""Whether a training micro-batch carries padding, and whether SDPA then sees a mask.

While every row of a batch is full, transformers hands SDPA no mask and lets it run causal
(transformers 5.25 masking_utils._ignore_causal_mask_sdpa). One padded row makes it build a B × 1 × S × S bool
mask instead, and then each block's SDPA call pays for it: sdpa_attention_forward repeats k and v to every
query head (integrations/sdpa_attention.py use_gqa_in_sdpa needs no mask), and SDPA turns the bool mask into an
additive one in the compute dtype (aten convert_boolean_attn_mask), which the memory-efficient kernel keeps for
backward; with checkpointing the bool mask is every block's saved argument. Eager attention builds its
B × 1 × S × S mask padded or not; flash attention unpads the batch instead (not modelled).

Which batches are padded is the runtime's batching (`RuntimeKnobs.padding`) applied to data whose samples differ
in length (`TrainSetup.variable_lengths`): padding every row to seq_len (max_length) or to a multiple pads a
sample that falls short even alone in its micro-batch; padding to the longest sample of each micro-batch never pads
a micro-batch of one sequence; unmasked runtimes give the model no padding mask. Every batching but max_length also
hands the caching allocator many tensor shapes (`varied_shapes`).
"""

from __future__ import annotations

from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup


def has_padding(setup: TrainSetup) -> bool:
    """True when the worst micro-batch carries padding the model is told about (see the module docstring)."""
    if not setup.variable_lengths:
        return False
    padding = setup.runtime.padding
    return padding in ("max_length", "multiple") or (padding == "longest" and setup.micro_batch > 1)


def varied_shapes(setup: TrainSetup) -> bool:
    """True when the samples vary in length and the batches with them (every batching but padding to seq_len):
    the caching allocator then sees many tensor sizes (`AllocatorSettings.variable_lengths`)."""
    return setup.variable_lengths and setup.runtime.padding != "max_length"


def padding_masked(spec: ModelSpec, setup: TrainSetup) -> bool:
    """True when SDPA receives a padding mask: padded batches through transformers' SDPA attention."""
    return has_padding(setup) and setup.attention == "sdpa" and not spec.eager_attention_only
