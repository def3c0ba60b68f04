"""The job form's fields for the rest of fit's planning options, driven by Textual's pilot: packing (--packing).
Each is typed or picked in the form, the search runs, and the plan shown is the one `swiftplan fit` makes with the
flag; a field the task does not read is disabled, and a bad value gets the CLI's (the fit use case's) message in
the form's error area. (test_dash_fit_options.py has the serving targets, DoRA, the data files and the images.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import form_search, job_form, pick_option, type_field  # noqa: E402

from swiftplan.tui.job import parse_job  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from swiftplan.usecases.fit import FitRequest, plan_fit  # noqa: E402

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "2xrtx4090"
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
