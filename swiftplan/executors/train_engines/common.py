"""What every external training renderer shares: run options, the rendered result, refusals, and the
HF-Trainer vocabulary (optimizer names, precision flags, a DeepSpeed JSON with "auto" batch values)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.launch import zero_optimization
from swiftplan.planner.engines import engine_reasons, engines_that_run, get_engine, train_requirements
from swiftplan.planner.plan import Plan
from swiftplan.planner.setup import ALL_LINEAR, TrainSetup


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """What a training run needs beyond the plan (the same options `swiftplan train` takes)."""

    data: str = "train.jsonl"
    """Training data file."""
    output_dir: str = "runs/RUN"
    """Where checkpoints and the final adapter/model go."""
    lr: float | None = None
    """Peak learning rate; None = 2e-4 for LoRA/QLoRA, 2e-5 for full (swiftplan train's defaults)."""
    epochs: int = 1
    """Passes over the data (max_steps wins)."""
    max_steps: int | None = None
    """Optimizer steps to stop after."""
    save_steps: int = 500
    """Checkpoint cadence in optimizer steps."""
    save_total_limit: int | None = None
    """Newest checkpoints kept; None = all."""
    lr_scheduler: str = "cosine"
    """cosine, linear or constant."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """Weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 42
    """Seed."""
    packing: bool = False
    """Pack examples into full seq_len blocks."""
    master_addr: str = "MASTER_ADDR"
    """Node 0's address for multi-node launches (a placeholder the launcher fills in)."""
    master_port: int = 29500
    """Rendezvous port."""
    extra: tuple[tuple[str, str], ...] = ()
    """Engine options the plan does not decide, passed as they are (`--engine-option KEY=VALUE`): a flag
    `--KEY VALUE` for ms-swift, a `KEY: VALUE` line in the YAML engines' config (e.g. ms-swift's
    model_type/template for a local model, LLaMA-Factory's template)."""

    def learning_rate(self, setup: TrainSetup) -> float:
        """The run's peak learning rate."""
        if self.lr is not None:
            return self.lr
        return 2e-5 if setup.method == "full" else 2e-4


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutServer:
    """A vLLM server a GRPO trainer sends generation requests to, started before it on node 0."""

    argv: tuple[str, ...]
    """Its command."""
    env: Mapping[str, str]
    """Its environment (CUDA_VISIBLE_DEVICES: the devices the plan gave it)."""
    port: int
    """The port it listens on (the trainer's vllm_server_port)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainRender:
    """What an external engine runs for a plan: one command per node, environment, files to write."""

    engine: str
    """Engine name (profiles/engines.json)."""
    commands: tuple[tuple[str, ...], ...]
    """argv for each node (node 0 first)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to every node's environment."""
    node_env: tuple[Mapping[str, str], ...] = ()
    """Per-node additions (NODE_RANK and the like), one per command; empty on one node."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Config files the commands read (name relative to the working directory → text)."""
    notes: tuple[str, ...] = ()
    """Choices made while rendering the user should know about."""
    rollout: RolloutServer | None = None
    """GRPO with a rollout server: the server to start first (node 0)."""


def require_engine_can_run(engine_name: str, plan: Plan) -> TrainSetup:
    """The plan's training set-up, or one SwiftplanError naming every setting the engine cannot run."""
    setup = plan.setup
    if not isinstance(setup, TrainSetup):
        raise SwiftplanError(f"{engine_name} trains; this is a serving plan.")
    engine = get_engine(engine_name, "train")
    needs = train_requirements(setup, backend=plan.hardware.accelerator.backend, gpus=plan.layout.gpus)
    if reasons := engine_reasons(engine, needs):
        raise SwiftplanError(f"{engine.label} cannot run this plan: {' '.join(reasons)}",
                             hint=other_engines_hint(plan, exclude=engine.name))  # fmt: skip
    return setup


def engines_that_can(plan: Plan) -> list[str]:
    """The training engines swiftplan launches that run `plan` as planned (its objective included)."""
    setup = plan.setup
    assert isinstance(setup, TrainSetup)
    needs = train_requirements(setup, backend=plan.hardware.accelerator.backend, gpus=plan.layout.gpus)
    return [e.name for e in engines_that_run(needs, "train") if e.runnable]


def other_engines_hint(plan: Plan, *, exclude: str) -> str:
    """Which other engines run the plan (their command), else how to re-plan for `exclude`."""
    assert isinstance(plan.setup, TrainSetup)
    task = plan.setup.objective.kind
    others = [name for name in engines_that_can(plan) if name != exclude]
    replan = f"re-plan for {exclude}: swiftplan fit MODEL --task {task} --engine {exclude}"
    if not others:
        return f"No engine swiftplan launches runs it as planned; {replan}."
    command = "swiftplan train PLAN" + ("" if others[0] == "swiftplan" else f" --engine {others[0]}")
    return f"{', '.join(others)} can run it ({command}); or {replan}."


def refuse(engine: str, setting: str, why: str) -> SwiftplanError:
    """The error for a plan setting an engine cannot express, naming the setting."""
    return SwiftplanError(f"{engine} cannot express {setting}: {why}.",
                          hint="Re-plan without it, or run the plan with swiftplan train PLAN.")  # fmt: skip


HF_OPTIMIZERS = {
    "adamw": "adamw_torch_fused",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
}
"""The plan's optimizer as transformers' TrainingArguments.optim (OptimizerNames,
huggingface/transformers@00349ae87edd src/transformers/training_args.py). adamw is torch's fused
AdamW, the kernel swiftplan's own loop builds (the plan's optimizer_impl default)."""

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
                "amp-bf16": "float32", "amp-fp16": "float32"}  # fmt: skip
