"""One estimate: memory and speed of a training or serving set-up on a cluster (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from swiftplan.errors import SwiftplanError
from swiftplan.planner.adapters import all_linear_peft_note, validate_targets
from swiftplan.planner.allocator import AllocatorSettings, with_reserved
from swiftplan.planner.architecture import total_params
from swiftplan.planner.breakdown import MemoryBreakdown
from swiftplan.planner.comm_buffers import serve_comm_bytes, serve_comm_term, train_comm_term
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import ObjectiveSetup, resolve_reference
from swiftplan.planner.objective_speed import objective_speed, rollout_capacity
from swiftplan.planner.padding import varied_shapes
from swiftplan.planner.serve_memory import serve_memory, serve_quant
from swiftplan.planner.setup import ServeSetup, Task, TrainSetup
from swiftplan.planner.speed import ServeSpeed, TrainSpeed, serve_speed
from swiftplan.planner.vision_memory import train_memory_with_vision, vision_notes
from swiftplan.planner.vision_speed import with_vision_speed

SpeedT = TypeVar("SpeedT", TrainSpeed, ServeSpeed)


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """The answer to "does it fit, and how fast": the breakdown of the most loaded device and the speed."""

    task: Task
    """"train" or "serve"."""
    model: ModelSpec
    """The model sized."""
    cluster: Cluster
    """The hardware it was sized for."""
    setup: TrainSetup | ServeSetup
    """The configuration."""
    memory: MemoryBreakdown
    """Per-device memory (most loaded device)."""
    device_memory_bytes: int
    """Memory one device offers."""
    host_bytes: int
    """Host RAM for offloaded state, bytes."""
    params: int
    """All parameters, adapters included."""
    trainable_params: int
    """Parameters receiving gradients (0 for serving)."""
    speed: TrainSpeed | ServeSpeed | None
    """Predicted speed; None when the accelerator has no published throughput (see notes)."""
    max_concurrency: int | None = None
    """Serving: sequences of the requested context that fit."""
    max_context: int | None = None
    """Serving: longest context that fits at the requested concurrency."""
    rollout_sequences: int | None = None
    """GRPO/PPO with vLLM: sequences one rollout engine's KV cache holds at once (0: it cannot start)."""
    notes: tuple[str, ...] = ()
    """What the reader should know: probe adjustments, missing figures."""
    allocator: AllocatorSettings = AllocatorSettings()
    """How the run drives PyTorch's caching allocator (peak_reserved depends on it)."""

    @property
    def fits(self) -> bool:
        """Whether reserved memory plus the context stays within the device's memory (and, serving, the KV
        budget holds the load)."""
        if isinstance(self.setup, ServeSetup):
            return self.max_concurrency is not None and self.max_concurrency >= self.setup.concurrency
        return self.memory.device_total <= self.device_memory_bytes and self.rollout_sequences != 0

    @property
    def training_speed(self) -> TrainSpeed:
        """`speed` of a training estimate; raises SwiftplanError (with the notes) when there is none."""
        if not isinstance(self.speed, TrainSpeed):
            raise SwiftplanError(
                " ".join(self.notes) or f"no training speed estimate for this {self.task} set-up"
            )
        return self.speed

    @property
    def serving_speed(self) -> ServeSpeed:
        """`speed` of a serving estimate; raises SwiftplanError (with the notes) when there is none."""
        if not isinstance(self.speed, ServeSpeed):
            raise SwiftplanError(
                " ".join(self.notes) or f"no serving speed estimate for this {self.task} set-up"
            )
        return self.speed

    @property
    def headroom_bytes(self) -> int:
        """Device memory left at the peak (negative when it does not fit)."""
        return self.device_memory_bytes - self.memory.device_total

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of `swiftplan estimate --json`."""
        speed: dict[str, Any]
        if self.speed is None:
            speed = {"tokens_per_s": None, "step_time_s": None, "bound": "unknown"}
        elif isinstance(self.speed, TrainSpeed):
            speed = {
                "tokens_per_s": self.speed.tokens_per_s,
                "step_time_s": self.speed.step_time_s,
                "bound": self.speed.bound,
                "flops_per_token": self.speed.flops_per_token,
                "mfu_prior": self.speed.mfu_prior,
                "breakdown_s": self.speed.breakdown_s,
            }
        else:
            speed = {
                "tokens_per_s": self.speed.decode_tokens_per_s,
                "step_time_s": 1 / self.speed.per_user_decode_tokens_per_s,
                "bound": self.speed.bound,
                "prefill_tokens_per_s": self.speed.prefill_tokens_per_s,
                "ttft_s": self.speed.ttft_s,
                "per_user_decode_tokens_per_s": self.speed.per_user_decode_tokens_per_s,
            }
        payload: dict[str, Any] = {
            "task": self.task,
            "model": self.model.name,
            "cluster": self.cluster.describe(),
            "params": self.params,
            "trainable_params": self.trainable_params,
            "per_device": self.memory.as_dict(),
            "allocator": {
                "expandable_segments": self.allocator.expandable_segments,
                "variable_lengths": self.allocator.variable_lengths,
            },
            "peak_phase": self.memory.peak_phase,
            "host_bytes": self.host_bytes,
            "device_memory_bytes": self.device_memory_bytes,
            "fits": self.fits,
            "headroom_bytes": self.headroom_bytes,
            "dominant": self.memory.dominant(),
            "notes": list(self.notes),
            "speed": speed,
            "terms": [
                {"name": t.name, "bytes": t.value_bytes, "formula": t.formula, "source": t.source}
                for t in self.memory.terms
            ],
        }
        if isinstance(self.setup, TrainSetup):
            payload["objective"] = objective_json(self.setup)
        if self.task == "serve":
            payload["max_concurrency"] = self.max_concurrency
            payload["max_context"] = self.max_context
        return payload


def objective_json(setup: TrainSetup) -> dict[str, Any]:
    """The objective as `estimate --json` and `fit --json` show it, its reference resolved."""
    objective = setup.objective
    payload: dict[str, Any] = {
        "task": objective.kind,
        "reference": resolve_reference(objective, trains_adapters=setup.trains_adapters),
        "sequences_per_example": objective.sequences_per_example,
    }
    if objective.prompt_len:
        payload["prompt_len"] = objective.prompt_len
    if objective.rollout is not None:
        payload["rollout"] = asdict(objective.rollout)
        payload["kl"] = objective.kl
    return payload


def training_world_size(objective: ObjectiveSetup, cluster: Cluster) -> int:
    """Devices that train: the cluster less a rollout server's own GPUs (refused when it leaves none)."""
    server = objective.server_gpus
    if server >= cluster.world_size:
        raise SwiftplanError(
            f"--rollout-gpus {server} leaves none of the {cluster.world_size} devices of "
            f"{cluster.describe()} to train on.",
            hint="Give the rollout server fewer GPUs, add GPUs, or use --rollout colocate.",
        )
    return cluster.world_size - server


