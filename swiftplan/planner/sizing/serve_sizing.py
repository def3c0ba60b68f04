"""Serving sizing: per accelerator, the GPUs (replicas × tensor parallelism) that hold the load. Pure.

For every weight quantization, KV-cache dtype and tensor-parallel degree the fit search allows, one
replica takes as many sequences as fit its KV budget and meet the latency targets (`ServeEvaluator`'s
`best_concurrency`). Then:

- a concurrency load (`concurrency` sequences of `context` tokens at once) needs
  replicas = ceil(concurrency / sequences per replica); every user decodes at the per-user speed of a
  replica holding ceil(concurrency / replicas) sequences;
- a request-rate load (R requests/s of P prompt and O output tokens) needs, by Little's law,
  R × latency requests in flight, latency = TTFT + O / per-user decode speed, which grows with the
  sequences each replica holds: for a number of replicas the sequences per replica are the fixed point
  c = ceil(R / replicas × latency(c)), found by iteration from c = 1, and the fewest replicas with a
  fixed point within the replica's limit win. Generated tokens/s = R × O.

The option kept per accelerator is the best under the objective (fewest GPUs for cost and purchase, most
tokens per GPU for cost per token, lowest per-token latency for time). The speed model assumes prompts of
half the context (`speed.serve_speed`) and a TTFT with every sequence of the batch prefilled together,
so both loads are sized conservatively.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import Engine, default_engine, runtime_engine
from swiftplan.planner.hardware import Accelerator, Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import ServeCandidate, ServeWorkload
from swiftplan.planner.search.evaluate import Evaluation, ServeEvaluator
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import DEFAULT_SERVE_QUANTS, build_serve_space, engine_runtime
from swiftplan.planner.setup import SERVE_RUNTIMES, ServeRuntime, parse_choice
from swiftplan.planner.sizing.candidates import DEFAULT_MAX_NODES, FULL_NODE
from swiftplan.planner.sizing.prices import Price, catalog_price
from swiftplan.planner.sizing.rank import Constraints, Objective, Option, ReasonKind, sort_key
from swiftplan.planner.sizing.result import SizingResult, blank_option, skip_reason
from swiftplan.planner.speed import ServeSpeed
from swiftplan.planner.vision import VisionInputs
from swiftplan.planner.workload import replica_concurrency
from swiftplan.units import format_gib

DEFAULT_QUANTS = DEFAULT_SERVE_QUANTS
"""Weight formats sized unless --quant says otherwise: the fit search's defaults (16-bit and fp8)."""
MAX_FIXED_POINT_STEPS = 64
"""Iterations allowed for the request-rate fixed point before the load counts as not held."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeLoad:
    """What the deployment must sustain: sequences at once, or a request rate."""

    context: int = 4096
    """Tokens per sequence (prompt + output)."""
    concurrency: int | None = None
    """Sequences at once over all replicas."""
    request_rate: float | None = None
    """Requests per second (with prompt_tokens and output_tokens)."""
    prompt_tokens: int | None = None
    """Prompt tokens per request (request-rate load)."""
    output_tokens: int | None = None
    """Generated tokens per request (request-rate load)."""
    ttft_s: float | None = None
    """Largest acceptable time to first token, seconds."""
    decode_tps: float | None = None
    """Smallest acceptable decode speed per user, tokens/s."""
    gpu_memory_utilization: float = 0.9
    """vLLM's memory fraction."""
    max_nodes: int = DEFAULT_MAX_NODES
    """Most nodes of 8 GPUs a deployment may use (with max_gpus)."""
    runtime: ServeRuntime | None = None
    """Serving runtime (--runtime): its engine's limits and per-step decode cost; None = each accelerator's
    default engine (vLLM, else the built-in server) with that engine's cost."""
    eager: bool = False
    """Decode without CUDA graphs (--enforce-eager; `ServeSetup.eager`)."""
    vision: VisionInputs | None = None
    """Vision-language models: each request's images/video (their tokens are part of `context`), in every
    deployment's memory and speed as fit plans them (`ServeWorkload.vision`); None = text only."""

    def __post_init__(self) -> None:
        if self.runtime is not None:
            parse_choice("serving runtime", self.runtime, SERVE_RUNTIMES)
        rate = self.request_rate is not None
        if rate == (self.concurrency is not None):
            raise SwiftplanError(
                "Give the serving load as --concurrency N, or as --request-rate R with --prompt-tokens and --output-tokens.",
            )
        if rate:
            if not self.request_rate or self.request_rate <= 0:
                raise SwiftplanError(f"--request-rate must be positive, got {self.request_rate}.")
            if (
                not self.prompt_tokens
                or not self.output_tokens
                or self.prompt_tokens < 1
                or self.output_tokens < 1
            ):
                raise SwiftplanError("--request-rate needs positive --prompt-tokens and --output-tokens.")
            if self.context != self.prompt_tokens + self.output_tokens:
                raise ValueError("context must be prompt_tokens + output_tokens for a request-rate load")
        elif self.concurrency is not None and self.concurrency < 1:
            raise SwiftplanError(f"--concurrency must be at least 1, got {self.concurrency}.")
        if self.context < 2:
            raise SwiftplanError(f"--context must be at least 2 tokens, got {self.context}.")


