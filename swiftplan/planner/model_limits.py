"""Set-up values that must fit the model: a sequence no longer than its positions, a LoRA rank no larger
than the matrices it adapts. Pure; the use cases and the train executor call it before estimating."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import targeted_linears, validate_targets
from swiftplan.planner.dora import check_dora
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.pins import attention_targets
from swiftplan.planner.setup import ALL_LINEAR, LoraSetup, ServeSetup, TrainSetup
from swiftplan.planner.vision_tokens import language_tokens


def length_problem(spec: ModelSpec, tokens: int, what: str) -> str | None:
    """Why a sequence (--seq, --context, a plan's seq_len) is longer than the model reads (its
    max_position_embeddings, stretched by rope_scaling), or None when it is not."""
    limit = spec.max_position_embeddings
    if tokens <= limit:
        return None
    return (
        f"{what} {tokens:,} is longer than the {limit:,} positions {spec.name} reads "
        f"(max_position_embeddings in its config): use {limit:,} tokens or fewer, or a config whose "
        "rope_scaling extends the context."
    )


def check_length(spec: ModelSpec, tokens: int, what: str) -> None:
    """Refuse a sequence longer than the model reads (see `length_problem`)."""
    if problem := length_problem(spec, tokens, what):
        raise SwiftplanError(problem)


def _target_sets(spec: ModelSpec, targets: tuple[str, ...] | None) -> list[LoraSetup]:
    """The adapter target lists a request may use: each --target key (all-linear, attention, or a
    comma-separated module list); all-linear when none is given."""
    out = []
    for key in targets or (ALL_LINEAR,):
        names = attention_targets(spec) if key == "attention" else tuple(key.split(","))
        out.append(LoraSetup(targets=names))
    return out


def rank_limit(spec: ModelSpec, targets: tuple[str, ...] | None) -> tuple[int, str]:
    """(largest useful LoRA rank, the matrix that sets it): the largest min(in, out) of the matrices the
    targets adapt. peft accepts a rank above one matrix's smaller side (a MoE router's 8 outputs, say) and
    the adapter is merely over-parametrised there; above every matrix's, the rank buys nothing at all."""
    best = (0, "")
    for lora in _target_sets(spec, targets):
        for lin in (lin for i in {0, spec.num_layers - 1} for lin in targeted_linears(spec, lora, i)):
            limit = min(lin.in_features, lin.out_features)
            if limit > best[0]:
                best = (limit, f"{lin.name} ({lin.in_features} × {lin.out_features})")
    return best


def check_rank(spec: ModelSpec, rank: int, targets: tuple[str, ...] | None, what: str = "LoRA rank") -> None:
    """Refuse a LoRA rank above `rank_limit`."""
    limit, matrix = rank_limit(spec, targets)
    if matrix and rank > limit:
        raise SwiftplanError(
            f"{what} {rank:,} is larger than every matrix it adapts in {spec.name}: the widest, {matrix}, "
            f"has rank at most {limit:,}, so the rank can be at most {limit:,}.",
            hint=f"Use a rank of {limit:,} or less (typical values are 8–128), or target other modules.",
        )


def check_ckpt_every(spec: ModelSpec, every: int, prefix: str = "") -> None:
    """Refuse checkpointing every k-th block for a k past the model's blocks (no block would be checkpointed)."""
    if every > spec.num_layers:
        raise SwiftplanError(
            f"{prefix}--ckpt-every {every} is more than the model's {spec.num_layers} blocks, so no block would be "
            "checkpointed as asked.",
            hint=f"Use --ckpt-every between 1 and {spec.num_layers}, or --no-grad-ckpt to checkpoint none.",
        )


def check_setup(
    spec: ModelSpec, setup: TrainSetup | ServeSetup, where: str = "", *, refuse_length: bool = False
) -> tuple[str, ...]:
    """A set-up against the model: a LoRA rank too large for its matrices is refused; a sequence longer
    than its positions is returned as a warning (planning past them is the user's call: they may stretch
    RoPE at run time), or refused with `refuse_length` (before a run). `where` prefixes messages."""
    prefix = f"{where}: " if where else ""
    images = 0 if isinstance(setup, ServeSetup) else language_tokens(spec, setup.vision)
    length = setup.context if isinstance(setup, ServeSetup) else setup.seq_len + images
    problem = length_problem(spec, length, "Context" if isinstance(setup, ServeSetup) else "Sequence length")
    if problem and images:
        problem += (f" It holds {length - images:,} text tokens and {images:,} image and video tokens: fewer or "
                    "smaller images (--images-per-sample, --image-size, --video-frames) shorten it.")  # fmt: skip
    if problem and refuse_length:
        raise SwiftplanError(prefix + problem)
    if isinstance(setup, TrainSetup):
        check_ckpt_every(spec, setup.runtime.ckpt_every, prefix)
    if isinstance(setup, TrainSetup) and setup.trains_adapters and setup.lora is not None:
        targets = None if setup.lora.all_linear else (",".join(setup.lora.targets),)
        try:
            check_rank(spec, setup.lora.rank, targets)
            check_dora(spec, setup.lora)
        except SwiftplanError as error:
            raise SwiftplanError(prefix + error.message, hint=error.hint) from error
    return () if problem is None else (f"warning: {prefix}{problem}",)


def check_plan_shape(spec: ModelSpec, setup: TrainSetup | ServeSetup, where: str) -> None:
    """What estimate refuses for typed options, refused in a (hand-edited) plan file before a run or a dry run
    prints its launch: a tensor-parallel degree that does not split the model's heads (vLLM and Megatron refuse
    it) and LoRA targets that name no module of the model (peft raises on them). `where` names the file."""
    tp, name = (
        (setup.tp, "serve.tp") if isinstance(setup, ServeSetup) else (setup.parallel.tp, "train.parallel.tp")
    )
    heads, kv_heads = spec.num_heads, spec.num_kv_heads
    if heads % tp or (kv_heads % tp and tp % kv_heads):
        valid = [d for d in range(1, heads + 1) if heads % d == 0 and not (kv_heads % d and d % kv_heads)]
        raise SwiftplanError(
            f"{where}: {name} {tp} does not split {spec.name}'s {heads} attention heads and {kv_heads} key/value "
            f"heads evenly over {tp} GPUs; valid tensor-parallel degrees: {', '.join(map(str, valid))}.",
            hint="Re-create the plan with swiftplan fit (it picks a valid --tp), or edit the plan's tp and layout "
            "together.",
        )
    if isinstance(setup, TrainSetup) and setup.trains_adapters and setup.lora is not None:
        try:
            validate_targets(spec, setup.lora)
        except SwiftplanError as error:
            raise SwiftplanError(f"{where}: train.lora.targets: {error.message}", hint=error.hint) from error
