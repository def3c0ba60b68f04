"""How images and video become tokens: the vision tower's patches and the language model's tokens.

Each family follows its own processor in transformers 5.25:
- Qwen2-VL / Qwen2.5-VL: `smart_resize` to multiples of patch × merge within [min_pixels, max_pixels],
  then (h/14)·(w/14) patches and one LLM token per merge² patches; a video's frames are resized with the
  video processor's own pixel bounds and paired by temporal_patch_size
  (models/qwen2_vl/image_processing_qwen2_vl.py, video_processing_qwen2_vl.py, processing_qwen2_vl.py).
- InternVL: 256 tokens per 448² tile (image_seq_length = (448/14)² × downsample_ratio²), dynamic tiles
  plus a thumbnail (models/internvl/processing_internvl.py, models/got_ocr2/image_processing_got_ocr2.py);
  one tile per video frame.
- LLaVA: every image is resized to image_size², (image_size/patch)² patch tokens plus the CLS token the
  "default" feature strategy drops (models/llava/processing_llava.py, modeling_llava.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.vision import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    QWEN_VIDEO_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    VisionInputs,
    VisionTower,
    vision_tower,
)

TOKEN_SOURCES = {
    "qwen2_vl": "transformers 5.25 models/qwen2_vl/image_processing_qwen2_vl.py (smart_resize, min/max_pixels), "
    "video_processing_qwen2_vl.py, processing_qwen2_vl.py (merge_size² patches per token)",
    "qwen2_5_vl": "transformers 5.25 models/qwen2_vl/image_processing_qwen2_vl.py (smart_resize, min/max_pixels; Qwen2.5-VL reuses it: "
    "models/qwen2_5_vl/processing_qwen2_5_vl.py)",
    "internvl": "transformers 5.25 models/internvl/processing_internvl.py (image_seq_length 256 per tile), "
    "models/got_ocr2/image_processing_got_ocr2.py (get_optimal_tiled_canvas, max_patches 12, thumbnail)",
    "llava": "transformers 5.25 models/llava/processing_llava.py ((size/patch)² + CLS), modeling_llava.py "
    "(vision_feature_select_strategy 'default' drops the CLS feature)",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class VisualTokens:
    """One sample's images and video as the vision tower and the language model see them."""

    images: int
    """Images per sample."""
    llm_per_image: int
    """Language-model tokens one image becomes."""
    vit_per_image: int
    """Tokens the vision tower processes for one image (patches, CLS tokens of every tile)."""
    llm_video: int = 0
    """Language-model tokens of the sample's video."""
    vit_video: int = 0
    """Vision-tower tokens of the sample's video."""
    segment: int = 0
    """Longest run of vision tokens attending to each other (one image, frame or tile)."""
    grids: tuple[tuple[int, int, int], ...] = ()
    """Qwen: the (t, h, w) patch grid of each image then the video (image_grid_thw)."""
    rule: str = ""
    """How the counts were reached, for the breakdown."""

    @property
    def llm_tokens(self) -> int:
        """Image and video tokens the language model's sequence grows by."""
        return self.images * self.llm_per_image + self.llm_video

    @property
    def vit_tokens(self) -> int:
        """Tokens through the vision tower per sample."""
        return self.images * self.vit_per_image + self.vit_video


