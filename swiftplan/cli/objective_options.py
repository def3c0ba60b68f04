"""--task and the training objective's options (preference, reward and RL): typer types and their parsing, shared by
estimate, verify, fit and size."""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from swiftplan.errors import SwiftplanError
from swiftplan.planner.objective import ObjectiveSetup
from swiftplan.planner.setup import parse_choice

if TYPE_CHECKING:
    from swiftplan.planner.search.objective_variants import ObjectivePins


class JobTask(str, Enum):
    """--task: a training objective (train = sft) or serve."""

    train = "train"
    sft = "sft"
    dpo = "dpo"
    kto = "kto"
    orpo = "orpo"
    simpo = "simpo"
    cpo = "cpo"
    rm = "rm"
    ppo = "ppo"
    grpo = "grpo"
    serve = "serve"


TASK_HELP = "sft (train) | dpo | kto | orpo | simpo | cpo | rm | ppo | grpo | serve"
ReferenceOpt = Annotated[
    str,
    typer.Option(
        "--reference",
        help="dpo/kto/ppo/grpo --kl: auto | model (frozen copy) | adapters-off (LoRA disabled) | precomputed.",
    ),
]
PromptLenOpt = Annotated[
    int | None,
    typer.Option("--prompt-len", help="Prompt tokens per sequence (grpo/ppo: 512; pairs: not scored)."),
]
NumGenerationsOpt = Annotated[
    int, typer.Option("--num-generations", help="grpo/ppo: completions per prompt (TRL default 8).")
]
CompletionLenOpt = Annotated[
    int, typer.Option("--completion-len", help="grpo/ppo: generated tokens per completion (TRL default 512).")
]
RolloutOpt = Annotated[
    str,
    typer.Option("--rollout", help="grpo: colocate (vLLM shares the training GPUs) | server (its own GPUs)."),
]
RolloutEngineOpt = Annotated[
    str | None, typer.Option("--rollout-engine", help="vllm | hf (the trainer's generate(); ppo's default).")
]
RolloutGpusOpt = Annotated[
    int, typer.Option("--rollout-gpus", help="--rollout server: GPUs the server takes.")
]
RolloutMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--rollout-memory",
        help="Colocated vLLM's gpu_memory_utilization (default: the runtime's, TRL 0.3, ms-swift 0.9).",
    ),
]
RolloutSleepOpt = Annotated[
    bool, typer.Option("--rollout-sleep/--no-rollout-sleep", help="vLLM sleep mode between rollouts.")
]
RolloutTpOpt = Annotated[
    int, typer.Option("--rollout-tp", help="Tensor-parallel degree of the rollout engine.")
]
KlOpt = Annotated[
    bool | None,
    typer.Option(
        "--kl/--no-kl", help="grpo: KL penalty to a reference (default: the runtime's; TRL no, ms-swift yes)."
    ),
]

OBJECTIVE_OPTIONS = ("reference", "prompt_len", "num_generations", "completion_len", "rollout", "rollout_engine",
                     "rollout_gpus", "rollout_memory", "rollout_sleep", "rollout_tp", "kl")  # fmt: skip
"""The typer parameter names of the objective's options (shared by estimate, fit, size and verify)."""


def objective_pins(typed: Collection[str]) -> ObjectivePins:
    """Which of the objective's searched choices the user fixed on the command line."""
    from swiftplan.planner.search.objective_variants import ObjectivePins

    return ObjectivePins(reference="reference" in typed, placement="rollout" in typed,
                         memory_fraction="rollout_memory" in typed, sleep="rollout_sleep" in typed,
                         rollout_gpus="rollout_gpus" in typed)  # fmt: skip


def is_serving(task: JobTask | str) -> bool:
    """Whether --task asks for serving."""
    return str(getattr(task, "value", task)) == "serve"


def objective_kind(task: JobTask | str) -> str:
    """The planner's objective for --task (train is sft)."""
    value = str(getattr(task, "value", task))
    return "sft" if value == "train" else value


