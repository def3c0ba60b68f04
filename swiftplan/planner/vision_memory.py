"""Training memory of a vision-language model: the language model over text + image tokens, plus the
vision tower and aligner on the device that holds the embeddings.

`train_memory_with_vision` runs `train_memory` for the language model with its sequence grown by the
image tokens (`--seq` counts text tokens only), then adds the vision parts at each candidate peak:
- weights of the tower and aligner in the model dtype (bitsandbytes leaves them unquantized: ms-swift
  puts them in `llm_int8_skip_modules`, swift/utils/transformers_utils.py `get_modules_to_not_convert`);
- when they train (`freeze_vit`/`freeze_aligner` False): full fine-tuning trains their weights, LoRA
  wraps their Linears (ms-swift's all-linear regex, `get_multimodal_target_regex`), with gradients,
  optimizer state and master copy like the language model's;
- pixel_values (fp32) for the whole step; a trained tower's saved activations at the loss; two more
  moments: the tower's forward (its largest block's working set) and, when it trains, its backward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.errors import SwiftplanError
from swiftplan.planner import vision_activations as va
from swiftplan.planner.adapters import lora_params_for
from swiftplan.planner.allocator import with_reserved
from swiftplan.planner.breakdown import Term
from swiftplan.planner.calibration import constant
from swiftplan.planner.dtypes import activation_dtype_bytes, dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime_terms import (
    adamw_impl_temporary_bytes,
    shard_degree,
    sharding_stage,
    zero_sharded,
)
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.planner.states import master_weight_bytes, optimizer_state_bytes, state_dtypes
from swiftplan.planner.train_memory import TrainMemory, train_memory
from swiftplan.planner.vision import VisionTower, require_vision_tower, vision_tower
from swiftplan.planner.vision_tokens import TOKEN_SOURCES, VisualTokens, visual_tokens

FREEZE_SOURCE = "ms-swift 4.6.0 swift/arguments/tuner_args.py (freeze_vit=True, freeze_aligner=True)"
_UNQUANTIZED_SOURCE = "ms-swift 4.6.0 swift/utils/transformers_utils.py get_modules_to_not_convert"
_LORA_SOURCE = "ms-swift 4.6.0 swift/utils/transformers_utils.py get_multimodal_target_regex"
VISION_PHASES = ("vision forward", "vision backward")
"""The moments the vision parts add to the language model's candidate peaks."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionStates:
    """Per-device bytes of the tower's and aligner's parameter-sized terms."""

    weights: int
    adapters: int
    gradients: int
    optimizer: int
    master: int
    trainable: int
    """Parameters that receive gradients (weights under full fine-tuning, adapters under LoRA)."""
    adapter_params: int
    """LoRA parameters on the tower and aligner."""
    step_temp: int
    """Optimizer-step temporaries of the vision share (AdamW foreach/for_loop)."""
    first_gradients: int = 0
    """Gradients that exist when the tower's backward peaks in its last block: the aligner's and one block's."""

    @property
    def static(self) -> int:
        """Alive through the whole step."""
        return self.weights + self.adapters + self.optimizer + self.master


def _trained_params(tower: VisionTower, setup: TrainSetup) -> tuple[int, int]:
    """(weights that train, LoRA parameters) of the tower and aligner under the set-up."""
    vision = setup.vision
    assert vision is not None
    if setup.trains_adapters:
        assert setup.lora is not None
        block = sum(lora_params_for(lin, setup.lora) for lin in tower.block_linears())
        aligner = sum(lora_params_for(lin, setup.lora) for lin in tower.aligner_linears())
        return 0, (0 if vision.freeze_vit else tower.depth * block) + (
            0 if vision.freeze_aligner else aligner
        )
    return (0 if vision.freeze_vit else tower.tower_params()) + (
        0 if vision.freeze_aligner else tower.aligner_params()
    ), 0


