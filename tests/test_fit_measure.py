"""`swiftplan fit --measure`: real steps of the top candidates (CPU path here), trials in the study, OOM pruned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_support import TINY_MODEL, cli

FIT = ["fit", str(TINY_MODEL), "--gpus", "rtx4090", "--seq", "64", "--global-batch", "4"]
CPU = ["--measure", "--measure-device", "cpu", "--measure-layers", "1", "--measure-steps", "2"]


def _measured_trials(storage: str) -> list[object]:
    import optuna

    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("measured")]


def test_measure_on_cpu_ranks_and_records_trials(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = cli(*FIT, *CPU, "--storage", storage, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    assert "Measured on cpu (1 layer(s))" in out
    assert "winner by measurement: candidate" in out
    assert "CPU timings and RSS do not rank GPU plans" in out
    assert (
        "skipped: quantization 'int8' is not available" in out
    )  # bitsandbytes candidate: capability check on CPU
    trials = _measured_trials(storage)
    assert len(trials) == 2
    for trial in trials:
        assert trial.state.name == "COMPLETE"
        assert trial.user_attrs["measured_tokens_per_s"] > 0
        assert trial.user_attrs["measured_peak_allocated"] > 0
        assert trial.user_attrs["oom"] is False
        assert trial.user_attrs["measured_layers"] == 1


def test_measure_json_ranks_by_measured_speed(tmp_path: Path) -> None:
    result = cli(*FIT, *CPU, "--measure-top", "2", "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = json.loads(result.stdout[result.stdout.index("{") :])["measurements"]
    assert [r["candidate"] for r in rows] == [1, 2]
    ran = [r for r in rows if r["measured_tokens_per_s"]]
    assert sorted(r["measured_rank"] for r in ran) == list(range(1, len(ran) + 1))
    by_rank = sorted(ran, key=lambda r: r["measured_rank"])
    assert by_rank[0]["measured_tokens_per_s"] >= by_rank[-1]["measured_tokens_per_s"]


def test_measure_without_cuda_refuses() -> None:
    from swiftplan.executors.measure import cuda_available

    if cuda_available():
        pytest.skip("this machine has a CUDA device")
    done = subprocess.run([sys.executable, "-m", "swiftplan", *FIT, "--measure"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device was found" in done.stderr
    assert "--measure-device cpu" in done.stderr


def test_oom_is_a_pruned_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    import torch

    from swiftplan.executors import measure
    from swiftplan.planner.setup import LoraSetup, TrainSetup

    def oom(*args: object, **kwargs: object) -> list[float]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    setup = TrainSetup(method="lora", precision="fp32", micro_batch=2, seq_len=32, grad_ckpt=False,
                       lora=LoraSetup(rank=8, targets=("all-linear",)))  # fmt: skip
    monkeypatch.setattr(measure, "run_steps", oom)
    (m,) = measure.measure_candidates(str(TINY_MODEL), [setup], steps=1, layers=1, device="cpu")
    assert m.oom and not m.ran and m.tokens_per_s == 0
    assert measure.ranked([m]) == []

    class Estimate:
        class memory:  # noqa: N801
            peak_allocated = 1

    class Evaluation:
        estimate = Estimate()
        tokens_per_s = 1000.0
        gpus = 1

    study = optuna.create_study(direction="minimize")
    measure.record_trials(study, [Evaluation()], [m], objective="time")
    (trial,) = study.get_trials()
    assert trial.state.name == "PRUNED"
    assert trial.user_attrs["oom"] is True


def test_measure_runs_real_steps_and_frees(tmp_path: Path) -> None:
    from swiftplan.executors import measure
    from swiftplan.planner.setup import LoraSetup, TrainSetup

    setups = [
        TrainSetup(method="lora", precision="fp32", micro_batch=2, seq_len=32, grad_ckpt=False, grad_accum=2,
                   lora=LoraSetup(rank=8, targets=("all-linear",))),
        TrainSetup(method="full", precision="fp32", micro_batch=1, seq_len=32, grad_ckpt=True),
        TrainSetup(method="qlora", precision="bf16", micro_batch=1, seq_len=32),
    ]  # fmt: skip
    out = measure.measure_candidates(str(TINY_MODEL), setups, steps=2, device="cpu")
    assert [m.ran for m in out] == [True, True, False]
    assert all(len(m.step_times_s) == 2 and m.tokens_per_s > 0 for m in out[:2])
    assert "bitsandbytes" in out[2].skipped
    assert out[0].layers is None