@dataclass(frozen=True, kw_only=True, slots=True)
class Deployment:
    """One way to hold the load on one accelerator type."""

    candidate: ServeCandidate
    """Quantization, KV dtype, tensor parallelism, sequences per replica."""
    replicas: int
    """Model copies."""
    evaluation: Evaluation[ServeCandidate]
    """The replica's evaluation at its sequences."""
    tokens_per_s: float
    """Generated tokens/s of the whole deployment at the load."""
    max_sequences: int
    """Most sequences one replica can take within memory and the latency targets."""

    @property
    def gpus(self) -> int:
        """Replicas × tensor-parallel degree."""
        return self.replicas * self.candidate.tp

    @property
    def speed(self) -> ServeSpeed:
        """Per-replica speed at its sequences."""
        return _speed(self.evaluation)


def _speed(evaluation: Evaluation[ServeCandidate]) -> ServeSpeed:
    assert evaluation.estimate is not None
    return evaluation.estimate.serving_speed


def _latency(speed: ServeSpeed, output_tokens: int) -> float:
    return speed.ttft_s + output_tokens / speed.per_user_decode_tokens_per_s


def _rate_sequences(
    evaluate: Callable[[int], Evaluation[ServeCandidate]], rate: float, output_tokens: int, limit: int
) -> int | None:
    """Sequences one replica holds at `rate` requests/s (Little's law fixed point), None when over `limit`."""
    c = 1
    for _ in range(MAX_FIXED_POINT_STEPS):
        speed = _speed(evaluate(c))
        needed = max(1, math.ceil(rate * _latency(speed, output_tokens) - 1e-9))
        if needed <= c:
            return c
        if needed > limit:
            return None
        c = needed
    return None


