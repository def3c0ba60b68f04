"""The external training engines by name, and what the CLI does with a rendering: print it, write its
files for the user, or run node 0's command in a directory holding them (streaming its log)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train_engines.axolotl import render_axolotl
from swiftplan.executors.train_engines.common import RunOptions, TrainRender
from swiftplan.executors.train_engines.llamafactory import render_llamafactory
from swiftplan.executors.train_engines.megatron_swift import render_megatron_swift
from swiftplan.executors.train_engines.ms_swift import render_ms_swift
from swiftplan.executors.train_engines.trl import render_trl
from swiftplan.planner.plan import Plan

Renderer = Callable[[Plan, RunOptions], TrainRender]
RENDERERS: Mapping[str, Renderer] = {
    "ms-swift": render_ms_swift,
    "megatron-swift": render_megatron_swift,
    "llamafactory": render_llamafactory,
    "trl": render_trl,
    "axolotl": render_axolotl,
}
"""External training engines swiftplan renders, by their name in profiles/engines.json."""


def render_for(engine: str, plan: Plan, options: RunOptions) -> TrainRender:
    """The rendering of `plan` for `engine` (a SwiftplanError naming what it cannot run)."""
    if engine not in RENDERERS:
        raise SwiftplanError(f"Unknown training engine {engine!r}; swiftplan renders {', '.join(RENDERERS)}.")
    return RENDERERS[engine](plan, options)


def format_render(render: TrainRender) -> str:
    """Shell text for --dry-run: each node's command with its environment, then each file."""
    out: list[str] = []
    for rank, argv in enumerate(render.commands):
        env = {**render.env, **(render.node_env[rank] if render.node_env else {})}
        if len(render.commands) > 1:
            out.append(f"# node {rank} of {len(render.commands)}")
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        out.append((prefix + " " if prefix else "") + shlex.join(argv))
    for name, text in render.files.items():
        out += ["", f"# --- {name} ---", text.rstrip("\n")]
    return "\n".join(out) + "\n"


def write_files(render: TrainRender, directory: Path) -> list[Path]:
    """Write the rendering's config files into `directory` (created) and a run.sh per node."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render.files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    for rank, argv in enumerate(render.commands):
        env = {**render.env, **(render.node_env[rank] if render.node_env else {})}
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        name = "run.sh" if len(render.commands) == 1 else f"run_node{rank}.sh"
        script = directory / name
        script.write_text(
            f'#!/usr/bin/env bash\nset -euo pipefail\ncd "$(dirname "$0")"\n{exports}{shlex.join(argv)}\n'
        )
        script.chmod(0o755)
        written.append(script)
    return written


def run_render(
    render: TrainRender, directory: Path, *, node_rank: int = 0, log: Callable[[str], None] = print
) -> int:
    """Write the files into `directory` and run this node's command there, its log streamed; the exit code."""
    write_files(render, directory)
    env = {**os.environ, **render.env, **(render.node_env[node_rank] if render.node_env else {})}
    argv = list(render.commands[node_rank])
    try:
        process = subprocess.Popen(argv, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)  # fmt: skip
    except OSError as error:
        raise SwiftplanError(f"Cannot start {argv[0]}: {error.strerror or error}.",
                             hint=f"Install {render.engine} (scripts/engine_envs.sh {render.engine}) and put it on PATH.") from error  # fmt: skip
    assert process.stdout is not None
    with (directory / "engine.log").open("w") as handle:
        for line in process.stdout:
            handle.write(line)
            log(line.rstrip("\n"))
    return process.wait()
