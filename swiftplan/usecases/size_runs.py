"""The two sizing runs behind `size`: training (every cluster planned for the runtime's engine under its
knobs) and serving (every cluster timed for the serving runtime), each returning the sizing result, the
workload as sized (for JSON) and the notes saying what the sizing assumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from swiftplan.planner.hardware import Accelerator
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime import RuntimeChoice
from swiftplan.planner.setup import SERVE_RUNTIMES, parse_choice
from swiftplan.planner.sizing.prices import Price
from swiftplan.planner.sizing.rank import Constraints
from swiftplan.planner.sizing.result import SizingResult
from swiftplan.planner.vision_tokens import language_tokens
from swiftplan.planner.workload import TrainWorkload
from swiftplan.units import GiB
from swiftplan.usecases.fit_vision import vision_note
from swiftplan.usecases.size_request import SizeRequest

DATASET_TOKENS_ASSUMED = "assumed (pass --dataset-tokens)"
"""Where the token count came from when the request gives none (it only scales time and cost)."""


def _size_serving(
    request: SizeRequest, spec: ModelSpec, accelerators: list[Accelerator], limits: Constraints, prices: Mapping[str, Price],
    runtime: RuntimeChoice | None,
) -> tuple[SizingResult, dict[str, Any], list[str]]:  # fmt: skip
    """Serving: (sizing result, workload as sized, notes)."""
    from swiftplan.planner.sizing.serve_sizing import ServeLoad, size_serving

    memory_fraction = (
        request.gpu_memory_utilization
        if runtime is None
        else runtime.options.get("gpu_memory_utilization", request.gpu_memory_utilization)
    )
    load = ServeLoad(
        context=request.load_context, concurrency=request.concurrency, request_rate=request.request_rate,
        prompt_tokens=request.prompt_tokens, output_tokens=request.output_tokens, ttft_s=request.ttft_s,
        decode_tps=request.decode_tps, gpu_memory_utilization=memory_fraction, max_nodes=request.max_nodes,
        runtime=None if runtime is None else parse_choice("serving runtime", runtime.profile.name, SERVE_RUNTIMES),
        eager=request.eager, vision=request.vision,
    )  # fmt: skip
    result = size_serving(
        spec, accelerators, load, objective=request.goal, constraints=limits, pins=request.pins,
        headroom=request.headroom, prices=prices,
    )  # fmt: skip
    workload = {
        "context": load.context, "concurrency": load.concurrency, "request_rate": load.request_rate,
        "prompt_tokens": load.prompt_tokens, "output_tokens": load.output_tokens, "ttft_s": load.ttft_s,
        "decode_tps": load.decode_tps, "gpu_memory_utilization": load.gpu_memory_utilization, "eager": load.eager,
        "vision": None if request.vision is None else asdict(request.vision),
    }  # fmt: skip
    notes = [] if runtime is None else [runtime.describe()]
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=True))
    if load.runtime is not None:
        notes.append(f"sized for {load.runtime}: its limits and its per-step decode cost time every option.")
    if request.pins.quants is None:
        notes.append(
            "weights sized in 16-bit or fp8; pass --quant none,fp8,int8,nf4 to allow bitsandbytes formats."
        )
    if request.ttft_s is None:
        notes.append(
            "TTFT assumes every sequence of a replica prefills at once (the worst case); pass --ttft to bound it."
        )
    return result, workload, notes


def _size_training(
    request: SizeRequest, spec: ModelSpec, accelerators: list[Accelerator], limits: Constraints, prices: Mapping[str, Price],
    runtime: RuntimeChoice | None,
) -> tuple[SizingResult, dict[str, Any], list[str]]:  # fmt: skip
    """Training: (sizing result, workload as sized, notes), every cluster planned under the runtime's knobs
    and for its engine (engines.json `runtime`; swiftplan's loop when the table has none)."""
    from swiftplan.planner.engines import runtime_engine
    from swiftplan.planner.sizing.train_sizing import TrainJob, size_training

    assert runtime is not None
    knobs = runtime.knobs()
    tokens = request.dataset_tokens_or_default
    sequences = -(
        -tokens // request.seq_len
    )  # the last, partial sequence carries its images too (as fit counts)
    image_tokens = language_tokens(spec, request.vision) * sequences
    workload = TrainWorkload(
        seq_len=request.seq_len, global_batch=request.global_batch, dataset_tokens=tokens,
        dataset_image_tokens=image_tokens, epochs=request.epochs, attention=request.attention, runtime=knobs,
        objective=request.training, vision=request.vision, dora=request.dora,
    )  # fmt: skip
    pins = request.pins
    if knobs.fsdp != "none":  # FSDP shards instead of DeepSpeed ZeRO
        pins = replace(pins, zero=(0,), max_offload="none")
    job = TrainJob(
        workload=workload, pins=pins, headroom=request.headroom, host_ram_bytes=request.host_ram_bytes,
        max_nodes=request.max_nodes, network_gbps=request.network_gbps,
        engine=runtime_engine(knobs.name, "train"), global_batch_typed=request.global_batch_typed,
    )  # fmt: skip
    result = size_training(spec, accelerators, job, objective=request.goal, constraints=limits, prices=prices)
    shown = {
        "dataset_tokens": tokens,
        "dataset_tokens_source": DATASET_TOKENS_ASSUMED if request.dataset_tokens is None else "--dataset-tokens",
        "epochs": request.epochs, "seq_len": request.seq_len, "global_batch": request.global_batch,
        "attention": request.attention, "host_ram_gib_per_node": request.host_ram_bytes / GiB,
        "runtime": knobs.name, "objective": asdict(request.training), "dataset_image_tokens": image_tokens, "dora": request.dora,
        "vision": None if request.vision is None else asdict(request.vision),
    }  # fmt: skip
    notes = [runtime.describe()]
    if request.vision is not None:
        notes.append(vision_note(spec, request.vision, serving=False))
    if job.engine is None:
        notes.append(
            f"no engine in swiftplan's table (profiles/engines.json) runs {runtime.profile.label} yet: sized under its "
            "defaults with swiftplan's search space; the next command plans for swiftplan's loop."
        )
    elif request.vision is not None and request.runtime is None:
        notes.append(
            f"sized for {job.engine.label}, the first engine swiftplan launches that trains on images (its own loop "
            "trains text only; pass --runtime to choose another); options it cannot run are left out."
        )
    elif job.engine.name != "swiftplan":
        notes.append(
            f"sized for {job.engine.label} (--runtime {knobs.name}); options it cannot run are left out."
        )
    nodes = {1: "", 2: " or 2 nodes of 8"}.get(request.max_nodes, f" or 2-{request.max_nodes} nodes of 8")
    network = f" over {request.network_gbps:g} Gb/s" if nodes else ""
    notes.append(
        f"clusters: 1, 2, 4, 8 GPUs in one node{nodes}{network}; "
        "GPUs without NVLink on every board (GeForce, RTX A6000, PCIe parts) talk over PCIe."
    )
    return result, shown, notes
