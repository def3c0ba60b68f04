"""Which engines train or serve a vision-language model on its images as planned, each with where its renderer
sets what the plan assumed (`IMAGE_TRAIN_ENGINES`, `IMAGE_SERVE_ENGINES`). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swiftplan.planner.engines import Engine


IMAGE_TRAIN_ENGINES: Mapping[str, str] = MappingProxyType(
    {
        "ms-swift": "executors/train_engines/ms_swift.py render_ms_swift: --freeze_vit, --freeze_aligner, "
        "--max_pixels and MAX_PIXELS/VIDEO_MAX_PIXELS (train_engines/vision.py ms_swift_args, ms_swift_env)",
        "megatron-swift": "executors/train_engines/megatron_swift.py render_megatron_swift: ms-swift's vision "
        "arguments and environment (train_engines/vision.py)",
        "llamafactory": "executors/train_engines/llamafactory.py render_llamafactory: freeze_vision_tower, "
        "freeze_multi_modal_projector, image_max_pixels, video_max_pixels/video_maxlen (train_engines/vision.py "
        "llamafactory_keys)",
    }
)
"""The training engines that train a vision-language model on its images as planned, each with where its renderer
sets what trains and the pixel budget per image. No other does: TRL and axolotl are rendered text-only and refuse a
vision plan (train_engines/vision.py refuse_vision), and swiftplan's own loop loads the language model with
AutoModelForCausalLM and feeds it text alone (executors/train/model.py, data.py)."""


def trains_images(engine: Engine) -> bool:
    """Whether `engine` trains a vision-language model on its images (IMAGE_TRAIN_ENGINES)."""
    return engine.task == "train" and engine.name in IMAGE_TRAIN_ENGINES


def image_engines_text() -> str:
    """The engines that train on images, for a message: 'ms-swift, megatron-swift and llamafactory'."""
    names = list(IMAGE_TRAIN_ENGINES)
    return ", ".join(names[:-1]) + f" and {names[-1]}"


IMAGE_SERVE_ENGINES: Mapping[str, str] = MappingProxyType(
    {
        "vllm": "executors/serve/vllm_cmd.py render_vllm: --limit-mm-per-prompt with the plan's images (and video) per "
        "request, --mm-processor-kwargs with its pixel bound per image or tile count (executors/serve/images.py)",
        "sglang": "executors/serve/sglang_cmd.py render_sglang: --limit-mm-data-per-request and --mm-process-config "
        "with the plan's pixel bound (executors/serve/images.py; an InternVL plan of fewer tiles than the model's most "
        "is refused there)",
    }
)
"""The serving engines given a vision-language plan's images per request and its bound per image, each with where
its renderer sets them. No other serves images as planned: LMDeploy takes the pixel bound and tile count only per
request (executors/serve/images.py), and the built-in server loads the language model with AutoModelForCausalLM and
takes text alone (executors/serve/loading.py, app.py)."""


def serves_images(engine: Engine) -> bool:
    """Whether `engine` serves a vision-language plan's images as planned (IMAGE_SERVE_ENGINES)."""
    return engine.task == "serve" and engine.name in IMAGE_SERVE_ENGINES


def image_serve_engines_text() -> str:
    """The engines that serve images, for a message: 'vllm and sglang'."""
    names = list(IMAGE_SERVE_ENGINES)
    return ", ".join(names[:-1]) + f" and {names[-1]}"
