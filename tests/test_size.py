"""`swiftplan size`: ranking against hand-computed costs, reasons, constraints, prices, outputs, speed-ups."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.engines import default_engine
from swiftplan.planner.hardware import Cluster, get_accelerator, list_accelerators, parse_cluster
from swiftplan.planner.model_catalog import catalog_spec, find_catalog_id
from swiftplan.planner.search.candidate import TrainWorkload
from swiftplan.planner.search.evaluate import TrainEvaluator
from swiftplan.planner.search.optimize import SearchSettings, search_training
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.space import build_train_space
from swiftplan.planner.sizing.best_plan import MisfitMemo, best_training_plan, whole_cluster
from swiftplan.planner.sizing.candidates import candidate_clusters, weight_shortfall
from swiftplan.planner.sizing.prices import catalog_price, parse_price_overrides, price_table
from swiftplan.planner.sizing.rank import Constraints, Option, explain, rank
from swiftplan.planner.sizing.serve_sizing import ServeLoad, size_serving
from swiftplan.planner.sizing.train_sizing import TrainJob, size_training

GiB = 2**30
HOUR = 3600.0


def spec_of(model: str):
    return catalog_spec(find_catalog_id(model))


def option(
    acc: str,
    gpus: int,
    *,
    tokens_per_s: float,
    tokens: float,
    usd_per_gpu_hour=None,
    purchase=None,
    vendor="NVIDIA",
):
    """A training option as the sizing builds it: time = tokens / rate."""
    return Option(
        accelerator_id=acc,
        accelerator=acc.upper(),
        vendor=vendor,
        gpus=gpus,
        task="train",
        plan="test plan",
        time_s=tokens / tokens_per_s,
        tokens_per_s=tokens_per_s,
        work_tokens=tokens,
        usd_per_gpu_hour=usd_per_gpu_hour,
        purchase_usd_per_gpu=purchase,
    )


# --- ranking against hand-computed cases --------------------------------------------------------

TOKENS = 100e6
FAST = dict(tokens_per_s=10_000.0, tokens=TOKENS, usd_per_gpu_hour=2.0, purchase=30_000.0)  # 8 GPUs
SLOW = dict(tokens_per_s=6_000.0, tokens=TOKENS, usd_per_gpu_hour=1.5, purchase=20_000.0)  # 4 GPUs


def two_options():
    return [option("fast", 8, **FAST), option("slow", 4, **SLOW)]


def test_cost_is_hours_times_price_times_gpus_by_hand():
    fast, slow = two_options()
    # 100M tokens / 10,000 tok/s = 10,000 s = 2.778 h; × $2 × 8 GPUs = $44.44
    assert fast.rent_usd == pytest.approx(100e6 / 10_000 / 3600 * 2.0 * 8)
    assert fast.rent_usd == pytest.approx(44.444, abs=1e-3)
    # 100M / 6,000 = 16,667 s = 4.630 h; × $1.5 × 4 = $27.78
    assert slow.rent_usd == pytest.approx(27.778, abs=1e-3)
    assert fast.purchase_usd == 240_000 and slow.purchase_usd == 80_000
    # cost per million tokens: $/h of the cluster over tokens per hour
    assert fast.usd_per_million_tokens == pytest.approx(2.0 * 8 / (10_000 * 3600) * 1e6)
    assert fast.usd_per_million_tokens == pytest.approx(fast.rent_usd / TOKENS * 1e6)


def test_ranking_by_cost_time_purchase_and_cost_per_token():
    by_cost = rank(two_options(), "cost", Constraints())
    assert [o.accelerator_id for o in by_cost.ranked] == ["slow", "fast"]
    by_time = rank(two_options(), "time", Constraints())
    assert [o.accelerator_id for o in by_time.ranked] == ["fast", "slow"]
    assert [o.accelerator_id for o in rank(two_options(), "purchase", Constraints()).ranked] == [
        "slow",
        "fast",
    ]
    assert [o.accelerator_id for o in rank(two_options(), "cost-per-token", Constraints()).ranked] == [
        "slow",
        "fast",
    ]
    assert by_cost.recommended is by_cost.cheapest and by_cost.cheapest.accelerator_id == "slow"
    assert by_cost.fastest.accelerator_id == "fast"
    lines = explain(by_cost)
    assert lines[0].startswith("recommended: 4 × SLOW") and "$27.78" in lines[0]
    assert lines[1] == "cheapest: the recommended option."
    assert lines[2].startswith("fastest: 8 × FAST") and "1.6× the recommended option's cost" in lines[2]
    time_lines = explain(by_time)
    assert "1.7× slower than the recommended" in time_lines[1]  # 4.63 h / 2.78 h


def test_ties_prefer_fewer_gpus():
    a = option("a", 8, tokens_per_s=8_000.0, tokens=TOKENS, usd_per_gpu_hour=1.0)
    b = option("b", 4, tokens_per_s=4_000.0, tokens=TOKENS, usd_per_gpu_hour=1.0)  # same cost
    assert rank([a, b], "cost", Constraints()).recommended.accelerator_id == "b"


# --- constraints --------------------------------------------------------------------------------


def test_deadline_rejects_with_the_miss_in_hours():
    ranking = rank(two_options(), "cost", Constraints(deadline_s=3 * HOUR))
    assert [o.accelerator_id for o in ranking.ranked] == ["fast"]
    (late,) = ranking.rejected
    assert late.reason_kind == "deadline"
    assert "misses the deadline by 98 min" in late.reason  # 4.63 h - 3 h


def test_budget_rent_and_buy():
    ranking = rank(two_options(), "time", Constraints(budget_usd=30.0))
    assert [o.accelerator_id for o in ranking.ranked] == ["slow"]
    assert (
        ranking.rejected[0].reason_kind == "budget" and "over budget by $14.44" in ranking.rejected[0].reason
    )
    bought = rank(two_options(), "time", Constraints(budget_usd=100_000, mode="buy"))
    assert [o.accelerator_id for o in bought.ranked] == ["slow"]
    assert "purchase price $240,000" in bought.rejected[0].reason


def test_vendor_and_max_gpus_drop_hardware():
    amd = option("amd", 2, tokens_per_s=5_000.0, tokens=TOKENS, usd_per_gpu_hour=1.0, vendor="AMD")
    ranking = rank([*two_options(), amd], "cost", Constraints(vendors=("amd",)))
    assert [o.accelerator_id for o in ranking.ranked] == ["amd"] and not ranking.rejected
    ranking = rank([*two_options(), amd], "cost", Constraints(max_gpus=4))
    assert {o.accelerator_id for o in ranking.ranked} == {"amd", "slow"}


def test_rent_and_buy_need_their_price():
    rentable = option("rentable", 1, tokens_per_s=1_000.0, tokens=TOKENS, usd_per_gpu_hour=1.0)
    buyable = option("buyable", 1, tokens_per_s=1_000.0, tokens=TOKENS, purchase=1_000.0)
    rent = rank([rentable, buyable], "time", Constraints(mode="rent"))
    assert [o.accelerator_id for o in rent.ranked] == ["rentable"]
    assert rent.rejected[0].reason.startswith("no rental price")
    buy = rank([rentable, buyable], "time", Constraints(mode="buy"))
    assert [o.accelerator_id for o in buy.ranked] == ["buyable"]
    assert buy.rejected[0].reason.startswith("no purchase price")
    # the cost objective needs a rental price even without --rent
    assert [o.accelerator_id for o in rank([rentable, buyable], "cost", Constraints()).ranked] == ["rentable"]


# --- the planner on real clusters --------------------------------------------------------------

QWEN72 = "Qwen/Qwen2.5-72B"
JOB72 = TrainJob(workload=TrainWorkload(dataset_tokens=50_000_000), pins=Pins(methods=("qlora",)))


def accelerators(*names: str):
    return [get_accelerator(n) for n in names]


def test_training_options_cost_what_their_speed_says():
    accs = accelerators("h100-sxm", "a100-80gb-sxm", "rtx4090")
    result = size_training(spec_of(QWEN72), accs, JOB72, objective="time", constraints=Constraints())
    feasible = [o for o in result.options if o.feasible]
    assert feasible
    for o in feasible:
        assert o.time_s == pytest.approx(50e6 / o.tokens_per_s)
        if o.usd_per_gpu_hour is not None:
            assert o.rent_usd == pytest.approx(50e6 / o.tokens_per_s / 3600 * o.gpus * o.usd_per_gpu_hour)
        assert o.plan.startswith("QLoRA r16") and o.headroom_bytes > 0
        assert o.plan_fields["tp"] * o.plan_fields["pp"] * o.plan_fields["dp"] == o.gpus
    ranking = rank(result.options, "time", Constraints())
    times = [o.time_s for o in ranking.ranked]
    assert times == sorted(times)


def test_infeasible_hardware_is_listed_with_its_reason():
    accs = accelerators("rtx4090", "a10g", "a100-80gb-sxm")  # swiftplan's loop: QLoRA 72B fits only on 80 GB
    result = size_training(
        spec_of(QWEN72), accs, JOB72, objective="time", constraints=Constraints(deadline_s=10 * HOUR)
    )
    ranking = rank(result.options, "time", Constraints(deadline_s=10 * HOUR))
    reasons = {(o.accelerator_id, o.gpus): o for o in ranking.rejected}
    one_4090 = reasons[("rtx4090", 1)]
    assert one_4090.reason_kind == "fit" and "doesn't fit" in one_4090.reason and "GiB" in one_4090.reason
    late = [o for o in ranking.rejected if o.reason_kind == "deadline"]
    assert late and all("misses the deadline by" in o.reason for o in late)
    assert all(o.reason for o in ranking.rejected)
    # every cluster is either ranked or rejected, none lost
    assert len(ranking.ranked) + len(ranking.rejected) == len(result.options)


def test_weight_floor_prunes_only_clusters_the_search_cannot_fit():
    spec = spec_of(QWEN72)
    for text in ("a100-40gb", "2xrtx4090", "rtx5090", "2xa10g"):
        cluster = parse_cluster(text)
        space = whole_cluster(build_train_space(spec, cluster, Pins(methods=("qlora",))), cluster)
        gap = weight_shortfall(spec, cluster, space, headroom=0.05, host_ram_bytes=64 * GiB)
        evaluator = TrainEvaluator(spec, cluster, JOB72.workload, space, host_ram_bytes=64 * GiB)
        found = search_training(evaluator, SearchSettings()).best
        if gap.short_bytes > 0:
            assert found is None, text
    cluster = parse_cluster("a100-40gb")
    space = build_train_space(spec, cluster, Pins(methods=("qlora",)))
    assert weight_shortfall(spec, cluster, space, headroom=0.05, host_ram_bytes=None).short_bytes > 0


@pytest.mark.parametrize("gpus", ["4xa100-80gb", "8xrtx4090", "2x8xh100"])
def test_best_plan_matches_the_fit_search(gpus):
    spec, cluster = spec_of("Qwen/Qwen2.5-7B"), parse_cluster(gpus)
    space = whole_cluster(build_train_space(spec, cluster, Pins()), cluster)
    workload = TrainWorkload(dataset_tokens=50_000_000)
    mine = best_training_plan(TrainEvaluator(spec, cluster, workload, space, host_ram_bytes=64 * GiB))
    fit = search_training(
        TrainEvaluator(spec, cluster, workload, space, host_ram_bytes=64 * GiB), SearchSettings()
    ).best
    assert mine.best is not None and fit is not None
    assert mine.best.time_s == pytest.approx(fit.time_s, rel=1e-9)


def test_sharing_misfits_across_sizes_changes_no_answer():
    """Clusters planned largest first with a shared memo give each cluster's own exact answer."""
    spec = spec_of("meta-llama/Llama-3.1-70B")
    job = TrainJob(workload=TrainWorkload(dataset_tokens=10_000_000))
    for name in ("rtx3090", "a10g"):
        shared = size_training(spec, accelerators(name), job, objective="time", constraints=Constraints())
        for option in shared.options:
            cluster = Cluster(
                accelerator=get_accelerator(name),
                gpus_per_node=option.gpus // option.nodes,
                nodes=option.nodes,
                inter_node_bytes_per_s=100e9 / 8,
            )
            engine = default_engine("train", cluster.accelerator.backend)  # size plans for the default engine
            workload = job.cluster_workload(cluster)  # the default batch rounded to split over the cluster
            space = whole_cluster(
                build_train_space(spec, cluster, Pins(), engine, global_batch=workload.global_batch), cluster
            )
            alone = best_training_plan(
                TrainEvaluator(spec, cluster, workload, space, host_ram_bytes=64 * GiB)
            )
            if alone.best is None:
                assert not option.feasible
            else:
                assert option.time_s == pytest.approx(alone.best.time_s, rel=1e-12), option.hardware


