"""ms-swift: render `swift sft` (or, for a preference, reward-modelling or RL plan, `swift rlhf` with the
flags of ms_swift_rlhf.py) from a training plan (pure).

Argument names are ms-swift 4.6.0's own (modelscope/ms-swift@3602360a562313afbf2ef6065fdf61f271a2c5b9
docs/source_en/Instruction/Command-line-parameters.md; swift/arguments/sft_args.py, tuner_args.py,
base_args/quant_args.py, model_args.py, template_args.py): --tuner_type lora|full, --lora_rank,
--lora_alpha, --lora_dropout, --target_modules, --use_dora, --quant_method bnb --quant_bits 4|8,
--bnb_4bit_quant_type, --bnb_4bit_use_double_quant, --bnb_4bit_compute_dtype, --torch_dtype, --optim,
--per_device_train_batch_size, --gradient_accumulation_steps, --gradient_checkpointing, --deepspeed
(a preset name or a JSON path), --max_length, --packing, --attn_impl. Several GPUs and nodes go through
ms-swift's own torchrun launch, driven by NPROC_PER_NODE / NNODES / NODE_RANK / MASTER_ADDR /
MASTER_PORT (docs/source_en/Instruction/Pre-training-and-Fine-tuning.md, "multi-node").

Runtime knobs: FSDP is --fsdp with a JSON file {"fsdp": options, "fsdp_config": {"fsdp_version": 1|2}}
(swift/arguments/sft_args.py _init_fsdp reads a preset name or a JSON path, takes its "fsdp" string and
"fsdp_config", and exports FSDP_VERSION from fsdp_version; swift/config/fsdp2.json is the preset), with
--bnb_4bit_quant_storage in the compute dtype for a 4-bit base (base_args/quant_args.py). Activation
offloading is fsdp_config activation_cpu_offload (swift/trainers/arguments.py _init_callbacks adds the
activation_cpu_offload callback, swift/callbacks/activation_cpu_offload.py: each FSDP-wrapped layer's saved
tensors to pinned host memory, two layer groups on the device, FSDP only), which brings its own
checkpointing (fsdp_config activation_checkpointing) and disables transformers' (--gradient_checkpointing
false). Refused: checkpointing every k-th block (swift/trainers/mixin.py _prepare_gradient_checkpointing
calls gradient_checkpointing_enable with gradient_checkpointing_kwargs only, which go to
torch.utils.checkpoint: every_n_layers is not read), activation offloading without FSDP, float8 (no
torchao float8 training argument: --quant_method fp8 loads fp8 weights).
"""

from __future__ import annotations

from typing import Any

from swiftplan.executors.train_engines.common import (
    DEFAULT_OPTIONS,
    TORCH_DTYPES,
    RunOptions,
    RuntimeChoices,
    TrainRender,
    check_pre_quantized,
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
)
from swiftplan.executors.train_engines.ms_swift_rlhf import rlhf_args
from swiftplan.executors.train_engines.objectives import TrainerDevices, is_sft
from swiftplan.executors.train_engines.vision import ms_swift_args, ms_swift_env, vision_choices
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import TrainSetup

NAME = "ms-swift"
FSDP_CONFIG = "fsdp_config.json"
"""The --fsdp file of an FSDP plan."""
_ATTN = {"sdpa": "sdpa", "flash": "flash_attn", "eager": "eager"}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def render_ms_swift(plan: Plan, options: RunOptions = DEFAULT_OPTIONS) -> TrainRender:
    """`swift sft` for the plan, its DeepSpeed JSON when the plan uses ZeRO, and the launch env."""
    setup = require_engine_can_run(NAME, plan)
    notes = check_pre_quantized(NAME, setup)
    runtime = runtime_choices(NAME, setup)
    bf16, fp16 = mixed_precision(setup)
    rlhf = None if is_sft(setup) else rlhf_args(NAME, plan, setup, options)
    argv = [
        "swift", "sft" if rlhf is None else "rlhf",
        "--model", plan.model,
        "--dataset", options.data,
        "--output_dir", options.output_dir,
        "--tuner_type", "full" if setup.method == "full" else "lora",
        "--torch_dtype", TORCH_DTYPES[setup.precision],
        "--bf16", _flag(bf16),
        "--fp16", _flag(fp16),
        "--optim", runtime.optim,
        "--per_device_train_batch_size", str(setup.micro_batch),
        "--gradient_accumulation_steps", str(setup.grad_accum),
        "--gradient_checkpointing", _flag(setup.grad_ckpt and not setup.runtime.activation_offload),
        "--max_length", str(rlhf.max_length if rlhf and rlhf.max_length else setup.seq_len),
        "--packing", _flag(options.packing),
        "--attn_impl", _ATTN[setup.attention],
        "--learning_rate", f"{options.learning_rate(setup):g}",
        "--lr_scheduler_type", options.lr_scheduler,
        "--warmup_steps", str(options.warmup_steps),
        "--weight_decay", f"{options.weight_decay:g}",
        "--max_grad_norm", f"{options.max_grad_norm:g}",
        "--num_train_epochs", str(options.epochs),
        "--save_steps", str(options.save_steps),
        "--seed", str(options.seed),
    ]  # fmt: skip
    if options.max_steps is not None:
        argv += ["--max_steps", str(options.max_steps)]
    if options.save_total_limit is not None:
        argv += ["--save_total_limit", str(options.save_total_limit)]
    argv += _adapter_and_quant_args(setup, runtime)
    if (vision := vision_choices(setup)) is not None:
        argv += ms_swift_args(vision)
    if rlhf is not None:
        argv += rlhf.argv
        notes += rlhf.notes
    files: dict[str, str] = {}
    if (fsdp := _fsdp_file(plan, setup)) is not None:
        files[FSDP_CONFIG] = json_text(fsdp)
        argv += ["--fsdp", FSDP_CONFIG]
        if setup.quant in ("nf4", "fp4"):  # FSDP shards the packed 4-bit weights only in the compute dtype
            argv += ["--bnb_4bit_quant_storage", TORCH_DTYPES[setup.precision]]
    if (ds := hf_deepspeed_config(setup)) is not None:
        files["ds_config.json"] = json_text(ds)
        argv += ["--deepspeed", "ds_config.json"]
        if setup.parallel.zero == 3 and setup.quant in ("nf4", "fp4"):  # ZeRO-3 partitions them so too
            argv += ["--bnb_4bit_quant_storage", TORCH_DTYPES[setup.precision]]
    for key, value in options.extra:
        argv += [f"--{key}", value]
    devices = rlhf.devices if rlhf else TrainerDevices(processes=plan.gpus_per_node)
    env, node_env = torchrun_env(plan, devices, options)
    if vision is not None:
        env.update(ms_swift_env(vision))
    commands = tuple(tuple(argv) for _ in range(plan.nodes))
    return TrainRender(engine=NAME, commands=commands, env=env, node_env=node_env, files=files,
                       notes=tuple(notes), rollout=rlhf.rollout if rlhf else None)  # fmt: skip


