"""The dashboard's search: `swiftplan fit`'s Optuna study, reporting every candidate as it is evaluated.

`prepare` turns a `JobRequest` and a cluster into the evaluator and settings `fit` would use;
`run_search` runs the study through a thin proxy of the evaluator that hands each newly evaluated
structure to a callback (which may raise `SearchCancelled` to stop the study); `snapshot` turns the
candidates so far into the scatter's points. Pure apart from resolving the model (catalog, local file
or hub), like `fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.search.candidate import Candidate, ServeCandidate, ServeWorkload, TrainWorkload
from swiftplan.planner.search.evaluate import INVALID, Evaluation
from swiftplan.planner.search.optimize import SearchResult, SearchSettings
from swiftplan.planner.search.pins import Pins
from swiftplan.tui.job import JobRequest

PointKind = Literal["infeasible", "feasible", "front", "best"]


class SearchCancelled(Exception):
    """Raised from the candidate callback to stop a running study."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """Everything one search needs, built once before the study starts."""

    request: JobRequest
    """The job as the form gave it."""
    spec: ModelSpec
    """The model's architecture."""
    cluster: Cluster
    """The hardware."""
    pins: Pins
    """The form's method/quantization/rank choices as search pins."""
    workload: TrainWorkload | ServeWorkload
    """What the plan must do."""
    evaluator: Any
    """`TrainEvaluator` or `ServeEvaluator` (memoised estimates)."""
    settings: SearchSettings
    """Objective, Pareto mode, seed and trials."""

    @property
    def title(self) -> str:
        """'Qwen/Qwen2.5-7B on 1 × NVIDIA GeForce RTX 4090 (train, objective: time)'."""
        mode = "Pareto front" if self.settings.pareto else f"objective: {self.settings.objective}"
        return f"{self.spec.name} on {self.cluster.describe()} ({self.request.task}, {mode})"


def prepare(request: JobRequest, cluster: Cluster, *, host_ram_bytes: int, headroom: float = 0.05) -> Problem:
    """Resolve the model and build the search space and evaluator, as `swiftplan fit` does."""
    from swiftplan.executors.model_source import resolve_model
    from swiftplan.planner.search.evaluate import ServeEvaluator, TrainEvaluator
    from swiftplan.planner.search.serve_space import build_serve_space
    from swiftplan.planner.search.space import build_train_space

    spec = resolve_model(request.model)
    settings = SearchSettings(
        objective=request.objective, pareto=request.pareto, seed=request.seed, trials=request.trials
    )
    workload: TrainWorkload | ServeWorkload
    if request.task == "train":
        pins = Pins(methods=request.methods, quants=request.quants, ranks=request.ranks)
        workload = TrainWorkload(
            seq_len=request.seq_len,
            global_batch=request.global_batch,
            dataset_tokens=request.dataset_tokens,
            epochs=request.epochs,
        )
        space = build_train_space(spec, cluster, pins)
        evaluator: Any = TrainEvaluator(
            spec, cluster, workload, space, headroom=headroom, host_ram_bytes=host_ram_bytes
        )
    else:
        pins = Pins(quants=request.quants)
        workload = ServeWorkload(context=request.context, concurrency=request.concurrency)
        evaluator = ServeEvaluator(
            spec, cluster, workload, build_serve_space(spec, cluster, pins), headroom=headroom
        )
    return Problem(
        request=request,
        spec=spec,
        cluster=cluster,
        pins=pins,
        workload=workload,
        evaluator=evaluator,
        settings=settings,
    )


class _Reporting:
    """The evaluator with its top-level entry points reporting each result (one call per structure)."""

    def __init__(self, inner: Any, report: Callable[[Evaluation], None]) -> None:
        self._inner, self._report = inner, report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def resolve(self, structure: Any, objective: Any = "time") -> Evaluation:
        return self._done(self._inner.resolve(structure, objective))

    def evaluate(self, candidate: Any) -> Evaluation:
        return self._done(self._inner.evaluate(candidate))

    def best_concurrency(self, structure: Any, objective: Any = "throughput") -> Evaluation:
        return self._done(self._inner.best_concurrency(structure, objective))

    def _done(self, evaluation: Evaluation) -> Evaluation:
        self._report(evaluation)
        return evaluation


def run_search(problem: Problem, on_candidate: Callable[[Evaluation], None]) -> SearchResult:
    """Run the study; `on_candidate` sees every structure evaluated, and may raise SearchCancelled."""
    from swiftplan.planner.search.optimize import search_serving, search_training

    proxy: Any = _Reporting(problem.evaluator, on_candidate)
    if problem.request.task == "train":
        return search_training(proxy, problem.settings)
    return search_serving(proxy, problem.settings)


