"""Full fine-tuning of a MoE model: a MoE block's expert backward.

Backward runs the blocks last to first: gradients pile up as it goes while the blocks' saved tensors are freed (with
checkpointing, the blocks below keep only their inputs and the block differentiated is recomputed). A MoE
block makes its experts' weight gradients (all E experts' gate_up and down stacks, most of its parameters) before its
attention's, and transformers 5's grouped_mm experts (integrations/moe.py grouped_mm_experts_forward) then hold,
beside the gradients made so far and the saved tensors of this block and every one below: the gradient of the block's
output (T × h, the stream's dtype), the gradient of the gate_up output (T·k × 2I, the SwiGLU's two halves
concatenated) and the gradient of the gathered input (T·k × h); of the experts' own saved tensors only the gathered
input (T·k × h) is left. Block by block the moment gains a block's gradients and loses its saved tensors, so the
largest is at the first MoE block (wide experts, short sequences: Mixtral at 2k tokens) or at the last (long
sequences, a small vocabulary). Traced on two blocks of Mixtral-8x7B, Qwen3-30B-A3B, Qwen1.5-MoE's shapes and
DeepSeek-V2-Lite (tests/test_expert_backward.py): within 0.05 %, where the planner was up to 5 % under before.
With checkpointing too (two-block Mixtral -4.8 % and Qwen3-30B-A3B -0.7 % at 2k tokens -> within 0.01 %). Autocast is
not modelled here (the CPU trace runs the experts' grouped_mm in fp32 under autocast).
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.activations import (
    block_arguments_bytes,
    block_input_bytes,
    first_block_unsaved_bytes,
    layer_activation_bytes,
    per_rank_bytes,
)
from swiftplan.planner.architecture import embedding_params, layer_linears, layer_params, total_params
from swiftplan.planner.dtypes import activation_dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.recompute import SHARED_BEFORE_ROUTED, stream_gradient_bytes
from swiftplan.planner.setup import TrainSetup

EXPERT_BACKWARD = "a MoE block's expert backward"
"""Full fine-tuning: a MoE block's experts differentiate beside the gradients made so far."""


def moe_layers(spec: ModelSpec) -> list[int]:
    """Indices of the blocks with a MoE MLP."""
    return [i for i in range(spec.num_layers) if spec.is_moe_layer(i)]


def applies(spec: ModelSpec, setup: TrainSetup) -> bool:
    """Full fine-tuning of a MoE model, checkpointed or not, plainly laid out (no FSDP, pipeline, autocast, optimizer
    in backward, selective checkpointing or offloading: each has moments of its own or is not traced here)."""
    knobs = setup.runtime
    return (
        setup.method == "full"
        and spec.moe is not None
        and knobs.ckpt_every == 1
        and not knobs.activation_offload
        and knobs.fsdp == "none"
        and not knobs.optimizer_in_backward
        and setup.parallel.pp == 1
        and not setup.precision.startswith("amp-")
        and setup.objective.kind != "rm"
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ExpertBackward:
    """One MoE block's expert backward: the bytes alive beside the weights and optimizer state."""

    layer: int
    gradients: int
    """Gradient bytes made by then."""
    saved: int
    """Saved activations still alive (this block's and every one before it)."""
    held: int
    """What the experts' backward holds beyond them (output, gate_up output and gathered input gradients)."""

    @property
    def total(self) -> int:
        return self.gradients + self.saved + self.held


def pending_gradient_params(spec: ModelSpec, layer: int) -> int:
    """Parameters whose gradients backward has not made yet at MoE block `layer`'s expert backward: the untied
    embedding, every block before it, and the block's own attention, norms and router (and a shared expert that runs
    before the routed ones)."""
    shared_first = spec.model_type in SHARED_BEFORE_ROUTED
    own = layer_params(spec, layer) - sum(
        lin.params
        for lin in layer_linears(spec, layer)
        if lin.kind == "experts" or (lin.block == "mlp" and lin.kind == "linear" and not shared_first)
    )
    embedding = 0 if spec.tie_word_embeddings else embedding_params(spec)
    return embedding + sum(layer_params(spec, i) for i in range(layer)) + own


def expert_backward(spec: ModelSpec, setup: TrainSetup, grads: int, *, tp: int = 1) -> ExpertBackward | None:
    """The larger of the first and the last MoE block's expert backward (`grads`: the device's gradient bytes); between
    them each block down adds its gradients and takes its saved tensors away, so one end is the most. None where
    `applies` is false."""
    layers = moe_layers(spec)
    if not layers or not applies(spec, setup):
        return None
    moe = spec.moe
    assert moe is not None
    tokens = setup.micro_batch * setup.seq_len
    cb = activation_dtype_bytes(setup)
    copies = tokens * moe.experts_per_token
    h, width = spec.hidden_size, moe.expert_intermediate_size
    blocks = [
        per_rank_bytes(layer_activation_bytes(spec, setup, i, tokens, setup.seq_len), tp)
        for i in range(spec.num_layers)
    ]
    # with checkpointing the blocks below keep only their inputs, and the block differentiating its recomputed
    # tensors keeps its input too
    kept_input = block_input_bytes(spec, setup, tokens) if setup.grad_ckpt else 0
    # the experts' saved tensors (gate_up output, activation, product, output) are freed by now, the gathered input
    # (T·k × h) kept for gate_up's weight gradient; a shared expert run after the routed ones is differentiated too
    freed = copies * cb * (4 * width + h) // tp
    if spec.model_type not in SHARED_BEFORE_ROUTED:
        freed += layer_activation_bytes(spec, setup, layers[0], tokens, setup.seq_len).mlp // tp
    held = stream_gradient_bytes(spec, setup, tokens) + copies * cb * (2 * width + h) // tp
    if moe.shared_expert_gate:
        # Qwen2-MoE scales its shared expert by sigmoid(gate) after the routed experts ran: that product's backward
        # came first, freeing its two saved factors and leaving the shared expert's output gradient and the gate's
        # input gradient (T × h each) waiting for theirs
        freed += tokens * cb * (h + 1) // tp
        held += 2 * tokens * h * cb // tp
    outside = block_arguments_bytes(spec, setup) - first_block_unsaved_bytes(spec, setup, tokens, tp=tp)
    total = max(total_params(spec), 1)
    moments = [
        ExpertBackward(
            layer=layer,
            gradients=grads - grads * pending_gradient_params(spec, layer) // total,
            saved=(layer * kept_input if setup.grad_ckpt else sum(blocks[:layer]))
            + blocks[layer]
            + kept_input
            - freed
            + outside,
            held=held,
        )
        for layer in {layers[0], layers[-1]}
    ]
    return max(moments, key=lambda moment: moment.total)
