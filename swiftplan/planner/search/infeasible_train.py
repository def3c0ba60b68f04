"""The changes that would make a training job fit, each checked with the estimator under the user's pins:
QLoRA (when the pins left it out), the longest sequence that fits, ZeRO-3 offload with the host RAM it needs,
and the smallest bigger catalog GPU. Its checks use the leanest variant of each structure at micro-batch 1
with checkpointing (`_Train.lean_set`), the least memory the space offers. Pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.search.candidate import Candidate, Layout, ServeCandidate
from swiftplan.planner.search.evaluate import Evaluation, TrainEvaluator
from swiftplan.planner.search.infeasible_fixes import Suggestion, _bigger_gpu, _first_fit, _largest_fitting
from swiftplan.planner.search.infeasible_shortfall import _fit_text
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.space import build_train_space
from swiftplan.planner.setup import TrainSetup
from swiftplan.units import GiB, format_gib


class _Train:
    """Feasibility checks for training, sharing the user's pins, workload and limits."""

    def __init__(self, base: TrainEvaluator, pins: Pins) -> None:
        self.base, self.pins = base, pins

    def evaluator(
        self,
        *,
        cluster: Cluster | None = None,
        pins: Pins | None = None,
        seq: int | None = None,
        host_ram_bytes: int | None | Literal["same"] = "same",
    ) -> TrainEvaluator:
        base = self.base
        cluster = cluster or base.cluster
        space = build_train_space(
            base.spec, cluster, pins or self.pins, base.space.engine, global_batch=base.workload.global_batch
        )
        workload = base.workload if seq is None else replace(base.workload, seq_len=seq)
        host = base.host_ram_bytes if isinstance(host_ram_bytes, str) else host_ram_bytes
        return TrainEvaluator(
            base.spec, cluster, workload, space, headroom=base.headroom, host_ram_bytes=host
        )

    @staticmethod
    def lean_set(evaluator: TrainEvaluator) -> list[Candidate]:
        """The leanest variant of every checkpointed structure at micro-batch 1, QLoRA and sharded ones first."""
        space = evaluator.space
        ckpt = True if True in space.grad_ckpt else space.grad_ckpt[0]
        mb = space.micro_batches[0] if space.micro_batches else 1
        leans = {evaluator.lean(s.replace(micro_batch=mb)) for s in space.structures() if s.grad_ckpt == ckpt}
        return sorted(
            leans,
            key=lambda c: (c.method != "qlora", -c.zero, c.offload == "none", c.layout.gpus, c.simplicity()),
        )

    def fits(self, evaluator: TrainEvaluator, candidates: list[Candidate] | None = None) -> Evaluation | None:
        return _first_fit(evaluator.evaluate(c) for c in (candidates or self.lean_set(evaluator)))


def _qlora_suggestion(checks: _Train) -> Suggestion | None:
    """QLoRA, when the pins left it out and it fits."""
    if "qlora" in checks.base.space.methods:
        return None
    try:
        qlora = checks.evaluator(pins=replace(checks.pins, methods=("qlora",), quants=None, precisions=None))
    except SwiftplanError:
        return None
    plan = checks.fits(qlora)
    if plan is None:
        return None
    return Suggestion(change="QLoRA", text=f"QLoRA (--method qlora): {_fit_text(plan)}.", evaluation=plan)


def _shorter_sequence(checks: _Train) -> Suggestion | None:
    """The longest sequence (a multiple of 256) at which one of the five leanest plans fits."""
    evaluator = checks.base
    seq = evaluator.workload.seq_len
    if seq <= 256:
        return None
    leans = sorted(checks.lean_set(evaluator), key=lambda c: evaluator.evaluate(c).device_total_bytes)[:5]
    plan = _largest_fitting(
        256, seq - 1, 256, lambda length: checks.fits(checks.evaluator(seq=length), leans)
    )
    if plan is None or plan.estimate is None or not isinstance(plan.estimate.setup, TrainSetup):
        return None
    text = f"a shorter sequence, --seq {plan.estimate.setup.seq_len}: {_fit_text(plan)}."
    return Suggestion(change="shorter sequence", evaluation=plan, text=text)


def _bigger_train_gpu(checks: _Train) -> Suggestion | None:
    """The smallest catalog GPU one of the lean plans fits, re-estimated on it."""
    evaluator = checks.base
    leans = [evaluator.evaluate(c) for c in checks.lean_set(evaluator)]

    def recheck(candidate: Candidate | ServeCandidate, cluster: Cluster) -> Evaluation | None:
        if not isinstance(candidate, Candidate):
            return None
        try:
            other = checks.evaluator(cluster=cluster)
        except SwiftplanError:
            return None
        bare = candidate.replace(micro_batch=0)
        if bare not in other.space.variants(other.space.canonical(bare)):
            return None  # the new GPU cannot run this variant
        return other.evaluate(candidate)

    ordered = sorted(leans, key=lambda e: e.candidate.simplicity())
    return _bigger_gpu(evaluator.cluster, ordered, recheck, evaluator.headroom)


def _offload_plan(checks: _Train, methods: tuple[str, ...]) -> Suggestion | None:
    """ZeRO-3 offloading parameters and optimizer state on all GPUs, with the host RAM it needs."""
    method = "lora" if "lora" in methods or "qlora" in methods else "full"
    pins = replace(
        checks.pins,
        methods=(method,),
        quants=("none",),
        zero=(3,),
        max_offload="optimizer+params",
        tp=None,
        pp=None,
        dp=None,
    )
    try:
        unbounded = checks.evaluator(pins=pins, host_ram_bytes=None)
    except SwiftplanError:
        return None
    world = unbounded.cluster.world_size
    structures = [
        s
        for s in unbounded.space.structures()
        if s.offload == "optimizer+params" and s.layout == Layout(gpus=world)
    ]
    if not structures:
        return None
    plan = checks.fits(
        unbounded, [unbounded.lean(s.replace(micro_batch=1, grad_ckpt=True)) for s in structures]
    )
    if plan is None:
        return None
    host = plan.host_bytes_per_node
    limit = checks.base.host_ram_bytes
    text = (
        f"ZeRO-3 offloading parameters and optimizer state ({plan.candidate.family}, bf16 base): "
        f"{format_gib(plan.device_total_bytes, 1)} per device, and {format_gib(host, 0)} of host RAM per node"
    )
    if limit is not None and host > limit:
        text += f" (--host-ram {max(1, -(-host // GiB))} or more; {format_gib(limit, 0)} is allowed now)"
    return Suggestion(change="offload", text=text + ".", evaluation=plan)
