"""`swiftplan size` with the vision-language image options: every cluster is sized with the images (training and
serving), its "next:" fit command restates them and plans them itself, and bad image input is refused as fit
refuses it."""

from __future__ import annotations

import json
import shlex

import pytest
from bad_input_support import assert_refused, run_cli
from test_size_usecase import parse_fit

from swiftplan.planner.search.pins import Pins
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases.describe import fit_command_line
from swiftplan.usecases.fit import FitRequest
from swiftplan.usecases.size import SizeRequest, plan_size

VL = "Qwen/Qwen2.5-VL-7B-Instruct"
IMAGES = ("--images-per-sample", "2", "--image-size", "1024x1024")
TWO_IMAGES = VisionInputs(images_per_sample=2, image_width=1024, image_height=1024)
IMAGE_TOKENS = 2 * 1225
"""Two 1024² images on Qwen2.5-VL: smart_resize to 980², 70² patches / 2² merged = 1,225 tokens each."""


def _json(*args: str) -> dict:
    result = run_cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def _one_gpu(vision: VisionInputs | None) -> SizeRequest:
    """LoRA without offload on one RTX 4090, ranked by time (it has no rental price)."""
    return SizeRequest(model=VL, accelerators=("rtx4090",), max_gpus=1, objective="time", vision=vision,
                       pins=Pins(methods=("lora",), quants=("none",), max_offload="none"))  # fmt: skip


def test_images_raise_the_planned_memory_past_what_the_text_alone_needs():
    """7B LoRA in bf16 fits one 24 GB card for 2,048 text tokens a sequence; 2,450 image tokens more a sequence,
    the vision tower and its activations do not (no offload allowed)."""
    text = plan_size(_one_gpu(None)).result.options[0]
    images = plan_size(_one_gpu(TWO_IMAGES)).result.options[0]
    assert text.feasible, text.reason
    assert not images.feasible and images.reason is not None and images.reason.startswith("doesn't fit"), (
        images
    )


