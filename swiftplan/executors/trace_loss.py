"""Loss implementations the tracer runs besides the model's own `ForCausalLMLoss`.

`chunked_loss` is torchtune's chunked cross-entropy: the decoder's last hidden states go through the LM
head in `chunks` pieces along the sequence (the model returns the list of compute-dtype logit pieces), and
`CEWithChunkedOutputLoss` upcasts each piece to fp32 and cross-entropies it against its labels; the sum
is divided by the number of counted tokens. Source: pytorch/torchtune
torchtune/modules/transformer.py (TransformerDecoder.chunked_output, num_output_chunks) and
torchtune/modules/loss/ce_chunked_output_loss.py @ bd2a0fc. Everything from the LM head's input to the
loss is counted as "logits", as the model's own loss is (`trace_session.hook_logits`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swiftplan.executors.trace_memory import MemoryTracker
from swiftplan.executors.trace_session import _causal_lm_of as causal_lm_of

IGNORE_INDEX = -100
"""Label of a position that is not counted (transformers' and torchtune's ignore index)."""


def chunked_loss(
    model: nn.Module, tracker: MemoryTracker, input_ids: torch.Tensor, *, chunks: int, autocast: Any = None
) -> torch.Tensor:
    """Forward with the loss computed over `chunks` pieces of the logits (see the module docstring).

    `autocast`: a context manager factory for AMP (the decoder and the LM head run under it; the pieces
    are upcast by the loss itself), or None."""
    import contextlib

    lm = causal_lm_of(model)
    decoder = getattr(lm, lm.base_model_prefix)
    head = lm.get_output_embeddings()
    labels = torch.cat(  # next-token labels: shift left, the last position not counted
        [input_ids[:, 1:], torch.full_like(input_ids[:, :1], IGNORE_INDEX)], dim=1
    )
    with autocast() if autocast is not None else contextlib.nullcontext():
        hidden = decoder(input_ids=input_ids).last_hidden_state
        pieces = [head(piece) for piece in hidden.chunk(chunks, dim=1)]  # hook_logits: "logits" from here
    counted = (labels != IGNORE_INDEX).sum()
    total = sum(
        F.cross_entropy(
            piece.float().reshape(-1, piece.shape[-1]),
            target.reshape(-1),
            reduction="sum",
            ignore_index=IGNORE_INDEX,
        )
        for piece, target in zip(pieces, labels.chunk(chunks, dim=1), strict=True)
    )
    del pieces  # the recipes drop the logits before backward
    tracker.context_category = "activations"  # the causal LM's forward hook does not run here
    return total / counted