@pytest.mark.parametrize(
    "model", ["Qwen/Qwen2.5-7B", "mistralai/Mixtral-8x7B-v0.1", "deepseek-ai/DeepSeek-V2-Lite"]
)
def test_memory_floors_and_monotone_dp_hold_for_the_estimator(model):
    """What the sizing's shortcuts assume of the memory model: the weight floor never exceeds the weights
    term, and device memory less NCCL's buffers (which grow when the group spans more nodes) never grows
    with the data-parallel degree (everything else equal)."""
    from swiftplan.planner.sizing.candidates import device_weight_floor_bytes

    spec = spec_of(model)
    workload = TrainWorkload(dataset_tokens=10_000_000, global_batch=64)
    totals: dict[tuple, list[tuple[int, int]]] = {}
    for gpus in ("2xa100-80gb", "8xa100-80gb", "2x8xa100-80gb"):
        cluster = parse_cluster(gpus)
        space = whole_cluster(build_train_space(spec, cluster, Pins()), cluster)
        evaluator = TrainEvaluator(spec, cluster, workload, space)
        for structure in list(space.structures())[::3]:
            lean = evaluator.lean(structure).replace(micro_batch=1)
            evaluation = evaluator.evaluate(lean)
            if evaluation.estimate is None:
                continue
            assert device_weight_floor_bytes(spec, structure) <= evaluation.estimate.memory.weights
            key = MisfitMemo._key(structure)
            memory = evaluation.estimate.memory
            comm = sum(t.value_bytes for t in memory.terms if t.name == "comm_buffers")
            totals.setdefault(key, []).append((structure.layout.dp, memory.device_total - comm))
    compared = 0
    for points in totals.values():
        points.sort()
        for (_, smaller_dp_total), (_, larger_dp_total) in zip(points, points[1:], strict=False):
            assert larger_dp_total <= smaller_dp_total
            compared += 1
    assert compared > 20


