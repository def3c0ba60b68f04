"""Serving decode speed: the tensor-parallel all-reduce term, the fitted constants and their fit script,
and the published decode rows (benchmarks/data/published_decode.csv)."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swiftplan.planner.calibration import constant
from swiftplan.planner.hardware import get_accelerator
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.speed import decode_allreduce_s, serve_efficiency, serve_speed

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from fit_serving_speed import fit  # noqa: E402
from published_accuracy import DECODE_CSV, compare  # noqa: E402
from published_rows import DECODE_METRICS, Skip, express  # noqa: E402

LLAMA_70B = catalog_spec("meta-llama/Llama-2-70b-hf")
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
    assert eff.allreduce_latency_s == data["allreduce_latency_s"]["value"]
    for name in ("bandwidth", "allreduce_latency_s"):
        assert data[name]["status"] == "fitted"
        assert "fit set" in data[name]["source"] and "dec-01" in data[name]["source"]


def test_fit_script_reproduces_the_committed_constants() -> None:
    result = fit()
    eff = serve_efficiency()
    assert result["bandwidth"] == eff.bandwidth
    assert result["allreduce_latency_s"] == pytest.approx(eff.allreduce_latency_s, abs=1e-12)
    # Only fit-set rows move the constants.
    assert not set(result["rows"]) & set(result["test_errors"])


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
