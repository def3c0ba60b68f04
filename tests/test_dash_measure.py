"""The job form's measure fields (fit's --measure, --measure-top, --measure-steps, --measure-layers and
--measure-device), driven by Textual's pilot: the tiny Llama fixture is searched, then its top candidates run for
one real optimizer step each on the CPU in the search worker, and their measured tokens/s appear beside the
predicted ones in the search and plan tabs (a QLoRA/int8 candidate skipped with the executor's reason). Bad
input gets `fit --measure`'s message in the form, before the search, never a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import form_search, job_form, pick_option, settle, type_field  # noqa: E402

from swiftplan.tui import messages as msg  # noqa: E402
from swiftplan.tui.measure import CPU_NOTE, MEASURE_OPTIONS  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402
from tests.train_support import TINY_MODEL  # noqa: E402

GPUS = "rtx4090"
VL_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
SIZE = (120, 60)
FIT = ["fit", str(TINY_MODEL), "--gpus", GPUS, "--seq", "64", "--global-batch", "4"]
MEASURE_FIELDS = {"top": "3", "steps": "3", "layers": ""}
"""The measure fields' defaults (fit's), typed back between two refusals."""


def _job_form() -> Any:
    """The dashboard on its job tab with the tiny Llama's config typed in and a small workload."""
    return job_form(model=str(TINY_MODEL), gpus=GPUS, size=SIZE)


async def _measure_fields(pilot: Any, **fields: str) -> None:
    """Turn the measure switch on as a user does, then set the measure fields given."""
    await pick_option(pilot, "#job-measure", "yes")
    if "device" in fields:
        await pick_option(pilot, "#job-measure_device", fields.pop("device"))
    for key, text in fields.items():
        await type_field(pilot, f"measure_{key}", text)


def _text(app: Any, selector: str) -> str:
    """What the widget at `selector` shows on screen, its whitespace runs made one space."""
    from textual.geometry import Region

    widget = app.query_one(selector)
    lines = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return " ".join(" ".join(strip.text for strip in lines).split())


def test_measured_tokens_per_s_appear_beside_the_predicted_ones() -> None:
    async def drive() -> tuple[Any, str, str]:
        async with _job_form() as (app, pilot):
            pane = app.query_one(JobPane)
            pane.fill({"seq": "64", "global_batch": "4"})
            await _measure_fields(pilot, device="cpu", steps="1", layers="1")
            error, outcome = await form_search(pilot)
            assert error == "" and outcome is not None and outcome.choices
            await settle(pilot)
            assert app.measured is not None, _text(app, "#search-measure")
            search_text = _text(app, "#search-measure")
            await pilot.press("4")
            await pilot.pause()
            return app.measured, search_text, _text(app, "#plan-measured")

    view, search_text, plan_text = asyncio.run(drive())
    assert (view.device, view.layers, view.steps, len(view.rows)) == ("cpu", 1, 1, 3)  # fit's top 3
    ran = [row for row in view.rows if row.measured_tokens_per_s is not None]
    assert ran and all(row.measured_tokens_per_s > 0 and row.rank for row in ran)
    for row in ran:  # the measured and the predicted tokens/s of one device, side by side
        assert (
            f"{row.label} {row.predicted_tokens_per_s / 1e6:.3g}M {row.measured_tokens_per_s:,.0f}"
            in search_text
        )
    (skipped,) = [
        row for row in view.rows if row.skipped
    ]  # the int8 candidate: no bitsandbytes base on the CPU
    assert "int8" in skipped.label and "skipped" in search_text and "not available" in skipped.skipped
    assert "Measured on cpu (1 step(s) after a warm-up, 1 layer(s))" in search_text
    assert "winner by measurement: candidate" in search_text and CPU_NOTE in search_text
    best = view.rows[0]  # the plan tab's first row is fit's winner, the first candidate measured
    assert plan_text.startswith(
        f"measured on cpu with 1 layer(s): {best.measured_tokens_per_s:,.0f} tokens/s"
    )
    assert CPU_NOTE in plan_text