@pytest.mark.parametrize("gpus", ["rtx3070", "4xa100-80gb", "2x8xh100", "8xrtx4090"])
def test_compute_floor_never_exceeds_a_speed_bound(gpus):
    from swiftplan.planner.sizing.best_plan import compute_floor_s

    spec, cluster = spec_of("Qwen/Qwen2.5-7B"), parse_cluster(gpus)
    space = whole_cluster(build_train_space(spec, cluster, Pins(ranks=(8, 64))), cluster)
    evaluator = TrainEvaluator(spec, cluster, TrainWorkload(dataset_tokens=10_000_000), space)
    for structure in space.structures():
        assert compute_floor_s(evaluator, structure) <= evaluator.optimistic(structure, "time") * (1 + 1e-12)


def test_deadline_bound_skips_clusters_without_a_search():
    job = TrainJob(workload=TrainWorkload(dataset_tokens=1_500_000_000), pins=Pins(methods=("qlora",)))
    constraints = Constraints(deadline_s=1 * HOUR)
    result = size_training(
        spec_of(QWEN72), accelerators("a100-80gb-sxm"), job, objective="time", constraints=constraints
    )
    capped = [o for o in result.options if "at least" in o.reason]
    assert capped and all(o.reason_kind == "deadline" for o in capped)
    assert result.pruned >= len(capped)


