"""Shared pieces of the `swiftplan dash` tests: a fake probe and drivers for the pilot."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from swiftplan.executors.probe.result import HostInfo, ProbedDevice, ProbeResult

GiB = 2**30
FIXTURES = Path(__file__).parent / "fixtures"
RUN_FIXTURE = "dash_run"
"""Run directory under tests/fixtures (made-up numbers; see its README.md)."""


def fake_probe() -> ProbeResult:
    """Two RTX 4090s, one with 3.5 GiB held by something the probe cannot see."""
    host = HostInfo(
        os="Linux",
        machine="x86_64",
        cpu_model="AMD EPYC 7B13",
        logical_cpus=32,
        usable_cpus=32,
        ram_total_bytes=128 * GiB,
        ram_available_bytes=100 * GiB,
        disk_path="/data",
        disk_free_bytes=500 * GiB,
    )
    devices = tuple(
        ProbedDevice(
            index=i,
            backend="cuda",
            vendor="NVIDIA",
            name="NVIDIA GeForce RTX 4090",
            total_memory_bytes=int(23.99 * GiB),
            free_memory_bytes=int((23.5 - 3 * i) * GiB),
            used_memory_bytes=int((0.49 + 3 * i) * GiB),
            compute_capability="8.9",
        )
        for i in range(2)
    )
    return ProbeResult(host=host, backend="cuda", devices=devices, driver_version="550.54.15")


def no_accelerator() -> ProbeResult:
    """A laptop without a GPU."""
    return ProbeResult(host=fake_probe().host, backend=None, devices=(), attempts=("nvml: no driver",))


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    """Let every worker finish and every message they posted be handled."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def search(pilot, *, model: str, **fields: str) -> None:  # type: ignore[no-untyped-def]
    """Fill the job form (model plus any other fields), search, and wait for the plans."""
    from swiftplan.tui.panes.job import JobPane

    await pilot.press("2")
    pilot.app.query_one(JobPane).fill({"model": model, **fields})
    await settle(pilot)
    await pilot.press("ctrl+r")
    await settle(pilot)


async def pick_option(pilot: Any, selector: str, choice: str) -> None:
    """Choose an option of the Select at `selector` as a user does: open it, move to the option, press enter."""
    from textual.widgets import Select

    select = pilot.app.query_one(selector, Select)
    options = [value for _, value in select._options]
    select.focus()
    await pilot.press("enter")
    await pilot.pause()
    moves = options.index(choice) - options.index(select.value)
    await pilot.press(*(["down"] * moves if moves > 0 else ["up"] * -moves), "enter")
    await pilot.pause()
    assert select.value == choice


async def type_field(pilot: Any, key: str, text: str) -> None:
    """Type `text` into the job field `key` as a user does (focus it, clear it, type)."""
    from textual.widgets import Input

    field = pilot.app.query_one(f"#job-{key}", Input)
    assert not field.disabled, f"{key} is disabled"
    field.focus()
    await pilot.press("end", "ctrl+u", *text)
    assert field.value == text


async def form_search(pilot: Any) -> tuple[str, Any]:
    """Search from the job form; (the form's error text, the outcome)."""
    from textual.widgets import Static

    await pilot.press("ctrl+r")
    await settle(pilot)
    return str(pilot.app.query_one("#job-error", Static).render()).strip(), pilot.app.outcome


async def image_job_outcome(
    pilot: Any,
    *,
    model: str,
    picked: tuple[tuple[str, str], ...] = (),
    typed: tuple[tuple[str, str], ...] = (),
) -> Any:
    """A vision-language job searched from the form for ms-swift (swiftplan's loop trains no images): `model`
    filled, each (selector, choice) of `picked` chosen and each (field, text) of `typed` typed as a user does; the
    outcome of a search that found plans."""
    from swiftplan.tui.panes.job import JobPane

    pilot.app.query_one(JobPane).fill({"model": model})
    for selector, choice in (("#job-runtime", "ms-swift"), *picked):
        await pick_option(pilot, selector, choice)
    for key, text in typed:
        await type_field(pilot, key, text)
    error, outcome = await form_search(pilot)
    assert error == "" and outcome is not None and outcome.choices
    return outcome


@contextlib.asynccontextmanager
async def job_form(*, model: str, gpus: str, size: tuple[int, int]) -> AsyncIterator[tuple[Any, Any]]:
    """The dashboard on its job tab with `model` typed in, planning for `gpus`: (app, pilot)."""
    from swiftplan.tui.app import make_app
    from swiftplan.tui.panes.job import JobPane

    app = make_app(gpus=gpus, cursor_blink=False)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("2")
        app.query_one(JobPane).fill({"model": model})
        yield app, pilot
