"""Vision-language plans on the external engines: the plan's vision inputs rendered (which parts train, the
pixel budget per image its tokens were counted for), LLaMA-Factory's parser accepting them, ms-swift's own
Qwen2-VL template turning an image into the planned number of tokens under the rendered budget, and
(pytest -m engines) a tiny Qwen2-VL trained for real on CPU through `swiftplan train PLAN --engine ms-swift`
with its images, the loss falling and a run report written.

The model is tests/tiny_vlm.py's (random init, built offline in the ms-swift-vlm env: see
scripts/engine_envs.sh for why that env has torch's PyPI build)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tiny_vlm
import yaml
from engine_envs import env_python, run_in_env

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train_engines.common import RunOptions
from swiftplan.executors.train_engines.registry import render_for, write_files
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import LoraSetup, TrainSetup
from swiftplan.planner.vision import QWEN_MAX_PIXELS, VisionInputs
from swiftplan.usecases.estimate import plan_for_setup

TINY_VLM = Path(tiny_vlm.__file__)
OPTIONS = RunOptions(data="/data/vlm.jsonl", output_dir="/runs/vlm", max_steps=10)


def _plan(
    model: Path,
    vision: VisionInputs,
    *,
    method: str = "lora",
    engine: str = "ms-swift",
    precision: str = "fp32",
):
    lora = LoraSetup(rank=8, targets=("all-linear",), dropout=0.0) if method == "lora" else None
    setup = TrainSetup(method=method, lora=lora, precision=precision, micro_batch=2, seq_len=128, grad_ckpt=False,
                       vision=vision)  # type: ignore[arg-type]  # fmt: skip
    return plan_for_setup(str(model), parse_cluster("rtx4090"), setup, engine=engine)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """The tiny Qwen2-VL's config.json alone: enough to plan and render."""
    return tiny_vlm.write_config(tmp_path_factory.mktemp("tiny_vlm_config"))


