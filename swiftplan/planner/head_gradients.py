"""The trained LM head's gradient moments in backward: stepped there (the optimizer in backward), held until a
tied embedding's gradient arrives, or summed across the pieces of torchtune's chunked loss. Traced:
tests/test_trace_knobs.py."""

from __future__ import annotations

from swiftplan.planner.dtypes import activation_dtype_bytes, dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime_terms import chunked_head_sum_bytes
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import gradient_bytes, state_dtypes

HEAD_STEP = "head step in backward"
"""Optimizer in backward, untied LM head: its gradient made and stepped while every activation is saved."""
CHUNK_SUM = "head gradients summed across chunks"
"""Chunked loss, trained LM head: the pieces' weight gradients summed while every activation is saved."""


def head_step_transient(spec: ModelSpec, setup: TrainSetup, step_temp: int) -> int:
    """The larger of what the untied head's in-backward step moment holds beyond its gradient and the saved
    activations: the logits' gradient (B × S × V, compute dtype; none under a fused linear loss) while the
    head's gradient is made, or the step's temporaries (`optimizer_step_temporaries`) after it is freed."""
    tokens = setup.micro_batch * setup.seq_len
    logits_grad = (
        0
        if setup.runtime.loss in ("fused_linear", "fused_head")
        else tokens * spec.vocab_size * activation_dtype_bytes(setup)
    )
    return max(logits_grad, step_temp)


def head_grad_bytes(spec: ModelSpec, setup: TrainSetup, grads: int) -> int:
    """The LM head's weight gradient that the head's backward makes (`grads`: the device's gradient bytes):
    full fine-tuning's (not a reward model's, which has no LM head) in the gradient dtype; under LoRA, peft's
    modules_to_save copy of lm_head (a parameter of its own, never tied) in the module dtype; else none."""
    if setup.trains_adapters:
        if "lm_head" not in setup.runtime.modules_to_save:
            return 0
        return gradient_bytes(spec.vocab_size * spec.hidden_size, dtype_bytes(state_dtypes(setup).saved))
    if setup.objective.kind == "rm" or grads == 0:
        return 0
    return min(
        grads, gradient_bytes(spec.vocab_size * spec.hidden_size, dtype_bytes(state_dtypes(setup).gradients))
    )


def in_backward_grads(spec: ModelSpec, setup: TrainSetup, grads: int) -> tuple[int, int]:
    """With the optimizer stepped in backward (one gradient, `grads`, alive at a time): (the LM head's gradient
    when the head's backward makes it, the gradient held through the rest of backward). Untied, the head's is
    stepped and freed at once and none is held; tied, it waits in autograd's input buffer until the
    embedding's arrives at the end of backward (then summed: the `end of backward` moment). LoRA's adapters'
    gradients are small and none is held. Traced (tests/test_trace_knobs.py)."""
    head = head_grad_bytes(spec, setup, grads)
    return head, head if spec.tie_word_embeddings and not setup.trains_adapters else 0


def chunk_summed_head(spec: ModelSpec, setup: TrainSetup, grads: int) -> int:
    """Bytes the trained LM head's backward holds beyond the saved activations when torchtune's chunked loss
    applied it once per piece (`runtime_terms.chunked_head_sum_bytes`); 0 for other losses, an untrained
    head, and under FSDP (its own moments)."""
    knobs = setup.runtime
    if knobs.loss != "chunked" or knobs.fsdp != "none":
        return 0
    return chunked_head_sum_bytes(
        batch=setup.micro_batch, seq=setup.seq_len, vocab=spec.vocab_size // setup.parallel.tp,
        chunks=knobs.loss_chunks, compute_bytes=activation_dtype_bytes(setup),
        head_grad_bytes=head_grad_bytes(spec, setup, grads) // setup.parallel.tp,
    )  # fmt: skip


def tied_sum_extra(spec: ModelSpec, setup: TrainSetup, head_grads: int) -> int:
    """Tied embeddings, full fine-tuning: what the embedding's gradient adds at the end of backward beyond the
    gradients. The buffer holds the head's gradient, a view of its mm output, so the sum is made out of place
    (two extra vocab × hidden gradients); under the chunked loss the buffer already holds the pieces' fresh
    sum and the embedding's is added in place (one extra). Source: torch 2.13
    torch/csrc/autograd/input_buffer.cpp `accumulate` (`can_accumulate_inplace`); measured with real CPU
    tensors. The fake-tensor trace adds out of place there too (FakeTensor is tensor-subclass-like): one
    vocab × hidden gradient more than a GPU holds (tests/test_trace_knobs.py, xfail)."""
    return head_grads if chunk_summed_head(spec, setup, head_grads) else 2 * head_grads
