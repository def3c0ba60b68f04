"""vLLM: render `vllm serve` from a plan (pure), then run it (subprocess, health check, clean stop).

Flag names follow vLLM's engine arguments (docs.vllm.ai, "Engine Arguments" / `vllm serve --help`):
--tensor-parallel-size, --max-model-len, --max-num-seqs, --max-num-batched-tokens,
--gpu-memory-utilization, --dtype, --quantization, --kv-cache-dtype, --enable-lora, --lora-modules
name=path, --max-loras, --max-lora-rank, --enforce-eager, --served-model-name, --host, --port. The API key travels
in the VLLM_API_KEY environment variable (read by vLLM's OpenAI server), never on the command line
where `ps` would show it. A vision-language plan adds --limit-mm-per-prompt and --mm-processor-kwargs
(`images.py`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup

_VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# In-flight quantization vLLM applies to an unquantized checkpoint. Pre-quantized checkpoints
# (GPTQ, AWQ, bitsandbytes int8) carry a quantization_config that vLLM reads itself and uses to
# pick its fastest kernel (Marlin for GPTQ/AWQ on Ampere+); forcing --quantization gptq/awq would
# select the slower reference kernel, so those are left to vLLM.
# vLLM 0.32 quantizes a 16-bit checkpoint to fp8 on load with `fp8_per_tensor` (dense layers and routed
# experts); `fp8` there loads only checkpoints already exported as fp8, and raises for online quantization
# (vllm 0.32.0 model_executor/layers/quantization/fp8.py Fp8Config.__init__, quantization/__init__.py
# _ONLINE_SHORTHANDS). An fp8 export is planned without --quant: vLLM reads its quantization_config.
_INFLIGHT_QUANT = {"fp8": "fp8_per_tensor", "nf4": "bitsandbytes"}
_PREQUANTIZED = ("gptq", "awq", "int8")
# --max-lora-rank accepts only these values (vLLM's LoRAConfig.max_lora_rank choices).
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
API_KEY_ENV = "VLLM_API_KEY"


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchSpec:
    """A rendered command: everything `run_server_process` needs, nothing it must compute."""

    argv: tuple[str, ...]
    """The command line."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to the environment."""
    health_url: str
    """Polled until it answers 200."""
    notes: tuple[str, ...] = ()
    """Choices made while rendering that the user should know about."""


def _lora_rank(rank: int) -> int:
    for allowed in _LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise SwiftplanError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({_LORA_RANKS[-1]}).")


def render_vllm(
    setup: ServeSetup, *, model: str, served_name: str, host: str = "127.0.0.1", port: int = 8000,
    loras: Sequence[tuple[str, str]] = (), api_key: str | None = None, spec: ModelSpec | None = None,
) -> LaunchSpec:  # fmt: skip
    """The `vllm serve` command for `setup` (pure: same inputs, same argv). A plan with images needs the model's
    spec for its image limits: `spec`, or the config at hand for `model` (images.spec_for_images)."""
    from swiftplan.executors.serve.images import served_images, spec_for_images, vllm_image_args

    notes: list[str] = []
    argv = [
        "vllm", "serve", model,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", _VLLM_DTYPES[setup.dtype],
        "--tensor-parallel-size", str(setup.tp),
        "--max-model-len", str(setup.context),
        "--max-num-seqs", str(setup.concurrency),
        "--max-num-batched-tokens", str(max(setup.prefill_chunk, setup.concurrency)),
        "--gpu-memory-utilization", f"{setup.gpu_memory_utilization:g}",
    ]  # fmt: skip
    if setup.quant in _INFLIGHT_QUANT:
        argv += ["--quantization", _INFLIGHT_QUANT[setup.quant]]
    elif setup.quant in _PREQUANTIZED:
        notes.append(f"--quant {setup.quant}: the checkpoint must already be {setup.quant}-quantized; vLLM reads "
                     "its quantization_config and picks the kernel.")  # fmt: skip
    elif setup.quant != "none":
        raise SwiftplanError(f"vLLM has no in-flight {setup.quant} quantization.",
                             hint="Plan with --quant nf4 (bitsandbytes), fp8, or a GPTQ/AWQ checkpoint.")  # fmt: skip
    if setup.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    if setup.eager:
        argv += ["--enforce-eager"]
    if loras or setup.max_loras:
        max_loras = max(setup.max_loras, 1)
        if len(loras) > max_loras:
            notes.append(f"{len(loras)} adapters but the plan sized {max_loras} LoRA slot(s); vLLM swaps them in "
                         "and out of the slots per batch.")  # fmt: skip
        argv += [
            "--enable-lora",
            "--max-loras",
            str(max_loras),
            "--max-lora-rank",
            str(_lora_rank(setup.max_lora_rank)),
        ]
        if loras:
            argv += ["--lora-modules", *(f"{name}={path}" for name, path in loras)]
    vision_spec = spec_for_images(setup, model, spec)
    if vision_spec is not None and (images := served_images(setup, vision_spec)) is not None:
        argv += vllm_image_args(images)
    env = {API_KEY_ENV: api_key} if api_key else {}
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    probe_host = f"[{probe_host}]" if ":" in probe_host else probe_host
    return LaunchSpec(
        argv=tuple(argv), env=env, health_url=f"http://{probe_host}:{port}/health", notes=tuple(notes)
    )


