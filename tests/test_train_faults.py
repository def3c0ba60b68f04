"""Faults during training, on real CPU runs of the tiny Llama: kill -9 in the middle of a save, a truncated,
partial or deleted newest checkpoint, a full disk, a read-only directory, an output "directory" that is a
file, SIGTERM/SIGINT (one process and torchrun). Each either resumes — and then the loss of every step
equals an uninterrupted run's exactly, with no step lost or logged twice — or fails with one line naming
the path and the errno.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from train_support import FIXTURES, TOKENIZER, cli, train_args, write_plan

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train import loop
from swiftplan.executors.train import run_dir as rd

DATA = FIXTURES / "chat.jsonl"
COMMON = ("--lr", "5e-3", "--lr-scheduler", "constant", "--seed", "7")


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return write_plan(tmp_path_factory.mktemp("plan") / "plan.yaml")


@pytest.fixture(scope="module")
def reference(plan, tmp_path_factory):
    """Loss by step of an uninterrupted 12-step run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = cli(*train_args(plan, DATA, run), "--max-steps", "12", *COMMON)
    assert result.exit_code == 0, (result.output, result.exception)
    return [s["loss"] for s in rd.read_jsonl(run / "metrics.jsonl")]


def _train(plan: Path, run: Path, *extra: str) -> object:
    return cli(*train_args(plan, DATA, run), *COMMON, *extra)


def _resume_and_check(plan: Path, run: Path, reference: list[float], *, steps: int, expect_from: int) -> str:
    """Resume to `steps`; the run continued from step `expect_from`, and every step 1..steps is logged once
    with the uninterrupted run's loss (exactly)."""
    result = _train(plan, run, "--resume", "--max-steps", str(steps))
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"steps {expect_from} → {steps} of {steps}" in result.output
    logged = rd.read_jsonl(run / "metrics.jsonl")
    assert [s["step"] for s in logged] == list(range(1, steps + 1))
    assert [s["loss"] for s in logged] == reference[:steps]
    return result.output


def _one_line_error(result: object, *needles: str) -> str:
    """The run failed with a SwiftplanError whose message is one line containing every needle."""
    error = result.exception  # type: ignore[attr-defined]
    assert isinstance(error, SwiftplanError), (result.output, error)  # type: ignore[attr-defined]
    assert "\n" not in error.message and "Traceback" not in result.output  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in error.message, error.message
    return error.message


# --- damaged checkpoints ---------------------------------------------------------------------------