def _fsdp_file(plan: Plan, setup: TrainSetup) -> dict[str, Any] | None:
    """The --fsdp JSON (sft_args.py _init_fsdp) for an FSDP plan, with ms-swift's activation offloading;
    None without FSDP. The knobs ms-swift cannot run are refused here."""
    knobs = setup.runtime
    if knobs.float8:
        raise refuse(NAME, "--float8", "ms-swift has no torchao float8 training argument (--quant_method fp8 "
                     "loads fp8 weights, it does not train through Float8Linear)")  # fmt: skip
    if every_n_layers(NAME, setup) > 1:
        raise refuse(NAME, f"--ckpt-every {knobs.ckpt_every}", "ms-swift enables checkpointing itself with "
                     "gradient_checkpointing_kwargs passed to torch.utils.checkpoint, which has no every_n_layers "
                     "(swift/trainers/mixin.py _prepare_gradient_checkpointing)")  # fmt: skip
    fsdp = hf_fsdp(NAME, setup, gpus_per_node=plan.gpus_per_node, dp=plan.layout.dp)
    if fsdp is None:
        if knobs.activation_offload:
            raise refuse(NAME, "--activation-offload without --fsdp", "ms-swift offloads activations through "
                         "its FSDP callback only (fsdp_config activation_cpu_offload)")  # fmt: skip
        return None
    config: dict[str, Any] = {"fsdp_version": fsdp.version}
    if knobs.activation_offload:
        config.update(activation_cpu_offload=True, activation_checkpointing=setup.grad_ckpt)
    return {"fsdp": fsdp.fsdp, "fsdp_config": config}


def _adapter_and_quant_args(setup: TrainSetup, runtime: RuntimeChoices) -> list[str]:
    """The LoRA shape, modules trained in full, Liger's loss and the bitsandbytes base."""
    argv: list[str] = []
    if setup.lora is not None and setup.method != "full":
        argv += ["--lora_rank", str(setup.lora.rank), "--lora_alpha", str(lora_alpha(setup)),
                 "--lora_dropout", f"{setup.lora.dropout:g}", "--target_modules", *lora_targets(setup),
                 "--use_dora", _flag(setup.lora.dora)]  # fmt: skip
    if runtime.modules_to_save and setup.method != "full":
        argv += ["--modules_to_save", *runtime.modules_to_save]
    if runtime.liger:
        argv += ["--use_liger_kernel", "true"]
    if setup.quant in ("nf4", "fp4"):
        argv += ["--quant_method", "bnb", "--quant_bits", "4", "--bnb_4bit_quant_type", setup.quant,
                 "--bnb_4bit_use_double_quant", _flag(setup.double_quant),
                 "--bnb_4bit_compute_dtype", TORCH_DTYPES[setup.precision]]  # fmt: skip
    elif setup.quant == "int8":
        argv += ["--quant_method", "bnb", "--quant_bits", "8"]
    return argv


def torchrun_env(
    plan: Plan, devices: TrainerDevices, options: RunOptions
) -> tuple[dict[str, str], tuple[dict[str, str], ...]]:
    """ms-swift's torchrun launch: NPROC_PER_NODE (the trainer's processes), NNODES / MASTER_ADDR /
    MASTER_PORT and a NODE_RANK per node; CUDA_VISIBLE_DEVICES when a rollout server takes devices."""
    env: dict[str, str] = {}
    if devices.processes * plan.nodes > 1:
        env["NPROC_PER_NODE"] = str(devices.processes)
    if devices.trainer_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices.trainer_visible
    node_env: tuple[dict[str, str], ...] = ()
    if plan.nodes > 1:
        env.update(
            NNODES=str(plan.nodes), MASTER_ADDR=options.master_addr, MASTER_PORT=str(options.master_port)
        )
        node_env = tuple({"NODE_RANK": str(rank)} for rank in range(plan.nodes))
    return env, node_env
