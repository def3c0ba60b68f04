"""Speed model: training step time and tokens/s, serving prefill/TTFT/decode, and what bounds each.

Training time per step is the largest of compute (FLOPs / achievable FLOP/s), QLoRA
dequantisation traffic, and offload traffic over PCIe, plus communication that does not
overlap and the pipeline bubble. FLOPs per token follow Kaplan/Chinchilla accounting: a
matmul weight costs 2 FLOPs per token forward, 2 for the input gradient and 2 for the weight
gradient; LoRA skips the frozen weight gradients; checkpointing adds one more forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from swiftplan.planner.adapters import adapter_params
from swiftplan.planner.architecture import linear_modules, matmul_params_per_token, total_params
from swiftplan.planner.calibration import constant
from swiftplan.planner.dtypes import compute_dtype, dtype_bytes
from swiftplan.planner.hardware import FALLBACK_PCIE_BYTES_PER_S
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup, TrainSetup
from swiftplan.planner.weights import is_quantized

FALLBACK_BANDWIDTH_BYTES_PER_S = 400e9
"""Assumed memory bandwidth when the catalog lacks one (e.g. an unknown probed device)."""

if TYPE_CHECKING:
    from swiftplan.planner.hardware import Accelerator, Cluster


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSpeed:
    """Predicted training speed for the whole cluster."""

    tokens_per_s: float
    """Training tokens processed per second, all devices together."""
    step_time_s: float
    """Seconds per optimizer step (grad_accum micro-batches on every data-parallel rank)."""
    bound: str
    """Which resource sets the pace: compute, memory (dequant), pcie (offload), network (comm)."""
    flops_per_token: float
    """Training FLOPs per token (forward + backward + recomputation)."""
    mfu_prior: float
    """Achievable fraction of dense peak FLOP/s used (calibration prior)."""
    breakdown_s: dict[str, float]
    """Seconds per step by component: compute, dequant, offload, comm, bubble."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeSpeed:
    """Predicted serving speed on one model replica."""

    prefill_tokens_per_s: float
    """Prompt tokens per second when prefilling."""
    ttft_s: float
    """Time to first token for one prompt of the configured length at the configured concurrency."""
    decode_tokens_per_s: float
    """Generated tokens per second, all sequences together."""
    per_user_decode_tokens_per_s: float
    """Generated tokens per second seen by one sequence."""
    bound: str
    """Decode bound: memory (bandwidth) or compute."""


def efficiency_prior(accelerator: Accelerator) -> float:
    """Achievable training MFU for this accelerator's family (profiles/calibration.json)."""
    if accelerator.backend == "mps":
        return constant("training_efficiency", "apple")
    if accelerator.backend == "npu":
        return constant("training_efficiency", "npu")
    consumer = "geforce" in accelerator.name.lower() or "rtx" in accelerator.name.lower()
    return constant("training_efficiency", "consumer" if consumer else "datacenter")


def attention_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs per token of QKᵀ and AV with a causal mask: 2 matmuls × 2 FLOPs × s/2 × q width × layers."""
    return 2 * 2 * (seq_len / 2) * spec.q_dim * spec.num_layers


def train_flops_per_token(spec: ModelSpec, setup: TrainSetup) -> float:
    """FLOPs per training token: forward 2N (+attention), backward 4N (full) or 2N (frozen base) + adapters, plus a recomputed forward with checkpointing."""
    n = matmul_params_per_token(spec)
    attn = attention_flops_per_token(spec, setup.seq_len)
    forward = 2 * n + attn
    if setup.trains_adapters:
        assert setup.lora is not None
        lora = adapter_params(spec, setup.lora)
        backward = 2 * n + 2 * attn + 4 * lora
        forward += 2 * lora
    else:
        backward = 4 * n + 2 * attn
    recompute = forward if setup.grad_ckpt else 0
    return forward + backward + recompute


@cache
def _quantized_params(spec: ModelSpec, quant: str) -> int:
    return sum(lin.params for _, lin in linear_modules(spec) if is_quantized(lin, quant))  # type: ignore[arg-type]


def _allreduce_s(num_bytes: float, ranks: int, bandwidth_bytes_per_s: float) -> float:
    """Ring all-reduce time: 2 (ranks − 1) / ranks × bytes over the slowest link."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * num_bytes / bandwidth_bytes_per_s