def test_candidate_clusters_and_interconnect():
    clusters = candidate_clusters(
        accelerators("rtx4090", "h100-sxm", "m2-ultra"), max_nodes=3, network_gbps=200
    )
    shapes = [(c.accelerator.id, c.nodes, c.gpus_per_node) for c in clusters]
    assert shapes.count(("m2-ultra", 1, 1)) == 1 and len([s for s in shapes if s[0] == "m2-ultra"]) == 1
    assert [s[1:] for s in shapes if s[0] == "h100-sxm"] == [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (3, 8)]
    assert all(c.inter_node_bytes_per_s == 25e9 for c in clusters)
    rtx = next(c for c in clusters if c.accelerator.id == "rtx4090")
    assert rtx.intra_node_bytes_per_s == rtx.accelerator.pcie_bytes_per_s  # no NVLink on GeForce
    assert all(c.world_size <= 8 for c in candidate_clusters(list_accelerators(), max_gpus=8))


def test_vendor_and_max_gpus_are_applied_before_planning():
    result = size_training(
        spec_of("Qwen/Qwen2.5-0.5B"),
        accelerators("h100-sxm", "mi300x"),
        TrainJob(workload=TrainWorkload(dataset_tokens=1_000_000)),
        objective="time",
        constraints=Constraints(vendors=("amd",), max_gpus=2),
    )
    assert {o.accelerator_id for o in result.options} == {"mi300x"}
    assert max(o.gpus for o in result.options) == 2


