"""How candidates map to Optuna parameters: suggest, encode for storage, enumerate one-choice neighbours.

Conditional choices get their own parameter names (`quant.lora`, `precision.qlora`), so a value
is only ever sampled where it means something; a dimension with a single allowed value is not a
parameter at all. Invalid combinations the sampler may still produce (ZeRO-3 on a base it cannot partition,
ZeRO without offload on one data-parallel rank) are repaired to the nearest valid candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from swiftplan.planner.search.candidate import Candidate, Layout, ServeCandidate
from swiftplan.planner.search.serve_space import ServeSpace
from swiftplan.planner.search.space_choices import SHARDING_CLASSES, TrainSpace, sharding_class


def _cat(trial: Any, name: str, choices: Sequence[Any]) -> Any:
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


class TrainParams:
    """The training structure as Optuna parameters (the evaluator resolves the memory-only variants)."""

    def __init__(
        self, space: TrainSpace, *, pareto: bool, micro_batches: Callable[[Candidate], tuple[int, ...]]
    ) -> None:
        self.space, self.pareto, self.micro_batches = space, pareto, micro_batches
        self.target_keys = {names: key for key, names in space.targets.items()}
        self.searches_capacity = len(space.ranks) > 1 or len(space.targets) > 1
        self._structures = list(space.structures())
        self.size = sum(len(micro_batches(s)) for s in self._structures) if pareto else len(self._structures)
        self.all_micro_batches = (
            sorted({b for s in self._structures for b in micro_batches(s)}) if pareto else []
        )
        self.classes = space.sharding_classes()

    def structures(self) -> list[Candidate]:
        """Every point the study can propose (with each micro-batch in Pareto mode)."""
        if not self.pareto:
            return self._structures
        return [s.replace(micro_batch=b) for s in self._structures for b in self.micro_batches(s)]

    def _sharding_param(self, quant: str) -> tuple[str, tuple[str, ...]]:
        """Bases ZeRO-3 cannot partition (int8; a 4-bit one where the engine does not) sample from their own list."""
        if self.space.zero3_partitions(quant):
            return "sharding", self.classes
        return "sharding.quantized", tuple(c for c in self.classes if not c.startswith("zero3")) or ("none",)

    def _finish(self, candidate: Candidate) -> Candidate:
        candidate = self.space.canonical(candidate)
        if self.pareto:
            allowed = self.micro_batches(candidate)
            fitting = [b for b in allowed if b <= candidate.micro_batch] or [allowed[0]]
            candidate = candidate.replace(micro_batch=fitting[-1])
        return candidate

    def suggest(self, trial: Any) -> Candidate:
        """Sample one structure in the trial."""
        space = self.space
        method = _cat(trial, "method", space.methods)
        rank = 0
        targets: tuple[str, ...] = ()
        if method != "full":
            rank = _cat(trial, "rank", space.ranks)
            targets = space.targets[_cat(trial, "targets", list(space.targets))]
        quant = _cat(trial, f"quant.{method}", space.quant_kinds(method))
        name, classes = self._sharding_param(quant)
        zero, offload = SHARDING_CLASSES[_cat(trial, name, classes)][0]
        candidate = Candidate(
            method=method,
            quant=quant,
            grad_ckpt=_cat(trial, "grad_ckpt", space.grad_ckpt),
            zero=zero,
            offload=offload,
            layout=Layout.from_key(_cat(trial, "layout", [layout.key for layout in space.layouts])),
            rank=rank,
            targets=targets,
            micro_batch=_cat(trial, "micro_batch", self.all_micro_batches) if self.pareto else 0,
        )
        return self._finish(candidate)

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that reproduce `candidate`'s structure (for enqueue_trial)."""
        space, method = self.space, candidate.method
        structure = self._finish(candidate)
        values: list[tuple[str, Sequence[Any], Any]] = [
            ("method", space.methods, method),
            (f"quant.{method}", space.quant_kinds(method), structure.quant),
            ("grad_ckpt", space.grad_ckpt, candidate.grad_ckpt),
            (*self._sharding_param(structure.quant), sharding_class(structure.zero, structure.offload)),
            ("layout", space.layouts, candidate.layout.key),
        ]
        if method != "full":
            values += [
                ("rank", space.ranks, candidate.rank),
                ("targets", list(space.targets), self.target_keys[candidate.targets]),
            ]
        if self.pareto:
            values.append(("micro_batch", self.all_micro_batches, structure.micro_batch))
        return {name: value for name, choices, value in values if len(choices) > 1}

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        """JSON-able form of the structure, stored with each trial."""
        return _candidate_dict(candidate)

    def decode(self, encoded: dict[str, Any]) -> Candidate:
        """Inverse of `encode`."""
        data = dict(encoded)
        data["layout"] = Layout.from_key(data["layout"])
        data["targets"] = tuple(data["targets"])
        return self._finish(Candidate(**data))

    def neighbours(self, candidate: Candidate) -> list[Candidate]:
        """Structures one choice away (layouts: one or two factors doubled or halved)."""
        space = self.space
        base = self._finish(candidate.replace(micro_batch=candidate.micro_batch if self.pareto else 0))
        options: list[Candidate] = []
        for method in space.methods:
            if method != base.method:
                rank = (base.rank or space.ranks[0]) if method != "full" else 0
                targets = (base.targets or next(iter(space.targets.values()))) if method != "full" else ()
                options += [
                    base.replace(method=method, quant=q, rank=rank, targets=targets)
                    for q in space.quant_kinds(method)
                ]
        options += [base.replace(quant=q) for q in space.quant_kinds(base.method)]
        options += [base.replace(grad_ckpt=g) for g in space.grad_ckpt]
        options += [
            base.replace(zero=SHARDING_CLASSES[c][0][0], offload=SHARDING_CLASSES[c][0][1])
            for c in self.classes
        ]
        options += [base.replace(layout=layout) for layout in space.layouts if _adjacent(base.layout, layout)]
        if base.method != "full":
            options += [base.replace(rank=r) for r in space.ranks]
            options += [base.replace(targets=t) for t in space.targets.values()]
        if self.pareto:
            options += [base.replace(micro_batch=b) for b in self.micro_batches(base)]
        out = []
        for option in options:
            option = self._finish(option)
            if option != base and option not in out:
                out.append(option)
        return out


