"""Speed model: training step time and tokens/s, serving prefill/TTFT/decode, and what bounds each.

Training time per step is the largest of compute (FLOPs / achievable FLOP/s), QLoRA
dequantisation traffic, and offload traffic over PCIe, plus communication that does not
overlap (planner/comm_speed.py: collectives hidden behind the compute they are prefetched under) and the
pipeline bubble. FLOPs per token follow Kaplan/Chinchilla accounting: a
matmul weight costs 2 FLOPs per token forward, 2 for the input gradient and 2 for the weight
gradient; LoRA skips the frozen weight gradients; checkpointing adds one more forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from swiftplan.planner.adapters import adapter_params
from swiftplan.planner.architecture import linear_modules, matmul_params_per_token, total_params
from swiftplan.planner.calibration import constant
from swiftplan.planner.comm_speed import HALF_BYTES, TrainComm, exposed_comm_s, ring_all_reduce_s, train_comm
from swiftplan.planner.dora import dora_base_params, dora_rebuild_traffic_bytes
from swiftplan.planner.dtypes import adapter_dtype, compute_dtype, dtype_bytes
from swiftplan.planner.hardware import FALLBACK_PCIE_BYTES_PER_S
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.offload_speed import activation_offload_s, fsdp_cpu_offload_s
from swiftplan.planner.runtime_terms import shard_degree
from swiftplan.planner.setup import SERVE_RUNTIMES, Quant, ServeSetup, TrainSetup
from swiftplan.planner.train_efficiency import mfu_curve, training_mfu
from swiftplan.planner.weights import is_quantized

FALLBACK_BANDWIDTH_BYTES_PER_S = 400e9
"""Memory bandwidth assumed for a device without a published figure (Ascend 910B, an unknown probed
device): the low end of the catalog's vendor figures, Apple's M1/M2/M3 Max (400 GB/s), between
NVIDIA's L4 (300 GB/s) and RTX 3070 (448 GB/s) datasheets (profiles/accelerators.json)."""

FLOPS_PER_MAC = 2
"""A multiply-accumulate is two floating-point operations: a weight costs 2 FLOPs per token forward
(Kaplan et al. 2020, "Scaling Laws for Neural Language Models", §2.1)."""
BACKWARD_PER_FORWARD_TRAINED = 2
"""Backward through a trained matmul costs twice its forward: an input gradient and a weight gradient
(Kaplan et al. 2020, §2.1: backward ≈ 2 × forward)."""
BACKWARD_PER_FORWARD_FROZEN = 1
"""Backward through a frozen matmul costs its forward once: the input gradient only (Hu et al. 2021,
"LoRA", §4.2: no gradients for the frozen weights)."""
ATTENTION_MATMULS = 2
"""QKᵀ and AV: the two activation-by-activation matmuls of attention per layer (Vaswani et al. 2017)."""

DEQUANT_PASSES = 2
"""bitsandbytes' MatMul4Bit dequantizes the 4-bit weight in forward and again in backward for the input
gradient (bitsandbytes/autograd/_functions.py); `qlora_dequant.bytes_per_weight` in
profiles/calibration.json is the traffic of these two passes together."""

OFFLOAD_TRANSFERS_PER_STEP = 2
"""ZeRO-Offload moves gradients to host RAM and updated parameters back once per step (Ren et al.
2021, "ZeRO-Offload", §4: fp16 gradients down, fp16 parameters up)."""
PARAM_STREAMS_PER_MICRO_STEP = 2
"""Parameter offload streams every parameter shard from host RAM for forward and again for backward
(Rajbhandari et al. 2021, "ZeRO-Infinity": parameters are fetched before each use)."""
TP_ALLREDUCES_PER_LAYER = 4
"""Megatron tensor parallelism all-reduces the activations twice in forward and twice in backward per
transformer layer (Shoeybi et al. 2019, "Megatron-LM", §3, Fig. 4)."""
TP_EXPOSED_FRACTION = 0.5
"""Share of the tensor-parallel all-reduce time counted: half, an unfitted prior from the first speed
model (Megatron-LM runs them synchronously, so 1.0 is the pessimistic bound; Wang et al. 2023,
"Overlap Communication with Dependent Computation via Decomposition", hides most of it)."""
PROMPT_SHARE_OF_CONTEXT = 0.5
"""Serving: a prompt fills this share of the context, the rest is generated (an even split; `--prompt-tokens`
and `--output-tokens` set the load's context in `swiftplan size`)."""

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
    """Fraction of dense peak FLOP/s used: the calibrated MFU curve at this micro-batch and model size."""
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
    """Decode bound: memory (bandwidth), compute, network (tensor-parallel all-reduces take longest), or host
    (an eager step's kernel launches outlast the device's work)."""