# --- serving -------------------------------------------------------------------------------------


def test_serving_holds_the_concurrency_with_replicas_times_tp():
    load = ServeLoad(context=8192, concurrency=200)
    result = size_serving(
        spec_of("Qwen/Qwen2.5-7B"),
        accelerators("h100-sxm", "a10g", "rtx3060"),
        load,
        objective="time",
        constraints=Constraints(),
    )
    by_id = {o.accelerator_id: o for o in result.options}
    for acc in ("h100-sxm", "a10g"):
        o = by_id[acc]
        assert o.feasible, o.reason
        f = o.plan_fields
        assert o.gpus == f["replicas"] * f["tp"]
        assert f["replicas"] * f["sequences_per_replica"] >= 200
        assert f["sequences_per_replica"] <= f["max_sequences_per_replica"]
        assert o.tokens_per_s == pytest.approx(200 * o.extra["per_user_decode_tokens_per_s"])
        assert o.time_s == pytest.approx(1 / o.extra["per_user_decode_tokens_per_s"])
    h100 = by_id["h100-sxm"]
    assert h100.rent_usd == pytest.approx(h100.gpus * 2.49)  # per hour
    assert h100.usd_per_million_tokens == pytest.approx(h100.gpus * 2.49 / (h100.tokens_per_s * 3600) * 1e6)
    assert h100.plan_fields["quant"] in ("none", "fp8")  # bitsandbytes formats only when asked for


