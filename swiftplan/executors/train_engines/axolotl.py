"""axolotl: render a YAML for `axolotl train` from a training plan (pure); preference and GRPO plans add
the rl keys of axolotl_rl.py.

Keys are axolotl 0.19.0's own (axolotl-ai-cloud/axolotl v0.19.0: src/axolotl/utils/schemas/config.py,
model.py, peft.py, training.py): base_model, adapter lora|qlora, lora_r, lora_alpha, lora_dropout,
lora_target_modules / lora_target_linear, peft_use_dora, load_in_4bit / load_in_8bit, bnb_config_kwargs,
sequence_len, sample_packing, micro_batch_size, gradient_accumulation_steps, gradient_checkpointing,
optimizer, bf16/fp16, attn_implementation, deepspeed, tensor_parallel_size, datasets
(path + type). Several GPUs and nodes: `axolotl train CFG --launcher torchrun -- --nproc_per_node ...
--nnodes ... --node_rank ... --rdzv_endpoint ...` (src/axolotl/cli/main.py, cli/utils/train.py).

Runtime knobs (v0.19.0; axolotl-ai-cloud/axolotl@067b021c8b87 has the same keys): FSDP as fsdp_version 1|2
+ fsdp_config offload_params / reshard_after_forward (utils/schemas/config.py, utils/schemas/fsdp.py
FSDPConfig; a 4-bit base is stored in bf16 by axolotl itself, loaders/model.py bnb_4bit_quant_storage);
checkpointing every k-th block as gradient_checkpointing_kwargs every_n_layers, which axolotl hands to the
Trainer for a full fine-tune (core/builders/base.py _configure_gradient_checkpointing; transformers 5.16+
trainer.py pops it); activation offloading as activation_offloading true (TRL's OffloadActivations,
core/trainers/mixins/activation_checkpointing.py; for LoRA it replaces recomputation, loaders/model.py
_apply_activation_checkpointing); float8 as fp8 true, torchao's tensorwise recipe by default
(utils/schemas/fp8.py), with fp8_enable_fsdp_float8_all_gather under FSDP2 (validation.py). Refused: hybrid
sharding (fsdp_config has no sharding strategy, only reshard_after_forward), every k-th block with an
adapter (loaders/model.py calls gradient_checkpointing_enable with the kwargs, which reach
torch.utils.checkpoint).
"""

from __future__ import annotations

from typing import Any

from swiftplan.executors.train_engines.axolotl_rl import axolotl_rl, dataset_type
from swiftplan.executors.train_engines.common import (
    DEFAULT_OPTIONS,
    RunOptions,
    RuntimeChoices,
    TrainRender,
    check_pre_quantized,
    every_n_layers,
    hf_deepspeed_config,
    hf_fsdp,
    json_text,
    lora_alpha,
    mixed_precision,
    refuse,
    require_engine_can_run,
    runtime_choices,
    with_extra,
    yaml_text,
)
from swiftplan.executors.train_engines.vision import refuse_vision
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

NAME = "axolotl"
CONFIG = "axolotl_sft.yaml"
"""The config file of an SFT plan (axolotl_<task>.yaml for the others)."""
_ATTN = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}


def render_axolotl(plan: Plan, options: RunOptions = DEFAULT_OPTIONS) -> TrainRender:
    """The axolotl YAML (and DeepSpeed JSON) and `axolotl train` per node."""
    setup = require_engine_can_run(NAME, plan)
    refuse_vision(NAME, setup)
    notes = check_pre_quantized(NAME, setup)
    runtime = runtime_choices(NAME, setup)
    bf16, fp16 = mixed_precision(setup)
    config: dict[str, Any] = {
        "base_model": plan.model,
        "datasets": [{"path": options.data, "type": dataset_type(setup)}],
        "output_dir": options.output_dir,
        "sequence_len": setup.seq_len,
        "sample_packing": options.packing,
        "micro_batch_size": setup.micro_batch,
        "gradient_accumulation_steps": setup.grad_accum,
        "gradient_checkpointing": setup.grad_ckpt,
        "optimizer": runtime.optim,
        "learning_rate": options.learning_rate(setup),
        "lr_scheduler": options.lr_scheduler,
        "warmup_steps": options.warmup_steps,
        "weight_decay": options.weight_decay,
        "max_grad_norm": options.max_grad_norm,
        "num_epochs": float(options.epochs),
        "save_steps": options.save_steps,
        "seed": options.seed,
        "bf16": bf16,
        "fp16": fp16,
        "attn_implementation": _ATTN[setup.attention],
    }
    if options.max_steps is not None:
        config["max_steps"] = options.max_steps
    if options.save_total_limit is not None:
        config["save_total_limit"] = options.save_total_limit
    config.update(_adapter_and_quant_keys(setup, runtime))
    config.update(_runtime_keys(plan, setup))
    if setup.runtime.activation_offload and setup.trains_adapters and setup.grad_ckpt:
        notes.append("--activation-offload with LoRA: axolotl's TRL offloader replaces recomputation (no block is "
                     "re-run); the plan counted checkpointed blocks offloaded, which holds no less.")  # fmt: skip
    if setup.parallel.tp > 1:
        config["tensor_parallel_size"] = setup.parallel.tp
    name = f"axolotl_{setup.objective.kind}.yaml"
    rl = axolotl_rl(plan, setup, config, name)
    notes += rl.notes
    files: dict[str, str] = {}
    if (ds := hf_deepspeed_config(setup)) is not None:
        files["ds_config.json"] = json_text(ds)
        config["deepspeed"] = "ds_config.json"
    files[name] = yaml_text(with_extra(config, options))
    processes = rl.devices.processes
    commands = []
    for rank in range(plan.nodes):
        argv = ["axolotl", "train", name]
        if processes * plan.nodes > 1:
            argv += ["--launcher", "torchrun", "--", "--nproc_per_node", str(processes)]
            if plan.nodes > 1:
                argv += ["--nnodes", str(plan.nodes), "--node_rank", str(rank),
                         "--rdzv_endpoint", f"{options.master_addr}:{options.master_port}"]  # fmt: skip
        commands.append(tuple(argv))
    visible = rl.devices.trainer_visible
    return TrainRender(engine=NAME, commands=tuple(commands), files=files, notes=tuple(notes), rollout=rl.rollout,
                       env={} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})  # fmt: skip


