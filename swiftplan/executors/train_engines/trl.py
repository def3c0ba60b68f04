"""TRL: render a config for `trl sft --config FILE` from a training plan (pure); a preference, reward or
GRPO plan renders `trl dpo|kto|reward|grpo` with the keys of trl_objectives.py.

Keys are TRL 1.16's own (huggingface/trl v1.16.0: trl/trainer/sft_config.py SFTConfig, trl/trainer/
model_config.py ModelConfig, trl/scripts/utils.py ScriptArguments + DatasetMixtureConfig datasets):
model_name_or_path, dtype, attn_implementation, use_peft, lora_r, lora_alpha, lora_dropout,
lora_target_modules, use_dora, load_in_4bit / load_in_8bit, bnb_4bit_quant_type, use_bnb_nested_quant,
max_length, packing, per_device_train_batch_size, gradient_accumulation_steps, gradient_checkpointing,
optim, bf16/fp16, deepspeed, and the TrainingArguments schedule and save cadence. Runtime knobs:
fsdp / fsdp_config (common.hf_fsdp) with bnb_4bit_quant_storage in the compute dtype for a 4-bit base
(model_config.py; under DeepSpeed ZeRO-3 too, which partitions the packed weights so), gradient_checkpointing_kwargs every_n_layers (transformers 5.25.0 trainer.py, the name
TRL's sft_trainer.py reads), activation_offloading (sft_config.py, dpo_config.py, kto_config.py,
reward_config.py: torchtune's OffloadActivations in trl/models/activation_offloading.py; GRPOConfig has
none). TRL has no float8 training option: refused. The SFT loss is always
TRL's fused LM head (trl/trainer/sft_trainer.py:1144 add_fused_lm_head; Liger's fused cross-entropy is
refused there), so a plan counted with another loss is noted, not rendered. On a bitsandbytes base TRL casts
the trainable parameters to bf16 (sft_trainer.py:904-911): a plan that counted fp32 adapters there is noted. `trl sft` launches
through `accelerate launch` (trl/cli/commands/training.py), so the process and node counts are
accelerate's --num_processes / --num_machines / --machine_rank / --main_process_ip / --main_process_port.
"""

from __future__ import annotations

from typing import Any

from swiftplan.executors.train_engines.common import (
    DEFAULT_OPTIONS,
    TORCH_DTYPES,
    RunOptions,
    RuntimeChoices,
    TrainRender,
    every_n_layers,
    hf_deepspeed_config,
    hf_fsdp,
    json_text,
    lora_alpha,
    lora_targets,
    mixed_precision,
    refuse,
    require_engine_can_run,
    runtime_choices,
    with_extra,
    yaml_text,
)
from swiftplan.executors.train_engines.trl_objectives import trl_objective
from swiftplan.executors.train_engines.vision import refuse_vision
from swiftplan.planner.dtypes import BNB_QUANTS
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes

NAME = "trl"
CONFIG = "trl_sft.yaml"
"""The config file of an SFT plan (trl_<command>.yaml for the others)."""
_ATTN = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}


def render_trl(plan: Plan, options: RunOptions = DEFAULT_OPTIONS) -> TrainRender:
    """The trainer's config (and DeepSpeed JSON) and `trl <command> --config` with accelerate's launch
    flags per node; a GRPO plan with server rollouts also gets its `trl vllm-serve` server."""
    setup = require_engine_can_run(NAME, plan)
    refuse_vision(NAME, setup)
    runtime = runtime_choices(NAME, setup, own_fused_loss=True)
    config = _config(plan, setup, options, runtime)
    config.update(_runtime_keys(plan, setup))
    objective = trl_objective(NAME, plan, setup, options, config)
    files: dict[str, str] = {}
    if (ds := hf_deepspeed_config(setup)) is not None:
        files["ds_config.json"] = json_text(ds)
        config["deepspeed"] = "ds_config.json"
    name = f"trl_{objective.command}.yaml"
    files[name] = yaml_text(with_extra(config, options))
    processes = objective.devices.processes * plan.nodes
    commands = []
    for rank in range(plan.nodes):
        argv = ["trl", objective.command, "--config", name]
        if processes > 1:
            argv += ["--num_processes", str(processes)]
        if plan.nodes > 1:
            argv += ["--num_machines", str(plan.nodes), "--machine_rank", str(rank),
                     "--main_process_ip", options.master_addr, "--main_process_port", str(options.master_port)]  # fmt: skip
        commands.append(tuple(argv))
    env = (
        {}
        if objective.devices.trainer_visible is None
        else {"CUDA_VISIBLE_DEVICES": objective.devices.trainer_visible}
    )
    notes = [*_notes(setup), *objective.notes]
    return TrainRender(engine=NAME, commands=tuple(commands), env=env, files=files, notes=tuple(notes),
                       rollout=objective.rollout)  # fmt: skip


