"""ms-swift and Megatron-SWIFT: the flags a preference, reward-modelling or RL plan adds to `swift rlhf` /
`megatron rlhf` (pure), and the `swift rollout` server of a GRPO plan with server rollouts.

Argument names and defaults are ms-swift 4.6.0's own (modelscope/ms-swift@3602360a5623):
swift/arguments/rlhf_args.py RLHFArguments (rlhf_type dpo|orpo|simpo|kto|cpo|rm|ppo|grpo, ref_model —
full fine-tuning only, "LoRA training does not require a ref_model" — beta, max_completion_length),
swift/rlhf_trainers/args_mixin.py (use_vllm, vllm_mode colocate|server, vllm_gpu_memory_utilization,
vllm_tensor_parallel_size, vllm_max_model_len, sleep_level 0|1|2, vllm_server_host/port, num_generations in
GRPOArguments), swift/arguments/base_args/data_args.py (columns), swift/arguments/deploy_args.py
RolloutArguments (`swift rollout`: vllm_data_parallel_size, port); Megatron-SWIFT:
swift/megatron/arguments/rlhf_args.py (rlhf_type dpo|kto|grpo|gkd|rm) and megatron_args.py
RLHFMegatronArgumentsMixin (beta, use_vllm — must be true for Megatron GRPO — vllm_mode, sleep_level).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from swiftplan.executors.train_engines.common import RolloutServer, RunOptions, refuse
from swiftplan.executors.train_engines.objectives import (
    BETA,
    ROLLOUT_HOST,
    ROLLOUT_PORT,
    SLEEP_LEVEL,
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

PAIR_COLUMNS = json.dumps({"chosen": "response", "rejected": "rejected_response"})
"""ms-swift reads a pair as messages + rejected_response (swift/dataset/preprocessor/core.py
RowPreprocessor.standard_keys); `prompt` is already one of its query columns (ResponsePreprocessor)."""
_PACKING = ("dpo", "kto", "grpo")
"""rlhf_type values that pack (RLHFArguments._check_padding_free: grpo, dpo, kto, gkd)."""


@dataclass(kw_only=True, slots=True)
class RlhfArgs:
    """What the objective adds to the command (built up by rlhf_args)."""

    devices: TrainerDevices
    """Training processes per node and the devices the trainer and a rollout server see."""
    argv: list[str] = field(default_factory=list)
    """Flags after the model and data flags."""
    max_length: int | None = None
    """--max_length when it is not the plan's seq_len (GRPO: the prompt, the rollout encodes unbounded)."""
    rollout: RolloutServer | None = None
    """The `swift rollout` server of a plan with server rollouts."""
    notes: list[str] = field(default_factory=list)
    """What the user must know (data format, a reward model to add)."""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def rlhf_args(
    engine: str, plan: Plan, setup: TrainSetup, options: RunOptions, *, megatron: bool = False
) -> RlhfArgs:
    """The rlhf flags of `setup`'s objective for ms-swift (or Megatron-SWIFT with `megatron`)."""
    objective = setup.objective
    kind = objective.kind
    if options.packing and kind not in _PACKING:
        raise refuse(engine, f"--packing with --task {kind}", "it packs dpo, kto and grpo batches only "
                     "(swift/arguments/rlhf_args.py _check_padding_free)")  # fmt: skip
    runs: dict[Reference, str] = {"none": "no reference"}
    if setup.trains_adapters:
        runs["adapters-off"] = "the policy with its LoRA adapters disabled"
    else:
        runs["model"] = "a frozen copy loaded from --ref_model"
    reference = require_reference(engine, setup, runs)
    argv = ["--rlhf_type", kind]
    if reference == "model":
        argv += ["--ref_model", plan.model]
    if kind in BETA:
        argv += ["--beta", f"{BETA[kind]:g}"]
    if kind in ("dpo", "orpo", "simpo", "cpo", "rm"):
        argv += ["--columns", PAIR_COLUMNS]
    out = RlhfArgs(devices=trainer_devices(engine, plan, setup), argv=argv, notes=[data_note(setup)])
    if kind == "grpo":
        _grpo(engine, plan, setup, out, megatron=megatron)
    elif kind == "ppo":
        _ppo(engine, setup, out)
    return out


def _grpo(engine: str, plan: Plan, setup: TrainSetup, out: RlhfArgs, *, megatron: bool) -> None:
    """GRPO's rollout flags, and the `swift rollout` server when the plan has one."""
    objective, rollout = setup.objective, setup.objective.rollout
    assert rollout is not None
    check_generation_batch(engine, plan, setup)
    if megatron and rollout.engine != "vllm":
        raise refuse(engine, "--rollout-engine hf", "Megatron GRPO generates with vLLM only (use_vllm must be "
                     "true: swift/megatron/arguments/megatron_args.py _init_grpo)")  # fmt: skip
    if megatron and not objective.kl and not setup.trains_adapters:
        raise refuse(engine, "GRPO without --kl on full fine-tuning", "Megatron-SWIFT loads a frozen reference copy "
                     "for full fine-tuning whatever beta is (swift/megatron/trainers/rlhf_mixin.py prepare_model)")  # fmt: skip
    out.argv += ["--beta", f"{grpo_beta(objective):g}", "--num_generations", str(rollout.num_generations),
                 "--max_completion_length", str(rollout.completion_len), "--use_vllm", _flag(rollout.engine == "vllm")]  # fmt: skip
    out.max_length = rollout.prompt_len  # it bounds the prompt: the rollout encodes with max_length unset
    if rollout.engine != "vllm":
        return
    out.argv += ["--vllm_mode", rollout.placement]
    if rollout.placement == "colocate":
        out.argv += ["--vllm_gpu_memory_utilization", f"{rollout.memory_fraction:g}",
                     "--vllm_tensor_parallel_size", str(rollout.tp), "--vllm_max_model_len", str(rollout.seq_len),
                     "--sleep_level", str(SLEEP_LEVEL if rollout.sleep else 0)]  # fmt: skip
        return
    out.argv += ["--vllm_server_host", ROLLOUT_HOST, "--vllm_server_port", str(ROLLOUT_PORT)]
    assert out.devices.server_visible is not None
    server = ["swift", "rollout", "--model", plan.model, "--vllm_tensor_parallel_size", str(rollout.tp),
              "--vllm_data_parallel_size", str(rollout.gpus // rollout.tp),
              "--vllm_gpu_memory_utilization", f"{rollout.memory_fraction:g}",
              "--vllm_max_model_len", str(rollout.seq_len), "--port", str(ROLLOUT_PORT)]  # fmt: skip
    out.rollout = RolloutServer(
        argv=tuple(server), port=ROLLOUT_PORT, env={"CUDA_VISIBLE_DEVICES": out.devices.server_visible}
    )


def _ppo(engine: str, setup: TrainSetup, out: RlhfArgs) -> None:
    """PPO generates with the policy's generate() and needs a reward model the plan does not name."""
    rollout = setup.objective.rollout
    assert rollout is not None
    if rollout.engine != "hf":
        raise refuse(engine, "--task ppo with --rollout-engine vllm", "its PPO generates with the policy's "
                     "generate(); vLLM serves grpo and gkd only (swift/arguments/rlhf_args.py rlhf_support_vllm_types)")  # fmt: skip
    out.argv += ["--max_completion_length", str(rollout.completion_len)]
    out.max_length = rollout.prompt_len  # the query PPO generates from
    out.notes.append(
        "PPO needs a reward model: add --engine-option reward_model=PATH (RLHFArguments.reward_model)."
    )