def vision_states(tower: VisionTower, setup: TrainSetup, *, dp: int) -> VisionStates:
    """Weights, adapters, gradients, optimizer state and master copy of the vision parts on one device,
    sharded as the language model's are (ZeRO-1 optimizer and master, -2 gradients, -3 weights)."""
    dtypes = state_dtypes(setup)
    full, lora = _trained_params(tower, setup)
    trainable = full + lora
    weights = tower.params() * dtype_bytes(dtypes.weights)
    adapters = lora * dtype_bytes(dtypes.adapters)
    grad_bytes = dtype_bytes(dtypes.gradients)
    grads = trainable * grad_bytes
    optim = optimizer_state_bytes(trainable, setup.optimizer, dtype_bytes(dtypes.optimizer),
                                  matrix_shape_sum=2 * trainable)  # fmt: skip
    master = master_weight_bytes(trainable, dtype_bytes(dtypes.master)) if dtypes.master else 0
    stage, shards = sharding_stage(setup), shard_degree(setup, dp)
    optim, master, grads = zero_sharded(setup, dp, optimizer=optim, master=master, gradients=grads)
    if stage == 3:
        weights, adapters = weights // shards, adapters // shards
    step = 0
    if setup.optimizer == "adamw" and setup.parallel.offload == "none" and trainable:
        step = adamw_impl_temporary_bytes(setup.runtime, trainable=trainable, largest=min(trainable, tower.width * tower.intermediate),
                                          state_bytes=dtype_bytes(dtypes.optimizer))  # fmt: skip
    if setup.parallel.offload != "none":
        optim, master = 0, 0
    first = _first_trained_params(tower, setup)
    return VisionStates(weights=weights, adapters=adapters, gradients=grads, optimizer=optim, master=master,
                        trainable=trainable, adapter_params=lora, step_temp=step,
                        first_gradients=grads * first // trainable if trainable else 0)  # fmt: skip


def _first_trained_params(tower: VisionTower, setup: TrainSetup) -> int:
    """Trained parameters of the aligner and the tower's last block: those whose gradients backward reaches first."""
    vision = setup.vision
    assert vision is not None
    if setup.trains_adapters:
        assert setup.lora is not None
        block = sum(lora_params_for(lin, setup.lora) for lin in tower.block_linears())
        aligner = sum(lora_params_for(lin, setup.lora) for lin in tower.aligner_linears())
    else:
        block, aligner = tower.block_params(), tower.aligner_params()
    return (0 if vision.freeze_vit else block) + (0 if vision.freeze_aligner else aligner)


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionActivations:
    """Activation bytes of the vision parts on one device."""

    inputs: int
    """pixel_values, alive for the whole step."""
    tower: int
    """Saved by the tower until its backward (blocks, or their inputs under checkpointing; rotary tables)."""
    aligner: int
    """Saved by the aligner until its backward."""
    leaf: int
    """The language model's input embeddings kept by autograd: with checkpointing and a frozen embedding,
    transformers' `enable_input_require_grads` makes them a leaf its AccumulateGrad node holds, and in a
    vision-language model block 0 reads masked_scatter's copy instead, so they are an extra B × S × h."""
    first_norm: int
    """The language model's first norm keeps its fp32 copy and rsqrt once its input (masked_scatter of image
    features that need a gradient) does; with a frozen embedding and frozen vision parts it keeps nothing."""
    forward_extra: int
    """At the tower's forward peak, beyond inputs and saved: the 16-bit pixel cast, the input embeddings and
    the largest block's working set."""
    backward_extra: int
    """During the tower's backward: a checkpointed block recomputed, the gradients it computes and the
    input embeddings' gradient."""

    @property
    def saved(self) -> int:
        """Saved for backward at the loss."""
        return self.tower + self.aligner + self.leaf + self.first_norm


def tower_records_graph(setup: TrainSetup) -> bool:
    """Gradients pass through the tower: it trains, or the aligner trains with checkpointing on (ms-swift
    then checkpoints the tower too and its input-grad hook on the patch embedding makes the frozen tower
    record a graph: swift/trainers/mixin.py `_prepare_gradient_checkpointing`, swift/model/patcher.py)."""
    vision = setup.vision
    assert vision is not None
    return not vision.freeze_vit or (not vision.freeze_aligner and setup.grad_ckpt)


def _tower_saved(tower: VisionTower, setup: TrainSetup, n: int) -> tuple[int, int]:
    """(saved by the tower's blocks and rotary tables at the loss, one block's saved tensors when it is
    recomputed in backward under checkpointing)."""
    vision = setup.vision
    assert vision is not None
    if not tower_records_graph(setup):
        return 0, 0
    trains = not vision.freeze_vit
    block = va.block_saved_bytes(tower, setup, n, weights_train=trains)
    if setup.grad_ckpt:
        return tower.depth * va.block_input_bytes(tower, setup, n) + va.shared_bytes(tower, n), block
    # block 0's input needs a gradient only behind a trained patch embedding
    first = va.block_saved_bytes(tower, setup, n, weights_train=trains, first_norm=not setup.trains_adapters)
    return first + (tower.depth - 1) * block + va.shared_bytes(tower, n), 0


def _backward_working(tower: VisionTower, setup: TrainSetup, n: int) -> int:
    """Beyond a recomputed block's saved tensors, the most its backward holds at once (traced): with LoRA on the
    tower, the MLP input gradient in fp32 beside the norm's (fc1/fc2), or for a gated MLP the recomputation's
    own peak (up's base output beside peft's fp32 lora_B·scaling and sum); with trained weights two 16-bit MLP
    gradients and the norm's; through a frozen tower three."""
    vision = setup.vision
    assert vision is not None
    cb = activation_dtype_bytes(setup)
    width = n * tower.intermediate
    if setup.trains_adapters and not vision.freeze_vit:
        if tower.gated_mlp:
            return width * (2 * va.FP32 + cb)
        return width * va.FP32 + n * tower.width * cb
    grads = 3 if vision.freeze_vit else 2
    return grads * width * cb + n * tower.width * cb


def vision_activations(
    spec: ModelSpec, tower: VisionTower, setup: TrainSetup, tokens: VisualTokens, *, llm_seq: int
) -> VisionActivations:
    """Activations of the vision parts for one micro-batch of `setup.micro_batch` samples."""
    vision = setup.vision
    assert vision is not None
    n = setup.micro_batch * tokens.vit_tokens
    cb = activation_dtype_bytes(setup)
    tiles = n // tokens.segment if tower.cls_token and tokens.segment else 0
    pixels = va.pixel_bytes(tower, n - tiles)
    cast = pixels * cb // va.FP32  # the tower's 16-bit copy of pixel_values
    full_tower = not vision.freeze_vit and not setup.trains_adapters
    saved, recompute = _tower_saved(tower, setup, n)
    saved += cast if full_tower else 0  # a trained patch embedding keeps its input
    graph = tower_records_graph(setup)
    aligner = va.aligner_saved_bytes(tower, setup, n, trains=not vision.freeze_aligner, tower_graph=graph)
    embeds = setup.micro_batch * llm_seq * spec.hidden_size * cb
    lora_tower = setup.trains_adapters and not vision.freeze_vit
    features_need_grad = graph or not vision.freeze_aligner
    first_norm = 0
    if features_need_grad and setup.trains_adapters and not setup.grad_ckpt:
        first_norm = setup.micro_batch * llm_seq * (va.FP32 * spec.hidden_size + va.FP32)
    working = va.forward_working_bytes(tower, setup, n, lora=lora_tower)
    return VisionActivations(
        inputs=pixels,
        tower=saved,
        aligner=aligner if graph or not vision.freeze_aligner else 0,
        leaf=embeds if setup.grad_ckpt and setup.trains_adapters else 0,
        first_norm=first_norm,
        forward_extra=embeds
        + working
        + (0 if full_tower else cast)
        + (0 if graph else va.shared_bytes(tower, n)),
        backward_extra=recompute + _backward_working(tower, setup, n) + embeds if graph else 0,
    )


def _vision_peaks(
    llm: TrainMemory, setup: TrainSetup, states: VisionStates, acts: VisionActivations
) -> dict[str, int]:
    """Allocated bytes at each candidate peak: the language model's moments with the vision parts added
    (their gradients exist from the end of backward, their saved tensors until then), then the tower's
    forward, and its backward when gradients pass through it."""
    dev = llm.device
    accumulating = setup.grad_accum > 1
    base = states.static + acts.inputs
    peaks: dict[str, int] = {}
    for name, total in llm.phase_peaks:
        after_backward = name in ("optimizer step", "end of backward")
        grads = states.gradients if after_backward or accumulating else 0
        saved = 0 if after_backward else acts.saved
        peaks[name] = total + base + grads + saved + (states.step_temp if name == "optimizer step" else 0)
    llm_static = (
        dev.weights + dev.adapters + dev.optimizer + dev.master_weights + dev.reference + dev.aux_models
    )
    early_grads = (dev.gradients + states.gradients) if accumulating else 0
    peaks["vision forward"] = llm_static + base + early_grads + acts.tower + acts.forward_extra
    if acts.backward_extra:
        peaks["vision backward"] = (
            llm_static
            + base
            + dev.gradients
            + states.first_gradients
            + acts.tower
            + acts.leaf
            + acts.backward_extra
        )
    return peaks


def _vision_terms(tower: VisionTower, setup: TrainSetup, tokens: VisualTokens, states: VisionStates,
                  acts: VisionActivations, *, llm_seq: int) -> tuple[Term, ...]:  # fmt: skip
    """The vision lines of the breakdown, each with its formula and source."""
    vision = setup.vision
    assert vision is not None
    dtypes = state_dtypes(setup)
    trained = ", ".join(
        p for p, frozen in (("tower", vision.freeze_vit), ("aligner", vision.freeze_aligner)) if not frozen
    )
    how = (
        ("LoRA r" + str(setup.lora.rank) + " on every Linear of the " + trained)
        if setup.trains_adapters and setup.lora
        else "weights"
    )
    n = setup.micro_batch * tokens.vit_tokens
    return (
        Term(name="vision_tokens", value_bytes=0,
             formula=f"LLM sequence {llm_seq:,} = --seq {setup.seq_len:,} text + {tokens.images} image(s) × {tokens.llm_per_image:,}"
             + (f" + video {tokens.llm_video:,}" if tokens.llm_video else "") + f" tokens; {tokens.rule}",
             source=TOKEN_SOURCES[tower.family]),
        Term(name="vision_weights", value_bytes=states.weights,
             formula=f"{tower.family} tower {tower.tower_params():,} + aligner {tower.aligner_params():,} params × "
             f"{dtype_bytes(dtypes.weights)} B ({dtypes.weights}, never quantized)",
             source=_UNQUANTIZED_SOURCE),
        Term(name="vision_states", value_bytes=states.adapters + states.gradients + states.optimizer + states.master,
             formula=(f"{trained} trained ({how}): {states.trainable:,} params' adapters, gradients, "
                      f"{setup.optimizer} state" + (" and master copy" if states.master else ""))
             if trained else "tower and aligner frozen: no gradients or optimizer state",
             source=f"{FREEZE_SOURCE}; {_LORA_SOURCE}" if setup.trains_adapters and trained else FREEZE_SOURCE),
        Term(name="vision_activations", value_bytes=acts.inputs + acts.saved,
             formula=f"fp32 pixel_values {acts.inputs / 2**20:,.0f} MiB for {n:,} vision tokens"
             + (f" + saved tensors of {tower.depth} blocks" + (" (checkpointed: block inputs)" if setup.grad_ckpt else "")
                if not vision.freeze_vit else " (frozen tower: nothing saved)")
             + ("" if vision.freeze_aligner and vision.freeze_vit else " + aligner"),
             source="planner/vision_activations.py (transformers 5.25 modelling code, checked by tests/test_vision_trace.py)"),
    )  # fmt: skip


def _text_setup(setup: TrainSetup, image_tokens: int) -> TrainSetup:
    """The language model's set-up: image tokens join each sequence (a rollout's prompt carries them)."""
    objective, rollout = setup.objective, setup.objective.rollout
    if rollout is not None:
        objective = replace(objective, rollout=replace(rollout, prompt_len=rollout.prompt_len + image_tokens))
    return replace(setup, seq_len=setup.seq_len + image_tokens, vision=None, objective=objective)


def train_memory_with_vision(
    spec: ModelSpec, setup: TrainSetup, *, world_size: int = 1, device_memory_bytes: int = 80 * 2**30
) -> TrainMemory:
    """`train_memory` of a vision-language set-up (`setup.vision`): the language model over text + image
    tokens, with the tower and aligner's weights, trainable states and activations added at each moment."""
    if setup.vision is None:
        return train_memory(spec, setup, world_size=world_size, device_memory_bytes=device_memory_bytes)
    tower = require_vision_tower(spec)
    if setup.objective.kind != "sft":
        raise SwiftplanError(
            f"Images and video are planned for supervised fine-tuning; {setup.objective.kind} on {spec.name} "
            "(its paired, reference and rollout passes over the images) is not modelled yet.",
            hint="Plan the SFT step with the vision options, or the objective without them (text tokens only).",
        )
    tokens = visual_tokens(tower, setup.vision)
    llm_seq = setup.seq_len + tokens.llm_tokens
    llm = train_memory(spec, _text_setup(setup, tokens.llm_tokens), world_size=world_size,
                       device_memory_bytes=device_memory_bytes)  # fmt: skip
    par = setup.parallel
    states = vision_states(tower, setup, dp=max(1, world_size // (par.tp * par.pp)))
    acts = vision_activations(spec, tower, setup, tokens, llm_seq=llm_seq)
    peaks = _vision_peaks(llm, setup, states, acts)
    phase = max(peaks, key=lambda name: peaks[name])
    dev = llm.device
    transient = {"vision forward": acts.forward_extra, "vision backward": acts.backward_extra,
                 "optimizer step": dev.transient + states.step_temp}.get(phase, dev.transient)  # fmt: skip
    kept = tuple(t for t in dev.terms if t.name not in ("allocator_slack", "runtime_overhead"))
    device = replace(
        dev,
        weights=dev.weights + states.weights,
        adapters=dev.adapters + states.adapters,
        gradients=dev.gradients + states.gradients,
        optimizer=dev.optimizer + states.optimizer,
        master_weights=dev.master_weights + states.master,
        activations=dev.activations + acts.inputs + acts.saved,
        logits=dev.logits,
        transient=transient,
        peak_allocated=peaks[phase] + int(constant("runtime_overhead", "cublas_workspace_bytes")),
        peak_phase=phase,
        terms=kept + _vision_terms(tower, setup, tokens, states, acts, llm_seq=llm_seq),
    )
    phase_acts = {name: value + acts.inputs + (acts.saved if name not in ("optimizer step", "end of backward") else 0)
                  for name, value in llm.phase_activations.items()}  # fmt: skip
    phase_acts["vision forward"] = acts.inputs + acts.tower + acts.forward_extra
    phase_acts["vision backward"] = acts.inputs + acts.tower + acts.leaf + acts.backward_extra
    return replace(
        llm,
        device=with_reserved(spec, device, seq_len=llm_seq, extras=llm.extras, setup_cache=llm.setup_cache),
        moments=(),  # the tower's moments are not split into per-step bytes: the peak's alone
        params=llm.params + tower.params() + states.adapter_params,
        trainable_params=llm.trainable_params + states.trainable,
        phase_activations=phase_acts,
        phase_peaks=tuple(peaks.items()),
    )


def vision_notes(spec: ModelSpec, setup: TrainSetup | ServeSetup) -> list[str]:
    """A note when a vision-language model is planned without images: only its language model is counted."""
    tower = vision_tower(spec)
    if tower is None or setup.vision is not None:
        return []
    return [
        f"{spec.name} has a {tower.family} vision tower ({tower.params():,} parameters) that is not counted: "
        "pass --images-per-sample/--image-size (or --image-tokens) to plan with images."
    ]
