"""The job form's fields for fit's task-specific options, driven by Textual's pilot: serving latency targets
(--ttft, --decode-tps), DoRA (--dora), the data's per-sample lengths (--data, --lengths) and a vision-language
model's images (--images-per-sample, --image-size). Each is typed into
the form, the search runs, and the plan shown is the one `swiftplan fit` makes with the flag; a field the task
does not read is disabled, and a bad value gets the CLI's (the fit use case's) message in the form's error area."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import form_search as _search  # noqa: E402
from dash_support import image_job_outcome, job_form, pick_option  # noqa: E402
from dash_support import type_field as _type  # noqa: E402
from textual.widgets import Input  # noqa: E402

from swiftplan.errors import SwiftplanError  # noqa: E402
from swiftplan.tui.job import SERVE_ONLY, TRAIN_ONLY, parse_job  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from swiftplan.usecases.fit import FitRequest, plan_fit  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "2xrtx4090"
SIZE = (100, 60)


def _job_form() -> Any:
    """The dashboard on its job tab with MODEL typed in: (app, pilot)."""
    return job_form(model=MODEL, gpus=GPUS, size=SIZE)


def test_task_specific_fields_are_enabled_for_their_task_only() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            assert all(app.query_one(f"#job-{key}").disabled for key in SERVE_ONLY)
            assert not any(app.query_one(f"#job-{key}").disabled for key in TRAIN_ONLY)
            await _type(pilot, "data", "train.jsonl")
            await pick_option(pilot, "#job-task", "serve")
            assert not any(app.query_one(f"#job-{key}").disabled for key in SERVE_ONLY)
            assert all(app.query_one(f"#job-{key}").disabled for key in TRAIN_ONLY)
            await _type(pilot, "ttft", "0.5")
            serving = parse_job(app.query_one(JobPane).values())
            assert (serving.ttft_s, serving.data) == (0.5, None)  # the data file is training's
            await pick_option(pilot, "#job-task", "dpo")
            assert app.query_one("#job-data", Input).value == "train.jsonl"  # kept while disabled
            training = parse_job(app.query_one(JobPane).values())
            assert (training.ttft_s, training.data) == (None, "train.jsonl")  # the target is serving's

    asyncio.run(drive())


def test_a_serving_plan_meets_the_latency_targets_typed_as_fit_does() -> None:
    ttft_s, decode_tps = 0.04, 60.0

    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-task", "serve")
            await _type(pilot, "ttft", f"{ttft_s:g}")
            await _type(pilot, "decode_tps", f"{decode_tps:g}")
            error, outcome = await _search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    assert plan.prediction.ttft_s <= ttft_s and plan.prediction.per_user_decode_tokens_per_s >= decode_tps
    # `swiftplan fit MODEL --gpus 2xrtx4090 --task serve --runtime vllm --ttft 0.04 --decode-tps 60` (the form's
    # serving runtime is vllm's profile)
    serve = {"model": MODEL, "gpus": GPUS, "task": "serve", "runtime": "vllm"}
    theirs = plan_fit(FitRequest(**serve, ttft_s=ttft_s, decode_tps=decode_tps))
    assert theirs.plan is not None
    assert plan.setup == theirs.plan.setup and plan.prediction == theirs.plan.prediction
    untargeted = plan_fit(FitRequest(**serve)).plan
    assert untargeted is not None and untargeted.prediction.ttft_s > ttft_s  # the targets chose the plan


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("ttft", "-1", "--ttft must be a positive number of seconds, got -1.0."),
        ("ttft", "soon", "--ttft must be a number such as 0.5 (s), or none, got 'soon'."),
        ("decode_tps", "0", "--decode-tps must be a positive number of tokens/s, got 0.0."),
        ("decode_tps", "inf", "--decode-tps must be a finite number, got inf."),
    ],
)
def test_a_bad_latency_target_gets_fits_message_in_the_form(key: str, text: str, message: str) -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-task", "serve")
            await _type(pilot, key, text)
            error, outcome = await _search(pilot)
            assert error == message and outcome is None
            assert app.query_one("TabbedContent").active == "job"

    asyncio.run(drive())


def test_the_dora_switch_plans_dora_adapters_as_fit_does() -> None:
    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-dora", "yes")
            error, outcome = await _search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            assert all("DoRA" in choice.summary for choice in outcome.choices)
            assert any(
                line.startswith("full: not searched") for line in outcome.family_lines
            )  # LoRA, QLoRA only
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    assert plan.setup.lora is not None and plan.setup.lora.dora and plan.workload.dora
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, dora=True)).plan  # `fit MODEL --gpus ... --dora`
    assert theirs is not None and plan.setup == theirs.setup and plan.prediction == theirs.prediction


def test_dora_with_full_fine_tuning_gets_fits_refusal_in_the_form() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-method", "full")
            await pick_option(pilot, "#job-dora", "yes")
            error, outcome = await _search(pilot)
            assert error.startswith("--dora decomposes LoRA adapters, and --method full") and outcome is None

    asyncio.run(drive())


def test_a_lengths_file_sizes_the_plan_on_its_samples_as_fit_does(tmp_path: Any) -> None:
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("\n".join(str(100 + (i * 37) % 900) for i in range(500)) + "\n")

    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await _type(pilot, "lengths", str(lengths))
            error, outcome = await _search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            assert any("lengths file lengths.txt" in note and "500 samples" in note for note in outcome.notes)
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    # the file's tokens replace the form's dataset tokens (100M), as --lengths does without --dataset-tokens
    assert plan.workload.variable_lengths and plan.workload.dataset_tokens < 1_000_000
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, lengths=str(lengths))).plan
    assert theirs is not None and plan.setup == theirs.setup and plan.workload == theirs.workload


def test_a_missing_data_file_or_two_files_get_fits_messages_in_the_form(tmp_path: Any) -> None:
    missing = tmp_path / "nowhere.jsonl"

    async def drive() -> None:
        async with _job_form() as (app, pilot):
            await _type(pilot, "data", str(missing))
            error, _ = await _search(pilot)
            assert str(missing) in error and "Traceback" not in error
            await _type(pilot, "lengths", str(tmp_path / "lengths.txt"))
            error, _ = await _search(pilot)
            assert error == "Pass either --data or --lengths, not both."

    asyncio.run(drive())


def test_the_new_fields_left_alone_ask_for_nothing() -> None:
    for task in ("train", "serve"):
        job = parse_job({"model": MODEL, "task": task})
        assert (job.ttft_s, job.decode_tps, job.dora, job.data, job.lengths, job.packing) == (
            None,
            None,
            False,
            None,
            None,
            False,
        )


VL_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


def test_images_per_sample_and_size_plan_the_images_as_fit_does() -> None:
    async def drive() -> Any:
        async with _job_form() as (_, pilot):
            typed = (("images", "2"), ("image_size", "1024x768"))
            outcome = await image_job_outcome(pilot, model=VL_MODEL, typed=typed)
            assert any(note.startswith("images counted:") for note in outcome.notes)
            return outcome.choices[0].plan

    plan = asyncio.run(drive())
    vision = plan.workload.vision
    assert vision is not None and (vision.images_per_sample, vision.image_width, vision.image_height) == (
        2,
        1024,
        768,
    )
    # `swiftplan fit VL_MODEL --gpus 2xrtx4090 --runtime ms-swift --images-per-sample 2 --image-size 1024x768`
    theirs = plan_fit(FitRequest(model=VL_MODEL, gpus=GPUS, runtime="ms-swift", vision=vision)).plan
    assert theirs is not None and plan.setup == theirs.setup and plan.prediction == theirs.prediction


def test_images_on_a_text_model_get_the_clis_paragraph_in_the_form() -> None:
    cli = run_cli("fit", MODEL, "--gpus", GPUS, "--images-per-sample", "2")
    assert cli.exit_code == 2

    async def drive() -> str:
        async with _job_form() as (app, pilot):
            await _type(pilot, "images", "2")
            error, outcome = await _search(pilot)
            assert outcome is None and app.query_one("TabbedContent").active == "job"
            return error

    error = asyncio.run(drive())
    message, hint = error.split("\n")
    assert message.startswith(f"{MODEL} is a text-only model") and "Traceback" not in error
    flat = " ".join(cli.output.split())
    assert " ".join(message.split()) in flat and " ".join(hint.split()) in flat  # the same words, wrapped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": "big"}, "--image-size 'big' is not WIDTHxHEIGHT in pixels; write it like 1024x768."),
        ({"image_size": "0x768"}, "--image-size '0x768' has a side of 0 pixels"),
        ({"images": "-1"}, "--images-per-sample must be at least 0, got -1."),
        ({"images": "two"}, "--images-per-sample must be a whole number, got 'two'."),
    ],
)
def test_a_bad_image_field_gets_fits_message(fields: dict[str, str], message: str) -> None:
    with pytest.raises(SwiftplanError) as caught:
        parse_job({"model": VL_MODEL, **fields})
    assert caught.value.message.startswith(message)
