"""`swiftplan fit` with the vision-language image options: every candidate is planned with the images (memory and
speed exactly as `swiftplan estimate` counts them for the same set-up), the plan file carries them, and bad
image input is refused as estimate refuses it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from bad_input_support import run_cli

from swiftplan.plan_file import load_plan, plan_dict, save_plan
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases.fit import FitRequest, plan_fit

VL = "Qwen/Qwen2.5-VL-3B-Instruct"
IMAGES = ("--images-per-sample", "2", "--image-size", "1024x1024")
PINS = ("--method", "lora", "--no-quant", "--rank", "16", "--targets", "all-linear", "--precision", "bf16",
        "--optimizer", "adamw", "--zero", "0", "--max-offload", "none", "--grad-ckpt", "--batch", "1")  # fmt: skip
"""One structure and micro-batch, so a text-only and an image fit choose the same set-up."""


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def _fit(*args: str) -> dict:
    return _json(run_cli("fit", VL, "--gpus", "rtx4090", *PINS, *args, "--json"))


def _estimate_args(train: dict) -> list[str]:
    """estimate's options for the set-up a fit plan holds (what `swiftplan estimate MODEL ...` would be typed)."""
    par = train["parallel"]
    return ["--method", train["method"], "--rank", str(train["lora"]["rank"]), "--targets", "all-linear",
            "--precision", train["precision"], "--optimizer", train["optimizer"], "--batch", str(train["micro_batch"]),
            "--grad-accum", str(train["grad_accum"]), "--seq", str(train["seq_len"]),
            "--grad-ckpt" if train["grad_ckpt"] else "--no-grad-ckpt", "--zero", str(par["zero"]),
            "--offload", par["offload"]]  # fmt: skip


@pytest.fixture(scope="module")
def image_fit() -> dict:
    return _fit(*IMAGES)


def test_fit_plans_the_images_as_estimate_counts_them(image_fit):
    plan = image_fit["plan"]
    assert plan["train"]["vision"] == {"images_per_sample": 2, "image_width": 1024, "image_height": 1024,
                                       "image_tokens": 0, "video_frames": 0, "freeze_vit": True,
                                       "freeze_aligner": True}  # fmt: skip
    estimate = _json(
        run_cli("estimate", VL, "--gpus", "rtx4090", *_estimate_args(plan["train"]), *IMAGES, "--json")
    )
    predicted = plan["prediction"]
    assert predicted["per_device_bytes"] == estimate["per_device"]
    assert image_fit["best"]["device_total_bytes"] == estimate["per_device"]["device_total"]
    assert predicted["tokens_per_s"] == pytest.approx(estimate["speed"]["tokens_per_s"], rel=1e-12)
    assert estimate["speed"]["breakdown_s"]["vision_compute"] > 0  # the tower's FLOPs are in that speed


