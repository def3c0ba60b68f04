"""Helpers for the train executor tests: plan files for the tiny Llama fixture, and running the CLI in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "train"
TINY_MODEL = FIXTURES / "tiny_llama" / "config.json"
TOKENIZER = FIXTURES / "tiny_tokenizer"


def write_plan(
    path: Path, *, cluster: str = "rtx4090", gpus: int = 1, model: Path = TINY_MODEL, **setup: Any
) -> Path:
    """A plan file for the tiny Llama, predicted by the real estimator (LoRA r8 all-linear, fp32 by default)."""
    from swiftplan.plan_file import save_plan
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.setup import LoraSetup, TrainSetup
    from swiftplan.usecases.estimate import plan_for_setup

    defaults: dict[str, Any] = dict(method="lora", precision="fp32", micro_batch=2, seq_len=48, grad_ckpt=False,
                                    lora=LoraSetup(rank=8, targets=("all-linear",), dropout=0.0))  # fmt: skip
    train = TrainSetup(**(defaults | setup))
    save_plan(plan_for_setup(str(model), parse_cluster(cluster), train, gpus=gpus), path)
    return path


def train_args(plan: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """`swiftplan train` arguments for a CPU random-init run of the tiny model."""
    return ["train", str(plan), "--data", str(data), "--output-dir", str(out), "--random-init", "--tokenizer",
            str(TOKENIZER), "--device", "cpu", *extra]  # fmt: skip


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run the CLI in this process (typer's CliRunner); exceptions are kept on the result."""
    from typer.testing import CliRunner

    from swiftplan.cli import _register_commands, app

    if not any(c.name == "train" for c in app.registered_commands):
        _register_commands()
    return CliRunner().invoke(app, list(args), catch_exceptions=True, env={"COLUMNS": "120", **(env or {})})
