"""`swiftplan train --dry-run --device cpu` of a GPU plan renders what the real run launches on the CPU (one
process on one node unless --nproc-per-node/--nnodes are typed, `prepare._processes`, which both share), says
that the plan's prediction assumed its own hardware, probes no device, and refuses what the real run refuses
on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli
from train_support import FIXTURES, TOKENIZER, write_plan

from swiftplan.executors.train.prepare import RunRequest, dry_run, prepare_run

DATA = FIXTURES / "chat.jsonl"


@pytest.fixture(scope="module")
def gpu_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama planned for two RTX 4090s (DDP: torchrun with 2 processes on CUDA)."""
    return write_plan(tmp_path_factory.mktemp("plan") / "plan.yaml", cluster="2xrtx4090", gpus=2)


@pytest.fixture(autouse=True)
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run looks at no device: the probe fails the test if it is called."""
    import swiftplan.executors.probe.torch_backend as torch_backend
    import swiftplan.executors.train.prepare as prepare

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a dry run must not probe the hardware")

    monkeypatch.setattr(torch_backend, "probe_torch", refuse)
    monkeypatch.setattr(prepare, "detect_device", refuse)


def _request(plan: Path, tmp_path: Path, **typed: object) -> RunRequest:
    return RunRequest(plan_path=plan, data=DATA, output_dir=tmp_path / "run", tokenizer=str(TOKENIZER),
                      random_init=True, master_port=29555, **typed)  # type: ignore[arg-type]  # fmt: skip


def test_the_plans_own_device_renders_the_plans_launch(gpu_plan: Path, tmp_path: Path) -> None:
    for device in ("auto", "cuda"):
        result = dry_run(_request(gpu_plan, tmp_path, device=device))
        (launch,) = result.launches
        argv = list(launch.argv)
        assert launch.mode == "torchrun" and argv[argv.index("--nproc-per-node") + 1] == "2"
        assert (result.device, result.nnodes, result.nproc_per_node) == ("cuda", 1, 2)
        assert not any("assumed" in note for note in result.notes), result.notes


def test_cpu_renders_one_process_and_says_the_prediction_is_the_plans(gpu_plan: Path, tmp_path: Path) -> None:
    result = dry_run(_request(gpu_plan, tmp_path, device="cpu"))
    (launch,) = result.launches
    assert launch.mode == "single" and "torch.distributed.run" not in launch.argv
    assert (result.device, result.nnodes, result.nproc_per_node) == ("cpu", 1, 1)
    notes = " ".join(result.notes)
    assert "1 process(es) instead of the plan's 2 GPU(s)" in notes
    assert (
        "--device cpu" in notes
        and "assumed its own hardware, 1 node × 2 NVIDIA GeForce RTX 4090 (cuda)" in notes
    )


def test_typed_processes_on_the_cpu_are_launched(gpu_plan: Path, tmp_path: Path) -> None:
    result = dry_run(_request(gpu_plan, tmp_path, device="cpu", nproc_per_node=2))
    (launch,) = result.launches
    argv = list(launch.argv)
    assert launch.mode == "torchrun" and argv[argv.index("--nproc-per-node") + 1] == "2"
    assert not any("instead of the plan's" in note for note in result.notes)
    assert any("assumed its own hardware" in note for note in result.notes)


@pytest.mark.parametrize("typed", [{}, {"nproc_per_node": 2}], ids=["one-process", "two-processes"])
def test_the_dry_run_renders_what_the_real_run_launches(
    gpu_plan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typed: dict[str, int]
) -> None:
    """The same command and files as the real run's preparation on the CPU, but for the interpreter path."""
    import swiftplan.executors.train.prepare as prepare
    from swiftplan.executors.train.device import DeviceInfo, cpu_accelerator

    shown = dry_run(_request(gpu_plan, tmp_path, device="cpu", **typed)).launches[0]
    monkeypatch.setattr(prepare, "detect_device", lambda choice: DeviceInfo(torch_device="cpu", accelerator=cpu_accelerator(), count=1))  # fmt: skip
    real = prepare_run(_request(gpu_plan, tmp_path, device="cpu", **typed)).launch
    swap = {"python": prepare.sys.executable}
    assert [swap.get(a, a) for a in shown.argv] == list(real.argv)
    assert (shown.mode, shown.env, shown.files) == (real.mode, real.env, real.files)


def test_a_cpu_dry_run_refuses_what_the_cpu_cannot_run(tmp_path: Path) -> None:
    """A QLoRA plan needs bitsandbytes on a GPU: the real run on the CPU refuses it, so does its dry run."""
    plan = write_plan(tmp_path / "qlora.yaml", method="qlora", quant="nf4", precision="bf16")
    assert_refused(run_cli("train", str(plan), "--dry-run", "--device", "cpu"),
                   "cannot train on host CPU", "nf4")  # fmt: skip
    assert run_cli("train", str(plan), "--dry-run").exit_code == 0


def test_the_command_line_prints_the_launch_device(gpu_plan: Path) -> None:
    done = run_cli("train", str(gpu_plan), "--dry-run", "--device", "cpu")
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "# launch: cpu, 1 node(s) × 1 process(es)" in text and "assumed its own hardware" in text
    assert "--nproc-per-node" not in text
    payload = json.loads(run_cli("train", str(gpu_plan), "--dry-run", "--device", "cpu", "--json").output)
    assert payload["launch"] == {"device": "cpu", "nnodes": 1, "nproc_per_node": 1}
    assert (payload["nodes"], payload["gpus_per_node"], payload["mode"]) == (1, 2, "single")
