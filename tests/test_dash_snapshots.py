"""Snapshots of the dashboard's screens at fixed terminal sizes (pytest-textual-snapshot).

Each test drives the app to one screen with a fake probe and a seeded search, then compares an SVG
with the one committed under tests/__snapshots__/. After an intended change, look at the report and
run `pytest tests/test_dash_snapshots.py --snapshot-update`. The SVGs depend on Textual's version: the
dev extra pins the one they were taken with.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot")

from dash_support import FIXTURES, RUN_FIXTURE, fake_probe, search, settle  # noqa: E402

from swiftplan.tui.app import make_app  # noqa: E402

SMALL, LARGE = (80, 24), (120, 40)


async def _quiet(pilot) -> None:  # type: ignore[no-untyped-def]
    await settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


def _after(*steps):  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        for step in steps:
            await step(pilot)
        await _quiet(pilot)

    return run_before


async def _search_7b(pilot) -> None:  # type: ignore[no-untyped-def]
    await search(pilot, model="Qwen/Qwen2.5-7B", dataset_tokens="50M")


def _press(*keys: str):  # type: ignore[no-untyped-def]
    async def press(pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press(*keys)

    return press


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_hardware_probed(snap_compare, size):
    assert snap_compare(
        make_app(probe=fake_probe, cursor_blink=False), terminal_size=size, run_before=_after()
    )


def test_cluster_picker(snap_compare):
    app = make_app(probe=fake_probe, cursor_blink=False)
    assert snap_compare(app, terminal_size=SMALL, run_before=_after(_press("c", *"a100")))


def test_job_form(snap_compare):
    app = make_app(gpus="rtx4090", model="Qwen/Qwen2.5-7B", cursor_blink=False)
    assert snap_compare(app, terminal_size=SMALL, run_before=_after(_press("2")))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_search_done(snap_compare, size):
    app = make_app(gpus="2xrtx4090", cursor_blink=False)
    assert snap_compare(app, terminal_size=size, run_before=_after(_search_7b))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_plan_view(snap_compare, size):
    app = make_app(gpus="2xrtx4090", cursor_blink=False)
    assert snap_compare(app, terminal_size=size, run_before=_after(_search_7b, _press("4")))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_run_monitor(snap_compare, size, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    app = make_app(run_dir=RUN_FIXTURE, cursor_blink=False)
    assert snap_compare(app, terminal_size=size, run_before=_after(_press("5")))