def check_rollout_tp(spec: ModelSpec, objective: ObjectiveSetup, *, train_world: int = 0) -> None:
    """A vLLM rollout engine's --rollout-tp must divide the model's attention heads (vLLM refuses others)
    and, colocated, the training processes it groups (trl 1.16 generation/vllm_generation.py:314: "must
    divide world size"); `train_world` 0 skips the second check (size: the cluster is not chosen yet)."""
    rollout = objective.rollout
    if rollout is None or rollout.engine != "vllm":
        return
    tp = rollout.tp
    if spec.num_heads % tp:
        valid = [d for d in range(1, spec.num_heads + 1) if spec.num_heads % d == 0]
        raise SwiftplanError(
            f"--rollout-tp {tp} does not divide {spec.name}'s {spec.num_heads} attention heads, so vLLM cannot "
            "shard the rollout engine that way.",
            hint=f"Valid rollout tensor-parallel degrees: {', '.join(map(str, valid))}.",
        )
    if rollout.placement == "colocate" and train_world and train_world % tp:
        valid = [d for d in range(1, train_world + 1) if train_world % d == 0 and spec.num_heads % d == 0]
        raise SwiftplanError(
            f"--rollout-tp {tp} does not divide the {train_world} training process(es) a colocated vLLM engine "
            "shares (TRL groups them by the rollout's tensor-parallel degree and refuses the rest).",
            hint=f"Use a --rollout-tp of {', '.join(map(str, valid))} here, more GPUs, or --rollout server "
            "with its own --rollout-gpus.",
        )


