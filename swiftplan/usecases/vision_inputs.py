"""The vision-language options as a view receives them (images, video, what trains) → `VisionInputs`: one parser
for every view (fit, size and estimate's flags in cli/vision_options.py, the dashboard's job form), so an image
size or count is read and refused alike wherever it is typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.vision import VisionInputs

VISION_OPTIONS = (
    "images_per_sample",
    "image_size",
    "image_tokens",
    "video_frames",
    "train_vit",
    "train_aligner",
)
"""The vision options' parameter names (the CLI's typer parameters; the keys `build_vision_inputs` reads)."""


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


def build_vision_inputs(options: Mapping[str, Any], *, serving: bool) -> VisionInputs | None:
    """The `VisionInputs` the vision options describe (parameter names to values, None or missing: not given),
    or None when none was given (a text-only job)."""
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
        if name in given and not given[name] >= 0:
            raise SwiftplanError(f"{flag} must be at least 0, got {given[name]}.")
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
