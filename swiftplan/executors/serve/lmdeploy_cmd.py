"""LMDeploy: render `lmdeploy serve api_server` from a serving set-up (pure).

Flag names and choices are LMDeploy's own (InternLM/lmdeploy@1263d5cd889b7ad500e85b8eb20401327a4516ab
lmdeploy/cli/serve.py add_parser_api_server and lmdeploy/cli/utils.py ArgumentHelper): --model-name,
--server-name, --server-port, --backend pytorch|turbomind, --dtype auto|float16|bfloat16, --tp,
--session-len, --max-batch-size, --cache-max-entry-count, --max-prefill-token-num, --quant-policy
(lmdeploy/messages.py QuantPolicy: 8 = int8, fp8 = 16; TurboMind refuses fp8 KV, so fp8 KV runs on the
PyTorch backend), --model-format hf|awq|gptq|fp8|..., --adapters name=path and --eager-mode (PyTorch backend: "If True, cuda
graph would be disabled", lmdeploy/cli/utils.py ArgumentHelper.eager_mode),
--api-keys. The memory fraction is converted to LMDeploy's meaning (`memory_fraction.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from swiftplan.errors import SwiftplanError
from swiftplan.executors.serve.argv import health_url
from swiftplan.executors.serve.memory_fraction import ServeMemory, lmdeploy_cache_max_entry_count
from swiftplan.executors.serve.vllm_cmd import LaunchSpec
from swiftplan.planner.setup import ServeSetup

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
_MODEL_FORMATS = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}
"""Pre-quantized checkpoints LMDeploy loads, by --model-format."""
SECRET_FLAGS = ("--api-keys",)
"""Flags whose value is a secret (masked when printed)."""


def render_lmdeploy(
    setup: ServeSetup, *, model: str, served_name: str, host: str = "127.0.0.1", port: int = 23333,
    loras: Sequence[tuple[str, str]] = (), api_key: str | None = None, memory: ServeMemory | None = None,
    backend: str = "cuda",
) -> LaunchSpec:  # fmt: skip
    """The LMDeploy server command for `setup` (pure). `memory` (the plan's breakdown) converts the
    plan's memory fraction into --cache-max-entry-count; without it LMDeploy's default stands."""
    if setup.dtype not in _DTYPES:
        raise SwiftplanError(f"LMDeploy computes in float16 or bfloat16, not {setup.dtype}.",
                             hint="Re-plan with --dtype bf16 or fp16.")  # fmt: skip
    if setup.vision is not None:
        raise SwiftplanError(
            "LMDeploy cannot serve this plan's images as planned: its server takes no limit on images per request "
            "and no pixel bound per image (only --vision-max-batch-size; max_pixels and max_dynamic_patch are "
            "per-request parameters), so a larger image would bring more image tokens than the plan holds.",
            hint="Serve it with vLLM or SGLang (swiftplan serve PLAN --engine vllm|sglang; executors/serve/images.py).",
        )
    if setup.quant in ("nf4", "fp4"):
        raise SwiftplanError(f"LMDeploy has no bitsandbytes {setup.quant} weights.",
                             hint="Serve an AWQ/GPTQ checkpoint (lmdeploy lite auto_awq) or use vLLM/SGLang.")  # fmt: skip
    notes: list[str] = []
    # fp8 KV, LoRA adapters, SmoothQuant int8 checkpoints, Ascend and eager mode need the PyTorch backend.
    pytorch = (setup.kv_dtype == "fp8" or bool(loras) or setup.max_loras > 0 or setup.quant == "int8"
               or backend == "npu" or setup.eager)  # fmt: skip
    argv = [
        "lmdeploy", "serve", "api_server", model,
        "--model-name", served_name,
        "--server-name", host,
        "--server-port", str(port),
        "--backend", "pytorch" if pytorch else "turbomind",
        "--dtype", _DTYPES[setup.dtype],
        "--tp", str(setup.tp),
        "--session-len", str(setup.context),
        "--max-batch-size", str(setup.concurrency),
        "--max-prefill-token-num", str(setup.prefill_chunk),
    ]  # fmt: skip
    if backend == "npu":
        argv += ["--device", "ascend"]
    if memory is not None:
        fraction = lmdeploy_cache_max_entry_count(memory, setup.gpu_memory_utilization)
        argv += ["--cache-max-entry-count", f"{fraction:g}"]
        notes.append(f"--cache-max-entry-count {fraction:g}: LMDeploy's share of the memory left free after "
                     "the weights and its runtime reserve, giving the KV pool the plan sized at "
                     f"gpu_memory_utilization {setup.gpu_memory_utilization:g}.")  # fmt: skip
    else:
        notes.append(
            "no plan breakdown: LMDeploy's default --cache-max-entry-count (0.8 of free memory) stands."
        )
    if setup.quant in _MODEL_FORMATS:
        argv += ["--model-format", _MODEL_FORMATS[setup.quant]]
        notes.append(f"--model-format {setup.quant}: the checkpoint must already be {setup.quant}-quantized.")
    elif setup.quant == "int8":
        notes.append(
            "--quant int8: the checkpoint must be a SmoothQuant W8A8 one (lmdeploy lite smooth_quant)."
        )
    if setup.kv_dtype == "fp8":
        argv += ["--quant-policy", "16"]
    if setup.eager:
        argv += ["--eager-mode"]
    if loras:
        argv += ["--adapters", *(f"{name}={path}" for name, path in loras)]
    elif setup.max_loras:
        notes.append("the plan sizes LoRA slots; pass the adapters with --lora NAME=PATH.")
    if api_key:
        argv += ["--api-keys", api_key]
        notes.append("LMDeploy takes API keys only as --api-keys: they are visible in the process list.")
    return LaunchSpec(argv=tuple(argv), health_url=health_url(host, port), notes=tuple(notes))
