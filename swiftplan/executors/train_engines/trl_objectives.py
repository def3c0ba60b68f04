"""TRL: what a preference, reward-modelling or GRPO plan changes in the `trl` config (pure), and the
`trl vllm-serve` server of a GRPO plan with server rollouts.

Names and defaults are TRL 1.16.0's own (huggingface/trl v1.16.0): the CLI commands in
trl/cli/commands/__init__.py get_commands (sft, dpo, kto, reward, grpo, rloo, distillation, vllm-serve;
no orpo, cpo or ppo), trl/trainer/dpo_config.py DPOConfig (beta 0.1, max_length 1024,
precompute_ref_log_probs; no packing), kto_config.py KTOConfig (beta, max_length,
precompute_ref_log_probs), reward_config.py RewardConfig (max_length; a sequence-classification model, so
LoRA needs model_config.py lora_task_type SEQ_CLS), grpo_config.py GRPOConfig (num_generations 8,
max_completion_length 512, beta 0.0, use_vllm, vllm_mode colocate|server, vllm_gpu_memory_utilization 0.3,
vllm_tensor_parallel_size, vllm_max_model_length, vllm_enable_sleep_mode, vllm_server_host/port) and
trl/scripts/vllm_serve.py ScriptArguments (model, tensor_parallel_size, data_parallel_size — above 1
"for dense models is not supported/useful and will error out" — gpu_memory_utilization, max_model_len,
port). The reference: DPOTrainer/KTOTrainer disable a PEFT model's adapters, else load a frozen copy of
the model, unless the log-probs are precomputed (trl/trainer/dpo_trainer.py:908-927); GRPOTrainer loads
none at beta 0 (grpo_trainer.py:984-1003).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swiftplan.executors.train_engines.common import RolloutServer, RunOptions, refuse
from swiftplan.executors.train_engines.objectives import (
    BETA,
    ROLLOUT_HOST,
    ROLLOUT_PORT,
    TrainerDevices,
    check_generation_batch,
    data_note,
    grpo_beta,
    require_reference,
    trainer_devices,
)
from swiftplan.planner.objective import Reference
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

COMMANDS = {"sft": "sft", "dpo": "dpo", "kto": "kto", "rm": "reward", "grpo": "grpo"}
"""The trl command that trains each objective."""


@dataclass(kw_only=True, slots=True)
class TrlObjective:
    """The trl command for the plan's objective and what comes with it."""

    command: str
    """trl sft|dpo|kto|reward|grpo."""
    devices: TrainerDevices
    """Training processes per node and the devices the trainer and a rollout server see."""
    rollout: RolloutServer | None = None
    """The `trl vllm-serve` server of a plan with server rollouts."""
    notes: list[str] = field(default_factory=list)
    """What the user must know."""


def trl_objective(
    engine: str, plan: Plan, setup: TrainSetup, options: RunOptions, config: dict[str, Any]
) -> TrlObjective:
    """Set the objective's keys in `config` (the SFT config) and return its command and server."""
    kind = setup.objective.kind
    out = TrlObjective(command=COMMANDS[kind], devices=trainer_devices(engine, plan, setup))
    if kind == "sft":
        return out
    if options.packing:
        raise refuse(
            engine,
            f"--packing with --task {kind}",
            f"trl {out.command} has no packing (only SFTConfig packs)",
        )
    del config["packing"]
    out.notes.append(data_note(setup))
    if kind in ("dpo", "kto"):
        reference = require_reference(engine, setup, _references(setup))
        config["beta"] = BETA[kind]
        if reference == "precomputed":
            config["precompute_ref_log_probs"] = True
    elif kind == "rm" and config.get("use_peft"):
        config["lora_task_type"] = "SEQ_CLS"  # the reward model is AutoModelForSequenceClassification
    elif kind == "grpo":
        _grpo(engine, plan, setup, config, out)
    return out


def _references(setup: TrainSetup) -> dict[Reference, str]:
    """What trl dpo/kto (and grpo with a KL penalty) run as the reference for this set-up."""
    runs: dict[Reference, str] = {"precomputed": "precompute_ref_log_probs"}
    if setup.trains_adapters:
        runs["adapters-off"] = "the PEFT model with its adapters disabled"
    else:
        runs["model"] = "a frozen copy of model_name_or_path"
    if setup.objective.kind == "grpo":
        del runs["precomputed"]
        runs["none"] = "beta 0"
    return runs


def _grpo(engine: str, plan: Plan, setup: TrainSetup, config: dict[str, Any], out: TrlObjective) -> None:
    """GRPO's generation keys (the prompt is not truncated: no max_length) and the vLLM server."""
    objective, rollout = setup.objective, setup.objective.rollout
    assert rollout is not None
    check_generation_batch(engine, plan, setup)
    require_reference(engine, setup, _references(setup))
    del config["max_length"]
    config.update(num_generations=rollout.num_generations, max_completion_length=rollout.completion_len,
                  beta=grpo_beta(objective), use_vllm=rollout.engine == "vllm")  # fmt: skip
    out.notes.append("GRPO needs reward functions: --engine-option reward_funcs=[...] (trl/scripts/grpo.py).")
    if rollout.engine != "vllm":
        return
    config["vllm_mode"] = rollout.placement
    if rollout.placement == "colocate":
        config.update(vllm_gpu_memory_utilization=rollout.memory_fraction, vllm_tensor_parallel_size=rollout.tp,
                      vllm_max_model_length=rollout.seq_len, vllm_enable_sleep_mode=rollout.sleep)  # fmt: skip
        return
    if rollout.gpus != rollout.tp:
        raise refuse(engine, f"--rollout-gpus {rollout.gpus} with --rollout-tp {rollout.tp}", "trl vllm-serve runs a "
                     "dense model with data_parallel_size 1 (trl/scripts/vllm_serve.py): give the server tp = its GPUs")  # fmt: skip
    config.update(vllm_server_host=ROLLOUT_HOST, vllm_server_port=ROLLOUT_PORT)
    assert out.devices.server_visible is not None
    server = ("trl", "vllm-serve", "--model", plan.model, "--tensor_parallel_size", str(rollout.tp),
              "--data_parallel_size", "1", "--gpu_memory_utilization", f"{rollout.memory_fraction:g}",
              "--max_model_len", str(rollout.seq_len), "--port", str(ROLLOUT_PORT))  # fmt: skip
    out.rollout = RolloutServer(argv=server, env={"CUDA_VISIBLE_DEVICES": out.devices.server_visible},
                                port=ROLLOUT_PORT)  # fmt: skip
