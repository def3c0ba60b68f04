"""Which engines a vision-language plan is made for: only those that train the model on its images (the engine table,
planner/engines.py IMAGE_TRAIN_ENGINES, checked against what each renderer accepts), so fit picks one of them by
default, refuses another in one message, estimate says the same, swiftplan's own loop refuses such a plan, and
doctor's re-plan of one keeps its images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli

import swiftplan.planner.engines as engines_table
from swiftplan.errors import SwiftplanError
from swiftplan.executors.engines import require_runnable
from swiftplan.executors.train_engines.common import RunOptions
from swiftplan.executors.train_engines.registry import RENDERERS, render_for
from swiftplan.plan_file import save_plan
from swiftplan.planner.engines import IMAGE_TRAIN_ENGINES, get_engine, list_engines
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases.fit import FitRequest, plan_fit

VL = "Qwen/Qwen2.5-VL-3B-Instruct"
IMAGES = ("--images-per-sample", "2", "--image-size", "1024x1024")
VISION = VisionInputs(images_per_sample=2, image_width=1024, image_height=1024)
OPTIONS = RunOptions(data="/data/vlm.jsonl", output_dir="/runs/vlm", max_steps=10)
DOCTOR_LOG = Path(__file__).parent / "fixtures" / "doctor" / "unsloth_forward_long_context.log"


@pytest.fixture(scope="module")
def image_plan():
    """fit's plan for a Qwen2.5-VL LoRA with two images a sample, no engine named."""
    outcome = plan_fit(FitRequest(model=VL, gpus="rtx4090", vision=VISION, trials=20, compare_engines=False))
    assert outcome.plan is not None
    return outcome


def test_fit_plans_images_for_the_first_engine_that_trains_on_them(image_plan):
    plan = image_plan.plan
    assert plan.engine == "ms-swift" and plan.setup.vision == VISION
    assert (
        plan.setup.runtime.name == "ms-swift"
    )  # memory counted under the defaults of the engine that runs it
    assert any(note.startswith("images: planned for ms-swift") for note in image_plan.problem.notes)
    argv = render_for("ms-swift", plan, OPTIONS).commands[0]
    assert argv[argv.index("--freeze_vit") + 1] == "true" and "--max_pixels" in argv


def test_swiftplans_own_loop_refuses_a_plan_with_images(image_plan):
    with pytest.raises(
        SwiftplanError, match="swiftplan does not train a vision-language model on its images"
    ):
        require_runnable("swiftplan", image_plan.plan)


def test_the_engine_table_says_what_each_renderer_accepts(image_plan, monkeypatch):
    """With the table's vision check lifted, a renderer renders the plan exactly when the table lists its engine:
    the others refuse the images themselves (train_engines/vision.py refuse_vision). A renderer that starts
    rendering images, or stops, fails this until the table says so."""
    assert set(IMAGE_TRAIN_ENGINES) <= set(RENDERERS)
    monkeypatch.setattr(engines_table, "IMAGE_TRAIN_ENGINES", {name: "" for name in RENDERERS})
    for name in RENDERERS:
        try:
            render_for(name, image_plan.plan, OPTIONS)
            renders = True
        except SwiftplanError:
            renders = False
        assert renders == (name in IMAGE_TRAIN_ENGINES), name


def test_every_training_engine_but_the_listed_ones_is_refused_with_images():
    from swiftplan.planner.engines import Requirements, engine_reasons

    needs = Requirements(backend="cuda", objective="sft", method="lora", vision=True)
    for engine in list_engines("train"):
        reasons = engine_reasons(engine, needs)
        assert bool(reasons) == (engine.name not in IMAGE_TRAIN_ENGINES), (engine.name, reasons)
    assert not engine_reasons(get_engine("trl"), Requirements(backend="cuda", objective="sft", method="lora"))