def format_command(spec: LaunchSpec, *, reveal_secrets: bool = False) -> str:
    """A shell line for the spec (`--dry-run`); secrets in the environment are masked."""
    env = " ".join(f"{k}={shlex.quote(v if reveal_secrets else '***')}" for k, v in spec.env.items())
    return (env + " " if env else "") + shlex.join(spec.argv)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL we rendered)
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process(process: subprocess.Popen[str], *, timeout_s: float = 30.0) -> int:
    """SIGINT, then SIGTERM, then SIGKILL, each after `timeout_s`, to the process's group."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


_POLL_S = 0.5
"""How often the launcher checks health, the process and the stop request."""
_LOG_TAIL_LINES = 20
"""Log lines quoted when the server dies before it is healthy."""


def _launch(spec: LaunchSpec) -> subprocess.Popen[str]:
    """Start the server in its own process group (we decide when it stops), its log on a pipe."""
    try:
        return subprocess.Popen(
            list(spec.argv), env={**os.environ, **spec.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True,
        )  # fmt: skip
    except OSError as error:
        raise SwiftplanError(f"Cannot start {spec.argv[0]}: {error.strerror or error}.",
                             hint="pip install 'swiftplan[vllm]' on a machine with a CUDA GPU.") from error  # fmt: skip


def _pump_log(
    process: subprocess.Popen[str], log: Callable[[str], None]
) -> tuple[threading.Thread, deque[str]]:
    """A thread passing each log line to `log`, and the last lines it saw."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            log(line.rstrip())

    reader = threading.Thread(target=pump, name="swiftplan-serve-log", daemon=True)
    reader.start()
    return reader, tail


def _await_health(
    spec: LaunchSpec, process: subprocess.Popen[str], *, reader: threading.Thread, tail: deque[str],
    health_timeout_s: float, stop_timeout_s: float, stop_when: threading.Event,
) -> bool:  # fmt: skip
    """Wait until the server answers its health URL (True), or a stop was asked for first (False, stopped).
    A server that exits or stays silent past the timeout is a SwiftplanError."""
    deadline = time.monotonic() + health_timeout_s
    while not _healthy(spec.health_url):
        if process.poll() is not None:
            reader.join(2)
            raise SwiftplanError(f"{spec.argv[0]} exited with code {process.returncode} before it was healthy. "
                                 "Last lines: " + " | ".join(tail))  # fmt: skip
        if time.monotonic() > deadline or stop_when.is_set():
            stop_process(process, timeout_s=stop_timeout_s)
            if stop_when.is_set():
                return False
            raise SwiftplanError(f"{spec.health_url} did not answer within {health_timeout_s:.0f} s.")
        time.sleep(_POLL_S)
    return True


def run_server_process(
    spec: LaunchSpec, *, health_timeout_s: float = 900.0, stop_timeout_s: float = 30.0,
    log: Callable[[str], None] = print, on_ready: Callable[[], None] | None = None,
    stop_when: threading.Event | None = None,
) -> int:  # fmt: skip
    """Launch, stream its log, wait for health, serve until it exits or we are asked to stop.

    Ctrl-C, SIGTERM or `stop_when` stop it cleanly (`stop_process`), and leave `stop_when` set so
    the caller can tell a requested stop from a crash. Returns the exit code; a server that dies or
    never becomes healthy is a SwiftplanError quoting its last log lines.
    """
    process = _launch(spec)
    reader, tail = _pump_log(process, log)
    stop = stop_when or threading.Event()
    previous = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    if previous is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        healthy = _await_health(spec, process, reader=reader, tail=tail, health_timeout_s=health_timeout_s,
                                stop_timeout_s=stop_timeout_s, stop_when=stop)  # fmt: skip
        if not healthy:
            return process.returncode
        log(f"healthy: {spec.health_url}")
        if on_ready is not None:
            on_ready()
        while process.poll() is None and not stop.wait(_POLL_S):
            pass
    except KeyboardInterrupt:
        stop.set()
    finally:
        code = stop_process(process, timeout_s=stop_timeout_s)
        reader.join(5)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code