def efficiency_prior(accelerator: Accelerator) -> float:
    """The family's training MFU ceiling (planner/train_efficiency.py): no micro-batch or model size reaches
    more, so a time computed with it is a lower bound."""
    return mfu_curve(accelerator).mfu_max


def attention_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs per token of QKᵀ and AV with a causal mask: 2 matmuls × 2 FLOPs × s/2 × q width × layers."""
    return ATTENTION_MATMULS * FLOPS_PER_MAC * (seq_len / 2) * spec.q_dim * spec.num_layers


def _forward_backward_flops_per_token(spec: ModelSpec, setup: TrainSetup) -> tuple[float, float]:
    """(forward, backward) FLOPs per token: forward 2N (+attention, + adapters), backward 4N (full) or 2N
    (frozen base) + adapters."""
    base = FLOPS_PER_MAC * matmul_params_per_token(spec)
    attn = attention_flops_per_token(spec, setup.seq_len)
    forward = base + attn
    if setup.trains_adapters:
        assert setup.lora is not None
        lora = FLOPS_PER_MAC * adapter_params(spec, setup.lora)
        dora = FLOPS_PER_MAC * dora_base_params(spec, setup)  # DoRA's second base matmul under dropout
        backward = BACKWARD_PER_FORWARD_FROZEN * (base + dora) + BACKWARD_PER_FORWARD_TRAINED * attn
        backward += BACKWARD_PER_FORWARD_TRAINED * lora
        forward += lora + dora
    else:
        backward = BACKWARD_PER_FORWARD_TRAINED * base + BACKWARD_PER_FORWARD_TRAINED * attn
    return forward, backward


def train_flops_per_token(spec: ModelSpec, setup: TrainSetup) -> float:
    """FLOPs per training token: forward 2N (+attention), backward 4N (full) or 2N (frozen base) + adapters, plus a recomputed forward with checkpointing."""
    forward, backward = _forward_backward_flops_per_token(spec, setup)
    recompute = forward if setup.grad_ckpt else 0
    return forward + backward + recompute


def forward_share(spec: ModelSpec, setup: TrainSetup) -> float:
    """The forward's share of a micro-step's matmul FLOPs: forward / (forward + backward + recomputed forward);
    the rest runs in backward (a checkpointed block recomputes its forward there)."""
    forward, _ = _forward_backward_flops_per_token(spec, setup)
    return forward / train_flops_per_token(spec, setup)


@cache
def _quantized_params(spec: ModelSpec, quant: Quant) -> int:
    """Parameters of the linear layers `quant` replaces."""
    return sum(lin.params for _, lin in linear_modules(spec) if is_quantized(lin, quant))


def _bandwidth(acc: Accelerator) -> float:
    """The device's memory bandwidth, or the fallback where none is published."""
    return acc.memory_bandwidth_bytes_per_s or FALLBACK_BANDWIDTH_BYTES_PER_S


def _pcie(acc: Accelerator) -> float:
    """The device's host link bandwidth per direction, or the fallback where none is published."""
    return acc.pcie_bytes_per_s or FALLBACK_PCIE_BYTES_PER_S


def _trainable_grad_bytes(setup: TrainSetup) -> int:
    """Bytes of one gradient (or one updated parameter sent back) per trainable parameter."""
    # LoRA gradients are in the adapter dtype: fp32 with peft's default, the model dtype with
    # --adapter-dtype model (dtypes.adapter_dtype)
    return dtype_bytes(adapter_dtype(setup)) if setup.trains_adapters else HALF_BYTES


