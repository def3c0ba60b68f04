"""Heuristic starting points for the study: the plans an experienced engineer would try first. Pure.

Each seed names the choices it cares about; any the space does not allow fall back to the first
allowed value, so seeds always lie in the (pinned) space.
"""

from __future__ import annotations

from typing import Any

from swiftplan.planner.hardware import Cluster
from swiftplan.planner.search.candidate import Candidate, Layout, ServeCandidate, TrainQuant
from swiftplan.planner.search.serve_space import ServeSpace
from swiftplan.planner.search.space_choices import TrainSpace
from swiftplan.planner.setup import Method, Offload, Optimizer, ZeroStage


def _pick(wanted: Any, allowed: tuple[Any, ...] | list[Any]) -> Any:
    return wanted if wanted in allowed else allowed[0]


def _layout(space: TrainSpace, gpus: int, tp: int = 1, pp: int = 1) -> Layout:
    wanted = Layout(gpus=gpus, tp=tp, pp=pp)
    if wanted in space.layouts:
        return wanted
    same_gpus = [layout for layout in space.layouts if layout.gpus == gpus]
    return same_gpus[0] if same_gpus else space.layouts[-1]


def _seed(
    space: TrainSpace,
    method: Method,
    *,
    quant: TrainQuant,
    optimizer: Optimizer,
    zero: ZeroStage,
    offload: Offload,
    layout: Layout,
) -> Candidate | None:
    if method not in space.methods:
        return None
    sharding = _pick((zero, offload), space.shardings)
    candidate = Candidate(
        method=method,
        quant=_pick(quant, space.quants[method]),
        precision=space.precisions[method][0],
        optimizer=_pick(optimizer, space.optimizers),
        grad_ckpt=_pick(True, space.grad_ckpt),
        zero=sharding[0],
        offload=sharding[1],
        layout=layout,
        rank=0 if method == "full" else _pick(16, space.ranks),
        targets=() if method == "full" else next(iter(space.targets.values())),
    )
    return space.canonical(candidate)


def train_seeds(space: TrainSpace, cluster: Cluster) -> list[Candidate]:
    """LoRA bf16, QLoRA, full with ZeRO-3 (offload on one GPU), LoRA with ZeRO-3 or TP, one GPU alone."""
    world = cluster.world_size
    everything = _layout(space, world)
    one = _layout(space, 1)
    wanted = [
        _seed(space, "lora", quant="none", optimizer="adamw", zero=0, offload="none", layout=everything),
        _seed(space, "qlora", quant="nf4-dq", optimizer="adamw", zero=0, offload="none", layout=everything),
        _seed(
            space,
            "full",
            quant="none",
            optimizer="adamw",
            zero=3,
            offload="none" if world > 1 else "optimizer",
            layout=everything,
        ),
        _seed(space, "lora", quant="none", optimizer="adamw", zero=3, offload="none", layout=everything),
        _seed(
            space, "qlora", quant="nf4-dq", optimizer="paged-adamw-8bit", zero=0, offload="none", layout=one
        ),
        _seed(space, "lora", quant="none", optimizer="adamw", zero=0, offload="none", layout=one),
        _seed(
            space,
            "lora",
            quant="none",
            optimizer="adamw",
            zero=0,
            offload="none",
            layout=_layout(space, world, tp=min(cluster.gpus_per_node, world)),
        ),
        _seed(
            space,
            "full",
            quant="none",
            optimizer="adamw-8bit",
            zero=3,
            offload="optimizer+params",
            layout=everything,
        ),
    ]
    out: list[Candidate] = []
    for seed in wanted:
        if seed is not None and seed not in out:
            out.append(seed)
    return out


def serve_seeds(space: ServeSpace) -> list[ServeCandidate]:
    """Unquantized and fp8 on the smallest tensor-parallel group, and the largest group."""
    wanted = [
        ServeCandidate(
            quant=_pick("none", space.quants),
            kv_dtype=_pick("auto", space.kv_dtypes),
            tp=space.tps[0],
            dtype=space.dtype,
        ),
        ServeCandidate(
            quant=_pick("fp8", space.quants),
            kv_dtype=_pick("fp8", space.kv_dtypes),
            tp=space.tps[0],
            dtype=space.dtype,
        ),
        ServeCandidate(
            quant=_pick("none", space.quants),
            kv_dtype=_pick("auto", space.kv_dtypes),
            tp=space.tps[-1],
            dtype=space.dtype,
        ),
    ]
    return [s for i, s in enumerate(wanted) if s not in wanted[:i]]