def test_measure_fields_follow_the_switch_and_the_task() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            assert all(app.query_one(f"#job-{key}").disabled for key in MEASURE_OPTIONS)
            await pick_option(pilot, "#job-measure", "yes")
            assert not any(app.query_one(f"#job-{key}").disabled for key in MEASURE_OPTIONS)
            await pick_option(pilot, "#job-task", "serve")  # fit refuses --measure with --task serve
            assert app.query_one("#job-measure").disabled
            assert all(app.query_one(f"#job-{key}").disabled for key in MEASURE_OPTIONS)
            await pick_option(pilot, "#job-task", "train")
            assert not any(app.query_one(f"#job-{key}").disabled for key in MEASURE_OPTIONS)

    asyncio.run(drive())


REFUSALS = [
    ({"layers": "5"}, ["--measure-layers", "5"], "--measure-layers 5 is more than the 2 layers of"),
    ({"steps": "0"}, ["--measure-steps", "0"], "--measure-steps must be at least 1, got 0."),
    ({"top": "-1"}, ["--measure-top", "-1"], "--measure-top must be at least 1, got -1."),
]
"""(form fields, fit flags, the message both give): each refused before the search."""


def test_bad_measure_fields_get_fits_message_in_the_form_before_the_search() -> None:
    async def drive() -> list[str]:
        errors = []
        async with _job_form() as (app, pilot):
            await _measure_fields(pilot, device="cpu")
            for fields, _, _ in REFUSALS:
                for key, text in {**MEASURE_FIELDS, **fields}.items():
                    await type_field(pilot, f"measure_{key}", text)
                error, outcome = await form_search(pilot)
                assert outcome is None and app.measured is None  # refused before the search
                errors.append(error)
            await type_field(pilot, "measure_steps", "three")
            errors.append((await form_search(pilot))[0])
        return errors

    errors = asyncio.run(drive())
    assert all("Traceback" not in error for error in errors)
    for (_, flags, expected), error in zip(REFUSALS, errors, strict=False):
        assert expected in error
        cli = run_cli(*FIT, "--measure", "--measure-device", "cpu", *flags)
        assert cli.exit_code == 2 and expected in " ".join(cli.output.split())  # the same refusal as fit's
    assert errors[-1].startswith("--measure-steps must be a whole number, got 'three'.")


def test_measuring_a_job_with_images_is_refused_as_fit_refuses_it() -> None:
    async def drive() -> str:
        async with job_form(model=VL_MODEL, gpus=GPUS, size=SIZE) as (app, pilot):
            await type_field(pilot, "images", "1")
            await _measure_fields(pilot, device="cpu")
            error, outcome = await form_search(pilot)
            assert outcome is None
            return error

    error = asyncio.run(drive())
    assert error.startswith("--measure times the language model alone") and "image options" in error
    cli = run_cli(
        "fit", VL_MODEL, "--gpus", GPUS, "--images-per-sample", "1", "--measure", "--measure-device", "cpu"
    )
    assert cli.exit_code == 2 and error.split(".")[0] in " ".join(
        cli.output.split()
    )  # the same refusal as fit's


def test_measuring_on_cuda_without_a_gpu_is_refused() -> None:
    from swiftplan.executors.measure import cuda_available

    if cuda_available():
        pytest.skip("this machine has a CUDA device")

    async def drive() -> str:
        async with _job_form() as (app, pilot):
            await pick_option(pilot, "#job-measure", "yes")  # the device stays fit's default, cuda
            error, _ = await form_search(pilot)
            return error

    error = asyncio.run(drive())
    assert "no CUDA device was found" in error and "--measure-device cpu" in error


def test_a_cancel_stops_the_measurement_before_its_next_candidate() -> None:
    from swiftplan.tui.workers import measure
    from swiftplan.usecases.fit import FitRequest, plan_fit
    from swiftplan.usecases.measure import MeasureOptions

    fit = plan_fit(FitRequest(model=str(TINY_MODEL), gpus=GPUS, seq_len=64, global_batch=4))
    options = MeasureOptions(top_k=2, steps=1, layers=1, device="cpu")
    asked: list[int] = []

    def cancelled() -> bool:  # the user presses x while the first candidate runs
        asked.append(1)
        return len(asked) > 1

    posted: list[Any] = []
    measure(posted.append, search_id=7, fit=fit, options=options, cancelled=cancelled)
    assert [type(m) for m in posted] == [msg.MeasureProgress, msg.MeasureProgress, msg.MeasureFailed]
    stopped = posted[-1]
    assert stopped.cancelled and stopped.search_id == 7
    assert stopped.message.startswith("Measurement cancelled after 1 candidate(s) ran")
    assert CPU_NOTE in posted[0].text
