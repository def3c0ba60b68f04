"""The job form's fields for the rest of fit's planning options, driven by Textual's pilot: packing (--packing), a vision-language
model's image tokens and video frames (--image-tokens, --video-frames) and, training it, whether its
vision tower and aligner train (--train-vit, --train-aligner), and the Optuna storage the study is kept in
(--storage, --study-name).
Each is typed or picked in the form, the search runs, and the plan shown is the one `swiftplan fit` makes with the
flag; a field the task does not read is disabled, and a bad value gets the CLI's (the fit use case's) message in
the form's error area. (test_dash_fit_options.py has the serving targets, DoRA, the data files and the images.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import form_search, image_job_outcome, job_form, pick_option, type_field  # noqa: E402

from swiftplan.errors import SwiftplanError  # noqa: E402
from swiftplan.tui.job import parse_job  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from swiftplan.usecases.fit import FitRequest, plan_fit  # noqa: E402
from swiftplan.usecases.vision_inputs import build_vision_inputs  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "2xrtx4090"
VL_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
SIZE = (100, 60)


def _job_form() -> Any:
    """The dashboard on its job tab with MODEL typed in: (app, pilot)."""
    return job_form(model=MODEL, gpus=GPUS, size=SIZE)


def test_packing_plans_full_rows_of_a_lengths_files_samples_as_fit_does(tmp_path: Any) -> None:
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("\n".join(str(100 + (i * 37) % 900) for i in range(500)) + "\n")

    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await type_field(pilot, "lengths", str(lengths))
            await pick_option(pilot, "#job-packing", "yes")
            error, outcome = await form_search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            assert any("packing (every batch full)" in note for note in outcome.notes)
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    # packed rows are full --seq rows: no padded batches, memory planned at the form's 2048 tokens
    assert not plan.workload.variable_lengths and plan.workload.seq_len == 2048
    # `swiftplan fit MODEL --gpus 2xrtx4090 --lengths lengths.txt --packing`
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, lengths=str(lengths), packing=True)).plan
    assert theirs is not None and plan.setup == theirs.setup and plan.workload == theirs.workload
    unpacked = plan_fit(FitRequest(model=MODEL, gpus=GPUS, lengths=str(lengths))).plan
    assert unpacked is not None and unpacked.workload != plan.workload  # the switch changed the plan


def test_packing_without_a_data_file_plans_as_fit_does_full_rows_already() -> None:
    # fit takes --packing without --data/--lengths and plans what it plans without it (every row is a full --seq);
    # the form does the same, refusing nothing
    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-packing", "yes")
            error, outcome = await form_search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    theirs = plan_fit(
        FitRequest(model=MODEL, gpus=GPUS, packing=True)
    ).plan  # `fit MODEL --gpus ... --packing`
    assert theirs is not None and plan.setup == theirs.setup and plan.workload == theirs.workload


def test_varying_lengths_plans_padded_batches_as_fit_does() -> None:
    """The form's "Varying lengths" is fit's --variable-lengths: batches padded by the runtime's padding and the
    allocator's slack for the lengths seen, so the plan differs from the fixed-length one."""

    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-variable_lengths", "yes")
            error, outcome = await form_search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    assert plan.workload.variable_lengths
    # `swiftplan fit MODEL --gpus 2xrtx4090 --variable-lengths`
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, variable_lengths=True)).plan
    assert theirs is not None and plan.setup == theirs.setup and plan.workload == theirs.workload
    fixed = plan_fit(FitRequest(model=MODEL, gpus=GPUS)).plan
    assert fixed is not None and fixed.workload != plan.workload  # the switch changed the plan


def test_packing_is_trainings_only() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-packing", "yes")
            await pick_option(pilot, "#job-task", "serve")
            assert app.query_one("#job-packing").disabled
            assert not parse_job(app.query_one(JobPane).values()).packing  # kept, but serving ignores it
            await pick_option(pilot, "#job-task", "train")
            assert parse_job(app.query_one(JobPane).values()).packing

    asyncio.run(drive())


def test_image_tokens_and_video_frames_plan_them_as_fit_does() -> None:
    async def drive() -> Any:
        async with _job_form() as (_, pilot):
            typed = (("image_tokens", "256"), ("video_frames", "8"))
            outcome = await image_job_outcome(pilot, model=VL_MODEL, typed=typed)
            assert any(note.startswith("images counted:") for note in outcome.notes)
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    vision = plan.workload.vision
    assert vision is not None and (vision.images_per_sample, vision.image_tokens, vision.video_frames) == (
        1,
        256,
        8,
    )
    # `swiftplan fit VL_MODEL --gpus 2xrtx4090 --runtime ms-swift --image-tokens 256 --video-frames 8`
    theirs_vision = build_vision_inputs({"image_tokens": 256, "video_frames": 8}, serving=False)
    theirs = plan_fit(FitRequest(model=VL_MODEL, gpus=GPUS, runtime="ms-swift", vision=theirs_vision)).plan
    assert theirs is not None and vision == theirs_vision
    assert plan.setup == theirs.setup and plan.prediction == theirs.prediction
    text = plan_fit(FitRequest(model=VL_MODEL, gpus=GPUS, runtime="ms-swift")).plan
    assert text is not None and text.workload.dataset_image_tokens < plan.workload.dataset_image_tokens


