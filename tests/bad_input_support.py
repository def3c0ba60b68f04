"""Driving the real `swiftplan` command line with bad input, bounded in time and memory.

`run_cli` runs the console entry point in this process (fast: no interpreter start-up per case) under a
wall-clock alarm; `run_cli_bounded` starts a subprocess with an address-space limit for the cases that
could exhaust memory. Both return what a user would see: the exit code and the combined output.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

CASE_TIME_LIMIT_S = 30
"""No bad input may take longer than this to be refused (the planner answers in about a second)."""
CASE_MEMORY_LIMIT_BYTES = 6 * 2**30
"""Address-space cap for subprocess cases: torch and friends map ~2-3 GiB of virtual memory at import."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CliResult:
    """What the user saw."""

    exit_code: int
    """The process exit status (0 success, 1 no plan, 2 bad input)."""
    output: str
    """stdout and stderr together."""


class CaseTookTooLong(Exception):
    """Raised by the alarm when one case runs past CASE_TIME_LIMIT_S."""


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTookTooLong(f"no answer within {CASE_TIME_LIMIT_S} s")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """`swiftplan ARGS` through the console entry point, in this process. An exception that escapes
    `main()` (a traceback for the user) propagates and fails the calling test."""
    from swiftplan.cli import main

    out = io.StringIO()
    old_argv, old_cwd, old_env = sys.argv, Path.cwd(), dict(os.environ)
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    code = 0
    try:
        sys.argv = ["swiftplan", *args]
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env or {})
        os.environ.setdefault("COLUMNS", "100")
        signal.alarm(CASE_TIME_LIMIT_S)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                if isinstance(done.code, str):
                    out.write(done.code)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        sys.argv = old_argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return CliResult(exit_code=code, output=out.getvalue())


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_MEMORY_LIMIT_BYTES, CASE_MEMORY_LIMIT_BYTES))


def run_cli_bounded(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """`swiftplan ARGS` in a subprocess capped at CASE_MEMORY_LIMIT_BYTES and CASE_TIME_LIMIT_S; a case
    that hangs or runs out of memory fails with what it printed so far."""
    done = subprocess.run(
        [sys.executable, "-m", "swiftplan", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
        capture_output=True,
        text=True,
        timeout=CASE_TIME_LIMIT_S,
        preexec_fn=_limit_memory,
    )
    return CliResult(exit_code=done.returncode, output=done.stdout + done.stderr)


def assert_refused(result: CliResult, *fragments: str) -> None:
    """Exit 2 with one clear message: no traceback, and every fragment (the bad value, what is valid)
    present, case-insensitively."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output}"
    text = " ".join(result.output.split()).lower()
    for fragment in fragments:
        assert " ".join(fragment.split()).lower() in text, f"{fragment!r} missing from:\n{result.output}"


def write_tiny_plans(where: Path) -> Path:
    """`where` with serve.yaml (the tiny serving config, context 128) and train.yaml (the tiny Llama,
    LoRA at 64 tokens), both for one H100: plans that load without a hub or a GPU."""
    from swiftplan.plan_file import save_plan
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.setup import ServeSetup, TrainSetup
    from swiftplan.usecases.estimate import plan_for_setup

    cluster = parse_cluster("h100")
    serve = plan_for_setup(str(FIXTURES / "serve_tiny_config.json"), cluster, ServeSetup(context=128))
    save_plan(serve, where / "serve.yaml")
    train = plan_for_setup(str(FIXTURES / "train" / "tiny_llama"), cluster, TrainSetup(seq_len=64))
    save_plan(train, where / "train.yaml")
    return where