"""The dtype the model's weights are loaded in: amp-* keeps an fp32 model and autocasts."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeChoices:
    """The plan's runtime knobs (TrainSetup.runtime) in HF-Trainer terms, for the renderers."""

    optim: str
    """TrainingArguments.optim: the optimizer and its kernel."""
    liger: bool
    """Liger's fused linear + cross-entropy (use_liger_kernel) instead of the full-logits loss."""
    modules_to_save: tuple[str, ...]
    """Modules trained in full next to the adapter (peft modules_to_save)."""


def runtime_choices(engine: str, setup: TrainSetup, *, own_fused_loss: bool = False) -> RuntimeChoices:
    """The plan's runtime knobs as the HF Trainer spells them; a knob no HF-Trainer engine expresses is
    refused, naming it. `own_fused_loss`: the engine always computes the loss through its own fused
    LM head (TRL's SFTTrainer), so the loss knobs are not rendered (the renderer notes it)."""
    knobs = setup.runtime
    optim = HF_OPTIMIZERS[setup.optimizer]
    if setup.optimizer == "adamw":
        if knobs.optimizer_impl == "foreach":
            optim = "adamw_torch"  # torch.optim.AdamW with its default (foreach on CUDA) kernel
        elif knobs.optimizer_impl == "for_loop":
            raise refuse(engine, "--optimizer-impl for_loop", "TrainingArguments.optim offers torch's AdamW "
                         "as adamw_torch (foreach) or adamw_torch_fused only")  # fmt: skip
    if own_fused_loss:
        pass
    elif knobs.loss == "chunked":
        raise refuse(engine, "--loss chunked", "token-chunked cross-entropy is torchtune's; HF-Trainer engines "
                     "have the full loss or Liger's fused linear cross-entropy")  # fmt: skip
    elif knobs.loss == "fused_linear" and knobs.loss_chunk_tokens:
        raise refuse(engine, f"--loss-chunk-tokens {knobs.loss_chunk_tokens}",
                     "Liger's fused linear cross-entropy picks its own chunk size")  # fmt: skip
    if knobs.optimizer_in_backward:
        raise refuse(engine, "--optimizer-in-backward", "the HF Trainer steps the optimizer after backward")
    return RuntimeChoices(
        optim=optim, liger=knobs.loss == "fused_linear", modules_to_save=knobs.modules_to_save
    )


def every_n_layers(engine: str, setup: TrainSetup) -> int:
    """The plan's selective checkpointing as transformers' gradient_checkpointing_kwargs every_n_layers
    (transformers 5.16+ src/transformers/trainer.py pops it before torch.utils.checkpoint, and
    modeling_utils.py _set_gradient_checkpointing checkpoints decoder layer i when i % n == 0: the first
    block of each k); 1 = every block. The last block of each k (torchtune's ac_option) is refused."""
    knobs = setup.runtime
    every = knobs.ckpt_every if setup.grad_ckpt else 1
    if every > 1 and knobs.ckpt_position == "last":
        raise refuse(engine, f"--ckpt-every {every} --ckpt-position last", "transformers' every_n_layers "
                     "checkpoints the first block of each group (layer i when i % k == 0), not the last")  # fmt: skip
    return every


@dataclass(frozen=True, kw_only=True, slots=True)
class HfFsdp:
    """The plan's PyTorch FSDP as transformers' TrainingArguments spell it (fsdp + fsdp_config)."""

    fsdp: str
    """TrainingArguments.fsdp: the sharding strategy, auto_wrap, and offload for CPU offload."""
    version: int
    """fsdp_config version: 1 (FullyShardedDataParallel) or 2 (fully_shard)."""
    cpu_offload: bool
    """Parameters, gradients and optimizer state on the host."""

    def config(self) -> dict[str, Any]:
        """fsdp_config: the version stated, since transformers' default changed (1 up to 5.19, 2 from 5.20)."""
        return {"version": self.version}


