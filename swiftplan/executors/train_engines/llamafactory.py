"""LLaMA-Factory: render a YAML for `llamafactory-cli train` from a training plan (pure); preference,
reward and PPO plans set stage dpo|kto|rm|ppo with pref_loss sigmoid|orpo|simpo and the reference.

Keys are LLaMA-Factory 0.9.5's own (hiyouga/LLaMA-Factory v0.9.5: src/llamafactory/hparams/
model_args.py, data_args.py, finetuning_args.py, training_args.py; examples/train_lora/*.yaml,
examples/train_qlora/*.yaml): finetuning_type lora|full, lora_rank, lora_alpha, lora_dropout,
lora_target (comma list or all), use_dora, quantization_bit 4|8 + quantization_method bnb +
quantization_type nf4|fp4 + double_quantization, bf16/fp16, pure_bf16 (bf16 weights without autocast;
refused with ZeRO-3 by LLaMA-Factory's parser.py), optim, per_device_train_batch_size,
gradient_accumulation_steps, disable_gradient_checkpointing, deepspeed (JSON path), cutoff_len, packing,
flash_attn auto|disabled|sdpa|fa2. The data file is registered in a dataset_info.json next to the YAML
(dataset_dir). Several GPUs / nodes: FORCE_TORCHRUN=1 with NNODES, NODE_RANK, MASTER_ADDR,
MASTER_PORT (README "Multi-node" and src/llamafactory/cli.py).

Runtime knobs (v0.9.5): FSDP through its TrainingArguments (a Seq2SeqTrainingArguments) fsdp /
fsdp_config (common.hf_fsdp), with use_reentrant_gc false under FSDP2 (model_args.py; LLaMA-Factory
turns it off itself only when accelerate's FSDP_VERSION=2 is exported, model_utils/checkpointing.py
prepare_model_for_training) and the 4-bit storage set by LLaMA-Factory itself (model_utils/quantization.py:
bnb_4bit_quant_storage=compute_dtype, "crucial for fsdp+qlora"); activation offloading as use_unsloth_gc
(model_args.py; checkpointing.py UnslothGradientCheckpointing moves each checkpointed block input to the
host); float8 as fp8 + fp8_backend torchao (training_args.py Fp8Arguments; train/fp8_utils.py
create_fp8_kwargs: torchao Float8LinearConfig 'rowwise', embeddings and LM head left in bf16). Refused:
checkpointing every k-th block (checkpointing.py _gradient_checkpointing_enable checkpoints every layer),
activation offloading without checkpointing (use_unsloth_gc offloads the checkpointed inputs).
"""

from __future__ import annotations

from typing import Any

