"""One `gpu_validate.py` case run for real, in its own process: build, train or serve, measure.

Precision follows the planner (`swiftplan.planner.dtypes`): bf16/fp16/fp32 load the model in that dtype
and run without autocast; amp-* load it in fp32 and autocast. LoRA is peft's `get_peft_model`; QLoRA
loads random bf16 weights saved to a temporary checkpoint through bitsandbytes (as from_pretrained
quantizes any checkpoint), with or without `prepare_model_for_kbit_training`. AdamW is torch's fused
kernel; checkpointing is non-reentrant. Inputs are random token ids with labels = inputs.

Peaks: the caching allocator is emptied and the peak counters reset after the model and optimizer are
built, so `max_memory_allocated` covers the steps (weights included, loading transients not). The device
memory nvidia-smi shows is NVML's figure for this process (or, where NVML cannot see our pid inside a
container, the device's used memory minus what was used before this process touched CUDA).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from typing import TYPE_CHECKING, Any

from swiftplan.planner.dtypes import compute_dtype, param_dtype

if TYPE_CHECKING:
    from gpu_validate import Case


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # not installed, or no CUDA build
        out["bitsandbytes"] = ""
    out["cuda"] = torch.version.cuda or ""
    return out


def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _nvml_handle(nvml: Any) -> Any:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return nvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)


def _device_used(nvml: Any, baseline: int | None) -> tuple[int | None, str]:
    """This process's device memory as nvidia-smi shows it, and how it was read."""
    if nvml is None:
        return None, ""
    handle = _nvml_handle(nvml)
    with contextlib.suppress(Exception):
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory:
                return int(proc.usedGpuMemory), "nvml-process"
    used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    return used - (baseline or 0), "nvml-device-delta"


def _enable_checkpointing(net: Any) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(net, "activation_checkpointing_enable"):
        net.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def build_model(case: Case, config_dict: dict[str, Any], device: Any) -> Any:
    """The random-init causal LM of the case on `device`, quantized, LoRA-wrapped and checkpointed as planned."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from swiftplan.executors.trace_model import load_config

    setup = case.train
    precision = setup.precision if setup is not None else case.serve.dtype  # type: ignore[union-attr]
    dtype = _dtype(param_dtype(precision))  # type: ignore[arg-type]
    attn = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}[
        setup.attention if setup else "sdpa"
    ]
    config = load_config(config_dict, notes=[])
    config.use_cache = setup is None
    torch.manual_seed(0)
    with torch.device(device):
        net = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    quantized = setup is not None and setup.quant in ("nf4", "fp4", "int8")
    if quantized:
        assert setup is not None
        if setup.quant == "int8":
            bnb = BitsAndBytesConfig(load_in_8bit=True)
        else:
            bnb = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=setup.quant,
                bnb_4bit_use_double_quant=setup.double_quant,
                bnb_4bit_compute_dtype=_dtype(compute_dtype(setup.precision)),
            )
        with tempfile.TemporaryDirectory(prefix="gpu_validate_") as tmp:
            net.save_pretrained(tmp)
            del net
            torch.cuda.empty_cache()
            net = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=dtype, attn_implementation=attn, quantization_config=bnb, device_map={"": device}
            )
        net.config.use_cache = False
    if setup is None:
        return net.eval()
    if setup.trains_adapters:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        assert setup.lora is not None
        if quantized and case.kbit_prep:
            net = prepare_model_for_kbit_training(
                net,
                use_gradient_checkpointing=setup.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif setup.grad_ckpt:
            _enable_checkpointing(net)
        lora = LoraConfig(
            r=setup.lora.rank,
            lora_alpha=setup.lora.alpha or 2 * setup.lora.rank,
            lora_dropout=setup.lora.dropout,
            target_modules="all-linear" if setup.lora.all_linear else list(setup.lora.targets),
            task_type="CAUSAL_LM",
        )
        net = get_peft_model(net, lora)
    elif setup.grad_ckpt:
        _enable_checkpointing(net)
    return net.train()


def build_optimizer(name: str, params: list[Any], device: Any) -> Any:
    """The planner's optimizer choice as the libraries implement it."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, fused=getattr(device, "type", str(device)) == "cuda")
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-5, scale_parameter=False, relative_step=False, warmup_init=False)
    import bitsandbytes as bnb

    return {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw-8bit": bnb.optim.PagedAdamW8bit}[name](
        params, lr=1e-5
    )


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def _train(case: Case, net: Any, device: Any, vocab: int, steps: int) -> dict[str, Any]:
    import torch

    setup = case.train
    assert setup is not None
    params = [p for p in net.parameters() if p.requires_grad]
    opt = build_optimizer(setup.optimizer, params, device)
    amp = setup.precision.startswith("amp-") or case.autocast
    autocast_dtype = _dtype(compute_dtype(setup.precision))
    scaler = torch.amp.GradScaler(enabled=setup.precision == "amp-fp16")
    if getattr(device, "type", device) == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(1 + steps):
        _sync(device)
        start = time.perf_counter()
        for _ in range(setup.grad_accum):
            ids = torch.randint(0, vocab, (setup.micro_batch, setup.seq_len), device=device)
            ctx = (
                torch.autocast(getattr(device, "type", str(device)), dtype=autocast_dtype)
                if amp
                else contextlib.nullcontext()
            )
            with ctx:
                loss = net(input_ids=ids, labels=ids).loss / setup.grad_accum
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:]) if steps else times[0]
    tokens = setup.micro_batch * setup.seq_len * setup.grad_accum
    return {"step_time_s": step_s, "tokens_per_s": tokens / step_s}