def _adjacent(a: Layout, b: Layout) -> bool:
    steps = [x / y for x, y in ((a.gpus, b.gpus), (a.tp, b.tp), (a.pp, b.pp)) if x != y]
    return len(steps) >= 1 and all(s in (0.5, 2.0) for s in steps) and len(steps) <= 2


def _candidate_dict(candidate: Candidate) -> dict[str, Any]:
    return {
        "method": candidate.method,
        "quant": candidate.quant,
        "precision": candidate.precision,
        "optimizer": candidate.optimizer,
        "grad_ckpt": candidate.grad_ckpt,
        "zero": candidate.zero,
        "offload": candidate.offload,
        "layout": candidate.layout.key,
        "rank": candidate.rank,
        "targets": list(candidate.targets),
        "micro_batch": candidate.micro_batch,
    }


class ServeParams:
    """The serving space as Optuna parameters."""

    searches_capacity = False

    def __init__(self, space: ServeSpace) -> None:
        self.space = space
        self.size = space.size()

    def structures(self) -> list[ServeCandidate]:
        """Every point the study can propose."""
        return list(self.space.structures())

    def suggest(self, trial: Any) -> ServeCandidate:
        """Sample one candidate in the trial."""
        space = self.space
        return ServeCandidate(
            quant=_cat(trial, "quant", space.quants),
            kv_dtype=_cat(trial, "kv_dtype", space.kv_dtypes),
            tp=_cat(trial, "tp", space.tps),
            dtype=space.dtype,
        )

    def params_of(self, candidate: ServeCandidate) -> dict[str, Any]:
        """Trial parameters for `candidate`."""
        space = self.space
        values = (
            ("quant", space.quants, candidate.quant),
            ("kv_dtype", space.kv_dtypes, candidate.kv_dtype),
            ("tp", space.tps, candidate.tp),
        )
        return {name: value for name, choices, value in values if len(choices) > 1}

    def encode(self, candidate: ServeCandidate) -> dict[str, Any]:
        """JSON-able form stored with each trial."""
        return {"quant": candidate.quant, "kv_dtype": candidate.kv_dtype, "tp": candidate.tp}

    def decode(self, encoded: dict[str, Any]) -> ServeCandidate:
        """Inverse of `encode`."""
        return ServeCandidate(
            quant=encoded["quant"], kv_dtype=encoded["kv_dtype"], tp=encoded["tp"], dtype=self.space.dtype
        )

    def neighbours(self, candidate: ServeCandidate) -> list[ServeCandidate]:
        """Candidates one choice away."""
        base = candidate.replace(concurrency=0)
        options = [base.replace(quant=q) for q in self.space.quants] + [
            base.replace(kv_dtype=k) for k in self.space.kv_dtypes
        ]
        options += [base.replace(tp=t) for t in self.space.tps]
        return [o for i, o in enumerate(options) if o != base and o not in options[:i]]