def _compute_s(spec: ModelSpec, setup: TrainSetup, acc: Accelerator, mfu: float) -> float:
    """Matmul time of one rank's micro-batches per step at the achievable FLOP/s."""
    par = setup.parallel
    peak = acc.dense_flops(compute_dtype(setup.precision)) * mfu
    return _tokens_per_rank(setup) * train_flops_per_token(spec, setup) / (peak * par.tp * par.pp)


def _tokens_per_rank(setup: TrainSetup) -> int:
    """Tokens one data-parallel rank processes per optimizer step."""
    return setup.micro_batch * setup.seq_len * setup.grad_accum


def _dequant_s(spec: ModelSpec, setup: TrainSetup, acc: Accelerator) -> float:
    """bitsandbytes dequantization traffic per step: each pass reads and writes every quantized weight."""
    if setup.quant == "none":
        return 0.0
    passes = DEQUANT_PASSES + (1 if setup.grad_ckpt else 0)  # checkpointing recomputes the forward
    return (
        setup.grad_accum
        * passes
        * _quantized_params(spec, setup.quant)
        * constant("qlora_dequant", "bytes_per_weight")
        / DEQUANT_PASSES
        / (_bandwidth(acc) * setup.parallel.tp)
    )


def _dora_s(spec: ModelSpec, setup: TrainSetup, acc: Accelerator) -> float:
    """DoRA's weight rebuild per step: its traffic (`dora.dora_rebuild_traffic_bytes`) in every forward and every
    recompute, at the device's bandwidth; elementwise kernels before each GEMM, they add."""
    traffic = dora_rebuild_traffic_bytes(spec, setup)
    if not traffic:
        return 0.0
    passes = 1 + (1 if setup.grad_ckpt else 0)
    return setup.grad_accum * passes * traffic / (_bandwidth(acc) * setup.parallel.tp * setup.parallel.pp)


def _tp_comm_s(spec: ModelSpec, setup: TrainSetup, cluster: Cluster) -> float:
    """Tensor-parallel all-reduce seconds per step counted as exposed: 4 per layer per micro-step over the
    intra-node link, times TP_EXPOSED_FRACTION."""
    par = setup.parallel
    if par.tp <= 1:
        return 0.0
    activation_bytes = (
        setup.micro_batch * setup.seq_len * spec.hidden_size * dtype_bytes(compute_dtype(setup.precision))
    )
    return (
        setup.grad_accum
        * spec.num_layers
        / par.pp
        * TP_ALLREDUCES_PER_LAYER
        * ring_all_reduce_s(activation_bytes, par.tp, cluster.accelerator.intra_node_bytes_per_s)
        * TP_EXPOSED_FRACTION
    )


