"""The external training engines by name, and what the CLI does with a rendering: print it, write its
files for the user, or run node 0's command in a directory holding them (streaming its log)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.launch import allocator_env
from swiftplan.executors.train_engines.axolotl import render_axolotl
from swiftplan.executors.train_engines.common import RunOptions, TrainRender
from swiftplan.executors.train_engines.llamafactory import render_llamafactory
from swiftplan.executors.train_engines.megatron_swift import render_megatron_swift
from swiftplan.executors.train_engines.ms_swift import render_ms_swift
from swiftplan.executors.train_engines.trl import render_trl
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

Renderer = Callable[[Plan, RunOptions], TrainRender]
RENDERERS: Mapping[str, Renderer] = {
    "ms-swift": render_ms_swift,
    "megatron-swift": render_megatron_swift,
    "llamafactory": render_llamafactory,
    "trl": render_trl,
    "axolotl": render_axolotl,
}
"""External training engines swiftplan renders, by their name in profiles/engines.json."""
ROLLOUT_SCRIPT = "rollout.sh"
"""--write-config's script for a GRPO plan's rollout server (start it before run.sh)."""


def render_for(engine: str, plan: Plan, options: RunOptions) -> TrainRender:
    """The rendering of `plan` for `engine`; a SwiftplanError naming what it cannot run, whose hint names
    the engines that do render the plan."""
    if engine not in RENDERERS:
        raise SwiftplanError(f"Unknown training engine {engine!r}; swiftplan renders {', '.join(RENDERERS)}.")
    try:
        render = RENDERERS[engine](plan, options)
    except SwiftplanError as error:
        others = engines_rendering(plan, options, exclude=engine)
        if not others:
            raise
        hint = f"{', '.join(others)} can run this plan as planned: swiftplan train PLAN --engine {others[0]}."
        raise SwiftplanError(error.message, hint=hint) from error
    assert isinstance(plan.setup, TrainSetup)
    allocator = allocator_env(plan.setup)  # the allocator the plan was planned with, whichever engine runs it
    return replace(render, env={**render.env, **allocator}) if allocator else render


def engines_rendering(plan: Plan, options: RunOptions, *, exclude: str = "") -> list[str]:
    """The external engines whose renderer accepts `plan` (renderers are pure, so trying them is cheap)."""
    names = []
    for name, renderer in RENDERERS.items():
        if name == exclude:
            continue
        try:
            renderer(plan, options)
        except SwiftplanError:
            continue
        names.append(name)
    return names


def format_render(render: TrainRender) -> str:
    """Shell text for --dry-run: each node's command with its environment, then each file."""
    out: list[str] = []
    if (server := render.rollout) is not None:
        out += ["# rollout server: start it first (the trainer waits for it on port "
                f"{server.port}), on node 0", _shell(server.env, server.argv), "# trainer"]  # fmt: skip
    for rank, argv in enumerate(render.commands):
        env = {**render.env, **(render.node_env[rank] if render.node_env else {})}
        if len(render.commands) > 1:
            out.append(f"# node {rank} of {len(render.commands)}")
        out.append(_shell(env, argv))
    for name, text in render.files.items():
        out += ["", f"# --- {name} ---", text.rstrip("\n")]
    return "\n".join(out) + "\n"


def _shell(env: Mapping[str, str], argv: tuple[str, ...]) -> str:
    """One command line with its environment assignments in front."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def _script(env: Mapping[str, str], argv: tuple[str, ...]) -> str:
    """A bash script that runs `argv` with `env` exported, from its own directory."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return f'#!/usr/bin/env bash\nset -euo pipefail\ncd "$(dirname "$0")"\n{exports}{shlex.join(argv)}\n'


def write_files(render: TrainRender, directory: Path, *, flag: str = "--write-config") -> list[Path]:
    """Write the rendering's config files into `directory` (created), a run.sh per node and, with a
    rollout server, rollout.sh (to start first). A directory that cannot be made or written is refused,
    naming `flag` (the option that gave it), before any file is written."""
    _refuse_unwritable(directory, flag)
    try:
        return _write_all(render, directory)
    except OSError as error:  # a race, or a name inside taken by a directory: still one clear line
        raise SwiftplanError(
            f"Cannot write {flag} {directory}: {error.strerror or error} ({error.filename}).",
            hint=_WRITE_HINT,
        ) from error


_WRITE_HINT = "Give a directory this user can write (it is created if missing)."


def _refuse_unwritable(directory: Path, flag: str) -> None:
    """`directory` exists as a directory (made here if missing) and a file can be created in it."""
    import tempfile

    hint = _WRITE_HINT
    if directory.exists() and not directory.is_dir():
        raise SwiftplanError(f"{flag} {directory} is a file, not a directory.", hint=hint)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SwiftplanError(
            f"Cannot create {flag} {directory}: {existing} is a file, not a directory.", hint=hint
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SwiftplanError(
            f"Cannot create {flag} {directory}: {error.strerror or error}.", hint=hint
        ) from error
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise SwiftplanError(
            f"Cannot write {flag} {directory}: no file can be created there ({error.strerror or error}).",
            hint=hint,
        ) from error


def _write_all(render: TrainRender, directory: Path) -> list[Path]:
    """The config files, then the scripts (executable), into an existing directory."""
    written = []
    for name, text in render.files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    scripts = {}
    if render.rollout is not None:
        scripts[ROLLOUT_SCRIPT] = _script(render.rollout.env, render.rollout.argv)
    for rank, argv in enumerate(render.commands):
        env = {**render.env, **(render.node_env[rank] if render.node_env else {})}
        scripts["run.sh" if len(render.commands) == 1 else f"run_node{rank}.sh"] = _script(env, argv)
    for name, text in scripts.items():
        script = directory / name
        script.write_text(text)
        script.chmod(0o755)
        written.append(script)
    return written


def run_render(
    render: TrainRender, directory: Path, *, node_rank: int = 0, log: Callable[[str], None] = print
) -> int:
    """Write the files into `directory` and run this node's command there, its log streamed; the exit code.
    A rollout server (node 0) is started first, its log in rollout.log, and stopped after the trainer."""
    write_files(render, directory, flag="--output-dir")
    server = None
    if render.rollout is not None and node_rank == 0:
        with (directory / "rollout.log").open("w") as server_log:
            server = _start(render.engine, list(render.rollout.argv), directory, {**os.environ, **render.rollout.env},
                            stdout=server_log)  # fmt: skip
    try:
        env = {**os.environ, **render.env, **(render.node_env[node_rank] if render.node_env else {})}
        process = _start(
            render.engine, list(render.commands[node_rank]), directory, env, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        with (directory / "engine.log").open("w") as handle:
            for line in process.stdout:
                handle.write(line)
                log(line.rstrip("\n"))
        return process.wait()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


def _start(
    engine: str, argv: list[str], directory: Path, env: Mapping[str, str], *, stdout: Any
) -> subprocess.Popen[str]:
    """Start `argv` in `directory` (stderr into stdout), or one SwiftplanError saying how to install it."""
    try:
        return subprocess.Popen(argv, cwd=directory, env=dict(env), stdout=stdout, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)  # fmt: skip
    except OSError as error:
        raise SwiftplanError(f"Cannot start {argv[0]}: {error.strerror or error}.",
                             hint=f"Install {engine} (scripts/engine_envs.sh {engine}) and put it on PATH.") from error  # fmt: skip
