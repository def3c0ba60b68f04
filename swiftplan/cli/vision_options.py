"""The vision-language options (images, video, what trains): typer types; their parsing is the use case's
(usecases/vision_inputs.py), which the dashboard's job form shares."""

from __future__ import annotations

from typing import Annotated, Any

import typer

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


def vision_args(options: dict[str, Any]) -> list[str]:
    """The vision options given in `options` as command-line arguments (to restate a job as another command):
    describe.vision_args, the one writer of these flags, which size's next fit command uses too."""
    from swiftplan.usecases.describe import vision_args as restated

    return restated(options)