def _deploy(
    evaluator: ServeEvaluator, structure: ServeCandidate, load: ServeLoad, max_replicas: int
) -> Deployment | Evaluation[ServeCandidate]:
    """The fewest replicas of `structure` that hold the load, or the evaluation that says why none do."""
    best = evaluator.best_concurrency(structure, "throughput")
    if not best.feasible or max_replicas < 1:
        return best
    limit = best.candidate.concurrency

    def at(c: int) -> Evaluation[ServeCandidate]:
        return evaluator.evaluate(structure.replace(concurrency=c))

    if load.concurrency is not None:
        replicas = math.ceil(load.concurrency / limit)
        if replicas > max_replicas:
            return best
        evaluation = at(replica_concurrency(load.concurrency, replicas))
        tokens = load.concurrency * _speed(evaluation).per_user_decode_tokens_per_s
        return Deployment(
            candidate=evaluation.candidate,
            replicas=replicas,
            evaluation=evaluation,
            tokens_per_s=tokens,
            max_sequences=limit,
        )
    assert load.request_rate is not None and load.output_tokens is not None
    rate, output = load.request_rate, load.output_tokens
    lo, hi = 1, max_replicas
    if _rate_sequences(at, rate / hi, output, limit) is None:
        return best
    while lo < hi:  # fewer replicas → more load on each: find the fewest that hold it
        mid = (lo + hi) // 2
        if _rate_sequences(at, rate / mid, output, limit) is None:
            lo = mid + 1
        else:
            hi = mid
    sequences = _rate_sequences(at, rate / lo, output, limit)
    assert sequences is not None
    evaluation = at(sequences)
    return Deployment(
        candidate=evaluation.candidate,
        replicas=lo,
        evaluation=evaluation,
        tokens_per_s=rate * output,
        max_sequences=limit,
    )


def plan_fields(deployment: Deployment) -> dict[str, Any]:
    """A serving deployment's choices (for JSON/CSV)."""
    c = deployment.candidate
    return {
        "quant": c.quant,
        "kv_dtype": c.kv_dtype,
        "dtype": c.dtype,
        "tp": c.tp,
        "replicas": deployment.replicas,
        "sequences_per_replica": c.concurrency,
        "max_sequences_per_replica": deployment.max_sequences,
    }


def plan_summary(fields: Mapping[str, Any]) -> str:
    """E.g. '3 × tp2, fp8 weights, bf16 KV, 67 seq each' (replicas × tensor parallelism, sequences per replica)."""
    weights = fields["dtype"] if fields["quant"] == "none" else fields["quant"]
    kv = fields["dtype"] if fields["kv_dtype"] == "auto" else fields["kv_dtype"]
    return f"{fields['replicas']} × tp{fields['tp']}, {weights} weights, {kv} KV, {fields['sequences_per_replica']} seq each"


def _option(base: Option, deployment: Deployment, per_node: int) -> Option:
    fields = plan_fields(deployment)
    speed = deployment.speed
    estimate = deployment.evaluation.estimate
    assert estimate is not None
    return Option(
        accelerator_id=base.accelerator_id,
        accelerator=base.accelerator,
        vendor=base.vendor,
        gpus=deployment.gpus,
        nodes=math.ceil(deployment.gpus / per_node),
        task="serve",
        usd_per_gpu_hour=base.usd_per_gpu_hour,
        purchase_usd_per_gpu=base.purchase_usd_per_gpu,
        plan=plan_summary(fields),
        plan_fields=MappingProxyType(fields),
        time_s=1 / speed.per_user_decode_tokens_per_s,
        tokens_per_s=deployment.tokens_per_s,
        headroom_bytes=estimate.headroom_bytes,
        extra=MappingProxyType(
            {
                "ttft_s": speed.ttft_s,
                "per_user_decode_tokens_per_s": speed.per_user_decode_tokens_per_s,
                "bound": speed.bound,
            }
        ),
    )


def _why_not(
    closest: Evaluation[ServeCandidate] | None, max_gpus: int, load: ServeLoad
) -> tuple[ReasonKind, str]:
    if closest is None or closest.estimate is None:
        return "unsupported", f"no valid serving set-up ({closest.error if closest else 'nothing to search'})"
    if closest.memory_over_bytes > 0:
        return (
            "fit",
            f"doesn't fit by {format_gib(closest.memory_over_bytes, 1)} per GPU at tp{closest.candidate.tp}",
        )
    if closest.latency_over > 0:
        return "load", "misses the latency targets even with one sequence per replica"
    return "load", f"cannot hold the load within {max_gpus} GPU{'s' if max_gpus > 1 else ''}"


