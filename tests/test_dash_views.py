"""Dashboard views that must not mislead: `dash --run` opens on the run, a prediction far from the
measurements does not flatten them, and the end of a search does not hide the plot's axis."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

pytest.importorskip("textual")

from dash_support import FIXTURES, RUN_FIXTURE, no_accelerator, search, settle  # noqa: E402

from swiftplan.tui.runs import Series  # noqa: E402
from swiftplan.tui.widgets.lines import on_scale, value_axis  # noqa: E402


def test_dash_with_a_run_opens_on_the_run_monitor():
    from swiftplan.tui.app import make_app

    async def flow() -> None:
        app = make_app(run_dir=str(FIXTURES / RUN_FIXTURE), cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert app.query_one("TabbedContent").active == "run"
            assert "60/60 steps" in str(app.query_one("#run-status").render())
            assert app.focused is app.query_one("#run-loss")

    asyncio.run(flow())


def test_a_gpu_prediction_against_a_cpu_run_is_named_not_drawn():
    cpu = Series(title="tokens/s", steps=(1, 2, 3), values=(6_100.0, 6_800.0, 6_750.0),
                 predicted=(("planned", 97_900_000.0),))  # fmt: skip
    drawn, off = on_scale(cpu)
    assert drawn == () and off == (("planned", 97_900_000.0),)
    axis = value_axis(cpu, drawn)
    assert axis.lo >= 0 and axis.hi < 10_000  # the measured line spans the plot, not 0.01 % of it
    near = Series(
        title="tokens/s", steps=(1, 2), values=(20_000.0, 21_000.0), predicted=(("planned", 29_049.0),)
    )
    assert on_scale(near) == (near.predicted, ())
    assert value_axis(near, near.predicted).hi > 29_049.0


def test_the_run_monitor_keeps_the_measured_speed_readable(tmp_path):
    from swiftplan.tui.app import make_app

    run = tmp_path / "run"
    shutil.copytree(FIXTURES / RUN_FIXTURE, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # a CPU-speed run of a plan predicted at ~29k tokens/s
        row["step_time_s"] = row["step_time_s"] * 1000
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    async def flow() -> None:
        app = make_app(run_dir=str(run), cursor_blink=False)
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot)
            speed = str(app.query_one("#run-speed").render())
            assert "planned" in speed and "off scale" in speed
            top_label = speed.splitlines()[1].split("│")[0].strip()
            assert not top_label.endswith("k") or float(top_label[:-1]) < 1  # tens of tokens/s, not 29k

    asyncio.run(flow())


def test_no_toast_covers_the_plot_when_the_search_ends_in_view():
    from swiftplan.tui.app import make_app

    async def flow() -> None:
        app = make_app(probe=no_accelerator, gpus="rtx4090", cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await search(pilot, model="Qwen/Qwen2.5-0.5B")
            assert app.query_one("TabbedContent").active == "search"
            assert "press 4" in str(app.query_one("#search-best").render())
            assert not list(app.screen.query("Toast"))

    asyncio.run(flow())


DOCTOR_LOG = FIXTURES / "doctor" / "cuda_oom_adamw_step.log"


def test_dash_doctor_reads_a_failed_log_like_the_cli():
    from swiftplan.tui.app import make_app
    from swiftplan.usecases.doctor import DoctorRequest, diagnose

    expected = diagnose(DoctorRequest(text=DOCTOR_LOG.read_text(), source=str(DOCTOR_LOG)))

    async def flow() -> None:
        app = make_app(doctor_log=str(DOCTOR_LOG), cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert app.query_one("TabbedContent").active == "doctor"
            answer = " ".join(str(app.query_one("#doctor-answer").render()).split())
            assert " ".join(expected.headline.split()) in answer
            assert all(" ".join(r.text.split())[:40] in answer for r in expected.remedies)
            field = app.query_one("#doctor-log")
            field.value = "/nonexistent/train.log"
            field.focus()
            await pilot.press("enter")
            await settle(pilot)
            assert "Cannot read log /nonexistent/train.log" in str(app.query_one("#doctor-answer").render())

    asyncio.run(flow())


def test_dash_without_a_terminal_says_so_instead_of_starting():
    from bad_input_support import assert_refused, run_cli

    assert_refused(run_cli("dash", "--no-probe"), "not a terminal", "--json")
