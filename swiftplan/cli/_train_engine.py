"""`swiftplan train PLAN --engine NAME` for the external engines (ms-swift, Megatron-SWIFT, LLaMA-Factory, TRL,
axolotl): render the plan into the engine's own command and config files, then print them (--dry-run),
write them (--write-config DIR), or write them into the run directory and run this node's command there
(a GRPO plan's rollout server first), and write run_report.json from the engine's logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from swiftplan.cli._output import console, print_json
from swiftplan.errors import SwiftplanError

TRAIN_ENGINE_NAMES = ("swiftplan", "ms-swift", "megatron-swift", "llamafactory", "trl", "axolotl")
"""--engine values: swiftplan's own loop, then the engines it renders for."""


def plan_engine(plan_path: Path) -> str:
    """The engine the plan file was made for (`swiftplan train PLAN` without --engine runs it there)."""
    from swiftplan.plan_file import load_plan

    plan = load_plan(plan_path)
    return plan.engine if plan.task == "train" else "swiftplan"  # a serving plan: the loop says why not


def check_own_loop_objective(plan_path: Path) -> None:
    """swiftplan's own loop trains SFT only: a preference, reward or RL plan is refused in one sentence
    naming the engines that run it."""
    from swiftplan.executors.train_engines.common import RunOptions
    from swiftplan.executors.train_engines.registry import engines_rendering
    from swiftplan.plan_file import load_plan
    from swiftplan.planner.setup import TrainSetup

    plan = load_plan(plan_path)
    if not isinstance(plan.setup, TrainSetup) or (kind := plan.setup.objective.kind) == "sft":
        return
    engines = engines_rendering(plan, RunOptions())
    where = (f"{', '.join(engines)} run it: swiftplan train {plan_path} --engine {engines[0]}" if engines
             else "no engine swiftplan launches runs this plan as planned")  # fmt: skip
    raise SwiftplanError(f"swiftplan's own training loop trains SFT only, and this is a {kind} plan; {where}.",
                         hint=f"Or re-plan for one of them: swiftplan fit MODEL --task {kind} --engine ENGINE.")  # fmt: skip


def check_engine_options(engine: str, o: dict[str, Any]) -> None:
    """Options that only mean something for an external engine, refused for swiftplan's own loop."""
    external = [flag for flag, given in (("--write-config", o["write_config"] is not None),
                                         ("--engine-option", bool(o["engine_option"])),
                                         ("--launcher slurm", o["launcher"] == "slurm")) if given]  # fmt: skip
    if engine == "swiftplan" and external:
        raise SwiftplanError(f"{external[0]} is for external engines; this plan runs on swiftplan's own loop.",
                             hint="Add --engine ms-swift|megatron-swift|llamafactory|trl|axolotl.")  # fmt: skip
    own = [flag for flag, given in (("--random-init", o["random_init"]), ("--tokenizer", o["tokenizer"] is not None),
                                    ("--device", o["device"] != "auto"), ("--nproc-per-node", o["nproc_per_node"] is not None),
                                    ("--nnodes", o["nnodes"] is not None), ("--resume", o["resume"]),
                                    ("--preflight", o["preflight"]), ("--record", o["record"])) if given]  # fmt: skip
    if engine != "swiftplan" and own:
        _refuse_own_loop_flags(engine, own, o)


_OWN_LOOP_ONLY = {
    "--random-init": "the engine loads the plan's model weights; it has no random-initialisation option swiftplan passes",
    "--tokenizer": "the engine loads the tokenizer that comes with the plan's model",
    "--device": "the engine runs on the plan's accelerators",
    "--nproc-per-node": "the engine launches the plan's layout itself",
    "--nnodes": "the engine launches the plan's layout itself",
    "--resume": "the engine has its own resume option",
    "--preflight": "the longest-batch preflight runs swiftplan's own loop",
    "--record": "the measurement recorded is swiftplan's own loop's run report",
}
"""Why each option of swiftplan's own loop changes nothing for an external engine."""