def _value(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize(
    "vision, pixels",
    [
        (VisionInputs(image_width=84, image_height=56), 84 * 56),  # multiples of 28: smart_resize keeps them
        (VisionInputs(image_width=1000, image_height=700), 1008 * 700),  # rounded to multiples of 28
        (VisionInputs(image_tokens=64), 64 * 28 * 28),
        # the processor's own largest image, not qwen_vl_utils' 16384 tokens
        (VisionInputs(), QWEN_MAX_PIXELS),
    ],
    ids=["84x56", "1000x700", "64-tokens", "model-default"],
)
def test_ms_swift_gets_the_planned_pixel_budget_and_what_trains(config_dir, vision, pixels):
    render = render_for("ms-swift", _plan(config_dir, vision), OPTIONS)
    argv = render.commands[0]
    assert _value(argv, "--freeze_vit") == "true" and _value(argv, "--freeze_aligner") == "true"
    assert _value(argv, "--max_pixels") == str(pixels) and render.env["MAX_PIXELS"] == str(pixels)
    assert "VIDEO_MAX_PIXELS" not in render.env


def test_what_trains_and_video_budget_reach_both_engines(config_dir):
    vision = VisionInputs(image_width=448, image_height=448, video_frames=8, freeze_vit=False, freeze_aligner=False)  # fmt: skip
    argv = render_for("ms-swift", _plan(config_dir, vision), OPTIONS).commands[0]
    assert _value(argv, "--freeze_vit") == "false" and _value(argv, "--freeze_aligner") == "false"
    ms = render_for("ms-swift", _plan(config_dir, vision), OPTIONS)
    assert ms.env["VIDEO_MAX_PIXELS"] == str(448 * 448) and ms.env["FPS_MAX_FRAMES"] == "8"
    lf = render_for("llamafactory", _plan(config_dir, vision, engine="llamafactory"), OPTIONS)
    config = yaml.safe_load(next(text for name, text in lf.files.items() if name.endswith(".yaml")))
    assert config["freeze_vision_tower"] is False and config["freeze_multi_modal_projector"] is False
    assert config["image_max_pixels"] == 448 * 448 and config["video_max_pixels"] == 448 * 448
    assert config["video_maxlen"] == 8


def test_megatron_swift_gets_ms_swifts_vision_settings_and_trl_axolotl_refuse(config_dir):
    vision = VisionInputs(image_width=84, image_height=56, freeze_aligner=False)
    render = render_for(
        "megatron-swift", _plan(config_dir, vision, engine="megatron-swift", precision="bf16"), OPTIONS
    )
    argv = render.commands[0]
    assert _value(argv, "--freeze_vit") == "true" and _value(argv, "--freeze_aligner") == "false"
    assert _value(argv, "--max_pixels") == "4704" and render.env["MAX_PIXELS"] == "4704"
    for engine in ("trl", "axolotl"):  # the engine table says so (planner/engines.py IMAGE_TRAIN_ENGINES)
        with pytest.raises(SwiftplanError, match=r"does not train a vision-language model on its images"):
            render_for(engine, _plan(config_dir, vision), OPTIONS)
        with pytest.raises(SwiftplanError, match=r"does not train a vision-language model on its images"):
            _plan(config_dir, vision, engine=engine)


def test_a_text_plan_renders_no_vision_settings(config_dir):
    text = TrainSetup(method="lora", lora=LoraSetup(rank=8), micro_batch=1, seq_len=128)
    render = render_for("ms-swift", plan_for_setup(str(config_dir), parse_cluster("rtx4090"), text), OPTIONS)
    assert "--freeze_vit" not in render.commands[0] and "--max_pixels" not in render.commands[0]
    assert "MAX_PIXELS" not in render.env


# --- each framework's own code (pytest -m engines; skipped without scripts/engine_envs.sh's envs) ---

_LLAMAFACTORY_VISION = r"""
import json, os, sys, yaml
from llamafactory.hparams.parser import _parse_train_args
out = []
for path in json.load(sys.stdin):
    os.chdir(os.path.dirname(path))
    cfg = yaml.safe_load(open(path))
    cfg["use_cpu"] = True
    model, data, training, finetuning, _ = _parse_train_args(cfg)
    out.append({"freeze_vision_tower": finetuning.freeze_vision_tower,
                "freeze_multi_modal_projector": finetuning.freeze_multi_modal_projector,
                "image_max_pixels": model.image_max_pixels, "video_max_pixels": model.video_max_pixels,
                "video_maxlen": model.video_maxlen})
print(json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.engines
def test_llamafactory_parses_the_vision_keys(config_dir):
    """LLaMA-Factory 0.9.5's own parser reads the rendered keys into FinetuningArguments and
    ProcessorArguments (an unknown key is an error there)."""
    cases = [VisionInputs(image_width=84, image_height=56),
             VisionInputs(image_width=448, image_height=448, video_frames=8, freeze_vit=False, freeze_aligner=False)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, vision in enumerate(cases):
            render = render_for("llamafactory", _plan(config_dir, vision, engine="llamafactory"), OPTIONS)
            write_files(render, Path(tmp) / str(i))
            paths.append(str(Path(tmp) / str(i) / next(n for n in render.files if n.endswith(".yaml"))))
        parsed = run_in_env("llamafactory", _LLAMAFACTORY_VISION, paths)
    assert parsed[0]["freeze_vision_tower"] is True and parsed[0]["freeze_multi_modal_projector"] is True
    assert parsed[0]["image_max_pixels"] == 84 * 56
    assert parsed[1]["freeze_vision_tower"] is False and parsed[1]["freeze_multi_modal_projector"] is False
    assert parsed[1]["image_max_pixels"] == 448 * 448 and parsed[1]["video_maxlen"] == 8


@pytest.mark.integration
@pytest.mark.engines
def test_megatron_swift_vision_flags_are_its_arguments(config_dir):
    """The vision flags rendered for megatron sft are fields of ms-swift 4.6.0's MegatronSftArguments (read
    from its source, as test_engine_render_train.py does: importing it needs Megatron-Core and CUDA)."""
    from test_engine_render_train import _MEGATRON_FIELDS

    vision = VisionInputs(image_width=84, image_height=56, freeze_vit=False)
    render = render_for(
        "megatron-swift", _plan(config_dir, vision, engine="megatron-swift", precision="bf16"), OPTIONS
    )
    [checked] = run_in_env("ms-swift", _MEGATRON_FIELDS, [list(render.commands[0])])
    assert "--freeze_vit" in render.commands[0] and not checked["unknown"] and not checked["bad"], checked


@pytest.fixture(scope="module")
def tiny_fixture(tmp_path_factory):
    """The tiny Qwen2-VL with tokenizer and processor, its images and dataset, written by the ms-swift-vlm
    env's transformers (the one that reads them)."""
    python = env_python("ms-swift-vlm")
    out = tmp_path_factory.mktemp("tiny_vlm")
    result = subprocess.run([str(python), str(TINY_VLM), str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {key: Path(value) for key, value in json.loads(result.stdout.strip().splitlines()[-1]).items()}


_MS_SWIFT_TOKENS = r"""
import json, os, sys
payload = json.load(sys.stdin)
os.environ.update(payload["env"])  # before swift reads MAX_PIXELS (patch_qwen_vl_utils at processor load)
from PIL import Image
from swift.model import get_model_processor
from swift.template import get_template
model, processor = get_model_processor(payload["model"], model_type="qwen2_vl", load_model=False)
template = get_template(processor, template_type="qwen2_vl", max_pixels=payload["max_pixels"])
template.set_mode("train")
out = []
for width, height in payload["sizes"]:
    path = os.path.join(payload["dir"], f"{width}x{height}.png")
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
    encoded = template.encode({"messages": [{"role": "user", "content": "<image>colour?"},
                                            {"role": "assistant", "content": "red"}], "images": [path]})
    out.append(encoded["input_ids"].count(template.image_token_id))
print(json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.engines
def test_ms_swift_turns_an_image_into_the_planned_tokens_under_the_rendered_budget(tiny_fixture, tmp_path):
    """ms-swift 4.6.0's Qwen2VLTemplate with the rendered MAX_PIXELS / --max_pixels: an image of the planned
    size becomes the planner's token count, a larger one no more, a smaller one fewer. Without the budget
    the larger one would be 48 tokens (qwen_vl_utils allows 16384)."""
    from swiftplan.planner.vision import vision_tower
    from swiftplan.planner.vision_tokens import visual_tokens
    from swiftplan.usecases.inputs import resolve_model

    vision = VisionInputs(image_width=84, image_height=56)
    render = render_for("ms-swift", _plan(tiny_fixture["model"], vision), OPTIONS)
    tower = vision_tower(resolve_model(str(tiny_fixture["model"])))
    assert tower is not None
    planned = visual_tokens(tower, vision).llm_per_image
    assert planned == 6  # 84×56 → 3×2 tokens of 28²
    counts = run_in_env("ms-swift-vlm", _MS_SWIFT_TOKENS, {
        "model": str(tiny_fixture["model"]), "env": dict(render.env), "dir": str(tmp_path),
        "max_pixels": int(_value(render.commands[0], "--max_pixels")), "sizes": [[84, 56], [224, 168], [56, 56]],
    })  # fmt: skip
    assert counts == [planned, planned, 4], counts


@pytest.mark.integration
@pytest.mark.engines
@pytest.mark.slow
def test_a_vision_language_plan_trains_on_cpu_through_ms_swift(tiny_fixture, tmp_path):
    """The tiny Qwen2-VL fully fine-tuned 12 steps on its images through `swiftplan train PLAN --engine
    ms-swift`: the loss falls, the run report is written, and what the plan says trains is what changed —
    the aligner (freeze_aligner false) but not the vision tower (freeze_vit true)."""
    from safetensors.numpy import load_file

    from swiftplan.plan_file import save_plan

    python = env_python("ms-swift-vlm")
    vision = VisionInputs(image_width=84, image_height=56, freeze_vit=True, freeze_aligner=False)
    plan_path = tmp_path / "plan.yaml"
    save_plan(_plan(tiny_fixture["model"], vision, method="full"), plan_path)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{python.parent}:{os.environ['PATH']}", "SWIFTPLAN_DEBUG": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    # model_type/template: ms-swift cannot tell qwen2_vl from the other types of its architecture, nor
    # qwen2_vl's template from qvq's, for a local directory (swift/model/model_meta.py, template/register.py).
    result = subprocess.run(
        [sys.executable, "-m", "swiftplan", "train", str(plan_path), "--engine", "ms-swift",
         "--data", str(tiny_fixture["data"]), "--output-dir", str(out), "--max-steps", "12", "--save-steps", "12",
         "--lr", "1e-2", "--lr-scheduler", "constant",
         "--engine-option", "model_type=qwen2_vl", "--engine-option", "template=qwen2_vl",
         "--engine-option", "logging_steps=1"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "run_report.json").read_text())
    assert report["exit_code"] == 0 and report["steps"] == 12 and report["loss"]["logged_steps"] == 12
    first, last = report["loss"]["first"], report["loss"]["last"]
    assert first > 10 and last < 0.8 * first, report["loss"]  # random init: ln(151,657) ≈ 11.9 at first
    log = (out / "engine.log").read_text()
    assert "freeze_vit=True" in log and "freeze_aligner=False" in log and "max_pixels=4704" in log
    # the aligner unfrozen inside the frozen ViT
    assert "trainable_parameters: ['model.visual.merger']" in log
    assert "Setting image_max_token_num: 6." in log  # MAX_PIXELS 4704 = 6 tokens of 28² for qwen_vl_utils
    before = load_file(str(tiny_fixture["model"] / "model.safetensors"))
    after = load_file(str(Path(report["run_dir"]) / "checkpoint-12" / "model.safetensors"))

    def changed(prefix: str) -> bool:
        names = [name for name in before if name.startswith(prefix)]
        assert names, prefix
        return any(not (before[name] == after[name]).all() for name in names)

    # transformers saves Qwen2-VL in its checkpoint layout: visual.* and model.layers.* (the decoder)
    assert changed("visual.merger.") and changed("model.layers.")
    assert not changed("visual.blocks.") and not changed("visual.patch_embed.")


def test_a_plan_file_keeps_the_vision_inputs(config_dir, tmp_path):
    from swiftplan.errors import SwiftplanError
    from swiftplan.plan_file import load_plan, save_plan

    vision = VisionInputs(images_per_sample=2, image_width=84, image_height=56, freeze_aligner=False)
    save_plan(_plan(config_dir, vision), tmp_path / "plan.yaml")
    assert load_plan(tmp_path / "plan.yaml").setup.vision == vision
    text = (tmp_path / "plan.yaml").read_text()
    (tmp_path / "bad.yaml").write_text(text.replace("image_height: 56", "image_height: 0"))
    with pytest.raises(SwiftplanError, match=r"--image-size needs both a width and a height"):
        load_plan(tmp_path / "bad.yaml")
    (tmp_path / "odd.yaml").write_text(text.replace("freeze_vit: true", "freeze_vit: true\n    frozen: 3"))
    with pytest.raises(SwiftplanError, match=r"frozen"):
        load_plan(tmp_path / "odd.yaml")
