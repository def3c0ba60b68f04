"""SGLang: render `python -m sglang.launch_server` from a serving set-up (pure).

Flag names and choices are SGLang's own (sgl-project/sglang@469c63e54e7d94591617ef9590c6aa26d54dc1bb
python/sglang/srt/server_args.py, ServerArgs.add_cli_args): --model-path, --served-model-name, --host,
--port, --tp-size, --context-length, --max-running-requests, --chunked-prefill-size,
--mem-fraction-static, --dtype, --quantization, --kv-cache-dtype, --enable-lora, --lora-paths
name=path, --max-loras-per-batch, --max-lora-rank, --api-key; eager decode as
--cuda-graph-backend-{decode,prefill} disabled (sglang 0.5.23 srt/arg_groups/fields/exec_.py; the older
--disable-cuda-graph is a deprecated alias of both). tests/test_engine_render_serve.py
feeds the rendered argv to that parser where SGLang installs (pytest -m engines).
The memory fraction is converted to SGLang's meaning (`memory_fraction.py`). A vision-language plan adds
--limit-mm-data-per-request and --mm-process-config (`images.py`, sglang srt/arg_groups/fields/mm.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from swiftplan.errors import SwiftplanError
from swiftplan.executors.serve.argv import health_url
from swiftplan.executors.serve.memory_fraction import ServeMemory, sglang_mem_fraction_static
from swiftplan.executors.serve.vllm_cmd import LaunchSpec
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# In-flight quantization of an unquantized checkpoint (--quantization choices in server_args.py).
_INFLIGHT_QUANT = {"fp8": "fp8", "nf4": "bitsandbytes"}
# Pre-quantized checkpoints: SGLang reads their quantization_config and picks the kernel itself.
_PREQUANTIZED = ("gptq", "awq", "int8")
_DEVICES = {"cpu": "cpu", "npu": "npu"}
"""--device for backends other than CUDA/ROCm (SGLang's default device)."""
SECRET_FLAGS = ("--api-key",)
"""Flags whose value is a secret (masked when printed)."""


def render_sglang(
    setup: ServeSetup, *, model: str, served_name: str, host: str = "127.0.0.1", port: int = 30000,
    loras: Sequence[tuple[str, str]] = (), api_key: str | None = None, memory: ServeMemory | None = None,
    python: str = "python", backend: str = "cuda", spec: ModelSpec | None = None,
) -> LaunchSpec:  # fmt: skip
    """The SGLang server command for `setup` (pure). `memory` (the plan's breakdown) converts the plan's
    memory fraction into --mem-fraction-static; without it SGLang's own default stands, with a note. A plan with
    images needs the model's spec for its image limits: `spec`, or the config at hand for `model`."""
    from swiftplan.executors.serve.images import served_images, sglang_image_args, spec_for_images

    notes: list[str] = []
    argv = [
        python, "-m", "sglang.launch_server",
        "--model-path", model,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", _DTYPES[setup.dtype],
        "--tp-size", str(setup.tp),
        "--context-length", str(setup.context),
        "--max-running-requests", str(setup.concurrency),
        "--chunked-prefill-size", str(setup.prefill_chunk),
    ]  # fmt: skip
    if backend in _DEVICES:
        argv += ["--device", _DEVICES[backend]]
    if memory is not None:
        fraction = sglang_mem_fraction_static(memory, setup.gpu_memory_utilization)
        argv += ["--mem-fraction-static", f"{fraction:g}"]
        notes.append(f"--mem-fraction-static {fraction:g}: SGLang's fraction covers weights + KV pool only; "
                     f"the plan's gpu_memory_utilization {setup.gpu_memory_utilization:g} less its "
                     f"{memory.working_bytes / 2**30:.2f} GiB of activations and runtime.")  # fmt: skip
    else:
        notes.append("no plan breakdown: SGLang picks --mem-fraction-static itself.")
    if setup.quant in _INFLIGHT_QUANT:
        argv += ["--quantization", _INFLIGHT_QUANT[setup.quant]]
    elif setup.quant in _PREQUANTIZED:
        notes.append(f"--quant {setup.quant}: the checkpoint must already be {setup.quant}-quantized; SGLang "
                     "reads its quantization_config.")  # fmt: skip
    elif setup.quant != "none":
        raise SwiftplanError(f"SGLang has no in-flight {setup.quant} quantization.",
                             hint="Plan with --quant fp8, nf4 (bitsandbytes), or a GPTQ/AWQ checkpoint.")  # fmt: skip
    if setup.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if setup.eager:  # what the deprecated --disable-cuda-graph sets
        argv += ["--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled"]
    if loras or setup.max_loras:
        argv += ["--enable-lora", "--max-loras-per-batch", str(max(setup.max_loras, 1)),
                 "--max-lora-rank", str(setup.max_lora_rank)]  # fmt: skip
        if loras:
            argv += ["--lora-paths", *(f"{name}={path}" for name, path in loras)]
    vision_spec = spec_for_images(setup, model, spec)
    if vision_spec is not None and (images := served_images(setup, vision_spec)) is not None:
        argv += sglang_image_args(images)
    if api_key:
        argv += ["--api-key", api_key]
        notes.append("SGLang takes the API key only as --api-key: it is visible in the process list.")
    return LaunchSpec(argv=tuple(argv), health_url=health_url(host, port), notes=tuple(notes))
