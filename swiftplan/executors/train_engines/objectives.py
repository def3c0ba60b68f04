"""What a preference, reward-modelling or RL plan adds to an engine's rendering, shared by the renderers:
the data each objective reads, the reference model, beta, and where rollouts run (a vLLM engine inside
each training process, or a vLLM server on GPUs of its own). Each engine spells these in its own terms.

Data. A non-SFT plan trains on TRL's standard records (huggingface/trl v1.16.0 docs/source/
dataset_formats.md, "standard" preference / unpaired preference / prompt-only), which every renderer
maps to its engine's reading:
- paired methods (dpo, orpo, simpo, cpo) and reward modelling (rm): {"prompt", "chosen", "rejected"};
- kto: {"prompt", "completion", "label"} (label true = desirable);
- grpo / ppo: {"prompt"} and whatever columns the reward functions read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from swiftplan.executors.train_engines.common import refuse
from swiftplan.planner.estimate import training_world_size
from swiftplan.planner.objective import Objective, ObjectiveSetup, Reference, resolve_reference
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

BETA: Mapping[Objective, float] = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "cpo": 0.1, "simpo": 2.0}
"""beta rendered for every engine, so they all train the same loss. 0.1: TRL 1.16 DPOConfig.beta and
KTOConfig.beta, ms-swift 4.6 RLHFArguments._set_default (swift/arguments/rlhf_args.py), LLaMA-Factory
0.9.5 pref_beta (hparams/finetuning_args.py:171); ORPO's lambda and CPO's beta (TRL ORPOConfig/CPOConfig
beta = 0.1). SimPO: 2.0, ms-swift's _init_simpo default (rlhf_args.py) from the SimPO paper's range."""
GRPO_KL_BETA = 0.04
"""GRPO's KL coefficient when the plan has a KL penalty (ms-swift 4.6 _init_grpo default 0.04, from
DeepSeekMath, arXiv:2402.03300); without one beta is 0.0, which loads no reference (TRL 1.16
GRPOConfig.beta default 0.0; ms-swift drops ref_model when beta == 0, rlhf_args.py __post_init__)."""
SLEEP_LEVEL = 2
"""vLLM sleep level for a colocated engine under sleep mode: 2 releases weights and KV cache, as TRL 1.16
does (trl/generation/vllm_generation.py:366 llm.sleep(level=2)); ms-swift re-syncs weights at level 2
(swift/rlhf_trainers/rollout_mixin.py:653)."""
ROLLOUT_HOST = "127.0.0.1"
ROLLOUT_PORT = 8000
"""Where the rollout server listens (trl vllm-serve, swift rollout and axolotl vllm-serve default 8000)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainerDevices:
    """How the plan's GPUs on a node split between the trainer and a rollout server."""

    processes: int
    """Training processes per node."""
    trainer_visible: str | None = None
    """CUDA_VISIBLE_DEVICES for the trainer (None: every device)."""
    server_visible: str | None = None
    """CUDA_VISIBLE_DEVICES for the rollout server (None: no server)."""


def is_sft(setup: TrainSetup) -> bool:
    """Supervised fine-tuning: the renderers' original path."""
    return setup.objective.kind == "sft"


def reference_of(setup: TrainSetup) -> Reference:
    """The reference the plan counted: none, adapters-off, model (a frozen copy) or precomputed."""
    return resolve_reference(setup.objective, trains_adapters=setup.trains_adapters)


def grpo_beta(objective: ObjectiveSetup) -> float:
    """GRPO's KL coefficient: GRPO_KL_BETA with a KL penalty, else 0.0 (no reference)."""
    return GRPO_KL_BETA if objective.kl else 0.0


def require_reference(engine: str, setup: TrainSetup, runs: Mapping[Reference, str]) -> Reference:
    """The plan's reference when the engine can run it (`runs`: reference → how); else one refusal
    naming it and the references the engine runs."""
    reference = reference_of(setup)
    if reference not in runs:
        kind = setup.objective.kind
        can = "; ".join(f"{r} ({how})" for r, how in runs.items() if r != "none")
        raise refuse(engine, f"--task {kind} with --reference {reference}", f"for this set-up it runs {can}")
    return reference


def trainer_devices(engine: str, plan: Plan, setup: TrainSetup) -> TrainerDevices:
    """The trainer's processes per node and, with a rollout server, the devices each side sees: the
    server takes the last `rollout.gpus` devices of the node (planner/estimate.py training_world_size
    takes them from the plan's GPUs)."""
    if not setup.objective.server_gpus:
        return TrainerDevices(processes=plan.gpus_per_node)
    if plan.nodes > 1:
        raise refuse(engine, f"--rollout server on {plan.nodes} nodes",
                     "swiftplan renders a rollout server beside the trainer on one node")  # fmt: skip
    training = training_world_size(setup.objective, plan.hardware)
    devices = [str(d) for d in range(plan.gpus_per_node)]
    return TrainerDevices(processes=training, trainer_visible=",".join(devices[:training]),
                          server_visible=",".join(devices[training:]))  # fmt: skip


def data_parallel_ranks(plan: Plan, setup: TrainSetup) -> int:
    """Data-parallel training ranks: the training devices (not a rollout server's) over tp × pp."""
    return training_world_size(setup.objective, plan.hardware) // (setup.parallel.tp * setup.parallel.pp)


def check_generation_batch(engine: str, plan: Plan, setup: TrainSetup) -> None:
    """GRPO groups completions by prompt: the completions of one generation round (micro-batch ×
    accumulation × data-parallel ranks; TRL GRPOConfig generation_batch_size and ms-swift's
    _init_generation_batch_params) must be a whole number of groups of `num_generations`."""
    rollout = setup.objective.rollout
    if setup.objective.kind != "grpo" or rollout is None:
        return
    ranks = data_parallel_ranks(plan, setup)
    batch = setup.micro_batch * setup.grad_accum * ranks
    if batch % rollout.num_generations:
        raise refuse(engine, f"--num-generations {rollout.num_generations}",
                     f"a generation round holds micro-batch {setup.micro_batch} × accumulation {setup.grad_accum} × "
                     f"{ranks} rank(s) = {batch} completions, not a whole number of groups")  # fmt: skip


def data_note(setup: TrainSetup) -> str:
    """What the records of this objective must hold (the module docstring's formats)."""
    kind = setup.objective.kind
    if kind == "kto":
        return (
            "the data is read as unpaired preference records: prompt, completion, label (true = desirable)."
        )
    if kind in ("grpo", "ppo"):
        return "the data is read as prompt records (and the columns its reward reads)."
    return "the data is read as preference records: prompt, chosen, rejected."