def test_serving_request_rate_satisfies_littles_law():
    load = ServeLoad(context=1280, request_rate=10.0, prompt_tokens=1024, output_tokens=256, ttft_s=2.0)
    result = size_serving(
        spec_of("Qwen/Qwen2.5-7B"),
        accelerators("h100-sxm"),
        load,
        objective="cost",
        constraints=Constraints(),
    )
    (o,) = result.options
    assert o.feasible, o.reason
    f = o.plan_fields
    latency = o.extra["ttft_s"] + 256 / o.extra["per_user_decode_tokens_per_s"]
    assert f["sequences_per_replica"] >= 10.0 / f["replicas"] * latency - 1e-9
    assert o.extra["ttft_s"] <= 2.0
    assert o.tokens_per_s == pytest.approx(10.0 * 256)


def test_serving_too_big_a_load_says_why():
    load = ServeLoad(context=32768, concurrency=5000, ttft_s=0.5)
    result = size_serving(
        spec_of("Qwen/Qwen2.5-72B"),
        accelerators("rtx3060"),
        load,
        objective="time",
        constraints=Constraints(max_gpus=4),
    )
    (o,) = result.options
    assert not o.feasible and o.reason_kind in ("fit", "load") and o.reason


def test_serve_load_validation():
    with pytest.raises(SwiftplanError, match="--concurrency N, or as --request-rate"):
        ServeLoad(context=4096)
    with pytest.raises(SwiftplanError, match="--prompt-tokens"):
        ServeLoad(context=4096, request_rate=1.0)


# --- prices --------------------------------------------------------------------------------------


def test_catalog_prices_carry_their_source_and_date():
    h100 = catalog_price(get_accelerator("h100-sxm"))
    assert h100.usd_per_gpu_hour == 2.49 and "Lambda" in h100.rent_source and h100.rent_as_of
    rtx = catalog_price(get_accelerator("rtx4090"))
    assert rtx.usd_per_gpu_hour is None and rtx.purchase_usd == 1599.0
    assert "MSRP" in rtx.purchase_source and rtx.purchase_as_of.startswith("launch 2022")


def test_user_prices_override_the_catalog():
    import datetime as dt

    overrides = parse_price_overrides(
        {
            "H100": {"usd_per_gpu_hour": 1.25, "source": "my quote", "as_of": dt.date(2026, 11, 1)},
            "rtx4090": {"usd_per_gpu_hour": 0.4, "purchase_usd": 1800},
            "rtx3090": {"purchase_usd": None},
        },
        "prices.yaml",
    )
    table = price_table(list_accelerators(), overrides)
    h100 = table["h100-sxm"]
    assert (h100.usd_per_gpu_hour, h100.rent_source, h100.rent_as_of, h100.from_user) == (
        1.25,
        "my quote",
        "2026-11-01",
        True,
    )
    assert h100.purchase_usd is None  # not given: the catalog's (none)
    assert table["rtx4090"].purchase_usd == 1800 and table["rtx4090"].rent_source == "prices.yaml"
    assert table["a100-80gb-sxm"] == catalog_price(get_accelerator("a100-80gb-sxm"))
    assert catalog_price(get_accelerator("rtx3090")).purchase_usd and table["rtx3090"].purchase_usd is None
    result = size_training(
        spec_of("Qwen/Qwen2.5-0.5B"),
        accelerators("h100-sxm"),
        TrainJob(workload=TrainWorkload(dataset_tokens=1_000_000)),
        objective="cost",
        constraints=Constraints(max_gpus=1),
        prices=table,
    )
    (o,) = result.options
    assert o.usd_per_gpu_hour == 1.25 and o.rent_usd == pytest.approx(o.time_s / 3600 * 1.25)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"h900": {"usd_per_gpu_hour": 2}}, "Unknown GPU 'h900'"),
        ({"h100": {"usd_per_hour": 2}}, "unknown key(s) usd_per_hour"),
        ({"h100": {"usd_per_gpu_hour": -2}}, "must be a positive number"),
        ({"h100": {"usd_per_gpu_hour": "cheap"}}, "must be a positive number"),
        ({"h100": {"purchase_usd": True}}, "must be a positive number"),
        ({"h100": {"usd_per_gpu_hour": 2, "as_of": "last week"}}, "as_of must be a date"),
        ({"h100": {"source": "x"}}, "neither usd_per_gpu_hour nor purchase_usd"),
        ({"h100": 2.1}, "must map to prices"),
        ([1, 2], "maps accelerator ids to prices"),
        ({"h100": {"usd_per_gpu_hour": 2}, "h100-sxm": {"usd_per_gpu_hour": 3}}, "appears twice"),
    ],
)
def test_bad_price_entries_are_refused_clearly(data, message):
    with pytest.raises(SwiftplanError) as error:
        parse_price_overrides(data, "my_prices.yaml")
    assert message in error.value.message and error.value.message.startswith("my_prices.yaml")