def test_training_sizing_counts_the_images_in_the_workload_and_the_time():
    args = ("size", VL, "--accelerators", "h100-sxm", "--max-gpus", "1", "--dataset-tokens", "50M")
    text, images = _json(*args), _json(*args, *IMAGES)
    workload = images["workload"]
    assert workload["vision"] == {"images_per_sample": 2, "image_width": 1024, "image_height": 1024,
                                  "image_tokens": 0, "video_frames": 0, "freeze_vit": True,
                                  "freeze_aligner": True}  # fmt: skip
    assert workload["dataset_image_tokens"] == IMAGE_TOKENS * -(-50_000_000 // 2048)
    assert text["workload"]["vision"] is None and text["workload"]["dataset_image_tokens"] == 0
    assert images["recommended"]["time_s"] > 2 * text["recommended"]["time_s"]
    assert any(
        note.startswith("images counted:") and "2,450 image/video tokens" in note for note in images["notes"]
    )
    assert images["workload"]["runtime"] == "ms-swift"  # swiftplan's own loop trains text only


def test_the_next_fit_command_restates_the_images_and_plans_them():
    sized = _json("size", VL, "--accelerators", "h100-sxm", "--max-gpus", "2", "--dataset-tokens", "50M", *IMAGES,
                  "--train-aligner")  # fmt: skip
    command = sized["next"]
    argv = shlex.split(command)
    assert argv[argv.index("--images-per-sample") + 1] == "2" and "--train-aligner" in argv
    assert argv[argv.index("--image-size") + 1] == "1024x1024"
    assert argv[-2:] == ["-o", "plan.yaml"]
    planned = _json(*argv[1:-2])
    plan = planned["plan"]
    assert plan["engine"] == "ms-swift"
    assert plan["train"]["vision"] == {"images_per_sample": 2, "image_width": 1024, "image_height": 1024,
                                       "image_tokens": 0, "video_frames": 0, "freeze_vit": True,
                                       "freeze_aligner": False}  # fmt: skip
    assert planned["workload"]["dataset_image_tokens"] == sized["workload"]["dataset_image_tokens"]
    assert plan["hardware"]["offered"] == argv[argv.index("--gpus") + 1]


@pytest.mark.parametrize(
    "vision",
    [
        TWO_IMAGES,
        VisionInputs(images_per_sample=1, image_tokens=256, freeze_vit=False),
        VisionInputs(
            images_per_sample=0, video_frames=8, image_width=448, image_height=448, freeze_aligner=False
        ),
        VisionInputs(images_per_sample=0, video_frames=4),
        VisionInputs(images_per_sample=3),
        VisionInputs(),
    ],
    ids=["images", "tokens-vit", "video-size", "video-only", "three-default-size", "one-default"],
)
def test_fit_command_line_parses_back_to_the_same_vision(vision, monkeypatch):
    request = FitRequest(model=VL, gpus="h100-sxm", vision=vision)
    assert parse_fit(fit_command_line(request), monkeypatch) == request
    served = FitRequest(model=VL, gpus="h100-sxm", task="serve", concurrency=8,
                        vision=VisionInputs(images_per_sample=vision.images_per_sample, image_width=vision.image_width,
                                            image_height=vision.image_height, image_tokens=vision.image_tokens,
                                            video_frames=vision.video_frames))  # fmt: skip
    assert parse_fit(fit_command_line(served), monkeypatch) == served


def test_a_text_only_fit_command_has_no_image_flags():
    assert "--image" not in fit_command_line(FitRequest(model=VL, gpus="h100-sxm"))


@pytest.mark.parametrize("task", ["train", "serve"])
def test_the_use_cases_next_fit_carries_the_images(task, monkeypatch):
    load = {"concurrency": 16} if task == "serve" else {"dataset_tokens": 20_000_000}
    request = SizeRequest(
        model=VL, task=task, accelerators=("h100-sxm",), max_gpus=2, vision=TWO_IMAGES, **load
    )
    fit = plan_size(request).next_fit
    assert fit is not None and fit.vision == TWO_IMAGES
    assert parse_fit(fit_command_line(fit), monkeypatch) == fit


def test_serving_sizing_counts_the_images():
    args = ("size", VL, "--task", "serve", "--concurrency", "16", "--accelerators", "h100-sxm")
    text, images = _json(*args), _json(*args, *IMAGES)
    assert images["workload"]["vision"]["images_per_sample"] == 2 and text["workload"]["vision"] is None
    assert images["recommended"]["plan"] == text["recommended"]["plan"]  # the same deployment ...
    assert (
        images["recommended"]["headroom_bytes"] < text["recommended"]["headroom_bytes"]
    )  # ... holds the tower
    assert any(note.startswith("images counted: each request's 2,450") for note in images["notes"])
    assert "--images-per-sample 2 --image-size 1024x1024" in images["next"]
    assert "--image" not in text["next"]


def _flat(result) -> str:  # type: ignore[no-untyped-def]
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    "args",
    [
        ("Qwen/Qwen2.5-7B", "--images-per-sample", "2"),
        (VL, "--task", "serve", "--concurrency", "4", "--train-vit"),
        (VL, "--task", "dpo", *IMAGES),
        (VL, "--image-size", "1024"),
        (VL, "--image-tokens", "0"),
    ],
    ids=["text-only-model", "train-vit-serving", "preference-task", "bad-size", "zero-tokens"],
)
def test_bad_image_input_is_refused_as_fit_refuses_it(args):
    size = run_cli("size", *args)
    fit = run_cli("fit", *args[:1], "--gpus", "h100-sxm", *args[1:])
    assert_refused(size)
    assert_refused(fit)
    assert _flat(size) == _flat(fit)


@pytest.mark.parametrize("runtime", ["hf", "axolotl", "unsloth"])
def test_a_runtime_whose_engine_does_not_train_on_images_is_refused(runtime):
    result = run_cli("size", VL, *IMAGES, "--runtime", runtime)
    assert_refused(result, f"--runtime {runtime}", "image options", "--runtime ms-swift")
    assert "--engine" not in result.output  # size has no --engine to suggest