def test_images_raise_the_planned_peak_and_the_time_over_the_text_only_fit(image_fit):
    text = _fit()
    assert text["plan"]["train"]["vision"] is None and text["workload"]["dataset_image_tokens"] == 0
    with_images, text_only = image_fit["plan"]["prediction"], text["plan"]["prediction"]
    assert with_images["per_device_bytes"]["peak_allocated"] > text_only["per_device_bytes"]["peak_allocated"]
    assert with_images["per_device_bytes"]["weights"] > text_only["per_device_bytes"]["weights"]  # the tower
    # 2 images of 1024² are 2 × 1,225 tokens (smart_resize to 980², 70² patches / 2²) beside 2,048 text tokens
    workload = image_fit["workload"]
    sequences = -(-workload["dataset_tokens"] // 2048)  # the last, partial sequence carries its images too
    assert workload["dataset_image_tokens"] == 2 * 1225 * sequences
    assert with_images["time_to_train_s"] > 2 * text_only["time_to_train_s"]
    assert any(note.startswith("images counted:") and "1225 tokens" in note for note in image_fit["notes"])
    assert any(
        f"image tokens (2,450 in each of {sequences:,} sequences)" in note for note in image_fit["notes"]
    )


def test_the_job_line_says_the_images_were_counted():
    result = run_cli("fit", VL, "--gpus", "rtx4090", *PINS, *IMAGES)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "text tokens + " in flat and "image tokens (2,450 in each of" in flat
    assert "images counted: every sequence holds --seq text tokens + 2,450 image/video tokens" in flat
    assert "vision_activations" in flat  # the chosen plan's breakdown shows the tower's terms


def test_the_plan_file_round_trips_with_the_images(tmp_path: Path):
    vision = VisionInputs(images_per_sample=2, image_width=1024, image_height=1024)
    outcome = plan_fit(FitRequest(model=VL, gpus="rtx4090", vision=vision, trials=20))
    assert outcome.plan is not None and outcome.plan.setup.vision == vision
    path = tmp_path / "plan.yaml"
    save_plan(outcome.plan, path)
    loaded = load_plan(path)
    assert loaded.setup == outcome.plan.setup
    assert loaded.workload == outcome.plan.workload
    assert loaded.workload.vision == vision and loaded.workload.dataset_image_tokens > 0
    checked = _json(run_cli("estimate", str(path), "--json"))
    assert checked["prediction_matches_plan"] is True, checked["prediction_changed"]
    assert checked["prediction"]["time_to_train_s"] == outcome.plan.prediction.time_to_train_s


def test_a_plan_file_without_the_image_token_count_still_loads(tmp_path: Path):
    outcome = plan_fit(FitRequest(model="Qwen/Qwen2.5-0.5B", gpus="rtx4090", trials=10))
    assert outcome.plan is not None
    data = plan_dict(outcome.plan)
    del data["workload"]["dataset_image_tokens"]  # as written before fit took images
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    loaded = load_plan(path)
    assert loaded.workload.dataset_image_tokens == 0 and loaded.workload.vision is None


def test_a_plan_file_counting_images_without_train_vision_is_refused(tmp_path: Path):
    outcome = plan_fit(FitRequest(model="Qwen/Qwen2.5-0.5B", gpus="rtx4090", trials=10))
    assert outcome.plan is not None
    data = plan_dict(outcome.plan)
    data["workload"]["dataset_image_tokens"] = 1000
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = run_cli("estimate", str(path))
    assert result.exit_code == 2
    assert "workload.dataset_image_tokens 1000 counts images, but train.vision is absent" in " ".join(
        result.output.split()
    )


def test_serving_fit_counts_the_images_as_estimate_does():
    served = _json(run_cli("fit", VL, "--gpus", "rtx4090", "--task", "serve", "--concurrency", "4", "--no-quant",
                           "--kv-dtype", "auto", "--tp", "1", *IMAGES, "--json"))  # fmt: skip
    serve = served["plan"]["serve"]
    assert serve["vision"]["images_per_sample"] == 2
    estimate = _json(run_cli("estimate", VL, "--gpus", "rtx4090", "--task", "serve", "--context", "4096",
                             "--concurrency", str(serve["concurrency"]), "--precision", serve["dtype"],
                             "--gpu-memory-utilization", str(serve["gpu_memory_utilization"]), *IMAGES, "--json"))  # fmt: skip
    assert served["plan"]["prediction"]["per_device_bytes"] == estimate["per_device"]
    text = _json(run_cli("fit", VL, "--gpus", "rtx4090", "--task", "serve", "--concurrency", "4", "--no-quant",
                         "--kv-dtype", "auto", "--tp", "1", "--json"))  # fmt: skip
    assert text["plan"]["serve"]["vision"] is None
    with_images, text_only = (
        served["plan"]["prediction"]["per_device_bytes"],
        text["plan"]["prediction"]["per_device_bytes"],
    )
    assert with_images["weights"] > text_only["weights"]  # the vision tower
    assert with_images["activations"] > text_only["activations"]  # its encoder cache and pass


def _refused(*args: str) -> str:
    result = run_cli("fit", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def test_image_options_on_a_text_only_model_name_the_flag_and_the_model():
    message = _refused("Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--images-per-sample", "2")
    assert "Qwen/Qwen2.5-0.5B is a text-only model" in message
    assert "--images-per-sample" in message


def test_training_choices_are_refused_for_serving_as_estimate_refuses_them():
    fit = _refused(VL, "--gpus", "rtx4090", "--task", "serve", "--train-vit")
    estimate = run_cli("estimate", VL, "--gpus", "rtx4090", "--task", "serve", "--train-vit")
    assert estimate.exit_code == 2
    assert "--train-vit chooses what trains in fine-tuning; it does not apply to --task serve." in fit
    assert fit == " ".join(estimate.output.split())


def test_images_with_a_preference_task_are_refused_before_the_search():
    message = _refused(VL, "--gpus", "rtx4090", "--task", "dpo", *IMAGES)
    assert "--task dpo with image options" in message and "not modelled yet" in message


def test_measure_is_refused_with_images():
    message = _refused(VL, "--gpus", "rtx4090", "--measure", "--measure-device", "cpu", *IMAGES)
    assert "--measure times the language model alone" in message


def test_a_bad_image_size_is_refused_as_estimate_refuses_it():
    message = _refused(VL, "--gpus", "rtx4090", "--image-size", "1024")
    assert "--image-size '1024' is not WIDTHxHEIGHT in pixels" in message


def test_the_request_carries_the_vision_into_every_candidate():
    """The search's set-ups, not only the winner's: every evaluated candidate estimates with the images."""
    vision = VisionInputs(images_per_sample=1, image_tokens=256, freeze_aligner=False)
    outcome = plan_fit(FitRequest(model=VL, gpus="rtx4090", vision=vision, trials=20, compare_engines=False))
    evaluated = [e for e in outcome.result.evaluations if e.estimate is not None]
    assert evaluated and all(e.estimate.setup.vision == vision for e in evaluated)
    assert outcome.problem.workload.vision == vision
    text_request = FitRequest(model=VL, gpus="rtx4090", trials=20, compare_engines=False)
    assert replace(outcome.problem.request, vision=None) == text_request


def test_estimates_fit_pointer_restates_the_image_options_and_fit_plans_them():
    import re
    import shlex

    result = run_cli(
        "estimate", VL, "--method", "full", *IMAGES, "--freeze-vit", "--train-aligner", "--gpus", "rtx4090"
    )
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "fit has no image options" not in flat
    command = re.search(r"`swiftplan (fit [^`]+)`", flat)
    assert command is not None, flat
    args = shlex.split(command.group(1))
    assert (
        args[args.index("--images-per-sample") + 1] == "2"
        and "--train-aligner" in args
        and "--freeze-vit" in args
    )
    planned = _json(run_cli(*args, "--trials", "10", "--json"))
    assert planned["plan"]["train"]["vision"] == {"images_per_sample": 2, "image_width": 1024, "image_height": 1024,
                                                  "image_tokens": 0, "video_frames": 0, "freeze_vit": True,
                                                  "freeze_aligner": False}  # fmt: skip
