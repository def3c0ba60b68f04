"""The job form's Runtime select follows the task: the serving runtimes (vLLM first) for serve, the
training runtimes otherwise; a serving search plans for the runtime picked as the fit use case does
(same engine, same serve.runtime, same plan); the runtime knobs are training's, closed for serve, and a
knob changed while the task is serve gets the CLI's refusal of knob flags with --task serve."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import job_form, pick_option, settle  # noqa: E402
from textual.widgets import Collapsible, Select, Static  # noqa: E402

from swiftplan.errors import SwiftplanError  # noqa: E402
from swiftplan.plan_file import plan_dict  # noqa: E402
from swiftplan.tui.job import KNOBS_FOR, parse_job, runtime_choices, serve_runtime_choices  # noqa: E402
from swiftplan.tui.knobs import KNOB_FIELDS, runtime_knob_text  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from swiftplan.usecases.fit import FitRequest, plan_fit  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "2xrtx4090"
SIZE = (100, 60)
"""Tall enough to show the whole form with the knob group open."""


def _job_form() -> Any:
    """The dashboard on its job tab with MODEL typed in: (app, pilot)."""
    return job_form(model=MODEL, gpus=GPUS, size=SIZE)


def _options(app: Any) -> list[str]:
    return [str(value) for _, value in app.query_one("#job-runtime", Select)._options]


def _value(app: Any, key: str) -> str:
    return str(app.query_one(f"#job-{key}").value)


async def _pick(pilot: Any, key: str, choice: str) -> None:
    await pick_option(pilot, f"#job-{key}", choice)


def test_serving_runtimes_are_fits_with_vllm_first() -> None:
    assert serve_runtime_choices()[0] == "vllm"
    assert {"sglang", "lmdeploy"} <= set(serve_runtime_choices())
    assert not set(serve_runtime_choices()) & set(runtime_choices())
    for runtime in serve_runtime_choices():
        job = parse_job({"model": MODEL, "task": "serve", "runtime": runtime})
        assert job.runtime == runtime and job.runtime_options == {}


def test_the_runtime_select_follows_the_task_and_each_side_keeps_its_pick() -> None:
    async def drive() -> None:
        async with _job_form() as (app, pilot):
            knobs = app.query_one("#job-knobs", Collapsible)
            assert _options(app) == list(runtime_choices()) and _value(app, "runtime") == "swiftplan"
            await _pick(pilot, "runtime", "hf")
            await pilot.click("#job-knobs CollapsibleTitle")
            await pilot.pause()
            await _pick(pilot, "fsdp", "fsdp2")  # a training edit
            assert runtime_knob_text("hf")["fsdp"] != "fsdp2"

            await _pick(pilot, "task", "serve")
            assert _options(app) == list(serve_runtime_choices()) and _value(app, "runtime") == "vllm"
            assert knobs.disabled and knobs.collapsed
            # the knob fields show hf's own values: serving sees no knob changed, so the search may run
            assert {k: _value(app, k) for k in KNOB_FIELDS} == runtime_knob_text("hf")
            assert parse_job(app.query_one(JobPane).values()).runtime == "vllm"
            await _pick(pilot, "runtime", "lmdeploy")

            await _pick(pilot, "task", "dpo")
            assert _options(app) == list(runtime_choices()) and _value(app, "runtime") == "hf"
            assert not knobs.disabled and _value(app, "fsdp") == "fsdp2"  # the training edit is back
            fields = app.query_one(JobPane).values()
            assert parse_job(fields).runtime_options == {"fsdp": "fsdp2"}

            await _pick(pilot, "task", "serve")
            assert _value(app, "runtime") == "lmdeploy"

    asyncio.run(drive())


@pytest.mark.parametrize("runtime", ["sglang", "lmdeploy"])
def test_a_serving_search_plans_for_the_runtime_picked_as_fit_does(runtime: str) -> None:
    async def drive() -> tuple[dict[str, str], Any]:
        async with _job_form() as (app, pilot):
            await _pick(pilot, "task", "serve")
            await _pick(pilot, "runtime", runtime)
            fields = app.query_one(JobPane).values()
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert str(app.query_one("#job-error", Static).render()).strip() == ""
            assert app.outcome is not None and app.outcome.choices
            return fields, app.outcome.choices[0].plan

    fields, plan = asyncio.run(drive())
    # `swiftplan fit MODEL --gpus 2xrtx4090 --task serve --runtime R --context <the form's>`
    theirs = plan_fit(
        FitRequest(model=MODEL, gpus=GPUS, task="serve", runtime=runtime, context=int(fields["context"]))
    )
    assert theirs.plan is not None
    ours, their_dict = plan_dict(plan), plan_dict(theirs.plan)
    assert ours["engine"] == their_dict["engine"] == runtime
    assert ours["serve"]["runtime"] == their_dict["serve"]["runtime"] == runtime
    assert plan.setup == theirs.plan.setup and plan.prediction == theirs.plan.prediction


def test_a_knob_changed_while_serving_gets_the_clis_refusal() -> None:
    cli = run_cli(
        "estimate", MODEL, "--gpus", "rtx4090", "--task", "serve", "--loss", "chunked", "--fsdp", "fsdp2"
    )
    assert cli.exit_code != 0 and "Traceback" not in cli.output
    cli_error = " ".join(cli.output.split()).removeprefix("error: ")

    async def drive() -> tuple[str, str]:
        async with _job_form() as (app, pilot):
            await _pick(pilot, "task", "serve")
            await _pick(pilot, "runtime", "sglang")
            app.query_one(JobPane).fill(
                {"loss": "chunked", "fsdp": "fsdp2"}
            )  # the group is closed to the user
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert app.outcome is None
            return app.query_one("TabbedContent").active, str(app.query_one("#job-error", Static).render())

    tab, shown = asyncio.run(drive())
    assert tab == "job" and shown.strip() and "Traceback" not in shown
    assert " ".join(shown.split()) == cli_error  # the CLI's paragraph, word for word


def test_serving_refuses_only_the_knobs_that_differ_from_the_training_runtime_they_were_filled_for() -> None:
    hf = runtime_knob_text("hf")
    assert parse_job({"model": MODEL, "task": "serve", **hf, KNOBS_FOR: "hf"}).runtime_options == {}
    changed = {**hf, "float8": "yes" if hf["float8"] == "no" else "no"}
    with pytest.raises(SwiftplanError, match=r"^--float8 describes how a training framework runs"):
        parse_job({"model": MODEL, "task": "serve", **changed, KNOBS_FOR: "hf"})
    with pytest.raises(
        SwiftplanError, match=r"--loss-chunks must be at least 1"
    ):  # bad text: the flag's check
        parse_job({"model": MODEL, "task": "serve", "loss_chunks": "0"})


def test_eager_decode_plans_as_fits_enforce_eager_and_training_refuses_it() -> None:
    async def drive() -> Any:
        async with _job_form() as (app, pilot):
            await _pick(pilot, "task", "serve")
            await _pick(pilot, "eager", "yes")
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert str(app.query_one("#job-error", Static).render()).strip() == ""
            assert app.outcome is not None and app.outcome.choices
            return app.outcome.choices[0].plan

    plan = asyncio.run(drive())
    # `swiftplan fit MODEL --gpus 2xrtx4090 --task serve --runtime vllm --enforce-eager` (the form's runtime)
    theirs = plan_fit(FitRequest(model=MODEL, gpus=GPUS, task="serve", runtime="vllm", eager=True))
    assert theirs.plan is not None
    assert plan.setup.eager and plan.setup == theirs.plan.setup and plan.prediction == theirs.plan.prediction
    with pytest.raises(SwiftplanError, match="serving option"):
        parse_job({"model": MODEL, "task": "train", "eager": "yes"})
    cli = run_cli("fit", MODEL, "--gpus", GPUS, "--enforce-eager")
    assert cli.exit_code != 0 and "serving option" in cli.output and "Traceback" not in cli.output