def _config(plan: Plan, setup: TrainSetup, options: RunOptions, runtime: RuntimeChoices) -> dict[str, Any]:
    """What every trl trainer reads: model, data, batch, schedule, precision, LoRA and quantization."""
    bf16, fp16 = mixed_precision(setup)
    config: dict[str, Any] = {
        "model_name_or_path": plan.model,
        "dtype": TORCH_DTYPES[setup.precision],
        "attn_implementation": _ATTN[setup.attention],
        "datasets": [{"path": "json", "data_files": options.data, "split": "train"}],
        "output_dir": options.output_dir,
        "max_length": setup.seq_len,
        "packing": options.packing,
        "per_device_train_batch_size": setup.micro_batch,
        "gradient_accumulation_steps": setup.grad_accum,
        "gradient_checkpointing": setup.grad_ckpt,
        "optim": runtime.optim,
        "learning_rate": options.learning_rate(setup),
        "lr_scheduler_type": options.lr_scheduler,
        "warmup_steps": options.warmup_steps,
        "weight_decay": options.weight_decay,
        "max_grad_norm": options.max_grad_norm,
        "num_train_epochs": float(options.epochs),
        "save_steps": options.save_steps,
        "seed": options.seed,
        "bf16": bf16,
        "fp16": fp16,
    }
    if options.max_steps is not None:
        config["max_steps"] = options.max_steps
    if options.save_total_limit is not None:
        config["save_total_limit"] = options.save_total_limit
    if setup.lora is not None and setup.method != "full":
        config.update(use_peft=True, lora_r=setup.lora.rank, lora_alpha=lora_alpha(setup),
                      lora_dropout=setup.lora.dropout, lora_target_modules=lora_targets(setup),
                      use_dora=setup.lora.dora)  # fmt: skip
    if runtime.modules_to_save and setup.method != "full":
        config["lora_modules_to_save"] = list(runtime.modules_to_save)
    if setup.quant in ("nf4", "fp4"):
        config.update(
            load_in_4bit=True, bnb_4bit_quant_type=setup.quant, use_bnb_nested_quant=setup.double_quant
        )
        if setup.parallel.zero == 3:  # ZeRO-3 partitions the packed 4-bit weights only in the compute dtype
            config["bnb_4bit_quant_storage"] = TORCH_DTYPES[setup.precision]
    elif setup.quant == "int8":
        config["load_in_8bit"] = True
    return config


def _runtime_keys(plan: Plan, setup: TrainSetup) -> dict[str, Any]:
    """FSDP, checkpointing every k-th block and activation offloading; float8 refused."""
    knobs = setup.runtime
    keys: dict[str, Any] = {}
    if knobs.float8:
        raise refuse(NAME, "--float8", "TRL's configs have no float8 (torchao Float8Linear) training option")
    if knobs.adapter_dtype == "model" and setup.trains_adapters and setup.quant not in BNB_QUANTS:
        raise refuse(NAME, "--adapter-dtype model", "TRL's configs have no adapter-dtype option: its trainers call "
                     "get_peft_model with peft's fp32 default, and cast the adapters to bf16 only on a 4/8-bit "
                     "bitsandbytes base (trl/trainer/sft_trainer.py:904-911; --adapter-dtype kbit-bf16)")  # fmt: skip
    if (fsdp := hf_fsdp(NAME, setup, gpus_per_node=plan.gpus_per_node, dp=plan.layout.dp)) is not None:
        keys.update(fsdp=fsdp.fsdp, fsdp_config=fsdp.config())
        if setup.quant in ("nf4", "fp4"):  # FSDP shards the packed 4-bit weights only in the compute dtype
            keys["bnb_4bit_quant_storage"] = TORCH_DTYPES[setup.precision]
    if (every := every_n_layers(NAME, setup)) > 1:
        keys["gradient_checkpointing_kwargs"] = {"every_n_layers": every}
    if knobs.activation_offload:
        if setup.objective.kind == "grpo":
            raise refuse(NAME, "--activation-offload with --task grpo", "GRPOConfig has no activation_offloading "
                         "(SFT, DPO, KTO and reward configs do)")  # fmt: skip
        keys["activation_offloading"] = True
    return keys


def _notes(setup: TrainSetup) -> list[str]:
    """TRL's bf16 cast of a bitsandbytes base's adapters, SFT's data format and TRL's own SFT loss, which the
    plan's knobs do not change."""
    notes = []
    planned = state_dtypes(setup).adapters
    if setup.trains_adapters and setup.quant in BNB_QUANTS and planned != "bf16":
        notes.append("TRL casts the trainable parameters of a bitsandbytes base to bf16 (trl/trainer/sft_trainer.py:"
                     f"904-911, and each other trainer): the plan counted {planned} adapters; re-plan with "
                     "--runtime hf (--adapter-dtype kbit-bf16).")  # fmt: skip
    if setup.objective.kind != "sft":
        return notes
    notes.append("the data is read with datasets' json loader; records need a 'messages' or 'prompt'/'completion' "
                 "field (TRL's SFT formats).")  # fmt: skip
    if setup.runtime.loss != "fused_head":
        notes.append(f"the plan counted the {setup.runtime.loss} loss; TRL's SFTTrainer always computes it through "
                     "its fused LM head (trl/trainer/sft_trainer.py add_fused_lm_head): re-plan with --runtime hf "
                     "(--loss fused_head) for TRL's own loss.")  # fmt: skip
    return notes
