"""Render a training launch (pure: plan → argv, env, config files), then run it.

One process trains in the calling process. Several processes — GPUs of one node, several nodes, or
CPU processes with gloo in tests — and every DeepSpeed (ZeRO) run go through `torchrun`, which starts
`python -m swiftplan.executors.train.worker RUN_DIR` once per device with RANK/WORLD_SIZE/LOCAL_RANK
set; ZeRO runs read the rendered ds_config.json. On a cluster the same command runs on every node,
with its own --node-rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.runtime_terms import HF_AUTO_ZERO3_KEYS, hf_auto_zero3_sizes
from swiftplan.planner.setup import TrainSetup

WORKER_MODULE = "swiftplan.executors.train.worker"


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchOptions:
    """Where the processes run."""

    device: str
    """torch device type the workers use (cuda, npu, mps, cpu)."""
    nproc_per_node: int = 1
    """Processes (devices) per node."""
    nnodes: int = 1
    """Nodes taking part."""
    node_rank: int = 0
    """This node's rank (0 .. nnodes-1)."""
    master_addr: str = "127.0.0.1"
    """Address of node 0."""
    master_port: int = 29500
    """Rendezvous port on node 0."""

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise SwiftplanError(
                f"Need at least one process and one node, got {self.nproc_per_node} × {self.nnodes}."
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise SwiftplanError(f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1}.")

    @property
    def world_size(self) -> int:
        """Processes over all nodes."""
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True, kw_only=True, slots=True)
class Launch:
    """A rendered launch: what to run, with which environment and files."""

    mode: Literal["single", "torchrun"]
    """'single': the worker runs in this process; 'torchrun': a subprocess per device."""
    argv: tuple[str, ...]
    """The command (for 'single', the equivalent stand-alone command)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment added to the caller's."""
    files: dict[str, str] = field(default_factory=dict)
    """Config files to write into the run directory (name → text)."""


