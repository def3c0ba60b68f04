"""vLLM path: the rendered command (snapshot-tested) and the process runner (against a fake server)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.serve.vllm_cmd import LaunchSpec, format_command, render_vllm, run_server_process
from swiftplan.planner.setup import ServeSetup

SNAPSHOTS = Path(__file__).parent / "snapshots"
FAKE_SERVER = Path(__file__).parent / "fixtures" / "fake_vllm_server.py"

# Each case: a set-up as a plan carries it, and the serve options. Expected output lives in
# tests/snapshots/vllm_<name>.txt; SWIFTPLAN_UPDATE_SNAPSHOTS=1 rewrites them (review the diff).
CASES = {
    "default": (ServeSetup(), {"model": "Qwen/Qwen2.5-7B-Instruct", "served_name": "qwen"}),
    "qlora_fp8kv_tp2": (
        ServeSetup(dtype="fp16", quant="nf4", kv_dtype="fp8", context=8192, concurrency=64, tp=2,
                   gpu_memory_utilization=0.85, prefill_chunk=4096),
        {"model": "meta-llama/Llama-3.1-70B", "served_name": "llama", "host": "0.0.0.0", "port": 9000},
    ),
    "fp8_loras_key": (
        ServeSetup(quant="fp8", context=4096, concurrency=16, max_loras=2, max_lora_rank=48),
        {"model": "/models/qwen", "served_name": "base", "api_key": "sk-test",
         "loras": (("sql", "/adapters/sql"), ("chat", "/adapters/chat dir"))},
    ),
    "gptq_checkpoint": (ServeSetup(quant="gptq", concurrency=4), {"model": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "served_name": "q"}),
}  # fmt: skip


def _rendered(name: str) -> str:
    setup, options = CASES[name]
    spec = render_vllm(setup, **options)
    lines = [format_command(spec), f"health: {spec.health_url}", *(f"note: {n}" for n in spec.notes)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_command_matches_snapshot(name):
    path = SNAPSHOTS / f"vllm_{name}.txt"
    text = _rendered(name)
    if os.environ.get("SWIFTPLAN_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


def test_render_is_pure_and_keeps_the_key_off_the_command_line():
    setup, options = CASES["fp8_loras_key"]
    first, second = render_vllm(setup, **options), render_vllm(setup, **options)
    assert first == second
    assert "sk-test" not in " ".join(first.argv)
    assert first.env == {"VLLM_API_KEY": "sk-test"}
    assert "sk-test" not in format_command(first)


def test_render_maps_plan_fields_to_vllm_flags():
    argv = render_vllm(
        ServeSetup(context=2048, concurrency=3, tp=4, max_loras=1, max_lora_rank=200),
        model="m",
        served_name="m",
    ).argv
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[:3] == ("vllm", "serve", "m")
    assert flags["--max-model-len"] == "2048" and flags["--max-num-seqs"] == "3"
    assert flags["--tensor-parallel-size"] == "4"
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "256"  # vLLM's next allowed rank above 200


def test_render_refuses_what_vllm_cannot_do():
    with pytest.raises(SwiftplanError, match="fp4"):
        render_vllm(ServeSetup(quant="fp4"), model="m", served_name="m")
    with pytest.raises(SwiftplanError, match="rank"):
        render_vllm(ServeSetup(max_loras=1, max_lora_rank=1024), model="m", served_name="m")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake(*flags: str) -> LaunchSpec:
    port = _free_port()
    argv = (sys.executable, str(FAKE_SERVER), str(port), *flags)
    return LaunchSpec(argv=argv, health_url=f"http://127.0.0.1:{port}/health")


@pytest.mark.integration
def test_runner_waits_for_health_streams_the_log_and_stops_cleanly():
    lines: list[str] = []
    stop = threading.Event()
    ready_at: list[float] = []

    def ready() -> None:
        ready_at.append(time.monotonic())
        stop.set()

    code = run_server_process(
        _fake(), health_timeout_s=20, stop_timeout_s=5, log=lines.append, on_ready=ready, stop_when=stop
    )
    assert ready_at, "never became healthy"
    assert code == 0
    assert any("listening" in line for line in lines)
    assert any("shutting down" in line for line in lines)  # it got SIGINT and shut down itself


@pytest.mark.integration
def test_runner_kills_a_server_that_ignores_signals():
    stop = threading.Event()
    started = time.monotonic()
    code = run_server_process(_fake("--ignore-signals"), health_timeout_s=20, stop_timeout_s=0.5, log=lambda _: None,
                              on_ready=stop.set, stop_when=stop)  # fmt: skip
    assert code == -9  # SIGKILL after SIGINT and SIGTERM were ignored
    assert time.monotonic() - started < 15


@pytest.mark.integration
def test_runner_reports_a_server_that_dies_before_health():
    with pytest.raises(SwiftplanError, match="exited with code 3.*cannot load the model"):
        run_server_process(_fake("--exit-early"), health_timeout_s=20, log=lambda _: None)


def test_runner_reports_a_missing_executable():
    spec = LaunchSpec(argv=("/nonexistent/vllm", "serve"), health_url="http://127.0.0.1:1/health")
    with pytest.raises(SwiftplanError, match="Cannot start"):
        run_server_process(spec, log=lambda _: None)
