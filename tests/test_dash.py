"""`swiftplan dash`: the view data (pure), the workers (called directly), and the whole flow driven by
Textual's pilot: pick a catalog cluster, fill the form, search, select a plan, save it, copy its command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("textual")

from dash_support import FIXTURES, RUN_FIXTURE, fake_probe, no_accelerator, search, settle  # noqa: E402

from swiftplan.errors import SwiftplanError  # noqa: E402
from swiftplan.plan_file import load_plan  # noqa: E402
from swiftplan.planner.hardware import parse_cluster  # noqa: E402
from swiftplan.tui import messages as msg  # noqa: E402
from swiftplan.tui import workers  # noqa: E402
from swiftplan.tui.hardware import catalog_options, from_catalog, from_probe  # noqa: E402
from swiftplan.tui.job import parse_job  # noqa: E402
from swiftplan.tui.plot import Axis, BrailleCanvas  # noqa: E402
from swiftplan.tui.runs import load_run  # noqa: E402
from swiftplan.tui.search import prepare, run_search, time_memory_front  # noqa: E402

# --- view data ---------------------------------------------------------------------------------


def test_braille_canvas_sets_the_dot_asked_for_and_keeps_the_highest_layer():
    canvas = BrailleCanvas(2, 1)
    canvas.dot(0.0, 1.0, layer=0)  # top-left dot of the first cell
    canvas.dot(0.0, 0.0, layer=3)  # bottom-left dot of the same cell
    (first, layer), (second, empty) = canvas.rows()[0]
    assert first == chr(0x2800 | 0x01 | 0x40) and layer == 3
    assert (second, empty) == (" ", -1)


def test_log_axis_puts_a_decade_in_the_middle_of_two():
    axis = Axis(lo=1.0, hi=100.0, log=True)
    assert axis.fraction(10.0) == pytest.approx(0.5)
    assert axis.value_at(0.5) == pytest.approx(10.0)
    assert axis.fraction(1e9) == 1.0


def test_form_errors_name_the_field():
    with pytest.raises(SwiftplanError, match="No model"):
        parse_job({})
    with pytest.raises(SwiftplanError, match="Sequence length"):
        parse_job({"model": "Qwen/Qwen2.5-7B", "seq": "long"})
    with pytest.raises(SwiftplanError, match="Dataset tokens"):
        parse_job({"model": "Qwen/Qwen2.5-7B", "dataset_tokens": "lots"})
    job = parse_job({"model": "Qwen/Qwen2.5-7B", "task": "serve", "rank": "auto", "method": "lora,qlora"})
    assert job.objective == "throughput" and job.methods == ("lora", "qlora") and len(job.ranks or ()) > 3


def test_probe_view_lists_used_and_free_memory_and_the_cluster_from_free_memory():
    view = from_probe(fake_probe())
    assert [row.used_bytes for row in view.devices] == [d.used_memory_bytes for d in fake_probe().devices]
    assert view.cluster is not None and view.cluster.world_size == 2
    assert view.cluster.usable_memory_bytes == fake_probe().devices[1].free_memory_bytes
    assert any("another container" in note for note in view.notes)
    empty = from_probe(no_accelerator())
    assert empty.cluster is None and "catalog" in empty.summary and empty.notes == ("tried nvml: no driver",)


def test_catalog_view_has_a_row_per_gpu_and_every_accelerator_is_offered():
    view = from_catalog("2x8xH100")
    assert view.cluster is not None and view.cluster.world_size == 16 and len(view.devices) == 16
    assert {o.id for o in catalog_options()} >= {"rtx4090", "h100-sxm"}
    with pytest.raises(SwiftplanError, match="Unknown GPU"):
        from_catalog("rtx9999")


def test_the_front_holds_only_plans_nothing_beats_on_both_time_and_memory():
    problem = prepare(
        parse_job({"model": "Qwen/Qwen2.5-7B"}), parse_cluster("2xrtx4090"), host_ram_bytes=64 * 2**30
    )
    seen = []
    run_search(problem, seen.append)
    front = time_memory_front(seen)
    feasible = [e for e in seen if e.feasible]
    assert front and front <= {e.candidate for e in feasible}
    for e in feasible:
        mine = (e.device_total_bytes, e.time_s)
        others = [(o.device_total_bytes, o.time_s) for o in feasible if o is not e]
        dominated = any(o[0] <= mine[0] and o[1] <= mine[1] and o != mine for o in others)
        if mine not in others:  # exact ties keep one representative
            assert (e.candidate in front) == (not dominated)
        elif dominated:
            assert e.candidate not in front


def test_the_dashboard_finds_the_plan_fit_finds():
    from swiftplan.planner.search.optimize import SearchSettings, search_training

    problem = prepare(
        parse_job({"model": "Qwen/Qwen2.5-7B"}), parse_cluster("rtx4090"), host_ram_bytes=64 * 2**30
    )
    seen = []
    ours = run_search(problem, seen.append)
    fresh = prepare(
        parse_job({"model": "Qwen/Qwen2.5-7B"}), parse_cluster("rtx4090"), host_ram_bytes=64 * 2**30
    )
    theirs = search_training(fresh.evaluator, SearchSettings(objective="time", seed=0))
    assert ours.result.best is not None and theirs.best is not None
    assert ours.result.best.candidate == theirs.best.candidate
    assert len(seen) == len(ours.result.evaluations)  # one report per structure evaluated


def test_run_view_reads_the_metrics_with_the_plans_predictions(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / RUN_FIXTURE, run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 61, "loss": 1.5')  # a line still being written
    view = load_run(str(run))
    loss, speed, memory = view.series
    assert len(loss.values) == 60 and loss.steps[-1] == 60 and not loss.predicted
    plan = load_plan(run / "plan.yaml")
    assert speed.predicted == (("planned", plan.prediction.tokens_per_s),)
    assert memory.predicted[0][1] == pytest.approx(plan.prediction.per_device_bytes["peak_allocated"] / 2**30)
    assert "finished" in view.status and any("measured vs" in note for note in view.notes)
    with pytest.raises(SwiftplanError, match="no plan.yaml"):
        load_run(str(tmp_path))


# --- workers -------------------------------------------------------------------------------------


def _search(fields, *, cancelled=lambda: False, cluster="rtx4090"):
    posted = []
    ticks = iter(range(10_000))
    workers.search(
        posted.append,
        search_id=7,
        fields=fields,
        cluster=parse_cluster(cluster),
        host_ram_bytes=64 * 2**30,
        cancelled=cancelled,
        clock=lambda: next(ticks),  # every candidate is "late enough" to report
    )
    return posted


def test_search_worker_reports_each_candidate_then_the_plans():
    posted = _search({"model": "Qwen/Qwen2.5-7B"})
    progress = [m for m in posted if isinstance(m, msg.SearchProgress)]
    finished = posted[-1]
    assert isinstance(finished, msg.SearchFinished) and finished.outcome.search_id == 7
    assert [p.snapshot.evaluated for p in progress][:3] == [1, 2, 3]
    outcome = finished.outcome
    assert outcome.choices and outcome.family_lines and "LoRA: the winner." in outcome.family_lines
    best = outcome.choices[0]
    assert best.plan.task == "train" and best.memory.device_total_bytes <= best.memory.limit_bytes
    assert sum(p.kind == "best" for p in outcome.snapshot.points) == 1


def test_search_worker_says_what_is_wrong_and_what_does_not_fit():
    failed = _search({"model": "Qwen/Qwen2.5-7B", "seq": "0"})
    assert (
        len(failed) == 1
        and isinstance(failed[0], msg.SearchFailed)
        and "Sequence length" in failed[0].message
    )
    unknown = _search({"model": "no-such-model"})
    assert isinstance(unknown[0], msg.SearchFailed) and "Unknown model" in unknown[0].message
    stopped = _search({"model": "Qwen/Qwen2.5-7B"}, cancelled=lambda: True)
    assert [type(m) for m in stopped] == [msg.SearchStopped]
    too_big = _search({"model": "Qwen/Qwen2.5-72B", "method": "full"})[-1]
    assert isinstance(too_big, msg.SearchFinished) and not too_big.outcome.choices
    assert too_big.outcome.diagnosis and "GiB" in too_big.outcome.diagnosis[0]


def test_serving_search_offers_the_serve_command(tmp_path):
    finished = _search({"model": "Qwen/Qwen2.5-7B", "task": "serve", "context": "8192"}, cluster="L40S")[-1]
    choice = finished.outcome.choices[0]
    posted = []
    workers.save_plan(posted.append, choice.plan, str(tmp_path / "serve.yaml"))
    assert posted[0].command == f"swiftplan serve {tmp_path / 'serve.yaml'}"
    workers.save_plan(posted.append, choice.plan, str(tmp_path / "missing" / "dir" / "serve.yaml"))
    assert isinstance(posted[1], msg.PlanSaveFailed)


# --- the app, driven by the pilot ----------------------------------------------------------------


def test_whole_flow_pick_cluster_fill_form_search_select_save_copy(tmp_path):
    from swiftplan.tui.app import make_app

    target = tmp_path / "my plan.yaml"

    async def flow() -> None:
        app = make_app(probe=no_accelerator, cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert app.hardware is not None and app.hardware.cluster is None  # nothing probed
            await pilot.press("ctrl+r")  # searching without hardware says so
            assert app.query_one("TabbedContent").active == "hardware"
            await pilot.press("1", "c")  # catalog picker
            await pilot.press(*"4090")
            count = app.screen.query_one("#pick-count")
            count.value = "2"
            await pilot.press("enter")
            await settle(pilot)
            assert app.hardware.cluster is not None and app.hardware.cluster.describe().startswith(
                "2 × NVIDIA GeForce RTX 4090"
            )
            await pilot.press("2")
            await pilot.click("#job-model")
            await pilot.press(*"Qwen/Qwen2.5-7", "right")  # accept the catalog suggestion
            await settle(pilot)
            assert app.query_one("#job-model").value == "Qwen/Qwen2.5-7B-Instruct"
            assert "7.62 B params" in str(app.query_one("#job-model-hint").render())
            await pilot.click("#job-seq")
            await pilot.press("end", "ctrl+u", *"1024")
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert app.query_one("TabbedContent").active == "search"
            assert "Done" in str(app.query_one("#search-status").render())
            outcome = app.outcome
            assert outcome is not None and len(outcome.choices) >= 2
            assert outcome.choices[0].plan.workload.seq_len == 1024
            await pilot.press("4", "down")  # select the runner-up
            assert app.selected is outcome.choices[1]
            await pilot.press("s")
            app.screen.query_one("#prompt-path").value = str(target)
            await pilot.press("enter")
            await settle(pilot)
            plan = load_plan(target)
            assert plan == outcome.choices[1].plan
            await pilot.press("y")
            assert app.clipboard == f"swiftplan train '{target}' --data train.jsonl"
            assert app.clipboard in str(app.query_one("#plan-command").render())

    asyncio.run(flow())


def test_restarted_search_ignores_the_old_one_and_cancel_stops_it():
    from swiftplan.tui.app import make_app
    from swiftplan.tui.panes.job import JobPane

    async def flow() -> None:
        app = make_app(gpus="8xa100", cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await search(pilot, model="Qwen/Qwen2.5-0.5B")
            first = app.outcome
            assert first is not None and first.search_id == 1
            stale = msg.SearchFinished(first)  # a late report from search 1 after search 2 started
            # thousands of TPE trials (minutes of work), cancelled long before the end
            await pilot.press("2")
            app.query_one(JobPane).fill(
                {"model": "Qwen/Qwen2.5-7B", "rank": "auto", "trials": "3000", "pareto": "yes"}
            )
            await pilot.press("ctrl+r", "x")
            await settle(pilot)
            app.post_message(stale)
            await settle(pilot)
            assert app.outcome is first and app.search_id == 2  # no plans from the cancelled search
            assert "Cancelled" in str(app.query_one("#search-status").render())
            assert not any(w.is_running for w in app.workers)

    asyncio.run(flow())


def test_run_monitor_opens_a_run_and_follows_it(monkeypatch):
    from swiftplan.tui.app import make_app

    monkeypatch.chdir(FIXTURES)

    async def flow() -> None:
        app = make_app(cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("5")
            await pilot.press(*RUN_FIXTURE, "enter")
            await settle(pilot)
            assert "60/60 steps" in str(app.query_one("#run-status").render())
            await pilot.press("escape", "5", "f")
            assert app._follow is not None
            await pilot.press("f")
            assert app._follow is None
            await pilot.press("escape")
            app.query_one("#run-path").value = "nowhere"
            await pilot.press("5", "enter")
            await settle(pilot)

    asyncio.run(flow())


def test_the_cli_imports_textual_only_inside_dash():
    code = (
        "import sys\nfrom swiftplan.cli import _register_commands\n_register_commands()\n"
        "print('textual' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_readme_links_the_plan_view_screenshot():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    row = next(
        line
        for line in (root / "README.md").read_text().splitlines()
        if line.startswith("| `swiftplan dash`")
    )
    assert "(docs/dash-plan.svg)" in row
    svg = (root / "docs" / "dash-plan.svg").read_text()
    assert svg.startswith("<svg") and "Why&#160;not&#160;the&#160;others" in svg


def test_dash_command_builds_the_app_from_its_flags(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from swiftplan.cli import dash
    from swiftplan.tui.app import DashApp

    started = []
    monkeypatch.setattr(DashApp, "run", lambda self: started.append(self))
    monkeypatch.setattr(dash, "_has_terminal", lambda: True)  # CliRunner has no TTY to give it
    cli = typer.Typer()
    dash.register(cli)
    cli.command("noop")(lambda: None)  # a second command keeps `dash` a subcommand
    result = CliRunner().invoke(cli, ["dash", "--gpus", "rtx4090", "--model", "qwen2.5-7b", "--no-probe"])
    assert result.exit_code == 0, result.output
    (app,) = started
    assert (app._gpus, app._model, app._probe, app.plan_path) == ("rtx4090", "qwen2.5-7b", None, "plan.yaml")
