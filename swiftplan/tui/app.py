"""`swiftplan dash`: probe or pick hardware, describe a job, watch the search, pick and save a plan,
and follow a training run against it.

The app holds the state (hardware, the last search's plans, the selected plan) and routes: actions
start workers (`workers.py`), workers post messages (`messages.py`), handlers hand view data to the
panes. `make_app` is the one way to build it, for the CLI and for tests (which inject a fake probe).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Header, Input, TabbedContent, TabPane
from textual.worker import get_current_worker

from swiftplan.tui import messages as msg
from swiftplan.tui import workers
from swiftplan.tui.hardware import HardwareView, catalog_options
from swiftplan.tui.job import DEFAULT_HOST_RAM_BYTES
from swiftplan.tui.measure import MeasureView, plan_line
from swiftplan.tui.model_field import model_choices
from swiftplan.tui.panes.doctor import DoctorPane
from swiftplan.tui.panes.hardware import HardwarePane
from swiftplan.tui.panes.job import JobPane
from swiftplan.tui.panes.plan import PlanPane
from swiftplan.tui.panes.run import RunPane
from swiftplan.tui.panes.search import SearchPane
from swiftplan.tui.plans import PlanChoice, SearchOutcome, run_command
from swiftplan.tui.screens.path_prompt import PathPrompt
from swiftplan.tui.screens.pick_cluster import ClusterPicker

TABS = ("hardware", "job", "search", "plan", "run", "doctor")
FOLLOW_INTERVAL_S = 2.0
"""How often a followed run directory is re-read."""


def _cancelled() -> bool:
    return get_current_worker().is_cancelled


class DashApp(App[None]):
    """The dashboard. Build it with `make_app`."""

    TITLE = "swiftplan dash"
    CSS = """
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    """
    BINDINGS = [
        *(Binding(str(i), f"show_tab('{tab}')", tab.title(), show=False) for i, tab in enumerate(TABS, 1)),
        Binding("ctrl+r", "search", "Search", priority=True),
        Binding("ctrl+s", "save_plan", "Save plan", priority=True, show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    def __init__(
        self,
        *,
        probe: Callable[[], Any] | None,
        gpus: str | None,
        model: str | None,
        run_dir: str | None,
        plan_path: str,
        cursor_blink: bool,
        doctor_log: str | None = None,
        doctor_plan: str | None = None,
    ) -> None:
        super().__init__()
        self._probe, self._gpus, self._model, self._run_dir = probe, gpus, model, run_dir
        self._doctor_log, self._doctor_plan = doctor_log, doctor_plan
        self.plan_path = plan_path
        self.cursor_blink = cursor_blink
        self.hardware: HardwareView | None = None
        self.outcome: SearchOutcome | None = None
        self.selected: PlanChoice | None = None
        self.measured: MeasureView | None = None
        self.measuring = False
        self.saved_path: str | None = None
        self.search_id = 0
        self._follow: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≡")
        with TabbedContent(initial="hardware"):
            with TabPane("1 Hardware", id="hardware"):
                yield HardwarePane()
            with TabPane("2 Job", id="job"):
                yield JobPane(model_choices=model_choices())
            with TabPane("3 Search", id="search"):
                yield SearchPane()
            with TabPane("4 Plan", id="plan"):
                yield PlanPane()
            with TabPane("5 Run", id="run"):
                yield RunPane()
            with TabPane("6 Doctor", id="doctor"):
                yield DoctorPane()
        yield Footer()

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = self.cursor_blink
        if self._model:
            self.query_one(JobPane).fill({"model": self._model})
        if self._gpus and self._gpus.strip().lower() != "auto":
            self._start_pick(self._gpus)
        elif self._probe is not None:
            self.action_probe()
        else:
            self.query_one(HardwarePane).show_busy("No probe: press c to plan for GPUs from the catalog.")
        if self._run_dir:
            self.query_one("#run-path", Input).value = self._run_dir
            self._load_run(self._run_dir)
            self.action_show_tab("run")  # asked for a run: open on its monitor
        elif self._doctor_log:
            self.query_one("#doctor-log", Input).value = self._doctor_log
            self.query_one("#doctor-plan", Input).value = self._doctor_plan or ""
            self._diagnose()
            self.action_show_tab("doctor")
        else:
            self.query_one("#hw-devices").focus()

    # --- navigation ---------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        """Switch tab and focus its main widget."""
        self.query_one(TabbedContent).active = tab
        target = {
            "hardware": "#hw-devices",
            "job": "#job-model",
            "search": "#search-plot",
            "plan": "#plan-table",
            "run": "#run-loss" if self.query_one("#run-path", Input).value else "#run-path",
            "doctor": "#doctor-log",
        }[tab]
        self.query_one(target).focus()

    def action_leave_field(self) -> None:
        """Leave a text field so that the number keys switch tabs again."""
        if isinstance(self.focused, Input):
            self.query_one(TabbedContent).query_one("Tabs").focus()

    # --- hardware -----------------------------------------------------------------------------

    def action_probe(self) -> None:
        """Probe this machine again (injected probe in tests)."""
        if self._probe is None:
            self.notify("No probe in this session; press c to pick GPUs from the catalog.")
            return
        self.query_one(HardwarePane).show_busy("Probing this machine…")
        self.run_worker(
            partial(workers.probe_hardware, self.post_message, self._probe),
            thread=True,
            group="hardware",
            exclusive=True,
        )

    def action_pick_cluster(self) -> None:
        """Open the catalog picker."""

        def picked(text: str | None) -> None:
            if text:
                self._start_pick(text)

        self.push_screen(ClusterPicker(catalog_options(), cursor_blink=self.cursor_blink), picked)

    def _start_pick(self, text: str) -> None:
        self.query_one(HardwarePane).show_busy(f"Looking up {text}…")
        self.run_worker(
            partial(workers.pick_cluster, self.post_message, text),
            thread=True,
            group="hardware",
            exclusive=True,
        )

    def on_hardware_ready(self, message: msg.HardwareReady) -> None:
        self.hardware = message.view
        self.query_one(HardwarePane).show(message.view)
        if message.view.cluster is not None:
            self.sub_title = message.view.cluster.describe()

    def on_hardware_failed(self, message: msg.HardwareFailed) -> None:
        self.query_one(HardwarePane).show_error(message.message, message.hint)
        self.notify(message.message, severity="error")

    # --- job ----------------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "job-model":
            self.run_worker(
                partial(workers.describe_model, self.post_message, event.value),
                thread=True,
                group="model",
                exclusive=True,
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "run-path":
            self._load_run(event.value)
        elif event.input.id in ("doctor-log", "doctor-plan"):
            self._diagnose()
        elif event.input.id and event.input.id.startswith("job-"):
            self.action_search()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "job-go":
            self.action_search()

    def on_model_described(self, message: msg.ModelDescribed) -> None:
        self.query_one(JobPane).show_model_hint(message.name, message.text)

    # --- search -------------------------------------------------------------------------------

    def action_search(self) -> None:
        """Start (or restart) the search for the job in the form."""
        if self.hardware is None or self.hardware.cluster is None:
            self.notify(
                "No hardware to plan for yet: probe (p) or pick GPUs from the catalog (c).",
                severity="warning",
            )
            self.action_show_tab("hardware")
            return
        self.search_id += 1
        self.measured, self.measuring = None, False
        self.query_one(JobPane).show_error(None)
        self.query_one(SearchPane).show_started(self.hardware.cluster.describe())
        self.run_worker(
            partial(
                workers.search,
                self.post_message,
                search_id=self.search_id,
                fields=self.query_one(JobPane).values(),
                cluster=self.hardware.cluster,
                host_ram_bytes=self.hardware.host_ram_bytes or DEFAULT_HOST_RAM_BYTES,
                cancelled=_cancelled,
            ),
            thread=True,
            group="search",
            exclusive=True,
        )
        self.action_show_tab("search")

    def action_cancel_search(self) -> None:
        """Stop the running search (its candidates so far stay on screen)."""
        if any(w.group == "search" and w.is_running for w in self.workers):
            self.workers.cancel_group(self, "search")
            if self.measuring:  # the search is done: only the measurement stops
                self.query_one(SearchPane).show_measuring("Cancelling: the measurement stops once the candidate "
                                                          "running finishes its steps.")  # fmt: skip
            else:
                self.query_one(SearchPane).show_status("Cancelled. r restarts.", "yellow")

    def on_search_progress(self, message: msg.SearchProgress) -> None:
        if message.snapshot.search_id == self.search_id:
            self.query_one(SearchPane).show_progress(message.snapshot)

    def on_search_finished(self, message: msg.SearchFinished) -> None:
        outcome = message.outcome
        if outcome.search_id != self.search_id:
            return
        self.outcome, self.saved_path = outcome, None
        hint = (
            f"{len(outcome.choices)} plan(s): press 4 to see them."
            if outcome.choices
            else "Nothing fits: tab 4 says by how much and what would."
        )
        self.query_one(SearchPane).show_progress(
            outcome.snapshot, done=True, title=outcome.search_line, hint=hint
        )
        self.query_one(PlanPane).show_outcome(outcome)
        self._select(0)
        # A toast only where the search tab (which now says the same) is not in view: over the plot
        # it would hide the x-axis labels.
        if self.query_one(TabbedContent).active != "search":
            self.notify(hint, title="Search done", severity="information" if outcome.choices else "warning")

    def on_search_failed(self, message: msg.SearchFailed) -> None:
        if message.search_id != self.search_id:
            return
        self.query_one(JobPane).show_error(message.message, message.hint)
        self.query_one(SearchPane).show_status(f"Search failed: {message.message}", "bold red")
        self.notify(message.message, severity="error")
        self.action_show_tab("job")

    def on_search_stopped(self, message: msg.SearchStopped) -> None:
        if message.search_id == self.search_id:
            self.query_one(SearchPane).show_status(
                f"Cancelled after {message.evaluated} candidates. r restarts.", "yellow"
            )

    def on_measure_progress(self, message: msg.MeasureProgress) -> None:
        if message.search_id == self.search_id:
            self.measuring = True
            self.query_one(SearchPane).show_measuring(message.text)

    def on_measure_finished(self, message: msg.MeasureFinished) -> None:
        if message.view.search_id == self.search_id:
            self.measured, self.measuring = message.view, False
            self.query_one(SearchPane).show_measured(message.view)
            self.query_one(PlanPane).show_measured(
                plan_line(self.measured, self.selected.summary if self.selected else "")
            )

    def on_measure_failed(self, message: msg.MeasureFailed) -> None:
        if message.search_id == self.search_id:
            self.measuring = False
            self.query_one(SearchPane).show_measure_stopped(
                message.message, message.hint, cancelled=message.cancelled
            )
            if not message.cancelled:
                self.notify(message.message, title="Measurement failed", severity="error")

    # --- plan ---------------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "plan-table":
            self._select(event.cursor_row)

    def _select(self, index: int) -> None:
        choices = self.outcome.choices if self.outcome else ()
        self.selected = choices[index] if 0 <= index < len(choices) else None
        self.saved_path = None
        command = run_command(self.selected.plan, self.plan_path) if self.selected else ""
        self.query_one(PlanPane).show_choice(self.selected, command)
        self.query_one(PlanPane).show_measured(
            plan_line(self.measured, self.selected.summary if self.selected else "")
        )

    def action_save_plan(self) -> None:
        """Ask where to save the selected plan, then write it."""
        if self.selected is None:
            self.notify("No plan selected: run a search first (ctrl+r).", severity="warning")
            return
        plan = self.selected.plan

        def chosen(path: str | None) -> None:
            if path:
                self.run_worker(
                    partial(workers.save_plan, self.post_message, plan, path), thread=True, group="save"
                )

        self.push_screen(
            PathPrompt("Save the plan file to:", self.plan_path, cursor_blink=self.cursor_blink), chosen
        )

    def on_plan_saved(self, message: msg.PlanSaved) -> None:
        self.plan_path = self.saved_path = message.path
        self.query_one(PlanPane).show_command(message.command, saved=message.path)
        self.notify(f"wrote {message.path}", title="Plan saved")

    def on_plan_save_failed(self, message: msg.PlanSaveFailed) -> None:
        self.notify(message.message, severity="error")

    def action_copy_command(self) -> None:
        """Copy the command that runs the selected plan to the clipboard."""
        if self.selected is None:
            self.notify("No plan selected.", severity="warning")
            return
        command = run_command(self.selected.plan, self.saved_path or self.plan_path)
        self.copy_to_clipboard(command)
        self.notify(command, title="Copied")

    # --- run ----------------------------------------------------------------------------------

    def _load_run(self, path: str) -> None:
        if path.strip():
            self.run_worker(
                partial(workers.load_run, self.post_message, path.strip()),
                thread=True,
                group="run",
                exclusive=True,
            )

    def action_follow_run(self) -> None:
        """Re-read the run directory every few seconds (again to stop)."""
        if self._follow is not None:
            self._follow.stop()
            self._follow = None
        else:
            self._follow = self.set_interval(
                FOLLOW_INTERVAL_S, lambda: self._load_run(self.query_one("#run-path", Input).value)
            )
            self._load_run(self.query_one("#run-path", Input).value)
        self.query_one(RunPane).show_following(self._follow is not None)

    def on_run_loaded(self, message: msg.RunLoaded) -> None:
        self.query_one(RunPane).show(message.view)

    def on_run_failed(self, message: msg.RunFailed) -> None:
        self.query_one(RunPane).show_error(message.message, message.hint)

    # --- doctor -------------------------------------------------------------------------------

    def _diagnose(self) -> None:
        log = self.query_one("#doctor-log", Input).value.strip()
        plan = self.query_one("#doctor-plan", Input).value.strip() or None
        if log:
            self.run_worker(
                partial(workers.diagnose_log, self.post_message, log, plan),
                thread=True,
                group="doctor",
                exclusive=True,
            )

    def on_doctor_done(self, message: msg.DoctorDone) -> None:
        self.query_one(DoctorPane).show(message.outcome)

    def on_doctor_failed(self, message: msg.DoctorFailed) -> None:
        self.query_one(DoctorPane).show_error(message.message, message.hint)


def make_app(
    *,
    probe: Callable[[], Any] | None = None,
    gpus: str | None = None,
    model: str | None = None,
    run_dir: str | None = None,
    plan_path: str = "plan.yaml",
    cursor_blink: bool = True,
    doctor_log: str | None = None,
    doctor_plan: str | None = None,
) -> DashApp:
    """The dashboard.

    probe: called (in a worker) to read this machine, returning a `ProbeResult`; None skips probing
    (the CLI passes the real probe, tests a fake). gpus: a catalog cluster to start with instead
    ('auto' means probe). model: prefill the job form. run_dir: open this run in the monitor.
    plan_path: where the save dialog proposes to write. cursor_blink: off for snapshot tests.
    doctor_log (and doctor_plan): open this failed run's log in the doctor tab.
    """
    return DashApp(
        probe=probe, gpus=gpus, model=model, run_dir=run_dir, plan_path=plan_path, cursor_blink=cursor_blink,
        doctor_log=doctor_log, doctor_plan=doctor_plan,
    )  # fmt: skip
