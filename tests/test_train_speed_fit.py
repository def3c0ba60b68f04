"""Training MFU by micro-batch and model size: the curve (planner/train_efficiency.py), its constants in
calibration.json, their fit script (benchmarks/fit_training_speed.py) and the published throughput rows
(benchmarks/data/published_train_speed.csv)."""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.architecture import matmul_params_per_token
from swiftplan.planner.hardware import get_accelerator
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.speed import efficiency_prior
from swiftplan.planner.train_efficiency import MfuCurve, mfu_curve, training_mfu

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from calibration_split import split_of  # noqa: E402
from fit_training_speed import fit  # noqa: E402
from published_accuracy import ALL_CSVS, TRAIN_SPEED_CSV, _estimate, compare  # noqa: E402
from published_rows import Skip, express  # noqa: E402

A100 = get_accelerator("a100-80gb-sxm")
RTX4090 = get_accelerator("rtx4090")
SECTION = json.loads((ROOT / "swiftplan" / "profiles" / "calibration.json").read_text())[
    "training_efficiency"
]


def _rows() -> list[dict[str, str]]:
    with TRAIN_SPEED_CSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_mfu_rises_with_tokens_per_micro_batch_and_saturates() -> None:
    curve = MfuCurve(mfu_max=0.5, tokens_half=512, params_half=0)
    mfus = [curve.at(tokens_per_micro_batch=t, params=7e9) for t in (128, 512, 2048, 8192, 10**7)]
    assert mfus == sorted(mfus) and len(set(mfus)) == len(mfus)
    assert mfus[1] == pytest.approx(0.25)  # half the ceiling at tokens_half
    assert mfus[-1] == pytest.approx(0.5, rel=1e-4)  # saturates at the ceiling
    assert all(m < 0.5 for m in mfus)


def test_mfu_rises_with_model_size_when_params_half_is_set() -> None:
    curve = MfuCurve(mfu_max=0.5, tokens_half=0, params_half=2e9)
    small, large = (curve.at(tokens_per_micro_batch=4096, params=n) for n in (0.5e9, 70e9))
    assert small < large < 0.5
    assert curve.at(tokens_per_micro_batch=4096, params=2e9) == pytest.approx(0.25)


def test_train_speed_uses_the_curve_at_the_set_ups_micro_batch() -> None:
    """train_speed takes its MFU from the curve at micro_batch x seq_len: lower at 256 tokens than at 4096."""
    row = next(r for r in _rows() if r["id"] == "spd-16")  # Qwen-7B LoRA, 1 x 256, one A100
    expressed = express(row)
    spec = catalog_spec(expressed.model_id)
    speeds = {}
    for seq in (256, 4096):
        setup = replace(expressed.setup, seq_len=seq)
        speed = _estimate(spec, replace(expressed, setup=setup)).speed
        assert speed is not None
        speeds[seq] = speed
        tokens = setup.micro_batch * seq
        assert speed.mfu_prior == training_mfu(
            A100, tokens_per_micro_batch=tokens, params=matmul_params_per_token(spec)
        )
    assert speeds[256].mfu_prior < speeds[4096].mfu_prior <= efficiency_prior(A100)


def test_bad_tokens_or_params_are_one_clear_error() -> None:
    curve = mfu_curve(A100)
    with pytest.raises(SwiftplanError, match=r"tokens per micro-batch must be positive.*got 0"):
        curve.at(tokens_per_micro_batch=0, params=7e9)
    with pytest.raises(SwiftplanError, match=r"parameter count must be positive.*got -1"):
        curve.at(tokens_per_micro_batch=1024, params=-1)


def test_constants_come_from_calibration_json() -> None:
    for accelerator, family in ((A100, "datacenter"), (RTX4090, "consumer")):
        curve = mfu_curve(accelerator)
        assert curve.mfu_max == SECTION[family]["value"] == efficiency_prior(accelerator)
        assert curve.tokens_half == SECTION["tokens_half"]["value"]
        assert curve.params_half == SECTION["params_half"]["value"]
    for name in ("datacenter", "consumer", "apple", "npu", "tokens_half", "params_half"):
        entry = SECTION[name]
        assert entry["status"] in ("prior", "fitted") and entry["source"]
        if entry["status"] == "fitted":
            assert (
                "fit-set" in entry["source"] and "2026-12-06" in entry["source"] and "spd-" in entry["source"]
            )
        else:  # a prior says why the fit left it alone (no usable rows, or an untrusted fit not written)
            assert "prior kept" in entry["source"] or "this value kept" in entry["source"]


def test_fit_script_reproduces_the_committed_constants() -> None:
    result = fit()
    assert result["fitted"], "no constant fitted"
    for name in result["fitted"]:
        assert all(row_id in SECTION[name]["source"] for row_id in result["rows"][name])
        if not result["trusted"][name]:  # an untrusted fit is recorded in the source, not written
            assert (
                f"{result[name]:g} on" in SECTION[name]["source"] and "not trusted" in SECTION[name]["source"]
            )
            continue
        assert result[name] == SECTION[name]["value"]
        assert SECTION[name]["status"] == "fitted"
    for name in result["kept"]:
        assert SECTION[name]["status"] == "prior"


def test_fit_uses_only_fit_set_rows() -> None:
    result = fit()
    by_id = {r["id"]: r for path in ALL_CSVS for r in csv.DictReader(path.open(newline="", encoding="utf-8"))}
    used = {row_id for rows in result["rows"].values() for row_id in rows}
    assert used
    assert all(split_of(by_id[row_id]["source"]) == "fit" for row_id in used)
    assert not used & set(result["left_out"])
    assert all(why for why in result["left_out"].values())


def test_every_speed_row_is_expressed_or_skipped_with_a_reason() -> None:
    rows = _rows()
    assert len(rows) >= 25
    expressed = 0
    for row in rows:
        assert row["metric"] == "tokens_per_s_per_gpu" and row["source"] and row["notes"]
        try:
            ex = express(row)
        except Skip as why:
            assert str(why).strip(), row["id"]
            continue
        result = compare(row, ex)
        assert result["ours"]["tokens_per_s"] > 0, row["id"]
        expressed += 1
    assert expressed >= 25


def test_each_value_is_quoted_or_derived_in_its_notes() -> None:
    """A row's value is the figure its notes quote, or the stated arithmetic on the quoted s/it."""
    for row in _rows():
        value, notes = float(row["value"]), row["notes"]
        derived = re.search(r"(\d+) x 8 / ([\d.]+) s = ([\d.]+) tokens/s per GPU", notes)
        if derived:
            seq, s_per_it, stated = (float(g) for g in derived.groups())
            assert seq == float(row["seq_len"]) and stated == value, row["id"]
            quoted = re.search(r"/ ([\d.]+)s/it'", notes)  # the README cell, e.g. '23.8G / 5.2s/it'
            assert quoted and float(quoted.group(1)) == s_per_it, row["id"]
            assert value == pytest.approx(seq * 8 / s_per_it, abs=0.05), row["id"]
        else:
            assert re.search(rf"\b{row['value']}\b", notes.replace(",", "")), row["id"]