def _serve(case: Case, net: Any, device: Any, vocab: int) -> dict[str, Any]:
    import torch
    from transformers import DynamicCache

    serve = case.serve
    assert serve is not None
    prompt = serve.context - case.new_tokens
    if getattr(device, "type", device) == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, vocab, (serve.concurrency, prompt), device=device)
    with torch.inference_mode():
        cache = DynamicCache(config=net.config)
        _sync(device)
        start = time.perf_counter()
        out = net(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(case.new_tokens - 1):
            out = net(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        decode_s = time.perf_counter() - start
    decoded = serve.concurrency * max(1, case.new_tokens - 1)
    return {"ttft_s": ttft, "decode_tokens_per_s": decoded / decode_s if decode_s > 0 else None}


def run_case(case: Case, *, steps: int, config: dict[str, Any], device: str = "cuda") -> dict[str, Any]:
    """Measure one case; the returned dict holds the CSV's measured, device and version columns."""
    import torch

    nvml = _nvml() if device == "cuda" else None
    baseline = int(nvml.nvmlDeviceGetMemoryInfo(_nvml_handle(nvml)).used) if nvml else None
    dev = torch.device(device)
    row: dict[str, Any] = _versions() | {"status": "ok", "error": ""}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        row |= {"device": props.name, "device_memory_bytes": int(props.total_memory)}
        if nvml is not None:
            row["driver"] = str(nvml.nvmlSystemGetDriverVersion())
    else:
        row |= {"device": "cpu", "device_memory_bytes": None}
    vocab = int(config["vocab_size"])
    needs_bnb = case.train is not None and (case.train.quant != "none" or "8bit" in case.train.optimizer)
    if needs_bnb and not row["bitsandbytes"]:
        return row | {"status": "skipped", "error": "bitsandbytes is not importable here"}
    try:
        net = build_model(case, config, dev)
        row |= (
            _train(case, net, dev, vocab, steps) if case.train is not None else _serve(case, net, dev, vocab)
        )
    except torch.cuda.OutOfMemoryError as error:
        row |= {"status": "oom", "error": str(error).splitlines()[0][:300]}
    except Exception as error:  # recorded in the CSV; the matrix goes on
        row |= {
            "status": "error",
            "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}",
        }
    if dev.type == "cuda":
        used, method = _device_used(nvml, baseline)
        row |= {
            "measured_peak_allocated": int(torch.cuda.max_memory_allocated(dev)),
            "measured_peak_reserved": int(torch.cuda.max_memory_reserved(dev)),
            "measured_reserved_end": int(torch.cuda.memory_reserved(dev)),
            "measured_device_used": used,
            "device_used_method": method,
        }
    return row
