"""FSDP's gathered parameters and unsharded gradients on one device, moment by moment (pure: no torch).

FSDP (torch's `fully_shard`; FSDP1 gathers and reduces the same units) keeps each rank's shards at rest and
holds whole units only around their use. What is alive beyond the shards at each moment that can set the
peak, as FSDP2 on a fake process group shows it (tests/test_trace_fsdp.py, `executors/trace_fsdp.py`):

- the start of forward: the root unit's all-gather buffer is kept until the first block's copy-out returns
  (to overlap it with the next all-gather), so the root's and the first block's buffers and parameters
  coexist: 2 × (root + block);
- the last block's forward: the root, that block and its buffer (kept until the root's forward ends); at
  its copy-out also the previous block's buffer;
- the loss: the root, and the last block all-gathered again for backward (full_shard reshards a block after
  its forward); shard_grad_op keeps every unit gathered from its forward to its backward;
- a block's backward: the root, that block and the next one prefetched, the block's unsharded gradients and
  the reduce-scatter input they are copied to, and with full fine-tuning the LM head's gradient, held whole
  until the root unit reduces at the very end;
- the root's backward (full fine-tuning; the embedding's gradient comes last): the root's parameters and its
  whole gradients — tied, the LM head's, the embedding's and their out-of-place sum; untied, the LM head's and
  the embedding's, then their reduce-scatter input — and the previous unit's reduce-scatter input.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.planner.adapters import is_targeted, lora_params_for
from swiftplan.planner.architecture import embedding_params, layer_linears, layer_params, lm_head_params
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes

FSDP_GATHER_SOURCE = (
    "torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py (wait_for_unshard: in forward the "
    "previous unit's all-gather result is kept in all_gather_state until this unit's copy-out, the flat "
    "all-gather buffer alive beside the copied-out parameters; unshard/reshard per unit, backward prefetch of "
    "the next unit; post_backward: reshard, then foreach_reduce), _fsdp_state.py (_lazy_init: the root is not "
    "resharded after forward; its post-forward frees the last all-gather result), _fsdp_collectives.py "
    "(foreach_all_gather, foreach_all_gather_copy_out, foreach_reduce: the reduce-scatter input a copy of the "
    "unit's unsharded gradients, kept until the next reduce-scatter); test/distributed/_composable/fsdp/"
    "test_fully_shard_memory.py (3 blocks' unsharded parameters in forward; 1 block's parameters and 2 blocks' "
    "gradients in backward); traced with FSDP2 on a fake process group, moment by moment (tests/test_trace_fsdp.py)"
)

Moments = dict[str, tuple[int, int, int]]
"""Moment -> (allocated bytes, activations alive, what FSDP holds beyond the shards: gathered parameters and
unsharded gradients)."""


def fsdp_unit_bytes(spec: ModelSpec, setup: TrainSetup, layer: int, weight_bytes: int) -> int:
    """One gathered FSDP unit (a decoder block): its weights as gathered — a 4-bit base packed, and with
    float8 the Linear weights in fp8 (torchao fsdp_utils fp8 all-gather, 1 B + one fp32 scale each) — and its
    LoRA adapters (FSDP2 gathers a unit's mixed dtypes as bytes in one buffer)."""
    quant = "fp8" if setup.runtime.float8 else setup.quant
    base = layer_weight_bytes(
        spec, layer, dtype_bytes=weight_bytes, quant=quant, double_quant=setup.double_quant
    )
    lora = setup.lora
    if not setup.trains_adapters or lora is None:
        return base
    adapters = sum(
        lora_params_for(lin, lora)
        for lin in layer_linears(spec, layer)
        if is_targeted(lin, lora, spec.model_type)
    )
    return base + adapters * dtype_bytes(state_dtypes(setup).adapters)


@dataclass(frozen=True, kw_only=True, slots=True)
class FsdpGathered:
    """FSDP's gathered (unsharded) parameters on one device at the moments of a step that can set the peak,
    bytes; a unit's all-gather buffer counts while it is alive. Source: `FSDP_GATHER_SOURCE`."""

    forward_start: int
    """The first block's copy-out: the root's buffer and parameters, the first block's: 2 × (root + block)."""
    last_block: int
    """While the last block runs forward: full_shard the root, that block and its buffer; shard_grad_op every
    unit and that buffer."""
    at_loss: int
    """The last block's all-gather buffer (kept until the root's forward, the loss included, ends; then the
    block all-gathered again for backward) and, full_shard, the root; shard_grad_op every unit."""
    in_backward: int
    """full_shard: the root, the block computed and the one prefetched; shard_grad_op: every unit."""
    block_backward: int
    """While a block's backward runs, the block after it resharded: full_shard the root, that block and the one
    prefetched; shard_grad_op every unit but the one resharded."""
    block: int
    """One (the largest) block unit: the all-gather buffer of a block being copied out."""
    root: int
    """The root unit (embedding, final norm, LM head)."""


def fsdp_gathered(spec: ModelSpec, setup: TrainSetup, layers: range, weight_bytes: int) -> FsdpGathered:
    """What FSDP holds gathered at each moment: full_shard (and hybrid_shard) reshards a block after its
    forward and gathers the next one ahead; shard_grad_op keeps every block gathered from its forward to its
    backward; the root unit stays gathered from forward to backward."""
    tp = setup.parallel.tp
    block = max(fsdp_unit_bytes(spec, setup, i, weight_bytes) for i in layers) // tp
    root = outer_weight_bytes(spec, dtype_bytes=weight_bytes) // tp
    start = 2 * (root + block)
    if setup.runtime.fsdp_sharding == "shard_grad_op":
        every = root + sum(fsdp_unit_bytes(spec, setup, i, weight_bytes) for i in layers) // tp
        return FsdpGathered(forward_start=start, last_block=every + block, at_loss=every + block, in_backward=every,
                            block_backward=every - block, block=block, root=root)  # fmt: skip
    return FsdpGathered(forward_start=start, last_block=root + 2 * block, at_loss=root + block,
                        in_backward=root + 2 * block, block_backward=root + 2 * block, block=block, root=root)  # fmt: skip


def fsdp_gathered_bytes(spec: ModelSpec, setup: TrainSetup, layers: range, weight_bytes: int) -> int:
    """What FSDP holds gathered in backward (`FsdpGathered.in_backward`), the states' `gathered`."""
    return fsdp_gathered(spec, setup, layers, weight_bytes).in_backward


def block_gradient_params(spec: ModelSpec, setup: TrainSetup, layers: range) -> int:
    """Trainable parameters of the largest block (LoRA: its adapters; blocks differ only as dense vs MoE,
    hence the first and the last)."""
    ends = {layers[0], layers[-1]}
    lora = setup.lora
    if setup.trains_adapters and lora is not None:
        return max(
            sum(lora_params_for(lin, lora) for lin in layer_linears(spec, i) if is_targeted(lin, lora, spec.model_type))
            for i in ends
        )  # fmt: skip
    return max(layer_params(spec, i) for i in ends)


@dataclass(frozen=True, kw_only=True, slots=True)
class FsdpGradients:
    """FSDP's unsharded gradients on one device beyond the sharded ones, bytes. Source: `FSDP_GATHER_SOURCE`."""

    in_backward: int
    """While a block's backward runs: its whole gradients and the reduce-scatter input of the block before
    (kept until this block's reduce-scatter), and with full fine-tuning the LM head's gradient."""
    root_end: int
    """Full fine-tuning, the root's backward: its parameters and whole gradients, and the previous unit's
    reduce-scatter input (0 when the root does not train)."""
    block: int
    """One block's whole gradients."""


def fsdp_gradients(spec: ModelSpec, setup: TrainSetup, layers: range, *, weight_bytes: int, grad_bytes: int) -> FsdpGradients:  # fmt: skip
    """FSDP's unsharded gradients (see the module docstring). A reward model (no LM head) and LoRA (a frozen
    root) reduce only the blocks' gradients."""
    tp = setup.parallel.tp
    block = block_gradient_params(spec, setup, layers) * grad_bytes // tp
    if setup.trains_adapters or setup.objective.kind == "rm":
        return FsdpGradients(in_backward=2 * block, root_end=0, block=block)
    embedding = embedding_params(spec) * grad_bytes // tp
    head = lm_head_params(spec) * grad_bytes // tp or embedding
    root = outer_weight_bytes(spec, dtype_bytes=weight_bytes) // tp
    # tied: the LM head's gradient, the embedding's and their sum; untied: resharded before the
    # reduce-scatter input is made
    tied = root + 3 * embedding
    end = tied if spec.tie_word_embeddings else max(root, head + embedding) + head + embedding
    return FsdpGradients(in_backward=2 * block + head, root_end=end + block, block=block)


@dataclass(frozen=True, kw_only=True, slots=True)
class StepBytes:
    """The planner's figures of one step on one device that FSDP's moments are built on, bytes."""

    static: int
    """Alive through the step: shards of the parameters, optimizer state and master copy."""
    grads_during_fwd: int
    """Sharded gradients kept from earlier micro-batches (0 without accumulation)."""
    grads_without_root: int
    """Every sharded gradient but the root unit's (they exist when the root's backward runs)."""
    at_loss: int
    """Saved activations at the loss."""
    in_backward: int
    """Activations while the last block's backward runs (checkpointed: while it is recomputed)."""
    logits: int
    """The LM head's and the loss's bytes at the loss."""
    last_block_kept: int
    """What the last block keeps of `at_loss` (its saved tensors, or its input when checkpointed)."""
    grads_early: int = 0
    """Sharded gradients when the first block's backward runs (every other block's)."""
    block_shard: int = 0
    """One block's gradient shard."""
    recomputed_block: int = 0
    """Checkpointed: a recomputed block's saved tensors and its backward's working memory."""
    early_acts: int = 0
    """Activations then: the first block's saved tensors (recomputed) and its backward's working memory."""


def fsdp_moments(spec: ModelSpec, setup: TrainSetup, layers: range, step: StepBytes, *, weight_bytes: int, grad_bytes: int) -> Moments:  # fmt: skip
    """FSDP's candidate peaks: its forward moments, the loss, a block's backward (checkpointed: its
    recomputation, in place of the planner's) and the root's backward. Source: `FSDP_GATHER_SOURCE`."""
    held = fsdp_gathered(spec, setup, layers, weight_bytes)
    grads = fsdp_gradients(spec, setup, layers, weight_bytes=weight_bytes, grad_bytes=grad_bytes)
    base = step.static + step.grads_during_fwd
    ran = (step.at_loss, held.last_block)
    copy_out = (step.at_loss - step.last_block_kept, held.last_block + held.block)
    acts, last = max(ran, copy_out, key=sum)
    moments = {
        "FSDP forward start": (base + held.forward_start, 0, held.forward_start),
        "FSDP last block forward": (base + acts + last, acts, last),
        "loss and backward start": (base + held.at_loss + step.at_loss + step.logits, step.at_loss, held.at_loss),
    }  # fmt: skip
    # a block's backward, the largest of the second-last block's (the last one's saved tensors freed, no
    # gradient shard reduced; checkpointed: while it is recomputed), the second block's (the first one
    # prefetched, every shard but theirs reduced) and the first block's (nothing left to prefetch)
    recomputed = setup.grad_ckpt or setup.runtime.activation_offload
    late_acts = step.in_backward if recomputed else step.in_backward - step.last_block_kept
    # checkpointed, a block's gradients appear as its recomputed tensors are freed: the larger of the two
    overlap = max(0, grads.block - step.recomputed_block) - grads.block if recomputed else 0
    blocks = held.block_backward + grads.in_backward + overlap
    late = (step.grads_during_fwd, late_acts, blocks)
    second = (step.grads_during_fwd or max(0, step.grads_early - step.block_shard), step.early_acts + step.last_block_kept, blocks)  # fmt: skip
    early = (step.grads_during_fwd or step.grads_early, step.early_acts, held.root + held.block + grads.in_backward + overlap)  # fmt: skip
    shards, alive, extra = max(late, second, early, key=sum)
    moment = "recomputation in backward" if recomputed else "FSDP block backward"
    moments[moment] = (step.static + shards + alive + extra, alive, extra)
    if grads.root_end:
        end = step.static + step.grads_without_root + grads.root_end
        moments["end of backward"] = (end, 0, grads.root_end)
    return moments
