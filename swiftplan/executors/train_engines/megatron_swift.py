"""Megatron-SWIFT: render `megatron sft` (or `megatron rlhf --rlhf_type dpo|kto|rm|grpo`, flags from
ms_swift_rlhf.py) from a training plan with tensor / pipeline parallelism (pure).

Argument names are ms-swift 4.6.0's own (swift/megatron/arguments/megatron_args.py MegatronArguments and
MegatronTunerMixin, swift/megatron/arguments/sft_args.py; modelscope/ms-swift@3602360a5623
docs/source_en/Megatron-SWIFT/Command-line-parameters.md): --tensor_model_parallel_size,
--pipeline_model_parallel_size, --sequence_parallel, --micro_batch_size, --global_batch_size,
--recompute_granularity full|selective|none (+ --recompute_method uniform --recompute_num_layers 1),
--use_distributed_optimizer (= ZeRO-1), --use_megatron_fsdp + --data_parallel_sharding_strategy
optim_grads|optim_grads_params (ZeRO-2/3), --optimizer adam|sgd, --optimizer_cpu_offload, --lr,
--lr_decay_style, --lr_warmup_iters, --weight_decay, --clip_grad, --train_iters / --num_train_epochs,
--max_length, --packing, --save_steps, --save_total_limit, --bf16/--fp16, --fp8_format, --tuner_type
full|lora, --lora_rank/--lora_alpha/--lora_dropout/--target_modules. Several GPUs and nodes go through
ms-swift's torchrun launch (NPROC_PER_NODE / NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT), as for
`swift sft`. Megatron-Core and Transformer Engine need CUDA, so the tests check this command against
MegatronSftArguments' declared fields in the installed ms-swift 4.6.0 (parsed with ast), not by
running it.
"""

from __future__ import annotations

from swiftplan.executors.train_engines.common import (
    DEFAULT_OPTIONS,
    RunOptions,
    TrainRender,
    mixed_precision,
    refuse,
    require_engine_can_run,
)
from swiftplan.executors.train_engines.ms_swift import torchrun_env
from swiftplan.executors.train_engines.ms_swift_rlhf import rlhf_args
from swiftplan.executors.train_engines.objectives import TrainerDevices, data_parallel_ranks, is_sft
from swiftplan.executors.train_engines.vision import ms_swift_args, ms_swift_env, vision_choices
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ALL_LINEAR, RuntimeKnobs, TrainSetup

NAME = "megatron-swift"
_OPTIMIZERS = {"adamw": "adam", "sgd": "sgd"}  # Megatron's adam is AdamW (decoupled weight decay)
_ZERO = {2: "optim_grads", 3: "optim_grads_params"}
_ATTN = {"sdpa": "auto", "flash": "flash", "eager": "unfused"}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def render_megatron_swift(plan: Plan, options: RunOptions = DEFAULT_OPTIONS) -> TrainRender:
    """`megatron sft` for the plan on its nodes (one command per node)."""
    setup = require_engine_can_run(NAME, plan)
    if setup.precision in ("fp32", "amp-bf16", "amp-fp16"):
        raise refuse(NAME, f"--precision {setup.precision}", "Megatron trains bf16 or fp16 weights with fp32 "
                     "master copies in the optimizer (--bf16 / --fp16)")  # fmt: skip
    _refuse_runtime_knobs(setup)
    bf16, fp16 = mixed_precision(setup)
    par = setup.parallel
    rlhf = None if is_sft(setup) else rlhf_args(NAME, plan, setup, options, megatron=True)
    devices = rlhf.devices if rlhf else TrainerDevices(processes=plan.gpus_per_node)
    dp = data_parallel_ranks(plan, setup)  # a rollout server's GPUs do not train
    argv = [
        "megatron", "sft" if rlhf is None else "rlhf",
        "--model", plan.model,
        "--dataset", options.data,
        "--output_dir", options.output_dir,
        "--tuner_type", "full" if setup.method == "full" else "lora",
        "--tensor_model_parallel_size", str(par.tp),
        "--pipeline_model_parallel_size", str(par.pp),
        "--sequence_parallel", _flag(par.tp > 1),
        "--micro_batch_size", str(setup.micro_batch),
        "--global_batch_size", str(setup.micro_batch * setup.grad_accum * dp),
        "--bf16", _flag(bf16),
        "--fp16", _flag(fp16),
        "--optimizer", _OPTIMIZERS[setup.optimizer],
        "--optimizer_cpu_offload", _flag(par.offload == "optimizer"),
        "--use_distributed_optimizer", _flag(par.zero >= 1),
        "--max_length", str(rlhf.max_length if rlhf and rlhf.max_length else setup.seq_len),
        "--packing", _flag(options.packing),
        "--attention_backend", _ATTN[setup.attention],
        "--lr", f"{options.learning_rate(setup):g}",
        "--lr_decay_style", options.lr_scheduler,
        "--lr_warmup_iters", str(options.warmup_steps),
        "--weight_decay", f"{options.weight_decay:g}",
        "--clip_grad", f"{options.max_grad_norm:g}",
        "--save_steps", str(options.save_steps),
        "--seed", str(options.seed),
    ]  # fmt: skip
    argv += _schedule_and_model_args(setup, options)
    if (vision := vision_choices(setup)) is not None:
        argv += ms_swift_args(vision)
    if rlhf is not None:
        argv += rlhf.argv
    for key, value in options.extra:
        argv += [f"--{key}", value]
    env, node_env = torchrun_env(plan, devices, options)
    env["NPROC_PER_NODE"] = str(devices.processes)  # megatron always launches through torchrun
    if vision is not None:
        env.update(ms_swift_env(vision))
    notes = (f"tp {par.tp} × pp {par.pp} × dp {dp} over {plan.nodes} node(s); global batch "
             f"{setup.micro_batch} × {setup.grad_accum} × {dp}.", *(rlhf.notes if rlhf else ()))  # fmt: skip
    return TrainRender(engine=NAME, commands=tuple(tuple(argv) for _ in range(plan.nodes)), env=env,
                       node_env=node_env, notes=notes, rollout=rlhf.rollout if rlhf else None)  # fmt: skip