def _runtime_keys(plan: Plan, setup: TrainSetup) -> dict[str, Any]:
    """FSDP, checkpointing every k-th block, activation offloading and float8."""
    knobs = setup.runtime
    keys: dict[str, Any] = {}
    if (fsdp := hf_fsdp(NAME, setup, gpus_per_node=plan.gpus_per_node, dp=plan.layout.dp)) is not None:
        if knobs.fsdp_sharding == "hybrid_shard":
            raise refuse(NAME, "--fsdp-sharding hybrid_shard", "axolotl's fsdp_config sets reshard_after_forward "
                         "(full_shard or shard_grad_op), not a hybrid sharding strategy")  # fmt: skip
        keys["fsdp_version"] = fsdp.version
        keys["fsdp_config"] = {"offload_params": fsdp.cpu_offload,
                               "reshard_after_forward": knobs.fsdp_sharding == "full_shard",
                               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}  # fmt: skip
    if (every := every_n_layers(NAME, setup)) > 1:
        if setup.method != "full":
            raise refuse(NAME, f"--ckpt-every {every} with --method {setup.method}", "for an adapter axolotl "
                         "calls gradient_checkpointing_enable itself and every_n_layers reaches torch.utils.checkpoint "
                         "(loaders/model.py)")  # fmt: skip
        keys["gradient_checkpointing_kwargs"] = {"every_n_layers": every}
    if knobs.activation_offload:
        keys["activation_offloading"] = True
    if knobs.float8:
        keys["fp8"] = True
        if knobs.fsdp == "fsdp2":
            keys["fp8_enable_fsdp_float8_all_gather"] = True
    return keys


def _adapter_and_quant_keys(setup: TrainSetup, runtime: RuntimeChoices) -> dict[str, Any]:
    """The adapter and its shape, modules trained in full, Liger's loss and the bitsandbytes base."""
    keys: dict[str, Any] = {}
    if setup.lora is not None and setup.method != "full":
        keys.update(adapter="qlora" if setup.method == "qlora" else "lora", lora_r=setup.lora.rank,
                    lora_alpha=lora_alpha(setup), lora_dropout=setup.lora.dropout, peft_use_dora=setup.lora.dora)  # fmt: skip
        # loaders/adapter.py load_lora passes it on as get_peft_model(autocast_adapter_dtype=False)
        if setup.runtime.adapter_dtype == "model":
            keys["peft_autocast_adapter_dtype"] = False
        if setup.lora.all_linear:
            keys["lora_target_linear"] = True
        else:
            keys["lora_target_modules"] = list(setup.lora.targets)
    if runtime.modules_to_save and setup.method != "full":
        keys["lora_modules_to_save"] = list(runtime.modules_to_save)
    if runtime.liger:  # axolotl's Liger integration (src/axolotl/integrations/liger)
        keys["plugins"] = ["axolotl.integrations.liger.LigerPlugin"]
        keys["liger_fused_linear_cross_entropy"] = True
    if setup.quant in ("nf4", "fp4"):
        keys["load_in_4bit"] = True
        keys["bnb_config_kwargs"] = {"bnb_4bit_quant_type": setup.quant,
                                     "bnb_4bit_use_double_quant": setup.double_quant}  # fmt: skip
    elif setup.quant == "int8":
        keys["load_in_8bit"] = True
    return keys
