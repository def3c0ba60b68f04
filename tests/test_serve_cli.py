"""`swiftplan serve` end to end: a plan file, a real subprocess on loopback, SIGINT, the report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import ServeSetup, TrainSetup

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = FIXTURES / "serve_tiny_config.json"
TOKENIZER = FIXTURES / "serve_tokenizer"


def _write_plan(path: Path, setup: ServeSetup | TrainSetup) -> Path:
    from swiftplan.plan_file import save_plan
    from swiftplan.usecases.estimate import plan_for_setup

    save_plan(plan_for_setup(str(CONFIG), parse_cluster("h100"), setup), path)
    return path


def _swiftplan(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swiftplan", *args], capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_prints_the_vllm_command(tmp_path):
    plan = _write_plan(
        tmp_path / "plan.yaml", ServeSetup(dtype="fp16", context=128, concurrency=2, kv_dtype="fp8")
    )
    result = _swiftplan(
        "serve", str(plan), "--engine", "vllm", "--dry-run", "--served-model-name", "tiny", "--port", "9001"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"vllm serve {FIXTURES} --served-model-name tiny --host 127.0.0.1 --port 9001"
    )
    assert "--max-model-len 128 --max-num-seqs 2" in result.stdout and "--kv-cache-dtype fp8" in result.stdout


def test_dry_run_json_for_the_builtin_server(tmp_path):
    plan = _write_plan(tmp_path / "plan.yaml", ServeSetup(context=128, concurrency=2))
    result = _swiftplan("serve", str(plan), "--engine", "builtin", "--dry-run", "--json", "--context", "64")
    summary = json.loads(result.stdout)
    assert summary["engine"] == "builtin" and summary["context"] == 64 and summary["slots"] == 2
    assert summary["url"] == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--lora", "nonsense"], "not NAME=PATH"), (["--dtype", "int3"], "Unknown dtype"),
     (["--engine", "vllm", "--random-init", str(CONFIG)], "built-in server option")],
)  # fmt: skip
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    plan = _write_plan(tmp_path / "plan.yaml", ServeSetup(context=128))
    result = _swiftplan("serve", str(plan), "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_training_plan_is_refused(tmp_path):
    plan = _write_plan(tmp_path / "train.yaml", TrainSetup(seq_len=64))
    result = _swiftplan("serve", str(plan), "--dry-run")
    # the paragraph wraps at the terminal's width, wherever the path's length puts the break
    assert result.returncode == 2 and "training plan" in " ".join(result.stderr.split())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_serve_a_plan_then_stop_with_sigint(tmp_path):
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    plan = _write_plan(tmp_path / "plan.yaml", ServeSetup(dtype="fp32", context=128, concurrency=2))
    port, reports = _free_port(), tmp_path / "reports"
    command = [sys.executable, "-m", "swiftplan", "serve", str(plan), "--random-init", str(CONFIG), "--tokenizer",
               str(TOKENIZER), "--served-model-name", "tiny", "--port", str(port), "--api-key", "k",
               "--report-dir", str(reports), "--report-every", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "server did not become healthy"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
        )
        assert reply.usage.completion_tokens <= 5
        # The report is written by the server after the response goes out: give it a moment under load.
        report_file = reports / "serve_report.json"
        report_deadline = time.monotonic() + 20
        while not report_file.exists() and time.monotonic() < report_deadline:
            time.sleep(0.1)
        written_after_each_request = json.loads(report_file.read_text())
        assert written_after_each_request["final"] is False
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "final: 1 requests" in output
    report = json.loads((reports / "serve_report.json").read_text())
    assert report["final"] is True and report["plan"] == str(plan)
    assert report["measured"]["requests"] == 1 and report["measured"]["memory_kind"] == "process_peak_rss"
    assert report["measured"]["memory_bytes"] > 0
    assert report["predicted"]["ttft_s"] > 0 and report["predicted"]["peak_allocated_bytes"] > 0
    assert report["measured_over_predicted"]["ttft_s"] > 0