# --- CLI -----------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "size", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "SWIFTPLAN_OFFLINE": "1", "COLUMNS": "160"},
    )


SMALL = ("Qwen/Qwen2.5-7B", "--accelerators", "h100-sxm,a100-80gb-sxm,rtx4090", "--dataset-tokens", "20M")


def test_cli_json_shape():
    result = run_cli(*SMALL, "--objective", "time", "--max-gpus", "8", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("task", "model", "objective", "money", "workload", "constraints", "recommended", "cheapest",
                "fastest", "explanations", "options", "rejected", "prices", "notes", "search", "elapsed_s"):  # fmt: skip
        assert key in data, key
    assert data["recommended"] == data["options"][0] and data["recommended"]["rank"] == 1
    assert [o["rank"] for o in data["options"]] == list(range(1, len(data["options"]) + 1))
    for o in data["options"]:
        assert o["gpus"] <= 8 and o["feasible"] and o["plan_fields"]["method"] in ("full", "lora", "qlora")
    assert all(o["reason"] for o in data["rejected"])
    assert {p["accelerator_id"] for p in data["prices"]} <= {"h100-sxm", "a100-80gb-sxm", "rtx4090"}
    assert len(data["explanations"]) == 3


def test_cli_csv_shape(tmp_path):
    path = tmp_path / "options.csv"
    result = run_cli(*SMALL, "--objective", "time", "--max-gpus", "2", "--csv", str(path))
    assert result.returncode == 0, result.stderr
    assert "recommended:" in result.stdout and f"wrote {path}" in result.stdout
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert rows and rows[0]["rank"] == "1" and rows[0]["status"] == "ok"
    assert {"accelerator_id", "gpus", "time_s", "rent_usd", "reason", "method", "tp", "dp"} <= set(rows[0])
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert all(r["reason"] and not r["rank"] for r in rejected)
    statuses = [r["status"] for r in rows]
    assert statuses == sorted(statuses)  # ranked first, then rejected


def test_cli_serving_example_and_csv_to_stdout():
    result = run_cli(
        "Qwen/Qwen2.5-7B", "--task", "serve", "--concurrency", "200", "--context", "8192", "--csv", "-"
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["usd_per_million_tokens"]) > 0 for r in ok)
    assert {"replicas", "tp", "sequences_per_replica"} <= set(rows[0])


