"""The dashboard's blocking work, run in Textual thread workers; each reports through `post` (a Message).

Every function here takes `post` (the app's thread-safe `post_message`) and returns nothing; errors
users can act on become failure messages, never exceptions in the worker. Nothing here touches widgets,
so the functions can be called directly in tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from swiftplan.errors import SwiftplanError
from swiftplan.tui import messages as msg

if TYPE_CHECKING:
    from swiftplan.usecases.measure import MeasureOptions

Post = Callable[[Any], object]

PROGRESS_INTERVAL_S = 0.1
"""Least time between two live reports of a running search (the last report is always sent)."""


def _internal(error: Exception) -> str:
    if os.environ.get("SWIFTPLAN_DEBUG"):
        raise error
    return f"internal error: {type(error).__name__}: {error} (SWIFTPLAN_DEBUG=1 shows the traceback)"


def probe_hardware(post: Post, probe: Callable[[], Any]) -> None:
    """Probe this machine and report the hardware panel."""
    from swiftplan.tui.hardware import from_probe

    try:
        view = from_probe(probe())
    except SwiftplanError as error:
        post(msg.HardwareFailed(error.message, error.hint))
    except Exception as error:  # a driver failing in a way the probe did not foresee
        post(msg.HardwareFailed(f"The probe failed: {_internal(error)}"))
    else:
        post(msg.HardwareReady(view))


def pick_cluster(post: Post, text: str) -> None:
    """Report the hardware panel for a catalog cluster string."""
    from swiftplan.tui.hardware import from_catalog

    try:
        post(msg.HardwareReady(from_catalog(text)))
    except SwiftplanError as error:
        post(msg.HardwareFailed(error.message, error.hint))


def describe_model(post: Post, name: str) -> None:
    """Report one line about the model field (catalog or local file; never the network)."""
    from swiftplan.tui.model_field import describe_model as describe

    try:
        text = describe(name)
    except SwiftplanError as error:
        text = error.message
    post(msg.ModelDescribed(name, text))


def _quiet_optuna() -> None:
    """Optuna logs to stderr (a cancelled trial is a warning with a traceback), which would draw over the
    screen: drop its handler for the dashboard's process."""
    import logging

    import optuna

    optuna.logging.disable_default_handler()
    logger = logging.getLogger("optuna")
    if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
        logger.addHandler(logging.NullHandler())  # else logging's last-resort handler prints to stderr


