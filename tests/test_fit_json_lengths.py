"""`fit --json` carries the data's length distribution and the length memory was sized at."""

from __future__ import annotations

import json

from bad_input_support import run_cli


def test_fit_json_has_the_lengths_it_planned_on(tmp_path):
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("".join(f"{n}\n" for n in [100] * 95 + [900] * 5))
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--lengths", str(lengths), "--seq", "4096",
                     "--runtime", "hf", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    got = payload["lengths"]
    assert (got["samples"], got["p50"], got["max_len"], got["truncated_fraction"]) == (100, 100, 900, 0.0)
    # TRL pads each batch to its longest sample: sized on the longest batch
    assert got["memory_seq_len"] == payload["workload"]["seq_len"] < 4096
    assert got["memory_seq_len"] >= 900


def test_rows_padded_to_seq_size_memory_at_seq():
    """--padding max_length (every row padded to --seq, axolotl's pad_to_sequence_len): no shorter worst batch."""
    from swiftplan.planner.lengths import describe, length_stats

    stats = length_stats([100] * 95 + [900] * 5, 4096, "test")
    assert "memory sized on a 4,096-token sequence" in describe(stats, False, 16, padded_to_seq=True)
    assert "memory sized on a 4,096-token sequence" not in describe(stats, False, 16)


def test_fit_json_without_data_has_no_lengths():
    result = run_cli("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--json")
    assert json.loads(result.output[result.output.index("{") :])["lengths"] is None
