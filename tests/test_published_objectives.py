"""benchmarks/data/published_objectives.csv: every row has a source, a known counter, a sound value and a
task swiftplan plans, and the objective columns agree with the task (rollouts only for grpo/ppo, no
reference for the reference-free methods)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import published_objective_rows as objective_rows  # noqa: E402

from swiftplan.planner.objective import OBJECTIVES  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return objective_rows.read_rows()


def test_the_file_has_no_integrity_problems(rows):
    assert objective_rows.problems(rows) == []
    assert len(rows) >= 100


def test_columns_extend_published_2026_in_its_order():
    import csv

    with (objective_rows.HERE / "data" / "published_2026.csv").open(newline="", encoding="utf-8") as f:
        base = next(csv.reader(f))
    assert list(objective_rows.COLUMNS[: len(base)]) == base


def test_tasks_are_the_planners_objectives(rows):
    assert set(objective_rows.TASKS) == set(OBJECTIVES)
    assert {r["task"] for r in rows} <= set(OBJECTIVES)


def test_every_row_names_its_source_and_a_known_counter(rows):
    for r in rows:
        assert r["source"].strip(), r["id"]
        assert r["metric"] in objective_rows.METRICS, r["id"]


def test_values_are_positive_and_verdicts_binary(rows):
    for r in rows:
        value = float(r["value"])
        if r["metric"] == "fits_in_gpu":
            assert value in (0.0, 1.0), r["id"]
        else:
            assert value > 0, r["id"]


def test_ids_are_unique(rows):
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))


def test_rl_rows_describe_their_rollouts(rows):
    for r in rows:
        if r["task"] in ("grpo", "ppo"):
            assert r["rollout"] in ("hf", "vllm-colocate", "vllm-server"), r["id"]
            assert int(r["num_generations"]) >= 1 and int(r["completion_len"]) > 0, r["id"]
        else:
            assert r["rollout"] in ("", "none"), r["id"]


def test_the_collection_covers_preference_rl_and_vision(rows):
    tasks = {r["task"] for r in rows}
    assert {"dpo", "grpo", "ppo", "kto", "orpo", "simpo", "rm"} <= tasks
    assert any(r["modality"] != "text" for r in rows)
    assert any(r["metric"] == "fits_in_gpu" for r in rows)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": " "}, "no source"),
        ({"metric": "gpu_mem"}, "unknown counter"),
        ({"value": "-3"}, "positive"),
        ({"task": "gkd"}, "task"),
        ({"task": "orpo", "reference": "model"}, "no reference"),
    ],
)
def test_problems_catches_bad_rows(rows, change, message):
    row = dict(next(r for r in rows if r["task"] == "dpo" and r["metric"] == "reserved_gib"), **change)
    found = objective_rows.problems([row])
    assert any(message in p for p in found), found


def test_generator_columns_are_the_loaders():
    import ms_swift_objective_headers

    assert ms_swift_objective_headers.COLUMNS == objective_rows.COLUMNS