def _check_parallelism(spec: ModelSpec, cluster: Cluster, tp: int, pp: int, *, world_size: int = 0) -> None:
    world = world_size or cluster.world_size
    if spec.num_heads % tp:
        raise SwiftplanError(
            f"--tp {tp} does not divide {spec.name}'s {spec.num_heads} attention heads.",
            hint=f"Valid tensor-parallel degrees: {', '.join(str(d) for d in range(1, spec.num_heads + 1) if spec.num_heads % d == 0 and d <= cluster.world_size)}.",
        )
    if spec.num_kv_heads % tp and tp % spec.num_kv_heads:
        raise SwiftplanError(
            f"--tp {tp} neither divides nor is a multiple of {spec.name}'s {spec.num_kv_heads} key/value heads."
        )
    if pp > spec.num_layers:
        raise SwiftplanError(f"--pp {pp} exceeds {spec.name}'s {spec.num_layers} layers.")
    if world % (tp * pp):
        raise SwiftplanError(
            f"--tp {tp} × --pp {pp} = {tp * pp} does not divide the {world} training devices of {cluster.describe()}."
        )


def _speed_or_note(predict: Callable[[], SpeedT], notes: list[str]) -> SpeedT | None:
    """The speed prediction, or None with the reason added to `notes` (an accelerator without
    published throughput still gets its memory estimate)."""
    try:
        return predict()
    except SwiftplanError as error:
        notes.append(str(error))
        return None


def estimate_training(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, *, allocator: AllocatorSettings | None = None
) -> Estimate:
    """Memory and speed of one training configuration; reserved memory under `allocator`'s settings."""
    train_world = training_world_size(setup.objective, cluster)
    _check_parallelism(spec, cluster, setup.parallel.tp, setup.parallel.pp, world_size=train_world)
    check_rollout_tp(spec, setup.objective, train_world=train_world)
    if setup.lora is not None and setup.trains_adapters:
        validate_targets(spec, setup.lora)
    memory = train_memory_with_vision(
        spec, setup, world_size=train_world, device_memory_bytes=cluster.memory_bytes_per_device
    )
    allocator = allocator or AllocatorSettings()
    if setup.runtime.expandable_segments:  # the run's allocator, as its launch sets it
        allocator = replace(allocator, expandable_segments=True)
    if varied_shapes(setup):  # samples of many lengths batched to many shapes (planner/padding.py)
        allocator = replace(allocator, variable_lengths=True)
    comm = train_comm_term(setup, cluster, world_size=train_world)  # NCCL, outside the allocator
    device = with_reserved(
        spec,
        memory.device,
        seq_len=setup.seq_len,
        settings=allocator,
        backend=cluster.accelerator.backend,
        extras=(*memory.extras, *((comm,) if comm else ())),
        pooled=memory.pooled,
        setup_cache=memory.setup_cache,
        moments=memory.moments,
    )
    notes = list(cluster.notes) + vision_notes(spec, setup) + _moe_all_linear_notes(spec, setup)
    rollout_sequences = _rollout_sequences(spec, setup, cluster, train_world, notes)
    speed = _speed_or_note(
        lambda: with_vision_speed(
            spec,
            setup,
            lambda s: objective_speed(
                spec, s, cluster, trainable_params=memory.trainable_params, train_world=train_world
            ),
        ),
        notes,
    )
    return Estimate(
        task="train",
        model=spec,
        cluster=cluster,
        setup=setup,
        memory=device,
        device_memory_bytes=cluster.memory_bytes_per_device,
        host_bytes=memory.host_bytes,
        params=memory.params,
        trainable_params=memory.trainable_params,
        speed=speed,
        notes=tuple(notes),
        allocator=allocator,
        rollout_sequences=rollout_sequences,
    )


