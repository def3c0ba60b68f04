"""Vision-language models: the vision encoder (ViT) and aligner (projector) read from config.json.

`vision_tower(spec)` parses the `vision_config` a `ModelSpec` keeps in `hf_config` (the language model
is already parsed from the text part) for four families, each laid out as the transformers 5.25 code
builds it:

- qwen2_vl: transformers/models/qwen2_vl/modeling_qwen2_vl.py (PatchEmbed Conv3d without bias,
  Qwen2VLVisionBlock: LayerNorm, fused qkv with bias, proj, fc1/fc2 with quick_gelu; PatchMerger:
  LayerNorm + Linear(w·m², w·m²) + GELU + Linear(w·m², out)).
- qwen2_5_vl: transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py (RMSNorm, SwiGLU MLP with biases,
  window attention except `fullatt_block_indexes`; merger with an RMSNorm).
- internvl: transformers/models/internvl/modeling_internvl.py (InternViT: CLS token, Conv2d patch
  embedding with bias, absolute positions, q/k/v, layer scale; projector LayerNorm(w·4) + 2 Linears,
  pixel shuffle by `downsample_ratio`); OpenGVLab's remote-code configs (`internvl_chat`, vision keys
  `qkv_bias`/`qk_normalization`) have the same parameters.
- llava: transformers/models/llava/modeling_llava.py with a CLIP or SigLIP vision tower
  (clip/modeling_clip.py, siglip/modeling_siglip.py) and the 2-Linear multi_modal_projector.

Parameter counts equal `sum(p.numel())` of the tower and aligner (tests/test_vision.py checks them
against the real modules). Tokens per image follow each model's own processor (see `image_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import Linear
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.values import is_positive_number, is_whole_number

VisionFamily = Literal["qwen2_vl", "qwen2_5_vl", "internvl", "llava"]

QWEN_MIN_PIXELS = 56 * 56
"""Qwen2-VL's image processor default `size["shortest_edge"]` (min_pixels): transformers 5.25
models/qwen2_vl/image_processing_qwen2_vl.py `Qwen2VLImageProcessor.size`; Qwen2.5-VL reuses it."""
QWEN_MAX_PIXELS = 28 * 28 * 1280
"""Its default `size["longest_edge"]` (max_pixels), the same file. A checkpoint's preprocessor_config.json
or `--image-tokens` can set another budget."""
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
"""Qwen2-VL's video processor default min_pixels: models/qwen2_vl/video_processing_qwen2_vl.py."""
QWEN_VIDEO_MAX_PIXELS = 28 * 28 * 768
"""Its default max_pixels per frame, the same file."""
MAX_IMAGE_SIDE = 32768
"""Largest image side accepted (pixels): Qwen2-VL's smart_resize keeps any aspect ratio under 200, but a
side beyond 32k pixels is a typo, not a photo."""
INTERNVL_MAX_TILES = 12
"""InternVL's dynamic tiling: at most 12 tiles of image_size² plus a thumbnail (transformers 5.25
models/got_ocr2/image_processing_got_ocr2.py `max_patches = 12`, `use_thumbnail`; OpenGVLab configs
spell it `max_dynamic_patch`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionInputs:
    """What each training sample (or request) carries besides text, and which vision parts train."""

    images_per_sample: int = 1
    """Images per sequence."""
    image_width: int = 0
    """Image width in pixels; 0 with image_height 0 = the model's own resolution (its processor's maximum)."""
    image_height: int = 0
    """Image height in pixels."""
    image_tokens: int = 0
    """LLM tokens per image when known (overrides the size rule); 0 = from the size."""
    video_frames: int = 0
    """Frames of one video per sequence (same size as the images); 0 = no video."""
    freeze_vit: bool = True
    """The vision tower stays frozen (ms-swift default, swift/arguments/tuner_args.py `freeze_vit: bool = True`)."""
    freeze_aligner: bool = True
    """The aligner stays frozen (ms-swift default `freeze_aligner: bool = True`, the same file)."""

    def __post_init__(self) -> None:
        for flag, value in (("--images-per-sample", self.images_per_sample), ("--image-tokens", self.image_tokens),
                            ("--video-frames", self.video_frames)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SwiftplanError(f"{flag} must be a whole number of at least 0, got {value!r}.")
        for side, value in (("width", self.image_width), ("height", self.image_height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_IMAGE_SIDE:
                raise SwiftplanError(
                    f"--image-size {side} must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE:,}, got {value!r}."
                )
        if (self.image_width == 0) != (self.image_height == 0):
            raise SwiftplanError(
                f"--image-size needs both a width and a height (WxH, e.g. 1024x768), got {self.image_width}x{self.image_height}."
            )
        if self.image_tokens and self.image_width:
            raise SwiftplanError(
                f"--image-tokens {self.image_tokens} and --image-size {self.image_width}x{self.image_height} both set the "
                "tokens per image; give one of them."
            )
        if self.images_per_sample == 0 and self.video_frames == 0:
            raise SwiftplanError(
                "--images-per-sample 0 with no --video-frames leaves no visual input; give at least one image or video frame."
            )

    @property
    def trains_vision(self) -> bool:
        """The tower or the aligner receives gradients."""
        return not (self.freeze_vit and self.freeze_aligner)


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionTower:
    """A vision encoder and its aligner, as the modelling code builds them."""

    family: VisionFamily
    """Which layout (see the module docstring)."""
    depth: int
    """ViT blocks."""
    width: int
    """ViT hidden size."""
    intermediate: int
    """ViT MLP width (one branch for the gated Qwen2.5-VL MLP)."""
    heads: int
    """Attention heads of the ViT."""
    patch_size: int
    """Pixels per patch side."""
    merge: int
    """Patches merged per token side: Qwen spatial_merge_size, InternVL 1/downsample_ratio, LLaVA 1."""
    out_hidden: int
    """Width the aligner projects to (the language model's hidden size)."""
    temporal_patch: int = 1
    """Frames per patch (Qwen: temporal_patch_size; an image is repeated to fill it)."""
    image_size: int = 0
    """Fixed input side in pixels (InternVL tile, LLaVA image); 0 for Qwen's dynamic resolution."""
    gated_mlp: bool = False
    """SwiGLU MLP (gate/up/down) instead of fc1/fc2."""
    norm: Literal["layer_norm", "rms_norm"] = "layer_norm"
    """Norm layers of the blocks (LayerNorm has a bias)."""
    qkv_bias: bool = True
    """q/k/v projections carry a bias."""
    qk_norm: bool = False
    """RMSNorm on q and k over all heads (InternViT-6B)."""
    fused_qkv: bool = True
    """q, k and v are one Linear (Qwen qkv) rather than three (InternVL HF layout, CLIP)."""
    layer_scale: bool = False
    """InternViT's per-channel lambda_1/lambda_2 after attention and MLP."""
    cls_token: bool = False
    """A class token is prepended to each image's patches (InternViT, CLIP)."""
    full_attention_blocks: tuple[int, ...] = ()
    """Qwen2.5-VL: blocks with attention over the whole image; the others attend within windows."""
    window_size: int = 0
    """Qwen2.5-VL window side in pixels (112)."""
    drop_cls: bool = True
    """LLaVA vision_feature_select_strategy "default" drops the CLS feature; "full" keeps it."""
    thumbnail: bool = True
    """InternVL adds a global thumbnail tile when an image is split into several."""
    max_tiles: int = INTERNVL_MAX_TILES
    """InternVL: most tiles per image."""
    video: bool = False
    """The model's processor accepts video (frames through the same tower)."""
    gelu_mlp_aligner: bool = True
    """The aligner is Linear → GELU → Linear (every family here)."""

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.width // self.heads

    @property
    def merged_width(self) -> int:
        """Aligner input width: merge² patch features concatenated."""
        return self.width * self.merge * self.merge

    def block_linears(self) -> tuple[Linear, ...]:
        """The Linears of one ViT block, named as the modelling code names them."""
        w, i = self.width, self.intermediate
        attn: tuple[Linear, ...]
        if self.fused_qkv:
            attn = (Linear(name="qkv", in_features=w, out_features=3 * w, bias=self.qkv_bias),)
        else:
            attn = tuple(
                Linear(name=n, in_features=w, out_features=w, bias=self.qkv_bias)
                for n in ("q_proj", "k_proj", "v_proj")
            )
        proj = (
            "proj"
            if self.family.startswith("qwen")
            else ("projection_layer" if self.family == "internvl" else "out_proj")
        )
        attn += (Linear(name=proj, in_features=w, out_features=w, bias=True),)
        mlp: tuple[Linear, ...]
        if self.gated_mlp:
            mlp = (
                Linear(name="gate_proj", in_features=w, out_features=i, bias=True, block="mlp"),
                Linear(name="up_proj", in_features=w, out_features=i, bias=True, block="mlp"),
                Linear(name="down_proj", in_features=i, out_features=w, bias=True, block="mlp"),
            )
        else:
            mlp = (
                Linear(name="fc1", in_features=w, out_features=i, bias=True, block="mlp"),
                Linear(name="fc2", in_features=i, out_features=w, bias=True, block="mlp"),
            )
        return attn + mlp

    def aligner_linears(self) -> tuple[Linear, ...]:
        """The aligner's Linears (Qwen merger.mlp.0/2, InternVL linear_1/2, LLaVA linear_1/2)."""
        return (
            Linear(
                name="linear_1", in_features=self.merged_width, out_features=self.aligner_hidden, bias=True
            ),
            Linear(name="linear_2", in_features=self.aligner_hidden, out_features=self.out_hidden, bias=True),
        )

    @property
    def aligner_hidden(self) -> int:
        """Width between the aligner's two Linears: Qwen keeps w·m², the others the LLM width."""
        return self.merged_width if self.family.startswith("qwen") else self.out_hidden

    def _norm_params(self, width: int) -> int:
        return width * (2 if self.norm == "layer_norm" else 1)

    def block_params(self) -> int:
        """Parameters of one ViT block."""
        vectors = 2 * self._norm_params(self.width)
        vectors += 2 * self.width if self.qk_norm else 0
        vectors += 2 * self.width if self.layer_scale else 0
        return sum(lin.params for lin in self.block_linears()) + vectors

    def embedding_params(self) -> int:
        """Patch embedding, CLS token and absolute positions (Qwen uses rotary positions: none)."""
        channels = 3 * self.temporal_patch * self.patch_size * self.patch_size
        if self.family.startswith("qwen"):
            return channels * self.width  # Conv3d, bias=False
        positions = (self.image_size // self.patch_size) ** 2 + 1
        conv_bias = self.width if self.family == "internvl" else 0  # CLIP's patch Conv2d has no bias
        return channels * self.width + conv_bias + self.width + positions * self.width

    def tower_params(self) -> int:
        """The vision tower without the aligner (ms-swift's `vision_tower` less `aligner`)."""
        extra = 0
        if self.family == "llava":  # CLIP: pre_layrnorm and post_layernorm, LayerNorms with bias
            extra = 2 * 2 * self.width
        return self.embedding_params() + self.depth * self.block_params() + extra

    def aligner_params(self) -> int:
        """The aligner: Qwen's merger (norm + MLP), InternVL's mlp1 (LayerNorm(w·4) + MLP), LLaVA's projector."""
        if self.family == "qwen2_vl":
            norm = 2 * self.width
        elif self.family == "qwen2_5_vl":
            norm = self.width
        elif self.family == "internvl":
            norm = 2 * self.merged_width
        else:
            norm = 0
        return norm + sum(lin.params for lin in self.aligner_linears())

    def params(self) -> int:
        """Tower and aligner."""
        return self.tower_params() + self.aligner_params()


_CONFIG_HINT = "Pass the model's complete config.json (with its vision_config)."


def _vision_config(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        raise SwiftplanError(f"The config for {name!r} has no vision_config object.", hint=_CONFIG_HINT)
    return vision


def _whole(vision: Mapping[str, Any], name: str, *keys: str, default: Any = None) -> int:
    """The first of `keys` in vision_config as a whole number ≥ 1 (a list like [14, 14] gives its first)."""
    value = next((vision[k] for k in keys if vision.get(k) is not None), default)
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not is_whole_number(value) or value < 1:
        key = next((k for k in keys if k in vision), keys[0])
        raise SwiftplanError(
            f"The config for {name!r} has vision_config.{key}={value!r}; it must be a whole number of at least 1.",
            hint=_CONFIG_HINT,
        )
    return int(value)


def vision_family(spec: ModelSpec) -> VisionFamily | None:
    """Which vision layout the config describes, or None for a text-only model."""
    config = spec.hf_config
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        return None
    kinds = {str(config.get("model_type", "")), str(vision.get("model_type", ""))}
    if kinds & {"qwen2_5_vl", "qwen2_5_vl_text", "qwen2_5_vl_vision"} or "fullatt_block_indexes" in vision:
        return "qwen2_5_vl"
    if kinds & {"qwen2_vl", "qwen2_vl_text", "qwen2_vl_vision"}:
        return "qwen2_vl"
    if (
        kinds & {"internvl", "internvl_chat", "internvl_vision", "intern_vit_6b"}
        or "downsample_ratio" in config
    ):
        return "internvl"
    if kinds & {"llava", "clip_vision_model", "siglip_vision_model"}:
        return "llava"
    return None


def _qwen(spec: ModelSpec, vision: Mapping[str, Any], family: VisionFamily) -> VisionTower:
    name = spec.name
    if family == "qwen2_vl":  # embed_dim is the ViT width, hidden_size the LLM's (Qwen2VLVisionConfig)
        width = _whole(vision, name, "embed_dim", default=1280)
        intermediate = width * _whole(vision, name, "mlp_ratio", default=4)
        out = _whole(vision, name, "hidden_size", default=spec.hidden_size)
    else:
        width = _whole(vision, name, "hidden_size", default=1280)
        intermediate = _whole(vision, name, "intermediate_size", default=3420)
        out = _whole(vision, name, "out_hidden_size", default=spec.hidden_size)
    full = tuple(int(i) for i in vision.get("fullatt_block_indexes") or ()) if family == "qwen2_5_vl" else ()
    return VisionTower(
        family=family,
        depth=_whole(vision, name, "depth", default=32),
        width=width,
        intermediate=intermediate,
        heads=_whole(vision, name, "num_heads", default=16),
        patch_size=_whole(vision, name, "patch_size", "spatial_patch_size", default=14),
        merge=_whole(vision, name, "spatial_merge_size", default=2),
        temporal_patch=_whole(vision, name, "temporal_patch_size", default=2),
        out_hidden=out,
        gated_mlp=family == "qwen2_5_vl",
        norm="rms_norm" if family == "qwen2_5_vl" else "layer_norm",
        full_attention_blocks=full,
        window_size=_whole(vision, name, "window_size", default=112) if family == "qwen2_5_vl" else 0,
        video=True,
    )


def _downsample(config: Mapping[str, Any], name: str) -> int:
    ratio = config.get("downsample_ratio", 0.5)
    if not is_positive_number(ratio) or ratio > 1 or not float(1 / ratio).is_integer():
        raise SwiftplanError(
            f"The config for {name!r} has downsample_ratio={ratio!r}; it must be 1/n for a whole n (0.5 merges 2×2 patches).",
            hint=_CONFIG_HINT,
        )
    return int(1 / ratio)


def _internvl(spec: ModelSpec, vision: Mapping[str, Any]) -> VisionTower:
    name, config = spec.name, spec.hf_config
    remote = "qkv_bias" in vision or config.get("model_type") == "internvl_chat"  # OpenGVLab's own code
    size = config.get("force_image_size") or vision.get("image_size") or 448
    return VisionTower(
        family="internvl",
        depth=_whole(vision, name, "num_hidden_layers", default=24),
        width=_whole(vision, name, "hidden_size", default=1024),
        intermediate=_whole(vision, name, "intermediate_size", default=4096),
        heads=_whole(vision, name, "num_attention_heads", default=16),
        patch_size=_whole(vision, name, "patch_size", default=14),
        merge=_downsample(config, name),
        out_hidden=spec.hidden_size,
        image_size=_whole({"image_size": size}, name, "image_size"),
        norm="rms_norm" if vision.get("norm_type") == "rms_norm" else "layer_norm",
        qkv_bias=bool(vision.get("qkv_bias", True) if remote else vision.get("attention_bias", False)),
        qk_norm=bool(vision.get("qk_normalization") or vision.get("use_qk_norm")),
        fused_qkv=remote,
        layer_scale=True,
        cls_token=True,
        thumbnail=bool(config.get("use_thumbnail", True)),
        max_tiles=_whole(config, name, "max_dynamic_patch", default=INTERNVL_MAX_TILES),
        video=True,
    )


def _llava(spec: ModelSpec, vision: Mapping[str, Any]) -> VisionTower:
    name, config = spec.name, spec.hf_config
    if str(vision.get("model_type", "clip_vision_model")) != "clip_vision_model":
        raise SwiftplanError(
            f"Model {name!r} has a {vision.get('model_type')!r} vision tower; swiftplan lays out LLaVA's CLIP tower only.",
            hint="Pass --image-tokens and plan without the vision terms, or use a CLIP-based LLaVA.",
        )
    strategy = config.get("vision_feature_select_strategy", "default")
    return VisionTower(
        family="llava",
        depth=_whole(vision, name, "num_hidden_layers", default=24),
        width=_whole(vision, name, "hidden_size", default=1024),
        intermediate=_whole(vision, name, "intermediate_size", default=4096),
        heads=_whole(vision, name, "num_attention_heads", default=16),
        patch_size=_whole(vision, name, "patch_size", default=14),
        merge=1,
        out_hidden=spec.hidden_size,
        image_size=_whole(vision, name, "image_size", default=336),
        fused_qkv=False,
        cls_token=True,
        drop_cls=strategy == "default",
    )


def vision_tower(spec: ModelSpec) -> VisionTower | None:
    """The vision tower and aligner of a vision-language model, or None for a text-only model."""
    family = vision_family(spec)
    if family is None:
        return None
    vision = _vision_config(spec.hf_config, spec.name)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return _qwen(spec, vision, family)
    if family == "internvl":
        return _internvl(spec, vision)
    return _llava(spec, vision)


def require_vision_tower(spec: ModelSpec) -> VisionTower:
    """`vision_tower(spec)`, or one SwiftplanError naming the text-only model."""
    tower = vision_tower(spec)
    vision = spec.hf_config.get("vision_config")
    if tower is None and isinstance(vision, Mapping):  # a vision_config of a layout swiftplan does not know
        kinds = sorted(
            {str(spec.hf_config.get("model_type") or "none"), str(vision.get("model_type") or "none")}
        )
        raise SwiftplanError(
            f"{spec.name} has a vision_config, but of no vision layout swiftplan sizes (model_type "
            f"{' / '.join(kinds)}); images are planned for Qwen2-VL, Qwen2.5-VL, InternVL and LLaVA (CLIP or "
            "SigLIP towers), whose model_type (or vision_config.model_type) names them.",
            hint="Pass the model's own config.json, or drop the image and video options to plan the language model.",
        )
    if tower is None:
        raise SwiftplanError(
            f"{spec.name} is a text-only model (its config has no vision_config), so image and video options do not apply.",
            hint="Drop --images-per-sample/--image-size/--image-tokens/--video-frames/--train-vit/--train-aligner, "
            "or pick a vision-language model such as Qwen/Qwen2.5-VL-7B-Instruct.",
        )
    return tower