def test_cli_price_file_overrides_and_bad_file_errors(tmp_path):
    good = tmp_path / "prices.yaml"
    good.write_text("rtx4090: {usd_per_gpu_hour: 0.35, source: 'my quote', as_of: 2026-11-01}\n")
    args = ("Qwen/Qwen2.5-7B", "--accelerators", "rtx4090", "--max-gpus", "2", "--dataset-tokens", "20M")
    result = run_cli(*args, "--prices", str(good), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["recommended"]["usd_per_gpu_hour"] == 0.35
    assert data["prices"][0]["rent_source"] == "my quote" and data["prices"][0]["rent_as_of"] == "2026-11-01"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rtx4090: {usd_per_gpu_hour: -1}\n")
    result = run_cli(*SMALL, "--prices", str(bad))
    assert result.returncode == 2
    assert "bad.yaml: rtx4090.usd_per_gpu_hour must be a positive number" in result.stderr
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("rtx4090: {usd_per_gpu_hour: [\n")
    result = run_cli(*SMALL, "--prices", str(broken))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(*SMALL, "--prices", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "Cannot read --prices" in result.stderr


def test_cli_bad_options_are_one_line_errors():
    for args, message in (
        (("--deadline", "soon"), "Bad --deadline"),
        (("--budget", "lots"), "Bad --budget"),
        (("--vendor", "intel"), "Unknown --vendor intel"),
        (("--buy", "--objective", "cost"), "--buy"),
        (("--task", "serve"), "needs a load"),
    ):
        result = run_cli("Qwen/Qwen2.5-7B", *args)
        assert result.returncode == 2, args
        assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_nothing_qualifies_exits_1():
    result = run_cli(QWEN72, "--accelerators", "rtx4090", "--max-gpus", "1", "--objective", "time")
    assert result.returncode == 1
    assert "Cannot run the job" in result.stdout and "doesn't fit" in result.stdout


def test_duration_and_money_parsing():
    from swiftplan.cli.size import parse_duration, parse_usd

    assert parse_duration("48h") == 48 * HOUR
    assert parse_duration("2d") == 48 * HOUR
    assert parse_duration("90m") == 5400
    assert parse_duration("36") == 36 * HOUR
    assert parse_duration("1.5 days") == 36 * HOUR
    assert parse_usd("$5,000") == 5000 and parse_usd("20k") == 20_000 and parse_usd("1.2M") == 1_200_000
    for bad in ("0h", "-3h", "48 weeks", ""):
        with pytest.raises(SwiftplanError):
            parse_duration(bad)
    with pytest.raises(SwiftplanError):
        parse_usd("-5")


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "cost_time.png"
    result = run_cli(*SMALL, "--objective", "time", "--max-gpus", "8", "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    from swiftplan.cli._size_plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SwiftplanError, match="--plot needs matplotlib") as error:
        require_matplotlib()
    assert "swiftplan[plot]" in (error.value.hint or "")


def test_sizing_stays_pure_and_light():
    code = (
        "import sys\n"
        "import swiftplan.planner.sizing.train_sizing, swiftplan.planner.sizing.serve_sizing\n"
        "import swiftplan.planner.sizing.prices, swiftplan.planner.sizing.rank\n"
        "print(sorted(m for m in ('torch', 'optuna', 'swiftplan.executors', 'swiftplan.cli', 'yaml', 'matplotlib')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_option_validation():
    with pytest.raises(ValueError):
        Option(accelerator_id="x", accelerator="X", vendor="v", gpus=1, plan="p")  # runs but has no time
    with pytest.raises(ValueError):
        replace(option("x", 1, tokens_per_s=1.0, tokens=1.0), nodes=2)  # 2 nodes for 1 GPU
    cluster = Cluster(accelerator=get_accelerator("h100-sxm"), gpus_per_node=8, nodes=2)
    assert cluster.world_size == 16


def test_a_default_global_batch_splits_over_every_cluster_and_a_typed_one_is_kept():
    """The default 16 is rounded up per cluster (24 GPUs train 24 sequences a step); a typed 16 is kept, so 24 GPUs
    cannot split it and are skipped with the reason."""
    spec = spec_of("Qwen/Qwen2.5-0.5B")
    workload = TrainWorkload(dataset_tokens=10_000_000)
    for typed in (False, True):
        job = TrainJob(workload=workload, global_batch_typed=typed)
        result = size_training(
            spec, accelerators("h100-sxm"), job, objective="time", constraints=Constraints()
        )
        option = next(o for o in result.options if o.gpus == 24)
        if typed:
            assert not option.feasible and "global batch of 16" in option.reason
        else:
            assert option.feasible
            cluster = Cluster(accelerator=get_accelerator("h100-sxm"), gpus_per_node=8, nodes=3)
            assert job.cluster_workload(cluster).global_batch == 24
