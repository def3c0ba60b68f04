"""axolotl: the keys a preference or GRPO plan adds to the axolotl YAML (pure), and the `axolotl vllm-serve`
server of a GRPO plan with server rollouts.

Names are axolotl 0.19.0's own (axolotl-ai-cloud/axolotl v0.19.0): src/axolotl/utils/schemas/enums.py
RLType (rl: dpo|ipo|orpo|kto|simpo|grpo|…), utils/schemas/config.py (rl_beta, orpo_alpha — "passed to
beta in ORPOConfig" — precompute_ref_log_probs), utils/schemas/trl.py TRLConfig
(beta, num_generations, max_completion_length, generation_batch_size — TRL's: micro-batch × ranks ×
accumulation — use_vllm, vllm_mode, vllm_enable_sleep_mode, vllm_server_host, vllm_server_port), utils/schemas/vllm.py VllmConfig (gpu_memory_utilization, tensor_parallel_size,
data_parallel_size, max_model_len, port: what the colocated engine and `axolotl vllm-serve` read,
core/trainers/grpo/__init__.py set_training_args_kwargs), utils/schemas/datasets.py UserDefinedDPOType /
UserDefinedKTOType (field_prompt, field_chosen, field_rejected, field_completion, field_label; read by
prompt_strategies/dpo/user_defined.py and kto/user_defined.py). The reference (src/axolotl/train.py
setup_reference_model): an adapter run passes none, so TRL disables the adapters; a full run of every
rl but ORPO loads a second copy of the model — also for SimPO and for GRPO at beta 0, whose trainers
never use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swiftplan.executors.train_engines.common import RolloutServer, refuse
from swiftplan.executors.train_engines.objectives import (
    BETA,
    ROLLOUT_HOST,
    ROLLOUT_PORT,
    TrainerDevices,
    check_generation_batch,
    data_note,
    data_parallel_ranks,
    grpo_beta,
    require_reference,
    trainer_devices,
)
from swiftplan.planner.objective import Reference
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

NAME = "axolotl"


@dataclass(kw_only=True, slots=True)
class AxolotlRl:
    """What the objective adds besides its keys: the trainer's devices, a rollout server, notes."""

    devices: TrainerDevices
    """Training processes per node and the devices the trainer and a rollout server see."""
    rollout: RolloutServer | None = None
    """The `axolotl vllm-serve` server of a plan with server rollouts."""
    notes: list[str] = field(default_factory=list)
    """What the user must know."""


def dataset_type(setup: TrainSetup) -> Any:
    """The datasets[].type reading the plan's records: alpaca for SFT, user-defined field names for the
    preference records, axolotl's chat_template for ORPO (its only ORPO strategy), none for GRPO."""
    kind = setup.objective.kind
    if kind == "sft":
        return "alpaca"
    if kind in ("dpo", "simpo"):
        return {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}
    if kind == "kto":
        return {"field_prompt": "prompt", "field_completion": "completion", "field_label": "label"}
    if kind == "orpo":
        return "chat_template"
    return None


def axolotl_rl(plan: Plan, setup: TrainSetup, config: dict[str, Any], name: str) -> AxolotlRl:
    """Set the objective's keys in `config` (the SFT config, written as `name`) and return what comes
    with them."""
    kind = setup.objective.kind
    out = AxolotlRl(devices=trainer_devices(NAME, plan, setup))
    if kind == "sft":
        return out
    config["rl"] = kind
    if config["datasets"][0]["type"] is None:
        del config["datasets"][0]["type"]
    out.notes.append(data_note(setup))
    if kind == "orpo":
        out.notes.append(
            "axolotl's ORPO reads chosen/rejected as message lists (prompt_strategies/orpo/chat_template.py)."
        )
        config["orpo_alpha"] = BETA[kind]
        return out
    if kind in BETA:
        config["rl_beta"] = BETA[kind]
    if kind == "kto":
        if config["sample_packing"]:
            raise refuse(NAME, "--packing with --task kto", "sample_packing is not supported with kto "
                         "(utils/schemas/validation.py check_kto_config)")  # fmt: skip
        config["remove_unused_columns"] = False  # required for kto by check_kto_config
    if (kind == "simpo" or (kind == "grpo" and not setup.objective.kl)) and not setup.trains_adapters:
        raise refuse(NAME, f"full fine-tuning with --task {kind}" + ("" if kind == "simpo" else " without --kl"),
                     "axolotl loads a second copy of the model that its trainer never uses (src/axolotl/train.py "
                     "setup_reference_model), which the plan does not count")  # fmt: skip
    reference = require_reference(NAME, setup, _references(setup))
    if reference == "precomputed":
        config["precompute_ref_log_probs"] = True
    if kind == "grpo":
        _grpo(plan, setup, config, out, name)
    return out


def _references(setup: TrainSetup) -> dict[Reference, str]:
    """What axolotl runs as the reference for this set-up. An adapter run cannot get a frozen copy:
    train.py reads rl_adapter_ref_model, but it is no field of the config schema, so validate_config
    (utils/config/__init__.py, model_dump of the schema) drops it."""
    runs: dict[Reference, str] = {"none": "no reference"}
    if setup.trains_adapters:
        runs["adapters-off"] = "the policy with its adapters disabled"
    else:
        runs["model"] = "a second copy of the model"
    if setup.objective.kind == "dpo":
        runs["precomputed"] = "precompute_ref_log_probs"
    return runs


def _grpo(plan: Plan, setup: TrainSetup, config: dict[str, Any], out: AxolotlRl, name: str) -> None:
    """GRPO's trl/vllm sections and the `axolotl vllm-serve` server."""
    rollout = setup.objective.rollout
    assert rollout is not None
    check_generation_batch(NAME, plan, setup)
    if setup.micro_batch * setup.grad_accum < rollout.num_generations:
        raise refuse(NAME, f"--num-generations {rollout.num_generations}", "axolotl wants a full group of completions "
                     f"per rank each step, and micro-batch {setup.micro_batch} × accumulation {setup.grad_accum} is fewer "
                     "(utils/schemas/validation.py check_grpo_batch_size_divisibility)")  # fmt: skip
    ranks = data_parallel_ranks(plan, setup)
    trl: dict[str, Any] = {"beta": grpo_beta(setup.objective), "num_generations": rollout.num_generations,
                           "max_completion_length": rollout.completion_len, "use_vllm": rollout.engine == "vllm",
                           "generation_batch_size": setup.micro_batch * setup.grad_accum * ranks}  # fmt: skip
    out.notes.append(
        "GRPO needs reward functions: set trl.reward_funcs and the dataset's transform in the YAML."
    )
    config["trl"] = trl
    if rollout.engine != "vllm":
        return
    trl["vllm_mode"] = rollout.placement
    vllm: dict[str, Any] = {"gpu_memory_utilization": rollout.memory_fraction, "tensor_parallel_size": rollout.tp,
                            "max_model_len": rollout.seq_len}  # fmt: skip
    config["vllm"] = vllm
    if rollout.placement == "colocate":
        trl["vllm_enable_sleep_mode"] = rollout.sleep
        return
    trl.update(vllm_server_host=ROLLOUT_HOST, vllm_server_port=ROLLOUT_PORT)
    vllm.update(data_parallel_size=rollout.gpus // rollout.tp, host=ROLLOUT_HOST, port=ROLLOUT_PORT)
    assert out.devices.server_visible is not None
    out.rollout = RolloutServer(argv=("axolotl", "vllm-serve", name), port=ROLLOUT_PORT,
                                env={"CUDA_VISIBLE_DEVICES": out.devices.server_visible})  # fmt: skip
