"""A plan renders its own launch: nodes × processes from the plan's hardware, whatever this machine has,
with no device, tokenizer or network. Snapshots in tests/snapshots/plan_launch (UPDATE_SNAPSHOTS=1 rewrites)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_probe import FakeNvml, load

from swiftplan.executors.train.prepare import RunRequest, dry_run
from swiftplan.plan_file import load_plan, save_plan
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup
from swiftplan.usecases.estimate import plan_for_setup

SNAPSHOTS = Path(__file__).parent / "snapshots" / "plan_launch"
RUN = Path("runs/plan-test")
FULL_ZERO3 = TrainSetup(method="full", micro_batch=1, grad_accum=4, parallel=Parallelism(zero=3))
LORA = TrainSetup(
    method="lora", lora=LoraSetup(rank=16, targets=("all-linear",)), micro_batch=2, grad_accum=2
)

CASES = {
    # name: (cluster offered, GPUs used, set-up, nodes × processes expected)
    "1x8": ("8xh100", 8, FULL_ZERO3, (1, 8)),
    "2x8": ("2x8xh100", 16, FULL_ZERO3, (2, 8)),
    "1x2": ("2xh100", 2, LORA, (1, 2)),
    "16_of_4x8": ("4x8xh100", 16, FULL_ZERO3, (2, 8)),
    "32_of_4x8": ("4x8xh100", 32, FULL_ZERO3, (4, 8)),
}


def _plan_file(tmp_path: Path, cluster: str, gpus: int, setup: TrainSetup) -> Path:
    path = tmp_path / "plan.yaml"
    save_plan(plan_for_setup("meta-llama/Llama-3.1-70B", parse_cluster(cluster), setup, gpus=gpus), path)
    return path


def _text(result) -> str:
    from swiftplan.executors.train.launch import format_launch

    return "\n".join(f"# node {i}\n{format_launch(launch)}" for i, launch in enumerate(result.launches))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_plan_renders_its_own_nodes_and_processes(tmp_path, name):
    cluster, gpus, setup, (nodes, per_node) = CASES[name]
    result = dry_run(
        RunRequest(plan_path=_plan_file(tmp_path, cluster, gpus, setup), data=None, output_dir=RUN)
    )
    assert (result.plan.nodes, result.plan.gpus_per_node) == (nodes, per_node)
    assert len(result.launches) == nodes
    for rank, launch in enumerate(result.launches):
        argv = list(launch.argv)
        assert argv[argv.index("--nnodes") + 1] == str(nodes)
        assert argv[argv.index("--nproc-per-node") + 1] == str(per_node)
        assert argv[argv.index("--node-rank") + 1] == str(rank)
    text = _text(result)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; UPDATE_SNAPSHOTS=1 regenerates it"


def test_dry_run_needs_no_tokenizer_device_or_network(tmp_path, monkeypatch):
    import swiftplan.executors.train.device as device
    import swiftplan.executors.train.model as model

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dry run must not load a tokenizer or detect a device")

    monkeypatch.setattr(model, "load_tokenizer", refuse)
    monkeypatch.setattr(device, "detect_device", refuse)
    plan = _plan_file(tmp_path, "2x8xh100", 16, FULL_ZERO3)
    data = Path(__file__).parent / "fixtures" / "train" / "alpaca.jsonl"
    result = dry_run(RunRequest(plan_path=plan, data=data, output_dir=RUN))
    assert result.launches[0].files["ds_config.json"]


def test_a_plan_from_a_probed_gpu_missing_from_the_catalog_estimates_and_dry_runs(tmp_path, monkeypatch):
    from swiftplan.executors.probe import cluster_from_probe, probe
    from swiftplan.executors.probe.nvml import probe_nvml
    from swiftplan.usecases.estimate import estimate_plan_file
    from swiftplan.usecases.fit import FitRequest, prepare_fit, search_fit

    spec = load("nvml_4090_busy.json")  # a recorded NVML answer, renamed to a card the catalog lacks
    gpu = spec["devices"][0]
    gpu.update(name="NVIDIA H100 NVL", compute_capability=[9, 0], processes=[])
    gpu["memory"] = {"total": 95830 * 2**20, "free": 95300 * 2**20, "used": 530 * 2**20}
    FakeNvml(spec).install(monkeypatch)
    cluster = cluster_from_probe(probe(backends=(("nvml", lambda: probe_nvml({})),)))
    assert not cluster.accelerator.from_catalog
    problem = prepare_fit(
        FitRequest(model="Qwen/Qwen2.5-7B", gpus="auto", host_ram_bytes=64 * 2**30), cluster=cluster
    )
    plan = search_fit(problem).plan
    assert plan is not None and plan.hardware.accelerator.id.startswith("probed-")
    path = tmp_path / "probed.yaml"
    save_plan(plan, path)
    monkeypatch.undo()  # reading the plan back needs neither the probe nor the catalog
    assert load_plan(path) == plan
    assert estimate_plan_file(path).changed == ()
    result = dry_run(RunRequest(plan_path=path, data=None, output_dir=RUN))
    assert result.plan.hardware.accelerator.name == plan.hardware.accelerator.name


def test_train_dry_run_from_the_command_line_prints_every_node(tmp_path):
    plan = _plan_file(tmp_path, "4x8xh100", 16, FULL_ZERO3)
    result = subprocess.run([sys.executable, "-m", "swiftplan", "train", str(plan), "--dry-run", "--json"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "SWIFTPLAN_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["nodes"] == 2 and data["gpus_per_node"] == 8 and len(data["launches"]) == 2
    assert "ds_config.json" in data["files"]