def _three_checkpoints(plan: Path, run: Path) -> None:
    result = _train(plan, run, "--max-steps", "6", "--save-steps", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert rd.latest_checkpoint(run).name == "step-000006"


def test_a_truncated_newest_checkpoint_is_skipped_and_resume_is_exact(plan, reference, tmp_path):
    run = tmp_path / "run"
    _three_checkpoints(plan, run)
    weights = rd.checkpoint_dir(run, 6) / "adapter_model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    out = _resume_and_check(plan, run, reference, steps=8, expect_from=4)
    assert "resuming from step-000004" in out
    assert f"skipped step-000006: adapter_model.safetensors is {size // 2} bytes, {size} were written" in out


def test_a_deleted_newest_checkpoint_is_named_and_the_one_before_used(plan, reference, tmp_path):
    run = tmp_path / "run"
    _three_checkpoints(plan, run)
    shutil.rmtree(rd.checkpoint_dir(run, 6))  # `latest` still names it; metrics.jsonl still has steps 5-6
    out = _resume_and_check(plan, run, reference, steps=8, expect_from=4)
    assert "checkpoints/latest names step-000006, which is gone" in out


def test_a_checkpoint_without_state_json_is_partial(plan, reference, tmp_path):
    run = tmp_path / "run"
    _three_checkpoints(plan, run)
    (rd.checkpoint_dir(run, 6) / "state.json").unlink()
    (rd.checkpoint_dir(run, 4) / "trainer_state.pt").unlink()
    out = _resume_and_check(plan, run, reference, steps=7, expect_from=2)
    assert (
        "skipped step-000006: it has no state.json" in out
        and "skipped step-000004: trainer_state.pt is missing" in out
    )


def test_no_complete_checkpoint_left_is_one_line(plan, tmp_path):
    run = tmp_path / "run"
    result = _train(plan, run, "--max-steps", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    os.truncate(rd.checkpoint_dir(run, 2) / "trainer_state.pt", 10)
    _one_line_error(_train(plan, run, "--resume", "--max-steps", "4"), "no complete checkpoint", "truncated")


def test_save_total_limit_keeps_the_newest_complete_checkpoints(plan, reference, tmp_path):
    run = tmp_path / "run"
    result = _train(plan, run, "--max-steps", "8", "--save-steps", "2", "--save-total-limit", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000006", "step-000008"]
    assert [s["loss"] for s in rd.read_jsonl(run / "metrics.jsonl")] == reference[:8]


def test_save_total_limit_defaults_to_keeping_every_checkpoint(plan, tmp_path):
    run = tmp_path / "run"
    assert _train(plan, run, "--max-steps", "6", "--save-steps", "2").exit_code == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        f"step-00000{i}" for i in (2, 4, 6)
    ]


# --- kill -9 while saving --------------------------------------------------------------------------

_PAUSE_IN_SAVE = """
import os, sys, time
from pathlib import Path
from swiftplan.executors.train import engine, worker

run, step = Path(sys.argv[1]), int(sys.argv[2])
real_save = engine.torch_save

def torch_save(obj, path):  # the save of `step`: write half of trainer_state.pt, say so, wait for the kill
    if path.parent.name == f".tmp-step-{step:06d}" and path.name == "trainer_state.pt":
        with open(path, "wb") as handle:
            handle.write(b"PK" + b"\\0" * 100)
            handle.flush()
            os.fsync(handle.fileno())
        (run / "saving").write_text(str(path))
        time.sleep(120)
    real_save(obj, path)

engine.torch_save = torch_save
worker.main([str(run)])
"""


def _prepared(plan: Path, run: Path, **overrides: object) -> None:
    """The run directory as `swiftplan train` writes it before launching (no training)."""
    from swiftplan.executors.train.prepare import RunRequest, prepare_run, write_run

    request = RunRequest(plan_path=plan, data=DATA, output_dir=run, random_init=True, tokenizer=str(TOKENIZER),
                         device="cpu", overrides={"lr": 5e-3, "lr_scheduler": "constant", "seed": 7, **overrides})  # fmt: skip
    write_run(prepare_run(request), plan)


def _wait_for(condition, process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (code {process.returncode}) before {what}: {process.communicate()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_kill_9_in_the_middle_of_a_save_resumes_from_the_previous_checkpoint(plan, reference, tmp_path):
    run = tmp_path / "run"
    _prepared(plan, run, max_steps=6, save_steps=2)
    process = subprocess.Popen([sys.executable, "-c", _PAUSE_IN_SAVE, str(run), "4"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for((run / "saving").is_file, process, "the save of step 4 started")
    process.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    process.wait(timeout=30)
    assert (rd.checkpoint_tmp_dir(run, 4) / "trainer_state.pt").is_file()  # the half-written save
    assert not rd.checkpoint_dir(run, 4).exists() and rd.latest_checkpoint(run).name == "step-000002"
    assert len(rd.read_jsonl(run / "metrics.jsonl")) == 4  # steps 3-4 were logged, not saved
    _resume_and_check(plan, run, reference, steps=8, expect_from=2)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the next save cleared the leftover


# --- file-system errors ----------------------------------------------------------------------------


def test_enospc_while_writing_a_checkpoint_is_one_line_and_resume_is_exact(
    plan, reference, tmp_path, monkeypatch
):
    """fsync is where NFS and delayed-allocation file systems report a full disk: make it do so in the
    save of step 4, at the OS call."""
    run = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".tmp-step-000004" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = _train(plan, run, "--max-steps", "6", "--save-steps", "2")
    _one_line_error(
        result, "Cannot write the checkpoint", ".tmp-step-000004", "No space left on device (ENOSPC)"
    )
    assert "--resume" in result.exception.hint
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    _resume_and_check(plan, run, reference, steps=6, expect_from=2)


def _dev_full_works() -> bool:
    if not Path("/dev/full").is_char_device():
        return False
    try:
        with open("/dev/full", "a") as handle:
            handle.write("x")
    except OSError as error:
        return error.errno == errno.ENOSPC
    return False


@pytest.mark.skipif(not _dev_full_works(), reason="/dev/full is not the full device here")
def test_enospc_on_the_metrics_log_is_one_line(plan, tmp_path):
    """/dev/full gives a real ENOSPC from the kernel on every write."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    result = _train(plan, run, "--max-steps", "2")
    _one_line_error(
        result, f"Cannot write the metrics log {run / 'metrics.jsonl'}: No space left on device (ENOSPC)"
    )


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A size-limited tmpfs at `path` (root with CAP_SYS_ADMIN only); skips the test otherwise."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cli_subprocess(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}
    env.pop("SWIFTPLAN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "swiftplan", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def _single_error_line(process: subprocess.CompletedProcess, *needles: str) -> str:
    assert process.returncode != 0, process.stdout
    assert "Traceback" not in process.stderr + process.stdout, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, process.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.slow  # the default tier covers ENOSPC through os.fsync above
def test_a_really_full_disk_is_one_line_and_resume_is_exact(plan, reference, tmp_path):
    """RUN/checkpoints on a 384 KiB tmpfs: the first checkpoint fits, the second does not (the kernel's
    ENOSPC, raised inside safetensors' or torch's own writer); after making room, --resume is exact."""
    run = tmp_path / "run"
    with _tmpfs(tmp_path / "small", "384k") as small:
        run.mkdir()
        (run / "checkpoints").symlink_to(small)
        process = _cli_subprocess(
            *train_args(plan, DATA, run), *COMMON, "--max-steps", "6", "--save-steps", "2"
        )
        _single_error_line(process, "Cannot write the checkpoint", "No space left on device (ENOSPC)")
        assert rd.latest_checkpoint(run).name == "step-000002"
        subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
        _resume_and_check(plan, run, reference, steps=6, expect_from=2)


def test_a_read_only_checkpoint_directory_is_one_line(plan, tmp_path):
    """Root ignores permission bits, so as root RUN/checkpoints is a read-only tmpfs (EROFS); otherwise
    it is a directory without write permission (EACCES)."""
    run = tmp_path / "run"
    run.mkdir()
    if os.geteuid() == 0:
        with _tmpfs(tmp_path / "ro", "1m") as ro:
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            (run / "checkpoints").symlink_to(ro)
            process = _cli_subprocess(*train_args(plan, DATA, run), *COMMON, "--max-steps", "2")
            _single_error_line(process, "Cannot write the checkpoint", "Read-only file system (EROFS)")
        return
    (run / "checkpoints").mkdir()
    (run / "checkpoints").chmod(0o555)
    try:
        process = _cli_subprocess(*train_args(plan, DATA, run), *COMMON, "--max-steps", "2")
        _single_error_line(process, "Cannot write the checkpoint", "Permission denied (EACCES)")
    finally:
        (run / "checkpoints").chmod(0o755)


@pytest.mark.parametrize("below", [False, True], ids=["is-a-file", "under-a-file"])
def test_an_output_dir_that_is_a_file_is_one_line(plan, tmp_path, below):
    target = tmp_path / "taken"
    target.write_text("not a directory\n")
    out = target / "run" if below else target
    process = _cli_subprocess(*train_args(plan, DATA, out), *COMMON, "--max-steps", "2")
    _single_error_line(process, f"{target} is a file, not a directory")
    assert target.read_text() == "not a directory\n"


# --- SIGTERM / SIGINT ------------------------------------------------------------------------------


def _interrupt(
    argv: list[str], run: Path, sig: int, *, after_steps: int
) -> tuple[subprocess.CompletedProcess, str]:
    """Start `swiftplan train`, send `sig` once `after_steps` steps are logged; (its result, resume command)."""
    env = {**os.environ, "COLUMNS": "1000"}
    process = subprocess.Popen([sys.executable, "-m", "swiftplan", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip
    _wait_for(
        lambda: len(rd.read_jsonl(run / "metrics.jsonl")) >= after_steps, process, f"{after_steps} steps"
    )
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    resume = [line for line in stderr.splitlines() if "Resume with:" in line]
    assert len(resume) == 1, (stdout, stderr)
    return done, resume[0].split("Resume with:", 1)[1].strip()


def test_sigterm_saves_at_the_step_boundary_and_says_how_to_resume(plan, tmp_path):
    run = tmp_path / "run"
    argv = [*train_args(plan, DATA, run), *COMMON, "--max-steps", "100000", "--save-steps", "100000"]
    done, command = _interrupt(argv, run, signal.SIGTERM, after_steps=2)
    line = _single_error_line(done, "Stopped by SIGTERM at step")
    stopped = int(line.split("at step ")[1].split()[0])
    assert (
        rd.latest_checkpoint(run).name == f"step-{stopped:06d}"
        and f"saved {rd.checkpoint_dir(run, stopped)}" in line
    )
    assert [s["step"] for s in rd.read_jsonl(run / "metrics.jsonl")] == list(range(1, stopped + 1))
    # the printed command resumes it; the losses equal an uninterrupted run of the same length
    args = shlex.split(command)[1:] + ["--max-steps", str(stopped + 2)]
    assert args[:2] == ["train", str(run / "plan.yaml")] and "--resume" in args
    resumed = cli(*args)
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    reference = _train(plan, tmp_path / "reference", "--max-steps", str(stopped + 2))
    assert reference.exit_code == 0
    expected = [s["loss"] for s in rd.read_jsonl(tmp_path / "reference" / "metrics.jsonl")]
    logged = rd.read_jsonl(run / "metrics.jsonl")
    assert [s["step"] for s in logged] == list(range(1, stopped + 3))
    assert [s["loss"] for s in logged] == expected


@pytest.mark.slow
@pytest.mark.integration
def test_sigint_under_torchrun_saves_the_same_step_on_every_rank(tmp_path):
    """Ctrl-C reaches `swiftplan train`; it passes SIGTERM to torchrun, which passes it to both ranks:
    they agree on one step, each writes its RNG state into that checkpoint, nothing hangs."""
    plan = write_plan(tmp_path / "plan.yaml", cluster="2xrtx4090", gpus=2)
    run = tmp_path / "run"
    argv = [*train_args(plan, DATA, run), *COMMON, "--nproc-per-node", "2", "--max-steps", "100000",
            "--save-steps", "100000"]  # fmt: skip
    done, command = _interrupt(argv, run, signal.SIGINT, after_steps=2)
    line = _single_error_line(done, "Stopped by SIGTERM at step")
    stopped = int(line.split("at step ")[1].split()[0])
    checkpoint = rd.latest_checkpoint(run)
    assert checkpoint.name == f"step-{stopped:06d}" and rd.read_state(checkpoint)["world_size"] == 2
    assert (checkpoint / "rng-rank0.pt").is_file() and (checkpoint / "rng-rank1.pt").is_file()
    assert "--nproc-per-node 2" in command
    resumed = _cli_subprocess(*shlex.split(command)[1:], "--max-steps", str(stopped + 1))
    assert resumed.returncode == 0, resumed.stderr
    assert [s["step"] for s in rd.read_jsonl(run / "metrics.jsonl")] == list(range(1, stopped + 2))


@pytest.mark.parametrize(
    ("received", "named"),
    [
        ((signal.SIGTERM, 0), signal.SIGTERM),  # torchrun has signalled rank 0 but not yet rank 1
        ((0, signal.SIGINT), signal.SIGINT),
        ((signal.SIGINT, signal.SIGTERM), signal.SIGTERM),
        ((signal.SIGUSR1, 0), -1),
    ],
)
def test_a_rank_that_missed_the_signal_names_the_one_the_others_got(received, named):
    """The step's all-reduce sums each rank's votes; a rank whose own handler has not run yet reports
    the signal another rank received, so every rank's message is the same."""
    votes = [sum(column) for column in zip(*(loop._stop_votes(int(s)) for s in received), strict=True)]
    assert any(votes)
    assert loop._agreed_signal(votes) == int(named)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not _dev_full_works(), reason="/dev/full is not the full device here")
def test_a_write_error_crosses_torchrun_as_one_line(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", cluster="2xrtx4090", gpus=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    process = _cli_subprocess(
        *train_args(plan, DATA, run), *COMMON, "--nproc-per-node", "2", "--max-steps", "2"
    )
    _single_error_line(
        process, f"Cannot write the metrics log {run / 'metrics.jsonl'}: No space left on device (ENOSPC)"
    )
    assert "ChildFailedError" not in process.stdout  # torchrun's report of it went to train.log only


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo'
    )
    assert rd.truncate_metrics(path, step=4) == 4
    assert [s["step"] for s in rd.read_jsonl(path)] == [1, 2, 3, 4]
    assert textwrap.dedent(path.read_text()).count("\n") == 4
