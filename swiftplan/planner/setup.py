"""What the user wants to run: `TrainSetup` and `ServeSetup`, validated on construction.

Every invalid combination raises `SwiftplanError` with one sentence naming the bad value and
what would be valid, so the CLI never prints a traceback or a silently wrong plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

from swiftplan.errors import SwiftplanError
from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.vision import VisionInputs

Task = Literal["train", "serve"]
Method = Literal["full", "lora", "qlora"]
Precision = Literal["bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"]
ServeDtype = Literal["bf16", "fp16", "fp32"]
Quant = Literal["none", "nf4", "fp4", "int8", "gptq", "awq", "fp8", "nf4-torchao"]
Optimizer = Literal["adamw", "adamw-8bit", "paged-adamw-8bit", "sgd", "adafactor"]
ZeroStage = Literal[0, 1, 2, 3]
Offload = Literal["none", "optimizer", "optimizer+params"]
KvDtype = Literal["auto", "fp8"]
ServeRuntime = Literal["vllm", "sglang", "lmdeploy", "gpt-fast", "llama.cpp", "mlc-llm", "tensorrt-llm"]
AttentionImpl = Literal["sdpa", "flash", "eager"]
LossImpl = Literal["full", "chunked", "fused_linear", "fused_head", "full_legacy"]
OptimizerImpl = Literal["fused", "foreach", "for_loop"]
SavedModule = Literal["embed_tokens", "lm_head"]
Fsdp = Literal["none", "fsdp1", "fsdp2"]
FsdpSharding = Literal["full_shard", "shard_grad_op", "hybrid_shard"]
CkptPosition = Literal["first", "last"]
AdapterDtype = Literal["fp32", "model", "kbit-bf16"]
Padding = Literal["max_length", "multiple", "longest", "unmasked"]

METHODS: tuple[Method, ...] = get_args(Method)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
SERVE_DTYPES: tuple[ServeDtype, ...] = get_args(ServeDtype)
QUANTS: tuple[Quant, ...] = get_args(Quant)
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
OFFLOADS: tuple[Offload, ...] = get_args(Offload)
KV_DTYPES: tuple[KvDtype, ...] = get_args(KvDtype)
SERVE_RUNTIMES: tuple[ServeRuntime, ...] = get_args(ServeRuntime)
"""Serving engines the speed model knows (each has a per-step decode cost in profiles/calibration.json):
the --runtime serving profiles (vllm, sglang, lmdeploy) and the engines of the published decode rows."""
ZERO_STAGES: tuple[ZeroStage, ...] = get_args(ZeroStage)
LOSS_IMPLS: tuple[LossImpl, ...] = get_args(LossImpl)
OPTIMIZER_IMPLS: tuple[OptimizerImpl, ...] = get_args(OptimizerImpl)
SAVED_MODULES: tuple[SavedModule, ...] = get_args(SavedModule)
FSDPS: tuple[Fsdp, ...] = get_args(Fsdp)
FSDP_SHARDINGS: tuple[FsdpSharding, ...] = get_args(FsdpSharding)
CKPT_POSITIONS: tuple[CkptPosition, ...] = get_args(CkptPosition)
ADAPTER_DTYPES: tuple[AdapterDtype, ...] = get_args(AdapterDtype)
PADDINGS: tuple[Padding, ...] = get_args(Padding)
ALL_LINEAR = "all-linear"

ChoiceT = TypeVar("ChoiceT", bound=str)

# Quantizations a QLoRA base can use (bitsandbytes 4-bit, torchao NF4) and those LoRA can sit on.
_QLORA_QUANTS = ("nf4", "fp4", "nf4-torchao")
_LORA_BASE_QUANTS = ("none", "int8", "gptq", "awq", "fp8")
ZERO3_QUANTS = ("none", "nf4", "fp4")
"""Bases DeepSpeed ZeRO-3 partitions: unquantized, or bitsandbytes 4-bit, whose packed data is a plain tensor
in `bnb_4bit_quant_storage` (the compute dtype) that ZeRO-3 flattens like any other, its constants kept whole
in each module's quant_state (huggingface/peft @ 6008f272a docs/source/accelerate/deepspeed.md, 'Use PEFT
QLoRA and DeepSpeed with ZeRO3'; transformers' bitsandbytes integration). LLM.int8's Int8Params carry their
row scales (SCB) on the parameter object, and GPTQ/AWQ/fp8 bases are int/fp8 buffers, none of which ZeRO-3's
partitioning keeps together."""


def zero3_shards(quant: str, offload: str) -> bool:
    """Whether DeepSpeed ZeRO-3 shards a base of `quant` with `offload`: a base in ZERO3_QUANTS, and parameters
    offloaded to the host only when unquantized (no recipe offloads packed 4-bit partitions)."""
    return quant in ZERO3_QUANTS and (quant == "none" or offload != "optimizer+params")


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    parse_choice(kind, value, valid)


def parse_choice(kind: str, value: str, valid: tuple[ChoiceT, ...]) -> ChoiceT:
    """`value` as one of `valid` (a string from a command line or a file, typed), or the same
    SwiftplanError the set-ups raise for it."""
    for choice in valid:
        if choice == value:
            return choice
    raise SwiftplanError(f"Unknown {kind} {value!r}; valid values are: {', '.join(valid)}.")


def zero_stage(value: int) -> ZeroStage:
    """`value` as a ZeRO stage, or the SwiftplanError `Parallelism` raises for it."""
    for stage in ZERO_STAGES:
        if stage == value:
            return stage
    raise SwiftplanError(f"ZeRO stage must be 0, 1, 2 or 3, got {value!r}.")


def _check_positive(kind: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise SwiftplanError(f"{kind} must be a positive integer, got {value!r}.")


@dataclass(frozen=True, kw_only=True, slots=True)
class LoraSetup:
    """Adapter shape: which modules get a rank-r update and in what form."""

    rank: int = 16
    """LoRA rank r."""
    alpha: int | None = None
    """Scaling numerator (alpha / r); defaults to 2 × rank. Does not change memory."""
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names peft matches, or ("all-linear",)."""
    dropout: float = 0.05
    """Dropout on the adapter input; > 0 keeps a dropped copy of each targeted input."""
    dora: bool = False
    """DoRA adds a magnitude vector per target and a weight-norm computation."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise SwiftplanError(
                f"LoRA rank must be a positive integer, got {self.rank!r}; typical values are 8–128."
            )
        if not self.targets:
            raise SwiftplanError("LoRA targets are empty; name modules like q_proj,v_proj or use all-linear.")
        if not 0.0 <= self.dropout < 1.0:
            raise SwiftplanError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")

    @property
    def all_linear(self) -> bool:
        """True when every nn.Linear except the LM head is targeted."""
        return ALL_LINEAR in self.targets


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallelism:
    """How the work is split across devices."""

    tp: int = 1
    """Tensor-parallel degree (splits each matrix)."""
    pp: int = 1
    """Pipeline-parallel degree (splits the layers)."""
    zero: ZeroStage = 0
    """ZeRO stage over the data-parallel group (3 ≈ FSDP full sharding)."""
    offload: Offload = "none"
    """What ZeRO-Offload moves to host RAM."""

    def __post_init__(self) -> None:
        _check_positive("Tensor-parallel degree (--tp)", self.tp)
        _check_positive("Pipeline-parallel degree (--pp)", self.pp)
        zero_stage(self.zero)
        _check_choice("offload", self.offload, OFFLOADS)
        if self.offload == "optimizer+params" and self.zero != 3:
            raise SwiftplanError(
                f"Offloading parameters needs ZeRO stage 3 (got --zero {self.zero}).",
                hint="Use --zero 3 with --offload optimizer+params, or --offload optimizer with ZeRO 1–3.",
            )
        if self.offload == "optimizer" and self.zero == 0:
            raise SwiftplanError(
                "Optimizer offload needs a ZeRO stage of 1, 2 or 3 (got --zero 0).",
                hint="Add --zero 2 (or 3), or drop --offload.",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeKnobs:
    """What the framework that runs the job does beyond the set-up's numerics: the defaults a runtime
    profile (profiles/runtimes/*.yaml) sets, each overridable by its own flag. The defaults here are
    swiftplan's own executor, so a set-up without them plans what `swiftplan train` runs."""

    name: str = "swiftplan"
    """Runtime profile the knobs came from (profiles/runtimes/NAME.yaml)."""
    loss: LossImpl = "full"
    """Cross-entropy implementation: full fp32 logits (transformers >= 4.49, upcast inside the loss),
    full_legacy (transformers 4.31-4.45: fp32 logits in the model output and a shifted fp32 copy),
    token-chunked (torchtune), fused linear + cross-entropy that never holds all logits (Liger, cut
    cross-entropy, Unsloth, TRL's chunked_nll before 1.16), or fused_head: TRL 1.16's add_fused_lm_head,
    scoring [4096 × 32768] tiles of the labelled positions (planner/fused_head.py)."""
    loss_chunks: int = 8
    """chunked: token chunks the logits are split into (torchtune num_output_chunks = 8)."""
    loss_chunk_tokens: int = 0
    """fused_linear: tokens per chunk (TRL chunked_nll: 256); 0 = Liger's rule, the next power of two
    of tokens / ceil(vocab / hidden)."""
    optimizer_impl: OptimizerImpl = "fused"
    """torch AdamW kernel: fused (in place), foreach (one parameter-sized temporary; torch's CUDA
    default), for_loop (two temporaries the size of the largest parameter: sqrt and quotient)."""
    modules_to_save: tuple[SavedModule, ...] = ()
    """Modules trained in full next to LoRA (peft modules_to_save): a trainable copy of each."""
    optimizer_in_backward: bool = False
    """Each parameter is stepped and its gradient freed as soon as it is accumulated (torchtune
    optimizer_in_bwd): one gradient alive instead of all; needs grad_accum 1."""
    fsdp: Fsdp = "none"
    """PyTorch FSDP instead of DeepSpeed ZeRO (then --zero stays 0)."""
    fsdp_sharding: FsdpSharding = "full_shard"
    """full_shard ≈ ZeRO-3, shard_grad_op ≈ ZeRO-2, hybrid_shard: full_shard inside a group of
    `fsdp_shard_group` devices, replicated across groups."""
    fsdp_shard_group: int = 0
    """hybrid_shard: devices a shard group spans (normally one node); 0 = all data-parallel ranks."""
    ds_buckets: bool = True
    """Count DeepSpeed's gradient reduce bucket(s) and ZeRO-3's live/prefetch parameter buffers at
    their configured sizes (which the rendered DeepSpeed JSON carries) instead of the two-blocks approximation."""
    reduce_bucket_elements: int = 500_000_000
    """DeepSpeed reduce_bucket_size (elements; default 5e8)."""
    prefetch_bucket_elements: int = 50_000_000
    """DeepSpeed stage3_prefetch_bucket_size (elements; default 5e7)."""
    max_live_parameters: int = 1_000_000_000
    """DeepSpeed stage3_max_live_parameters (elements; default 1e9; 0 = no prefetching, as axolotl's ZeRO-3
    configs set)."""
    max_reuse_distance: int = 1_000_000_000
    """DeepSpeed stage3_max_reuse_distance (elements; default 1e9, deepspeed/runtime/zero/config.py at 0.19.8): a
    ZeRO-3 parameter the trace uses again within this many elements stays gathered (`planner/zero3_trace.py`);
    0 = released after each use, as axolotl's ZeRO-3 configs set."""
    ds_auto_buckets: bool = True
    """ZeRO-3's reduce_bucket_size and stage3_prefetch_bucket_size are "auto" in the DeepSpeed JSON, which the
    HF Trainer fills with hidden² and 0.9·hidden² (the ZeRO-3 configs LLaMA-Factory, ms-swift and axolotl
    ship); reduce_bucket_elements and prefetch_bucket_elements then apply to ZeRO-1/2 only."""
    ds_overlap_comm: bool = True
    """DeepSpeed overlap_comm: ZeRO-1/2 allocate a second reduce bucket to reduce one while filling the other
    (swiftplan's DeepSpeed JSON sets it; DeepSpeed's own default is on for ZeRO-3 only)."""
    ckpt_every: int = 1
    """Selective activation checkpointing: every k-th decoder block is checkpointed, the others keep their
    saved tensors (transformers every_n_layers, torchtune ac_mode selective + ac_option k); 1 = every block
    (needs grad_ckpt)."""
    ckpt_position: CkptPosition = "first"
    """Which block of each k is checkpointed: first (transformers every_n_layers: blocks 0, k, 2k, ...) or
    last (torchtune ac_option: blocks k-1, 2k-1, ...)."""
    activation_offload: bool = False
    """Saved activations are moved to host RAM in forward and brought back in backward (torchtune
    enable_activation_offloading, Unsloth's offloaded checkpointing, TRL activation_offloading)."""
    fsdp_cpu_offload: bool = False
    """FSDP keeps parameters, gradients and optimizer state on the host and steps on the CPU; the device
    holds only the gathered unit(s) (FSDP CPUOffload(offload_params=True) / CPUOffloadPolicy)."""
    float8: bool = False
    """torchao Float8Linear training: bf16 weights cast to fp8 for each matmul, dynamic tensorwise
    scales (torchtune enable_fp8_training); FSDP2 gathers the weights in fp8."""
    adapter_dtype: AdapterDtype = "fp32"
    """LoRA A/B (and DoRA magnitude) dtype: fp32 (peft's get_peft_model(autocast_adapter_dtype=True)
    upcasts bf16/fp16 adapters, and each wrapped Linear casts its input to fp32), or model: the base
    layer's dtype, with no input cast (autocast_adapter_dtype=False; torchtune's LoRALinear built under
    the recipe's default dtype), or kbit-bf16: peft's fp32, except that on a bitsandbytes 4-bit or int8 base
    every trainable parameter (adapters and modules_to_save copies) is cast to bf16 after get_peft_model, as
    each TRL 1.16 trainer does (`dtypes.adapter_dtype`); TRL leaves DoRA's magnitude (out_features per wrapped
    Linear) in fp32, which the planner counts with the bf16 adapters (a few KiB per block). Gradients and AdamW
    moments follow the adapters."""
    padding: Padding = "longest"
    """How unpacked samples of different lengths are batched (`planner/padding.py`), which decides whether attention
    sees a padding mask and how many tensor shapes the allocator sees: max_length pads every row to seq_len (one
    shape, a short sample padded even alone in its micro-batch: axolotl's pad_to_sequence_len); multiple pads each
    micro-batch to its longest sample rounded up to a multiple (LLaMA-Factory 8, axolotl 64: a lone sample padded
    too); longest pads each micro-batch to its longest sample (swiftplan's executor, TRL, ms-swift, transformers'
    collators: one sequence never is); unmasked gives the model no padding mask (torchtune's own attention, Unsloth's padding-free batches)."""
    keep_output: bool = False
    """The training loop holds the model output (its logits) until backward ends: a plain loop's
    `outputs = model(**batch); outputs.loss.backward()` (transformers' run_clm_no_trainer.py example), where
    the HF Trainer's compute_loss drops it. Adds the logits tensor to the loss peak (full losses only)."""
    expandable_segments: bool = False
    """The caching allocator runs with expandable_segments:True (PYTORCH_ALLOC_CONF, PYTORCH_CUDA_ALLOC_CONF before
    torch 2.10): one growing segment per pool, so peak reserved carries less fragmentation (`planner/allocator.py`).
    The launch sets the variable."""

    def __post_init__(self) -> None:
        _check_choice("loss implementation", self.loss, LOSS_IMPLS)
        _check_choice("LoRA adapter dtype", self.adapter_dtype, ADAPTER_DTYPES)
        _check_choice("optimizer implementation", self.optimizer_impl, OPTIMIZER_IMPLS)
        _check_choice("FSDP version", self.fsdp, FSDPS)
        _check_choice("FSDP sharding", self.fsdp_sharding, FSDP_SHARDINGS)
        _check_choice("checkpointed block position", self.ckpt_position, CKPT_POSITIONS)
        _check_choice("padding", self.padding, PADDINGS)
        for module in self.modules_to_save:
            _check_choice("module to save", module, SAVED_MODULES)
        if len(set(self.modules_to_save)) != len(self.modules_to_save):
            raise SwiftplanError(f"--modules-to-save names a module twice: {','.join(self.modules_to_save)}.")
        if not isinstance(self.loss_chunks, int) or self.loss_chunks <= 0:
            raise SwiftplanError(f"--loss-chunks must be a positive integer, got {self.loss_chunks!r}.")
        if not isinstance(self.loss_chunk_tokens, int) or self.loss_chunk_tokens < 0:
            raise SwiftplanError(
                f"--loss-chunk-tokens must be 0 (Liger's rule) or positive, got {self.loss_chunk_tokens!r}."
            )
        if not isinstance(self.ckpt_every, int) or isinstance(self.ckpt_every, bool) or self.ckpt_every < 1:
            raise SwiftplanError(
                f"--ckpt-every must be a positive integer (1 = every block), got {self.ckpt_every!r}."
            )
        if not isinstance(self.fsdp_shard_group, int) or self.fsdp_shard_group < 0:
            raise SwiftplanError(
                f"--fsdp-shard-group must be 0 or a positive integer, got {self.fsdp_shard_group!r}."
            )
        for kind, value in (("reduce bucket", self.reduce_bucket_elements),
                            ("prefetch bucket", self.prefetch_bucket_elements),
                            ("max live parameters", self.max_live_parameters),
                            ("max reuse distance", self.max_reuse_distance)):  # fmt: skip
            if not isinstance(value, int) or value < 0:
                raise SwiftplanError(
                    f"DeepSpeed {kind} must be a non-negative number of elements, got {value!r}."
                )

    @property
    def fsdp_stage(self) -> ZeroStage:
        """The ZeRO stage FSDP's sharding matches (0 without FSDP)."""
        if self.fsdp == "none":
            return 0
        return 2 if self.fsdp_sharding == "shard_grad_op" else 3


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSetup:
    """A fine-tuning configuration to size: method, numerics, batch shape and parallelism."""

    method: Method = "lora"
    """full fine-tuning, LoRA on a full-precision base, or QLoRA on a 4-bit base."""
    precision: Precision = "bf16"
    """bf16/fp16/fp32: model and states in that dtype. amp-*: fp32 model, autocast compute."""
    quant: Quant = "none"
    """Base-weight quantization (QLoRA defaults to nf4)."""
    double_quant: bool = True
    """bitsandbytes double quantization of the 4-bit absmax constants."""
    lora: LoraSetup | None = None
    """Adapter shape; required for lora/qlora, ignored for full."""
    optimizer: Optimizer = "adamw"
    """Optimizer whose state is kept per trainable parameter."""
    micro_batch: int = 1
    """Sequences per device per forward pass."""
    seq_len: int = 2048
    """Tokens per sequence (padded or packed length)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    grad_ckpt: bool = True
    """Activation (gradient) checkpointing: keep only block inputs, recompute in backward."""
    attention: AttentionImpl = "sdpa"
    """Attention kernel: sdpa/flash keep no attention matrix; eager keeps b×heads×s×s."""
    variable_lengths: bool = False
    """The samples differ in length and are not packed (estimate --variable-lengths, fit --data/--lengths without
    --packing): with the runtime's padding (RuntimeKnobs.padding) some micro-batches carry padding."""
    kbit_upcast: bool = False
    """k-bit base prepared with peft's prepare_model_for_kbit_training (TRL and most QLoRA scripts):
    every non-quantized parameter (embeddings, LM head, norms, unquantized experts) is cast to fp32,
    which makes the residual stream and the block activations fp32. swiftplan train does not do this
    unless the plan asks for it."""
    parallel: Parallelism = field(default_factory=Parallelism)
    """Tensor/pipeline/ZeRO settings."""
    runtime: RuntimeKnobs = field(default_factory=RuntimeKnobs)
    """The runtime's loss kernel, optimizer implementation, trained modules and sharding (profiles/runtimes)."""
    objective: ObjectiveSetup = SFT
    """What is optimized: SFT, a preference method, reward modelling or RL with rollouts (planner/objective.py)."""
    vision: VisionInputs | None = None
    """Vision-language models: images/video per sample and whether the tower and aligner train (planner/vision.py)."""

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("quantization", self.quant, QUANTS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_positive("Micro-batch (--batch)", self.micro_batch)
        _check_positive("Sequence length (--seq)", self.seq_len)
        _check_positive("Gradient accumulation", self.grad_accum)
        if self.method in ("lora", "qlora") and self.lora is None:
            object.__setattr__(self, "lora", LoraSetup())
        if self.method == "qlora":
            if self.quant == "none":
                object.__setattr__(self, "quant", "nf4")
            if self.quant not in _QLORA_QUANTS:
                raise SwiftplanError(
                    f"QLoRA uses a 4-bit base (bitsandbytes nf4 or fp4, or torchao nf4-torchao), not --quant {self.quant}.",
                    hint="Use --method lora for LoRA on an int8/GPTQ/AWQ/fp8 base.",
                )
            if self.precision in ("fp32", "amp-bf16", "amp-fp16"):
                raise SwiftplanError(
                    f"QLoRA computes in bf16 or fp16 on a 4-bit base; --precision {self.precision} is not a QLoRA set-up.",
                    hint="Use --precision bf16 (or fp16 on GPUs without bf16).",
                )
        elif self.method == "lora" and self.quant not in _LORA_BASE_QUANTS:
            raise SwiftplanError(
                f"--quant {self.quant} with --method lora is QLoRA.",
                hint="Use --method qlora for a 4-bit base.",
            )
        elif self.method == "full" and self.quant != "none":
            raise SwiftplanError(
                f"Full fine-tuning cannot update quantized weights (--quant {self.quant}).",
                hint="Use --method lora or qlora on a quantized base, or --quant none.",
            )
        if self.kbit_upcast and self.quant not in ("nf4", "fp4", "int8"):
            raise SwiftplanError(
                "--kbit-upcast describes peft's preparation of a bitsandbytes base (nf4, fp4 or int8); "
                f"this set-up has --quant {self.quant}."
            )
        self._check_runtime()
        rollout = self.objective.rollout
        if rollout is not None and self.seq_len != rollout.seq_len:
            raise SwiftplanError(
                f"A {self.objective.kind} sequence is its prompt and completion: --seq {self.seq_len} differs from "
                f"--prompt-len {rollout.prompt_len} + --completion-len {rollout.completion_len} = {rollout.seq_len}.",
                hint="Give --prompt-len and --completion-len and leave --seq out.",
            )
        if self.objective.kind != "sft" and self.objective.prompt_len >= self.seq_len:
            raise SwiftplanError(
                f"--prompt-len {self.objective.prompt_len} leaves no response tokens in --seq {self.seq_len}."
            )
        if self.parallel.zero == 3 and not zero3_shards(self.quant, self.parallel.offload):
            self._refuse_zero3()

    def _refuse_zero3(self) -> None:
        """Why ZeRO-3 cannot shard this base (`zero3_shards` is false): its quantization, or parameter offload."""
        if self.quant not in ZERO3_QUANTS:
            raise SwiftplanError(
                f"DeepSpeed ZeRO-3 partitions 16/32-bit weights, or a bitsandbytes 4-bit base stored in the compute "
                f"dtype (bnb_4bit_quant_storage); a --quant {self.quant} base cannot be partitioned.",
                hint="Use --quant nf4 or fp4 with ZeRO-3, ZeRO 0–2 with this base, or --quant none.",
            )
        raise SwiftplanError(
            f"ZeRO-3 offloading the parameters of a --quant {self.quant} base to the host is not modelled: "
            "no recipe documents it (peft's ZeRO-3 QLoRA guide offloads nothing), and DeepSpeed would move "
            "the packed 4-bit partitions while bitsandbytes keeps their constants on the device.",
            hint="Use --offload optimizer (or none) with ZeRO-3 over a 4-bit base, or --quant none.",
        )

    def _check_runtime(self) -> None:
        knobs = self.runtime
        if knobs.fsdp != "none":
            if self.parallel.zero or self.parallel.offload != "none":
                raise SwiftplanError(
                    f"FSDP ({knobs.fsdp}) shards instead of DeepSpeed ZeRO; --zero {self.parallel.zero} "
                    f"--offload {self.parallel.offload} cannot apply with it.",
                    hint="Leave --zero 0 and --offload none with --fsdp, and pick --fsdp-sharding.",
                )
            if self.quant not in ("none", "nf4", "fp4", "nf4-torchao"):
                raise SwiftplanError(
                    "FSDP shards bitsandbytes 4-bit bases (bnb_4bit_quant_storage), torchao NF4 bases or unquantized "
                    f"ones, not --quant {self.quant}."
                )
        if knobs.modules_to_save and not self.trains_adapters:
            raise SwiftplanError(
                "--modules-to-save trains embeddings/LM head next to LoRA adapters; full fine-tuning trains them already."
            )
        if (
            knobs.adapter_dtype == "model"
            and self.trains_adapters
            and self.quant in ("int8", "gptq", "awq", "fp8")
        ):
            raise SwiftplanError(
                f"--adapter-dtype model keeps LoRA adapters in their base layer's dtype, which peft reads from an "
                f"unquantized weight or a 4-bit base's compute dtype; a --quant {self.quant} base has neither "
                "(peft leaves int8/GPTQ/AWQ adapters in fp32 and would give fp8 ones fp8).",
                hint="Use --adapter-dtype fp32 with this base, or --quant none, nf4, fp4 or nf4-torchao.",
            )
        if knobs.optimizer_in_backward and self.grad_accum > 1:
            raise SwiftplanError(
                "The optimizer step fused into backward frees each gradient at once, so it cannot accumulate "
                f"{self.grad_accum} micro-batches.",
                hint="Use --grad-accum 1 with --optimizer-in-backward.",
            )
        from swiftplan.planner.runtime_features import check_features

        check_features(self)

    @property
    def trains_adapters(self) -> bool:
        """LoRA or QLoRA: only adapter weights receive gradients."""
        return self.method in ("lora", "qlora")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeSetup:
    """An inference-serving configuration to size (vLLM-style paged KV cache)."""

    dtype: ServeDtype = "bf16"
    """Compute/activation dtype; unquantized weights are stored in it."""
    quant: Quant = "none"
    """Weight quantization."""
    kv_dtype: KvDtype = "auto"
    """KV-cache dtype: auto = the compute dtype, fp8 = 1 byte per element."""
    context: int = 4096
    """Tokens per sequence (prompt + generated) the server must hold."""
    concurrency: int = 1
    """Sequences decoded at once."""
    prefill_chunk: int = 2048
    """Tokens processed per prefill step (vLLM max_num_batched_tokens)."""
    tp: int = 1
    """Tensor-parallel degree."""
    gpu_memory_utilization: float = 0.9
    """Fraction of device memory the engine may use (vLLM's knob)."""
    max_loras: int = 0
    """LoRA adapters resident at once (multi-LoRA serving)."""
    max_lora_rank: int = 16
    """Rank the LoRA slots are sized for."""
    vision: VisionInputs | None = None
    """Vision-language models: images/video per request, sizing vLLM's encoder cache (planner/vision.py)."""
    runtime: ServeRuntime = "vllm"
    """Serving engine (--runtime): sets the fixed host cost of each decode step (speed.decode_step_overhead_s)."""
    eager: bool = False
    """Decode steps run without CUDA graphs, every kernel launched from the host (vLLM --enforce-eager,
    SGLang --cuda-graph-backend-decode disabled, LMDeploy --eager-mode): no CUDA-graph pool comes off the KV
    budget, and a step takes at least the host's launch time (speed.decode_host_launch_s)."""
    graph_max_context: int = 0
    """Longest context a captured decode graph covers; a sequence past it decodes eagerly, though the graphs
    are still captured (vLLM's V0 engine, before 0.8 and with VLLM_USE_V1=0 up to 0.10: --max-seq-len-to-capture,
    --max-context-len-to-capture before 0.5, default 8192). 0: no limit (the V1 engine chooses graphs by
    batch size only). Not a flag of the engines planned today; published rows of the V0 era set it."""

    @property
    def decodes_eagerly(self) -> bool:
        """Whether the decode steps run without CUDA graphs: eager mode, or a context past `graph_max_context`
        (charged at the full context, the step a sequence reaches last)."""
        return self.eager or 0 < self.graph_max_context < self.context

    def __post_init__(self) -> None:
        _check_choice("quantization", self.quant, QUANTS)
        _check_choice("serving runtime", self.runtime, SERVE_RUNTIMES)
        _check_positive("Context length (--context)", self.context)
        _check_positive("Concurrency (--concurrency)", self.concurrency)
        _check_positive("Prefill chunk", self.prefill_chunk)
        _check_positive("Tensor-parallel degree (--tp)", self.tp)
        if self.graph_max_context < 0:
            raise SwiftplanError(
                f"graph_max_context must be 0 (no limit) or positive, got {self.graph_max_context}."
            )
        if not 0.05 <= self.gpu_memory_utilization <= 1.0:
            raise SwiftplanError(
                f"--gpu-memory-utilization must be between 0.05 and 1.0, got {self.gpu_memory_utilization}."
            )
        if self.kv_dtype not in ("auto", "fp8"):
            raise SwiftplanError(f"Unknown KV-cache dtype {self.kv_dtype!r}; valid values are: auto, fp8.")
        if self.quant == "nf4-torchao":
            raise SwiftplanError(
                "--quant nf4-torchao is torchtune's QLoRA training base (torchao NF4Tensor); no serving engine "
                "loads it: serve with --quant nf4 (bitsandbytes) or the merged 16-bit model."
            )
