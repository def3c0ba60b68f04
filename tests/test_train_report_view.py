"""What `swiftplan train` prints after a run on the CPU: the measurements, without the ratios to a
prediction made for other hardware (they would compare a GPU plan with a CPU run)."""

from __future__ import annotations

import json

from train_support import FIXTURES, cli, train_args, write_plan


def test_a_cpu_run_prints_measurements_but_no_predicted_ratios(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml")
    result = cli(*train_args(plan, FIXTURES / "chat.jsonl", tmp_path / "run"), "--max-steps", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    text = " ".join(result.output.split())
    assert "measured (" in text and "measured / predicted" not in text
    assert "peak allocated" in text or "peak" in text
    report = json.loads((tmp_path / "run" / "run_report.json").read_text())
    assert report["device"]["torch_device"] == "cpu"
    assert report["predicted"]["peak_allocated_bytes"] > 0  # the prediction is still kept in the report
