"""`swiftplan train --resume` keeps the settings a run started with (its train_args.json): a typed --tokenizer,
--random-init or --device that differs from the run's is refused in one message naming the run's value and the
one given, as a changed --lr already was; typing the run's own values resumes. Real CPU runs of the tiny Llama."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_support import FIXTURES, TOKENIZER, cli, train_args, write_plan

from swiftplan.errors import SwiftplanError

DATA = FIXTURES / "chat.jsonl"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(plan, run directory) of a 2-step CPU run of the tiny Llama (random init, the fixture tokenizer), saved
    at its end."""
    where = tmp_path_factory.mktemp("resume")
    plan = write_plan(where / "plan.yaml")
    run = where / "run"
    result = cli(*train_args(plan, DATA, run), "--max-steps", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    return plan, run


@pytest.fixture
def run_copy(started: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the started run, to resume or edit."""
    plan, run = started
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return plan, copy


def _resume(plan: Path, run: Path, *extra: str) -> object:
    return cli("train", str(plan), "--output-dir", str(run), "--resume", *extra)


def _refused(result: object, *fragments: str) -> str:
    error = result.exception  # type: ignore[attr-defined]
    assert isinstance(error, SwiftplanError), (result.output, error)  # type: ignore[attr-defined]
    assert "\n" not in error.message
    for fragment in fragments:
        assert fragment in error.message, error.message
    assert error.hint
    return error.message


def _edit_args(run: Path, **changes: object) -> None:
    path = run / "train_args.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_another_tokenizer_is_refused_naming_both(run_copy: tuple[Path, Path], tmp_path: Path) -> None:
    plan, run = run_copy
    other = tmp_path / "other_tokenizer"
    shutil.copytree(TOKENIZER, other)
    message = _refused(_resume(plan, run, "--device", "cpu", "--tokenizer", str(other)),
                       "A resumed run keeps its settings; cannot change --tokenizer",
                       f"the run's: {TOKENIZER}", f"given: {other}")  # fmt: skip
    assert "--device" not in message and "--random-init" not in message


def test_a_tokenizer_on_a_run_that_used_the_models_own_is_refused(run_copy: tuple[Path, Path]) -> None:
    plan, run = run_copy
    _edit_args(run, tokenizer=None)
    _refused(
        _resume(plan, run, "--tokenizer", str(TOKENIZER)), "cannot change --tokenizer", "the model's own"
    )


def test_random_init_on_a_run_that_loaded_weights_is_refused(run_copy: tuple[Path, Path]) -> None:
    plan, run = run_copy
    _edit_args(run, random_init=False)
    _refused(_resume(plan, run, "--random-init"), "cannot change --random-init", "the model's own weights")


def test_another_device_is_refused_before_any_device_is_probed(
    run_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run trained on the CPU; --device cuda (the plan's own device, so check_request lets it through) is
    refused as a change of the run, without looking for a GPU."""
    import swiftplan.executors.probe.torch_backend as torch_backend

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("no device may be probed before the resumed run's settings are checked")

    monkeypatch.setattr(torch_backend, "probe_torch", refuse)
    plan, run = run_copy
    _refused(
        _resume(plan, run, "--device", "cuda"), "cannot change --device", "the run's: cpu", "given: cuda"
    )


def test_every_change_is_named_in_one_message(run_copy: tuple[Path, Path], tmp_path: Path) -> None:
    plan, run = run_copy
    _edit_args(run, random_init=False)
    message = _refused(_resume(plan, run, "--device", "cuda", "--random-init", "--tokenizer", "org/other", "--lr", "0.5"),
                       "--lr (the run's: 0.0002; given: 0.5)", "--tokenizer", "--random-init", "--device")  # fmt: skip
    assert message.startswith("A resumed run keeps its settings; cannot change ")


def test_the_runs_own_settings_resume(run_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same tokenizer (spelled as another path to the same directory), --random-init and --device cpu
    resume; so does --device auto, which resumes on the run's device."""
    plan, run = run_copy
    monkeypatch.chdir(TOKENIZER.parent)
    same = f"./{TOKENIZER.name}/"
    result = _resume(plan, run, "--tokenizer", same, "--random-init", "--device", "cpu", "--max-steps", "3")
    assert result.exit_code == 0, (result.output, result.exception)  # type: ignore[attr-defined]
    assert "steps 2 → 3 of 3" in result.output  # type: ignore[attr-defined]
    result = _resume(plan, run, "--max-steps", "4")
    assert result.exit_code == 0, (result.output, result.exception)  # type: ignore[attr-defined]
    assert "steps 3 → 4 of 4" in result.output  # type: ignore[attr-defined]


def test_auto_resumes_on_the_runs_device_or_says_it_is_missing(
    run_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--device auto keeps the run's device: a run that trained on CUDA is not continued on whatever this machine
    has (here the CPU); it says which device the run needs."""
    import swiftplan.executors.probe.torch_backend as torch_backend

    monkeypatch.setattr(
        torch_backend, "probe_torch", lambda: type("Report", (), {"devices": (), "backend": "cuda"})()
    )
    plan, run = run_copy
    _edit_args(run, device="cuda", device_name="NVIDIA GeForce RTX 4090")
    message = _refused(_resume(plan, run), "trained on cuda (NVIDIA GeForce RTX 4090)", "no cuda device",
                       "keeps its device")  # fmt: skip
    assert str(run) in message
