"""What a failed run's log says by itself: the headline (what ran out, by how much, when) and the changes the
message points at, which the estimator did not check (`Remedy` with source 'log'); `_size` writes the byte
amounts every doctor sentence uses. The doctor use case (usecases/doctor.py) puts these in its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from swiftplan.planner.failure_log import KIND_TEXT, PHASE_TEXT, Finding
from swiftplan.units import KiB, MiB, format_gib

RemedySource = Literal["fit", "log"]

_ALLOC_ENV = {
    "cuda": "PYTORCH_CUDA_ALLOC_CONF",
    "rocm": "PYTORCH_HIP_ALLOC_CONF",
    "npu": "PYTORCH_NPU_ALLOC_CONF",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Remedy:
    """One change, and whether the estimator checked it."""

    change: str
    """Short name: 'micro-batch', 'expandable_segments', '--max-model-len', …"""
    text: str
    """One sentence for the user."""
    source: RemedySource
    """'fit': a plan the estimator checked against the measured shortfall; 'log': read from the message."""


def _amount(finding: Finding) -> str:
    f = finding
    if f.kind == "device_memory":
        where = f" on {f.device}" if f.device else ""
        parts = []
        if f.requested_bytes is not None:
            parts.append(f"asked for {_size(f.requested_bytes)}")
        if f.free_bytes is not None:
            parts.append(f"{_size(f.free_bytes)} free")
        if f.total_bytes is not None:
            parts.append(f"of {_size(f.total_bytes)}{' allowed' if f.backend == 'mps' else ''}")
        detail = (" (" + ", ".join(parts) + f"{where})") if parts else where
        if f.shortfall_bytes:
            return f"short by {_size(f.shortfall_bytes)}{detail}"
        if f.shortfall_bytes is None:  # a cut-off or garbled message: it does not say what was free
            return f"the message does not say how much was free{detail}"
        return f"the allocation failed with enough memory free{detail}"
    if f.kind == "kv_cache" and f.tokens_needed is not None:
        more = f", about {_size(f.shortfall_bytes)} more KV cache" if f.shortfall_bytes else ""
        return f"{f.tokens_needed:,} tokens asked, {f.tokens_available:,} fit{more}"
    if f.kind == "kv_cache" and "max seq len" in f.line:  # the counts were garbled
        return "the model length asked for is more than the cache holds"
    if f.kind == "kv_cache":
        return "nothing left for it after the weights and the profiling run"
    if f.kind == "host_memory":
        rss = f" (the killed process held {_size(f.process_rss_bytes)})" if f.process_rss_bytes else ""
        return f"the kernel killed the process{rss}"
    if f.kind == "nccl":
        op = f" {f.operation}" if f.operation else " collective"
        article = "an" if f.operation and f.operation[:1].upper() in "AEIOU_" else "a"
        return (
            f"{article}{op} waited past its {f.timeout_s:g} s timeout"
            if f.timeout_s
            else f"{article}{op} timed out"
        )
    return "the disk filled up"


def _size(num_bytes: int) -> str:
    if num_bytes >= 100 * MiB:
        return format_gib(num_bytes, 2)
    return (
        f"{num_bytes / MiB:.0f} MiB" if num_bytes >= MiB or num_bytes == 0 else f"{num_bytes / KiB:.0f} KiB"
    )


def headline(finding: Finding) -> str:
    """'device memory ran out during the optimizer step: short by 0.99 GiB (…)'."""
    if finding.kind == "nccl":
        return f"an NCCL collective timed out ({PHASE_TEXT[finding.phase]}): {_amount(finding)}."
    return f"{KIND_TEXT[finding.kind]} ran out during {PHASE_TEXT[finding.phase]}: {_amount(finding)}."


def _fragmentation(finding: Finding) -> Remedy | None:
    """expandable_segments when the allocator held a lot it could not hand out."""
    unallocated = finding.reserved_unallocated_bytes
    if finding.backend not in _ALLOC_ENV or not unallocated:
        return None
    large = unallocated >= 512 * MiB and (
        unallocated >= (finding.shortfall_bytes or 0) or unallocated >= 0.05 * (finding.total_bytes or 0)
    )
    if not large:
        return None
    env = _ALLOC_ENV[finding.backend]
    return Remedy(change="expandable_segments", source="log",
                  text=f"{env}=expandable_segments:True: the allocator held {_size(unallocated)} reserved but "
                       f"unallocated (fragmentation), "
                       f"{'more than' if unallocated >= (finding.shortfall_bytes or 0) else 'part of'} the shortfall.")  # fmt: skip


def _log_remedies(finding: Finding) -> list[Remedy]:
    """Changes the message itself points at (not checked by the estimator)."""
    f, out = finding, []
    if f.kind == "device_memory":
        if (frag := _fragmentation(f)) is not None:
            out.append(frag)
        if f.requested_bytes and f.total_bytes and f.requested_bytes > f.total_bytes:
            out.append(Remedy(change="one tensor larger than the device", source="log",
                              text=f"one allocation ({_size(f.requested_bytes)}) is larger than the device reports "
                                   f"({_size(f.total_bytes)}): on unified-memory parts raise the GPU carve-out; "
                                   "otherwise shard that tensor (tensor parallel) or shorten the sequence."))  # fmt: skip
        elif f.shortfall_bytes == 0 and f.free_bytes:
            out.append(Remedy(change="fragmentation or a cap", source="log",
                              text=f"{_size(f.free_bytes)} was free yet the allocation failed: fragmentation, a "
                                   "per-process memory fraction, or another process grabbing memory at the same time."))  # fmt: skip
        if f.backend == "mps":
            out.append(Remedy(change="MPS watermark", source="log",
                              text="the MPS allocator stops at its high watermark (max allowed): lower micro-batch or "
                                   "sequence; PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 lifts the cap at the risk of swapping."))  # fmt: skip
        by_phase = {
            "forward": "activations and logits grow with micro-batch × sequence: lower --micro-batch or --seq, or "
            "turn on gradient checkpointing.",
            "backward": "the backward pass holds activations and gradients: gradient checkpointing, a smaller "
            "micro-batch, or a shorter sequence.",
            "optimizer_step": "the optimizer step allocates moments and temporaries: an 8-bit or paged optimizer, "
            "ZeRO-2/3 sharding across GPUs, or optimizer offload to host RAM.",
            "load": "the weights do not fit as loaded: quantize (QLoRA / nf4), shard them (ZeRO-3, tensor "
            "parallel) over more devices, or a device with more memory.",
        }
        generic = (
            "lower the micro-batch or the sequence length, turn on gradient checkpointing, or quantize the "
            "weights; pass --plan to get a change the estimator checked against this shortfall."
        )
        out.append(Remedy(change=f"{f.phase} memory", source="log", text=by_phase.get(f.phase, generic)))
    elif f.kind == "kv_cache":
        if "vllm" in f.frameworks and f.tokens_available:
            fit_len = f.tokens_available // 256 * 256 or f.tokens_available
            out.append(Remedy(change="--max-model-len", source="log",
                              text=f"--max-model-len {fit_len} fits the cache as sized; or raise "
                                   "--gpu-memory-utilization so it holds the full length."))  # fmt: skip
        elif "sglang" in f.frameworks or "mem-fraction-static" in f.line:
            out.append(Remedy(change="--mem-fraction-static", source="log",
                              text="SGLang sizes its KV pool from --mem-fraction-static after the weights: raise it "
                                   "(a large model left no pool); if activations then run out, lower --chunked-prefill-size."))  # fmt: skip
        else:
            out.append(Remedy(change="--gpu-memory-utilization", source="log",
                              text="the weights and the profiling run left no memory for cache blocks: raise "
                                   "--gpu-memory-utilization, lower --max-model-len / --max-num-seqs, quantize the "
                                   "weights (fp8, AWQ) or add tensor parallelism."))  # fmt: skip
    elif f.kind == "host_memory":
        load = f.phase == "load"
        out.append(Remedy(change="host RAM", source="log",
                          text=("loading materialised the checkpoint in RAM on every rank: load with "
                                "low_cpu_mem_usage / device_map, or fewer processes per node while loading. " if load
                                else "")
                               + "Offloaded optimizer state and dataloader workers live in host RAM too: plan with "
                                 "the real RAM (swiftplan fit --host-ram GiB) and fewer --dataloader workers."))  # fmt: skip
    elif f.kind == "nccl":
        wait = f" for {f.timeout_s:g} s" if f.timeout_s else ""
        out.append(Remedy(change="find the stalled rank", source="log",
                          text=f"the other ranks waited{wait} on one that stopped: read its log first (an OOM, a long "
                               "checkpoint save or uneven data usually); raise the timeout (ddp_timeout, "
                               "init_process_group(timeout=…)) only for a known slow step; NCCL_DEBUG=INFO shows where."))  # fmt: skip
    elif f.kind == "disk":
        out.append(Remedy(change="checkpoint space", source="log",
                          text="keep fewer checkpoints (save_total_limit), save adapters only, or write output_dir to "
                               "a larger disk; a full checkpoint with optimizer state is several times the weights."))  # fmt: skip
    return out
