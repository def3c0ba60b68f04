"""Training speed of a vision-language set-up: the language model over text + image tokens, plus the
vision tower's own FLOPs (Kaplan accounting as planner/speed.py: 2 FLOPs per weight and token forward,
backward 2 more for the input gradient and 2 for a trained weight's gradient, checkpointing recomputes
the forward), added to the step's compute time at the same achieved FLOP/s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.speed import (
    ATTENTION_MATMULS,
    BACKWARD_PER_FORWARD_FROZEN,
    BACKWARD_PER_FORWARD_TRAINED,
    FLOPS_PER_MAC,
    TrainSpeed,
)
from swiftplan.planner.vision import VisionTower, require_vision_tower
from swiftplan.planner.vision_memory import tower_records_graph
from swiftplan.planner.vision_tokens import VisualTokens, visual_tokens


def vision_flops_per_sample(tower: VisionTower, setup: TrainSetup, tokens: VisualTokens) -> float:
    """Training FLOPs of the tower and aligner for one sample's images and video."""
    vision = setup.vision
    assert vision is not None
    n = tokens.vit_tokens
    block = sum(lin.params for lin in tower.block_linears())
    forward = FLOPS_PER_MAC * n * tower.depth * block
    forward += ATTENTION_MATMULS * FLOPS_PER_MAC * n * max(tokens.segment, 1) * tower.width * tower.depth
    aligner = (
        FLOPS_PER_MAC
        * (n // (tower.merge * tower.merge))
        * sum(lin.params for lin in tower.aligner_linears())
    )
    graph = tower_records_graph(setup)
    if not graph:
        backward = 0.0
    elif vision.freeze_vit or setup.trains_adapters:
        backward = BACKWARD_PER_FORWARD_FROZEN * forward
    else:
        backward = BACKWARD_PER_FORWARD_TRAINED * forward
    trains_aligner = not vision.freeze_aligner and not setup.trains_adapters
    aligner_backward = (
        BACKWARD_PER_FORWARD_TRAINED if trains_aligner else BACKWARD_PER_FORWARD_FROZEN
    ) * aligner
    recompute = forward if graph and setup.grad_ckpt else 0.0
    return (
        forward
        + backward
        + recompute
        + aligner
        + (aligner_backward if graph or not vision.freeze_aligner else 0)
    )


def with_vision_speed(
    spec: ModelSpec, setup: TrainSetup, predict: Callable[[TrainSetup], TrainSpeed]
) -> TrainSpeed:
    """`predict` (the text speed model) over the language model's text + image tokens, with the vision
    FLOPs added to the compute time; tokens/s counts the language model's tokens, image tokens included."""
    if setup.vision is None:
        return predict(setup)
    tower = require_vision_tower(spec)
    tokens = visual_tokens(tower, setup.vision)
    llm_seq = setup.seq_len + tokens.llm_tokens
    base = predict(replace(setup, seq_len=llm_seq, vision=None))
    share = vision_flops_per_sample(tower, setup, tokens) / (base.flops_per_token * llm_seq)
    extra_s = base.breakdown_s.get("compute", 0.0) * share
    step_s = base.step_time_s + extra_s
    tokens_per_step = base.tokens_per_s * base.step_time_s
    return replace(
        base,
        tokens_per_s=tokens_per_step / step_s,
        step_time_s=step_s,
        breakdown_s={**base.breakdown_s, "vision_compute": extra_s},
    )
