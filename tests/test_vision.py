"""Vision-language models in the planner: tower and aligner parameters, tokens per image, the memory terms,
serving's encoder cache and the CLI flags. Expected numbers come from the real transformers modules (built
on the meta device), transformers' own processor functions, the reference data (shared/reference) or are
written out from the config."""

from __future__ import annotations

import json

import pytest
from bad_input_support import run_cli

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import total_params
from swiftplan.planner.estimate import estimate_serving, estimate_training
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import LoraSetup, ServeSetup, TrainSetup
from swiftplan.planner.vision import VisionInputs, require_vision_tower, vision_tower
from swiftplan.planner.vision_tokens import internvl_tiles, qwen_smart_resize, visual_tokens
from swiftplan.usecases.inputs import resolve_cluster

TEXT = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": False}  # fmt: skip
TINY = {
    "qwen2_vl": {"model_type": "qwen2_vl", **TEXT,
                 "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 4}},
    "qwen2_5_vl": {"model_type": "qwen2_5_vl", **TEXT,
                   "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 48, "out_hidden_size": 64,
                                     "num_heads": 4, "fullatt_block_indexes": [1]}},
    "internvl": {"model_type": "internvl", "tie_word_embeddings": False, "text_config": {"model_type": "qwen2", **TEXT},
                 "vision_config": {"model_type": "internvl_vision", "hidden_size": 32, "intermediate_size": 48,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": [56, 56],
                                   "patch_size": [14, 14], "attention_bias": True}},
    "internvl_qk_norm": {"model_type": "internvl", "tie_word_embeddings": False, "text_config": {"model_type": "qwen2", **TEXT},
                         "vision_config": {"model_type": "internvl_vision", "hidden_size": 32, "intermediate_size": 48,
                                           "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": [56, 56],
                                           "patch_size": [14, 14], "use_qk_norm": True, "norm_type": "rms_norm"}},
    "llava": {"model_type": "llava", "text_config": {"model_type": "llama", **TEXT},
              "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 48,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 56, "patch_size": 14}},
}  # fmt: skip
VL7 = "Qwen/Qwen2.5-VL-7B-Instruct"


def _real_counts(config: dict) -> tuple[int, int, int]:
    """(all, tower, aligner) parameters of the transformers model built from `config` on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    raw = dict(config)
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(
            transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
        )
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    aligner = sum(v for n, v in sizes.items() if any(k in n for k in ("merger", "multi_modal_projector")))
    vision = sum(v for n, v in sizes.items() if any(k in n for k in ("visual", "vision_tower")))
    tower = vision - (aligner if "visual" in " ".join(sizes) else 0)
    return sum(sizes.values()), tower, aligner


@pytest.mark.parametrize("family", sorted(TINY))
def test_params_equal_the_real_modules(family):
    spec = spec_from_hf_config(TINY[family], name=family)
    tower = require_vision_tower(spec)
    everything, tower_params, aligner_params = _real_counts(TINY[family])
    assert (tower.tower_params(), tower.aligner_params()) == (tower_params, aligner_params)
    assert total_params(spec) + tower.params() == everything


def test_qwen2_vl_7b_matches_the_reference_count():
    # shared/reference/models.json: vision_tower_params_computed 675,759,104; computed_total 8,291,375,616
    spec = catalog_spec("Qwen/Qwen2-VL-7B-Instruct")
    tower = require_vision_tower(spec)
    assert tower.params() == 675_759_104
    assert total_params(spec) + tower.params() == 8_291_375_616


def test_qwen2_5_vl_3b_matches_its_printed_module_counts():
    # whaler404/Hf-Learn qwen2.5_vl.md torchinfo: Conv3d 1,505,280; each vision block 19,702,200;
    # merger RMSNorm 1,280 + MLP 36,707,328; the language model is Qwen2.5-3B's 3,085,938,688.
    tower = require_vision_tower(catalog_spec("Qwen/Qwen2.5-VL-3B-Instruct"))
    assert tower.embedding_params() == 1_505_280
    assert tower.block_params() == 19_702_200
    assert tower.aligner_params() == 1_280 + 36_707_328
    assert total_params(catalog_spec("Qwen/Qwen2.5-VL-3B-Instruct")) == 3_085_938_688


def test_text_models_have_no_tower_and_say_so():
    spec = catalog_spec("Qwen/Qwen2.5-7B-Instruct")
    assert vision_tower(spec) is None
    with pytest.raises(SwiftplanError, match="Qwen/Qwen2.5-7B-Instruct is a text-only model"):
        require_vision_tower(spec)


@pytest.mark.parametrize("size", [(1024, 1024), (1280, 720), (640, 480), (3000, 200), (30, 40), (4032, 3024)])
def test_smart_resize_is_transformers_own(size):
    processing = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    width, height = size
    ours = qwen_smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    assert ours == processing.smart_resize(
        height, width, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280
    )


def test_qwen_tokens_per_image_and_video():
    tower = require_vision_tower(catalog_spec(VL7))
    two = visual_tokens(tower, VisionInputs(images_per_sample=2, image_width=1024, image_height=1024))
    # 1024² → 980² (the max_pixels budget 28·28·1280), 70 × 70 patches, one token per 2 × 2
    assert (two.llm_per_image, two.vit_per_image, two.llm_tokens) == (1225, 4900, 2450)
    assert two.grids == ((1, 70, 70), (1, 70, 70))
    video = visual_tokens(
        tower, VisionInputs(images_per_sample=0, image_width=1024, image_height=1024, video_frames=15)
    )
    # 15 frames padded to 16 = 8 temporal patches; each frame within the video max_pixels 28·28·768 → 756²
    assert video.grids == ((8, 54, 54),)
    assert video.llm_tokens == 8 * 54 * 54 // 4
    assert visual_tokens(tower, VisionInputs(image_tokens=100)).vit_per_image == 400


@pytest.mark.parametrize("size", [(448, 448), (1024, 768), (800, 1920), (3000, 300), (100, 100)])
def test_internvl_tiles_follow_got_ocr2(size):
    got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    tower = require_vision_tower(spec_from_hf_config(TINY["internvl"], name="internvl"))
    tower = type(tower)(**{f: getattr(tower, f) for f in tower.__slots__} | {"image_size": 448})
    width, height = size
    columns, rows = got_ocr2.get_optimal_tiled_canvas((height, width), (448, 448), 1, 12)
    expected = 1 + columns * rows if columns * rows > 1 else 1
    assert internvl_tiles(tower, width, height) == expected


def test_llava_tokens_drop_the_cls_feature():
    tower = require_vision_tower(catalog_spec("llava-hf/llava-1.5-7b-hf"))
    tokens = visual_tokens(tower, VisionInputs(images_per_sample=1, image_width=1920, image_height=1080))
    assert (tokens.llm_per_image, tokens.vit_per_image) == (576, 577)  # (336/14)², + CLS in the tower


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"images_per_sample": -1}, "--images-per-sample must be a whole number of at least 0, got -1"),
        ({"image_width": 1024}, "needs both a width and a height"),
        ({"image_width": 40000, "image_height": 10}, "from 1 to 32,768, got 40000"),
        ({"image_tokens": 64, "image_width": 8, "image_height": 8}, "give one of them"),
        ({"images_per_sample": 0}, "leaves no visual input"),
        ({"video_frames": 2.5}, "--video-frames must be a whole number"),
    ],
)
def test_bad_vision_inputs_are_one_sentence(kwargs, fragment):
    with pytest.raises(SwiftplanError, match=fragment.replace("(", r"\(")):
        VisionInputs(**kwargs)


def _train(spec_id: str = VL7, **kwargs) -> object:
    vision = kwargs.pop("vision", VisionInputs(images_per_sample=2, image_width=1024, image_height=1024))
    setup = TrainSetup(**{"method": "lora", "vision": vision, **kwargs})
    return estimate_training(catalog_spec(spec_id), setup, resolve_cluster("a100-80g"))


def test_training_terms_have_formulas_and_sources():
    est = _train()
    terms = {t.name: t for t in est.memory.terms}
    assert {"vision_tokens", "vision_weights", "vision_states", "vision_activations"} <= set(terms)
    assert (
        "LLM sequence 4,498 = --seq 2,048 text + 2 image(s) × 1,225 tokens" in terms["vision_tokens"].formula
    )
    assert "smart_resize" in terms["vision_tokens"].source
    assert terms["vision_weights"].value_bytes == (631_975_680 + 44_574_464) * 2
    assert "get_modules_to_not_convert" in terms["vision_weights"].source
    assert terms["vision_states"].value_bytes == 0 and "freeze_vit=True" in terms["vision_states"].source
    assert "1 × 4498 tokens" in terms["activations"].formula  # the language model runs over text + images


def test_images_grow_the_language_model_sequence():
    text_only = estimate_training(
        catalog_spec(VL7), TrainSetup(method="lora", seq_len=4498), resolve_cluster("a100-80g")
    )
    with_images = _train()
    # same LLM tokens: the difference is the tower's bf16 weights, the fp32 pixel values (9,800 patches ×
    # 3·2·14·14) and, with checkpointing and a frozen embedding, the input embeddings autograd keeps as a leaf
    # beside masked_scatter's copy (4,498 × 3,584 bf16)
    extra = with_images.memory.peak_allocated - text_only.memory.peak_allocated
    assert extra == (631_975_680 + 44_574_464) * 2 + 9800 * 1176 * 4 + 4498 * 3584 * 2


def test_training_the_tower_adds_its_states_and_activations():
    frozen = _train()
    lora_vit = _train(
        vision=VisionInputs(images_per_sample=2, image_width=1024, image_height=1024, freeze_vit=False)
    )
    full_vit = _train(method="full", vision=VisionInputs(images_per_sample=2, image_width=1024, image_height=1024,
                                                         freeze_vit=False))  # fmt: skip
    tower = require_vision_tower(catalog_spec(VL7))
    # LoRA r16 on qkv (1280→3840), proj (1280→1280), gate/up (1280→3420), down (3420→1280) of 32 blocks
    per_block = 16 * ((1280 + 3840) + (1280 + 1280) + 2 * (1280 + 3420) + (3420 + 1280))
    assert lora_vit.trainable_params - frozen.trainable_params == 32 * per_block
    assert full_vit.trainable_params - total_params(catalog_spec(VL7)) == tower.tower_params()
    assert lora_vit.memory.activations > frozen.memory.activations
    assert lora_vit.memory.gradients - frozen.memory.gradients == 32 * per_block * 4  # fp32 adapter gradients


def test_qlora_keeps_the_tower_in_16_bit():
    est = _train(method="qlora")
    terms = {t.name: t for t in est.memory.terms}
    assert terms["vision_weights"].value_bytes == (631_975_680 + 44_574_464) * 2


def test_vision_compute_is_in_the_step_time():
    est = _train()
    assert est.training_speed.breakdown_s["vision_compute"] > 0
    trained = _train(
        vision=VisionInputs(images_per_sample=2, image_width=1024, image_height=1024, freeze_vit=False)
    )
    assert (
        trained.training_speed.breakdown_s["vision_compute"]
        > est.training_speed.breakdown_s["vision_compute"]
    )


def test_serving_reserves_the_encoder_cache():
    spec = catalog_spec(VL7)
    vision = VisionInputs(images_per_sample=2, image_width=1024, image_height=1024)
    plain = estimate_serving(spec, ServeSetup(context=8192, concurrency=4), resolve_cluster("L40S"))
    est = estimate_serving(
        spec, ServeSetup(context=8192, concurrency=4, vision=vision), resolve_cluster("L40S")
    )
    terms = {t.name: t for t in est.memory.terms}
    # vLLM: max(max_num_batched_tokens 2048, one image's 1225 tokens) × hidden 3584 × 2 bytes
    assert terms["encoder_cache"].value_bytes == 2048 * 3584 * 2
    assert "compute_mm_encoder_budget" in terms["encoder_cache"].source
    assert est.max_concurrency is not None and plain.max_concurrency is not None
    assert est.max_concurrency < plain.max_concurrency
    with pytest.raises(SwiftplanError, match="do not fit --context 2,048"):
        estimate_serving(spec, ServeSetup(context=2048, vision=vision), resolve_cluster("L40S"))


def test_lora_targets_stay_the_language_model_s():
    est = _train(lora=LoraSetup(rank=8, targets=("all-linear",)))
    assert est.trainable_params == est.params - total_params(catalog_spec(VL7)) - 676_550_144


def test_cli_shows_the_vision_terms_and_refuses_text_models():
    args = (
        "estimate",
        VL7,
        "--method",
        "lora",
        "--images-per-sample",
        "2",
        "--image-size",
        "1024x1024",
        "--gpus",
        "rtx4090",
    )
    shown = run_cli(*args, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    for fragment in (
        "vision_tokens",
        "vision_weights",
        "2 image(s) × 1,225 tokens",
        "get_modules_to_not_convert",
    ):
        assert fragment in shown.output
    payload = json.loads(run_cli(*args, "--json").output)
    assert {"vision_tokens", "vision_weights"} <= {t["name"] for t in payload["terms"]}
    refused = run_cli("estimate", "Qwen/Qwen2.5-7B", "--image-size", "448x448")
    assert refused.exit_code == 2
    assert "Qwen/Qwen2.5-7B is a text-only model" in refused.output


def test_objectives_other_than_sft_are_refused_with_images():
    from swiftplan.planner.objective import ObjectiveSetup

    setup = TrainSetup(
        method="lora", objective=ObjectiveSetup(kind="dpo"), vision=VisionInputs(image_tokens=256)
    )
    with pytest.raises(SwiftplanError, match="dpo on Qwen/Qwen2.5-VL-7B-Instruct"):
        estimate_training(catalog_spec(VL7), setup, resolve_cluster("a100-80g"))
