"""Image options in `fit`: their refusal before the search (a text-only model, an objective other than SFT)
and the note saying what the images add to every candidate. `size` shares both (size_request, size_runs), so
the two verbs refuse and describe images alike.
"""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases.fit_request import FitRequest


def vision_note(spec: ModelSpec, vision: VisionInputs, *, serving: bool) -> str:
    """What the images add to every candidate: the tokens per sequence (by the processor's rule) and the tower."""
    from swiftplan.planner.vision import require_vision_tower
    from swiftplan.planner.vision_tokens import visual_tokens

    tower = require_vision_tower(spec)
    tokens = visual_tokens(tower, vision)
    if serving:
        return (f"images counted: each request's {tokens.llm_tokens:,} image/video tokens ({tokens.rule}) are part "
                f"of its --context, and the {tower.family} vision tower and its encoder cache are in every plan's "
                "memory and speed.")  # fmt: skip
    trained = [part for part, frozen in (("vision tower", vision.freeze_vit), ("aligner", vision.freeze_aligner))
               if not frozen]  # fmt: skip
    return (f"images counted: every sequence holds --seq text tokens + {tokens.llm_tokens:,} image/video tokens "
            f"({tokens.rule}); the {tower.family} vision tower and aligner "
            f"({', '.join(trained) + ' trained' if trained else 'frozen'}) are in every plan's memory and speed.")  # fmt: skip


def check_vision(request: FitRequest, spec: ModelSpec) -> None:
    """Image options need a vision-language model (planner/vision.py's one message for a text-only model) and,
    for training, supervised fine-tuning: refused before the search, so they never read as "nothing fits"."""
    if request.vision is None:
        return
    from swiftplan.planner.vision import require_vision_tower

    require_vision_tower(spec)
    kind = request.training.kind
    if request.task == "train" and kind != "sft":
        raise SwiftplanError(
            f"--task {kind} with image options: images and video are planned for supervised fine-tuning; {kind}'s "
            f"paired, reference and rollout passes over the images are not modelled yet.",
            hint="Plan the SFT step with the image options, or the objective without them (text tokens only).",
        )
