"""Image options in `fit`: their refusal before the search (a text-only model, an objective other than SFT),
the note saying what the images add to every candidate, and the serving engine a plan with images is made for
(planner/engines.py IMAGE_SERVE_ENGINES). `size` shares the first two (size_request, size_runs), so
the two verbs refuse and describe images alike.
"""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import Engine
from swiftplan.planner.hardware import Cluster
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


def serve_image_engine(request: FitRequest, cluster: Cluster, notes: list[str]) -> FitRequest:
    """Serving with images and neither --engine nor --runtime: planned for the first engine that serves a
    vision-language model's images on these devices (planner/engines.py IMAGE_SERVE_ENGINES), said in a note when it
    is not the engine a text plan would get; the request unchanged otherwise."""
    if (
        request.task != "serve"
        or request.vision is None
        or request.engine is not None
        or request.runtime is not None
    ):
        return request
    from dataclasses import replace

    from swiftplan.planner.engines import default_engine

    backend = cluster.accelerator.backend
    engine = default_engine("serve", backend, images=True)
    if engine.name != default_engine("serve", backend).name:
        notes.append(f"images: planned for {engine.name}, the first engine swiftplan launches that serves a "
                     "vision-language model's images (the built-in server serves text only; pass --engine to choose "
                     "another).")  # fmt: skip
    return replace(request, engine=engine.name)


def require_serve_image_engine(engine: Engine, *, runtime: str | None, engine_named: bool) -> None:
    """A serving plan with images is made only for an engine that serves them as planned (IMAGE_SERVE_ENGINES): one
    message naming the engine, what it lacks and the engines that can, before anything is searched."""
    from swiftplan.planner.engines import IMAGE_SERVE_ENGINES, image_serve_engines_text, serves_images
    from swiftplan.usecases.fit_engine import image_engine_choices

    if serves_images(engine):
        return
    chosen, ways = image_engine_choices(engine, IMAGE_SERVE_ENGINES, "serve", runtime=runtime,
                                        engine_named=engine_named)  # fmt: skip
    raise SwiftplanError(
        f"{chosen} does not serve a vision-language model's images as planned, so no serving plan with the image "
        f"options runs on it: only {image_serve_engines_text()} are given the plan's images per request and its pixel "
        "bound per image (LMDeploy takes them only per request; the built-in server serves text only).",
        hint=f"Use one that does ({', '.join(ways)}), or drop the image options to plan the text alone.",
    )