def hf_fsdp(engine: str, setup: TrainSetup, *, gpus_per_node: int, dp: int) -> HfFsdp | None:
    """The plan's FSDP for the HF Trainer, None without it. Names from transformers: TrainingArguments.fsdp
    options full_shard|shard_grad_op|hybrid_shard, auto_wrap, offload and fsdp_config version
    (transformers 5.6.0 and 5.25.0 src/transformers/training_args.py _process_fsdp_args; 5.25
    _apply_legacy_fsdp_to_config maps full_shard / shard_grad_op to FSDP2's reshard_after_forward True / False
    and offload to cpu_offload). Refused: hybrid sharding under FSDP2 (FSDP1 only there), a hybrid shard group
    other than one node (FSDP1's HYBRID_SHARD without a process group shards within the node), and a
    quantized base other than bitsandbytes 4-bit (its storage must be the 16-bit dtype to be sharded)."""
    knobs = setup.runtime
    if knobs.fsdp == "none":
        return None
    version = 2 if knobs.fsdp == "fsdp2" else 1
    if knobs.fsdp_sharding == "hybrid_shard":
        if version == 2:
            raise refuse(engine, "--fsdp fsdp2 --fsdp-sharding hybrid_shard", "transformers' FSDP2 reshards "
                         "full_shard or shard_grad_op only; hybrid_shard is an FSDP1 strategy (--fsdp fsdp1)")  # fmt: skip
        group = min(knobs.fsdp_shard_group or dp, dp)
        if group != gpus_per_node:
            raise refuse(engine, f"--fsdp-shard-group {knobs.fsdp_shard_group}", "FSDP1's hybrid_shard shards "
                         f"within one node ({gpus_per_node} GPUs here) and replicates across nodes")  # fmt: skip
    if setup.quant not in ("none", "nf4", "fp4"):
        raise refuse(engine, f"--fsdp {knobs.fsdp} with --quant {setup.quant}", "FSDP shards 16/32-bit weights "
                     "or a bitsandbytes 4-bit base stored in the compute dtype (bnb_4bit_quant_storage), not this one")  # fmt: skip
    options = [knobs.fsdp_sharding, "auto_wrap", *(["offload"] if knobs.fsdp_cpu_offload else [])]
    return HfFsdp(fsdp=" ".join(options), version=version, cpu_offload=knobs.fsdp_cpu_offload)


def mixed_precision(setup: TrainSetup) -> tuple[bool, bool]:
    """(bf16, fp16) TrainingArguments flags: autocast to that half dtype, or neither for fp32."""
    return setup.precision in ("bf16", "amp-bf16"), setup.precision in ("fp16", "amp-fp16")


def lora_targets(setup: TrainSetup) -> list[str]:
    """The adapter's target modules (['all-linear'] or names)."""
    assert setup.lora is not None
    return [ALL_LINEAR] if setup.lora.all_linear else list(setup.lora.targets)


def lora_alpha(setup: TrainSetup) -> int:
    """LoRA alpha (the set-up's default: 2 × rank)."""
    assert setup.lora is not None
    return setup.lora.alpha if setup.lora.alpha is not None else 2 * setup.lora.rank


def hf_deepspeed_config(setup: TrainSetup) -> dict[str, Any] | None:
    """A DeepSpeed JSON for the HF Trainer's integration carrying the plan's ZeRO stage and offload;
    batch, accumulation, clipping and precision are "auto" so the Trainer fills them from its own
    arguments (the values this renderer sets from the plan). None without ZeRO."""
    par = setup.parallel
    if par.zero == 0:
        return None
    zero = zero_optimization(setup)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }
    if par.offload != "none":  # keep the plan's optimizer (not DeepSpeedCPUAdam) when offloading
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def with_extra(config: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """`config` with the user's engine options set on top (their value parsed as a YAML scalar)."""
    import yaml

    return {**config, **{key: yaml.safe_load(value) for key, value in options.extra}}


def json_text(value: Any) -> str:
    """Stable JSON file text."""
    return json.dumps(value, indent=2) + "\n"


def _yaml_scalar(value: Any) -> str:
    """JSON text of a scalar; floats always with a '.' in the mantissa, since YAML 1.1 (PyYAML) reads
    2e-05 as a string but 2.0e-05 as a float."""
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return text if "." in mantissa or not e else f"{mantissa}.0e{exponent}"
    return json.dumps(value)


def yaml_text(mapping: Mapping[str, Any]) -> str:
    """A YAML mapping (scalars, flat mappings, lists of scalars or of flat mappings), keys in the given order, values quoted
    as JSON so no YAML type guessing changes them (JSON scalars are valid YAML)."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, list | tuple):
            lines.append(f"{key}:")
            for item in value:
                if isinstance(item, Mapping):  # a list of flat mappings (axolotl/TRL datasets)
                    pairs = [f"{k}: {_yaml_scalar(v)}" for k, v in item.items()]
                    lines += [f"  - {pairs[0]}", *(f"    {pair}" for pair in pairs[1:])]
                else:
                    lines.append(f"  - {_yaml_scalar(item)}")
        elif isinstance(value, Mapping):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_yaml_scalar(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


def check_pre_quantized(engine: str, setup: TrainSetup) -> list[str]:
    """Notes for a LoRA on a pre-quantized checkpoint (GPTQ/AWQ/fp8): the engine reads it as it is."""
    if setup.quant in ("gptq", "awq", "fp8"):
        return [f"--quant {setup.quant}: the checkpoint must already be {setup.quant}-quantized; {engine} loads "
                "its quantization_config as it is."]  # fmt: skip
    return []


DEFAULT_OPTIONS = RunOptions()
"""Run options when none are given."""