from swiftplan.executors.train_engines.common import (
    DEFAULT_OPTIONS,
    RunOptions,
    RuntimeChoices,
    TrainRender,
    check_pre_quantized,
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
from swiftplan.executors.train_engines.objectives import BETA, data_note, is_sft, require_reference
from swiftplan.executors.train_engines.vision import llamafactory_keys, vision_choices
from swiftplan.planner.objective import Reference
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ALL_LINEAR, TrainSetup

NAME = "llamafactory"
CONFIG = "llamafactory_sft.yaml"
"""The config file of an SFT plan (llamafactory_<task>.yaml for the others)."""
_DATASET = "swiftplan_data"
_ATTN = {"sdpa": "sdpa", "flash": "fa2", "eager": "disabled"}


def render_llamafactory(plan: Plan, options: RunOptions = DEFAULT_OPTIONS) -> TrainRender:
    """The YAML, its dataset_info.json and DeepSpeed JSON, and `llamafactory-cli train` per node."""
    setup = require_engine_can_run(NAME, plan)
    notes = check_pre_quantized(NAME, setup)
    runtime = runtime_choices(NAME, setup)
    bf16, fp16 = mixed_precision(setup)
    pure_bf16 = _pure_bf16(setup)
    config: dict[str, Any] = {
        "model_name_or_path": plan.model,
        "stage": STAGES[setup.objective.kind],
        "do_train": True,
        "finetuning_type": "full" if setup.method == "full" else "lora",
        "dataset": _DATASET,
        "dataset_dir": ".",
        "template": "default",
        "cutoff_len": setup.seq_len,
        "packing": options.packing,
        "output_dir": options.output_dir,
        "per_device_train_batch_size": setup.micro_batch,
        "gradient_accumulation_steps": setup.grad_accum,
        "disable_gradient_checkpointing": not setup.grad_ckpt,
        "flash_attn": _ATTN[setup.attention],
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
    if pure_bf16:
        config["pure_bf16"] = True
    if options.max_steps is not None:
        config["max_steps"] = options.max_steps
    if options.save_total_limit is not None:
        config["save_total_limit"] = options.save_total_limit
    config.update(_adapter_and_quant_keys(setup, runtime))
    config.update(_runtime_keys(plan, setup))
    if (vision := vision_choices(setup)) is not None:
        config.update(llamafactory_keys(vision))
    notes += _objective(plan, setup, config)
    if setup.runtime.float8:
        notes.append("--float8: LLaMA-Factory converts the Linear layers with torchao's rowwise recipe (the plan "
                     "counted tensorwise scales; the fp8 copies per matmul are the same size).")  # fmt: skip
    files = {"dataset_info.json": json_text({_DATASET: dataset_entry(setup, options.data)})}
    if (ds := hf_deepspeed_config(setup)) is not None:
        files["ds_config.json"] = json_text(ds)
        config["deepspeed"] = "ds_config.json"
    name = f"llamafactory_{setup.objective.kind}.yaml"
    files[name] = yaml_text(with_extra(config, options))
    notes.append("template: default — set the model's chat template (e.g. qwen, llama3) in the YAML; "
                 "the data is read as alpaca records (dataset_info.json)" + (
                     "." if is_sft(setup) else f"; {data_note(setup)}"))  # fmt: skip
    env, node_env = _launch_env(plan, setup, options)
    argv = ("llamafactory-cli", "train", name)
    return TrainRender(engine=NAME, commands=tuple(argv for _ in range(plan.nodes)), env=env,
                       node_env=node_env, files=files, notes=tuple(notes))  # fmt: skip


def _pure_bf16(setup: TrainSetup) -> bool:
    """Whether the plan's bf16 weights train without autocast (pure_bf16); its precisions LLaMA-Factory
    cannot express are refused."""
    if setup.precision == "fp16":
        raise refuse(NAME, "--precision fp16 (fp16 weights without autocast)",
                     "it keeps fp16 only as autocast over fp32 trainable weights (pure_bf16 has no fp16 twin)")  # fmt: skip
    pure_bf16 = setup.precision == "bf16" and setup.method == "full"
    if pure_bf16 and setup.parallel.zero == 3:
        raise refuse(NAME, "--precision bf16 with ZeRO-3", "pure_bf16 is incompatible with DeepSpeed ZeRO-3 "
                     "(llamafactory/hparams/parser.py get_train_args)")  # fmt: skip
    return pure_bf16


def _adapter_and_quant_keys(setup: TrainSetup, runtime: RuntimeChoices) -> dict[str, Any]:
    """The LoRA shape, modules trained in full, Liger's loss and the bitsandbytes base."""
    keys: dict[str, Any] = {}
    if setup.lora is not None and setup.method != "full":
        keys.update(
            lora_rank=setup.lora.rank,
            lora_alpha=lora_alpha(setup),
            lora_dropout=setup.lora.dropout,
            lora_target="all" if ALL_LINEAR in setup.lora.targets else ",".join(setup.lora.targets),
            use_dora=setup.lora.dora,
        )
    if runtime.modules_to_save and setup.method != "full":
        keys["additional_target"] = ",".join(runtime.modules_to_save)
    if runtime.liger:
        keys["enable_liger_kernel"] = True
    if setup.quant in ("nf4", "fp4"):
        keys.update(quantization_bit=4, quantization_method="bnb", quantization_type=setup.quant,
                    double_quantization=setup.double_quant)  # fmt: skip
    elif setup.quant == "int8":
        keys.update(quantization_bit=8, quantization_method="bnb")
    return keys


def _runtime_keys(plan: Plan, setup: TrainSetup) -> dict[str, Any]:
    """FSDP, activation offloading and float8; checkpointing every k-th block refused."""
    knobs = setup.runtime
    keys: dict[str, Any] = {}
    if setup.grad_ckpt and knobs.ckpt_every > 1:
        raise refuse(NAME, f"--ckpt-every {knobs.ckpt_every}", "LLaMA-Factory checkpoints every decoder layer "
                     "(model_utils/checkpointing.py _gradient_checkpointing_enable has no every_n_layers)")  # fmt: skip
    if (fsdp := hf_fsdp(NAME, setup, gpus_per_node=plan.gpus_per_node, dp=plan.layout.dp)) is not None:
        keys.update(fsdp=fsdp.fsdp, fsdp_config=fsdp.config())
        if fsdp.version == 2:
            keys["use_reentrant_gc"] = False
    if knobs.activation_offload:
        if not setup.grad_ckpt:
            raise refuse(NAME, "--activation-offload without --grad-ckpt", "its offloading (use_unsloth_gc) moves "
                         "the inputs checkpointing keeps to host RAM; other saved tensors stay on the device")  # fmt: skip
        keys["use_unsloth_gc"] = True
    if knobs.float8:
        keys.update(fp8=True, fp8_backend="torchao")
    return keys


def _launch_env(
    plan: Plan, setup: TrainSetup, options: RunOptions
) -> tuple[dict[str, str], tuple[dict[str, str], ...]]:
    """FORCE_TORCHRUN for several GPUs or DeepSpeed, NNODES / MASTER_ADDR / MASTER_PORT and NODE_RANK."""
    env: dict[str, str] = {}
    node_env: tuple[dict[str, str], ...] = ()
    if plan.layout.gpus > 1 or setup.parallel.zero:
        env["FORCE_TORCHRUN"] = "1"
    if plan.nodes > 1:
        env.update(
            NNODES=str(plan.nodes), MASTER_ADDR=options.master_addr, MASTER_PORT=str(options.master_port)
        )
        node_env = tuple({"NODE_RANK": str(rank)} for rank in range(plan.nodes))
    return env, node_env


STAGES = {"sft": "sft", "dpo": "dpo", "orpo": "dpo", "simpo": "dpo", "kto": "kto", "rm": "rm", "ppo": "ppo"}
"""LLaMA-Factory's stage for each objective (hparams/finetuning_args.py:460 stage pt|sft|rm|ppo|dpo|kto)."""
PREF_LOSS = {"dpo": "sigmoid", "orpo": "orpo", "simpo": "simpo"}
"""stage dpo's pref_loss (finetuning_args.py:183 sigmoid|hinge|ipo|kto_pair|orpo|simpo; orpo and simpo load
no reference: use_ref_model = stage == dpo and pref_loss not in (orpo, simpo), :574)."""


def _objective(plan: Plan, setup: TrainSetup, config: dict[str, Any]) -> list[str]:
    """The objective's keys: pref_loss, pref_beta, the reference (a LoRA run disables its adapters, a full
    run loads a frozen copy, ref_model loads one for LoRA: train/trainer_utils.py create_ref_model) and
    PPO's generation length; the notes that come with them."""
    kind = setup.objective.kind
    if kind == "sft":
        return []
    runs: dict[Reference, str] = {"none": "no reference", "model": "a frozen copy, ref_model"}
    if setup.trains_adapters:
        runs["adapters-off"] = "the policy with its LoRA adapters disabled"
    if require_reference(NAME, setup, runs) == "model" and setup.trains_adapters:
        config["ref_model"] = plan.model
    if kind in PREF_LOSS:
        config["pref_loss"] = PREF_LOSS[kind]
    if kind in BETA:
        config["pref_beta"] = BETA[kind]
    if kind != "ppo":
        return []
    rollout = setup.objective.rollout
    assert rollout is not None
    if rollout.engine != "hf":
        raise refuse(NAME, "--task ppo with --rollout-engine vllm", "its PPO generates with the policy's generate() "
                     "(train/ppo/trainer.py)")  # fmt: skip
    config.update(cutoff_len=rollout.prompt_len, max_new_tokens=rollout.completion_len)
    return [
        "PPO needs a reward model: add --engine-option reward_model=PATH (finetuning_args.py reward_model)."
    ]


def dataset_entry(setup: TrainSetup, data: str) -> dict[str, Any]:
    """The dataset_info.json entry reading the plan's records (data/parser.py DatasetAttr columns; alpaca
    ranking pairs and kto_tag rows: data/converter.py AlpacaDatasetConverter)."""
    kind = setup.objective.kind
    entry: dict[str, Any] = {"file_name": data, "formatting": "alpaca"}
    if kind in ("dpo", "orpo", "simpo", "rm"):
        entry.update(ranking=True, columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})
    elif kind == "kto":
        entry["columns"] = {"prompt": "prompt", "response": "completion", "kto_tag": "label"}
    elif kind == "ppo":
        entry["columns"] = {"prompt": "prompt"}
    return entry