@pytest.mark.parametrize(
    ("choice", "named"),
    [
        (("--runtime", "hf"), "--runtime hf plans for trl"),
        (("--runtime", "axolotl"), "--runtime axolotl plans for axolotl"),
        (("--engine", "trl"), "--engine trl"),
        (("--engine", "axolotl"), "--engine axolotl"),
        (("--engine", "swiftplan"), "--engine swiftplan"),
    ],
)
def test_fit_refuses_an_engine_that_does_not_train_on_images_in_one_message(choice, named):
    result = run_cli("fit", VL, "--gpus", "rtx4090", *IMAGES, *choice)
    assert_refused(result, named, "does not train a vision-language model on its images",
                   "ms-swift, megatron-swift and llamafactory", "drop the image options")  # fmt: skip
    assert result.output.lower().count("error:") == 1


@pytest.mark.parametrize("engine", ["ms-swift", "llamafactory"])
def test_fit_plans_images_for_an_engine_that_trains_on_them(engine):
    result = run_cli("fit", VL, "--gpus", "rtx4090", *IMAGES, "--engine", engine, "--trials", "10", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])["plan"]
    assert plan["engine"] == engine and plan["train"]["vision"]["images_per_sample"] == 2


def _estimate_engine(*args: str) -> dict:
    result = run_cli("estimate", VL, "--gpus", "rtx4090", *IMAGES, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])["engine"]


@pytest.mark.parametrize(
    ("args", "name"), [(("--engine", "swiftplan"), "swiftplan"), (("--runtime", "hf"), "trl")]
)
def test_estimate_shares_the_check(args, name):
    engine = _estimate_engine(*args)
    assert engine["name"] == name and engine["runs"] is False
    assert any("does not train a vision-language model on its images" in r for r in engine["reasons"])
    assert set(engine["engines_that_could"]) <= set(IMAGE_TRAIN_ENGINES)
    if name == "swiftplan":  # the loop's own runtime settings run on all three, and ms-swift runs the images
        assert engine["engines_that_could"] == ["ms-swift", "megatron-swift", "llamafactory"]
        assert _estimate_engine("--engine", "ms-swift")["runs"] is True


def test_estimate_with_images_and_no_engine_is_fits_engine_and_runtime():
    """Neither --engine nor --runtime: estimate counts the images under the engine fit plans them for (ms-swift)."""
    engine = _estimate_engine()
    assert engine["name"] == "ms-swift" and engine["runs"] is True
    result = run_cli("estimate", VL, "--gpus", "rtx4090", *IMAGES, "--json")
    assert json.loads(result.output[result.output.index("{") :])["runtime"]["name"] == "ms-swift"


def test_doctors_re_plan_of_a_vision_plan_keeps_its_images(image_plan, tmp_path, monkeypatch):
    """The run ran out of memory: doctor re-plans on the plan's hardware with fit, and every fit it asks for has
    the plan's images (and its engine), so the re-plan's memory counts them as the plan did."""
    from swiftplan.usecases import doctor, fit

    path = tmp_path / "plan.yaml"
    save_plan(image_plan.plan, path)
    asked: list[FitRequest] = []
    planned = []
    prepare, search = fit.prepare_fit, fit.search_fit

    def record_prepare(request, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(request)
        return prepare(request, **kwargs)

    def record_search(problem):  # type: ignore[no-untyped-def]
        outcome = search(problem)
        planned.append(outcome.plan)
        return outcome

    monkeypatch.setattr(fit, "prepare_fit", record_prepare)
    monkeypatch.setattr(fit, "search_fit", record_search)
    # the log is a T4's (14.75 GiB); doctor refuses a plan for another device, so it is replayed on the 4090
    text = DOCTOR_LOG.read_text(encoding="utf-8").replace("capacity of 14.75 GiB", "capacity of 23.65 GiB")
    outcome = doctor.diagnose(doctor.DoctorRequest(text=text, source="log", plan_path=str(path)))
    assert asked, outcome.notes
    assert all(request.vision == VISION and request.engine == "ms-swift" for request in asked)
    assert all(p is None or p.setup.vision == VISION for p in planned)
    assert not any("re-planning failed" in note for note in outcome.notes), outcome.notes
