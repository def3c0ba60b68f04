"""What the dashboard's workers report. Workers post these to the app; the app updates the panels.

Each message carries finished view data (see `hardware`, `search`, `plans`, `runs`), so a handler only
hands it to a widget. Search messages carry the search id: a restarted search makes earlier reports stale.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from swiftplan.tui.hardware import HardwareView
from swiftplan.tui.measure import MeasureView
from swiftplan.tui.plans import SearchOutcome
from swiftplan.tui.runs import RunView
from swiftplan.tui.search import SearchSnapshot


class HardwareReady(Message):
    """The probe finished, or a catalog cluster was picked."""

    def __init__(self, view: HardwareView) -> None:
        super().__init__()
        self.view = view


class HardwareFailed(Message):
    """The probe failed or the cluster string was not understood."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.message, self.hint = message, hint


class ModelDescribed(Message):
    """One line about what the model field names."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__()
        self.name, self.text = name, text


class SearchProgress(Message):
    """More candidates were evaluated."""

    def __init__(self, snapshot: SearchSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SearchFinished(Message):
    """The study ended: the plans on offer (possibly none) and why."""

    def __init__(self, outcome: SearchOutcome) -> None:
        super().__init__()
        self.outcome = outcome


class SearchFailed(Message):
    """The job could not be searched (bad field, unknown model, impossible pins)."""

    def __init__(self, search_id: int, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.search_id, self.message, self.hint = search_id, message, hint


class SearchStopped(Message):
    """The search was cancelled before it finished."""

    def __init__(self, search_id: int, evaluated: int) -> None:
        super().__init__()
        self.search_id, self.evaluated = search_id, evaluated


class MeasureProgress(Message):
    """The measurement after a search began, or moved to its next candidate."""

    def __init__(self, search_id: int, text: str) -> None:
        super().__init__()
        self.search_id, self.text = search_id, text


class MeasureFinished(Message):
    """The top candidates were measured."""

    def __init__(self, view: MeasureView) -> None:
        super().__init__()
        self.view = view


class MeasureFailed(Message):
    """The measurement stopped: cancelled, or torch failed (the search's plans stand)."""

    def __init__(
        self, search_id: int, message: str, hint: str | None = None, *, cancelled: bool = False
    ) -> None:
        super().__init__()
        self.search_id, self.message, self.hint, self.cancelled = search_id, message, hint, cancelled


class PlanSaved(Message):
    """A plan file was written."""

    def __init__(self, path: str, command: str) -> None:
        super().__init__()
        self.path, self.command = path, command


class PlanSaveFailed(Message):
    """A plan file could not be written."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class RunLoaded(Message):
    """A run directory was read."""

    def __init__(self, view: RunView) -> None:
        super().__init__()
        self.view = view


class RunFailed(Message):
    """A run directory could not be read."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.path, self.message, self.hint = path, message, hint


class DoctorDone(Message):
    """A failed run's log was read."""

    def __init__(self, outcome: Any) -> None:
        super().__init__()
        self.outcome = outcome


class DoctorFailed(Message):
    """The log or the plan could not be read."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.message, self.hint = message, hint
