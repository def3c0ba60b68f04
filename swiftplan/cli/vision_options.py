"""The vision-language options (images, video, what trains): typer types and their parsing (planner/vision.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from swiftplan.errors import SwiftplanError
from swiftplan.planner.vision import VisionInputs

ImagesPerSampleOpt = Annotated[
    int | None,
    typer.Option(
        "--images-per-sample",
        help="Vision-language models: images per sample (default 1, or 0 when only --video-frames is given).",
    ),
]
ImageSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--image-size", help="Image WIDTHxHEIGHT in pixels, e.g. 1024x768 (default: the processor's largest)."
    ),
]
ImageTokensOpt = Annotated[
    int | None,
    typer.Option("--image-tokens", help="Language-model tokens per image, instead of --image-size."),
]
VideoFramesOpt = Annotated[
    int | None,
    typer.Option("--video-frames", help="Frames of one video per sample (Qwen2-VL/2.5-VL, InternVL)."),
]
TrainVitOpt = Annotated[
    bool | None,
    typer.Option("--train-vit/--freeze-vit", help="Train the vision tower (ms-swift default: frozen)."),
]
TrainAlignerOpt = Annotated[
    bool | None,
    typer.Option(
        "--train-aligner/--freeze-aligner", help="Train the aligner/projector (ms-swift default: frozen)."
    ),
]

VISION_OPTIONS = (
    "images_per_sample",
    "image_size",
    "image_tokens",
    "video_frames",
    "train_vit",
    "train_aligner",
)
"""The typer parameter names of the vision-language options."""


def parse_image_size(text: str) -> tuple[int, int]:
    """'1024x768' → (1024, 768); anything else is one error naming the flag and the form."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SwiftplanError(f"--image-size {text!r} is not WIDTHxHEIGHT in pixels; write it like 1024x768.")
    width, height = int(parts[0]), int(parts[1])
    if not width or not height:
        raise SwiftplanError(
            f"--image-size {text!r} has a side of 0 pixels; both sides must be at least 1 (e.g. 1024x768)."
        )
    return width, height


def build_vision_inputs(options: dict[str, Any], *, serving: bool) -> VisionInputs | None:
    """The `VisionInputs` the vision options describe, or None when none was given (a text-only estimate)."""
    given: dict[str, Any] = {n: options[n] for n in VISION_OPTIONS if options.get(n) is not None}
    if not given:
        return None
    trains = [
        f"--{'train' if given[n] else 'freeze'}-{n.split('_')[1]}"
        for n in ("train_vit", "train_aligner")
        if n in given
    ]
    if serving and trains:
        verb = (
            "choose what trains in fine-tuning; they do"
            if len(trains) > 1
            else "chooses what trains in fine-tuning; it does"
        )
        raise SwiftplanError(f"{' and '.join(trains)} {verb} not apply to --task serve.")
    for flag, name in (("--images-per-sample", "images_per_sample"), ("--image-tokens", "image_tokens"),
                       ("--video-frames", "video_frames")):  # fmt: skip
        if name in given:
            from swiftplan.cli import _checks

            _checks.at_least(flag, given[name], 0)
    if given.get("image_tokens") == 0:
        raise SwiftplanError(
            "--image-tokens 0 would give each image no tokens, and a vision processor makes at least a few of "
            "any image (Qwen2-VL 4, InternVL 256 per tile); valid values are 1 or more, within the model's minimum.",
            hint="Leave --image-tokens out to count from --image-size, or plan video alone with --images-per-sample 0 "
            "--video-frames N.",
        )
    width, height = parse_image_size(given["image_size"]) if "image_size" in given else (0, 0)
    video = given.get("video_frames", 0)
    only_video = video and not ({"image_size", "image_tokens"} & given.keys())
    images = given.get("images_per_sample", 0 if only_video else 1)
    return VisionInputs(images_per_sample=images, image_width=width, image_height=height,
                        image_tokens=given.get("image_tokens", 0), video_frames=video,
                        freeze_vit=not given.get("train_vit", False), freeze_aligner=not given.get("train_aligner", False))  # fmt: skip


def vision_args(options: dict[str, Any]) -> list[str]:
    """The vision options given in `options` as command-line arguments (to restate a job as another command):
    describe.vision_args, the one writer of these flags, which size's next fit command uses too."""
    from swiftplan.usecases.describe import vision_args as restated

    return restated(options)
