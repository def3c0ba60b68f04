"""The body of `swiftplan fit` once the options are parsed: search, diagnose, write, show."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import typer

from swiftplan.cli._output import console, print_json
from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.units import format_gib


def _validate_targets(spec: ModelSpec, pins: Any) -> None:
    from swiftplan.planner.adapters import validate_targets
    from swiftplan.planner.setup import LoraSetup

    for key in pins.targets or ():
        if key not in ("all-linear", "attention"):
            validate_targets(spec, LoraSetup(targets=tuple(key.split(","))))


def run_fit(
    *,
    spec: ModelSpec,
    model: str,
    cluster: Cluster,
    gpus: str,
    task: str,
    objective: str,
    pareto: bool,
    pins: Any,
    dataset: tuple[int, str] | None,
    epochs: float,
    global_batch: int,
    seq: int,
    attention: str,
    context: int,
    concurrency: int | None,
    ttft: float | None,
    decode_tps: float | None,
    gpu_memory_utilization: float,
    headroom: float,
    host_ram: tuple[int, str],
    seed: int,
    trials: int | None,
    storage: str | None,
    study_name: str | None,
    measure: bool,
    top_k: int,
    measure_steps: int = 3,
    measure_layers: int | None = None,
    measure_device: str = "cuda",
    output: str | None,
    as_json: bool,
    started: float,
) -> None:
    """Search, then print the plan (or the diagnosis) and write the plan file."""
    from swiftplan.cli.fit import fingerprint
    from swiftplan.planner.search import infeasible
    from swiftplan.planner.search.candidate import ServeWorkload, TrainWorkload, cluster_text
    from swiftplan.planner.search.evaluate import ServeEvaluator, TrainEvaluator
    from swiftplan.planner.search.optimize import SearchSettings, search_serving, search_training
    from swiftplan.planner.search.pins import attention_targets
    from swiftplan.planner.search.serve_space import build_serve_space
    from swiftplan.planner.search.space import build_train_space

    host_bytes, host_source = host_ram
    notes: list[str] = [f"cluster note: {n}" for n in cluster.notes]
    workload: TrainWorkload | ServeWorkload
    if task == "train":
        assert dataset is not None
        if epochs <= 0 or global_batch < 1 or seq < 1:
            raise SwiftplanError("--epochs, --global-batch and --seq must be positive.")
        workload = TrainWorkload(
            seq_len=seq,
            global_batch=global_batch,
            dataset_tokens=dataset[0],
            epochs=epochs,
            attention=attention,
        )
        _validate_targets(spec, pins)
        from swiftplan.planner.capabilities import check

        if reasons := check(cluster.accelerator, attention=attention):
            raise SwiftplanError(" ".join(reasons), hint="Use --attention sdpa.")
        space: Any = build_train_space(spec, cluster, pins)
        evaluator: Any = TrainEvaluator(
            spec, cluster, workload, space, headroom=headroom, host_ram_bytes=host_bytes
        )
        notes.append(
            f"workload: {dataset[0]:,} tokens × {epochs:g} epoch(s) ({dataset[1]}), global batch {global_batch} × {seq} tokens; "
            f"host RAM for offload {format_gib(host_bytes, 0)} per node ({host_source})."
        )
    else:
        if concurrency is not None and concurrency < 1:
            raise SwiftplanError(f"--concurrency must be at least 1, got {concurrency}.")
        workload = ServeWorkload(
            context=context,
            concurrency=concurrency,
            ttft_s=ttft,
            decode_tps=decode_tps,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        if concurrency is None and ttft is None and decode_tps is None and objective == "throughput":
            notes.append(
                "no --concurrency or latency target: each replica takes as many sequences as fit, which maximises "
                "throughput at the cost of time to first token; pass --ttft / --decode-tps to bound it."
            )
        space = build_serve_space(spec, cluster, pins)
        evaluator = ServeEvaluator(spec, cluster, workload, space, headroom=headroom)
    if cluster.accelerator.price_usd_per_hour is None:
        notes.append(
            f"cost unknown: the catalog has no price for {cluster.accelerator.display_name}; cost is shown in GPU-hours."
        )
    key = fingerprint(
        spec.name, cluster_text(cluster), task, workload, pins, objective, pareto, headroom, host_bytes
    )
    settings = SearchSettings(
        objective=objective,
        pareto=pareto,
        seed=seed,
        trials=trials,
        storage=storage,  # type: ignore[arg-type]
        study_name=study_name or (f"fit-{key}" if storage else None),
        fingerprint=f"{spec.name} on {cluster_text(cluster)} ({task}) {key}",
    )
    result = search_training(evaluator, settings) if task == "train" else search_serving(evaluator, settings)
    diagnosis = None
    if result.best is None and result.closest is not None:
        diagnose = infeasible.diagnose_training if task == "train" else infeasible.diagnose_serving
        diagnosis = diagnose(evaluator, pins, result.closest, objective)
    measured: list[Any] = []
    measured_evals: list[Any] = []
    if measure and result.best is not None:
        from swiftplan.executors.measure import measure_candidates, record_trials

        measured_evals = [e for e in [result.best, *result.runners_up] if e.estimate][:top_k]
        measured = measure_candidates(
            model,
            [e.estimate.setup for e in measured_evals],
            steps=measure_steps,
            layers=measure_layers,
            device=measure_device,
            seed=seed,
            progress=None if as_json else lambda text: console.print(f"[dim]{text}[/]", highlight=False),
        )
        if result.study is not None:
            record_trials(result.study, measured_evals, measured, objective=objective)
    plan = None
    if result.best is not None:
        plan = _plan(result.best, spec=spec, cluster=cluster, objective=objective, workload=workload)
        if output:
            from swiftplan.plan_file import save_plan

            save_plan(plan, output)
    elapsed = time.perf_counter() - started
    how = (
        f"{len(result.evaluations):,} estimated, {result.pruned:,} pruned by a speed bound"
        if result.sampler == "exhaustive"
        else f"TPE, {len(result.evaluations):,} distinct in {result.trials} trials"
    )
    search_line = (
        f"searched {result.space_size:,} structures ({how}; {result.estimates:,} estimates) in {elapsed:.2f} s, seed {seed}"
        + (f", study {settings.study_name!r} in {storage}" if storage else "")
    )
    if as_json:
        from swiftplan.cli._fit_render import result_json
        from swiftplan.plan_file import plan_dict

        payload = {
            "task": task,
            "model": spec.name,
            "cluster": cluster.describe(),
            "objective": objective,
            "notes": notes,
            "workload": asdict(workload),
            **result_json(result, diagnosis),
            "plan": plan_dict(plan) if plan else None,
            "plan_file": output if plan and output else None,
            **({"measurements": _measurements_json(measured_evals, measured)} if measure else {}),
            "elapsed_s": elapsed,
        }
        print_json(payload)
    else:
        _render(
            result,
            diagnosis,
            spec=spec,
            cluster=cluster,
            notes=notes,
            attention=attention_targets(spec),
            search_line=search_line,
            output=output if plan else None,
            objective=objective,
        )
        if measured:
            _render_measurements(measured_evals, measured)
    if result.best is None:
        raise typer.Exit(1)


def _plan(best: Any, *, spec: ModelSpec, cluster: Cluster, objective: str, workload: Any) -> Any:
    from swiftplan.plan_file import make_plan
    from swiftplan.planner.search.candidate import Candidate, cluster_text

    estimate = best.estimate
    is_train = isinstance(best.candidate, Candidate)
    return make_plan(
        model=spec.name,
        model_source=spec.source or spec.name,
        cluster=cluster_text(cluster),
        gpus_used=best.gpus,
        usable_memory_bytes=cluster.usable_memory_bytes,
        objective=objective,
        workload=asdict(workload),
        setup=estimate.setup,
        estimate_json=estimate.to_json(),
        host_bytes_per_node=best.host_bytes_per_node,
        time_to_train_s=best.time_s if is_train else None,
        gpu_hours=best.gpu_hours,
        cost_usd=best.cost_usd,
    )


def _render(
    result: Any,
    diagnosis: Any,
    *,
    spec: ModelSpec,
    cluster: Cluster,
    notes: list[str],
    attention: tuple[str, ...],
    search_line: str,
    output: str | None,
    objective: str,
) -> None:
    from swiftplan.cli._fit_render import render_diagnosis, render_families, render_result
    from swiftplan.cli.estimate import render_estimate

    title = f"Best plans for {spec.name} on {cluster.describe()} (objective: {objective})"
    if result.best is None:
        if diagnosis is not None:
            render_diagnosis(diagnosis, result)
        for note in notes:
            console.print(f"[dim]{note}[/]", highlight=False)
        console.print(f"[dim]{search_line}[/]", highlight=False)
        return
    render_result(
        result,
        title=title,
        attention=attention,
        replicas_of=lambda c: cluster.world_size // c.tp,
        notes=notes,
    )
    render_estimate(result.best.estimate)
    render_families(result)
    console.print(f"[dim]{search_line}[/]", highlight=False)
    if output:
        console.print(f"wrote {output} (check it with `swiftplan estimate {output}`)", highlight=False)


def _measurements_json(evaluations: list[Any], measured: list[Any]) -> list[dict[str, Any]]:
    from swiftplan.executors.measure import label, per_device_tokens, ranked

    order = ranked(measured)
    out = []
    for index, (evaluation, m) in enumerate(zip(evaluations, measured, strict=True)):
        out.append({
            "candidate": index + 1, "setup": label(m.setup), "device": m.device, "layers": m.layers,
            "predicted_tokens_per_s_per_device": per_device_tokens(evaluation),
            "measured_tokens_per_s": m.tokens_per_s if m.ran else None,
            "predicted_peak_allocated": evaluation.estimate.memory.peak_allocated,
            "measured_peak_allocated": m.peak_allocated_bytes if m.ran or m.oom else None,
            "measured_peak_reserved": m.peak_reserved_bytes if m.ran else None,
            "oom": m.oom, "skipped": m.skipped or None, "step_times_s": list(m.step_times_s),
            "measured_rank": order.index(index) + 1 if index in order else None,
        })  # fmt: skip
    return out


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:.3g}M" if tokens_per_s >= 1e6 else f"{tokens_per_s:,.0f}"


def _render_measurements(evaluations: list[Any], measured: list[Any]) -> None:
    from rich.table import Table

    from swiftplan.executors.measure import label, per_device_tokens, ranked

    order = ranked(measured)
    device = measured[0].device
    layers = measured[0].layers
    table = Table(
        title=f"Measured on {device}" + (f" ({layers} layer(s))" if layers else "") + ", one device each",
        title_justify="left",
    )
    for name in (
        "#",
        "candidate",
        "pred tok/s",
        "meas tok/s",
        "ratio",
        "pred peak",
        "meas peak",
        "OOM",
        "rank",
    ):
        table.add_column(
            name, justify="left" if name == "candidate" else "right", no_wrap=name != "candidate"
        )
    for index, (evaluation, m) in enumerate(zip(evaluations, measured, strict=True)):
        predicted = per_device_tokens(evaluation)
        rank = order.index(index) + 1 if index in order else None
        table.add_row(
            str(index + 1),
            label(m.setup) + (" [bold green](winner)[/]" if rank == 1 else ""),
            _rate(predicted),
            _rate(m.tokens_per_s) if m.ran else "-",
            f"{m.tokens_per_s / predicted:.3g}" if m.ran and predicted > 0 else "-",
            format_gib(evaluation.estimate.memory.peak_allocated, 2),
            format_gib(m.peak_allocated_bytes, 2) if m.ran or m.oom else "-",
            "yes" if m.oom else "no" if m.ran else "-",
            str(rank) if rank else "-",
        )
    console.print(table)
    for index, m in enumerate(measured):
        if m.skipped:
            console.print(f"[dim]candidate {index + 1} skipped: {m.skipped}[/]", highlight=False)
    if order:
        console.print(f"winner by measurement: candidate {order[0] + 1} ({label(measured[order[0]].setup)}), "
                      f"{measured[order[0]].tokens_per_s:,.0f} tokens/s measured", highlight=False)  # fmt: skip
    else:
        console.print("no candidate completed its measured steps.", highlight=False)
    if device == "cpu":
        console.print("[yellow]CPU timings and RSS do not rank GPU plans: this was a smoke run of the measuring path.[/]",
                      highlight=False)  # fmt: skip
    if layers:
        console.print(f"[dim]with --measure-layers {layers} the measured speed and memory are of a shallower model than "
                      "predicted; compare the ranking, not the ratios.[/]", highlight=False)  # fmt: skip