def _refuse_runtime_knobs(setup: TrainSetup) -> None:
    """Every runtime knob other than its neutral value, refused naming it: Megatron runs its own loss
    (vocab-parallel cross-entropy), optimizer (a fused Adam stepped after backward), sharding (distributed
    optimizer / Megatron FSDP for --zero), recomputation (--recompute_method uniform|block: chunks of
    layers or the first N, not every k-th block), no PEFT modules_to_save, no torchao float8 (its fp8 is
    Transformer Engine's, planned with --quant fp8) and no DeepSpeed buckets
    (swift/megatron/arguments/megatron_args.py)."""
    knobs = setup.runtime
    refused = {
        f"--loss {knobs.loss}": knobs.loss != "full",
        f"--optimizer-impl {knobs.optimizer_impl}": knobs.optimizer_impl != "fused",
        f"--modules-to-save {','.join(knobs.modules_to_save)}": bool(knobs.modules_to_save),
        "--optimizer-in-backward": knobs.optimizer_in_backward,
        f"--fsdp {knobs.fsdp}": knobs.fsdp != "none",
        f"--ckpt-every {knobs.ckpt_every}": setup.grad_ckpt and knobs.ckpt_every > 1,
        "--activation-offload": knobs.activation_offload,
        "--float8": knobs.float8,
        "DeepSpeed bucket sizes": setup.parallel.zero > 0
        and _deepspeed_sizes(knobs) != _deepspeed_sizes(RuntimeKnobs()),
    }
    if named := [flag for flag, on in refused.items() if on]:
        raise refuse(NAME, " ".join(named), "Megatron runs its own loss, fused Adam, distributed optimizer / "
                     "Megatron FSDP sharding and uniform recomputation; plan it with the runtime defaults "
                     "(--quant fp8 for Transformer Engine fp8)")  # fmt: skip


def _deepspeed_sizes(knobs: RuntimeKnobs) -> tuple[object, ...]:
    """The DeepSpeed buffer choices a plan can set; Megatron has none of them (it allocates its own grad
    buffers), so only their defaults pass."""
    return (knobs.ds_buckets, knobs.ds_auto_buckets, knobs.ds_overlap_comm, knobs.reduce_bucket_elements,
            knobs.prefetch_bucket_elements, knobs.max_live_parameters, knobs.max_reuse_distance)  # fmt: skip


def _schedule_and_model_args(setup: TrainSetup, options: RunOptions) -> list[str]:
    """Recompute, Megatron FSDP for ZeRO-2/3, the run's length and checkpoints, LoRA and fp8."""
    par = setup.parallel
    if setup.grad_ckpt:
        argv = [
            "--recompute_granularity",
            "full",
            "--recompute_method",
            "uniform",
            "--recompute_num_layers",
            "1",
        ]
    else:
        argv = ["--recompute_granularity", "none"]
    if par.zero in _ZERO:
        argv += ["--use_megatron_fsdp", "true", "--data_parallel_sharding_strategy", _ZERO[par.zero]]
    if options.max_steps is not None:
        argv += ["--train_iters", str(options.max_steps)]
    else:
        argv += ["--num_train_epochs", str(options.epochs)]
    if options.save_total_limit is not None:
        argv += ["--save_total_limit", str(options.save_total_limit)]
    if setup.lora is not None and setup.method != "full":
        targets = [ALL_LINEAR] if setup.lora.all_linear else list(setup.lora.targets)
        alpha = setup.lora.alpha if setup.lora.alpha is not None else 2 * setup.lora.rank
        argv += ["--lora_rank", str(setup.lora.rank), "--lora_alpha", str(alpha),
                 "--lora_dropout", f"{setup.lora.dropout:g}", "--target_modules", *targets]  # fmt: skip
    if setup.quant == "fp8":
        argv += ["--fp8_format", "hybrid", "--fp8_recipe", "blockwise"]
    return argv
