"""Serving decode speed: the tensor-parallel all-reduce term, the engine's per-step cost, the bandwidth
efficiency by memory type, the fitted constants and their fit script, and the published decode rows
(benchmarks/data/published_decode.csv)."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.calibration import constant
from swiftplan.planner.hardware import get_accelerator
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import SERVE_RUNTIMES, ServeSetup
from swiftplan.planner.speed import (
    decode_allreduce_s,
    decode_bandwidth_efficiency,
    decode_memory_s,
    decode_step_overhead_s,
    is_gddr,
    serve_efficiency,
    serve_speed,
    step_overhead_name,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from fit_serving_speed import fit, start_point  # noqa: E402
from published_accuracy import DECODE_CSV, compare  # noqa: E402
from published_rows import DECODE_METRICS, Skip, express  # noqa: E402

LLAMA_70B = catalog_spec("meta-llama/Llama-2-70b-hf")
LLAMA_7B = catalog_spec("meta-llama/Llama-2-7b-hf")
A100 = get_accelerator("a100-80gb-sxm")


def _rows() -> list[dict[str, str]]:
    with DECODE_CSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_allreduce_grows_with_tp_and_is_zero_without_it() -> None:
    eff = serve_efficiency()
    times = [decode_allreduce_s(LLAMA_70B, ServeSetup(tp=tp), A100, eff) for tp in (1, 2, 4, 8)]
    assert times[0] == 0.0
    assert times[1] < times[2] < times[3]


def test_allreduce_share_of_the_step_shrinks_at_larger_batch() -> None:
    eff = serve_efficiency()

    def share(batch: int) -> float:
        setup = ServeSetup(tp=4, concurrency=batch, context=512)
        step_s = (
            1
            / serve_speed(
                LLAMA_70B, setup, A100, weight_bytes=35 * 10**9, kv_bytes_per_token=81920
            ).per_user_decode_tokens_per_s
        )
        return decode_allreduce_s(LLAMA_70B, setup, A100, eff) / step_s

    assert share(64) < share(1)
    # It is latency-bound at batch 1: 160 all-reduces of 16 KiB cost about their fixed latency.
    one = decode_allreduce_s(LLAMA_70B, ServeSetup(tp=4), A100, eff)
    assert one == pytest.approx(2 * 80 * eff.allreduce_latency_s, rel=0.01)


def test_constants_come_from_calibration_json() -> None:
    data = json.loads((ROOT / "swiftplan" / "profiles" / "calibration.json").read_text())[
        "serving_efficiency"
    ]
    eff = serve_efficiency()
    assert eff.bandwidth == data["bandwidth"]["value"] == constant("serving_efficiency", "bandwidth")
    assert eff.bandwidth_gddr == data["bandwidth_gddr"]["value"]
    assert eff.allreduce_latency_s == data["allreduce_latency_s"]["value"]
    for runtime in SERVE_RUNTIMES:
        assert eff.step_overhead_s[runtime] == data[step_overhead_name(runtime)]["value"]
    for name in ("bandwidth", "bandwidth_gddr", "allreduce_latency_s", "step_overhead_vllm_s"):
        assert data[name]["status"] == "fitted"
        assert "fit set" in data[name]["source"] and "dec-" in data[name]["source"]
    # No SGLang decode row: its per-step cost is a prior with a source.
    assert (
        data["step_overhead_sglang_s"]["status"] == "prior"
        and "sglang" in data["step_overhead_sglang_s"]["source"].lower()
    )


def test_fit_script_reproduces_the_committed_constants() -> None:
    result = fit()
    data = json.loads((ROOT / "swiftplan" / "profiles" / "calibration.json").read_text())[
        "serving_efficiency"
    ]
    assert {"bandwidth", "allreduce_latency_s", "step_overhead_vllm_s"} <= set(result["fitted"])
    for name in result["fitted"]:
        entry = data[name]
        if result["trusted"][name]:
            assert entry["value"] == pytest.approx(result["values"][name], abs=1e-12), name
            assert entry["status"] == "fitted"
        else:  # an untrusted fit is recorded in the source, its value not written
            assert "is not trusted" in entry["source"] and entry["status"] == "prior", name
    # Only fit-set rows move the constants.
    fit_rows = {row for rows in result["rows"].values() for row in rows}
    assert not fit_rows & set(result["test_errors"])
    # The fit does not start from the committed values.
    start = start_point(
        serve_efficiency(),
        {"bandwidth": 0.5, "bandwidth_gddr": 0.5, "allreduce_latency_s": 0, "overhead": 0, "launch": 0},
    )
    assert start.bandwidth == 0.5 and set(start.step_overhead_s.values()) == {0}
    assert start.eager_launch_per_layer_s == 0


def _step_s(setup: ServeSetup, eff: object = None) -> float:
    speed = serve_speed(
        LLAMA_7B,
        setup,
        A100,
        weight_bytes=13 * 10**9,
        kv_bytes_per_token=524288,
        efficiency=eff,  # type: ignore[arg-type]
    )
    return 1 / speed.per_user_decode_tokens_per_s


def test_step_overhead_is_added_once_per_step_per_engine() -> None:
    eff = serve_efficiency()
    free = replace(eff, step_overhead_s={r: 0.0 for r in eff.step_overhead_s})
    for batch in (1, 64):
        for runtime in SERVE_RUNTIMES:
            setup = ServeSetup(context=512, concurrency=batch, runtime=runtime)
            added = _step_s(setup, eff) - _step_s(setup, free)
            assert added == pytest.approx(decode_step_overhead_s(runtime, eff), abs=1e-12)
            assert added == pytest.approx(eff.step_overhead_s[runtime], abs=1e-12)
    # vLLM's host cost per step is a few ms (issue #6854: ~4 ms of GPU bubble), LMDeploy's C++ engine's less;
    # SGLang has no measured row, so its prior is vLLM's fitted value.
    assert 1e-3 < eff.step_overhead_s["vllm"] < 10e-3
    assert _step_s(ServeSetup(runtime="vllm")) > _step_s(ServeSetup(runtime="lmdeploy"))
    assert eff.step_overhead_s["sglang"] == eff.step_overhead_s["vllm"]


def test_bandwidth_efficiency_follows_the_memory_type() -> None:
    rtx4090, h100 = get_accelerator("rtx4090"), get_accelerator("h100-sxm")
    assert is_gddr(rtx4090) and not is_gddr(A100) and not is_gddr(h100)
    assert rtx4090.memory_type.startswith("GDDR") and A100.memory_type.startswith("HBM")
    eff = serve_efficiency()
    assert decode_bandwidth_efficiency(rtx4090, eff) == eff.bandwidth_gddr
    assert decode_bandwidth_efficiency(A100, eff) == eff.bandwidth
    setup = ServeSetup(context=512)
    changed = replace(eff, bandwidth_gddr=eff.bandwidth_gddr / 2)
    kw = {"weight_bytes": 10**10, "kv_bytes_per_token": 1000.0}
    assert decode_memory_s(setup, rtx4090, changed, **kw) == pytest.approx(
        2 * decode_memory_s(setup, rtx4090, eff, **kw)
    )
    assert decode_memory_s(setup, A100, changed, **kw) == decode_memory_s(setup, A100, eff, **kw)


def test_a_decode_row_is_expressed_with_its_engine() -> None:
    rows = {r["id"]: r for r in _rows()}
    for row_id, runtime in (
        ("dec-09", "lmdeploy"),
        ("dec-25", "vllm"),
        ("dec-01", "gpt-fast"),
        ("dec-68", "llama.cpp"),
    ):
        setup = express(rows[row_id]).setup
        assert isinstance(setup, ServeSetup) and setup.runtime == runtime
    with pytest.raises(Skip, match="no decode step cost"):
        express({**rows["dec-09"], "runtime": "exllama"})


def test_serve_runtime_is_validated_and_defaults_to_vllm() -> None:
    assert ServeSetup().runtime == "vllm"
    with pytest.raises(SwiftplanError, match="serving runtime"):
        ServeSetup(runtime="exllama")  # type: ignore[arg-type]


def test_every_decode_row_is_compared_or_skipped_with_a_reason() -> None:
    rows = _rows()
    assert len(rows) >= 20
    for row in rows:
        assert row["metric"] in DECODE_METRICS
        assert row["source"] and row["notes"]
        try:
            result = compare(row, express(row))
        except Skip as reason:
            assert str(reason)
            continue
        assert result["ours"]["tokens_per_s"] > 0


def test_bad_efficiency_changes_the_prediction() -> None:
    row = next(r for r in _rows() if r["id"] == "dec-06")  # gpt-fast Llama-2-70B tp4, batch 1
    expressed = express(row)
    setup = expressed.setup
    assert isinstance(setup, ServeSetup)
    eff = serve_efficiency()
    slow = replace(eff, allreduce_latency_s=eff.allreduce_latency_s * 10)
    assert decode_allreduce_s(LLAMA_70B, setup, A100, slow) > decode_allreduce_s(LLAMA_70B, setup, A100, eff)