def _rollout_sequences(
    spec: ModelSpec, setup: TrainSetup, cluster: Cluster, train_world: int, notes: list[str]
) -> int | None:
    """Sequences a vLLM rollout engine holds at once; a note when its memory cannot hold even one."""
    rollout = setup.objective.rollout
    if rollout is None or rollout.engine != "vllm":
        return None
    wanted, capacity = rollout_capacity(spec, setup, cluster, train_world)
    share = rollout.memory_fraction if rollout.placement == "colocate" else 0.9
    if capacity == 0:
        flag = "--rollout-memory" if rollout.placement == "colocate" else "--rollout-tp"
        notes.append(
            f"The rollout engine cannot start: {share:g} of {cluster.memory_bytes_per_device / 2**30:.0f} GiB does "
            f"not hold its weights, the profiling workspace of the {wanted:,} sequences it runs at once (its "
            f"--max-num-seqs: the step's completions per engine, whose logits vLLM's sampler profiles) and one "
            f"{rollout.seq_len}-token sequence; raise {flag}, or lower --num-generations or --global-batch."
        )
    elif capacity < wanted:
        notes.append(
            f"The rollout engine holds {capacity} of the {wanted} completions it generates per step at once; "
            "the rest wait (slower rollouts, counted in the step time)."
        )
    return capacity


def _moe_all_linear_notes(spec: ModelSpec, setup: TrainSetup) -> list[str]:
    """all-linear on a MoE model where peft 0.22 adapts more than the 0.21 rules the plan follows."""
    lora = setup.lora
    note = None if lora is None or not setup.trains_adapters else all_linear_peft_note(spec, lora)
    return [] if note is None else [note]


def _weight_only_fp8_notes(spec: ModelSpec, setup: ServeSetup, cluster: Cluster) -> list[str]:
    """fp8 weights on a device without FP8 math: how vLLM runs them (capabilities.json fp8_weight_only)."""
    acc = cluster.accelerator
    if serve_quant(spec, setup)[0] != "fp8" or acc.fp8_supported or acc.backend != "cuda":
        return []
    return [
        f"fp8 weights on {acc.display_name}, which has no FP8 math: vLLM keeps them in fp8 (1 byte a weight, "
        "read once a decode step) and multiplies in 16 bits through its FP8 Marlin kernel (W8A16), so prefill "
        "runs at the 16-bit rate; SGLang and LMDeploy are not planned for it."
    ]


def estimate_serving(
    spec: ModelSpec, setup: ServeSetup, cluster: Cluster, *, allocator: AllocatorSettings | None = None
) -> Estimate:
    """Memory, limits and speed of one serving configuration (one replica on `setup.tp` devices)."""
    _check_parallelism(spec, cluster, setup.tp, 1)
    allocator = allocator or AllocatorSettings()
    device_bytes = cluster.memory_bytes_per_device
    memory = serve_memory(
        spec, setup, device_memory_bytes=device_bytes, comm_bytes=serve_comm_bytes(setup, cluster)
    )
    comm = serve_comm_term(setup, cluster)  # NCCL and vLLM custom all-reduce, outside the allocator
    notes = list(cluster.notes) + vision_notes(spec, setup) + _weight_only_fp8_notes(spec, setup, cluster)
    speed = _speed_or_note(
        lambda: serve_speed(
            spec,
            setup,
            cluster.accelerator,
            weight_bytes=memory.device.weights,
            kv_bytes_per_token=memory.kv_bytes_per_token,
        ),
        notes,
    )
    return Estimate(
        task="serve",
        model=spec,
        cluster=cluster,
        setup=setup,
        memory=with_reserved(
            spec,
            memory.device,
            seq_len=setup.context,
            settings=allocator,
            backend=cluster.accelerator.backend,
            extras=(comm,) if comm else (),
        ),
        device_memory_bytes=device_bytes,
        host_bytes=0,
        params=total_params(spec),
        trainable_params=0,
        speed=speed,
        max_concurrency=memory.max_concurrency,
        max_context=memory.max_context,
        notes=tuple(notes),
        allocator=allocator,
    )