def zero_optimization(setup: TrainSetup) -> dict[str, Any]:
    """DeepSpeed's `zero_optimization` section for the plan's ZeRO stage and offload, with the bucket sizes
    the plan counted when it counts them (`ds_buckets`), so DeepSpeed allocates what was planned."""
    par, knobs = setup.parallel, setup.runtime
    zero: dict[str, Any] = {
        "stage": par.zero,
        "overlap_comm": knobs.ds_overlap_comm,
        "contiguous_gradients": True,
    }
    if par.offload in ("optimizer", "optimizer+params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if par.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if par.zero == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if knobs.ds_buckets:
        zero["reduce_bucket_size"] = knobs.reduce_bucket_elements
        if par.zero == 3:
            zero["stage3_prefetch_bucket_size"] = knobs.prefetch_bucket_elements
            zero["stage3_max_live_parameters"] = knobs.max_live_parameters
            zero["stage3_max_reuse_distance"] = knobs.max_reuse_distance
            if knobs.ds_auto_buckets:  # filled from the model's hidden size (fill_auto_sizes, the HF Trainer)
                zero |= dict.fromkeys(HF_AUTO_ZERO3_KEYS, "auto")
    return zero


def fill_auto_sizes(config: dict[str, Any], hidden_size: int) -> dict[str, Any]:
    """`config` with its "auto" ZeRO-3 sizes filled as the HF Trainer fills them (DeepSpeed itself
    rejects "auto"): swiftplan's own worker calls this before deepspeed.initialize."""
    zero = dict(config.get("zero_optimization", {}))
    sizes = hf_auto_zero3_sizes(hidden_size)
    zero |= {key: sizes[key] for key, value in zero.items() if value == "auto" and key in sizes}
    return {**config, "zero_optimization": zero}


def deepspeed_config(setup: TrainSetup, *, world_size: int, lr: float, weight_decay: float, max_grad_norm: float) -> dict[str, Any]:  # fmt: skip
    """DeepSpeed JSON for the plan's ZeRO stage, offload and precision (DeepSpeed keeps fp32 master weights)."""
    zero = zero_optimization(setup)
    half = {"bf16": "bf16", "amp-bf16": "bf16", "fp16": "fp16", "amp-fp16": "fp16"}.get(setup.precision)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": setup.micro_batch,
        "gradient_accumulation_steps": setup.grad_accum,
        "train_batch_size": setup.micro_batch * setup.grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": half == "bf16"},
        "fp16": {"enabled": half == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if setup.optimizer == "adamw":  # DeepSpeed's own AdamW: fused on GPU, DeepSpeedCPUAdam when offloaded
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": weight_decay}}  # fmt: skip
    else:  # the planned optimizer, passed to deepspeed.initialize
        config["zero_force_ds_cpu_optimizer"] = False
    return config


ALLOCATOR_ENV = {
    "PYTORCH_ALLOC_CONF": "expandable_segments:True",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}
"""The caching allocator with expandable segments, as a plan planned with them (RuntimeKnobs.expandable_segments)
launches: torch 2.10+ reads PYTORCH_ALLOC_CONF, earlier releases PYTORCH_CUDA_ALLOC_CONF (unslothai/unsloth-zoo and
axolotl set the one their torch reads; an engine's own torch is not known here, so both are set)."""


def allocator_env(setup: TrainSetup) -> dict[str, str]:
    """The allocator variables a training plan's launch sets: expandable segments when planned with them."""
    return dict(ALLOCATOR_ENV) if setup.runtime.expandable_segments else {}


def render(setup: TrainSetup, options: LaunchOptions, *, run_dir: str, python: str = "python", lr: float = 2e-4,
           weight_decay: float = 0.0, max_grad_norm: float = 1.0) -> Launch:  # fmt: skip
    """The launch for a plan: pure, so the same inputs always give the same command and files."""
    worker = ("-m", WORKER_MODULE, run_dir)
    env = {"TOKENIZERS_PARALLELISM": "false", **allocator_env(setup)}
    files: dict[str, str] = {}
    if setup.parallel.zero:
        config = deepspeed_config(setup, world_size=options.world_size, lr=lr, weight_decay=weight_decay,
                                  max_grad_norm=max_grad_norm)  # fmt: skip
        files["ds_config.json"] = json.dumps(config, indent=2) + "\n"
    if options.world_size == 1 and not setup.parallel.zero:
        return Launch(mode="single", argv=(python, *worker), env=env, files=files)
    if options.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    argv = (
        python, "-m", "torch.distributed.run",
        "--nnodes", str(options.nnodes), "--node-rank", str(options.node_rank),
        "--nproc-per-node", str(options.nproc_per_node),
        "--master-addr", options.master_addr, "--master-port", str(options.master_port),
        *worker,
    )  # fmt: skip
    return Launch(mode="torchrun", argv=argv, env=env, files=files)


def format_launch(launch: Launch) -> str:
    """The launch as text: the command line (with its environment) and each file."""
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(launch.env.items()))
    lines = [f"# mode: {launch.mode}", f"{env} {shlex.join(launch.argv)}".strip()]
    for name, text in sorted(launch.files.items()):
        lines += ["", f"# --- {name} ---", text.rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_files(launch: Launch, run_dir: Path) -> None:
    """Write the rendered files and launch.json (argv, env) into the run directory."""
    for name, text in launch.files.items():
        (run_dir / name).write_text(text)
    record = {"mode": launch.mode, "argv": list(launch.argv), "env": launch.env}
    (run_dir / "launch.json").write_text(json.dumps(record, indent=2) + "\n")


def run_subprocess(launch: Launch, *, log: Path) -> None:
    """Run a torchrun launch, its output shown and appended to `log`; a failure is one SwiftplanError.

    torchrun runs in its own session: the first SIGINT/SIGTERM this process gets is passed on to it as
    SIGTERM (torchrun sends it to every worker, which save at the next step boundary), a second one
    kills the whole group. Once a worker has printed its `error:` line, the rest of the output (other
    ranks' and torchrun's reports of the failure) goes to the log only."""
    env = {**os.environ, **launch.env}
    with log.open("a", encoding="utf-8") as handle:
        process = subprocess.Popen(launch.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)  # fmt: skip
        with _forward_signals(process):
            errors, tail = _relay(process, handle)
            code = process.wait()
    if code != 0:
        detail = errors[0].removeprefix("error:").strip() if errors else " | ".join(tail[-3:])
        raise SwiftplanError(
            f"The training processes exited with code {code}: {detail}", hint=f"Full output: {log}"
        )


def _relay(process: subprocess.Popen[str], handle: Any) -> tuple[list[str], list[str]]:
    """Copy the output to the log, and to stdout until the first `error:` line; (error lines, last lines)."""
    assert process.stdout is not None
    errors: list[str] = []
    tail: list[str] = []
    for line in process.stdout:
        handle.write(line)
        if line.startswith("error:"):
            errors.append(line.rstrip())
        elif not errors:
            sys.stdout.write(line)
        tail = (tail + [line.rstrip()])[-15:]
    return errors, tail


@contextlib.contextmanager
def _forward_signals(process: subprocess.Popen[str]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if len(received) == 1:
                process.send_signal(signal.SIGTERM)
            else:
                os.killpg(process.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
