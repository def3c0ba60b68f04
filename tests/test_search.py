"""The `fit` search: feasibility of what it returns, pins, reproducibility, storage, Pareto, diagnosis, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftplan.errors import SwiftplanError
from swiftplan.planner.estimate import estimate_training
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id
from swiftplan.planner.search.candidate import ServeWorkload, TrainWorkload
from swiftplan.planner.search.evaluate import ServeEvaluator, TrainEvaluator
from swiftplan.planner.search.infeasible import diagnose_training
from swiftplan.planner.search.optimize import SearchSettings, search_serving, search_training
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.serve_space import build_serve_space
from swiftplan.planner.search.space import RANKS, build_train_space

GiB = 2**30


def spec_of(model: str):
    return catalog_spec(find_catalog_id(model))


NO_PINS = Pins()
DEFAULT_WORKLOAD = TrainWorkload()


def train_search(
    model: str,
    gpus: str,
    pins: Pins = NO_PINS,
    *,
    headroom: float = 0.05,
    host_gib: float = 64,
    workload: TrainWorkload = DEFAULT_WORKLOAD,
    **search: object,
):
    spec, cluster = spec_of(model), parse_cluster(gpus)
    space = build_train_space(spec, cluster, pins)
    evaluator = TrainEvaluator(
        spec, cluster, workload, space, headroom=headroom, host_ram_bytes=int(host_gib * GiB)
    )
    return evaluator, search_training(evaluator, SearchSettings(**search))  # type: ignore[arg-type]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B"]),
    gpus=st.sampled_from(["rtx3060", "rtx4090", "2xrtx4090", "a100-40gb", "4xa100-80gb"]),
    headroom=st.sampled_from([0.0, 0.05, 0.2]),
    seq=st.sampled_from([512, 2048, 8192]),
    global_batch=st.sampled_from([1, 8, 64]),
)
def test_the_plan_returned_fits_by_its_own_estimate(model, gpus, headroom, seq, global_batch):
    evaluator, result = train_search(
        model, gpus, headroom=headroom, workload=TrainWorkload(seq_len=seq, global_batch=global_batch)
    )
    if result.best is None:
        assert all(not e.feasible for e in result.evaluations)
        return
    best = result.best
    cluster = best.candidate.layout.sub_cluster(evaluator.cluster)
    again = estimate_training(
        evaluator.spec, best.estimate.setup, cluster
    )  # independent re-estimate of the winner
    assert again.memory.device_total <= cluster.memory_bytes_per_device * (1 - headroom)
    assert again.memory.device_total == best.device_total_bytes
    setup = best.estimate.setup
    assert setup.micro_batch * setup.grad_accum * best.candidate.layout.dp >= global_batch
    assert all(best.rank_key("time") <= e.rank_key("time") for e in result.evaluations)


def test_pins_and_forbids_are_honoured():
    pins = Pins(methods=("lora",), ranks=(64,), quants=("none",), zero=(3,), max_offload="none")
    _, result = train_search("meta-llama/Llama-3.1-8B", "2xrtx4090", pins)
    assert result.best is not None
    for evaluation in result.evaluations:
        c = evaluation.candidate
        assert (c.method, c.rank, c.quant, c.zero, c.offload) == ("lora", 64, "none", 3, "none")


def test_forbidding_quantization_and_offload_removes_them_from_every_candidate():
    _, result = train_search(
        "Qwen/Qwen2.5-7B", "rtx4090", Pins(quants=("none",), max_offload="none", grad_ckpt=(True,))
    )
    assert {e.candidate.method for e in result.evaluations} == {"full", "lora"}
    assert all(
        e.candidate.quant == "none" and e.candidate.offload == "none" and e.candidate.grad_ckpt
        for e in result.evaluations
    )


def test_capabilities_are_never_proposed():
    # V100: no bf16 (capabilities.json); Apple M2 Max: no bitsandbytes 8-bit optimizers, no DeepSpeed.
    _, v100 = train_search("Qwen/Qwen2.5-0.5B", "v100")
    assert v100.evaluations and all("bf16" not in e.candidate.precision for e in v100.evaluations)
    _, mac = train_search("Qwen/Qwen2.5-0.5B", "m2-max")
    assert mac.evaluations and all(
        e.candidate.zero == 0 and "8bit" not in e.candidate.optimizer for e in mac.evaluations
    )


def test_a_pin_the_gpu_cannot_run_is_refused_with_the_reason():
    with pytest.raises(SwiftplanError, match="not possible on"):
        build_train_space(
            spec_of("Qwen/Qwen2.5-0.5B"), parse_cluster("m2-max"), Pins(optimizers=("adamw-8bit",))
        )


def test_same_seed_same_plan_with_tpe():
    runs = [
        train_search("Qwen/Qwen2.5-7B", "4xa100-80gb", Pins(ranks=RANKS), trials=40, seed=3)[1]
        for _ in range(2)
    ]
    assert runs[0].sampler == "tpe"
    assert runs[0].best.candidate == runs[1].best.candidate
    assert [e.candidate for e in runs[0].evaluations] == [e.candidate for e in runs[1].evaluations]


def test_exhaustive_search_matches_enumerating_every_candidate():
    evaluator, result = train_search("Qwen/Qwen2.5-0.5B", "2xrtx4090")
    assert result.sampler == "exhaustive" and len(result.evaluations) + result.pruned == result.space_size
    brute = min(
        (
            evaluator.evaluate(c.replace(micro_batch=b))
            for c in evaluator.space.candidates()
            for b in evaluator.micro_batches(c)
        ),
        key=lambda e: e.rank_key("time"),
    )
    assert result.best.time_s == pytest.approx(brute.time_s, rel=1e-9)


@pytest.mark.parametrize("objective", ["time", "cost"])
def test_pruning_by_the_speed_bound_changes_nothing_reported(objective):
    runs = [
        train_search("Qwen/Qwen2.5-7B", "4xa100-80gb", objective=objective, prune=prune)[1]
        for prune in (True, False)
    ]
    pruned, full = runs
    assert pruned.pruned > 0 and full.pruned == 0 and len(full.evaluations) == full.space_size
    assert pruned.best.candidate == full.best.candidate
    assert [e.candidate for e in pruned.runners_up] == [e.candidate for e in full.runners_up]
    for a, b in zip(pruned.families, full.families, strict=True):
        assert (a.best and a.best.candidate) == (b.best and b.best.candidate)


def test_storage_persists_and_a_second_run_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = dict(trials=3, seed=0, storage=url, study_name="resume-test", fingerprint="qwen0.5b rtx3060")
    _, first = train_search("Qwen/Qwen2.5-0.5B", "rtx3060", Pins(ranks=RANKS), **common)
    assert first.sampler == "tpe" and (tmp_path / "study.db").is_file()
    _, second = train_search("Qwen/Qwen2.5-0.5B", "rtx3060", Pins(ranks=RANKS), **common)
    assert second.trials > first.trials
    assert len(second.evaluations) > len(first.evaluations)  # the stored trials count, new ones are added
    assert second.best.rank_key("time") <= first.best.rank_key("time")
    with pytest.raises(SwiftplanError, match="different problem"):
        train_search(
            "Qwen/Qwen2.5-0.5B", "rtx3060", Pins(ranks=RANKS), **{**common, "fingerprint": "another"}
        )


def test_pareto_front_is_feasible_and_non_dominated():
    _, result = train_search("Qwen/Qwen2.5-0.5B", "2xrtx4090", Pins(ranks=(8, 64)), pareto=True)
    front = result.pareto
    assert front and all(e.feasible for e in front)
    values = [e.pareto_values(True) for e in front]
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            assert i == j or not (
                all(x <= y for x, y in zip(b, a, strict=True))
                and any(x < y for x, y in zip(b, a, strict=True))
            )


def test_serving_meets_the_requested_load_and_latency():
    spec, cluster = spec_of("Qwen/Qwen2.5-7B"), parse_cluster("l40s")
    workload = ServeWorkload(context=8192, ttft_s=2.0, decode_tps=30)
    evaluator = ServeEvaluator(spec, cluster, workload, build_serve_space(spec, cluster, Pins()))
    best = search_serving(evaluator, SearchSettings(objective="throughput")).best
    assert best is not None and best.estimate.fits
    assert best.estimate.speed.ttft_s <= 2.0 and best.estimate.speed.per_user_decode_tokens_per_s >= 30


def test_infeasible_job_gets_what_does_not_fit_and_what_would():
    evaluator, result = train_search("Qwen/Qwen2.5-72B", "rtx4090")
    assert result.best is None
    diagnosis = diagnose_training(evaluator, Pins(), result.closest)
    assert "over" in diagnosis.summary
    changes = {s.change: s for s in diagnosis.suggestions}
    assert {"offload", "more GPUs", "bigger GPU"} <= set(changes)
    assert (
        changes["offload"].evaluation.host_bytes_per_node > 64 * GiB
    )  # needs more host RAM than the default
    assert changes["more GPUs"].gpus == "4xrtx4090"
    for suggestion in diagnosis.suggestions:
        assert suggestion.evaluation.device_total_bytes <= suggestion.evaluation.limit_bytes
    assert changes["bigger GPU"].evaluation.device_total_bytes <= 80 * GiB


def test_shorter_sequence_is_suggested_when_it_fits():
    evaluator, result = train_search(
        "Qwen/Qwen2.5-7B",
        "rtx3060",
        Pins(methods=("qlora",), max_offload="none"),
        workload=TrainWorkload(seq_len=32768, global_batch=4),
    )
    assert result.best is None
    changes = {
        s.change: s
        for s in diagnose_training(
            evaluator, Pins(methods=("qlora",), max_offload="none"), result.closest
        ).suggestions
    }
    seq = changes["shorter sequence"].evaluation.estimate.setup.seq_len
    assert 256 <= seq < 32768 and seq % 256 == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "150"},
    )


def test_cli_fit_prints_a_plan_and_why_the_others_lost():
    result = run_cli("fit", "Qwen/Qwen2.5-7B", "--gpus", "rtx3060", "--dataset-tokens", "50M")
    assert result.returncode == 0, result.stderr
    for text in (
        "QLoRA",
        "batch×accum",
        "device total",
        "Why not the others",
        "full: doesn't fit",
        "50,000,000 tokens",
    ):
        assert text in result.stdout


def test_cli_fit_json_and_infeasible_exit_status():
    result = run_cli("fit", "Qwen/Qwen2.5-72B", "--gpus", "rtx4090", "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["feasible"] is False and data["best"] is None
    # more 24 GB cards no longer fit a 72B under ZeRO-3 once its prefetching is counted: offload or a bigger GPU
    assert {s["change"] for s in data["diagnosis"]["suggestions"]} & {"more GPUs", "bigger GPU", "offload"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "auto"], "No accelerator found"),
        (["--gpus", "rtx3060", "--measure"], "no CUDA device"),
        (["--gpus", "rtx3060", "--method", "qlora", "--no-quant"], "leave nothing to search"),
        (["--gpus", "rtx3060", "--dataset-tokens", "lots"], "Bad --dataset-tokens"),
        (["--gpus", "rtx3060", "--targets", "foo_proj"], "foo_proj match no module"),
    ],
)
def test_cli_fit_errors_are_one_paragraph(args, message):
    result = run_cli("fit", "Qwen/Qwen2.5-7B", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_fit_counts_tokens_of_a_data_file(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": "x" * 400}) for _ in range(1000)))
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (
        payload["workload"]["dataset_tokens"] == 100_000
    )  # 400,000 characters / 4 without a local tokenizer
    assert any("characters / 4" in note for note in payload["notes"])