def _size_accelerator(
    spec: ModelSpec, accelerator: Accelerator, base: Option, load: ServeLoad, *, pins: Pins, headroom: float,
    objective: Objective, max_gpus: int,
) -> tuple[Option, int, int]:  # fmt: skip
    """The best deployment on one accelerator type, the shapes tried and the estimates made."""
    per_node = 1 if accelerator.unified_memory else FULL_NODE
    cluster = Cluster(accelerator=accelerator, gpus_per_node=per_node)
    engine = serve_engine(load.runtime, accelerator)
    backends = engine.allowed("backend", accelerator.backend)
    if backends is not None and accelerator.backend not in backends:
        why = f"{engine.name} does not run on {accelerator.backend} devices"
        return base.rejected("unsupported", why), 0, 0
    try:
        space = build_serve_space(spec, cluster, pins, engine)
    except SwiftplanError as error:
        return base.rejected("unsupported", error.message), 0, 0
    workload = ServeWorkload(
        context=load.context,
        ttft_s=load.ttft_s,
        decode_tps=load.decode_tps,
        gpu_memory_utilization=load.gpu_memory_utilization,
        runtime=load.runtime or engine_runtime(engine),
        eager=load.eager,
        vision=load.vision,
    )
    evaluator = ServeEvaluator(spec, cluster, workload, space, headroom=headroom)
    options: list[tuple[tuple, Option]] = []
    closest: Evaluation[ServeCandidate] | None = None
    shapes = 0
    for structure in space.structures():
        shapes += 1
        result = _deploy(evaluator, structure, load, max_gpus // structure.tp)
        if isinstance(result, Deployment):
            option = _option(base, result, per_node)
            options.append(((sort_key(option, objective), structure.simplicity()), option))
        elif closest is None or result.rank_key("throughput") < closest.rank_key("throughput"):
            closest = result
    if options:
        return min(options, key=lambda pair: pair[0])[1], shapes, evaluator.estimates
    kind, reason = _why_not(closest, max_gpus, load)
    return base.rejected(kind, reason), shapes, evaluator.estimates


def serve_engine(runtime: ServeRuntime | None, accelerator: Accelerator) -> Engine:
    """The engine a deployment is sized for: the one that runs `runtime` (engines.json `runtime`), else the
    accelerator's default (vLLM where it runs, else the built-in server)."""
    own = None if runtime is None else runtime_engine(runtime, "serve")
    return own or default_engine("serve", accelerator.backend)


def size_serving(
    spec: ModelSpec,
    accelerators: Iterable[Accelerator],
    load: ServeLoad,
    *,
    objective: Objective,
    constraints: Constraints,
    pins: Pins | None = None,
    headroom: float = 0.05,
    prices: Mapping[str, Price] | None = None,
) -> SizingResult:
    """One option per allowed accelerator: the deployment that holds the load best under the objective."""
    pins = pins or Pins()
    if pins.quants is None:
        pins = replace(pins, quants=DEFAULT_QUANTS)
    options: list[Option] = []
    shapes = searched = estimates = 0
    for accelerator in accelerators:
        if not constraints.allows_hardware(accelerator.vendor, 1):
            continue
        price = (prices or {}).get(accelerator.id) or catalog_price(accelerator)
        skipped = skip_reason(accelerator, price, objective, constraints, task="serve")
        if skipped is not None:
            options.append(skipped)
            continue
        per_node = 1 if accelerator.unified_memory else FULL_NODE
        max_gpus = per_node * (1 if accelerator.unified_memory else load.max_nodes)
        if constraints.max_gpus is not None:
            max_gpus = min(max_gpus, constraints.max_gpus)
        base = blank_option(accelerator, price, task="serve")
        option, tried, made = _size_accelerator(
            spec,
            accelerator,
            base,
            load,
            pins=pins,
            headroom=headroom,
            objective=objective,
            max_gpus=max_gpus,
        )
        options.append(option)
        shapes += tried
        searched += 1
        estimates += made
    return SizingResult(
        options=tuple(options), clusters=shapes, searched=searched, pruned=0, estimates=estimates
    )