def search(
    post: Post,
    *,
    search_id: int,
    fields: Mapping[str, str],
    cluster: Any,
    host_ram_bytes: int,
    cancelled: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check the form, run the study with live reports, then report the plans on offer; with the measure switch
    on, run the top candidates for a few real steps after it (`measure`)."""
    from swiftplan.tui.job import parse_job
    from swiftplan.tui.measure import parse_measure
    from swiftplan.tui.plans import outcome
    from swiftplan.tui.search import SearchCancelled, fit_request, prepare, run_search, snapshot

    try:
        job = parse_job(fields)
        # fit --measure's refusals come first, as fit checks them before it resolves the job
        measuring = parse_measure(fields, fit_request(job, host_ram_bytes=host_ram_bytes))
        problem = prepare(job, cluster, host_ram_bytes=host_ram_bytes)
    except SwiftplanError as error:
        post(msg.SearchFailed(search_id, error.message, error.hint))
        return
    except Exception as error:
        post(msg.SearchFailed(search_id, _internal(error)))
        return
    _quiet_optuna()
    evaluations: list[Any] = []
    last_report = clock()

    def on_candidate(evaluation: Any) -> None:
        nonlocal last_report
        if cancelled():
            raise SearchCancelled
        evaluations.append(evaluation)
        if clock() - last_report >= PROGRESS_INTERVAL_S:
            last_report = clock()
            post(msg.SearchProgress(snapshot(search_id, problem, evaluations)))

    try:
        fit = run_search(problem, on_candidate)
        final = snapshot(search_id, problem, evaluations)
        post(msg.SearchProgress(final))
        post(msg.SearchFinished(outcome(search_id, fit, final)))
    except SearchCancelled:
        post(msg.SearchStopped(search_id, len(evaluations)))
        return
    except SwiftplanError as error:
        post(msg.SearchFailed(search_id, error.message, error.hint))
        return
    except Exception as error:
        post(msg.SearchFailed(search_id, _internal(error)))
        return
    if measuring is not None and fit.plan is not None:
        measure(post, search_id=search_id, fit=fit, options=measuring, cancelled=cancelled)


class MeasureCancelled(Exception):
    """Raised from the measurement's progress callback to stop it before its next candidate."""


def measure(
    post: Post, *, search_id: int, fit: Any, options: MeasureOptions, cancelled: Callable[[], bool]
) -> None:
    """Run the finished search's top candidates for a few real steps (the measure use case) and report them;
    a cancel stops it before the next candidate (the one running finishes its steps)."""
    from swiftplan.tui.measure import CPU_NOTE, measure_view
    from swiftplan.usecases.measure import measure_top

    where = f"{options.device}" + (f", {options.layers} layer(s)" if options.layers else "")
    started = f"Measuring the top {options.top_k} on {where}: {options.steps} step(s) each after a warm-up"
    post(msg.MeasureProgress(search_id, started + (f". {CPU_NOTE}" if options.device == "cpu" else "")))
    done = 0

    def progress(text: str) -> None:
        nonlocal done
        if cancelled():
            raise MeasureCancelled
        done += 1
        post(msg.MeasureProgress(search_id, f"{text} (x stops after this candidate)"))

    try:
        evaluations, measured = measure_top(fit, top_k=options.top_k, steps=options.steps, layers=options.layers,
                                            device=options.device, seed=options.seed, progress=progress)  # fmt: skip
        post(msg.MeasureFinished(measure_view(search_id, options, evaluations, measured)))
    except MeasureCancelled:
        post(msg.MeasureFailed(search_id, f"Measurement cancelled after {done} candidate(s) ran (their timings are "
                               "dropped); the search's plans stand.", cancelled=True))  # fmt: skip
    except SwiftplanError as error:
        post(msg.MeasureFailed(search_id, error.message, error.hint))
    except Exception as error:  # torch failing in a way the executor did not foresee
        post(msg.MeasureFailed(search_id, f"The measurement failed: {_internal(error)}"))


def save_plan(post: Post, plan: Any, path: str) -> None:
    """Write a plan file and report the command that runs it."""
    from swiftplan.plan_file import save_plan as write
    from swiftplan.tui.plans import run_command

    try:
        write(plan, path)
    except SwiftplanError as error:
        post(msg.PlanSaveFailed(error.message))
    else:
        post(msg.PlanSaved(path, run_command(plan, path)))


def load_run(post: Post, path: str) -> None:
    """Read a run directory for the monitor."""
    from swiftplan.tui.runs import load_run as read

    try:
        post(msg.RunLoaded(read(path)))
    except SwiftplanError as error:
        post(msg.RunFailed(path, error.message, error.hint))
    except Exception as error:
        post(msg.RunFailed(path, _internal(error)))


def diagnose_log(post: Post, log_path: str, plan_path: str | None) -> None:
    """Read a failed run's log (and its plan) with the doctor use case."""
    from pathlib import Path

    from swiftplan.usecases.doctor import DoctorRequest, diagnose

    try:
        try:
            text = Path(log_path).read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise SwiftplanError(f"Cannot read log {log_path}: {error.strerror or error}.") from error
        post(msg.DoctorDone(diagnose(DoctorRequest(text=text, source=log_path, plan_path=plan_path or None))))
    except SwiftplanError as error:
        post(msg.DoctorFailed(error.message, error.hint))
    except Exception as error:
        post(msg.DoctorFailed(_internal(error)))