def build_objective(
    task: JobTask | str, o: dict[str, Any], *, runtime: str, given: Collection[str]
) -> ObjectiveSetup:
    """The objective --task and the objective options describe (`given`: the options the user typed);
    options that do not apply are refused."""
    from swiftplan.planner.objective import (
        OBJECTIVES,
        REFERENCES,
        ROLLOUT_ENGINES,
        ROLLOUT_PLACEMENTS,
        WITH_ROLLOUTS,
        RolloutSetup,
        runtime_kl,
        runtime_rollout_memory,
    )

    kind = objective_kind(task)
    given = [n for n in OBJECTIVE_OPTIONS if n in given]
    if kind == "sft" and given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise SwiftplanError(f"{flags} describe preference and RL jobs; --task {kind} has none.",
                             hint="Pick the method with --task dpo|kto|orpo|simpo|cpo|rm|ppo|grpo.")  # fmt: skip
    rollout_flags = [
        n for n in given if n.startswith("rollout") or n in ("num_generations", "completion_len")
    ]
    if kind not in WITH_ROLLOUTS and rollout_flags:
        flags = ", ".join("--" + n.replace("_", "-") for n in rollout_flags)
        raise SwiftplanError(f"{flags} apply to --task grpo and ppo, not --task {kind}.")
    rollout = None
    if kind in WITH_ROLLOUTS:
        engine = o["rollout_engine"] or ("hf" if kind == "ppo" else "vllm")
        memory = o["rollout_memory"] if o["rollout_memory"] is not None else runtime_rollout_memory(runtime)
        prompt_len = 512 if o["prompt_len"] is None else o["prompt_len"]  # 0 typed is refused, not defaulted
        rollout = RolloutSetup(num_generations=o["num_generations"], prompt_len=prompt_len,
                               completion_len=o["completion_len"],
                               engine=parse_choice("rollout engine", engine, ROLLOUT_ENGINES),
                               placement=parse_choice("rollout placement", o["rollout"], ROLLOUT_PLACEMENTS),
                               gpus=o["rollout_gpus"], memory_fraction=memory, sleep=o["rollout_sleep"],
                               tp=o["rollout_tp"])  # fmt: skip
    kl = o["kl"] if o["kl"] is not None else runtime_kl(kind, runtime)
    return ObjectiveSetup(kind=parse_choice("task", kind, OBJECTIVES),
                          reference=parse_choice("reference", o["reference"], REFERENCES),
                          prompt_len=0 if rollout else (o["prompt_len"] or 0), rollout=rollout, kl=kl)  # fmt: skip


def objective_seq(objective: ObjectiveSetup, seq: int, *, seq_given: bool) -> int:
    """--seq for the objective: a rollout's sequence is its prompt and completion unless --seq was given."""
    if objective.rollout is not None and not seq_given:
        return objective.rollout.seq_len
    return seq


def refuse_objective_for_serving(typed: Collection[str]) -> None:
    """Objective options given with --task serve: one clear error."""
    if given := [n for n in OBJECTIVE_OPTIONS if n in typed]:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        one = len(given) == 1
        raise SwiftplanError(f"{flags} {'describes a training objective' if one else 'describe training objectives'}; "
                             f"{'it does' if one else 'they do'} not apply to --task serve.")  # fmt: skip


def objective_request(options: dict[str, Any]) -> tuple[ObjectiveSetup, int, int]:
    """The training objective, and the global batch and --seq it implies: a rollout's sequences are its
    prompt and completion, and its global batch a whole number of prompts (TRL requires the generation
    batch to divide by --num-generations, trl 1.16 trainer/grpo_config.py:480)."""
    from swiftplan.planner.engines import get_engine
    from swiftplan.planner.objective import whole_prompts

    typed = options.get("typed", set())
    engine = options.get("engine") or (
        "ms-swift" if objective_kind(options["task"]) != "sft" else "swiftplan"
    )
    runtime = options["runtime"] or get_engine(engine, "train").runtime or engine
    training = build_objective(options["task"], options, runtime=runtime, given=typed)
    seq = objective_seq(training, options["seq"], seq_given="seq" in typed)
    batch = options["global_batch"]
    rollout = training.rollout
    if rollout is not None and batch % rollout.num_generations:
        if "global_batch" in typed:
            multiple = whole_prompts(batch, rollout.num_generations)
            raise SwiftplanError(
                f"--global-batch {batch} completions is not a whole number of prompts × --num-generations "
                f"{rollout.num_generations}.",
                hint=f"Use a multiple of {rollout.num_generations}, e.g. {multiple}.",
            )
        batch = whole_prompts(batch, rollout.num_generations)
    return training, batch, seq
