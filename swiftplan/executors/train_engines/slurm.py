"""Slurm: wrap an engine's rendering in an sbatch script (pure): one task per node, each running that
node's own command (the engine's multi-node launch: ms-swift's NNODES/NODE_RANK torchrun, LLaMA-Factory's
FORCE_TORCHRUN, accelerate's --machine_rank for TRL, torchrun's --node_rank for axolotl), with the
rendezvous address read from the allocation (first host of SLURM_JOB_NODELIST). Config files are written
next to the script, which must sit on a filesystem every node sees."""

from __future__ import annotations

import shlex
from dataclasses import replace

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train_engines.common import RunOptions, TrainRender
from swiftplan.planner.plan import Plan

SCRIPT = "job.sbatch"
_ADDR = "__SWIFTPLAN_MASTER_ADDR__"
"""Placeholder rendered in place of node 0's address, replaced by the shell variable in the script."""


def render_sbatch(
    plan: Plan, engine: str, options: RunOptions, *, job_name: str | None = None, partition: str | None = None,
    time_limit: str | None = None,
) -> TrainRender:  # fmt: skip
    """The engine's rendering for `plan` plus an sbatch script that runs it on the plan's nodes."""
    from swiftplan.executors.train_engines.registry import render_for

    inner = render_for(engine, plan, replace(options, master_addr=_ADDR))
    if inner.rollout is not None:
        raise SwiftplanError("--launcher slurm does not render a rollout server yet; this plan has one.",
                             hint="Use --write-config DIR: rollout.sh starts the server, run.sh the trainer.")  # fmt: skip
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name or f'swiftplan-{engine}'}",
        f"#SBATCH --nodes={plan.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={plan.gpus_per_node}",
        "#SBATCH --exclusive",
        "#SBATCH --output=%x-%j.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    lines += [
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"',
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        *(f"export {k}={_sh(v)}" for k, v in inner.env.items()),
        "",
        "# One task per node; each runs its node's command (the engine's own multi-node launch).",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '",
        "set -euo pipefail",
        'case "$SLURM_NODEID" in',
    ]
    for rank, argv in enumerate(inner.commands):
        node_env = inner.node_env[rank] if inner.node_env else {}
        exports = "".join(f"export {k}={_sh(v)}; " for k, v in node_env.items())
        lines.append(f"  {rank}) {exports}{_sh_argv(argv)} ;;")
    lines += ['  *) echo "unexpected SLURM_NODEID $SLURM_NODEID" >&2; exit 1 ;;', "esac", "'"]
    script = "\n".join(lines) + "\n"
    notes = (*inner.notes, f"sbatch {SCRIPT}: the config files beside it must be on a filesystem all "
             f"{plan.nodes} node(s) see; node 0 is the rendezvous host.")  # fmt: skip
    return TrainRender(engine=engine, commands=(("sbatch", SCRIPT),), files={**inner.files, SCRIPT: script},
                       notes=notes)  # fmt: skip


def _sh(value: str) -> str:
    """A shell word with the rendezvous placeholder turned into $MASTER_ADDR (double quotes: the
    srun body is single-quoted, so no single quotes may appear in it)."""
    return (
        '"'
        + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace(_ADDR, "$MASTER_ADDR")
        + '"'
    )


def _sh_argv(argv: tuple[str, ...]) -> str:
    """A command line for inside the single-quoted srun body."""
    return " ".join(arg if _plain(arg) else _sh(arg) for arg in argv).replace(_ADDR, "$MASTER_ADDR")


def _plain(word: str) -> bool:
    """Safe unquoted (what shlex leaves bare), and no placeholder to expand."""
    return _ADDR not in word and shlex.quote(word) == word