# --- what the live view shows ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Point:
    """One candidate in the scatter."""

    memory_bytes: int
    """Predicted device total per GPU."""
    time_s: float
    """Training: time to train; serving: seconds per generated token for one user."""
    kind: PointKind
    """How it is drawn: over a limit, within limits, on the time-vs-memory front, or the best so far."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSnapshot:
    """The search as the live view shows it."""

    search_id: int
    """Which search (a restarted search gets a new id; stale reports are dropped)."""
    evaluated: int
    """Distinct candidates evaluated so far."""
    feasible: int
    """How many of them fit."""
    best_line: str
    """The best plan so far in one line ('' until one fits)."""
    points: tuple[Point, ...]
    """Candidates with an estimate."""
    limit_bytes: int
    """Device memory a plan may use (budget less headroom)."""
    budget_bytes: int
    """Device memory."""
    y_label: str
    """What the y axis measures."""


def candidate_summary(evaluation: Evaluation) -> str:
    """A plan in one line: 'LoRA r16 · nf4 · bf16 adamw · 4×4 · ckpt · 1 GPU'."""
    c = evaluation.candidate
    if isinstance(c, ServeCandidate):
        replicas = max(1, evaluation.gpus // c.tp)
        weights = c.dtype if c.quant == "none" else c.quant
        return f"{weights} weights · KV {c.kv_dtype} · TP{c.tp}×{replicas} · {c.concurrency} seqs"
    assert isinstance(c, Candidate)
    accum = evaluation.estimate.setup.grad_accum if evaluation.estimate else 1  # type: ignore[union-attr]
    parts = [c.family + (f" r{c.rank}" if c.method != "full" else "")]
    if c.quant != "none":
        parts.append(c.quant)
    parts.append(f"{c.precision} {c.optimizer}")
    parts.append(f"{c.micro_batch}×{accum}" + (" ckpt" if c.grad_ckpt else ""))
    if c.zero or c.offload != "none":
        parts.append(f"ZeRO-{c.zero}" + ("" if c.offload == "none" else f" +{c.offload}"))
    layout = c.layout
    gpus = f"{layout.gpus} GPU" + ("s" if layout.gpus > 1 else "")
    if layout.tp > 1 or layout.pp > 1:
        gpus += f" tp{layout.tp} pp{layout.pp}"
    parts.append(gpus)
    return " · ".join(parts)


def best_line(evaluation: Evaluation, task: str) -> str:
    """The best-so-far line: the plan, its speed and its memory."""
    from swiftplan.cli._fit_render import duration
    from swiftplan.units import format_gib

    speed = f"{evaluation.tokens_per_s:,.0f} tok/s"
    if task == "train":
        speed += f", {duration(evaluation.time_s)}"
    return f"{candidate_summary(evaluation)} — {speed}, {format_gib(evaluation.device_total_bytes, 1)}/GPU"


def time_memory_front(evaluations: Iterable[Evaluation]) -> set[Any]:
    """Candidates of the feasible plans no other beats on both time and memory."""
    feasible = sorted((e for e in evaluations if e.feasible), key=lambda e: (e.device_total_bytes, e.time_s))
    front, fastest = set(), float("inf")
    for evaluation in feasible:
        if evaluation.time_s < fastest:
            front.add(evaluation.candidate)
            fastest = evaluation.time_s
    return front


def snapshot(search_id: int, problem: Problem, evaluations: Sequence[Evaluation]) -> SearchSnapshot:
    """The live view of the candidates evaluated so far."""
    objective = problem.settings.objective
    ranked = sorted(evaluations, key=lambda e: e.rank_key(objective))
    best = ranked[0] if ranked and ranked[0].feasible else None
    front = time_memory_front(evaluations)
    points = []
    for evaluation in evaluations:
        if evaluation.estimate is None or evaluation.time_s >= INVALID:
            continue
        kind: PointKind = "infeasible"
        if best is not None and evaluation.candidate == best.candidate:
            kind = "best"
        elif evaluation.candidate in front:
            kind = "front"
        elif evaluation.feasible:
            kind = "feasible"
        points.append(Point(memory_bytes=evaluation.device_total_bytes, time_s=evaluation.time_s, kind=kind))
    return SearchSnapshot(
        search_id=search_id,
        evaluated=len(evaluations),
        feasible=sum(1 for e in evaluations if e.feasible),
        best_line=best_line(best, problem.request.task) if best else "",
        points=tuple(points),
        limit_bytes=problem.evaluator.limit_bytes,
        budget_bytes=problem.cluster.memory_bytes_per_device,
        y_label="time to train" if problem.request.task == "train" else "s/token per user",
    )