def train_speed(spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, trainable_params: int) -> TrainSpeed:
    """Step time and tokens/s of `setup` on `cluster` (see module docstring for the terms)."""
    acc = cluster.accelerator
    par = setup.parallel
    world = cluster.world_size
    dp = max(1, world // (par.tp * par.pp))
    tokens_per_rank = setup.micro_batch * setup.seq_len * setup.grad_accum
    flops_per_token = train_flops_per_token(spec, setup)
    mfu = efficiency_prior(acc)
    peak = acc.dense_flops(compute_dtype(setup.precision)) * mfu
    compute_s = tokens_per_rank * flops_per_token / (peak * par.tp * par.pp)

    dequant_s = 0.0
    if setup.quant != "none":
        quantized = _quantized_params(spec, setup.quant)
        passes = 3 if setup.grad_ckpt else 2
        micro_steps = setup.grad_accum
        dequant_s = (
            micro_steps
            * passes
            * quantized
            * constant("qlora_dequant", "bytes_per_weight")
            / 2
            / ((acc.memory_bandwidth_bytes_per_s or FALLBACK_BANDWIDTH_BYTES_PER_S) * par.tp)
        )

    intra = acc.intra_node_bytes_per_s
    link = intra if cluster.nodes == 1 else min(intra, cluster.inter_node_bytes_per_s / cluster.gpus_per_node)
    grad_bytes = trainable_params * (4 if setup.trains_adapters else 2) / (par.tp * par.pp)
    comm_s = _allreduce_s(grad_bytes, dp, link)
    if par.zero == 3 and not setup.trains_adapters:
        param_bytes = trainable_params * 2 / (par.tp * par.pp)
        comm_s += 2 * setup.grad_accum * (dp - 1) / dp * param_bytes / link
    if par.tp > 1:
        activation_bytes = (
            setup.micro_batch * setup.seq_len * spec.hidden_size * dtype_bytes(compute_dtype(setup.precision))
        )
        comm_s += (
            setup.grad_accum
            * spec.num_layers
            / par.pp
            * 4
            * _allreduce_s(activation_bytes, par.tp, intra)
            / 2
        )

    offload_s = 0.0
    if par.offload != "none":
        state_bytes = trainable_params * (4 if setup.trains_adapters else 2) / dp
        offload_s = (
            2 * state_bytes / (acc.pcie_bytes_per_s or FALLBACK_PCIE_BYTES_PER_S)
        )  # gradients down, updated weights up
        if par.offload == "optimizer+params":
            # Every parameter shard, frozen ones included, comes from host RAM for forward and backward.
            streamed = total_params(spec) + (trainable_params if setup.trains_adapters else 0)
            offload_s += (
                2 * setup.grad_accum * streamed * 2 / dp / (acc.pcie_bytes_per_s or FALLBACK_PCIE_BYTES_PER_S)
            )

    # bitsandbytes dequantises each weight in its own kernel before the GEMM: it adds, it does not overlap.
    body = compute_s + dequant_s
    bubble_s = body * (par.pp - 1) / (setup.grad_accum + par.pp - 1) if par.pp > 1 else 0.0
    # Data-parallel gradient reduction overlaps with backward except for the last bucket: count half.
    exposed_comm = comm_s * 0.5 if par.zero < 3 else comm_s
    step_s = body + bubble_s + exposed_comm + offload_s
    parts = {
        "compute": compute_s,
        "dequant": dequant_s,
        "comm": exposed_comm,
        "offload": offload_s,
        "bubble": bubble_s,
    }
    bound = {
        "compute": "compute",
        "dequant": "memory",
        "comm": "network",
        "offload": "pcie",
        "bubble": "compute",
    }[max(parts, key=lambda k: parts[k])]
    tokens_per_step = tokens_per_rank * dp
    return TrainSpeed(
        tokens_per_s=tokens_per_step / step_s,
        step_time_s=step_s,
        bound=bound,
        flops_per_token=flops_per_token,
        mfu_prior=mfu,
        breakdown_s=parts,
    )


def serve_speed(
    spec: ModelSpec,
    setup: ServeSetup,
    accelerator: Accelerator,
    *,
    weight_bytes: int,
    kv_bytes_per_token: float,
) -> ServeSpeed:
    """Roofline serving speed for one replica of `setup.tp` devices.

    Prefill is compute-bound: 2 × N FLOPs per token (+ attention) at the compute efficiency.
    Each decode step reads every weight once and each sequence's KV cache, and does 2 × N FLOPs
    per sequence; its time is the larger of the two at their efficiencies. TTFT is one prompt of
    context/2 tokens prefilled in chunks beside the other sequences' decode tokens.
    """
    n = matmul_params_per_token(spec)
    peak = accelerator.dense_flops(setup.dtype) * constant("serving_efficiency", "compute") * setup.tp
    bandwidth = (
        (accelerator.memory_bandwidth_bytes_per_s or FALLBACK_BANDWIDTH_BYTES_PER_S)
        * constant("serving_efficiency", "bandwidth")
        * setup.tp
    )
    prompt = setup.context // 2
    per_token_flops = 2 * n + attention_flops_per_token(spec, prompt)
    prefill_tps = peak / per_token_flops
    kv_read = setup.concurrency * prompt * kv_bytes_per_token * setup.tp
    memory_s = (weight_bytes * setup.tp + kv_read) / bandwidth
    compute_s = 2 * n * setup.concurrency / peak
    step = max(memory_s, compute_s)
    # TTFT of a request arriving while the other sequences decode (vLLM chunked prefill): each engine
    # step takes up to `prefill_chunk` tokens, the running sequences' decode tokens first; the new
    # prompt fills the rest, and a step costs the larger of its weight/KV reads and its FLOPs.
    room = max(1, setup.prefill_chunk - (setup.concurrency - 1))
    steps = -(-prompt // room)
    step_with_prefill = max(
        memory_s, min(setup.prefill_chunk, prompt + setup.concurrency - 1) * per_token_flops / peak
    )
    ttft = steps * step_with_prefill
    return ServeSpeed(
        prefill_tokens_per_s=prefill_tps,
        ttft_s=ttft,
        decode_tokens_per_s=setup.concurrency / step,
        per_user_decode_tokens_per_s=1 / step,
        bound="memory" if memory_s >= compute_s else "compute",
    )
