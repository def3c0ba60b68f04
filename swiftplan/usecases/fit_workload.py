"""The workload a fit plans for, built from its request: the data's tokens and per-sample lengths (--data,
--lengths, --dataset-tokens), the image tokens each sequence carries, a default global batch rounded to split
over the training GPUs and GRPO's into whole prompts, and the notes saying what was counted or assumed; for
serving, the context, load and latency targets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.lengths import LengthStats, rows_per_epoch
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.vision_tokens import language_tokens
from swiftplan.planner.workload import ServeWorkload, TrainWorkload
from swiftplan.units import format_gib
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_request import FitRequest
from swiftplan.usecases.fit_vision import vision_note


def _length_stats(request: FitRequest, spec: ModelSpec, model: str, notes: list[str]) -> LengthStats | None:
    """Per-sample lengths from --data or --lengths, against --seq (training only); empty samples are left out,
    with a note."""
    if request.task != "train" or (request.data is None and request.lengths is None):
        return None
    if request.dataset_tokens is not None:
        raise SwiftplanError("Pass either --dataset-tokens or --data/--lengths, not both.")
    from swiftplan.planner.lengths import length_stats

    counted = inputs.sample_lengths(
        request.data, request.lengths, model, max_positions=spec.max_position_embeddings,
        task=request.training.kind,
    )  # fmt: skip
    exact = not counted.method.startswith("approximation")
    if counted.skipped:
        notes.append(f"{request.data or request.lengths}: {counted.skipped:,} empty sample(s) (0 tokens) skipped; "
                     f"planned on the other {len(counted.lengths):,}.")  # fmt: skip
    return length_stats(counted.lengths, request.seq_len, counted.method, exact=exact)


def _workload(
    request: FitRequest, spec: ModelSpec, model: str, notes: list[str], host: tuple[int, str],
    lengths: LengthStats | None = None, *, padding: str = "max_length",
) -> Any:  # fmt: skip
    if request.task == "serve":
        if (
            request.concurrency is None
            and request.ttft_s is None
            and request.decode_tps is None
            and request.goal == "throughput"
        ):
            notes.append("no --concurrency or latency target: each replica takes as many sequences as fit, which maximises "
                         "throughput at the cost of time to first token; pass --ttft / --decode-tps to bound it.")  # fmt: skip
        if request.pins.quants is None:
            notes.append(
                "weights searched in 16-bit or fp8; pass --quant none,fp8,int8,nf4 to allow bitsandbytes formats."
            )
        if request.vision is not None:
            notes.append(vision_note(spec, request.vision, serving=True))
        return ServeWorkload(context=request.context, concurrency=request.concurrency, ttft_s=request.ttft_s,
                             decode_tps=request.decode_tps, gpu_memory_utilization=request.gpu_memory_utilization,
                             eager=request.eager, vision=request.vision)  # fmt: skip
    seq = request.seq_len
    if lengths is None:
        tokens, source = inputs.dataset_tokens(
            request.dataset_tokens, request.data, model, max_positions=spec.max_position_embeddings
        )
    else:
        from swiftplan.planner.lengths import describe, memory_seq_len, trained_tokens

        # packed rows, or rows padded to --seq (--padding max_length), are all --seq long
        tokens, seq = (
            trained_tokens(lengths, request.packing),
            memory_seq_len(lengths, request.packing or padding == "max_length"),
        )
        source = f"{request.data or request.lengths}: {lengths.samples:,} samples, {lengths.method}"
        if tokens < lengths.total_tokens:
            source += f"; {lengths.total_tokens:,} before truncation at --seq {request.seq_len:,}"
        if (
            per_sample := request.training.sequences_per_example
        ) > 1:  # chosen and rejected, each padded to the pair's longer
            tokens *= per_sample
            source += f"; × {per_sample} sequences per pair (chosen and rejected)"
    sequences = -(-tokens // seq) if lengths is None else rows_per_epoch(lengths, request.packing)
    per_sequence = language_tokens(spec, request.vision)
    image_tokens = per_sequence * sequences
    text = f"{tokens:,} tokens" if request.vision is None else (
        f"{tokens:,} text tokens + {image_tokens:,} image tokens ({per_sequence:,} in each of {sequences:,} sequences)"
    )  # fmt: skip
    notes.append(
        f"workload: {text} × {request.epochs:g} epoch(s) ({source}), global batch "
        f"{request.global_batch} × {seq} tokens; host RAM for offload {format_gib(host[0], 0)} per node ({host[1]})."
    )
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=False))
    if lengths is not None:
        notes.append(
            describe(lengths, request.packing, request.global_batch, padded_to_seq=padding == "max_length")
        )
        if seq < request.seq_len:
            notes.append(
                f"sized on the worst batch: no sample is longer than {seq:,} tokens"
                f"{'' if lengths.exact else ' (approximate lengths, with a 25% margin)'}, and batches are padded to "
                f"their longest sample, so memory is planned at --seq {seq:,} instead of {request.seq_len:,}; "
                "pass --packing to plan full sequences."
            )
    if sequences < request.global_batch and (lengths is not None or request.training.rollout is None):
        # (a rollout's step against the run is _rollout_batch's to judge)
        if lengths is None:
            holds = f"{tokens:,} tokens fill {sequences:,} sequence(s) of {seq:,}"
        else:
            holds = f"the data holds {sequences:,} {'packed row(s)' if request.packing else 'sample(s)'}"
        notes.append(
            f"{holds}, fewer than one global batch of {request.global_batch}: each epoch is a single partial step of "
            f"{sequences:,} sequence(s), and time and cost count those; --global-batch {sequences} would plan the "
            "step as it runs."
        )
    return TrainWorkload(seq_len=seq, global_batch=request.global_batch, dataset_tokens=tokens,
                         dataset_image_tokens=image_tokens, epochs=request.epochs, attention=request.attention,
                         variable_lengths=request.samples_vary, vision=request.vision, dora=request.dora)  # fmt: skip


def _rollout_batch(request: FitRequest, notes: list[str]) -> FitRequest:
    """GRPO's global batch in whole prompts: rounded up to a multiple of --num-generations (TRL requires the
    generation batch to divide by it, trl 1.16 trainer/grpo_config.py:480), with a note naming both numbers; a
    step larger than the whole run (a single prompt's completions outnumbering the data) is refused."""
    from swiftplan.planner.objective import whole_prompts

    rollout, kind = request.training.rollout, request.training.kind
    if rollout is None:
        return request
    batch = request.global_batch
    if kind == "grpo" and batch % rollout.num_generations and "global_batch" in request.typed:
        # (a default batch was rounded with the cluster's GPUs already, `_split_default_batch`)
        batch = whole_prompts(batch, rollout.num_generations)
        notes.append(f"--task grpo: --global-batch {request.global_batch} completions rounded up to {batch}, whole "
                     f"prompts of --num-generations {rollout.num_generations} each (TRL requires the generation batch "
                     f"to divide by it); pass --global-batch as a multiple of {rollout.num_generations} to choose it.")  # fmt: skip
    step = batch * rollout.seq_len
    run = (request.dataset_tokens or inputs.DEFAULT_DATASET_TOKENS) * request.epochs
    if step > run and not {"global_batch", "num_generations"} & request.typed:
        notes.append(f"--task {kind}: one step of {batch:,} completions × {rollout.seq_len:,} tokens is more than the "
                     f"whole run's {run:,.0f} tokens: give --dataset-tokens the tokens the run trains.")  # fmt: skip
    elif step > run:
        raise SwiftplanError(
            f"--task {kind}: one step of {batch:,} completions × {rollout.seq_len:,} tokens (--global-batch, "
            f"--num-generations {rollout.num_generations}, prompt + completion) is {step:,} tokens, more than the whole "
            f"run's {run:,.0f}.",
            hint="Lower --num-generations (TRL's default is 8; DeepSeekMath's GRPO sampled 64 per question, "
            "arXiv:2402.03300) or --global-batch, or raise --dataset-tokens to the tokens the run trains.",
        )
    return replace(request, global_batch=batch)


def _split_default_batch(request: FitRequest, ranks: int, notes: list[str]) -> FitRequest:
    """A global batch the user did not type, rounded up so that every layout of the `ranks` training GPUs splits it
    (micro-batch × accumulation × dp = global batch), with a note; a typed one is kept, and layouts it does not
    split are not searched (`batch_layouts`)."""
    if "global_batch" in request.typed:
        return request
    from swiftplan.planner.objective import step_generations
    from swiftplan.planner.search.space_batch import split_global_batch

    batch = split_global_batch(request.global_batch, ranks, pins=request.pins, objective=request.training)
    generations = step_generations(request.training)
    if batch == request.global_batch:
        return request
    prompts = (
        f" in whole prompts of --num-generations {generations} (TRL requires it)" if generations > 1 else ""
    )
    notes.append(f"global batch {request.global_batch} (the default) rounded up to {batch} so that it splits over all "
                 f"{ranks} training GPUs (micro-batch × accumulation × data-parallel ranks){prompts}; pass "
                 f"--global-batch to choose it.")  # fmt: skip
    return replace(request, global_batch=batch)
