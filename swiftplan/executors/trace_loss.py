"""Loss implementations the tracer runs besides the model's own `ForCausalLMLoss`.

`fused_head_loss` is TRL 1.16's SFT loss: the causal LM patched with TRL's own `add_fused_lm_head`
(trl/trainer/utils.py:1548), called with `fused_lm_head=True`, the loss `-log_probs` summed over the label mask
(trl/trainer/sft_trainer.py:1611-1616), its kernels on their CUDA path (`trace_trl.cuda_like_trl`).

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
SFT_FUSED_OUTPUTS = ("log_probs", "entropy", "is_top1")
"""What TRL 1.16's SFTTrainer asks the fused head for (trl/trainer/sft_trainer.py:1144-1147)."""


def install_fused_head(model: nn.Module, tracker: MemoryTracker) -> None:
    """Patch the causal LM inside `model` with TRL's fused LM head as SFTTrainer does (on the base model under
    peft), and count everything from the decoder's output to the loss as "logits", in forward and in backward
    until the decoder output's gradient exists (the LM head's own hook, `trace_session.hook_logits`, never
    fires: the fused head reads the head's weight directly)."""
    from trl.trainer.utils import add_fused_lm_head

    lm = causal_lm_of(model)
    add_fused_lm_head(lm, outputs=SFT_FUSED_OUTPUTS)
    decoder = getattr(lm, lm.base_model_prefix)

    def after_decoder(_module: nn.Module, _args: Any, output: Any) -> None:
        tracker.context_category = "logits"
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if hidden.requires_grad:

            def grad_hook(grad: torch.Tensor) -> None:
                tracker.classify([grad], "activations")
                tracker.context_category = "activations"

            hidden.register_hook(grad_hook)

    decoder.register_forward_hook(after_decoder)


def fused_head_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    autocast: Any = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SFTTrainer's loss through the fused head (`install_fused_head` first) over all-zero token ids, labels =
    input_ids (shifted by the head), every position counted. The ids are marked with their values
    (`trace_values.known`), so the head's `hidden_states[mask]` takes its shape from the real label mask under
    `KnownValues`; `autocast`, a context manager factory for AMP, or None; `attention_mask` goes to the model."""
    import contextlib

    from torch.utils._python_dispatch import _disable_current_modes

    from swiftplan.executors.trace_values import known

    with _disable_current_modes():
        real = torch.zeros(tuple(input_ids.shape), dtype=torch.long)
    known(input_ids, real)
    with autocast() if autocast is not None else contextlib.nullcontext():
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, fused_lm_head=True
        )
    return -outputs.log_probs.sum() / outputs.label_mask.sum().clamp(min=1)


def chunked_loss(
    model: nn.Module,
    tracker: MemoryTracker,
    input_ids: torch.Tensor,
    *,
    chunks: int,
    autocast: Any = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward with the loss computed over `chunks` pieces of the logits (see the module docstring).

    `autocast`: a context manager factory for AMP (the decoder and the LM head run under it; the pieces
    are upcast by the loss itself), or None; `attention_mask` goes to the decoder."""
    import contextlib

    lm = causal_lm_of(model)
    decoder = getattr(lm, lm.base_model_prefix)
    head = lm.get_output_embeddings()
    labels = torch.cat(  # next-token labels: shift left, the last position not counted
        [input_ids[:, 1:], torch.full_like(input_ids[:, :1], IGNORE_INDEX)], dim=1
    )
    with autocast() if autocast is not None else contextlib.nullcontext():
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
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
