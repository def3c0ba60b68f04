"""Memory terms of the training features frameworks turn on beyond the loss and the optimizer kernel, each
a small formula with the framework source it follows (RuntimeKnobs fields, one flag each):

- selective activation checkpointing: every k-th block checkpointed (`ckpt_every`);
- activation offloading: saved tensors moved to host RAM in forward (`activation_offload`);
- FSDP CPU offload: parameters, gradients and optimizer state on the host (`fsdp_cpu_offload`);
- torchao float8 training: fp8 casts for the matmuls, fp8 all-gather under FSDP2 (`float8`).

torchao's NF4 base (`--quant nf4-torchao`) is a weight format: its bytes are in `weights.torchao_nf4_bytes`.
`activations.activation_phases` and `train_memory` compose these terms; `annotate_terms` writes their
formula and source into the breakdown. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import (
    embedding_params,
    final_norm_params,
    layer_linears,
    lm_head_params,
)
from swiftplan.planner.breakdown import Term
from swiftplan.planner.fsdp_memory import FSDP_GATHER_SOURCE, block_gradient_params, fsdp_gathered_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime_terms import saved_module_params
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.weights import BNB_QUANT_STATE_SOURCE, TORCHAO_NF4_SOURCE
from swiftplan.units import format_gib

OFFLOAD_STASH_TENSORS = 5
"""torchtune OffloadActivations(max_fwd_stash_size=5): offloaded tensors kept alive on the device until
that many newer ones were packed (and all of them until backward starts)."""
FP8 = 1

SELECTIVE_SOURCE = (
    "transformers 5.25.0 src/transformers/modeling_utils.py _set_gradient_checkpointing (every_n_layers: "
    "the GradientCheckpointingLayer at index i checkpointed when i % n == 0), trainer.py "
    "(activation_checkpointing_kwargs every_n_layers); "
    "pytorch/torchtune @ bd2a0fc torchtune/training/activations.py (checkpoint_wrapper: ac_mode 'selective' "
    "wraps a block when its 1-based position is a multiple of ac_option, with torch's NO_REENTRANT "
    "checkpoint_wrapper; the others keep their saved tensors), recipes/full_finetune_distributed.py "
    "(ac_mode/ac_option); torch 2.13 torch/distributed/algorithms/_checkpoint/checkpoint_wrapper.py; traced "
    "on a transformers model (tests/test_runtime_features_trace.py)"
)
OFFLOAD_SOURCE = (
    "pytorch/torchtune @ bd2a0fc torchtune/training/_activation_offloading.py (OffloadActivations: saved "
    "tensors >= 1024 B that are not parameters copied to pinned host memory; with streams the last "
    "max_fwd_stash_size = 5 stay on the device until backward, and in backward a node's tensors until the "
    "next node's are brought back; the output head runs under NoOpManager); unslothai/unsloth-zoo @ ce232d6 "
    "unsloth_zoo/gradient_checkpointing.py (checkpointed block inputs to CPU buffers, one or two GPU buffers "
    "in backward); traced with torch's save_on_cpu hooks (tests/test_runtime_features_trace.py)"
)
FSDP_OFFLOAD_SOURCE = (
    "torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_api.py (CPUOffloadPolicy: parameters, gradients "
    "and optimizer state on CPU, optimizer step on CPU), _fsdp_param.py (shards copied host-to-device before "
    "the all-gather), _fsdp_collectives.py (the reduce-scattered gradient copied device-to-host), "
    "_fsdp_state.py (the root module is not resharded after forward); pytorch/torchtune @ bd2a0fc "
    "torchtune/training/_distributed.py shard_model (fsdp_cpu_offload -> CPUOffloadPolicy, root "
    "reshard_after_forward=False); FSDP1 CPUOffload(offload_params=True) keeps the same on the host; traced "
    "with FSDP2 on a fake process group (tests/test_trace_fsdp.py)"
)
FLOAT8_SOURCE = (
    "pytorch/ao @ 36027d8 (torchao 0.18) torchao/float8/float8_linear.py (matmul_with_hp_or_float8_args "
    "saves the high-precision input and weight and casts to fp8 per matmul: in backward grad_output twice, "
    "the weight and the input), config.py (tensorwise dynamic scaling: no amax history buffers), "
    "fsdp_utils.py (fp8 all-gather); pytorch/torchtune @ bd2a0fc torchtune/training/quantization.py "
    "(Float8LinearConfig(enable_fsdp_float8_all_gather=True), the LM head 'output' kept bf16); traced on "
    "fake tensors (tests/test_runtime_features_trace.py); eager mode: torch.compile may save other tensors"
)


def check_features(setup: TrainSetup) -> None:
    """Refuse a set-up whose feature knobs contradict it, one sentence naming the flag."""
    knobs = setup.runtime
    if knobs.ckpt_every > 1 and not setup.grad_ckpt:
        raise SwiftplanError(
            f"--ckpt-every {knobs.ckpt_every} chooses which blocks activation checkpointing wraps; it needs "
            "--grad-ckpt (or --ckpt-every 1)."
        )
    if knobs.fsdp_cpu_offload and knobs.fsdp == "none":
        raise SwiftplanError(
            "--fsdp-cpu-offload moves FSDP's shards to host RAM; it needs --fsdp fsdp1 or fsdp2 "
            "(with DeepSpeed ZeRO use --offload)."
        )
    if knobs.float8 and (setup.method != "full" or setup.precision != "bf16"):
        raise SwiftplanError(
            "--float8 converts the trained nn.Linear layers of a bf16 model to torchao Float8Linear "
            f"(torchtune's full_finetune_distributed); it needs --method full --precision bf16, not "
            f"--method {setup.method} --precision {setup.precision}."
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedBytes:
    """Saved-activation bytes of the blocks (the shared tensors left out) at the moments that set the peak."""

    at_loss: int
    """End of forward."""
    in_backward: int
    """While the last checkpointed block is recomputed (or, offloaded, a block's tensors are brought back)."""
    below_first: int
    """Kept below the first recomputed block while it is recomputed (beyond one block input)."""
    block_input: int
    """One checkpointed block's kept input (0 when no block is checkpointed)."""
    offloaded: int = 0
    """Moved to host RAM (activation offloading)."""


def checkpointed_blocks(count: int, *, every: int, position: str = "first") -> list[int]:
    """0-based indices of the blocks checkpointing wraps when only every `every`-th is (0: none): the first
    of each group (transformers `every_n_layers`: i % k == 0, so ceil(L / k) blocks) or the last (torchtune
    selective `ac_option`: (i + 1) % k == 0, floor(L / k) blocks). Source: `SELECTIVE_SOURCE`."""
    if not every:
        return []
    offset = 0 if position == "first" else every - 1
    return [i for i in range(count) if i % every == offset]


def selective_saved(
    blocks: list[int], *, every: int, block_input: int, working: int, position: str = "first"
) -> SavedBytes:
    """Checkpointing every `every`-th block (`checkpointed_blocks`): wrapped blocks keep only their input,
    the others their saved tensors. Backward recomputes the last wrapped block once the plain blocks above
    it are done: wrapped inputs + plain blocks below it + that block + its gradient temporaries.
    Source: `SELECTIVE_SOURCE`."""
    wrapped = checkpointed_blocks(len(blocks), every=every, position=position)
    if not wrapped:
        total = sum(blocks)
        return SavedBytes(at_loss=total, in_backward=total, below_first=0, block_input=0)
    plain = [i for i in range(len(blocks)) if i not in set(wrapped)]
    kept = len(wrapped) * block_input
    recomputed = max(blocks[i] for i in wrapped)
    return SavedBytes(
        at_loss=kept + sum(blocks[i] for i in plain),
        in_backward=kept + sum(blocks[i] for i in plain if i < wrapped[-1]) + recomputed + working,
        below_first=sum(blocks[i] for i in plain if i < wrapped[0]),
        block_input=block_input,
    )


def offloaded_saved(saved: SavedBytes, *, largest: int, every: int, count: int, working: int) -> SavedBytes:
    """Activation offloading over `saved` (torchtune OffloadActivations with streams): every saved tensor
    goes to host RAM in forward; on the device stay, at the loss, the last 5 offloaded tensors — 5 block
    inputs when every block is checkpointed, else at most the last block's tensors — and in backward one
    block's tensors brought back (plus, checkpointed, its input and the previous node's) with its
    gradient temporaries. Source: `OFFLOAD_SOURCE`."""
    wrapped = saved.block_input > 0
    stash = min(OFFLOAD_STASH_TENSORS, count) * saved.block_input if wrapped and every == 1 else largest
    brought_back = 2 * saved.block_input if wrapped else 0
    return SavedBytes(
        at_loss=min(stash, saved.at_loss),
        in_backward=brought_back + largest + working,
        below_first=saved.block_input,
        block_input=saved.block_input,
        offloaded=max(0, saved.at_loss - stash),
    )


def float8_linear_backward_bytes(tokens: int, in_features: int, out_features: int) -> int:
    """Bytes torchao's Float8Linear adds to one Linear's backward beyond a bf16 Linear's: the fp8 copies it
    makes — grad_output twice (for the input and the weight gradient, T × out each), the weight (in × out)
    and the saved input (T × in), all alive until its backward returns — and the working set of its
    largest cast (`tensor.to(float32) * scale`, then the saturating clamp and the fp8 result: ≈ 9 B per
    element). Scales are scalars (tensorwise). Source: `FLOAT8_SOURCE` (float8_linear.py backward,
    float8_training_tensor.py _ToFloat8ConstrFunc); traced within 20 % (tests)."""
    copies = tokens * (2 * out_features + in_features) + in_features * out_features
    largest = max(tokens * out_features, tokens * in_features, in_features * out_features)
    return copies * FP8 + 9 * largest


def float8_cast_bytes(spec: ModelSpec, setup: TrainSetup, tokens: int) -> int:
    """float8: `float8_linear_backward_bytes` of a block's widest Linear (the saved tensors are the bf16
    ones a Linear keeps anyway, so activations do not change); 0 without float8."""
    if not setup.runtime.float8:
        return 0
    return max(
        float8_linear_backward_bytes(tokens, lin.in_features, lin.out_features)
        for lin in layer_linears(spec, 0) + layer_linears(spec, spec.num_layers - 1)
        if lin.kind == "linear"
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class FsdpOffload:
    """Per-device bytes of the parameter-sized terms under FSDP CPU offload."""

    weights: int
    adapters: int
    gradients: int
    """One unit's unsharded gradient before its reduce-scatter (and the root's, full fine-tuning)."""
    gathered: int
    """Gathered units in backward (`FsdpGathered.in_backward`)."""
    host: int
    """Bytes this rank keeps in host RAM: its parameter, gradient and optimizer shards."""


def fsdp_cpu_offload_states(
    spec: ModelSpec, setup: TrainSetup, layers: range, *, weights: int, adapters: int, rest: int, bytes_: tuple[int, int]
) -> FsdpOffload:  # fmt: skip
    """FSDP CPU offload: this rank's shards (`weights`, `adapters`; `rest` = gradient, optimizer and master
    shards) move to host RAM; the device holds the gathered units (`fsdp_gathered`: full_shard a block at a time,
    two with prefetch, shard_grad_op every block from its forward to its backward; the root through the step).
    `bytes_` = (weight, gradient) dtype bytes. Source: `FSDP_OFFLOAD_SOURCE`."""
    wb, gb = bytes_
    tp = setup.parallel.tp
    return FsdpOffload(
        weights=0,
        adapters=0,
        gradients=_unit_gradient_params(spec, setup, layers) * gb // tp
        + saved_module_params(spec, setup.runtime) * wb // tp,
        gathered=fsdp_gathered_bytes(spec, setup, layers, wb),
        host=rest + weights + adapters,
    )


def _unit_gradient_params(spec: ModelSpec, setup: TrainSetup, layers: range) -> int:
    """Trainable parameters whose gradient one FSDP unit holds unsharded before its reduce-scatter: the
    largest block's (LoRA: its adapters), and for full fine-tuning the root's (embedding, final norm, LM
    head), reduced only when the whole backward is done."""
    if setup.trains_adapters:
        return block_gradient_params(spec, setup, layers)
    root = embedding_params(spec) + lm_head_params(spec) + final_norm_params(spec)
    return block_gradient_params(spec, setup, layers) + root


def annotate_terms(
    spec: ModelSpec, setup: TrainSetup, terms: tuple[Term, ...], *, offloaded: int, gathered: int,
    quant_constants: int = 0,
) -> tuple[Term, ...]:  # fmt: skip
    """The breakdown's terms with each active feature's share of the formula and its source."""
    notes = _feature_notes(
        spec, setup, offloaded=offloaded, gathered=gathered, quant_constants=quant_constants
    )
    out = []
    for term in terms:
        extra = notes.get(term.name)
        if extra is None:
            out.append(term)
            continue
        formula, source = extra
        joined = "; ".join(s for s in (term.source, source) if s)
        out.append(replace(term, formula=term.formula + "; " + formula, source=joined))
    return tuple(out)


def _feature_notes(
    spec: ModelSpec, setup: TrainSetup, *, offloaded: int, gathered: int, quant_constants: int
) -> dict[str, tuple[str, str]]:
    """Term name → (formula clause, source) for each active feature."""
    knobs = setup.runtime
    notes: dict[str, list[tuple[str, str]]] = {}
    if setup.quant == "nf4-torchao":
        notes.setdefault("weights", []).append(
            ("block linears as torchao NF4Tensor: n/2 + n/64 + (n/16384 + 17) × 2 B each", TORCHAO_NF4_SOURCE)
        )
    if quant_constants:
        clause = (f"bitsandbytes' 4-bit constants {format_gib(quant_constants)} whole on every rank (not in the "
                  "sharded data)")  # fmt: skip
        notes.setdefault("weights", []).append((clause, BNB_QUANT_STATE_SOURCE))
    if knobs.ckpt_every > 1 and setup.grad_ckpt:
        stage = -(-spec.num_layers // setup.parallel.pp)
        wrapped = len(checkpointed_blocks(stage, every=knobs.ckpt_every, position=knobs.ckpt_position))
        clause = (f"selective checkpointing: the {knobs.ckpt_position} block of every {knobs.ckpt_every} wrapped "
                  f"({wrapped} of {stage} per stage), the others keep their saved tensors")  # fmt: skip
        notes.setdefault("activations", []).append((clause, SELECTIVE_SOURCE))
    if knobs.activation_offload:
        clause = (f"activation offloading: {format_gib(offloaded)} of saved tensors in host RAM, on the device the last "
                  f"{OFFLOAD_STASH_TENSORS} offloaded tensors at the loss and one block brought back in backward")  # fmt: skip
        notes.setdefault("activations", []).append((clause, OFFLOAD_SOURCE))
    if knobs.fsdp_cpu_offload:
        for name in ("weights", "adapters", "gradients", "optimizer", "master_weights"):
            clause = "FSDP CPU offload: shards in host RAM" + (
                ", one unit's unsharded gradient on the device" if name == "gradients" else ""
            )
            notes.setdefault(name, []).append((clause, FSDP_OFFLOAD_SOURCE))
    if gathered and knobs.fsdp != "none":
        clause = (f"FSDP gathered units {format_gib(gathered)} in backward (the root unit, kept gathered from forward to "
                  "backward, and two blocks; shard_grad_op every unit); at the loss the root and one block, at the "
                  "start of forward the root's and the first block's all-gather buffers and copies")  # fmt: skip
        notes.setdefault("transient", []).append((clause, FSDP_GATHER_SOURCE))
    if knobs.float8:
        clause = "float8: fp8 casts of the widest Linear's backward (grad_output ×2, input, weight) in a block's backward"
        notes.setdefault("activations", []).append((clause, FLOAT8_SOURCE))
        if knobs.fsdp != "none":
            notes.setdefault("transient", []).append(
                ("float8: FSDP gathers the Linear weights in fp8", FLOAT8_SOURCE)
            )
    return {
        name: ("; ".join(c for c, _ in parts), "; ".join(dict.fromkeys(s for _, s in parts)))
        for name, parts in notes.items()
    }