def _refuse_own_loop_flags(engine: str, flags: list[str], o: dict[str, Any]) -> None:
    """One message for the loop-only options typed beside an external engine, each with why it is ignored."""
    shown = {"--device": f"--device {o['device']}", "--tokenizer": f"--tokenizer {o['tokenizer']}",
             "--nproc-per-node": f"--nproc-per-node {o['nproc_per_node']}", "--nnodes": f"--nnodes {o['nnodes']}"}  # fmt: skip
    listed = "; ".join(f"{shown.get(flag, flag)} ({_OWN_LOOP_ONLY[flag]})" for flag in flags)
    one = len(flags) == 1
    hint = f"Leave {'it' if one else 'them'} out to run on {engine}, or run swiftplan's own loop: --engine swiftplan."
    if "--resume" in flags:
        own = (
            "KEY=VALUE (its own resume option)"
            if engine == "megatron-swift"
            else "resume_from_checkpoint=DIR"
        )
        hint += f" To resume with {engine}, pass --engine-option {own}."
    raise SwiftplanError(
        f"{'This option is' if one else 'These options are'} for swiftplan's own training loop, and "
        f"--engine {engine} would ignore {'it' if one else 'them'}: {listed}.",
        hint=hint,
    )


def train_external(engine: str, plan_path: Path, o: dict[str, Any]) -> None:
    """Render the plan for `engine` with the run options in `o` (train_command's locals) and act on it."""
    from swiftplan.executors.model_source import check_plan_model
    from swiftplan.executors.train_engines.common import RunOptions
    from swiftplan.executors.train_engines.registry import format_render, render_for, write_files
    from swiftplan.plan_file import load_plan

    plan = load_plan(plan_path)
    check_plan_model(plan, plan_path)
    output_dir = o["output_dir"] or Path("runs") / f"{engine}-{Path(plan.model).name}"
    given = {
        "data": None if o["data"] is None else str(Path(o["data"]).resolve()),
        "output_dir": str(Path(output_dir).resolve()) if not o["dry_run"] else str(output_dir),
        "lr": o["lr"], "epochs": o["epochs"], "max_steps": o["max_steps"], "save_steps": o["save_steps"],
        "save_total_limit": o["save_total_limit"], "lr_scheduler": o["lr_scheduler"],
        "warmup_steps": o["warmup_steps"], "weight_decay": o["weight_decay"], "max_grad_norm": o["max_grad_norm"],
        "seed": o["seed"], "packing": o["packing"] or None, "master_addr": o["master_addr"],
        "master_port": o["master_port"],
    }  # fmt: skip
    extra = []
    for item in o["engine_option"] or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SwiftplanError(
                f"--engine-option {item!r} is not KEY=VALUE.", hint="e.g. --engine-option template=qwen"
            )
        extra.append((key.strip(), value))
    options = RunOptions(**{k: v for k, v in given.items() if v is not None}, extra=tuple(extra))
    if o["launcher"] == "slurm":
        from swiftplan.executors.train_engines.slurm import render_sbatch

        render = render_sbatch(plan, engine, options)
    else:
        render = render_for(engine, plan, options)
    if o["write_config"] is not None:
        written = write_files(render, Path(o["write_config"]))
        console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)
    if o["dry_run"]:
        if o["as_json"]:
            server = render.rollout
            print_json({"engine": render.engine, "commands": [list(c) for c in render.commands],
                        "env": dict(render.env), "node_env": [dict(e) for e in render.node_env],
                        "files": dict(render.files), "notes": list(render.notes),
                        "rollout": None if server is None else {"argv": list(server.argv), "env": dict(server.env),
                                                                "port": server.port}})  # fmt: skip
        else:
            sys.stdout.write(f"# plan: {plan.model} on {plan.hardware.describe()} for {engine}\n")
            sys.stdout.write(format_render(render))
            for note in render.notes:
                console.print(f"[yellow]note:[/] {note}")
        return
    if o["write_config"] is not None:
        return
    _run_and_report(engine, plan, render, Path(options.output_dir), node_rank=o["node_rank"])


def _run_and_report(engine: str, plan: Any, render: Any, output_dir: Path, *, node_rank: int) -> None:
    """Run this node's command (its log streamed) and write run_report.json; exit with its code."""
    from swiftplan.executors.train_engines.registry import run_render

    for note in render.notes:
        console.print(f"[yellow]note:[/] {note}")
    code = run_render(render, output_dir, node_rank=node_rank,
                      log=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))  # fmt: skip
    summary: dict[str, Any] = {
        "engine": engine,
        "exit_code": code,
        "run_dir": str(output_dir),
        "log": "engine.log",
    }
    if node_rank == 0:
        from swiftplan.executors.train_engines.report import engine_report

        summary = engine_report(engine, plan, output_dir, exit_code=code)
        console.print(f"steps {summary['steps']}; loss {summary['loss']['first']} → {summary['loss']['last']}; "
                      f"{summary['measured']['step_time_s']} s/step measured on this machine", highlight=False)  # fmt: skip
    (output_dir / "run_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"run report: {output_dir / 'run_report.json'}", highlight=False)
    if code != 0:
        raise typer.Exit(code)