def test_zero_image_tokens_gets_the_clis_paragraph_in_the_form() -> None:
    cli = run_cli("fit", VL_MODEL, "--gpus", GPUS, "--runtime", "ms-swift", "--image-tokens", "0")
    assert cli.exit_code == 2

    async def drive() -> str:
        async with _job_form() as (app, pilot):
            app.query_one(JobPane).fill({"model": VL_MODEL})
            await type_field(pilot, "image_tokens", "0")
            error, outcome = await form_search(pilot)
            assert outcome is None and app.query_one("TabbedContent").active == "job"
            return error

    error = asyncio.run(drive())
    message, hint = error.split("\n")
    assert message.startswith("--image-tokens 0 would give each image no tokens")
    flat = " ".join(cli.output.split())
    assert " ".join(message.split()) in flat and " ".join(hint.split()) in flat  # the same words, wrapped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_tokens": "-5"}, "--image-tokens must be at least 0, got -5."),
        ({"image_tokens": "many"}, "--image-tokens must be a whole number, got 'many'."),
        ({"video_frames": "-1"}, "--video-frames must be at least 0, got -1."),
        ({"video_frames": "8.5"}, "--video-frames must be a whole number, got '8.5'."),
    ],
)
def test_a_bad_image_tokens_or_video_frames_field_gets_fits_message(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(SwiftplanError) as caught:
        parse_job({"model": VL_MODEL, **fields})
    assert caught.value.message == message


def test_video_frames_alone_plan_video_without_images_as_fit_does() -> None:
    job = parse_job({"model": VL_MODEL, "video_frames": "16"})
    # `fit --video-frames 16` alone: no images, one 16-frame video per sample
    assert job.vision == build_vision_inputs({"video_frames": 16}, serving=False)
    assert job.vision is not None and (job.vision.images_per_sample, job.vision.video_frames) == (0, 16)


def test_training_the_vision_tower_and_aligner_plans_them_as_fit_does() -> None:
    async def drive() -> Any:
        async with _job_form() as (_, pilot):
            picked = (("#job-train_vit", "yes"), ("#job-train_aligner", "yes"))
            outcome = await image_job_outcome(pilot, model=VL_MODEL, picked=picked)
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    vision = plan.workload.vision
    assert vision is not None and not vision.freeze_vit and not vision.freeze_aligner
    # `swiftplan fit VL_MODEL --gpus 2xrtx4090 --runtime ms-swift --train-vit --train-aligner` (one image a sample)
    theirs_vision = build_vision_inputs({"train_vit": True, "train_aligner": True}, serving=False)
    theirs = plan_fit(FitRequest(model=VL_MODEL, gpus=GPUS, runtime="ms-swift", vision=theirs_vision)).plan
    assert theirs is not None and vision == theirs_vision
    assert plan.setup == theirs.setup and plan.prediction == theirs.prediction
    frozen_vision = build_vision_inputs({"images_per_sample": 1}, serving=False)
    frozen = plan_fit(FitRequest(model=VL_MODEL, gpus=GPUS, runtime="ms-swift", vision=frozen_vision)).plan
    assert frozen is not None and frozen.prediction != plan.prediction  # the switches changed the plan


def test_the_vision_tower_switches_are_trainings_only() -> None:
    # the shared parser refuses --train-vit/--train-aligner with --task serve; the form disables them there instead
    with pytest.raises(SwiftplanError, match="not apply to --task serve"):
        build_vision_inputs({"train_vit": True}, serving=True)

    async def drive() -> None:
        async with _job_form() as (app, pilot):
            app.query_one(JobPane).fill({"model": VL_MODEL})
            await pick_option(pilot, "#job-train_vit", "yes")
            await pick_option(pilot, "#job-task", "serve")
            assert app.query_one("#job-train_vit").disabled and app.query_one("#job-train_aligner").disabled
            assert parse_job(app.query_one(JobPane).values()).vision is None  # kept, but serving ignores it
            await pick_option(pilot, "#job-task", "train")
            vision = parse_job(app.query_one(JobPane).values()).vision
            assert vision is not None and not vision.freeze_vit and vision.freeze_aligner

    asyncio.run(drive())


def test_training_the_vision_tower_of_a_text_model_gets_fits_message_in_the_form() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-train_vit", "yes")
            error, outcome = await form_search(pilot)
            assert (
                error.startswith(f"{MODEL} is a text-only model") and outcome is None
            )  # as `fit --train-vit`

    asyncio.run(drive())


def test_a_storage_url_keeps_the_study_under_its_name_as_fit_does(tmp_path: Any) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"

    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await type_field(pilot, "storage", url)
            await type_field(pilot, "study_name", "dash-study")
            error, outcome = await form_search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    stored = {summary.study_name: summary.n_trials for summary in optuna.get_all_study_summaries(url)}
    assert list(stored) == ["dash-study"] and stored["dash-study"] > 0  # the form's search ran in the storage
    # `swiftplan fit MODEL --gpus 2xrtx4090 --storage URL --study-name dash-study` resumes it to the same plan
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, storage=url, study_name="dash-study")).plan
    assert theirs is not None and plan.setup == theirs.setup and plan.prediction == theirs.prediction
    assert parse_job({"model": MODEL}).storage is None  # left empty: the study stays in memory


@pytest.mark.parametrize(
    ("url", "says"), [("nowhere", "is not a database URL"), ("nosuch://x", "Cannot open --storage")]
)
def test_a_bad_storage_url_gets_fits_message_in_the_form(url: str, says: str) -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await type_field(pilot, "storage", url)
            error, outcome = await form_search(pilot)
            assert (
                says in error and "internal error" not in error and outcome is None
            )  # as `fit --storage URL`

    asyncio.run(drive())