def train_comm_of(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, trainable_params: int, world_size: int = 0
) -> TrainComm:
    """The step's collectives (planner/comm_speed.py): data-parallel ones with the compute that hides them,
    and the tensor-parallel all-reduces."""
    par = setup.parallel
    dp = max(1, (world_size or cluster.world_size) // (par.tp * par.pp))
    return train_comm(
        spec,
        setup,
        cluster,
        grad_bytes=trainable_params * _trainable_grad_bytes(setup) / (par.tp * par.pp),
        dp=dp,
        forward_share=forward_share(spec, setup),
        tp_s=_tp_comm_s(spec, setup, cluster),
    )


def _offload_s(
    spec: ModelSpec, setup: TrainSetup, acc: Accelerator, *, trainable_params: int, dp: int
) -> float:
    """ZeRO-Offload PCIe traffic per step: gradients down and weights up, plus streamed parameters."""
    par = setup.parallel
    if par.offload == "none":
        return 0.0
    state_bytes = trainable_params * _trainable_grad_bytes(setup) / dp
    offload_s = OFFLOAD_TRANSFERS_PER_STEP * state_bytes / _pcie(acc)
    if par.offload == "optimizer+params":
        # Every parameter shard, frozen ones included, comes from host RAM for forward and backward.
        streamed = total_params(spec) + (trainable_params if setup.trains_adapters else 0)
        offload_s += PARAM_STREAMS_PER_MICRO_STEP * setup.grad_accum * streamed * HALF_BYTES / dp / _pcie(acc)
    return offload_s


def _bubble_s(body_s: float, setup: TrainSetup) -> float:
    """GPipe pipeline bubble: (pp − 1) / (micro-batches + pp − 1) of the step (Huang et al. 2019, §2.3)."""
    pp = setup.parallel.pp
    return body_s * (pp - 1) / (setup.grad_accum + pp - 1) if pp > 1 else 0.0


_BOUND_OF_PART = {
    "compute": "compute",
    "dequant": "memory",
    "dora": "memory",
    "comm": "network",
    "offload": "pcie",
    "bubble": "compute",
    "reference": "compute",
    "rollout": "rollout",
    "weight_sync": "network",
    "sleep_wake": "pcie",
}
"""Which resource a step-time component stands for."""


def train_speed(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, trainable_params: int, world_size: int = 0
) -> TrainSpeed:
    """Step time and tokens/s of `setup` on `cluster` (see module docstring for the terms);
    `world_size` is the devices that train when fewer than the cluster's (a rollout server's GPUs)."""
    acc = cluster.accelerator
    par = setup.parallel
    dp = max(1, (world_size or cluster.world_size) // (par.tp * par.pp))
    shards = shard_degree(setup, dp)
    tokens = setup.micro_batch * setup.seq_len
    mfu = training_mfu(acc, tokens_per_micro_batch=tokens, params=matmul_params_per_token(spec))
    compute_s = _compute_s(spec, setup, acc, mfu)
    dequant_s = _dequant_s(spec, setup, acc)
    dora_s = _dora_s(spec, setup, acc)
    # bitsandbytes dequantises each weight in its own kernel before the GEMM, as DoRA rebuilds its weights: they add
    body = compute_s + dequant_s + dora_s
    comm = train_comm_of(spec, setup, cluster, trainable_params=trainable_params, world_size=world_size)
    parts = {
        "compute": compute_s,
        "dequant": dequant_s,
        "comm": exposed_comm_s(comm, compute_s / setup.grad_accum),
        "offload": _offload_s(spec, setup, acc, trainable_params=trainable_params, dp=dp)
        + activation_offload_s(spec, setup, pcie_bytes_per_s=_pcie(acc), compute_s=compute_s)
        + fsdp_cpu_offload_s(
            spec, setup, pcie_bytes_per_s=_pcie(acc), trainable_params=trainable_params, shards=shards
        ),
        "bubble": _bubble_s(body, setup),
    }
    if dora_s:
        parts["dora"] = dora_s
    step_s = body + parts["bubble"] + parts["comm"] + parts["offload"]
    return TrainSpeed(
        tokens_per_s=_tokens_per_rank(setup) * dp / step_s,
        step_time_s=step_s,
        bound=_BOUND_OF_PART[max(parts, key=lambda k: parts[k])],
        flops_per_token=train_flops_per_token(spec, setup),
        mfu_prior=mfu,
        breakdown_s=parts,
    )


DECODE_TP_ALLREDUCES_PER_LAYER = 2
"""Megatron tensor parallelism all-reduces the hidden-size activations twice per transformer layer in
forward, after attention's output projection and after the MLP's down projection (Shoeybi et al. 2019,
"Megatron-LM", §3, Fig. 4); a decode step is forward only."""


DECODE_STEP_TERMS = ("memory", "compute", "allreduce", "overhead")
"""A decode step's time is the sum of its weight/KV reads, its matmul FLOPs, its all-reduces and the engine's
fixed host cost per step (`decode_step_overhead_s`), not the larger of reads and FLOPs: decode GEMMs are
skinny (M = the batch), and the published steps grow with the batch by about its FLOP time at the prefill
efficiency (LMDeploy A100 static-inference rows dec-09..dec-20 of benchmarks/data/published_decode.csv, fit
set: Llama-2-7B 10.0 ms at batch 1, 15.4 ms at batch 64)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeEfficiency:
    """The serving speed model's calibration constants (profiles/calibration.json, "serving_efficiency")."""

    bandwidth: float
    """Achieved fraction of the device's memory bandwidth when a decode step reads weights and KV cache, on
    HBM and every memory type other than GDDR."""
    bandwidth_gddr: float
    """The same fraction on GDDR devices (`decode_bandwidth_efficiency`)."""
    compute: float
    """Achieved fraction of dense peak FLOP/s in prefill and compute-bound decode."""
    allreduce_latency_s: float
    """Fixed seconds per tensor-parallel all-reduce call (launch and synchronisation), before its bytes."""
    step_overhead_s: Mapping[str, float]
    """Fixed seconds each decode step costs on the host, by serving engine (`decode_step_overhead_s`)."""
    eager_launch_per_layer_s: float = 0.0
    """Host seconds to launch one transformer layer's kernels in an eager (graph-less) decode step
    (`decode_host_launch_s`)."""


def step_overhead_name(runtime: str) -> str:
    """The calibration.json name of a serving engine's per-step cost: step_overhead_<engine>_s."""
    return "step_overhead_" + runtime.replace("-", "_").replace(".", "_") + "_s"


def serve_efficiency() -> ServeEfficiency:
    """The calibrated serving constants (see `ServeEfficiency`)."""
    return ServeEfficiency(
        bandwidth=constant("serving_efficiency", "bandwidth"),
        bandwidth_gddr=constant("serving_efficiency", "bandwidth_gddr"),
        compute=constant("serving_efficiency", "compute"),
        allreduce_latency_s=constant("serving_efficiency", "allreduce_latency_s"),
        step_overhead_s={r: constant("serving_efficiency", step_overhead_name(r)) for r in SERVE_RUNTIMES},
        eager_launch_per_layer_s=constant("serving_efficiency", "eager_launch_per_layer_s"),
    )


def decode_step_overhead_s(runtime: str, eff: ServeEfficiency) -> float:
    """Fixed host seconds per decode step of serving engine `runtime`, added once per step whatever the
    batch: scheduling, input preparation, sampling and the sampled token's copy to the host, Python and
    kernel launches the GPU waits for (vLLM issue #6854: about 4 ms of GPU bubble per decode step in
    vLLM 0.5; SGLang v0.4 overlaps it with the GPU, lmsys.org/blog/2024-12-04-sglang-v0-4). One calibrated
    constant per engine, `serving_efficiency.step_overhead_<engine>_s` (benchmarks/fit_serving_speed.py)."""
    return eff.step_overhead_s[runtime]


def decode_host_launch_s(spec: ModelSpec, setup: ServeSetup, eff: ServeEfficiency) -> float:
    """Host seconds to launch an eager decode step's kernels: layers × `eff.eager_launch_per_layer_s`
    (0 with CUDA graphs, which launch the whole step at once; `ServeSetup.decodes_eagerly`). Launches are
    asynchronous, so the device works while the host launches: an eager step takes the larger of this and
    the device time (`serve_speed`). Each tensor-parallel rank launches its own kernels at the same time. The
    constant is fitted on vLLM rows and used for every engine's eager mode."""
    return spec.num_layers * eff.eager_launch_per_layer_s if setup.decodes_eagerly else 0.0


def is_gddr(accelerator: Accelerator) -> bool:
    """Whether the device's memory is GDDR (the catalog's memory_type: GDDR6, GDDR6X, GDDR7...)."""
    return "GDDR" in accelerator.memory_type.upper()


def decode_bandwidth_efficiency(accelerator: Accelerator, eff: ServeEfficiency) -> float:
    """Achieved share of peak memory bandwidth in a decode step: `eff.bandwidth_gddr` on GDDR devices,
    `eff.bandwidth` on HBM and the rest. GDDR cards reach a larger share of their (smaller) datasheet
    bandwidth than HBM cards under the same engine (llama.cpp Llama-3-8B F16 rows dec-93..127 of
    benchmarks/data/published_decode.csv); both fitted by benchmarks/fit_serving_speed.py."""
    return eff.bandwidth_gddr if is_gddr(accelerator) else eff.bandwidth


def decode_memory_s(
    setup: ServeSetup,
    accelerator: Accelerator,
    eff: ServeEfficiency,
    *,
    weight_bytes: int,
    kv_bytes_per_token: float,
) -> float:
    """Seconds one device spends reading its weight shard and its share of every sequence's KV cache per
    decode step: (weights + concurrency × context/2 × KV bytes per token) / (bandwidth × efficiency), the
    efficiency by memory type (`decode_bandwidth_efficiency`). `weight_bytes` and `kv_bytes_per_token` are
    per device (already divided by tp)."""
    kv_read = setup.concurrency * int(setup.context * PROMPT_SHARE_OF_CONTEXT) * kv_bytes_per_token
    return (weight_bytes + kv_read) / (
        _bandwidth(accelerator) * decode_bandwidth_efficiency(accelerator, eff)
    )


def decode_allreduce_s(
    spec: ModelSpec, setup: ServeSetup, accelerator: Accelerator, eff: ServeEfficiency
) -> float:
    """Tensor-parallel all-reduce seconds per decode step: 2 per layer × (fixed latency + ring time of
    concurrency × hidden_size activations over the device link, 2 (tp − 1)/tp × bytes / bandwidth;
    Patarasuk and Yuan 2009). At small batch the fixed latency dominates; 0 without tensor parallelism."""
    if setup.tp <= 1:
        return 0.0
    activation_bytes = setup.concurrency * spec.hidden_size * dtype_bytes(setup.dtype)
    ring_s = ring_all_reduce_s(activation_bytes, setup.tp, accelerator.intra_node_bytes_per_s)
    return DECODE_TP_ALLREDUCES_PER_LAYER * spec.num_layers * (eff.allreduce_latency_s + ring_s)


def serve_speed(
    spec: ModelSpec,
    setup: ServeSetup,
    accelerator: Accelerator,
    *,
    weight_bytes: int,
    kv_bytes_per_token: float,
    efficiency: ServeEfficiency | None = None,
) -> ServeSpeed:
    """Serving speed for one replica of `setup.tp` devices (`efficiency`: the calibrated constants unless given).

    Prefill is compute-bound: 2 × N FLOPs per token (+ attention) at the compute efficiency.
    Each decode step reads every weight once and each sequence's KV cache (`decode_memory_s`), does
    2 × N FLOPs per sequence, all-reduces its activations under tensor parallelism (`decode_allreduce_s`) and
    pays the engine's fixed host cost (`decode_step_overhead_s`); its time is the sum of the four
    (`DECODE_STEP_TERMS`), except that an eager step's device time (the first three) is at least its host
    launch time (`decode_host_launch_s`). TTFT is one prompt of context/2 tokens prefilled
    in chunks beside the other sequences' decode tokens.
    """
    eff = efficiency or serve_efficiency()
    n = matmul_params_per_token(spec)
    peak = accelerator.dense_flops(setup.dtype) * eff.compute * setup.tp
    prompt = int(setup.context * PROMPT_SHARE_OF_CONTEXT)
    per_token_flops = FLOPS_PER_MAC * n + attention_flops_per_token(spec, prompt)
    prefill_tps = peak / per_token_flops
    memory_s = decode_memory_s(
        setup, accelerator, eff, weight_bytes=weight_bytes, kv_bytes_per_token=kv_bytes_per_token
    )
    compute_s = FLOPS_PER_MAC * n * setup.concurrency / peak
    allreduce_s = decode_allreduce_s(spec, setup, accelerator, eff)
    overhead_s = decode_step_overhead_s(setup.runtime, eff)
    launch_s = decode_host_launch_s(spec, setup, eff)
    step = max(memory_s + compute_s + allreduce_s, launch_s) + overhead_s
    # TTFT of a request arriving while the other sequences decode (vLLM chunked prefill): each engine
    # step takes up to `prefill_chunk` tokens, the running sequences' decode tokens first; the new
    # prompt fills the rest, and a step costs the larger of its weight/KV reads and its FLOPs, plus the
    # engine's fixed cost per step.
    room = max(1, setup.prefill_chunk - (setup.concurrency - 1))
    steps = -(-prompt // room)
    step_with_prefill = max(
        memory_s, min(setup.prefill_chunk, prompt + setup.concurrency - 1) * per_token_flops / peak
    )
    ttft = steps * (step_with_prefill + overhead_s)
    bound = "memory" if memory_s >= compute_s else "compute"
    return ServeSpeed(
        prefill_tokens_per_s=prefill_tps,
        ttft_s=ttft,
        decode_tokens_per_s=setup.concurrency / step,
        per_user_decode_tokens_per_s=1 / step,
        bound="host"
        if launch_s > memory_s + compute_s + allreduce_s
        else "network"
        if allreduce_s > max(memory_s, compute_s)
        else bound,
    )
