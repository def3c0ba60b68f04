"""A vision-language plan's vision inputs in the training engines' terms (pure): which parts train and
the pixel budget per image (and video frame) the planner counted tokens for.

The planner counts a Qwen2-VL / Qwen2.5-VL image's tokens from its size after the processor's
`smart_resize` within [min_pixels, max_pixels] (planner/vision_tokens.py). The engines resize before the
processor with bounds of their own, so the budget is rendered, or an image larger than planned becomes
more tokens than planned:

- ms-swift 4.6.0 resizes Qwen-VL images in qwen_vl_utils' `fetch_image` (swift/template/templates/qwen.py
  `Qwen2VLTemplate.replace_tag`, then the processor with `do_resize=False`), bounded by the MAX_PIXELS /
  VIDEO_MAX_PIXELS environment variables (swift/model/models/qwen.py `patch_qwen_vl_utils`,
  `compat_qwen_vl_utils`); qwen_vl_utils 0.0.14's own default is 16384 tokens (12.8 M pixels) per image,
  not the processor's 1280 tokens.
- Megatron-SWIFT takes ms-swift's flags and environment (swift/megatron/arguments/megatron_args.py
  freeze_vit / freeze_aligner; TemplateArguments max_pixels).
- LLaMA-Factory 0.9.5 scales an image above `image_max_pixels` (default 768 × 768) down before the
  processor (src/llamafactory/data/mm_plugin.py `_preprocess_image`; hparams/model_args.py).

The budget follows Qwen's rule (patch 14 × merge 2); for InternVL and LLaVA, whose tokens come from tiles
or a fixed square, it is the planned image's area, which leaves an image of the planned size as it is.

Freezing: ms-swift's `freeze_vit` / `freeze_aligner` (swift/arguments/tuner_args.py, both True by default)
and LLaMA-Factory's `freeze_vision_tower` / `freeze_multi_modal_projector` (hparams/finetuning_args.py,
both True by default) freeze those parts in full fine-tuning and keep LoRA's all-linear targets out of
them, which is what the plan's `freeze_vit` / `freeze_aligner` mean.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.executors.train_engines.common import refuse
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.vision import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    QWEN_VIDEO_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    VisionInputs,
)
from swiftplan.planner.vision_tokens import qwen_smart_resize

QWEN_FACTOR = 28
"""Pixels per LLM token side in Qwen2-VL and Qwen2.5-VL: patch_size 14 × spatial_merge_size 2 (every
published checkpoint's vision_config; transformers 5.25 models/qwen2_vl/image_processing_qwen2_vl.py)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionChoices:
    """The plan's vision inputs as engine settings."""

    freeze_vit: bool
    """The vision tower stays frozen."""
    freeze_aligner: bool
    """The aligner (projector / merger) stays frozen."""
    image_max_pixels: int
    """Pixels of one image after the planned resize: the cap that keeps its tokens as planned."""
    video_max_pixels: int
    """Pixels of one video frame after the planned resize; 0 without video."""
    video_frames: int
    """Frames per video as planned; 0 without video."""


def _resized_pixels(inputs: VisionInputs, *, video: bool) -> int:
    """The area the planner's smart_resize gives one image (or frame) of the planned size."""
    low, high = (
        (QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS) if video else (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    )
    if inputs.image_tokens and not video:
        return inputs.image_tokens * QWEN_FACTOR * QWEN_FACTOR
    if not inputs.image_width:
        return high
    height, width = qwen_smart_resize(inputs.image_height, inputs.image_width, factor=QWEN_FACTOR,
                                      min_pixels=low, max_pixels=high)  # fmt: skip
    return height * width


def vision_choices(setup: TrainSetup) -> VisionChoices | None:
    """The engine settings for the plan's vision inputs; None for a text-only plan."""
    inputs = setup.vision
    if inputs is None:
        return None
    return VisionChoices(
        freeze_vit=inputs.freeze_vit,
        freeze_aligner=inputs.freeze_aligner,
        image_max_pixels=_resized_pixels(inputs, video=False),
        video_max_pixels=_resized_pixels(inputs, video=True) if inputs.video_frames else 0,
        video_frames=inputs.video_frames,
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def ms_swift_args(choices: VisionChoices) -> list[str]:
    """`swift sft` flags: freeze_vit / freeze_aligner (TunerArguments) and max_pixels, TemplateArguments'
    cap on every multimodal model's images (swift/arguments/base_args/template_args.py)."""
    return ["--freeze_vit", _flag(choices.freeze_vit), "--freeze_aligner", _flag(choices.freeze_aligner),
            "--max_pixels", str(choices.image_max_pixels)]  # fmt: skip


def ms_swift_env(choices: VisionChoices) -> dict[str, str]:
    """The environment bounding qwen_vl_utils' smart_resize to the planned sizes: MAX_PIXELS per image, and
    for video VIDEO_MAX_PIXELS per frame and FPS_MAX_FRAMES frames (swift/model/models/qwen.py)."""
    env = {"MAX_PIXELS": str(choices.image_max_pixels)}
    if choices.video_frames:
        env.update(VIDEO_MAX_PIXELS=str(choices.video_max_pixels), FPS_MAX_FRAMES=str(choices.video_frames))
    return env


def llamafactory_keys(choices: VisionChoices) -> dict[str, int | bool]:
    """LLaMA-Factory keys: freeze_vision_tower, freeze_multi_modal_projector (FinetuningArguments),
    image_max_pixels and for video video_max_pixels / video_maxlen (ProcessorArguments)."""
    keys: dict[str, int | bool] = {
        "freeze_vision_tower": choices.freeze_vit,
        "freeze_multi_modal_projector": choices.freeze_aligner,
        "image_max_pixels": choices.image_max_pixels,
    }
    if choices.video_frames:
        keys.update(video_max_pixels=choices.video_max_pixels, video_maxlen=choices.video_frames)
    return keys


def refuse_vision(engine: str, setup: TrainSetup) -> None:
    """A vision-language plan for an engine rendered text-only by swiftplan: refused, naming the setting."""
    if setup.vision is not None:
        raise refuse(engine, "a vision-language plan (--images-per-sample, --image-size, --train-vit)",
                     "swiftplan renders images, their pixel budget and the frozen parts for ms-swift, "
                     "Megatron-SWIFT and LLaMA-Factory only, yet")  # fmt: skip