def qwen_smart_resize(
    height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2-VL's `smart_resize`: both sides multiples of `factor` (patch × merge), the area within
    [min_pixels, max_pixels], the aspect ratio kept (models/qwen2_vl/image_processing_qwen2_vl.py)."""
    if max(height, width) / min(height, width) > 200:
        raise SwiftplanError(
            f"Qwen2-VL's processor refuses images with an aspect ratio above 200; {width}x{height} has "
            f"{max(height, width) / min(height, width):.0f}."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def internvl_tiles(tower: VisionTower, width: int, height: int) -> int:
    """Tiles InternVL cuts an image into: the grid (columns × rows, 1 to max_tiles tiles) whose aspect
    ratio is closest to the image's, ties going to more tiles while they cover less than twice the image,
    plus a thumbnail when there is more than one tile (got_ocr2 `get_optimal_tiled_canvas`)."""
    grids = sorted(
        (
            (c, r)
            for c in range(1, tower.max_tiles + 1)
            for r in range(1, tower.max_tiles + 1)
            if c * r <= tower.max_tiles
        ),
        key=lambda g: g[0] * g[1],
    )
    aspect, area, tile = width / height, width * height, tower.image_size
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    tiles = best[0] * best[1]
    return tiles + 1 if tiles > 1 and tower.thumbnail else tiles


def _qwen_grid(tower: VisionTower, width: int, height: int, *, video: bool) -> tuple[int, int, str]:
    """(patch rows, patch columns, words) of one image or frame after smart_resize."""
    factor = tower.patch_size * tower.merge
    bounds = (QWEN_VIDEO_MIN_PIXELS, QWEN_VIDEO_MAX_PIXELS) if video else (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    if not width:  # the processor's largest image: the max_pixels budget on a square
        side = math.isqrt(bounds[1]) // factor * factor
        width = height = side
    h, w = qwen_smart_resize(height, width, factor=factor, min_pixels=bounds[0], max_pixels=bounds[1])
    return (
        h // tower.patch_size,
        w // tower.patch_size,
        f"{width}x{height} → {w}x{h} (smart_resize, factor {factor})",
    )


def _refuse_below(inputs: VisionInputs, least: int, why: str) -> None:
    """--image-tokens below the fewest tokens the processor makes of any image: refused with that minimum."""
    if 0 < inputs.image_tokens < least:
        raise SwiftplanError(
            f"--image-tokens {inputs.image_tokens} is below the {least} tokens this model's processor makes of "
            f"the smallest image ({why}); valid values are {least} or more.",
            hint="Give --image-tokens of at least that, or --image-size for the processor's own count.",
        )


def _qwen_tokens(tower: VisionTower, inputs: VisionInputs) -> VisualTokens:
    m2 = tower.merge * tower.merge
    factor = tower.patch_size * tower.merge
    h, w = qwen_smart_resize(
        factor, factor, factor=factor, min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS
    )
    _refuse_below(inputs, (h // factor) * (w // factor),
                  f"smart_resize brings it up to min_pixels: {w}x{h}, {factor}x{factor} pixels per token")  # fmt: skip
    if inputs.image_tokens:
        rows, cols, words = (
            tower.merge,
            inputs.image_tokens * tower.merge,
            f"{inputs.image_tokens} tokens given",
        )
    else:
        rows, cols, words = _qwen_grid(tower, inputs.image_width, inputs.image_height, video=False)
    per_image = rows * cols
    grids = [(1, rows, cols)] * inputs.images_per_sample
    rule = f"image {words}: {rows}×{cols} patches / {tower.merge}² = {per_image // m2} tokens"
    vit_video = llm_video = 0
    segment = per_image if inputs.images_per_sample else 0
    if inputs.video_frames:
        frames = -(-inputs.video_frames // tower.temporal_patch) * tower.temporal_patch
        v_rows, v_cols, v_words = _qwen_grid(tower, inputs.image_width, inputs.image_height, video=True)
        steps = frames // tower.temporal_patch
        vit_video = steps * v_rows * v_cols
        llm_video = vit_video // m2
        grids.append((steps, v_rows, v_cols))
        segment = max(segment, v_rows * v_cols)  # each temporal step attends on its own (cu_seqlens per t)
        rule += (f"; video {frames} frames / {tower.temporal_patch} per patch × {v_rows}×{v_cols} patches "
                 f"({v_words}) / {tower.merge}² = {llm_video} tokens")  # fmt: skip
    return VisualTokens(images=inputs.images_per_sample, llm_per_image=per_image // m2, vit_per_image=per_image,
                        llm_video=llm_video, vit_video=vit_video, segment=segment, grids=tuple(grids), rule=rule)  # fmt: skip


def _internvl_tokens(tower: VisionTower, inputs: VisionInputs) -> VisualTokens:
    side = tower.image_size // tower.patch_size
    per_tile = side * side // (tower.merge * tower.merge)
    _refuse_below(inputs, per_tile, f"one {tower.image_size}² tile")
    if inputs.image_tokens:
        tiles, words = -(-inputs.image_tokens // per_tile), f"{inputs.image_tokens} tokens given"
    elif inputs.image_width:
        tiles = internvl_tiles(tower, inputs.image_width, inputs.image_height)
        words = f"{inputs.image_width}x{inputs.image_height} → {tiles} tiles of {tower.image_size}²"
    else:
        tiles = tower.max_tiles + (1 if tower.thumbnail else 0)
        words = f"at most {tower.max_tiles} tiles + thumbnail"
    llm_image = inputs.image_tokens or tiles * per_tile
    rule = f"image {words}: {per_tile} tokens per tile ((448/14)² × downsample²) = {llm_image} tokens"
    frames = inputs.video_frames
    if frames:
        rule += f"; video {frames} frames × 1 tile × {per_tile} = {frames * per_tile} tokens"
    return VisualTokens(images=inputs.images_per_sample, llm_per_image=llm_image, vit_per_image=tiles * (side * side + 1),
                        llm_video=frames * per_tile, vit_video=frames * (side * side + 1), segment=side * side + 1,
                        rule=rule)  # fmt: skip


def _llava_tokens(tower: VisionTower, inputs: VisionInputs) -> VisualTokens:
    if inputs.video_frames:
        raise SwiftplanError(
            f"LLaVA-1.5 takes images only; --video-frames {inputs.video_frames} does not apply to it.",
            hint="Drop --video-frames, or plan a video model such as Qwen/Qwen2.5-VL-7B-Instruct.",
        )
    patches = (tower.image_size // tower.patch_size) ** 2
    fixed = patches + (0 if tower.drop_cls else 1)
    llm = inputs.image_tokens or fixed
    rule = (f"every image resized to {tower.image_size}²: ({tower.image_size}/{tower.patch_size})² = {patches} patches"
            + (" (CLS dropped, vision_feature_select_strategy 'default')" if tower.drop_cls else " + CLS")
            + (f"; {llm} tokens given" if inputs.image_tokens else ""))  # fmt: skip
    return VisualTokens(images=inputs.images_per_sample, llm_per_image=llm, vit_per_image=patches + 1,
                        segment=patches + 1, rule=rule)  # fmt: skip


def visual_tokens(tower: VisionTower, inputs: VisionInputs) -> VisualTokens:
    """The tokens one sample's images and video become, by the model's own processor rules."""
    if tower.family in ("qwen2_vl", "qwen2_5_vl"):
        return _qwen_tokens(tower, inputs)
    if tower.family == "internvl":
        return _internvl_tokens(tower, inputs)
    return _llava_tokens(tower, inputs)


def language_tokens(spec: ModelSpec, inputs: VisionInputs | None) -> int:
    """Image and video tokens one sample adds to the language model's sequence (0 without images, or for a
    model without a vision tower): what the model's positions must hold beside the text."""
    tower = vision_tower(spec) if inputs is not None else None
    return 0 if tower is None or inputs is None else visual_tokens(tower, inputs).llm_tokens
